//! Caption grounding: which spans of the caption the detected phrases refer to, as GRIT-style character offsets
//! `[start, end)` (Unicode code points, as Python indexes strings), and the caption with boxes inserted inline after
//! the spans they ground (Kosmos-2 style, in any of the formats).
//!
//! Matching ignores case, plurals (`dogs`, `boxes`, `berries`, `people`) and a leading article of the phrase; a span
//! takes in the article before it (`a dog`). Longer phrases match first, and a word belongs to one span at most.
//! Every mention is grounded with every box of its phrase. CJK characters count as words of their own, since those
//! scripts do not separate words with spaces.

use super::formats::{GroundedFormat, GroundedObject, Size};
use super::pieces::{Piece, render};

/// A grounded span of a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Character offsets `[start, end)` in the caption.
    pub start: usize,
    pub end: usize,
    /// The phrase it was matched with.
    pub phrase: String,
    pub boxes: Vec<[f32; 4]>,
}

const ARTICLES: [&str; 3] = ["a", "an", "the"];

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{ac00}'..='\u{d7af}' | '\u{f900}'..='\u{faff}')
}

/// Words with their character offsets `[start, end)`.
fn words(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, c) in text.chars().enumerate() {
        if is_cjk(c) {
            if let Some((start, word)) = current.take() {
                out.push((start, i, word));
            }
            out.push((i, i + 1, c.to_string()));
        } else if c.is_alphanumeric() || (c == '\'' && current.is_some()) {
            match current.as_mut() {
                Some((_, word)) => word.push(c),
                None => current = Some((i, c.to_string())),
            }
        } else if let Some((start, word)) = current.take() {
            out.push((start, i, word));
        }
    }
    if let Some((start, word)) = current {
        let end = start + word.chars().count();
        out.push((start, end, word));
    }
    out
}

/// Lowercase singular of a word, for matching.
fn normalize(word: &str) -> String {
    let w = word.to_lowercase().trim_end_matches("'s").trim_end_matches('\'').to_string();
    const IRREGULAR: [(&str, &str); 9] = [
        ("men", "man"),
        ("women", "woman"),
        ("children", "child"),
        ("people", "person"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("feet", "foot"),
        ("teeth", "tooth"),
        ("knives", "knife"),
    ];
    if let Some((_, singular)) = IRREGULAR.iter().find(|(plural, _)| *plural == w) {
        return singular.to_string();
    }
    let n = w.chars().count();
    if n > 3 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    if n > 3 && ["ses", "xes", "zes", "ches", "shes"].iter().any(|s| w.ends_with(s)) {
        return w[..w.len() - 2].to_string();
    }
    if n > 2 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        return w[..w.len() - 1].to_string();
    }
    w
}

/// Groups the boxes of `objects` by phrase, in order of first appearance.
fn by_phrase(objects: &[GroundedObject]) -> Vec<(String, Vec<[f32; 4]>)> {
    let mut groups: Vec<(String, Vec<[f32; 4]>)> = Vec::new();
    for o in objects {
        match groups.iter_mut().find(|(p, _)| *p == o.phrase) {
            Some((_, boxes)) => boxes.push(o.bbox),
            None => groups.push((o.phrase.clone(), vec![o.bbox])),
        }
    }
    groups
}

/// The spans of `caption` that the objects' phrases ground, in caption order.
pub fn ground_caption(caption: &str, objects: &[GroundedObject]) -> Vec<Span> {
    let words = words(caption);
    let normalized: Vec<String> = words.iter().map(|(_, _, w)| normalize(w)).collect();
    let mut taken = vec![false; words.len()];
    let mut groups: Vec<(Vec<String>, String, Vec<[f32; 4]>)> = by_phrase(objects)
        .into_iter()
        .map(|(phrase, boxes)| {
            let mut key: Vec<String> =
                super::grounding::words(&phrase).iter().map(|(_, _, w)| normalize(w)).collect();
            while key.len() > 1 && ARTICLES.contains(&key[0].as_str()) {
                key.remove(0);
            }
            (key, phrase, boxes)
        })
        .filter(|(key, _, _)| !key.is_empty())
        .collect();
    // Longer phrases first: "traffic light" before "light".
    groups.sort_by_key(|g| std::cmp::Reverse(g.0.len()));
    let mut spans = Vec::new();
    for (key, phrase, boxes) in &groups {
        let n = key.len();
        let mut i = 0;
        while i + n <= words.len() {
            if !taken[i..i + n].iter().any(|t| *t) && normalized[i..i + n] == key[..] {
                let mut first = i;
                if i > 0 && !taken[i - 1] && ARTICLES.contains(&normalized[i - 1].as_str()) {
                    first = i - 1;
                }
                taken[first..i + n].iter_mut().for_each(|t| *t = true);
                spans.push(Span {
                    start: words[first].0,
                    end: words[i + n - 1].1,
                    phrase: phrase.clone(),
                    boxes: boxes.clone(),
                });
                i += n;
            } else {
                i += 1;
            }
        }
    }
    spans.sort_by_key(|s| s.start);
    spans
}

/// The caption with each grounded span followed by its boxes in `format` (on an image of `image`):
/// `<phrase>a dog</phrase><object>…</object>` (Kosmos-2), `<ref>a dog</ref><box>…</box>` (Qwen-VL), `a dog[…]`
/// (Shikra), `a dog [x1, y1, x2, y2]` (Lyrics), and so on for every registered format.
pub fn inline_caption(caption: &str, spans: &[Span], format: GroundedFormat, image: Size) -> String {
    render(&caption_pieces(caption, spans), format, image)
}

/// The caption as pieces: its text, and each grounded span with its boxes.
pub fn caption_pieces(caption: &str, spans: &[Span]) -> Vec<Piece> {
    let chars: Vec<char> = caption.chars().collect();
    let mut out = Vec::with_capacity(spans.len() * 2 + 1);
    let text = |range: &[char], out: &mut Vec<Piece>| {
        if !range.is_empty() {
            out.push(Piece::Text(range.iter().collect()));
        }
    };
    let mut at = 0;
    for span in spans {
        if span.start < at || span.end > chars.len() {
            continue;
        }
        text(&chars[at..span.start], &mut out);
        out.push(Piece::Span(chars[span.start..span.end].iter().collect(), span.boxes.clone()));
        at = span.end;
    }
    text(&chars[at.min(chars.len())..], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(phrase: &str, bbox: [f32; 4]) -> GroundedObject {
        GroundedObject { phrase: phrase.into(), bbox }
    }

    fn spans(caption: &str, objects: &[GroundedObject]) -> Vec<(usize, usize, String)> {
        ground_caption(caption, objects).into_iter().map(|s| (s.start, s.end, s.phrase)).collect()
    }

    #[test]
    fn plurals_articles_and_case() {
        let objects = [obj("dog", [0.1, 0.1, 0.2, 0.2]), obj("box", [0.5, 0.5, 0.6, 0.6])];
        assert_eq!(
            spans("Two Dogs sit on the boxes.", &objects),
            vec![(4, 8, "dog".into()), (16, 25, "box".into())]
        );
        assert_eq!(spans("A dog.", &objects), vec![(0, 5, "dog".into())]);
        let people = [obj("person", [0.0; 4]), obj("berry", [0.0; 4])];
        assert_eq!(spans("people eat berries", &people), vec![(0, 6, "person".into()), (11, 18, "berry".into())]);
    }

    #[test]
    fn repeated_phrases_and_longest_match_first() {
        let objects = [obj("light", [0.0; 4]), obj("traffic light", [0.1; 4]), obj("dog", [0.2; 4])];
        let got = spans("a dog near a traffic light, another dog, and a light.", &objects);
        assert_eq!(
            got,
            vec![
                (0, 5, "dog".into()),
                (11, 26, "traffic light".into()),
                (36, 39, "dog".into()),
                (45, 52, "light".into()),
            ]
        );
    }

    #[test]
    fn punctuation_and_non_ascii() {
        let objects = [obj("café", [0.0; 4]), obj("狗", [0.0; 4]), obj("hund", [0.0; 4])];
        assert_eq!(
            spans("(the café), 一只狗 und ein Hund!", &objects),
            vec![(1, 9, "café".into()), (14, 15, "狗".into()), (24, 28, "hund".into())]
        );
        let caption = "一只狗在跑";
        let s = ground_caption(caption, &objects);
        let text: String = caption.chars().skip(s[0].start).take(s[0].end - s[0].start).collect();
        assert_eq!(text, "狗");
    }

    const SQUARE: Size = Size { width: 100, height: 100 };

    fn format(name: &str) -> GroundedFormat {
        GroundedFormat::named(name).unwrap_or_else(|| panic!("{name} is registered"))
    }

    #[test]
    fn spans_are_plain_when_nothing_grounds_them() {
        assert!(spans("a cat on a mat", &[obj("dog", [0.0; 4])]).is_empty());
        assert_eq!(inline_caption("a cat on a mat", &[], GroundedFormat::KOSMOS2, SQUARE), "a cat on a mat");
    }

    #[test]
    fn inline_in_every_format() {
        let caption = "a dog and two cats";
        let objects = [
            obj("dog", [0.12, 0.34, 0.56, 0.9]),
            obj("cat", [0.0, 0.0, 0.5, 0.5]),
            obj("cat", [0.5, 0.5, 1.0, 1.0]),
        ];
        let s = ground_caption(caption, &objects);
        assert_eq!(
            inline_caption(caption, &s, format("kosmos2"), SQUARE),
            "<phrase>a dog</phrase><object><patch_index_0323><patch_index_0913></object> and two \
             <phrase>cats</phrase><object><patch_index_0000><patch_index_0495></delimiter_of_multi_objects/><patch_index_0528><patch_index_1023></object>"
        );
        assert_eq!(
            inline_caption(caption, &s, format("qwen"), SQUARE),
            "<ref>a dog</ref><box>(120,340),(560,900)</box> and two <ref>cats</ref><box>(0,0),(500,500)</box><box>(500,500),(999,999)</box>"
        );
        assert_eq!(
            inline_caption(caption, &s, format("shikra"), SQUARE),
            "a dog[0.120,0.340,0.560,0.900] and two cats[0.000,0.000,0.500,0.500;0.500,0.500,1.000,1.000]"
        );
        assert_eq!(
            inline_caption(caption, &s, format("lyrics"), SQUARE),
            "a dog [0.120, 0.340, 0.560, 0.900] and two cats [0.000, 0.000, 0.500, 0.500], [0.500, 0.500, 1.000, 1.000]"
        );
    }
}

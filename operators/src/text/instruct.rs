//! Instruction data for the fine-tuning stage: LLaVA/ShareGPT conversations built from each refined sample —
//! referring expression comprehension (phrase → box), region captioning (box → phrase), grounded captioning
//! (caption with inline boxes), tag listing, counting (with boxes), and multi-turn mixes. The `<image>` placeholder
//! opens the first human turn. Phrasings and languages are chosen by a seed derived from the sample key, so a rerun
//! writes the same conversations. Turns are built as [`Piece`]s, so the phrases and boxes in them can be written in
//! any convention: `box_format` for the `instruct` table, another one by an export.

use serde::{Deserialize, Serialize};

use super::formats::{GroundedFormat, GroundedObject, Size};
use super::grounding::{caption_pieces, ground_caption};
use super::phrasings::*;
use super::pieces::{Piece, render};
use crate::geometry::{BoxXyxy, iou};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Referring expression comprehension: phrase → box.
    Rec,
    /// Region captioning: box → phrase.
    RegionCaption,
    GroundedCaption,
    TagListing,
    Counting,
    MultiTurn,
}

impl Task {
    pub const ALL: [Task; 6] =
        [Task::Rec, Task::RegionCaption, Task::GroundedCaption, Task::TagListing, Task::Counting, Task::MultiTurn];

    pub fn name(self) -> &'static str {
        match self {
            Task::Rec => "rec",
            Task::RegionCaption => "region_caption",
            Task::GroundedCaption => "grounded_caption",
            Task::TagListing => "tag_listing",
            Task::Counting => "counting",
            Task::MultiTurn => "multi_turn",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `human` or `gpt`.
    pub from: &'static str,
    pub pieces: Vec<Piece>,
}

impl Turn {
    /// The turn's text, boxes written in `format`, on an image of `image`.
    pub fn text(&self, format: GroundedFormat, image: Size) -> String {
        render(&self.pieces, format, image)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub task: Task,
    /// `en` or `zh`.
    pub language: &'static str,
    pub turns: Vec<Turn>,
}

/// What to build, and which objects to trust.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstructOptions {
    pub tasks: Vec<Task>,
    /// `en`, `zh`, or both (one is chosen per conversation).
    pub languages: Vec<String>,
    /// How boxes are written in questions and answers.
    pub box_format: GroundedFormat,
    /// Objects scoring below are left out.
    pub min_score: f32,
    /// Objects whose box covers less of the image are left out.
    pub min_box_area: f32,
    /// At most this many objects per image (the best scoring).
    pub max_objects: usize,
    /// Boxes of one phrase overlapping a kept one above this IoU are dropped as duplicates.
    pub duplicate_iou: f32,
}

impl Default for InstructOptions {
    fn default() -> Self {
        InstructOptions {
            tasks: Task::ALL.to_vec(),
            languages: vec!["en".into(), "zh".into()],
            box_format: GroundedFormat::LYRICS,
            min_score: 0.0,
            min_box_area: 0.0,
            max_objects: 50,
            duplicate_iou: 0.9,
        }
    }
}

/// An object as the builders see it: the tag it maps to, its phrase, score and box.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub label: String,
    pub phrase: String,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// Applies the options' filters: score, area, near-duplicate boxes of one phrase, then the best `max_objects`
/// (order kept).
pub fn filter_objects(objects: &[Candidate], options: &InstructOptions) -> Vec<Candidate> {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by(|&a, &b| objects[b].score.total_cmp(&objects[a].score).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let o = &objects[i];
        let b = BoxXyxy(o.bbox);
        if o.score < options.min_score || b.area() < options.min_box_area {
            continue;
        }
        let duplicate = kept
            .iter()
            .any(|&k| objects[k].phrase == o.phrase && iou(&BoxXyxy(objects[k].bbox), &b) > options.duplicate_iou);
        if !duplicate && kept.len() < options.max_objects {
            kept.push(i);
        }
    }
    kept.sort();
    kept.into_iter().map(|i| objects[i].clone()).collect()
}

/// A small deterministic generator (SplitMix64) seeded from the sample key.
struct Seeded(u64);

impl Seeded {
    fn new(key: &str, salt: &str) -> Seeded {
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{key}\u{0}{salt}").as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest.as_ref()[..8]);
        Seeded(u64::from_le_bytes(bytes))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len().max(1) as u64) as usize]
    }

    /// One phrasing of a task, in Chinese or English.
    fn phrasing(
        &mut self,
        zh: bool,
        chinese: &'static [&'static str],
        english: &'static [&'static str],
    ) -> &'static str {
        let list = if zh { chinese } else { english };
        list[(self.next() % list.len().max(1) as u64) as usize]
    }
}

fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    pairs.iter().fold(template.to_string(), |text, (k, v)| text.replace(&format!("{{{k}}}"), v))
}

/// `template` with `pairs` filled in as text and each `{slot}` replaced by `value`'s pieces.
fn fill_pieces(template: &str, pairs: &[(&str, &str)], slot: &str, value: &[Piece]) -> Vec<Piece> {
    let text = fill(template, pairs);
    let mut pieces = Vec::new();
    for (i, part) in text.split(&format!("{{{slot}}}")).enumerate() {
        if i > 0 {
            pieces.extend_from_slice(value);
        }
        if !part.is_empty() {
            pieces.push(Piece::Text(part.to_string()));
        }
    }
    pieces
}

fn text(t: impl Into<String>) -> Vec<Piece> {
    vec![Piece::Text(t.into())]
}

fn human(first: bool, mut question: Vec<Piece>) -> Turn {
    if first {
        question.insert(0, Piece::Text("<image>\n".into()));
    }
    Turn { from: "human", pieces: question }
}

fn gpt(answer: Vec<Piece>) -> Turn {
    Turn { from: "gpt", pieces: answer }
}

struct Context<'a> {
    caption: Option<&'a str>,
    tags: &'a [String],
    objects: Vec<Candidate>,
}

impl Context<'_> {
    fn boxes_of(&self, pick: impl Fn(&Candidate) -> bool) -> Vec<[f32; 4]> {
        self.objects.iter().filter(|o| pick(o)).map(|o| o.bbox).collect()
    }

    fn boxes_pieces(boxes: &[[f32; 4]], zh: bool) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(boxes.len() * 2);
        for (i, b) in boxes.iter().enumerate() {
            if i > 0 {
                pieces.push(Piece::Text(if zh { "，" } else { ", " }.into()));
            }
            pieces.push(Piece::Box(*b));
        }
        pieces
    }

    /// One question/answer pair of `task`, or `None` when the sample lacks what the task needs.
    fn pair(&self, task: Task, rng: &mut Seeded, zh: bool) -> Option<(Vec<Piece>, Vec<Piece>)> {
        if matches!(task, Task::Rec | Task::RegionCaption | Task::Counting) && self.objects.is_empty() {
            return None;
        }
        match task {
            Task::Rec => {
                let o = rng.pick(&self.objects).clone();
                let boxes = self.boxes_of(|c| c.phrase == o.phrase);
                let q = fill_pieces(rng.phrasing(zh, &REC_ZH, &REC_EN), &[], "phrase", &[Piece::Ref(o.phrase)]);
                Some((q, Self::boxes_pieces(&boxes, zh)))
            }
            Task::RegionCaption => {
                let o = rng.pick(&self.objects).clone();
                let q = fill_pieces(rng.phrasing(zh, &REGION_ZH, &REGION_EN), &[], "box", &[Piece::Box(o.bbox)]);
                Some((q, text(o.phrase)))
            }
            Task::GroundedCaption => {
                let caption = self.caption.filter(|c| !c.trim().is_empty())?;
                let grounded: Vec<GroundedObject> = self
                    .objects
                    .iter()
                    .map(|o| GroundedObject { phrase: o.phrase.clone(), bbox: o.bbox })
                    .collect();
                let spans = ground_caption(caption, &grounded);
                if spans.is_empty() {
                    return None;
                }
                let q = text(rng.phrasing(zh, &GROUNDED_ZH, &GROUNDED_EN));
                Some((q, caption_pieces(caption, &spans)))
            }
            Task::TagListing => {
                if self.tags.is_empty() {
                    return None;
                }
                let q = text(rng.phrasing(zh, &TAGS_ZH, &TAGS_EN));
                Some((q, text(self.tags.join(if zh { "、" } else { ", " }))))
            }
            Task::Counting => {
                let o = rng.pick(&self.objects).clone();
                let boxes = self.boxes_of(|c| c.label == o.label);
                let count = boxes.len().to_string();
                let q = text(fill(rng.phrasing(zh, &COUNT_ZH, &COUNT_EN), &[("tag", &o.label)]));
                let verb = if boxes.len() == 1 { "is" } else { "are" };
                let template = if zh { COUNT_ANSWER_ZH } else { COUNT_ANSWER_EN };
                let a = fill_pieces(
                    template,
                    &[("verb", verb), ("count", &count)],
                    "boxes",
                    &Self::boxes_pieces(&boxes, zh),
                );
                Some((q, a))
            }
            Task::MultiTurn => None,
        }
    }
}

/// The conversations of one sample (an image of `image`): one per requested task that the sample supports.
pub fn build_conversations(
    key: &str,
    caption: Option<&str>,
    tags: &[String],
    objects: &[Candidate],
    options: &InstructOptions,
) -> Vec<Conversation> {
    let ctx = Context { caption, tags, objects: filter_objects(objects, options) };
    let languages: Vec<&'static str> = options
        .languages
        .iter()
        .filter_map(|l| match l.as_str() {
            "en" => Some("en"),
            "zh" => Some("zh"),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for task in &options.tasks {
        let mut rng = Seeded::new(key, task.name());
        let language = *rng.pick(if languages.is_empty() { &["en"][..] } else { &languages[..] });
        let zh = language == "zh";
        let turns = if *task == Task::MultiTurn {
            let mut parts: Vec<Task> = [Task::Rec, Task::RegionCaption, Task::Counting, Task::TagListing].to_vec();
            // A shuffled mix of two or three single-turn tasks.
            for i in (1..parts.len()).rev() {
                parts.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            let take = 2 + (rng.next() % 2) as usize;
            let mut turns = Vec::new();
            for part in parts.into_iter().take(take) {
                if let Some((q, a)) = ctx.pair(part, &mut rng, zh) {
                    turns.push(human(turns.is_empty(), q));
                    turns.push(gpt(a));
                }
            }
            (turns.len() >= 4).then_some(turns)
        } else {
            ctx.pair(*task, &mut rng, zh).map(|(q, a)| vec![human(true, q), gpt(a)])
        };
        if let Some(turns) = turns {
            out.push(Conversation { id: format!("{key}-{}", task.name()), task: *task, language, turns });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turn's text as the `instruct` table has it, on a 640×480 image.
    fn value(turn: &Turn, format: GroundedFormat) -> String {
        turn.text(format, Size::new(640, 480))
    }

    fn candidates() -> Vec<Candidate> {
        vec![
            Candidate { label: "dog".into(), phrase: "dog".into(), score: 0.9, bbox: [0.1, 0.1, 0.4, 0.5] },
            Candidate { label: "dog".into(), phrase: "dog".into(), score: 0.8, bbox: [0.6, 0.1, 0.9, 0.5] },
            Candidate { label: "cat".into(), phrase: "cat".into(), score: 0.7, bbox: [0.3, 0.6, 0.5, 0.9] },
            Candidate { label: "dog".into(), phrase: "dog".into(), score: 0.3, bbox: [0.1, 0.1, 0.41, 0.5] },
        ]
    }

    #[test]
    fn filters_drop_duplicates_low_scores_and_small_boxes() {
        let options = InstructOptions::default();
        assert_eq!(filter_objects(&candidates(), &options).len(), 3, "the near-duplicate dog goes");
        let strict = InstructOptions { min_score: 0.75, ..InstructOptions::default() };
        assert_eq!(filter_objects(&candidates(), &strict).len(), 2);
        let few = InstructOptions { max_objects: 1, ..InstructOptions::default() };
        assert_eq!(filter_objects(&candidates(), &few)[0].score, 0.9);
        let big = InstructOptions { min_box_area: 0.1, ..InstructOptions::default() };
        assert_eq!(filter_objects(&candidates(), &big).len(), 2, "the cat's box covers 6% of the image");
    }

    #[test]
    fn every_task_yields_a_valid_conversation_deterministically() {
        let tags = vec!["cat".to_string(), "dog".to_string()];
        let conversations = build_conversations(
            "k1",
            Some("two dogs and a cat"),
            &tags,
            &candidates(),
            &InstructOptions::default(),
        );
        assert_eq!(conversations.len(), 6, "{conversations:#?}");
        for c in &conversations {
            assert!(c.turns.len() >= 2 && c.turns.len() % 2 == 0);
            let lyrics = |t: &Turn| value(t, GroundedFormat::LYRICS);
            assert!(lyrics(&c.turns[0]).starts_with("<image>\n"));
            assert_eq!(c.turns.iter().map(|t| lyrics(t).matches("<image>").count()).sum::<usize>(), 1);
            for (i, t) in c.turns.iter().enumerate() {
                assert_eq!(t.from, if i % 2 == 0 { "human" } else { "gpt" });
                assert!(!lyrics(t).trim().is_empty());
            }
        }
        let again = build_conversations(
            "k1",
            Some("two dogs and a cat"),
            &tags,
            &candidates(),
            &InstructOptions::default(),
        );
        assert_eq!(conversations, again);
        let other = build_conversations(
            "k2",
            Some("two dogs and a cat"),
            &tags,
            &candidates(),
            &InstructOptions::default(),
        );
        assert_ne!(conversations, other, "another key picks other phrasings");
    }

    #[test]
    fn counting_and_rec_answers_carry_every_box() {
        let options = InstructOptions {
            tasks: vec![Task::Counting, Task::Rec],
            languages: vec!["en".into()],
            ..InstructOptions::default()
        };
        let objects: Vec<Candidate> = candidates().into_iter().filter(|c| c.label == "dog").take(2).collect();
        let c = build_conversations("k", None, &[], &objects, &options);
        assert_eq!(
            value(&c[0].turns[1], options.box_format),
            "There are 2: [0.100, 0.100, 0.400, 0.500], [0.600, 0.100, 0.900, 0.500]."
        );
        assert_eq!(
            value(&c[1].turns[1], options.box_format),
            "[0.100, 0.100, 0.400, 0.500], [0.600, 0.100, 0.900, 0.500]"
        );
    }

    /// The conversations speak the trainer's convention, in its frame: Shikra's padded square for a 640×480 image
    /// puts y = 0.1 at (48 + 80) / 640 = 0.2.
    #[test]
    fn box_format_is_any_registered_format_in_its_frame() {
        let options = |name: &str| InstructOptions {
            tasks: vec![Task::Rec],
            languages: vec!["en".into()],
            box_format: GroundedFormat::named(name).expect("registered"),
            ..InstructOptions::default()
        };
        let objects: Vec<Candidate> = candidates().into_iter().take(1).collect();
        let answer = |name: &str| {
            value(
                &build_conversations("k", None, &[], &objects, &options(name))[0].turns[1],
                options(name).box_format,
            )
        };
        assert_eq!(answer("shikra"), "[0.100,0.200,0.400,0.500]");
        assert_eq!(answer("lyrics"), "[0.100, 0.100, 0.400, 0.500]");
    }

    /// What an export reads back from the stored template renders, in every format, as the table's text does.
    #[test]
    fn the_template_reads_back_to_the_same_text_in_every_format() {
        use crate::text::pieces::{to_template, turns_from_template};
        let tags = vec!["cat".to_string(), "dog".to_string()];
        for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
            let c = build_conversations(
                key,
                Some("two dogs and a cat"),
                &tags,
                &candidates(),
                &InstructOptions::default(),
            );
            for conversation in &c {
                let pieces: Vec<Vec<Piece>> = conversation.turns.iter().map(|t| t.pieces.clone()).collect();
                let t = to_template(&pieces).expect("no placeholder in the text");
                let back = turns_from_template(&t.texts, &t.refs, &t.boxes).unwrap();
                for format in GroundedFormat::all() {
                    for image in [Size::new(640, 480), Size::new(97, 1203)] {
                        let ours: Vec<String> = conversation.turns.iter().map(|t| t.text(*format, image)).collect();
                        let read: Vec<String> = back.iter().map(|p| render(p, *format, image)).collect();
                        assert_eq!(ours, read, "{key} {:?} {format:?}", conversation.task);
                    }
                }
            }
        }
    }

    #[test]
    fn samples_without_objects_or_caption_skip_what_they_cannot_support() {
        let c = build_conversations("k", None, &["sky".into()], &[], &InstructOptions::default());
        assert_eq!(c.iter().map(|c| c.task).collect::<Vec<_>>(), vec![Task::TagListing]);
    }

    #[test]
    fn at_least_ten_phrasings_per_task_and_language() {
        for list in [
            &REC_EN[..],
            &REC_ZH,
            &REGION_EN,
            &REGION_ZH,
            &GROUNDED_EN,
            &GROUNDED_ZH,
            &TAGS_EN,
            &TAGS_ZH,
            &COUNT_EN,
            &COUNT_ZH,
        ] {
            assert!(list.len() >= 10);
        }
    }
}

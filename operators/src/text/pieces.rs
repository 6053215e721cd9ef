//! A turn of instruction data as pieces: plain text, and the phrases and boxes that each trainer writes its own
//! way. The text stage renders them in `[text.instruct] box_format` for the `conversations` column, and keeps them
//! as ms-swift's grounding template (`<ref-object>` and `<bbox>` placeholders, with the phrases and boxes listed
//! apart) so that an export can write them in another convention, in another frame, without parsing text back.

use super::formats::{GroundedFormat, Size};

/// ms-swift's placeholder of a phrase that `objects.ref` fills.
pub const REF_PLACEHOLDER: &str = "<ref-object>";
/// ms-swift's placeholder of a box that `objects.bbox` fills.
pub const BOX_PLACEHOLDER: &str = "<bbox>";

/// A part of a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// A phrase that refers to boxes given elsewhere (a referring question).
    Ref(String),
    /// One box, in fractions of the displayed image.
    Box([f32; 4]),
    /// Words of a caption followed by the boxes they ground (a grounded caption's span).
    Span(String, Vec<[f32; 4]>),
}

/// The text of `pieces` with phrases plain and boxes in `format`, on an image of `image`.
pub fn render(pieces: &[Piece], format: GroundedFormat, image: Size) -> String {
    render_with(pieces, &mut |piece| match piece {
        Piece::Text(t) | Piece::Ref(t) => t.clone(),
        Piece::Box(b) => format.format_box(*b, image),
        Piece::Span(p, boxes) => format.format_span(p, boxes, image),
    })
}

/// The text of `pieces`, each written by `write`.
pub fn render_with(pieces: &[Piece], write: &mut dyn FnMut(&Piece) -> String) -> String {
    pieces.iter().map(write).collect()
}

/// Turns as ms-swift's grounding template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Each turn's text, `<ref-object>` for each phrase and `<bbox>` for each box.
    pub texts: Vec<String>,
    /// The phrases, in the order they appear.
    pub refs: Vec<String>,
    /// The boxes, in the order they appear.
    pub boxes: Vec<[f32; 4]>,
}

/// The turns as ms-swift's grounding template; `None` when the text itself holds a placeholder (a caption that
/// says `<bbox>`), which the template could not tell from ours.
pub fn to_template(turns: &[Vec<Piece>]) -> Option<Template> {
    let (mut refs, mut boxes) = (Vec::new(), Vec::new());
    let mut texts = Vec::with_capacity(turns.len());
    for pieces in turns {
        let mut text = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => {
                    if t.contains(REF_PLACEHOLDER) || t.contains(BOX_PLACEHOLDER) {
                        return None;
                    }
                    text.push_str(t);
                }
                Piece::Ref(p) => {
                    text.push_str(REF_PLACEHOLDER);
                    refs.push(p.clone());
                }
                Piece::Box(b) => {
                    text.push_str(BOX_PLACEHOLDER);
                    boxes.push(*b);
                }
                Piece::Span(p, bs) => {
                    text.push_str(REF_PLACEHOLDER);
                    refs.push(p.clone());
                    for b in bs {
                        text.push_str(BOX_PLACEHOLDER);
                        boxes.push(*b);
                    }
                }
            }
        }
        texts.push(text);
    }
    Some(Template { texts, refs, boxes })
}

/// Why a stored template cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("the template has {placeholders} {placeholder} placeholders but {values} values")]
    Count { placeholder: &'static str, placeholders: usize, values: usize },
}

/// The pieces of one template turn, taking its phrases and boxes from `refs` and `boxes` (advanced past what it
/// uses): a `<ref-object>` directly followed by `<bbox>`es is a span, as [`to_template`] writes one.
pub fn from_template(
    text: &str,
    refs: &mut std::slice::Iter<'_, String>,
    boxes: &mut std::slice::Iter<'_, [f32; 4]>,
) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let missing = |placeholder, placeholders, values| TemplateError::Count { placeholder, placeholders, values };
    while !rest.is_empty() {
        let next_ref = rest.find(REF_PLACEHOLDER);
        let next_box = rest.find(BOX_PLACEHOLDER);
        let at = match (next_ref, next_box) {
            (None, None) => rest.len(),
            (a, b) => a.unwrap_or(usize::MAX).min(b.unwrap_or(usize::MAX)),
        };
        if at > 0 {
            pieces.push(Piece::Text(rest[..at].to_string()));
            rest = &rest[at..];
            continue;
        }
        if let Some(after) = rest.strip_prefix(REF_PLACEHOLDER) {
            let phrase = refs.next().ok_or_else(|| missing(REF_PLACEHOLDER, 1, 0))?.clone();
            rest = after;
            let mut span = Vec::new();
            while let Some(after) = rest.strip_prefix(BOX_PLACEHOLDER) {
                span.push(*boxes.next().ok_or_else(|| missing(BOX_PLACEHOLDER, 1, 0))?);
                rest = after;
            }
            pieces.push(if span.is_empty() { Piece::Ref(phrase) } else { Piece::Span(phrase, span) });
        } else if let Some(after) = rest.strip_prefix(BOX_PLACEHOLDER) {
            pieces.push(Piece::Box(*boxes.next().ok_or_else(|| missing(BOX_PLACEHOLDER, 1, 0))?));
            rest = after;
        }
    }
    Ok(pieces)
}

/// The pieces of every turn of a stored template; every phrase and box must be used.
pub fn turns_from_template(
    texts: &[String],
    refs: &[String],
    boxes: &[[f32; 4]],
) -> Result<Vec<Vec<Piece>>, TemplateError> {
    let count = |placeholder: &'static str| texts.iter().map(|t| t.matches(placeholder).count()).sum::<usize>();
    for (placeholder, values) in [(REF_PLACEHOLDER, refs.len()), (BOX_PLACEHOLDER, boxes.len())] {
        let placeholders = count(placeholder);
        if placeholders != values {
            return Err(TemplateError::Count { placeholder, placeholders, values });
        }
    }
    let (mut refs, mut boxes) = (refs.iter(), boxes.iter());
    texts.iter().map(|t| from_template(t, &mut refs, &mut boxes)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns() -> Vec<Vec<Piece>> {
        vec![
            vec![Piece::Text("<image>\nWhere is the ".into()), Piece::Ref("dog".into()), Piece::Text("?".into())],
            vec![Piece::Box([0.1, 0.2, 0.3, 0.4]), Piece::Text(", ".into()), Piece::Box([0.5, 0.5, 0.9, 0.9])],
            vec![
                Piece::Text("Describe ".into()),
                Piece::Span("a cat".into(), vec![[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),
                Piece::Text(".".into()),
            ],
        ]
    }

    #[test]
    fn the_template_is_ms_swifts_and_reads_back_to_the_same_pieces() {
        let Template { texts, refs, boxes } = to_template(&turns()).unwrap();
        assert_eq!(
            texts,
            ["<image>\nWhere is the <ref-object>?", "<bbox>, <bbox>", "Describe <ref-object><bbox><bbox>."]
        );
        assert_eq!(refs, ["dog", "a cat"]);
        assert_eq!(boxes.len(), 4);
        assert_eq!(turns_from_template(&texts, &refs, &boxes).unwrap(), turns());
    }

    #[test]
    fn text_that_holds_a_placeholder_has_no_template_and_counts_must_agree() {
        let mut t = turns();
        t[2][0] = Piece::Text("a <bbox> tag ".into());
        assert_eq!(to_template(&t), None);
        let Template { texts, refs, boxes } = to_template(&turns()).unwrap();
        assert_eq!(
            turns_from_template(&texts, &refs[..1], &boxes),
            Err(TemplateError::Count { placeholder: REF_PLACEHOLDER, placeholders: 2, values: 1 })
        );
    }

    #[test]
    fn render_writes_phrases_plain_and_boxes_in_the_format() {
        let text = render(&turns()[1], GroundedFormat::LYRICS, Size::new(640, 480));
        assert_eq!(text, "[0.100, 0.200, 0.300, 0.400], [0.500, 0.500, 0.900, 0.900]");
    }
}

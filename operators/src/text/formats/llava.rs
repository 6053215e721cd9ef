//! `llava`: LLaVA-1.5's REC data, `{phrase} [x1, y1, x2, y2]` with the coordinates as Python prints
//! `round(v, 2)` (`0.5`, `0.0`, `0.47`), boxes of one phrase joined by `, `, phrases by `; `. Frame: the padded
//! square — LLaVA-1.5 pads every image to a square (haotian-liu/LLaVA, `llava/mm_utils.py`, `expand2square`) and its
//! REC boxes are fractions of that square.

use super::{BoxFormat, Frame, GroundedObject, Size, four, numbers};

pub struct Llava;

/// Python's `str(round(v, 2))`: two decimals at most, trailing zeros dropped but one kept.
fn python_float(v: f32) -> String {
    let s = format!("{v:.2}");
    let trimmed = s.trim_end_matches('0');
    if trimmed.ends_with('.') { format!("{trimmed}0") } else { trimmed.to_string() }
}

fn list(b: [f32; 4]) -> String {
    format!("[{}]", b.map(python_float).join(", "))
}

impl BoxFormat for Llava {
    fn name(&self) -> &'static str {
        "llava"
    }

    fn frame(&self) -> Frame {
        Frame::PaddedSquare
    }

    fn precision(&self, _: Size) -> f32 {
        0.005
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        list(b)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        format!("{phrase} {}", boxes.iter().map(|b| list(*b)).collect::<Vec<_>>().join(", "))
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, frame: Size) -> String {
        super::grouped(objects).iter().map(|(p, boxes)| self.span_text(p, boxes, frame)).collect::<Vec<_>>().join("; ")
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for group in text.split("; ") {
            let Some(open) = group.find('[') else { continue };
            let phrase = group[..open].trim().to_string();
            for b in group[open..].split(']') {
                if let Some(bbox) = numbers(b.trim_start_matches([',', ' ', '[']), ',').as_deref().and_then(four) {
                    out.push(GroundedObject { phrase: phrase.clone(), bbox });
                }
            }
        }
        out
    }
}

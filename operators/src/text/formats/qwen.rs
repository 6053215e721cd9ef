//! `qwen`: Qwen-VL's (v1) `<ref>{phrase}</ref><box>(x1,y1),(x2,y2)</box>`, integers in `[0, 1000)`; several boxes of
//! one phrase follow one `<ref>`. Frame: the displayed image.

use super::{BoxFormat, GroundedObject, Size, clamp01, four, numbers};

pub struct Qwen;

/// Qwen-VL's integer coordinate: `round(v * 1000)` kept in `[0, 999]`.
pub fn quantize_1000(v: f32) -> u32 {
    ((clamp01(v) * 1000.0).round() as u32).min(999)
}

/// `(x1,y1),(x2,y2)` in Qwen's integers.
pub(super) fn corners(b: [f32; 4]) -> String {
    let [x1, y1, x2, y2] = b.map(quantize_1000);
    format!("({x1},{y1}),({x2},{y2})")
}

/// The box of `(x1,y1),(x2,y2)` in thousandths.
pub(super) fn read_corners(text: &str) -> Option<[f32; 4]> {
    four(&numbers(&text.replace(['(', ')'], ""), ',')?).map(|b| b.map(|c| c / 1000.0))
}

impl BoxFormat for Qwen {
    fn name(&self) -> &'static str {
        "qwen"
    }

    fn precision(&self, _: Size) -> f32 {
        0.001
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        format!("<box>{}</box>", corners(b))
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String {
        format!("<ref>{phrase}</ref>{}", boxes.iter().map(|b| self.box_text(*b, frame)).collect::<String>())
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for part in text.split("<ref>").skip(1) {
            let Some((phrase, boxes)) = part.split_once("</ref>") else { continue };
            for b in boxes.split("<box>").skip(1) {
                if let Some(bbox) = read_corners(b.split("</box>").next().unwrap_or_default()) {
                    out.push(GroundedObject { phrase: phrase.to_string(), bbox });
                }
            }
        }
        out
    }
}

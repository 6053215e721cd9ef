//! `internvl`: InternVL's `<ref>{phrase}</ref><box>[[x1, y1, x2, y2], [x1, y1, x2, y2]]</box>`, integers
//! `round(v × 1000)` in `[0, 1000]` (as ms-swift's InternVL template writes them; InternVL's
//! `eval/refcoco/evaluate_grounding.py` divides by 1000 and multiplies by the image's size). Frame: the displayed
//! image.

use super::{BoxFormat, GroundedObject, Size, clamp01, four, numbers};

pub struct InternVl;

fn list([x1, y1, x2, y2]: [f32; 4]) -> String {
    let [x1, y1, x2, y2] = [x1, y1, x2, y2].map(|v| (clamp01(v) * 1000.0).round() as u32);
    format!("[{x1}, {y1}, {x2}, {y2}]")
}

impl BoxFormat for InternVl {
    fn name(&self) -> &'static str {
        "internvl"
    }

    fn precision(&self, _: Size) -> f32 {
        0.0005
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        format!("<box>[{}]</box>", list(b))
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        format!("<ref>{phrase}</ref><box>[{}]</box>", boxes.iter().map(|b| list(*b)).collect::<Vec<_>>().join(", "))
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for part in text.split("<ref>").skip(1) {
            let Some((phrase, rest)) = part.split_once("</ref>") else { continue };
            let Some(inside) = rest.strip_prefix("<box>").and_then(|r| r.split("</box>").next()) else { continue };
            for b in inside.split(']').map(|b| b.trim_start_matches([',', ' ', '['])) {
                if let Some(bbox) = numbers(b, ',').as_deref().and_then(four) {
                    out.push(GroundedObject { phrase: phrase.to_string(), bbox: bbox.map(|v| v / 1000.0) });
                }
            }
        }
        out
    }
}

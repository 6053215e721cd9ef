//! `paligemma`: PaliGemma's detection answer, `<locY1><locX1><locY2><locX2> {phrase}` with **y first**, each
//! `<locNNNN>` the bin `round(v × 1023)` of 1024 (google-research/big_vision,
//! `big_vision/pp/proj/paligemma/segmentation.py`, `refcoco_mask2str`; decoded as `bin / 1023`), one box per entry,
//! entries joined by ` ; `. Frame: the displayed image (PaliGemma resizes to a square without padding).

use super::{BoxFormat, GroundedObject, Size, clamp01};

pub struct PaliGemma;

fn locs([x1, y1, x2, y2]: [f32; 4]) -> String {
    [y1, x1, y2, x2].map(|v| format!("<loc{:04}>", ((clamp01(v) * 1023.0).round() as u32).min(1023))).concat()
}

impl BoxFormat for PaliGemma {
    fn name(&self) -> &'static str {
        "paligemma"
    }

    fn precision(&self, _: Size) -> f32 {
        0.5 / 1023.0
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        locs(b)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        boxes.iter().map(|b| format!("{} {phrase}", locs(*b))).collect::<Vec<_>>().join(" ; ")
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, frame: Size) -> String {
        objects.iter().map(|o| self.span_text(&o.phrase, &[o.bbox], frame)).collect::<Vec<_>>().join(" ; ")
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for entry in text.split(" ; ") {
            let mut rest = entry.trim_start();
            let mut bins = Vec::new();
            while let Some(after) = rest.strip_prefix("<loc") {
                let Some((n, tail)) = after.split_once('>') else { break };
                let Ok(n) = n.parse::<u32>() else { break };
                bins.push(n as f32 / 1023.0);
                rest = tail;
            }
            if let [y1, x1, y2, x2] = bins[..] {
                out.push(GroundedObject { phrase: rest.trim().to_string(), bbox: [x1, y1, x2, y2] });
            }
        }
        out
    }
}

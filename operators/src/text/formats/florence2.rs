//! `florence2`: Florence-2's `{phrase}<loc_x1><loc_y1><loc_x2><loc_y2>`, x first, 1000 bins `floor(v × 1000)` kept
//! in `[0, 999]` (transformers' `Florence2PostProcessor.quantize`), decoded at the bin's centre
//! (`dequantize`: `(bin + 0.5) / 1000`); several boxes follow their phrase, phrases follow each other directly as in
//! the model's answers. Frame: the displayed image.

use super::{BoxFormat, GroundedObject, Size, clamp01};

pub struct Florence2;

fn locs(b: [f32; 4]) -> String {
    b.map(|v| format!("<loc_{}>", ((clamp01(v) * 1000.0).floor() as u32).min(999))).concat()
}

impl BoxFormat for Florence2 {
    fn name(&self) -> &'static str {
        "florence2"
    }

    fn precision(&self, _: Size) -> f32 {
        0.001
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        locs(b)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        format!("{phrase}{}", boxes.iter().map(|b| locs(*b)).collect::<String>())
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, frame: Size) -> String {
        super::grouped(objects).iter().map(|(p, boxes)| self.span_text(p, boxes, frame)).collect()
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        let mut phrase = String::new();
        let mut bins: Vec<f32> = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("<loc_")
                && let Some((n, tail)) = after.split_once('>')
                && let Ok(n) = n.parse::<u32>()
            {
                bins.push((n as f32 + 0.5) / 1000.0);
                if let [x1, y1, x2, y2] = bins[..] {
                    out.push(GroundedObject { phrase: phrase.trim().to_string(), bbox: [x1, y1, x2, y2] });
                    bins.clear();
                }
                rest = tail;
                continue;
            }
            // Text after a box starts the next phrase.
            if bins.is_empty() && out.last().is_some_and(|o| o.phrase == phrase.trim()) && !phrase.is_empty() {
                phrase.clear();
            }
            let next = rest.find("<loc_").filter(|&i| i > 0).unwrap_or(rest.len());
            phrase.push_str(&rest[..next]);
            rest = &rest[next..];
        }
        out
    }
}

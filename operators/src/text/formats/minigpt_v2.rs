//! `minigpt_v2`: MiniGPT-v2's `<p>{phrase}</p> {<x1><y1><x2><y2>}`, integers `int(v × 100)` in `[0, 100]`
//! (Vision-CAIR/MiniGPT-4, `minigpt4/datasets/datasets/coco_dataset.py`, `ReferCOCODataset.preprocess`), several
//! boxes of one phrase joined by `<delim>` as `demo_v2.py` parses them. Frame: the displayed image (MiniGPT-v2
//! resizes to 448×448 without padding).

use super::{BoxFormat, GroundedObject, Size, clamp01};

pub struct MiniGptV2;

fn braces(b: [f32; 4]) -> String {
    let [x1, y1, x2, y2] = b.map(|v| (clamp01(v) * 100.0) as u32);
    format!("{{<{x1}><{y1}><{x2}><{y2}>}}")
}

impl BoxFormat for MiniGptV2 {
    fn name(&self) -> &'static str {
        "minigpt_v2"
    }

    fn precision(&self, _: Size) -> f32 {
        0.01
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        braces(b)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        format!("<p>{phrase}</p> {}", boxes.iter().map(|b| braces(*b)).collect::<Vec<_>>().join("<delim>"))
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for part in text.split("<p>").skip(1) {
            let Some((phrase, rest)) = part.split_once("</p>") else { continue };
            let mut rest = rest.trim_start();
            // `{<a><b><c><d>}` boxes, joined by `<delim>`.
            while let Some(body) = rest.strip_prefix('{') {
                let Some(close) = body.find('}') else { break };
                let v: Vec<f32> = body[..close]
                    .split(['<', '>'])
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse::<f32>().ok())
                    .collect();
                if let Some(bbox) = super::four(&v) {
                    out.push(GroundedObject { phrase: phrase.to_string(), bbox: bbox.map(|c| c / 100.0) });
                }
                rest = body[close + 1..].strip_prefix("<delim>").unwrap_or("");
            }
        }
        out
    }
}

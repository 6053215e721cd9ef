//! `qwen2_vl`: Qwen2-VL's special tokens,
//! `<|object_ref_start|>{phrase}<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, integers in `[0, 1000)`
//! (`round(v × 1000)`, as ms-swift's `norm1000`), one `<|box_start|>…<|box_end|>` per box after the phrase.
//! Frame: the displayed image (relative coordinates are the same on the image Qwen2-VL's processor resizes).

use super::qwen::{corners, read_corners};
use super::{BoxFormat, GroundedObject, Size};

pub struct Qwen2Vl;

const REF: (&str, &str) = ("<|object_ref_start|>", "<|object_ref_end|>");
const BOX: (&str, &str) = ("<|box_start|>", "<|box_end|>");

impl BoxFormat for Qwen2Vl {
    fn name(&self) -> &'static str {
        "qwen2_vl"
    }

    fn precision(&self, _: Size) -> f32 {
        0.001
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        format!("{}{}{}", BOX.0, corners(b), BOX.1)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String {
        let boxes: String = boxes.iter().map(|b| self.box_text(*b, frame)).collect();
        format!("{}{phrase}{}{boxes}", REF.0, REF.1)
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for part in text.split(REF.0).skip(1) {
            let Some((phrase, boxes)) = part.split_once(REF.1) else { continue };
            for b in boxes.split(BOX.0).skip(1) {
                if let Some(bbox) = read_corners(b.split(BOX.1).next().unwrap_or_default()) {
                    out.push(GroundedObject { phrase: phrase.to_string(), bbox });
                }
            }
        }
        out
    }
}

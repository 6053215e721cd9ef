//! `qwen3_vl`: Qwen3-VL's JSON answer, `[{"bbox_2d": [x1, y1, x2, y2], "label": "{phrase}"}, …]` as Qwen2.5-VL's,
//! but relative again: integers `round(v × 1000)` in `[0, 1000]`. Frame: the resized image (`smart_resize` with
//! factor 32 = 16 px patches merged 2×2, 65536 to 16777216 pixels, the processor's defaults); relative coordinates
//! are the same on the displayed image, and the frame's size is written to `pretrain.frames` all the same.

use super::qwen2_5_vl::{entry, read_entries};
use super::{BoxFormat, Frame, GroundedObject, Resize, Size, clamp01};

pub struct Qwen3Vl;

fn thousandths(b: [f32; 4]) -> [u32; 4] {
    b.map(|v| (clamp01(v) * 1000.0).round() as u32)
}

impl BoxFormat for Qwen3Vl {
    fn name(&self) -> &'static str {
        "qwen3_vl"
    }

    fn frame(&self) -> Frame {
        Frame::Resized(Resize { factor: 32, min_pixels: 65536, max_pixels: 16777216 })
    }

    fn precision(&self, _: Size) -> f32 {
        0.0005
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        entry(thousandths(b), None)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        let entries: Vec<String> = boxes.iter().map(|b| entry(thousandths(*b), Some(phrase))).collect();
        format!("{phrase} [{}]", entries.join(", "))
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, _: Size) -> String {
        let entries: Vec<String> = objects.iter().map(|o| entry(thousandths(o.bbox), Some(&o.phrase))).collect();
        format!("[{}]", entries.join(", "))
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        read_entries(text).into_iter().map(|(phrase, b)| GroundedObject { phrase, bbox: b.map(|v| v / 1000.0) }).collect()
    }
}

//! `ferret`: Ferret's `{phrase} [x1, y1, x2, y2]` on a 1000-grid: the pixel box kept in `[0, side − 1]`
//! (`regulate_box`) times `1000 / side`, truncated (apple/ml-ferret, `ferret/train/train.py`,
//! `LazySupervisedDataset`), decoded as `int(v × side / 1000)` (`ferret/eval/eval_flickr_entities.py`,
//! `resize_bbox`); each box after its phrase, entries joined by `; ` as `decode_bbox_from_caption` splits them.
//! Frame: the displayed image.

use super::{BoxFormat, GroundedObject, Size, four, numbers};

pub struct Ferret;

fn grid(b: [f32; 4], frame: Size) -> [u32; 4] {
    let (w, h) = (frame.width as f32, frame.height as f32);
    let cell = |v: f32, side: f32| ((v * side).clamp(0.0, side - 1.0) * (1000.0 / side)) as u32;
    [cell(b[0], w), cell(b[1], h), cell(b[2], w), cell(b[3], h)]
}

fn list(b: [f32; 4], frame: Size) -> String {
    let [x1, y1, x2, y2] = grid(b, frame);
    format!("[{x1}, {y1}, {x2}, {y2}]")
}

impl BoxFormat for Ferret {
    fn name(&self) -> &'static str {
        "ferret"
    }

    fn precision(&self, frame: Size) -> f32 {
        // A thousandth lost to truncation, and the last pixel row or column that `regulate_box` cuts off.
        0.001 + 1.0 / frame.width.min(frame.height) as f32
    }

    fn box_text(&self, b: [f32; 4], frame: Size) -> String {
        list(b, frame)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String {
        boxes.iter().map(|b| format!("{phrase} {}", list(*b, frame))).collect::<Vec<_>>().join("; ")
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, frame: Size) -> String {
        objects.iter().map(|o| self.span_text(&o.phrase, &[o.bbox], frame)).collect::<Vec<_>>().join("; ")
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for entry in text.split("; ") {
            let Some(open) = entry.find('[') else { continue };
            let Some(close) = entry[open..].find(']') else { continue };
            if let Some(bbox) = numbers(&entry[open + 1..open + close], ',').as_deref().and_then(four) {
                out.push(GroundedObject { phrase: entry[..open].trim().to_string(), bbox: bbox.map(|v| v / 1000.0) });
            }
        }
        out
    }
}

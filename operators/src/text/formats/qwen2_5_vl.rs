//! `qwen2_5_vl`: Qwen2.5-VL's JSON answer, `[{"bbox_2d": [x1, y1, x2, y2], "label": "{phrase}"}, …]`, one entry per
//! box, in **absolute pixels of the image as its processor resizes it**. Frame: the resized image — qwen-vl-utils'
//! `smart_resize` with factor 28, `min_pixels` 3136 and `max_pixels` 12845056 (Qwen2.5-VL's processor defaults);
//! the frame's size is written to `pretrain.frames` so a reader can map the boxes back.

use super::{BoxFormat, Frame, GroundedObject, Resize, Size};

pub struct Qwen25Vl;

/// One `{"bbox_2d": […], "label": …}` entry, with the spacing of the models' own answers.
pub(super) fn entry(b: [u32; 4], label: Option<&str>) -> String {
    let [x1, y1, x2, y2] = b;
    match label {
        Some(label) => format!(
            "{{\"bbox_2d\": [{x1}, {y1}, {x2}, {y2}], \"label\": {}}}",
            serde_json::Value::from(label)
        ),
        None => format!("{{\"bbox_2d\": [{x1}, {y1}, {x2}, {y2}]}}"),
    }
}

/// The `bbox_2d` entries of a JSON answer (inside a ```json fence or not) with their labels.
pub(super) fn read_entries(text: &str) -> Vec<(String, [f32; 4])> {
    let body = text.trim().trim_start_matches("```json").trim_end_matches("```");
    let Some(start) = body.find('[') else { return Vec::new() };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&body[start..body.rfind(']').map_or(body.len(), |e| e + 1)])
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let b: Vec<f32> = item.get("bbox_2d")?.as_array()?.iter().map(|v| v.as_f64().map(|v| v as f32)).collect::<Option<_>>()?;
            let label = item.get("label").and_then(|l| l.as_str()).unwrap_or_default().to_string();
            Some((label, super::four(&b)?))
        })
        .collect()
}

fn pixels(b: [f32; 4], frame: Size) -> [u32; 4] {
    let (w, h) = (frame.width as f32, frame.height as f32);
    [(b[0] * w).round() as u32, (b[1] * h).round() as u32, (b[2] * w).round() as u32, (b[3] * h).round() as u32]
}

impl BoxFormat for Qwen25Vl {
    fn name(&self) -> &'static str {
        "qwen2_5_vl"
    }

    fn frame(&self) -> Frame {
        Frame::Resized(Resize::QWEN2_5_VL)
    }

    fn precision(&self, frame: Size) -> f32 {
        0.5 / frame.width.min(frame.height) as f32
    }

    fn box_text(&self, b: [f32; 4], frame: Size) -> String {
        entry(pixels(b, frame), None)
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String {
        let entries: Vec<String> = boxes.iter().map(|b| entry(pixels(*b, frame), Some(phrase))).collect();
        format!("{phrase} [{}]", entries.join(", "))
    }

    fn objects_text(&self, objects: &[GroundedObject], _: Option<&str>, frame: Size) -> String {
        let entries: Vec<String> = objects.iter().map(|o| entry(pixels(o.bbox, frame), Some(&o.phrase))).collect();
        format!("[{}]", entries.join(", "))
    }

    fn parse(&self, text: &str, frame: Size) -> Vec<GroundedObject> {
        let (w, h) = (frame.width as f32, frame.height as f32);
        read_entries(text)
            .into_iter()
            .map(|(phrase, b)| GroundedObject { phrase, bbox: [b[0] / w, b[1] / h, b[2] / w, b[3] / h] })
            .collect()
    }
}

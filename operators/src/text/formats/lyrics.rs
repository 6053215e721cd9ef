//! `lyrics`: the Lyrics Q-Former text input, `"{tag}: [x1, y1, x2, y2]"` with 3 decimals, segments joined by `"; "`
//! in reading order, then `". "` and the caption. Objects are named by their tag. Frame: the displayed image.

use super::{BoxFormat, GroundedObject, Size, four, numbers};

pub struct Lyrics;

impl BoxFormat for Lyrics {
    fn name(&self) -> &'static str {
        "lyrics"
    }

    fn precision(&self, _: Size) -> f32 {
        0.0005
    }

    fn names_objects_by_label(&self) -> bool {
        true
    }

    fn box_text(&self, [x1, y1, x2, y2]: [f32; 4], _: Size) -> String {
        format!("[{x1:.3}, {y1:.3}, {x2:.3}, {y2:.3}]")
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String {
        let boxes: Vec<String> = boxes.iter().map(|b| self.box_text(*b, frame)).collect();
        format!("{phrase} {}", boxes.join(", "))
    }

    fn objects_text(&self, objects: &[GroundedObject], caption: Option<&str>, frame: Size) -> String {
        let segments: Vec<String> =
            objects.iter().map(|o| format!("{}: {}", o.phrase, self.box_text(o.bbox, frame))).collect();
        let mut text = segments.join("; ");
        if let Some(caption) = caption.filter(|c| !c.trim().is_empty()) {
            if !text.is_empty() {
                text.push_str(". ");
            }
            text.push_str(caption.trim());
        }
        text
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        let mut rest = text;
        // Each segment is `phrase: [a, b, c, d]`; segments are joined by "; ".
        while let Some(open) = rest.find(": [") {
            let phrase = rest[..open].rsplit("; ").next().unwrap_or_default().trim().to_string();
            let after = &rest[open + 3..];
            let Some(close) = after.find(']') else { break };
            if let Some(bbox) = numbers(&after[..close], ',').as_deref().and_then(four) {
                out.push(GroundedObject { phrase, bbox });
            }
            rest = &after[close + 1..];
        }
        out
    }
}

//! `shikra`: Shikra's `PlainBoxFormatter` (shikras/shikra, `mllm/dataset/process_function/box_process_function.py`):
//! `{phrase}[x1,y1,x2,y2;x1,y1,x2,y2]`, 3 decimals, `;` between the boxes of one phrase. Frame: the padded square —
//! Shikra pastes every image on a square (`expand2square`), shifts boxes by the same whole-pixel offset
//! (`box_xyxy_expand2square`) and normalizes by the square's side (`norm_box_xyxy`).

use super::{BoxFormat, Frame, GroundedObject, Size, four, numbers};

pub struct Shikra;

fn inner([x1, y1, x2, y2]: [f32; 4]) -> String {
    format!("{x1:.3},{y1:.3},{x2:.3},{y2:.3}")
}

impl BoxFormat for Shikra {
    fn name(&self) -> &'static str {
        "shikra"
    }

    fn frame(&self) -> Frame {
        Frame::PaddedSquare
    }

    fn precision(&self, _: Size) -> f32 {
        0.0005
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        format!("[{}]", inner(b))
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        format!("{phrase}[{}]", boxes.iter().map(|b| inner(*b)).collect::<Vec<_>>().join(";"))
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            let phrase = rest[..open].trim().to_string();
            let Some(close) = rest[open..].find(']') else { break };
            for b in rest[open + 1..open + close].split(';') {
                if let Some(bbox) = numbers(b, ',').as_deref().and_then(four) {
                    out.push(GroundedObject { phrase: phrase.clone(), bbox });
                }
            }
            rest = &rest[open + close + 1..];
        }
        out
    }
}

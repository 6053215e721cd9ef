//! `kosmos2`: Kosmos-2's `<phrase>{phrase}</phrase><object><patch_index_XXXX><patch_index_YYYY></object>` on a 32×32
//! grid (the top-left and bottom-right cells, as `coordinate_to_patch_index` in transformers), with
//! `</delimiter_of_multi_objects/>` between several boxes of one phrase. Frame: the displayed image.

use super::{BoxFormat, GroundedObject, Size, unit};

pub struct Kosmos2;

const GRID: u32 = 32;

/// Kosmos-2's `coordinate_to_patch_index`: top-left and bottom-right cells on a `grid`×`grid` grid. On an axis where
/// the box is degenerate (which transformers refuses) the bottom-right cell keeps the top-left one's coordinate.
pub fn to_patch_indices(b: [f32; 4], grid: u32) -> (u32, u32) {
    let [x1, y1, x2, y2] = unit(b);
    let g = grid as f32;
    let cell = |v: f32| (v.floor() as u32).min(grid - 1);
    let (ul_x, ul_y) = (cell(x1 * g), cell(y1 * g));
    let far = |lo: f32, hi: f32, ul: u32| if hi > lo { cell((hi * g - 1.0).ceil().max(0.0)).max(ul) } else { ul };
    let (lr_x, lr_y) = (far(x1, x2, ul_x), far(y1, y2, ul_y));
    (ul_y * grid + ul_x, lr_y * grid + lr_x)
}

/// Kosmos-2's `patch_index_to_coordinate`.
pub fn from_patch_indices(ul: u32, lr: u32, grid: u32) -> [f32; 4] {
    let cell = 1.0 / grid as f32;
    let (ul_x, ul_y, lr_x, lr_y) = ((ul % grid) as f32, (ul / grid) as f32, (lr % grid) as f32, (lr / grid) as f32);
    if ul == lr || ul_x == lr_x || ul_y == lr_y {
        [ul_x * cell, ul_y * cell, lr_x * cell + cell, lr_y * cell + cell]
    } else {
        [ul_x * cell + cell / 2.0, ul_y * cell + cell / 2.0, lr_x * cell + cell / 2.0, lr_y * cell + cell / 2.0]
    }
}

fn cells(b: [f32; 4]) -> String {
    let (ul, lr) = to_patch_indices(b, GRID);
    format!("<patch_index_{ul:04}><patch_index_{lr:04}>")
}

impl BoxFormat for Kosmos2 {
    fn name(&self) -> &'static str {
        "kosmos2"
    }

    fn precision(&self, _: Size) -> f32 {
        1.0 / GRID as f32
    }

    fn box_text(&self, b: [f32; 4], _: Size) -> String {
        format!("<object>{}</object>", cells(b))
    }

    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], _: Size) -> String {
        let cells: Vec<String> = boxes.iter().map(|b| cells(*b)).collect();
        format!("<phrase>{phrase}</phrase><object>{}</object>", cells.join("</delimiter_of_multi_objects/>"))
    }

    fn parse(&self, text: &str, _: Size) -> Vec<GroundedObject> {
        let mut out = Vec::new();
        for part in text.split("<phrase>").skip(1) {
            let Some((phrase, rest)) = part.split_once("</phrase>") else { continue };
            let object = rest.split("</object>").next().unwrap_or_default().trim_start_matches("<object>");
            for pair in object.split("</delimiter_of_multi_objects/>") {
                let idx: Vec<u32> = pair
                    .split("<patch_index_")
                    .skip(1)
                    .filter_map(|p| p.trim_end_matches('>').split('>').next()?.parse().ok())
                    .collect();
                if let [ul, lr] = idx[..] {
                    out.push(GroundedObject { phrase: phrase.to_string(), bbox: from_patch_indices(ul, lr, GRID) });
                }
            }
        }
        out
    }
}

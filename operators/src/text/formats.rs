//! The grounded text formats, each with a parser: `parse(format(x))` returns `x` within the format's precision.
//!
//! - `lyrics`: the Lyrics Q-Former text input, `"{tag}: [x1, y1, x2, y2]"` with 3 decimals, segments joined by
//!   `"; "` in reading order (top to bottom, then left to right), then `". "` and the caption;
//! - `qwen`: Qwen-VL's `<ref>{phrase}</ref><box>(x1,y1),(x2,y2)</box>`, integers in `[0, 1000)`; several boxes of one
//!   phrase follow one `<ref>`;
//! - `kosmos2`: Kosmos-2's `<phrase>{phrase}</phrase><object><patch_index_XXXX><patch_index_YYYY></object>` on a
//!   32×32 grid (the top-left and bottom-right cells, as `coordinate_to_patch_index` in transformers), with
//!   `</delimiter_of_multi_objects/>` between several boxes of one phrase;
//! - `shikra`: `{phrase}[x1,y1,x2,y2;x1,y1,x2,y2]`, 3 decimals, `;` between the boxes of one phrase.
//!
//! Boxes are `[x1, y1, x2, y2]` fractions of the displayed image; every formatter clamps them into `[0, 1]`.

use serde::{Deserialize, Serialize};

/// A phrase and a box, as the formats carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundedObject {
    pub phrase: String,
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundedFormat {
    Lyrics,
    Qwen,
    Kosmos2,
    Shikra,
}

impl GroundedFormat {
    pub const ALL: [GroundedFormat; 4] =
        [GroundedFormat::Lyrics, GroundedFormat::Qwen, GroundedFormat::Kosmos2, GroundedFormat::Shikra];

    pub fn name(self) -> &'static str {
        match self {
            GroundedFormat::Lyrics => "lyrics",
            GroundedFormat::Qwen => "qwen",
            GroundedFormat::Kosmos2 => "kosmos2",
            GroundedFormat::Shikra => "shikra",
        }
    }

    /// The largest coordinate error a round trip may introduce.
    pub fn precision(self) -> f32 {
        match self {
            GroundedFormat::Lyrics | GroundedFormat::Shikra => 0.0005,
            GroundedFormat::Qwen => 0.001,
            GroundedFormat::Kosmos2 => 1.0 / 32.0,
        }
    }
}

const KOSMOS_GRID: u32 = 32;

fn clamp01(v: f32) -> f32 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// The box clamped into the unit square with ordered corners.
fn unit(b: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = b.map(clamp01);
    [x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)]
}

/// Qwen-VL's integer coordinate: `round(v * 1000)` kept in `[0, 999]`.
pub fn quantize_1000(v: f32) -> u32 {
    ((clamp01(v) * 1000.0).round() as u32).min(999)
}

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

/// One box in `format`'s own notation (no phrase).
pub fn format_box(format: GroundedFormat, b: [f32; 4]) -> String {
    let [x1, y1, x2, y2] = unit(b);
    match format {
        GroundedFormat::Lyrics => format!("[{x1:.3}, {y1:.3}, {x2:.3}, {y2:.3}]"),
        GroundedFormat::Shikra => format!("[{x1:.3},{y1:.3},{x2:.3},{y2:.3}]"),
        GroundedFormat::Qwen => format!(
            "<box>({},{}),({},{})</box>",
            quantize_1000(x1),
            quantize_1000(y1),
            quantize_1000(x2),
            quantize_1000(y2)
        ),
        GroundedFormat::Kosmos2 => {
            let (ul, lr) = to_patch_indices([x1, y1, x2, y2], KOSMOS_GRID);
            format!("<object><patch_index_{ul:04}><patch_index_{lr:04}></object>")
        }
    }
}

/// Groups boxes by phrase, keeping the order of first appearance.
fn grouped(objects: &[GroundedObject]) -> Vec<(&str, Vec<[f32; 4]>)> {
    let mut groups: Vec<(&str, Vec<[f32; 4]>)> = Vec::new();
    for o in objects {
        match groups.iter_mut().find(|(p, _)| *p == o.phrase) {
            Some((_, boxes)) => boxes.push(unit(o.bbox)),
            None => groups.push((o.phrase.as_str(), vec![unit(o.bbox)])),
        }
    }
    groups
}

/// Objects in reading order: top to bottom, then left to right, then by phrase.
fn reading_order(objects: &[GroundedObject]) -> Vec<GroundedObject> {
    let mut sorted: Vec<GroundedObject> =
        objects.iter().map(|o| GroundedObject { phrase: o.phrase.clone(), bbox: unit(o.bbox) }).collect();
    sorted.sort_by(|a, b| {
        a.bbox[1]
            .total_cmp(&b.bbox[1])
            .then(a.bbox[0].total_cmp(&b.bbox[0]))
            .then(a.phrase.cmp(&b.phrase))
            .then(a.bbox[2].total_cmp(&b.bbox[2]))
    });
    sorted
}

/// The objects (and, for `lyrics`, the caption) in `format`.
pub fn format_objects(format: GroundedFormat, objects: &[GroundedObject], caption: Option<&str>) -> String {
    let ordered = reading_order(objects);
    match format {
        GroundedFormat::Lyrics => {
            let segments: Vec<String> =
                ordered.iter().map(|o| format!("{}: {}", o.phrase, format_box(format, o.bbox))).collect();
            let mut text = segments.join("; ");
            if let Some(caption) = caption.filter(|c| !c.trim().is_empty()) {
                if !text.is_empty() {
                    text.push_str(". ");
                }
                text.push_str(caption.trim());
            }
            text
        }
        GroundedFormat::Qwen => grouped(&ordered)
            .iter()
            .map(|(p, boxes)| {
                format!("<ref>{p}</ref>{}", boxes.iter().map(|b| format_box(format, *b)).collect::<String>())
            })
            .collect::<Vec<_>>()
            .join(" "),
        GroundedFormat::Kosmos2 => grouped(&ordered)
            .iter()
            .map(|(p, boxes)| {
                let cells: Vec<String> = boxes
                    .iter()
                    .map(|b| {
                        let (ul, lr) = to_patch_indices(*b, KOSMOS_GRID);
                        format!("<patch_index_{ul:04}><patch_index_{lr:04}>")
                    })
                    .collect();
                format!("<phrase>{p}</phrase><object>{}</object>", cells.join("</delimiter_of_multi_objects/>"))
            })
            .collect::<Vec<_>>()
            .join(" "),
        GroundedFormat::Shikra => grouped(&ordered)
            .iter()
            .map(|(p, boxes)| {
                let inner: Vec<String> =
                    boxes.iter().map(|b| format!("{:.3},{:.3},{:.3},{:.3}", b[0], b[1], b[2], b[3])).collect();
                format!("{p}[{}]", inner.join(";"))
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn numbers(text: &str, separator: char) -> Option<Vec<f32>> {
    text.split(separator).map(|n| n.trim().parse::<f32>().ok()).collect()
}

/// Reads back what [`format_objects`] wrote (the caption of `lyrics` is left out).
pub fn parse_objects(format: GroundedFormat, text: &str) -> Vec<GroundedObject> {
    let mut out = Vec::new();
    match format {
        GroundedFormat::Lyrics => {
            let mut rest = text;
            // Each segment is `phrase: [a, b, c, d]`; segments are joined by "; ".
            while let Some(open) = rest.find(": [") {
                let phrase = rest[..open].rsplit("; ").next().unwrap_or_default().trim().to_string();
                let after = &rest[open + 3..];
                let Some(close) = after.find(']') else { break };
                if let Some(v) = numbers(&after[..close], ',').filter(|v| v.len() == 4) {
                    out.push(GroundedObject { phrase, bbox: [v[0], v[1], v[2], v[3]] });
                }
                rest = &after[close + 1..];
            }
        }
        GroundedFormat::Qwen => {
            for part in text.split("<ref>").skip(1) {
                let Some((phrase, boxes)) = part.split_once("</ref>") else { continue };
                for b in boxes.split("<box>").skip(1) {
                    let inner = b.split("</box>").next().unwrap_or_default().replace(['(', ')'], "");
                    if let Some(v) = numbers(&inner, ',').filter(|v| v.len() == 4) {
                        out.push(GroundedObject {
                            phrase: phrase.to_string(),
                            bbox: [v[0], v[1], v[2], v[3]].map(|c| c / 1000.0),
                        });
                    }
                }
            }
        }
        GroundedFormat::Kosmos2 => {
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
                        out.push(GroundedObject {
                            phrase: phrase.to_string(),
                            bbox: from_patch_indices(ul, lr, KOSMOS_GRID),
                        });
                    }
                }
            }
        }
        GroundedFormat::Shikra => {
            let mut rest = text;
            while let Some(open) = rest.find('[') {
                let phrase = rest[..open].trim().to_string();
                let Some(close) = rest[open..].find(']') else { break };
                for b in rest[open + 1..open + close].split(';') {
                    if let Some(v) = numbers(b, ',').filter(|v| v.len() == 4) {
                        out.push(GroundedObject { phrase: phrase.clone(), bbox: [v[0], v[1], v[2], v[3]] });
                    }
                }
                rest = &rest[open + close + 1..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(phrase: &str, bbox: [f32; 4]) -> GroundedObject {
        GroundedObject { phrase: phrase.into(), bbox }
    }

    fn hand_checked() -> Vec<GroundedObject> {
        vec![
            obj("dog", [0.12, 0.34, 0.56, 0.9]),
            obj("cat", [0.6, 0.1, 0.95, 0.5]),
            obj("dog", [0.0, 0.5, 0.1, 1.0]),
        ]
    }

    #[test]
    fn golden_lyrics() {
        assert_eq!(
            format_objects(GroundedFormat::Lyrics, &hand_checked(), Some("two dogs and a cat")),
            "cat: [0.600, 0.100, 0.950, 0.500]; dog: [0.120, 0.340, 0.560, 0.900]; dog: [0.000, 0.500, 0.100, 1.000]. two dogs and a cat"
        );
        assert_eq!(format_objects(GroundedFormat::Lyrics, &[], Some("just words")), "just words");
    }

    #[test]
    fn golden_qwen() {
        assert_eq!(
            format_objects(GroundedFormat::Qwen, &hand_checked(), None),
            "<ref>cat</ref><box>(600,100),(950,500)</box> <ref>dog</ref><box>(120,340),(560,900)</box><box>(0,500),(100,999)</box>"
        );
    }

    #[test]
    fn golden_kosmos2() {
        // transformers: coordinate_to_patch_index((0.12, 0.34, 0.56, 0.9), 32) == (10*32+3, 28*32+17) == (323, 913)
        assert_eq!(to_patch_indices([0.12, 0.34, 0.56, 0.9], 32), (323, 913));
        assert_eq!(
            format_objects(GroundedFormat::Kosmos2, &hand_checked(), None),
            "<phrase>cat</phrase><object><patch_index_0115><patch_index_0510></object> \
             <phrase>dog</phrase><object><patch_index_0323><patch_index_0913></delimiter_of_multi_objects/><patch_index_0512><patch_index_0995></object>"
        );
    }

    #[test]
    fn golden_shikra() {
        assert_eq!(
            format_objects(GroundedFormat::Shikra, &hand_checked(), None),
            "cat[0.600,0.100,0.950,0.500] dog[0.120,0.340,0.560,0.900;0.000,0.500,0.100,1.000]"
        );
    }

    #[test]
    fn degenerate_full_and_out_of_range_boxes() {
        assert_eq!(format_box(GroundedFormat::Lyrics, [1.2, -0.1, 0.5, 0.5]), "[0.500, 0.000, 1.000, 0.500]");
        assert_eq!(format_box(GroundedFormat::Qwen, [0.0, 0.0, 1.0, 1.0]), "<box>(0,0),(999,999)</box>");
        assert_eq!(to_patch_indices([0.5, 0.5, 0.5, 0.5], 32), (16 * 32 + 16, 16 * 32 + 16));
        assert_eq!(to_patch_indices([0.0, 0.0, 1.0, 1.0], 32), (0, 1023));
        assert_eq!(format_box(GroundedFormat::Shikra, [f32::NAN, 0.0, 1.0, 1.0]), "[0.000,0.000,1.000,1.000]");
    }

    fn boxes() -> impl Strategy<Value = [f32; 4]> {
        (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0)
            .prop_map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)])
    }

    fn phrase() -> impl Strategy<Value = String> {
        "[a-z]{1,8}( [a-z]{1,8})?"
    }

    proptest! {
        #[test]
        fn every_format_round_trips(objects in proptest::collection::vec((phrase(), boxes()), 0..6)) {
            let objects: Vec<GroundedObject> = objects.into_iter().map(|(p, b)| GroundedObject { phrase: p, bbox: b }).collect();
            for format in GroundedFormat::ALL {
                let text = format_objects(format, &objects, Some("a caption"));
                let parsed = parse_objects(format, &text);
                prop_assert_eq!(parsed.len(), objects.len(), "{:?}: {}", format, text);
                let mut expected = reading_order(&objects);
                if format != GroundedFormat::Lyrics {
                    expected = grouped(&expected).into_iter().flat_map(|(p, bs)| bs.into_iter().map(move |b| GroundedObject { phrase: p.to_string(), bbox: b })).collect();
                }
                for (got, want) in parsed.iter().zip(&expected) {
                    prop_assert_eq!(&got.phrase, &want.phrase);
                    for (g, w) in got.bbox.iter().zip(want.bbox) {
                        // Kosmos-2 decodes to cell centres; Qwen's top cell is 999/1000.
                        prop_assert!((g - w).abs() <= format.precision() + 1e-6, "{:?}: {:?} vs {:?} in {}", format, got.bbox, want.bbox, text);
                    }
                }
            }
        }

        #[test]
        fn patch_indices_stay_on_the_grid(b in boxes()) {
            let (ul, lr) = to_patch_indices(b, 32);
            prop_assert!(ul < 1024 && lr < 1024);
            prop_assert!(ul % 32 <= lr % 32 && ul / 32 <= lr / 32);
        }

        /// Pixel boxes of any image, 1×1 included, possibly reaching outside it, go through the same conversion as
        /// the refiner's (clamp to the image, divide by its size) and survive every format within its precision.
        #[test]
        fn pixel_boxes_of_any_image_survive_every_format(
            w in 1u32..5000, h in 1u32..5000,
            corners in (-1.0f32..2.0, -1.0f32..2.0, -1.0f32..2.0, -1.0f32..2.0),
        ) {
            let (w, h) = (w as f32, h as f32);
            let pixels = crate::geometry::BoxXyxy([corners.0 * w, corners.1 * h, corners.2 * w, corners.3 * h]);
            let unit = pixels.clamped(w, h).scaled(1.0 / w, 1.0 / h).0;
            prop_assert!(unit.iter().all(|v| (0.0..=1.0).contains(v)), "{:?}", unit);
            prop_assert!(unit[0] <= unit[2] && unit[1] <= unit[3]);
            for format in GroundedFormat::ALL {
                let text = format_objects(format, &[obj("thing", unit)], None);
                let parsed = parse_objects(format, &text);
                prop_assert_eq!(parsed.len(), 1, "{}", text);
                for (g, u) in parsed[0].bbox.iter().zip(unit) {
                    prop_assert!((0.0..=1.0).contains(g));
                    prop_assert!((g - u).abs() <= format.precision() + 1e-6, "{:?}: {:?} vs {:?}", format, parsed[0].bbox, unit);
                }
            }
        }

        #[test]
        fn quantized_coordinates_stay_below_1000(v in -1.0f32..2.0) {
            prop_assert!(quantize_1000(v) < 1000);
        }
    }
}

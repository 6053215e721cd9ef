//! Golden tests of the grounded formats against each trainer's own reading: boxes on images of every shape
//! (portrait, landscape, square, 64 px, 4000 px, the displayed size of an EXIF-rotated photo, odd sides) are written
//! in every registered format, read back by `tests/reference/grounded_formats.py` as the trainer reads them
//! (transformers' and qwen-vl-utils' own code where it installs, faithful ports elsewhere), mapped back to the
//! displayed image, and must land within one quantization step plus one pixel of where they started.

use crate::support;

use lyrics_operators::text::{GroundedFormat, GroundedObject, Size};
use support::*;

/// Displayed sizes: portrait, landscape, square, 64 px, a 64×96 scene, 4000 px, a 4000×3000 photo with EXIF
/// orientation 6 as displayed (3000×4000), odd sides whose padding offsets round down, one pixel.
const SIZES: [(u32, u32); 10] = [
    (480, 640),
    (640, 480),
    (512, 512),
    (64, 64),
    (64, 96),
    (4000, 3000),
    (3000, 4000),
    (101, 50),
    (33, 77),
    (1, 1),
];

const PHRASES: [&str; 3] = ["red square", "dog", "blue circle"];

/// A deterministic spread of pixel boxes (SplitMix64), two of one phrase, so every format's grouping is exercised.
fn pixel_boxes(w: u32, h: u32, seed: u64) -> Vec<(String, [f32; 4])> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 10_000) as f32 / 10_000.0
    };
    let (wf, hf) = (w as f32, h as f32);
    let mut out = Vec::new();
    for i in 0..4 {
        let (a, b, c, d) = (next(), next(), next(), next());
        let b = [(a.min(c) * wf).floor(), (b.min(d) * hf).floor(), (a.max(c) * wf).ceil(), (b.max(d) * hf).ceil()];
        out.push((PHRASES[i % PHRASES.len()].to_string(), b));
    }
    // A box of the whole image, and one touching the far edges.
    out.push(("dog".to_string(), [0.0, 0.0, wf, hf]));
    out
}

#[test]
fn every_format_reads_back_as_its_trainer_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let image = Size::new(w, h);
        let pixels = pixel_boxes(w, h, i as u64 + 1);
        let objects: Vec<GroundedObject> = pixels
            .iter()
            .map(|(p, b)| GroundedObject {
                phrase: p.clone(),
                bbox: [b[0] / w as f32, b[1] / h as f32, b[2] / w as f32, b[3] / h as f32],
            })
            .collect();
        for &format in GroundedFormat::all() {
            let text = format.format_objects(&objects, None, image);
            cases.push(serde_json::json!({"format": format.name(), "width": w, "height": h, "text": text}));
            expected.push((format, w, h, text, pixels.clone()));
        }
    }
    let kosmos2_boxes =
        [[0.12f32, 0.34, 0.56, 0.9], [0.0, 0.0, 1.0, 1.0], [0.6, 0.1, 0.95, 0.5], [0.5, 0.5, 0.51, 0.99]];
    let sizes: Vec<[u32; 2]> = SIZES.iter().map(|&(w, h)| [w, h]).collect();
    let input = dir.path().join("cases.json");
    let output = dir.path().join("read.json");
    std::fs::write(
        &input,
        serde_json::json!({"cases": cases, "sizes": sizes, "kosmos2_boxes": kosmos2_boxes}).to_string(),
    )
    .unwrap();
    python_script("tests/reference/grounded_formats.py", &[&s(&input), &s(&output)], &Env::new());
    let read: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();

    let mut checked = 0;
    for ((format, w, h, text, pixels), got) in expected.iter().zip(read["cases"].as_array().unwrap()) {
        let boxes: Vec<[f32; 4]> = serde_json::from_value(got["boxes"].clone()).unwrap();
        let phrases: Vec<Option<String>> = serde_json::from_value(got["phrases"].clone()).unwrap();
        assert_eq!(boxes.len(), pixels.len(), "{format} on {w}×{h}: the trainer read {boxes:?} from {text}");
        let [tx, ty] = format.tolerance(Size::new(*w, *h));
        // One quantization step plus one pixel, in pixels of the displayed image.
        let (sx, sy) = (tx * *w as f32 + 1.0, ty * *h as f32 + 1.0);
        let mut unmatched: Vec<&(String, [f32; 4])> = pixels.iter().collect();
        for (b, phrase) in boxes.iter().zip(&phrases) {
            let close = |want: &[f32; 4]| {
                b.iter()
                    .zip(want)
                    .enumerate()
                    .all(|(i, (g, w))| (g - w).abs() <= if i % 2 == 0 { sx } else { sy } + 1e-3)
            };
            // Qwen-VL's reader gives the phrase only to the first box after it.
            let same_phrase = |p: &str| phrase.as_deref().is_none_or(|q| q.is_empty() || q == p);
            let at = unmatched.iter().position(|(p, want)| same_phrase(p) && close(want)).unwrap_or_else(|| {
                panic!("{format} on {w}×{h}: the trainer read {phrase:?} {b:?}, which is no box written ({pixels:?}) within {sx}×{sy} px; text {text}")
            });
            unmatched.remove(at);
            checked += 1;
        }
    }
    assert_eq!(checked, SIZES.len() * GroundedFormat::all().len() * 5);

    // The frames: qwen-vl-utils' own smart_resize.
    for (key, name) in [("qwen2_5_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen3_vl")] {
        let format = GroundedFormat::named(name).unwrap();
        let want: Vec<[u32; 2]> = serde_json::from_value(read[key].clone()).unwrap();
        let got: Vec<[u32; 2]> = SIZES
            .iter()
            .map(|&(w, h)| {
                let s = format.frame_size(Size::new(w, h));
                [s.width, s.height]
            })
            .collect();
        assert_eq!(got, want, "{name}'s frame as qwen-vl-utils resizes {SIZES:?}");
    }
    // Kosmos-2's cells: transformers' own coordinate_to_patch_index.
    let want: Vec<[u32; 2]> = serde_json::from_value(read["kosmos2_patch_index"].clone()).unwrap();
    let got: Vec<[u32; 2]> = kosmos2_boxes
        .iter()
        .map(|b| {
            let (ul, lr) = lyrics_operators::text::to_patch_indices(*b, 32);
            [ul, lr]
        })
        .collect();
    assert_eq!(got, want);
}

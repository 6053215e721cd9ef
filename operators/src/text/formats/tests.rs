//! Golden texts of every format and round trips over random boxes and image sizes.

use super::*;
use proptest::prelude::*;

pub(super) fn obj(phrase: &str, bbox: [f32; 4]) -> GroundedObject {
    GroundedObject { phrase: phrase.into(), bbox }
}

pub(super) fn hand_checked() -> Vec<GroundedObject> {
    vec![obj("dog", [0.12, 0.34, 0.56, 0.9]), obj("cat", [0.6, 0.1, 0.95, 0.5]), obj("dog", [0.0, 0.5, 0.1, 1.0])]
}

pub(super) fn format(name: &str) -> GroundedFormat {
    GroundedFormat::named(name).unwrap_or_else(|| panic!("{name} is registered"))
}

const SQUARE: Size = Size { width: 640, height: 640 };

#[test]
fn golden_lyrics() {
    assert_eq!(
        format("lyrics").format_objects(&hand_checked(), Some("two dogs and a cat"), SQUARE),
        "cat: [0.600, 0.100, 0.950, 0.500]; dog: [0.120, 0.340, 0.560, 0.900]; dog: [0.000, 0.500, 0.100, 1.000]. two dogs and a cat"
    );
    assert_eq!(format("lyrics").format_objects(&[], Some("just words"), SQUARE), "just words");
}

#[test]
fn golden_qwen() {
    assert_eq!(
        format("qwen").format_objects(&hand_checked(), None, SQUARE),
        "<ref>cat</ref><box>(600,100),(950,500)</box> <ref>dog</ref><box>(120,340),(560,900)</box><box>(0,500),(100,999)</box>"
    );
}

#[test]
fn golden_kosmos2() {
    // transformers: coordinate_to_patch_index((0.12, 0.34, 0.56, 0.9), 32) == (10*32+3, 28*32+17) == (323, 913)
    assert_eq!(to_patch_indices([0.12, 0.34, 0.56, 0.9], 32), (323, 913));
    assert_eq!(
        format("kosmos2").format_objects(&hand_checked(), None, SQUARE),
        "<phrase>cat</phrase><object><patch_index_0115><patch_index_0510></object> \
         <phrase>dog</phrase><object><patch_index_0323><patch_index_0913></delimiter_of_multi_objects/><patch_index_0512><patch_index_0995></object>"
    );
}

#[test]
fn golden_shikra() {
    assert_eq!(
        format("shikra").format_objects(&hand_checked(), None, SQUARE),
        "cat[0.600,0.100,0.950,0.500] dog[0.120,0.340,0.560,0.900;0.000,0.500,0.100,1.000]"
    );
    // A 64×96 portrait sits 16 px from the left of a 96 px square: the whole image is x 16..80 of 96.
    let portrait = Size::new(64, 96);
    assert_eq!(format("shikra").format_box([0.0, 0.0, 1.0, 1.0], portrait), "[0.167,0.000,0.833,1.000]");
    // A 101×50 landscape is shifted down by (101 - 50) // 2 = 25 px, not 25.5.
    assert_eq!(format("shikra").format_box([0.0, 0.0, 1.0, 1.0], Size::new(101, 50)), "[0.000,0.248,1.000,0.743]");
    let back = format("shikra").parse_objects("thing[0.167,0.000,0.833,1.000]", portrait);
    assert!(back[0].bbox.iter().zip([0.0, 0.0, 1.0, 1.0]).all(|(g, w)| (g - w).abs() < 0.002), "{back:?}");
}

#[test]
fn degenerate_full_and_out_of_range_boxes() {
    assert_eq!(format("lyrics").format_box([1.2, -0.1, 0.5, 0.5], SQUARE), "[0.500, 0.000, 1.000, 0.500]");
    assert_eq!(format("qwen").format_box([0.0, 0.0, 1.0, 1.0], SQUARE), "<box>(0,0),(999,999)</box>");
    assert_eq!(to_patch_indices([0.5, 0.5, 0.5, 0.5], 32), (16 * 32 + 16, 16 * 32 + 16));
    assert_eq!(to_patch_indices([0.0, 0.0, 1.0, 1.0], 32), (0, 1023));
    assert_eq!(format("shikra").format_box([f32::NAN, 0.0, 1.0, 1.0], SQUARE), "[0.000,0.000,1.000,1.000]");
}

#[test]
fn names_are_unique_and_match_the_pretrain_columns() {
    let names = GroundedFormat::names();
    assert_eq!(names, lyrics_schemas::FORMAT_COLUMNS.to_vec(), "the registry and the pretrain layout agree");
    for n in &names {
        assert_eq!(GroundedFormat::named(n).map(|f| f.name()), Some(*n));
    }
    let parsed: GroundedFormat = serde_json::from_str("\"shikra\"").expect("a registered name deserializes");
    assert_eq!(parsed, format("shikra"));
    let err = serde_json::from_str::<GroundedFormat>("\"yaml\"").unwrap_err().to_string();
    assert!(err.contains("yaml") && err.contains("kosmos2"), "{err}");
}

fn boxes() -> impl Strategy<Value = [f32; 4]> {
    (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0)
        .prop_map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)])
}

fn phrase() -> impl Strategy<Value = String> {
    "[a-z]{1,8}( [a-z]{1,8})?"
}

proptest! {
    /// Every format, on images of any shape: the objects come back in reading order (grouped by phrase where the
    /// format groups them), each box within the format's tolerance on the displayed image.
    #[test]
    fn every_format_round_trips(
        objects in proptest::collection::vec((phrase(), boxes()), 0..6),
        w in 1u32..5000, h in 1u32..5000,
    ) {
        let image = Size::new(w, h);
        let objects: Vec<GroundedObject> = objects.into_iter().map(|(p, b)| GroundedObject { phrase: p, bbox: b }).collect();
        for &format in GroundedFormat::all() {
            let text = format.format_objects(&objects, Some("a caption"), image);
            let parsed = format.parse_objects(&text, image);
            prop_assert_eq!(parsed.len(), objects.len(), "{:?}: {}", format, text);
            let ordered = reading_order(&objects);
            let grouped: Vec<GroundedObject> = grouped(&ordered).into_iter().flat_map(|(p, bs)| bs.into_iter().map(move |b| GroundedObject { phrase: p.to_string(), bbox: b })).collect();
            let [tx, ty] = format.tolerance(image);
            let matches = |expected: &[GroundedObject]| parsed.iter().zip(expected).all(|(got, want)| {
                got.phrase == want.phrase && got.bbox.iter().zip(want.bbox).enumerate().all(|(i, (g, w))| (g - w).abs() <= if i % 2 == 0 { tx } else { ty } + 1e-5)
            });
            prop_assert!(matches(&ordered) || matches(&grouped), "{:?} on {}×{}: {:?} vs {:?} in {}", format, w, h, parsed, ordered, text);
        }
    }

    #[test]
    fn patch_indices_stay_on_the_grid(b in boxes()) {
        let (ul, lr) = to_patch_indices(b, 32);
        prop_assert!(ul < 1024 && lr < 1024);
        prop_assert!(ul % 32 <= lr % 32 && ul / 32 <= lr / 32);
    }

    /// Pixel boxes of any image, 1×1 included, possibly reaching outside it, go through the same conversion as
    /// the refiner's (clamp to the image, divide by its size) and survive every format within its tolerance.
    #[test]
    fn pixel_boxes_of_any_image_survive_every_format(
        w in 1u32..5000, h in 1u32..5000,
        corners in (-1.0f32..2.0, -1.0f32..2.0, -1.0f32..2.0, -1.0f32..2.0),
    ) {
        let image = Size::new(w, h);
        let (wf, hf) = (w as f32, h as f32);
        let pixels = crate::geometry::BoxXyxy([corners.0 * wf, corners.1 * hf, corners.2 * wf, corners.3 * hf]);
        let unit = pixels.clamped(wf, hf).scaled(1.0 / wf, 1.0 / hf).0;
        prop_assert!(unit.iter().all(|v| (0.0..=1.0).contains(v)), "{:?}", unit);
        for &format in GroundedFormat::all() {
            let text = format.format_objects(&[obj("thing", unit)], None, image);
            let parsed = format.parse_objects(&text, image);
            prop_assert_eq!(parsed.len(), 1, "{}", text);
            let [tx, ty] = format.tolerance(image);
            for (i, (g, u)) in parsed[0].bbox.iter().zip(unit).enumerate() {
                let t = if i % 2 == 0 { tx } else { ty };
                prop_assert!((g - u).abs() <= t + 1e-5, "{:?} on {}×{}: {:?} vs {:?}", format, w, h, parsed[0].bbox, unit);
            }
        }
    }

    #[test]
    fn quantized_coordinates_stay_below_1000(v in -1.0f32..2.0) {
        prop_assert!(quantize_1000(v) < 1000);
    }
}

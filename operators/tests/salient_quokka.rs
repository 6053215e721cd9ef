//! Real weights: the `salient_crop` segmenter with ISNet (npm `@imgly/background-removal-data` 1.4.5, medium) on
//! imgaug's quokka photo, prompted with the annotated box, against the annotated polygon. The files come from
//! `scripts/fetch-isnet.sh` (run by `scripts/setup.sh`).

use std::path::{Path, PathBuf};

use lyrics_operators::geometry::BoxXyxy;
use lyrics_operators::models::{Device, Segmenter, SegmenterConfig, SegmenterFamily};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn inside(polygon: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let ((xi, yi), (xj, yj)) = (polygon[i], polygon[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[test]
fn isnet_segments_the_annotated_quokka() {
    let model = root().join(".models/isnet_medium.onnx");
    let photo = root().join(".models/quokka/quokka.jpg");
    assert!(model.exists() && photo.exists(), "run scripts/fetch-isnet.sh (or scripts/setup.sh) first");
    let annotations: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(".models/quokka/quokka_annotations.json")).unwrap(),
    )
    .unwrap();
    let b = &annotations["bounding_boxes"][0];
    let bbox = BoxXyxy(["x1", "y1", "x2", "y2"].map(|k| b[k].as_f64().unwrap() as f32));
    let polygon: Vec<(f64, f64)> = annotations["polygons"][0]["keypoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap()))
        .collect();
    let image = image::open(&photo).unwrap().to_rgb8();
    let config = SegmenterConfig {
        family: SegmenterFamily::SalientCrop,
        encoder: None,
        decoder: None,
        model: None,
        margin: 0.1,
        mask_threshold: 0.5,
        batch_size: None,
    };
    let mut segmenter = Segmenter::load(&config, &[model.as_path()], Device::Cpu, 0).unwrap();
    let mask = segmenter.infer(&image, None, &[bbox]).unwrap().remove(0).finish();
    let (w, h) = image.dimensions();
    assert_eq!((mask.width, mask.height), (w, h));
    let pixels = mask.pixels().unwrap();
    let (mut inter, mut union) = (0u64, 0u64);
    for y in 0..h {
        for x in 0..w {
            let truth = inside(&polygon, f64::from(x) + 0.5, f64::from(y) + 0.5);
            let got = pixels[(y * w + x) as usize];
            inter += u64::from(truth && got);
            union += u64::from(truth || got);
        }
    }
    let iou = inter as f64 / union as f64;
    eprintln!("salient_crop on quokka.jpg: mask IoU {iou:.4} against the annotated polygon");
    assert!(iou >= 0.9, "mask IoU {iou:.4} against the annotated polygon");
}

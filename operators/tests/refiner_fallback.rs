//! The refiner on inputs the prepare stage did not make: an image it cannot prepare for the detector gets the error,
//! never an empty result. Uses the committed real-architecture Grounding DINO (examples/models/real-tiny).

use std::path::{Path, PathBuf};

use lyrics_operators::models::{Device, ModelPaths, ModelsConfig, Prepared, Refiner};

fn real_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/real-tiny")
}

#[test]
fn an_image_that_cannot_be_prepared_for_the_detector_is_an_error_not_an_empty_result() {
    let config = ModelsConfig::parse(
        "[detector]\nfamily = \"grounding_dino\"\nexport = \"hf\"\nmodel = \"gdino_hf.onnx\"\n\
         tokenizer = \"tokenizer.json\"\nprompt = [\"window\"]\n",
    )
    .unwrap();
    let mut files = ModelPaths::default();
    files.paths.insert("detector.model".into(), real_tiny().join("gdino_hf.onnx"));
    files.paths.insert("detector.tokenizer".into(), real_tiny().join("tokenizer.json"));
    let mut refiner = Refiner::load(&config, &files, Device::Cpu, 1).unwrap();
    let empty = image::RgbImage::new(0, 0);
    let fine = image::open(real_tiny().join("photos/tiny.png")).unwrap().to_rgb8();
    let results = refiner.infer(vec![(&empty, &Prepared::default()), (&fine, &Prepared::default())]);
    let err = results[0].as_ref().expect_err("the empty image fails").to_string();
    assert!(err.contains("preprocessing"), "{err}");
    assert!(!results[1].as_ref().unwrap().objects.is_empty(), "the other image is detected in");
}

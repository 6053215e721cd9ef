//! End-to-end tests of the visual refiner through `lyrics-prep run --models`: fixture scenes with exact tags,
//! boxes and masks; parity with an independent Python implementation of the reference pre/post-processing; the
//! models file's hub downloads; and CUDA refusal on a machine without it.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lyrics_schemas::SampleRow;
use support::scenes::{Kind, Scene, box_iou, decode_rle, encode_png, mask_iou};
use support::*;

fn models_dir() -> PathBuf {
    repo_root().join("examples/models")
}

fn encode_jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).encode_image(img).unwrap();
    out
}

/// The fixture scenes: (key, scene, stored bytes). Displayed orientation is the scene's.
fn scenes() -> Vec<(&'static str, Scene, Vec<u8>)> {
    use Kind::{Ellipse, Rectangle};
    let landscape = Scene::new(
        640,
        480,
        &[
            (0, Rectangle, [0.05, 0.1, 0.4, 0.5]),
            (2, Ellipse, [0.5, 0.2, 0.9, 0.7]),
            (3, Rectangle, [0.1, 0.6, 0.45, 0.95]),
        ],
    );
    let portrait =
        Scene::new(480, 640, &[(1, Ellipse, [0.1, 0.05, 0.8, 0.4]), (4, Rectangle, [0.3, 0.5, 0.9, 0.9])]);
    let tiny = Scene::new(64, 64, &[(0, Rectangle, [0.2, 0.2, 0.8, 0.8])]);
    let huge =
        Scene::new(4000, 3000, &[(2, Rectangle, [0.1, 0.1, 0.5, 0.6]), (3, Ellipse, [0.55, 0.3, 0.95, 0.9])]);
    let rotated =
        Scene::new(640, 400, &[(1, Rectangle, [0.05, 0.1, 0.45, 0.8]), (0, Ellipse, [0.55, 0.2, 0.95, 0.9])]);
    let overlap =
        Scene::new(300, 200, &[(4, Rectangle, [0.1, 0.1, 0.6, 0.9]), (3, Ellipse, [0.45, 0.3, 0.95, 0.95])]);
    let empty = Scene::new(200, 150, &[]);
    // Stored rotated a quarter turn counter-clockwise, with EXIF orientation 6 to display it upright.
    let stored = image::imageops::rotate270(&rotated.render());
    vec![
        ("landscape", landscape.clone(), encode_png(&landscape.render())),
        ("portrait", portrait.clone(), encode_jpeg(&portrait.render())),
        ("tiny", tiny.clone(), encode_png(&tiny.render())),
        ("huge", huge.clone(), encode_jpeg(&huge.render())),
        ("rotated", rotated.clone(), with_orientation(&encode_jpeg(&stored), 6)),
        ("overlap", overlap.clone(), encode_png(&overlap.render())),
        ("empty", empty.clone(), encode_png(&empty.render())),
    ]
}

fn write_corpus(dir: &Path, scenes: &[(&str, Scene, Vec<u8>)]) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    for (key, _, bytes) in scenes {
        let ext = if bytes.starts_with(&[0x89, b'P']) { "png" } else { "jpg" };
        tar.add(&format!("{key}.{ext}"), bytes);
    }
    std::fs::write(corpus.join("scenes.tar"), tar.finish()).unwrap();
    corpus
}

fn refine(corpus: &Path, out: &Path, models: &str) -> BTreeMap<String, SampleRow> {
    let models = s(&models_dir().join(models));
    let args = ["run", "--input", &s(corpus), "--output", &s(out), "--models", &models, "--progress", "off"];
    lyrics_ok(&args, &Env::new());
    assert!(errors(out).is_empty(), "{:#?}", errors(out));
    samples(out).into_iter().map(|r| (r.key.clone(), r)).collect()
}

#[test]
fn fixture_scenes_give_exact_tags_boxes_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let scenes = scenes();
    let corpus = write_corpus(dir.path(), &scenes);
    let rows = refine(&corpus, &dir.path().join("out"), "fixtures.toml");
    for (key, scene, _) in &scenes {
        let row = &rows[*key];
        assert_eq!((row.width as u32, row.height as u32), (scene.width, scene.height), "{key}: displayed size");
        let tags: Vec<&str> = row.tags.as_ref().unwrap().iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(tags, scene.tags(), "{key}: tags");
        let objects = row.objects.as_ref().unwrap();
        assert_eq!(objects.len(), scene.shapes.len(), "{key}: one object per shape: {objects:#?}");
        for (i, shape) in scene.shapes.iter().enumerate() {
            let object = objects
                .iter()
                .find(|o| o.label == shape.name())
                .unwrap_or_else(|| panic!("{key}: no {}", shape.name()));
            assert_eq!(object.phrase, shape.name());
            let visible = scene.visible_mask(i);
            let expected_box = visible_box(&visible, scene.width, scene.height);
            let iou = box_iou(object.bbox, expected_box);
            assert!(
                iou >= 0.95,
                "{key}/{}: box {:?} vs drawn {:?}: IoU {iou}",
                shape.name(),
                object.bbox,
                expected_box
            );
            let mask = object.mask.as_ref().unwrap();
            assert_eq!(mask.size, [scene.height as i32, scene.width as i32]);
            let decoded = decode_rle(mask.size, &mask.counts);
            let m_iou = mask_iou(&decoded, &visible);
            assert!(m_iou >= 0.9, "{key}/{}: mask IoU {m_iou}", shape.name());
            assert_eq!(object.mask_area, Some(decoded.iter().filter(|p| **p).count() as i64));
        }
        assert!(row.refiner.as_deref().unwrap().contains("\"grounding_dino\""));
    }
}

fn visible_box(mask: &[bool], w: u32, h: u32) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if mask[(y * w + x) as usize] {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
    }
    [x0 as f32 / w as f32, y0 as f32 / h as f32, x1 as f32 / w as f32, y1 as f32 / h as f32]
}

#[test]
fn python_reference_parity_for_both_detector_exports() {
    let dir = tempfile::tempdir().unwrap();
    // Lossless, upright images: the reference decodes with Pillow, lyrics-prep with its own decoder.
    let scenes: Vec<_> =
        scenes().into_iter().filter(|(k, _, b)| b.starts_with(&[0x89, b'P']) && *k != "huge").collect();
    let corpus = write_corpus(dir.path(), &scenes);
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut paths = Vec::new();
    for (key, _, bytes) in &scenes {
        let path = images.join(format!("{key}.png"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(s(&path));
    }
    for (export, models) in [("idea", "fixtures.toml"), ("hf", "fixtures_hf.toml")] {
        let rows = refine(&corpus, &dir.path().join(format!("out-{export}")), models);
        let reference = dir.path().join(format!("reference-{export}.json"));
        let mut args = vec![s(&models_dir()), "--export".into(), export.into(), s(&reference)];
        args.extend(paths.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python_script("tests/reference/refiner_reference.py", &args, &Env::new());
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
        for entry in expected.as_array().unwrap() {
            let key =
                Path::new(entry["image"].as_str().unwrap()).file_stem().unwrap().to_string_lossy().into_owned();
            let row = &rows[&key];
            let tags = row.tags.as_ref().unwrap();
            let want_tags = entry["tags"].as_array().unwrap();
            assert_eq!(tags.len(), want_tags.len(), "{export}/{key}: tags");
            for (got, want) in tags.iter().zip(want_tags) {
                assert_eq!(got.tag, want[0].as_str().unwrap());
                assert!((f64::from(got.score) - want[1].as_f64().unwrap()).abs() < 1e-4);
            }
            let objects = row.objects.as_ref().unwrap();
            let want_objects = entry["objects"].as_array().unwrap();
            assert_eq!(objects.len(), want_objects.len(), "{export}/{key}: objects");
            for (got, want) in objects.iter().zip(want_objects) {
                assert_eq!(got.phrase, want["phrase"].as_str().unwrap(), "{export}/{key}");
                assert!(
                    (f64::from(got.score) - want["score"].as_f64().unwrap()).abs() < 1e-4,
                    "{export}/{key}: score"
                );
                for (g, w) in got.bbox.iter().zip(want["box"].as_array().unwrap()) {
                    assert!(
                        (f64::from(*g) - w.as_f64().unwrap()).abs() < 1e-4,
                        "{export}/{key}: box {:?} vs {}",
                        got.bbox,
                        want["box"]
                    );
                }
                let mask = got.mask.as_ref().unwrap();
                let want_mask = &want["mask"];
                let size =
                    [want_mask["size"][0].as_i64().unwrap() as i32, want_mask["size"][1].as_i64().unwrap() as i32];
                assert_eq!(mask.size, size);
                let iou = mask_iou(
                    &decode_rle(mask.size, &mask.counts),
                    &decode_rle(size, want_mask["counts"].as_str().unwrap()),
                );
                assert!(iou >= 0.999, "{export}/{key}: mask IoU {iou}");
            }
        }
    }
}

#[test]
fn fixture_models_are_what_the_committed_script_generates() {
    let dir = tempfile::tempdir().unwrap();
    python_script("scripts/make_fixture_models.py", &[&s(dir.path())], &Env::new());
    // The public models files beside the fixtures are written by hand (they name files on the hub).
    let fixture =
        |e: &std::fs::DirEntry| e.path().is_file() && !e.file_name().to_string_lossy().starts_with("public");
    for entry in std::fs::read_dir(models_dir()).unwrap().flatten().filter(fixture) {
        let name = entry.file_name();
        let generated = std::fs::read(dir.path().join(&name)).unwrap_or_default();
        assert_eq!(
            generated,
            std::fs::read(entry.path()).unwrap(),
            "{name:?} differs from what the script generates"
        );
    }
}

#[test]
fn cuda_without_cuda_fails_naming_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = repo_root().join("examples/corpus");
    let models = s(&models_dir().join("fixtures.toml"));
    let out = s(&dir.path().join("out"));
    let output = lyrics(
        &[
            "run",
            "--input",
            &s(&corpus),
            "--output",
            &out,
            "--models",
            &models,
            "--device",
            "cuda:0",
            "--progress",
            "off",
        ],
        &Env::new(),
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("CUDA execution provider") && text.contains("cuda:0"), "{text}");
    assert!(!dir.path().join("out/_lyrics/done").exists(), "nothing ran on the CPU instead");
}

#[test]
fn hub_sources_download_into_the_hugging_face_cache_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    // A local stand-in for the hub: /{org}/{repo}/resolve/{revision}/{path} answers with a redirect to a CDN URL,
    // as the hub does for LFS files.
    let hub = dir.path().join("hub");
    let resolve = hub.join("lyrics/fixtures/v1/models");
    std::fs::create_dir_all(&resolve).unwrap();
    let mut files = BTreeMap::new();
    for name in
        ["tagger.onnx", "tags.txt", "detector_idea.onnx", "tokenizer.json", "sam_encoder.onnx", "sam_decoder.onnx"]
    {
        std::fs::copy(models_dir().join(name), resolve.join(name)).unwrap();
        files.insert(name, sha256_hex(&std::fs::read(models_dir().join(name)).unwrap()));
    }
    let log = dir.path().join("hub.log");
    let _server = hub_server(&hub, &log);
    let port = _server.port;
    let hf = |name: &str| format!("hf://lyrics/fixtures/models/{name}@v1");
    let toml = format!(
        "[tagger]\nfamily = \"ram\"\nmodel = {{ source = \"{}\", sha256 = \"{}\" }}\ntags = \"{}\"\n\
         [detector]\nfamily = \"grounding_dino\"\nmodel = \"{}\"\ntokenizer = \"{}\"\n\
         [segmenter]\nfamily = \"sam\"\nencoder = \"{}\"\ndecoder = \"{}\"\n",
        hf("tagger.onnx"),
        files["tagger.onnx"],
        hf("tags.txt"),
        hf("detector_idea.onnx"),
        hf("tokenizer.json"),
        hf("sam_encoder.onnx"),
        hf("sam_decoder.onnx"),
    );
    let models = dir.path().join("hub.toml");
    std::fs::write(&models, toml).unwrap();
    let cache = dir.path().join("cache");
    let hf_home = dir.path().join("hf-home");
    let token = "hf_test_token_never_printed";
    let env: Env = vec![
        ("HF_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
        ("LYRICS_CACHE".into(), s(&cache)),
        ("HF_HOME".into(), s(&hf_home)),
        ("HF_TOKEN".into(), token.into()),
        ("RUST_LOG".into(), "debug".into()),
    ];
    let list = lyrics(&["models", "list", "--models", &s(&models)], &env);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("not cached"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    let pulled = lyrics(&["models", "pull", "--models", &s(&models)], &env);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let listing = String::from_utf8_lossy(&pulled.stdout).into_owned();
    for (name, sha) in &files {
        assert!(listing.contains(sha.as_str()), "{name} not pulled: {listing}");
    }
    // The token reached the hub in a header, and no line of ours shows it.
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.contains(&format!("authorization=Bearer {token}")), "{requests}");
    assert!(requests.contains("GET /cdn/"), "the redirect was followed: {requests}");
    for output in [&list, &pulled] {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), stderr(output));
        assert!(!text.contains(token), "the token was printed: {text}");
    }
    // Files are in the Hugging Face cache layout, as Python's huggingface_hub keeps them.
    let snapshot = hf_home.join("hub/models--lyrics--fixtures/snapshots");
    assert!(support::walk(&snapshot).iter().any(|p| p.ends_with("models/tagger.onnx")), "{snapshot:?}");
    assert!(hf_home.join("hub/models--lyrics--fixtures/refs/v1").exists());
    let verified = lyrics(&["models", "verify", "--models", &s(&models)], &env);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    // A run uses the cache (the server is not needed any more) and records the checksums it ran with.
    drop(_server);
    let out = dir.path().join("out");
    let corpus = repo_root().join("examples/corpus");
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", &s(&out), "--models", &s(&models), "--progress", "off"],
        &env,
    );
    let refiner = samples(&out)[0].refiner.clone().unwrap();
    assert!(
        refiner.contains(&files["tagger.onnx"]) && refiner.contains("hf://lyrics/fixtures/models/tagger.onnx@v1"),
        "{refiner}"
    );

    // A file Python's huggingface_hub already downloaded is used from its cache, with no server at all.
    let python_repo = hf_home.join("hub/models--someone--tags");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(python_repo.join("refs")).unwrap();
    std::fs::write(python_repo.join("refs/main"), commit).unwrap();
    std::fs::create_dir_all(python_repo.join(format!("snapshots/{commit}"))).unwrap();
    std::fs::write(python_repo.join(format!("snapshots/{commit}/tags.txt")), "red\ngreen\n").unwrap();
    let cached_models = dir.path().join("cached.toml");
    std::fs::write(
        &cached_models,
        std::fs::read_to_string(&models).unwrap().replace(&hf("tags.txt"), "hf://someone/tags/tags.txt"),
    )
    .unwrap();
    let pulled = lyrics(&["models", "pull", "--models", &s(&cached_models)], &env);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    assert!(String::from_utf8_lossy(&pulled.stdout).contains(&format!("snapshots/{commit}/tags.txt")));

    // A corrupted cache entry is caught by verify; a wrong expected checksum refuses the file.
    let cached_tagger =
        support::walk(&hf_home).into_iter().find(|p| p.file_name().is_some_and(|n| n == "tagger.onnx")).unwrap();
    std::fs::write(&cached_tagger, b"not a model").unwrap();
    let verified = lyrics(&["models", "verify", "--models", &s(&models)], &env);
    assert!(!verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("CORRUPT"));
    let failed = lyrics(&["models", "pull", "--models", &s(&models)], &env);
    assert!(!failed.status.success() && stderr(&failed).contains("does not match"), "{}", stderr(&failed));
}

#[test]
fn a_model_that_cannot_load_fails_the_run_before_anything_commits() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(models_dir()).unwrap().flatten().filter(|e| e.path().is_file()) {
        std::fs::copy(entry.path(), models.join(entry.file_name())).unwrap();
    }
    std::fs::write(models.join("tagger.onnx"), b"this is not an ONNX graph").unwrap();
    let out = dir.path().join("out");
    let corpus = repo_root().join("examples/corpus");
    let output = lyrics(
        &[
            "run",
            "--input",
            &s(&corpus),
            "--output",
            &s(&out),
            "--models",
            &s(&models.join("fixtures.toml")),
            "--progress",
            "off",
        ],
        &Env::new(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("cannot load") && text.contains("tagger"), "{text}");
    assert!(support::walk(&out.join("_lyrics/done")).is_empty(), "no unit may commit");
}

#[test]
fn a_refiner_run_writes_nothing_outside_its_output_and_cache() {
    // ONNX Runtime's telemetry kept an event database under ~/.cache/Microsoft on every run that loaded a model.
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &scenes()[..1]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let env: Env = vec![
        ("HOME".into(), s(&home)),
        ("XDG_CACHE_HOME".into(), s(&home.join(".cache"))),
        ("XDG_DATA_HOME".into(), s(&home.join(".local/share"))),
        ("XDG_CONFIG_HOME".into(), s(&home.join(".config"))),
        ("LYRICS_CACHE".into(), s(&dir.path().join("cache"))),
    ];
    let models = s(&models_dir().join("fixtures.toml"));
    let out = dir.path().join("out");
    let args = ["run", "--input", &s(&corpus), "--output", &s(&out), "--models", &models, "--progress", "off"];
    lyrics_ok(&args, &env);
    assert_eq!(samples(&out).len(), 1);
    let left: Vec<PathBuf> = std::fs::read_dir(&home).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "the run wrote outside its output and cache: {left:?} ({:?})", walk(&home));
}

//! End-to-end tests of `lyrics-prep render`: the gallery of a refined job opened in headless Chromium (Debian's,
//! through playwright-core) as a person would open it from disk; the drawn boxes and masks checked in the
//! thumbnails' pixels; pagination and memory on a table ten times larger.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::scenes::{GREY, Kind, PALETTE, Scene, encode_png};
use support::*;

/// What tests/browser/gallery.cjs reports of a page.
fn open_in_chromium(page: &Path, shot: &Path) -> serde_json::Value {
    let root = repo_root();
    let output = Command::new("node")
        .arg(root.join("tests/browser/gallery.cjs"))
        .arg(page)
        .arg(shot)
        .env("NODE_PATH", root.join(".tools/node_modules"))
        .output()
        .expect("node");
    assert!(output.status.success(), "chromium failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the page report is JSON")
}

/// An object as its card lists it: label, colour, box.
type Listed = (String, [u8; 3], [f32; 4]);

/// The `data-*` attributes of each object of the card whose heading is `key`, and its thumbnail.
fn card(html: &str, key: &str) -> (String, Vec<Listed>) {
    let start = html.find(&format!("<h3>{key}</h3>")).expect("the card");
    let open = html[..start].rfind("<article").expect("card start");
    let end = start + html[start..].find("</article>").expect("card end");
    let card = &html[open..end];
    let src = card.split("<img src=\"").nth(1).and_then(|r| r.split('"').next()).expect("img").to_string();
    let mut objects = Vec::new();
    for item in card.split("<li ").skip(1) {
        let attr = |name: &str| item.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap();
        let colour = attr("data-colour");
        let rgb = [1, 3, 5].map(|i| u8::from_str_radix(&colour[i..i + 2], 16).unwrap());
        let b: Vec<f32> = attr("data-box").split(',').map(|v| v.parse().unwrap()).collect();
        objects.push((attr("data-label").to_string(), rgb, [b[0], b[1], b[2], b[3]]));
    }
    (src, objects)
}

fn close(a: [u8; 3], b: [u8; 3], tolerance: i32) -> bool {
    (0..3).all(|i| (a[i] as i32 - b[i] as i32).abs() <= tolerance)
}

#[test]
fn the_gallery_shows_every_sample_and_error_with_boxes_and_masks_drawn() {
    use Kind::{Ellipse, Rectangle};
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let scenes = [
        (
            "wide",
            Scene::new(640, 360, &[(0, Rectangle, [0.1, 0.2, 0.45, 0.8]), (2, Ellipse, [0.55, 0.1, 0.9, 0.7])]),
        ),
        ("tall", Scene::new(300, 500, &[(3, Rectangle, [0.2, 0.1, 0.8, 0.5])])),
    ];
    let mut tar = Tar::default();
    for (key, scene) in &scenes {
        tar.add(&format!("{key}.png"), &encode_png(&scene.render()));
        tar.add(&format!("{key}.txt"), format!("the {key} <scene> & more").as_bytes());
    }
    tar.add("broken.jpg", b"this is not an image");
    tar.add("cut.jpg", &jpeg(64, 48, 1)[..300]);
    std::fs::write(corpus.join("scenes.tar"), tar.finish()).unwrap();
    let out = dir.path().join("out");
    let models = s(&repo_root().join("examples/models/fixtures.toml"));
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", &s(&out), "--models", &models, "--progress", "off"],
        &Env::new(),
    );
    let gallery = dir.path().join("gallery");
    lyrics_ok(&["render", "--output", &s(&out), "--to", &s(&gallery)], &Env::new());

    let shot = match std::env::var("LYRICS_GALLERY_SHOT") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => dir.path().join("shot.png"),
    };
    let report = open_in_chromium(&gallery.join("index.html"), &shot);
    assert_eq!(report["samples"], 2, "{report}");
    assert_eq!(report["errors"], 2, "{report}");
    assert_eq!(report["external"].as_array().unwrap().len(), 0, "the page fetched {}", report["external"]);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i["loaded"] == true), "every <img> loads: {images:?}");
    let text = report["text"].as_str().unwrap();
    assert!(text.contains("not_an_image") && text.contains("broken"), "the error cards say what failed");
    assert!(text.contains("the wide <scene> & more"), "captions are shown as text, escaped");
    assert!(text.contains("grounding_dino"), "the header names the models");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot was taken");

    let html = std::fs::read_to_string(gallery.join("index.html")).unwrap();
    for (key, scene) in &scenes {
        let (src, objects) = card(&html, key);
        assert_eq!(objects.len(), scene.shapes.len(), "{key}: {objects:?}");
        let thumb = image::open(gallery.join(&src)).unwrap().to_rgb8();
        let (w, h) = thumb.dimensions();
        assert_eq!(w.max(h), 384);
        for (label, colour, b) in &objects {
            let shape = scene.shapes.iter().find(|s| s.name() == label).expect("a drawn shape of the label");
            let px = |v: f32, side: u32| ((v * side as f32).round() as u32).min(side);
            let [x0, y0, x1, y1] = [px(b[0], w), px(b[1], h), px(b[2], w), px(b[3], h)];
            // The bottom and right edges (the label tab sits at the top left) are the label's colour.
            let edge: Vec<[u8; 3]> = (x0..x1)
                .map(|x| thumb.get_pixel(x, y1 - 2).0)
                .chain((y0..y1).map(|y| thumb.get_pixel(x1 - 2, y).0))
                .collect();
            let matching = edge.iter().filter(|p| close(**p, *colour, 40)).count();
            assert!(matching * 10 >= edge.len() * 9, "{key}/{label}: {matching} of {} edge pixels", edge.len());
            // Inside, the shape's colour tinted by the label's.
            let centre = thumb.get_pixel((x0 + x1) / 2, (y0 + y1) / 2).0;
            let drawn = PALETTE[shape.colour].1;
            let tinted = [0, 1, 2].map(|i| (drawn[i] as f32 * 0.55 + colour[i] as f32 * 0.45).round() as u8);
            assert!(close(centre, tinted, 24), "{key}/{label}: centre {centre:?}, expected {tinted:?}");
            assert!(!close(centre, drawn, 10), "{key}/{label}: the mask is tinted");
        }
        // A corner of the image, outside every box, is the scene's grey.
        assert!(close(thumb.get_pixel(w - 2, h - 2).0, GREY, 24));
    }
}

/// Peak resident memory of a finished child, in KiB.
fn peak_rss_kib(mut command: Command) -> i64 {
    let child = command.stderr(std::process::Stdio::null()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    // Reaped by wait4 below, which also reports the child's peak memory; `Child::wait` would not.
    std::mem::forget(child);
    let mut status = 0;
    // SAFETY: plain FFI out-parameters; `pid` is our own child, waited for once.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut usage), pid);
        usage
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child failed: {status}");
    usage.ru_maxrss
}

#[test]
fn render_pages_a_large_table_in_memory_bounded_by_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for samples in [500usize, 5000] {
        let corpus = dir.path().join(format!("corpus-{samples}"));
        webdataset(&corpus, samples / 500, 500);
        let out = dir.path().join(format!("out-{samples}"));
        lyrics_ok(&["run", "--input", &s(&corpus), "--output", &s(&out), "--progress", "off"], &Env::new());
        let gallery = dir.path().join(format!("gallery-{samples}"));
        let mut render = Command::new(bin());
        render.args(["render", "--output", &s(&out), "--to", &s(&gallery), "--page-size", "250"]);
        peaks.push(peak_rss_kib(render));
        let pages = samples.div_ceil(250);
        let mut names: Vec<String> = std::fs::read_dir(&gallery)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".html"))
            .collect();
        names.sort();
        assert_eq!(names.len(), pages, "{names:?}");
        let last = std::fs::read_to_string(gallery.join(format!("page-{pages}.html"))).unwrap();
        assert_eq!(last.matches("<article class=\"card sample\">").count(), 250);
        for name in &names {
            let size = std::fs::metadata(gallery.join(name)).unwrap().len();
            assert!(size < 5 << 20, "{name} is {size} bytes");
        }
        assert_eq!(std::fs::read_dir(gallery.join("thumbs")).unwrap().count(), samples);
    }
    let (small, large) = (peaks[0] as f64, peaks[1] as f64);
    assert!(large <= small * 1.10, "peak RSS {large} KiB at 5,000 samples vs {small} KiB at 500");
}

/// The demo's gallery, as the README shows it: `LYRICS_GALLERY_SHOT=docs/gallery.png LYRICS_DEMO_DIR=/lyrics/demo`
/// rewrites that picture (the folder's path is shown in the page).
#[test]
fn the_demo_runs_the_whole_recipe_and_its_gallery_opens() {
    let dir = tempfile::tempdir().unwrap();
    let to = std::env::var("LYRICS_DEMO_DIR").map_or_else(|_| dir.path().join("demo"), std::path::PathBuf::from);
    let output = lyrics(&["demo", "--to", &s(&to)], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("index.html") && printed.matches(" sql --output ").count() == 3, "{printed}");
    let m = manifest(&to.join("output"));
    assert_eq!(m["rows"]["samples"], 16);
    assert_eq!(m["rows"]["errors"], 2);
    assert_eq!(m["rows"]["pretrain"], 16);
    assert!(m["rows"]["instruct"].as_u64().unwrap() > 16);
    let shot = match std::env::var("LYRICS_GALLERY_SHOT") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => dir.path().join("shot.png"),
    };
    let report = open_in_chromium(&to.join("gallery/index.html"), &shot);
    assert_eq!((report["samples"].as_u64(), report["errors"].as_u64()), (Some(16), Some(2)), "{report}");
    assert!(report["images"].as_array().unwrap().iter().all(|i| i["loaded"] == true));
    // Each printed query runs as printed.
    for line in printed.lines().filter(|l| l.contains(" sql --output ")) {
        let query = line.split('"').nth(1).unwrap();
        let result = lyrics(&["sql", "--output", &s(&to.join("output")), query], &Env::new());
        assert!(result.status.success(), "{query}: {}", stderr(&result));
    }
}

/// With ISNet's real weights (`scripts/fetch-isnet.sh`, which `scripts/setup.sh` runs), the demo masks the boxes of
/// its first shard with `salient_crop` too, into a second output and gallery.
#[test]
fn with_isnet_weights_the_demo_masks_each_box_with_salient_crop() {
    let isnet = repo_root().join(".models/isnet_medium.onnx");
    assert!(isnet.is_file(), "{}: run scripts/fetch-isnet.sh (scripts/setup.sh does)", isnet.display());
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("demo");
    let output = lyrics(&["demo", "--to", &s(&to), "--isnet", &s(&isnet)], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("gallery-isnet/index.html"), "{printed}");
    assert!(to.join("gallery-isnet/index.html").is_file());

    let samples = samples(&to.join("output-isnet"));
    assert!(!samples.is_empty());
    let mut objects = 0;
    for sample in &samples {
        assert!(sample.refiner.as_deref().is_some_and(|r| r.contains("salient_crop")), "{:?}", sample.refiner);
        for object in sample.objects.iter().flatten() {
            objects += 1;
            assert!(object.mask.is_some() && object.mask_score.is_some(), "{}: {object:?}", sample.key);
        }
    }
    assert!(objects > 0, "the fixture detector found boxes for ISNet to mask");
    // Without the weights, the demo says how to get them and runs the rest.
    let to = dir.path().join("without");
    let output = lyrics(&["demo", "--to", &s(&to), "--isnet", &s(&dir.path().join("absent.onnx"))], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("fetch-isnet.sh"), "{}", stderr(&output));
    assert!(!to.join("output-isnet").exists());
}

//! End-to-end tests of image URLs fetched from the web (`[download]`): against a stand-in web on several loopback
//! hosts with a realistic mix of failures, every URL becomes exactly one sample or one error row whose kind says
//! what happened (`http_404`, `timeout`, `connect`, `dns`, `redirect`, `download`, `too_large`, `not_an_image`,
//! `opted_out`); a host that never answers costs its own items their timeouts (retried only with
//! `retry_timeouts`) and holds up nothing else; 429 then
//! 200 is a sample; signed URLs are fetched with their query string; the per-host cap holds; and the output does
//! not depend on the order the answers came in.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::web::{Answer, Web, url_manifest};
use support::*;

fn spec(dir: &Path, text: &str) -> String {
    let spec = dir.join("job.toml");
    std::fs::write(&spec, text).unwrap();
    s(&spec)
}

fn run(manifest: &str, out: &Path, spec: &str) -> String {
    let out = s(out);
    lyrics_ok(&["run", "--input", manifest, "--output", &out, "--progress", "off", "--config", spec], &Env::new())
}

/// Host 1 serves the good images, host 2 never answers, host 3 fails in every other way, host 4 throttles.
#[test]
fn every_url_of_a_failing_web_is_one_row_of_the_right_kind_and_a_dead_host_holds_up_nothing() {
    let photo = jpeg(64, 48, 3);
    let opted = jpeg(64, 48, 4);
    let big: Vec<u8> = photo.iter().copied().chain(std::iter::repeat_n(0u8, 300_000)).collect();
    let (p, o, b) = (photo.clone(), opted.clone(), big.clone());
    let web = Arc::new(Web::start(4, move |host, target, n| {
        let path = target.split('?').next().unwrap_or_default();
        match (host, path) {
            (1, _) if path.starts_with("/ok") => Answer::ok(&p, "image/jpeg", Duration::from_millis(10)),
            (2, _) => Answer::Hang,
            (3, "/missing.jpg") => Answer::status(404),
            (3, "/slow.jpg") => Answer::ok(&p, "image/jpeg", Duration::from_millis(300)),
            (3, "/cut.jpg") => Answer::Cut { body: p.clone(), sent: p.len() / 2 },
            (3, "/moved.jpg") => Answer::Redirect("/ok-after-redirect.jpg".into()),
            (3, "/ok-after-redirect.jpg") => Answer::image(&p),
            (3, "/to-file.jpg") => Answer::Redirect("file:///etc/passwd".into()),
            (3, "/loop.jpg") => Answer::Redirect("/loop.jpg".into()),
            (3, "/noai.jpg") => Answer::with_header(&o, "X-Robots-Tag", "noai"),
            (3, "/noindex.jpg") => Answer::with_header(&o, "X-Robots-Tag", "noindex, nofollow"),
            (3, "/otherbot.jpg") => Answer::with_header(&p, "X-Robots-Tag", "otherbot: noai"),
            (3, "/page.jpg") => Answer::ok(b"<html>a page</html>", "text/html; charset=utf-8", Duration::ZERO),
            (3, "/error-page.jpg") => Answer::ok(b"<!doctype html><p>gone</p>", "image/jpeg", Duration::ZERO),
            (3, "/big.jpg") => Answer::image(&b),
            (3, "/signed.jpg") if target.contains("X-Amz-Signature=SECRETSIG") => Answer::image(&p),
            (3, "/signed.jpg") => Answer::status(403),
            (4, "/throttled.jpg") if n == 1 => Answer::retry_after(429, 1),
            (4, "/throttled.jpg") => Answer::image(&p),
            (4, "/unavailable.jpg") => Answer::retry_after(503, 1),
            (4, "/patience.jpg") => Answer::retry_after(429, 3600),
            _ => Answer::status(404),
        }
    }));
    let closed_port = free_port();
    let mut rows: Vec<(String, String, &str)> = vec![
        // The dead host first: in input order, it is ahead of everything else.
        ("hang".into(), web.url(2, "/hang.jpg"), "timeout"),
        ("missing".into(), web.url(3, "/missing.jpg"), "http_404"),
        ("slow".into(), web.url(3, "/slow.jpg"), ""),
        ("cut".into(), web.url(3, "/cut.jpg"), "download"),
        ("moved".into(), web.url(3, "/moved.jpg"), ""),
        ("to-file".into(), web.url(3, "/to-file.jpg"), "redirect"),
        ("loop".into(), web.url(3, "/loop.jpg"), "redirect"),
        ("noai".into(), web.url(3, "/noai.jpg"), "opted_out"),
        ("noindex".into(), web.url(3, "/noindex.jpg"), "opted_out"),
        ("otherbot".into(), web.url(3, "/otherbot.jpg"), ""),
        ("page".into(), web.url(3, "/page.jpg"), "not_an_image"),
        ("error-page".into(), web.url(3, "/error-page.jpg"), "not_an_image"),
        ("big".into(), web.url(3, "/big.jpg"), "too_large"),
        ("signed".into(), web.url(3, "/signed.jpg?X-Amz-Signature=SECRETSIG&Expires=9"), ""),
        ("throttled".into(), web.url(4, "/throttled.jpg"), ""),
        ("unavailable".into(), web.url(4, "/unavailable.jpg"), "http_503"),
        ("patience".into(), web.url(4, "/patience.jpg"), "http_429"),
        ("refused".into(), format!("http://127.0.0.1:{closed_port}/x.jpg"), "connect"),
        ("unknown-host".into(), "http://no-such-host.invalid/x.jpg".into(), "dns"),
    ];
    for i in 0..40 {
        rows.push((format!("ok{i:02}"), web.url(1, &format!("/ok{i:02}.jpg")), ""));
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = url_manifest(
        &dir.path().join("corpus"),
        &rows.iter().map(|(k, u, _)| (k.clone(), u.clone())).collect::<Vec<_>>(),
    );
    // Timeouts retried too, to see that a dead host's attempts hold up nothing (the default is one attempt:
    // `a_timeout_is_final_unless_retry_timeouts`).
    let spec = spec(
        dir.path(),
        "[download]\ntimeout_s = 1\nretries = 2\nretry_timeouts = true\nper_host = 2\n[decode]\nmax_bytes = 200000\n",
    );
    let out = dir.path().join("out");
    let started = Instant::now();
    let log = run(&manifest, &out, &spec);
    // Coarse: the dead host costs 3 attempts of 1 s, 503 two Retry-After waits of 1 s; all else is quick.
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());

    let samples = samples(&out);
    let errors = errors(&out);
    for (key, url, kind) in &rows {
        let as_samples = samples.iter().filter(|r| &r.key == key).count();
        let as_errors: Vec<_> = errors.iter().filter(|r| &r.key == key).collect();
        assert_eq!(as_samples + as_errors.len(), 1, "{key}: exactly one row\n{samples:#?}\n{errors:#?}");
        if kind.is_empty() {
            assert_eq!(as_samples, 1, "{key} is a sample: {as_errors:#?}");
            continue;
        }
        let row = as_errors.first().unwrap_or_else(|| panic!("{key} is no error row"));
        assert_eq!(row.kind, *kind, "{key}: {}", row.error);
        let named = url.split('?').next().unwrap_or_default();
        assert!(row.error.contains(named), "{key}: the error names its URL: {}", row.error);
    }
    assert_eq!(samples.len() + errors.len(), rows.len());
    let by_kind = &support::manifest(&out)["errors_by_kind"];
    for (kind, count) in [("opted_out", 2), ("not_an_image", 2), ("redirect", 2), ("timeout", 1), ("http_404", 1)] {
        assert_eq!(by_kind[kind], count, "{kind} counted: {by_kind}");
    }

    // Retries: transient failures only, and as often as `retries` allows.
    assert_eq!(web.requests(2, "/hang.jpg"), 3, "a dead host: one attempt and 2 retries of 1 s each");
    assert_eq!(web.requests(3, "/cut.jpg"), 3);
    assert_eq!(web.requests(4, "/unavailable.jpg"), 3);
    assert_eq!(web.requests(4, "/throttled.jpg"), 2, "429 and Retry-After: 1, then the image");
    assert_eq!(web.requests(4, "/patience.jpg"), 1, "a Retry-After past retry_after_max_s is not waited for");
    for final_answer in ["/missing.jpg", "/noai.jpg", "/page.jpg", "/error-page.jpg", "/big.jpg", "/to-file.jpg"] {
        assert_eq!(web.requests(3, final_answer), 1, "{final_answer} is not retried");
    }
    assert_eq!(web.requests(3, "/loop.jpg"), 6, "5 redirects followed, the sixth refused");

    // The dead host held up nothing: every good image was asked for before its second attempt began.
    let order = web.order();
    let second_hang = order.iter().enumerate().filter(|(_, (h, _))| *h == 2).nth(1).map(|(i, _)| i).unwrap();
    let last_ok = order.iter().rposition(|(h, t)| *h == 1 && t.starts_with("/ok")).unwrap();
    assert!(last_ok < second_hang, "every good image was fetched while the dead host was waited for: {order:?}");
    assert!(web.most_open(1) <= 2, "per_host = 2 held: {}", web.most_open(1));

    // Where each web image came from: the URL after redirects, the status and the content type.
    let meta_of = |key: &str| -> serde_json::Value {
        let row = samples.iter().find(|r| r.key == key).unwrap();
        serde_json::from_str(row.meta.as_deref().unwrap_or("{}")).unwrap()
    };
    let moved = meta_of("moved");
    assert_eq!(moved["download"]["url"], web.url(3, "/ok-after-redirect.jpg"), "{moved}");
    assert_eq!(
        (&moved["download"]["status"], &moved["download"]["content_type"]),
        (&200.into(), &"image/jpeg".into())
    );
    assert_eq!(meta_of("ok00")["download"]["url"], web.url(1, "/ok00.jpg"));
    assert_eq!(meta_of("signed")["download"]["url"], web.url(3, "/signed.jpg?Expires=9"), "without its signature");

    // Opted-out images are not stored; credentials of signed URLs are not either.
    assert!(!samples.iter().any(|r| r.sha256 == sha256_hex(&opted)), "an opted-out image was stored");
    let signed = samples.iter().find(|r| r.key == "signed").unwrap();
    let path = signed.image.path.clone().unwrap_or_default();
    assert!(path.contains("/signed.jpg?Expires=9") && !path.contains("SECRETSIG"), "{path}");
    assert!(!log.contains("SECRETSIG"), "the log holds no signature");
    assert!(errors.iter().all(|e| !e.error.contains("SECRETSIG")));
}

/// The answers come in a different order on each run (delays that change with each request); the shards are the
/// same, byte for byte, and opt-outs turned off make the opted-out image a sample.
#[test]
fn the_output_does_not_depend_on_the_order_answers_come_in() {
    let photos: Vec<Vec<u8>> = (0..30).map(|i| jpeg(40, 30, 100 + i)).collect();
    let served = photos.clone();
    let counter = Arc::new(AtomicUsize::new(0));
    let web = Web::start(3, move |_, target, _| {
        let turn = counter.fetch_add(1, Ordering::SeqCst);
        let index: usize = target.trim_start_matches("/p").trim_end_matches(".jpg").parse().unwrap_or(0);
        let delay = Duration::from_millis(((turn * 7 + index * 13) % 11) as u64 * 15);
        match index {
            5 => Answer::with_header(&served[5], "X-Robots-Tag", "noimageai"),
            9 => Answer::status(404),
            i => Answer::ok(&served[i % served.len()], "image/jpeg", delay),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<(String, String)> =
        (0..30).map(|i| (format!("k{:02}", (i * 17) % 30), web.url(1 + i % 3, &format!("/p{i}.jpg")))).collect();
    let manifest = url_manifest(&dir.path().join("corpus"), &rows);
    let spec_on = spec(dir.path(), "[output]\nshard_rows = 7\n[download]\ntimeout_s = 5\n");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    run(&manifest, &first, &spec_on);
    run(&manifest, &second, &spec_on);
    let shards = support::shards(&first);
    assert!(shards.len() > 2, "several shards: {shards:?}");
    assert_eq!(shards, support::shards(&second), "byte-identical run to run");
    let errors = errors(&first);
    let kinds: Vec<(&str, &str)> = errors.iter().map(|e| (e.key.as_str(), e.kind.as_str())).collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&("k25", "opted_out")) && kinds.contains(&("k03", "http_404")), "{kinds:?}");

    let off = dir.path().join("off");
    let spec_off = dir.path().join("off.toml");
    std::fs::write(&spec_off, "[download]\ntimeout_s = 5\nopt_out = []\n").unwrap();
    run(&manifest, &off, &s(&spec_off));
    assert!(samples(&off).iter().any(|r| r.key == "k25"), "with opt_out = [] the image is kept");
}

/// A unit is as slow as its slowest URL; the next units are fetched meanwhile (`download.units_ahead`), and their
/// rows still go out whole and in order. With `units_ahead = 1` the units are fetched one after the other.
#[test]
fn a_hanging_url_holds_up_its_own_unit_only() {
    let photo = jpeg(32, 24, 5);
    let p = photo.clone();
    let web = Web::start(2, move |host, _, _| if host == 2 { Answer::Hang } else { Answer::image(&p) });
    let dir = tempfile::tempdir().unwrap();
    // Three units of five rows; the first unit's third URL never answers.
    let rows: Vec<(String, String)> = (0..15)
        .map(|i| {
            let url = if i == 2 { web.url(2, "/hang.jpg") } else { web.url(1, &format!("/u{}-{i:02}.jpg", i / 5)) };
            (format!("k{i:02}"), url)
        })
        .collect();
    let manifest = url_manifest(&dir.path().join("corpus"), &rows);
    let settings = "[input]\nrows_per_unit = 5\n[download]\ntimeout_s = 1\nretries = 1\nretry_timeouts = true\n";
    let (ahead, one) = (dir.path().join("ahead"), dir.path().join("one"));
    run(&manifest, &ahead, &spec(dir.path(), settings));
    // Where each later unit's first request came, against the dead URL's second attempt.
    let order = web.order();
    let second_hang = order.iter().enumerate().filter(|(_, (h, _))| *h == 2).nth(1).map(|(i, _)| i).unwrap();
    let last_later = order.iter().rposition(|(_, t)| t.starts_with("/u1-") || t.starts_with("/u2-")).unwrap();
    assert!(last_later < second_hang, "units 1 and 2 were fetched while unit 0 waited: {order:?}");
    let kinds: Vec<_> = errors(&ahead).into_iter().map(|e| (e.key, e.kind)).collect();
    assert_eq!(kinds, [("k02".to_string(), "timeout".to_string())]);
    assert_eq!(samples(&ahead).len(), 14);

    let sequential = spec(dir.path(), &format!("{settings}units_ahead = 1\n"));
    let before = web.order().len();
    run(&manifest, &one, &sequential);
    let order: Vec<_> = web.order().into_iter().skip(before).collect();
    let second_hang = order.iter().enumerate().filter(|(_, (h, _))| *h == 2).nth(1).map(|(i, _)| i).unwrap();
    let first_later = order.iter().position(|(_, t)| t.starts_with("/u1-")).unwrap();
    assert!(first_later > second_hang, "one unit at a time: unit 1 waited for unit 0: {order:?}");
    assert_eq!(support::shards(&one), support::shards(&ahead), "the same shards either way");
}

/// With the defaults a timeout is final after one attempt (`retries` are for resets, cut bodies, 429 and 5xx), and
/// the error says so; `retry_timeouts = true` tries it `retries` more times.
#[test]
fn a_timeout_is_final_unless_retry_timeouts() {
    let photo = jpeg(32, 24, 5);
    let p = photo.clone();
    let web = Web::start(2, move |host, _, _| if host == 2 { Answer::Hang } else { Answer::image(&p) });
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![("dead".to_string(), web.url(2, "/hang.jpg")), ("fine".to_string(), web.url(1, "/ok.jpg"))];
    let manifest = url_manifest(&dir.path().join("corpus"), &rows);
    run(&manifest, &dir.path().join("default"), &spec(dir.path(), "[download]\ntimeout_s = 1\nretries = 2\n"));
    assert_eq!(web.requests(2, "/hang.jpg"), 1, "one attempt");
    let errors = errors(&dir.path().join("default"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), ("dead", "timeout"));
    assert!(errors[0].error.contains("(1 attempt)"), "{}", errors[0].error);
    let retried = spec(dir.path(), "[download]\ntimeout_s = 1\nretries = 2\nretry_timeouts = true\n");
    run(&manifest, &dir.path().join("retried"), &retried);
    assert_eq!(web.requests(2, "/hang.jpg"), 1 + 3, "one attempt and 2 retries");
}

/// Units read ahead that wait for room under `max_bytes_in_flight` never hold the slots of `concurrency` the unit
/// being handed on needs: with 4 slots, 4 units read at once and a 1 MiB budget that a dozen images fill, while the
/// first unit's first image takes a second, the run ends (it once stalled for good: the waiting units' requests,
/// unpolled, kept their slots and their answers unread) with every image a sample, in the same shards as one unit
/// at a time.
#[test]
fn units_waiting_for_room_never_hold_the_slots_the_head_needs() {
    let photo = png(256, 256, 9);
    assert!(photo.len() > 64 << 10, "an image weighs {} bytes: a dozen must fill 1 MiB", photo.len());
    let p = photo.clone();
    let web = Web::start(1, move |_, path, _| {
        let delay = if path == "/00-00.png" { Duration::from_millis(1000) } else { Duration::from_millis(20) };
        Answer::ok(&p, "image/png", delay)
    });
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<(String, String)> = (0..8 * 16)
        .map(|i| (format!("k{i:03}"), web.url(1, &format!("/{:02}-{:02}.png", i / 16, i % 16))))
        .collect();
    let manifest = url_manifest(&dir.path().join("corpus"), &rows);
    let settings = "[input]\nrows_per_unit = 16\n[decode]\nmax_bytes = 1048576\n[download]\nconcurrency = 4\n\
                    per_host = 4\nmax_bytes_in_flight = 1048576\n";
    let ahead = format!("{settings}units_ahead = 4\n");
    let out = dir.path().join("ahead");
    let config = spec(dir.path(), &ahead);
    let mut child = std::process::Command::new(bin())
        .args(["run", "--input", &manifest, "--output", &s(&out), "--progress", "off", "--config", &config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the run stalled: {} requests answered of {}", web.order().len(), rows.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert_eq!(samples(&out).len(), rows.len(), "{:#?}", errors(&out));
    let one = dir.path().join("one");
    run(&manifest, &one, &spec(dir.path(), &format!("{settings}units_ahead = 1\n")));
    assert_eq!(support::shards(&one), support::shards(&out), "the same shards either way");
}

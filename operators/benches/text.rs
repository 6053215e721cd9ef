//! Rows/s of the text stage alone: `texts()` — the four grounded formats, caption grounding, the inline caption and
//! every instruction task — over synthetic refined rows shaped like the refiner's output (2–9 tags, 0–8 objects with
//! RLE masks, a caption naming some of them, a 48 KiB image). Rows are made in batches of 1,024, as the engine
//! hands them to the stage, and only `texts()` is timed, on one thread and on a pool of every core. On criterion:
//! each iteration is one batch, the throughput is in rows (`elem/s`).
//!
//! `cargo bench -p lyrics-operators --bench text`; `TEXT_BENCH_ROWS` sets how many distinct rows the batches are
//! cut from (default 100,000).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lyrics_operators::text::{GroundedFormat, InstructOptions, TextOptions, texts};
use lyrics_schemas::{ImageRef, MaskRow, ObjectRow, SampleRow, TagRow};
use rayon::prelude::*;

const TAGS: [&str; 16] = [
    "dog",
    "cat",
    "person",
    "bicycle",
    "car",
    "tree",
    "table",
    "cup",
    "bench",
    "umbrella",
    "horse",
    "boat",
    "kite",
    "traffic light",
    "sofa",
    "laptop",
];
const BATCH: usize = 1024;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 10_000) as f32 / 10_000.0
    }
}

fn row(i: u64, rng: &mut Rng, image: &[u8]) -> SampleRow {
    let tags: Vec<TagRow> = (0..2 + rng.below(8))
        .map(|_| TagRow {
            tag: TAGS[rng.below(TAGS.len() as u64) as usize].to_string(),
            score: 0.7 + rng.unit() * 0.3,
        })
        .collect();
    let objects: Vec<ObjectRow> = (0..rng.below(9))
        .map(|_| {
            let label = tags[rng.below(tags.len() as u64) as usize].tag.clone();
            let (x, y) = (rng.unit() * 0.7, rng.unit() * 0.7);
            let (w, h) = (0.05 + rng.unit() * 0.25, 0.05 + rng.unit() * 0.25);
            ObjectRow {
                phrase: if rng.below(4) == 0 { format!("small {label}") } else { label.clone() },
                label,
                score: 0.25 + rng.unit() * 0.75,
                bbox: [x, y, x + w, y + h],
                mask: Some(MaskRow {
                    size: [384, 512],
                    counts: "Y]b3:`;8K5L3M3N2N1O1N2O0O2N1O1N2N3M3L6J`Ya1".into(),
                }),
                mask_area: Some(1000 + rng.below(50_000) as i64),
                mask_score: Some(0.8 + rng.unit() * 0.2),
            }
        })
        .collect();
    let named: Vec<&str> = objects.iter().take(3).map(|o| o.label.as_str()).collect();
    let caption = match named.as_slice() {
        [] => "An empty street at dusk, seen from a window.".to_string(),
        [a] => format!("A {a} in the afternoon sun next to the old wall."),
        [a, b, ..] => format!("Two {a}s and a {b} near the river, photographed on a cloudy day."),
    };
    SampleRow {
        key: format!("{i:09}"),
        source: format!("s3://bucket/shards/{:05}.tar#{i:09}.jpg", i / 10_000),
        image: ImageRef { bytes: Some(image.to_vec()), path: Some(format!("{i:09}.jpg")) },
        caption: Some(caption.clone()),
        captions: vec![caption],
        width: 512,
        height: 384,
        format: "jpeg".into(),
        sha256: "0".repeat(64),
        meta: None,
        tags: Some(tags),
        objects: Some(objects),
        refiner: Some("{}".into()),
    }
}

fn text_stage(c: &mut Criterion) {
    let rows: u64 = std::env::var("TEXT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let options = TextOptions {
        formats: GroundedFormat::all().to_vec(),
        inline_format: GroundedFormat::KOSMOS2,
        instruct: InstructOptions::default(),
    };
    let image = vec![0x5a; 48 * 1024];
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let batches: Vec<Vec<SampleRow>> = (0..rows)
        .step_by(BATCH)
        .map(|start| (start..(start + BATCH as u64).min(rows)).map(|i| row(i, &mut rng, &image)).collect())
        .collect();
    let objects: usize = batches.iter().flatten().map(|r| r.objects.as_ref().map_or(0, Vec::len)).sum();
    println!("text stage over {rows} refined rows ({objects} objects), batches of {BATCH}");

    let mut group = c.benchmark_group("text stage");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Each iteration takes the next batch, so every row is timed in turn, as a run over all of them would.
    let mut next = batches.iter().cycle();
    group.bench_function("1 thread", |b| {
        b.iter(|| {
            for r in next.next().into_iter().flatten() {
                black_box(texts(r, &options));
            }
        })
    });
    let mut next = batches.iter().cycle();
    group.bench_function(format!("{threads} threads"), |b| {
        b.iter(|| {
            let batch = next.next().map_or(&[][..], Vec::as_slice);
            let out: Vec<_> = pool.install(|| batch.par_iter().map(|r| texts(r, &options)).collect());
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, text_stage);
criterion_main!(benches);

//! Wiring operators into the engine: each stage adapts an operator to [`lyrics_pipeline::Stage`], over the
//! job's sample [`State`]. Per-sample work runs under `catch_unwind` item by item ([`map_samples`]), so a bug
//! that panics on one image costs that image only.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use lyrics_operators::image::ImageOperator;
use lyrics_operators::models::{
    Inferred, Layout, ModelError, Prepared, RefinedObject, Refiner, finish, prepare, thread_cpu_time,
};
use lyrics_operators::text::{TextOptions, texts};
use lyrics_pipeline::{ItemError, Metrics, RawItem, Sample, Stage, StageError, TableHandle, panic_row};
use lyrics_schemas::{ImageRef, InstructRow, MaskRow, ObjectRow, PretrainRow, SampleRow, TagRow};
use rayon::prelude::*;

/// What a sample carries from stage to stage.
#[derive(Default)]
pub enum State {
    /// Nothing: the sample is complete as its row says.
    #[default]
    Empty,
    /// The decoded, oriented pixels, for the refiner (decoded once).
    Pixels(image::RgbImage),
    /// The pixels and every model input that depends on them alone.
    Prepared(image::RgbImage, Prepared),
    /// The models' outputs, waiting to be post-processed, and the pixels and model inputs they were made from,
    /// handed on to be freed on the CPU threads: freeing them on the inference thread (tens of MB an image,
    /// unmapped page by page) kept the sessions waiting.
    Inferred(Inferred, Spent),
}

/// An image's pixels and model inputs, once the sessions are done with them.
pub type Spent = Box<(image::RgbImage, Prepared)>;

/// A record of this job.
pub type Record = lyrics_pipeline::Record<State>;

/// Decodes, validates, orients and resizes every raw item of a batch in parallel on a rayon pool.
///
/// Items are shared out one at a time (`with_max_len(1)`, here and in [`map_samples`]). Rayon's default splits a
/// batch into runs of items that a thread works through alone, so at the end of every batch one thread could be
/// left with a run of up to 16 images while the others waited for the next batch. In a 2,000-image ingest on two
/// cores the two decode threads ran 84% and 80% of the wall time that way, 86.5% each with items shared out one
/// at a time (BENCHMARKS.md).
pub struct DecodeStage {
    operator: ImageOperator,
    pool: Arc<rayon::ThreadPool>,
    cpu: CpuClock,
}

impl DecodeStage {
    pub fn new(operator: ImageOperator, pool: Arc<rayon::ThreadPool>, metrics: Arc<Metrics>) -> Self {
        DecodeStage { operator, pool, cpu: CpuClock { stage: "decode", metrics: Some(metrics) } }
    }
}

/// The CPU time the pool's threads spend on a stage's items, summed from their own thread clocks and reported as
/// `<stage>.cpu` among the busy times: unlike the stage's wall time, it does not depend on how many cores the
/// pool had, nor on what else ran on them, so it says how many images a second a host of N cores can feed.
struct CpuClock {
    stage: &'static str,
    metrics: Option<Arc<Metrics>>,
}

impl CpuClock {
    /// Runs `f` on this thread, adding the CPU time it took to `total` (nanoseconds).
    fn time<T>(&self, total: &std::sync::atomic::AtomicU64, f: impl FnOnce() -> T) -> T {
        if self.metrics.is_none() {
            return f();
        }
        let before = thread_cpu_time();
        let out = f();
        let spent = thread_cpu_time().saturating_sub(before).as_nanos() as u64;
        total.fetch_add(spent, std::sync::atomic::Ordering::Relaxed);
        out
    }

    fn report(&self, total: &std::sync::atomic::AtomicU64) {
        if let Some(metrics) = &self.metrics {
            let nanos = total.load(std::sync::atomic::Ordering::Relaxed);
            metrics.add_busy(&format!("{}.cpu", self.stage), std::time::Duration::from_nanos(nanos));
        }
    }
}

impl Stage<State> for DecodeStage {
    fn name(&self) -> &str {
        "decode"
    }

    fn process(&mut self, batch: Vec<Record>) -> Result<Vec<Record>, StageError> {
        let (operator, cpu) = (&self.operator, &self.cpu);
        let total = std::sync::atomic::AtomicU64::new(0);
        let out = self.pool.install(|| {
            batch
                .into_par_iter()
                .with_max_len(1)
                .map(|record| cpu.time(&total, || decode(operator, record)))
                .collect()
        });
        cpu.report(&total);
        Ok(out)
    }
}

fn decode(operator: &ImageOperator, record: Record) -> Record {
    let Record::Raw(raw) = record else { return record };
    let RawItem { key, source, image_path, bytes, captions, meta } = raw;
    let named = image_path.as_deref().unwrap_or(&key).to_string();
    // A decoder bug must cost one item, not the job.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| operator.process(bytes)));
    match outcome {
        Ok(Ok(image)) => Record::Sample(Box::new(Sample::new(
            SampleRow {
                key,
                source,
                image: ImageRef { bytes: Some(image.bytes), path: image_path },
                caption: captions.first().cloned(),
                captions,
                width: image.width as i32,
                height: image.height as i32,
                format: image.format.as_str().to_string(),
                sha256: image.sha256,
                meta,
                ..SampleRow::default()
            },
            image.pixels.map_or(State::Empty, State::Pixels),
        ))),
        Ok(Err(e)) => {
            Record::error(&key, &source, ItemError::new("decode", e.kind(), format!("image {named}: {e}")))
        }
        Err(_) => Record::error(
            &key,
            &source,
            ItemError::new("decode", "decoder_panic", format!("image {named}: the decoder crashed")),
        ),
    }
}

fn refine_error(sample: &Sample<State>, error: &ModelError) -> Record {
    Record::error(
        &sample.row.key,
        &sample.row.source,
        ItemError::new(
            "refine",
            error.kind(),
            format!("image {}: {error}", sample.row.image.path.as_deref().unwrap_or(&sample.row.key)),
        ),
    )
}

/// A stage that maps each sample on its own, in parallel on a rayon pool, catching panics per sample.
pub struct PerSample {
    name: &'static str,
    pool: Arc<rayon::ThreadPool>,
    f: Box<dyn Fn(Box<Sample<State>>) -> Record + Send + Sync>,
    cpu: CpuClock,
}

impl PerSample {
    pub fn new(
        name: &'static str,
        pool: Arc<rayon::ThreadPool>,
        f: impl Fn(Box<Sample<State>>) -> Record + Send + Sync + 'static,
    ) -> Self {
        PerSample { name, pool, f: Box::new(f), cpu: CpuClock { stage: name, metrics: None } }
    }

    /// Reports the CPU time of the stage's items as `<name>.cpu` (see [`CpuClock`]).
    pub fn measured(mut self, metrics: Arc<Metrics>) -> Self {
        self.cpu.metrics = Some(metrics);
        self
    }
}

impl Stage<State> for PerSample {
    fn name(&self) -> &str {
        self.name
    }

    fn process(&mut self, batch: Vec<Record>) -> Result<Vec<Record>, StageError> {
        let total = std::sync::atomic::AtomicU64::new(0);
        let f = &*self.f;
        let out = map_samples(&self.pool, self.name, batch, |sample| self.cpu.time(&total, || f(sample)));
        self.cpu.report(&total);
        Ok(out)
    }
}

/// The layout of the loaded graphs, published by the thread that loads them: `Err` with the reason when they could
/// not be loaded.
pub type LayoutSlot = Arc<std::sync::OnceLock<Result<Layout, String>>>;

/// Computes every model input that depends on the image alone, in parallel: resizing and normalization are off
/// the inference thread, so they overlap inference of the previous micro-batch. What to resize to is read from the
/// graphs, so the first batch waits for them to be loaded.
pub fn refine_prepare(layout: LayoutSlot, pool: Arc<rayon::ThreadPool>) -> PerSample {
    PerSample::new("refine.prepare", pool, move |mut sample| {
        let State::Pixels(pixels) = std::mem::take(&mut sample.state) else {
            let error = ModelError::Preprocess("no decoded pixels reached the refiner".into());
            return refine_error(&sample, &error);
        };
        let layout = match layout.wait() {
            Ok(layout) => layout,
            Err(reason) => return refine_error(&sample, &ModelError::Runtime(reason.clone())),
        };
        match prepare(layout, &pixels) {
            Ok(mut prepared) => {
                prepared.caption = sample.row.caption.clone();
                sample.state = State::Prepared(pixels, prepared);
                Record::Sample(sample)
            }
            Err(e) => refine_error(&sample, &e),
        }
    })
}

/// Sessions that may still be loading on another thread.
pub enum PendingRefiner {
    Ready(Box<Refiner>),
    Loading(std::thread::JoinHandle<Result<Refiner, ModelError>>),
}

/// Runs the sessions on each micro-batch, on the stage's own thread, which owns them.
pub struct RefineInferStage {
    refiner: Option<Box<Refiner>>,
    loading: Option<std::thread::JoinHandle<Result<Refiner, ModelError>>>,
    metrics: Arc<Metrics>,
}

impl RefineInferStage {
    pub fn new(refiner: PendingRefiner, metrics: Arc<Metrics>) -> Self {
        match refiner {
            PendingRefiner::Ready(refiner) => RefineInferStage { refiner: Some(refiner), loading: None, metrics },
            PendingRefiner::Loading(handle) => RefineInferStage { refiner: None, loading: Some(handle), metrics },
        }
    }

    /// The sessions, waiting for them on the first batch. Models that fail to load end the job with the
    /// reason: no unit can be refined.
    fn sessions(&mut self) -> Result<&mut Refiner, StageError> {
        if let Some(handle) = self.loading.take() {
            // Waiting for the loader is not inference: the summary shows it apart (`refine.load_wait`).
            let started = std::time::Instant::now();
            let joined = handle.join();
            self.metrics.add_busy("refine.load_wait", started.elapsed());
            match joined {
                Ok(Ok(refiner)) => self.refiner = Some(Box::new(refiner)),
                Ok(Err(e)) => return Err(StageError(format!("cannot load the models: {e}"))),
                Err(_) => return Err(StageError("loading the models crashed".into())),
            }
        }
        self.refiner.as_deref_mut().ok_or_else(|| StageError("the models could not be loaded".into()))
    }
}

impl Drop for RefineInferStage {
    /// Waits for sessions still loading: ONNX Runtime must not be torn down by the process exiting while a
    /// thread is inside it (a job whose planning fails ends before the models have loaded).
    fn drop(&mut self) {
        if let Some(handle) = self.loading.take() {
            let _ = handle.join();
        }
    }
}

impl Stage<State> for RefineInferStage {
    fn name(&self) -> &str {
        "refine.infer"
    }

    /// Waits for the sessions loading in the background: models that do not load end the job before it writes.
    fn ready(&mut self) -> Result<(), StageError> {
        self.sessions().map(|_| ())
    }

    fn process(&mut self, mut batch: Vec<Record>) -> Result<Vec<Record>, StageError> {
        let metrics = self.metrics.clone();
        let refiner = self.sessions()?;
        let cpu_before = thread_cpu_time();
        for record in &batch {
            lyrics_pipeline::panic_point("refine.infer", record.identity().0);
        }
        let mut inputs = Vec::new();
        let mut slots = Vec::new();
        for (i, record) in batch.iter_mut().enumerate() {
            if let Record::Sample(sample) = record {
                match std::mem::take(&mut sample.state) {
                    State::Prepared(pixels, prepared) => {
                        inputs.push((pixels, prepared));
                        slots.push(i);
                    }
                    other => sample.state = other,
                }
            }
        }
        let before = refiner.session_time();
        let results = refiner.infer(inputs.iter().map(|(pixels, prepared)| (pixels, prepared)).collect());
        let after = refiner.session_time();
        metrics.add_busy("refine.session_run", after.wall.saturating_sub(before.wall));
        for ((slot, result), spent) in slots.into_iter().zip(results).zip(inputs) {
            let Record::Sample(sample) = &mut batch[slot] else { continue };
            match result {
                Ok(inferred) => sample.state = State::Inferred(inferred, Box::new(spent)),
                Err(e) => {
                    let error = refine_error(sample, &e);
                    batch[slot] = error;
                }
            }
        }
        // This thread's CPU time outside the sessions is the work that keeps a device waiting; the rest of its time
        // outside them is waiting for a core, which it shares with the other stages' threads.
        let cpu = thread_cpu_time().saturating_sub(cpu_before);
        metrics.add_busy("refine.infer_cpu_outside_run", cpu.saturating_sub(after.cpu.saturating_sub(before.cpu)));
        Ok(batch)
    }
}

/// Encodes masks and fills the refined columns, in parallel.
pub fn refine_finish(description: Arc<str>, pool: Arc<rayon::ThreadPool>) -> PerSample {
    PerSample::new("refine.finish", pool, move |mut sample| {
        let State::Inferred(inferred, spent) = std::mem::take(&mut sample.state) else {
            let error = ModelError::Postprocess("the refiner produced nothing for this image".into());
            return refine_error(&sample, &error);
        };
        // Freed here, on a CPU thread, not on the inference thread.
        drop(spent);
        match finish(inferred) {
            Ok(refined) => {
                sample.row.tags =
                    Some(refined.tags.into_iter().map(|t| TagRow { tag: t.tag, score: t.score }).collect());
                sample.row.objects = Some(refined.objects.into_iter().map(object_row).collect());
                sample.row.refiner = Some(description.to_string());
                Record::Sample(sample)
            }
            Err(e) => refine_error(&sample, &e),
        }
    })
}

fn object_row(o: RefinedObject) -> ObjectRow {
    ObjectRow {
        label: o.label,
        phrase: o.phrase,
        score: o.score,
        bbox: o.bbox,
        mask: o.mask.map(|m| MaskRow { size: [m.size[0] as i32, m.size[1] as i32], counts: m.counts }),
        mask_area: o.mask_area.map(|a| a as i64),
        mask_score: o.mask_score,
    }
}

/// The grounded text of refined samples: the `pretrain` row (formats, grounded caption, spans) and the `instruct`
/// conversations, built in parallel, in the two tables it declares in `tables`.
pub fn text(
    options: Arc<TextOptions>,
    pool: Arc<rayon::ThreadPool>,
    tables: &mut lyrics_pipeline::Tables,
) -> Result<PerSample, lyrics_pipeline::PipelineError> {
    let pretrain: TableHandle<PretrainRow> = tables.declare()?;
    let instruct: TableHandle<InstructRow> = tables.declare()?;
    Ok(PerSample::new("text", pool, move |mut sample| {
        let (row, conversations) = texts(&sample.row, &options);
        pretrain.push(&mut sample.products, row);
        for conversation in conversations {
            instruct.push(&mut sample.products, conversation);
        }
        Record::Sample(sample)
    }))
}

/// Runs `f` on every sample of `batch` on `pool`, keeping the order; raw items and error rows pass through. A
/// panic in `f` makes that sample an error row of kind `panic`, naming `stage`.
fn map_samples(
    pool: &rayon::ThreadPool,
    stage: &str,
    batch: Vec<Record>,
    f: impl Fn(Box<Sample<State>>) -> Record + Send + Sync,
) -> Vec<Record> {
    pool.install(|| {
        batch
            .into_par_iter()
            .with_max_len(1)
            .map(|record| match record {
                Record::Sample(sample) => {
                    let (key, source) = (sample.row.key.clone(), sample.row.source.clone());
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        lyrics_pipeline::panic_point(stage, &key);
                        f(sample)
                    }))
                    .unwrap_or_else(|payload| Record::Error(panic_row(stage, &key, &source, payload.as_ref())))
                }
                other => other,
            })
            .collect()
    })
}

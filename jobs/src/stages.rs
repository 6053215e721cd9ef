//! Wiring operators into the engine: each stage adapts an operator to [`lyrics_pipeline::Stage`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use lyrics_operators::image::ImageOperator;
use lyrics_operators::models::{
    Inferred, ModelError, ModelsConfig, Prepared, RefinedObject, Refiner, finish, prepare,
};
use lyrics_operators::text::{TextOptions, texts};
use lyrics_pipeline::{ItemError, Metrics, RawItem, Record, Sample, Stage};
use lyrics_schemas::{ImageRef, MaskRow, ObjectRow, SampleRow, TagRow};
use rayon::prelude::*;

/// Decodes, validates, orients and resizes every raw item of a batch in parallel on a rayon pool.
pub struct DecodeStage {
    operator: ImageOperator,
    pool: Arc<rayon::ThreadPool>,
}

impl DecodeStage {
    pub fn new(operator: ImageOperator, pool: Arc<rayon::ThreadPool>) -> Self {
        DecodeStage { operator, pool }
    }
}

impl Stage for DecodeStage {
    fn name(&self) -> &str {
        "decode"
    }

    fn process(&mut self, batch: Vec<Record>) -> Vec<Record> {
        let operator = &self.operator;
        self.pool.install(|| batch.into_par_iter().map(|record| decode(operator, record)).collect())
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
            image.pixels.map(|p| Box::new(Pixels(p)) as Box<dyn std::any::Any + Send>),
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

/// The decoded pixels a sample carries from the decode stage to the refiner.
pub struct Pixels(pub image::RgbImage);

/// A sample between the refiner's stages.
enum RefineState {
    Prepared(image::RgbImage, Prepared),
    Inferred(Inferred),
}

fn take_state<T: 'static>(sample: &mut Sample) -> Option<T> {
    let state = sample.state.take()?;
    match state.downcast::<T>() {
        Ok(t) => Some(*t),
        Err(other) => {
            sample.state = Some(other);
            None
        }
    }
}

fn refine_error(sample: &Sample, error: &ModelError) -> Record {
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

/// Computes every model input that depends on the image alone, in parallel: resizing and normalization are off
/// the inference thread, so they overlap inference of the previous micro-batch.
pub struct RefinePrepareStage {
    config: Arc<ModelsConfig>,
    pool: Arc<rayon::ThreadPool>,
}

impl RefinePrepareStage {
    pub fn new(config: Arc<ModelsConfig>, pool: Arc<rayon::ThreadPool>) -> Self {
        RefinePrepareStage { config, pool }
    }
}

impl Stage for RefinePrepareStage {
    fn name(&self) -> &str {
        "refine.prepare"
    }

    fn process(&mut self, batch: Vec<Record>) -> Vec<Record> {
        let config = &self.config;
        map_samples(&self.pool, batch, |mut sample| {
            let Some(Pixels(pixels)) = take_state::<Pixels>(&mut sample) else {
                let error = ModelError::Preprocess("no decoded pixels reached the refiner".into());
                return refine_error(&sample, &error);
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| prepare(config, &pixels))) {
                Ok(Ok(prepared)) => {
                    sample.state = Some(Box::new(RefineState::Prepared(pixels, prepared)));
                    Record::Sample(sample)
                }
                Ok(Err(e)) => refine_error(&sample, &e),
                Err(_) => refine_error(&sample, &ModelError::Preprocess("preprocessing crashed".into())),
            }
        })
    }
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

    /// The sessions, waiting for them on the first batch. Models that fail to load end the process with the
    /// reason: no unit can be refined, and none has been committed yet.
    fn sessions(&mut self) -> &mut Refiner {
        if let Some(handle) = self.loading.take() {
            match handle.join() {
                Ok(Ok(refiner)) => self.refiner = Some(Box::new(refiner)),
                Ok(Err(e)) => fatal(&format!("cannot load the models: {e}")),
                Err(_) => fatal("loading the models crashed"),
            }
        }
        match self.refiner.as_mut() {
            Some(refiner) => refiner,
            None => fatal("the models were never loaded"),
        }
    }
}

fn fatal(message: &str) -> ! {
    eprintln!("error: {}", lyrics_pipeline::store::redact_secrets(message));
    std::process::exit(2)
}

impl Stage for RefineInferStage {
    fn name(&self) -> &str {
        "refine.infer"
    }

    fn process(&mut self, mut batch: Vec<Record>) -> Vec<Record> {
        let mut inputs = Vec::new();
        let mut slots = Vec::new();
        for (i, record) in batch.iter_mut().enumerate() {
            if let Record::Sample(sample) = record
                && let Some(RefineState::Prepared(pixels, prepared)) = take_state::<RefineState>(sample)
            {
                inputs.push((pixels, prepared));
                slots.push(i);
            }
        }
        let metrics = self.metrics.clone();
        let refiner = self.sessions();
        let (before, _) = refiner.session_time();
        let results = {
            let refs: Vec<(&image::RgbImage, Prepared)> =
                inputs.iter_mut().map(|(p, prep)| (&*p, std::mem::take(prep))).collect();
            refiner.infer(refs)
        };
        let (after, _) = refiner.session_time();
        metrics.add_busy("refine.session_run", after.saturating_sub(before));
        for (slot, result) in slots.into_iter().zip(results) {
            let Record::Sample(sample) = &mut batch[slot] else { continue };
            match result {
                Ok(inferred) => sample.state = Some(Box::new(RefineState::Inferred(inferred))),
                Err(e) => {
                    let error = refine_error(sample, &e);
                    batch[slot] = error;
                }
            }
        }
        batch
    }
}

/// Encodes masks and fills the refined columns, in parallel.
pub struct RefineFinishStage {
    description: Arc<str>,
    pool: Arc<rayon::ThreadPool>,
}

impl RefineFinishStage {
    pub fn new(description: Arc<str>, pool: Arc<rayon::ThreadPool>) -> Self {
        RefineFinishStage { description, pool }
    }
}

impl Stage for RefineFinishStage {
    fn name(&self) -> &str {
        "refine.finish"
    }

    fn process(&mut self, batch: Vec<Record>) -> Vec<Record> {
        let description = &self.description;
        map_samples(&self.pool, batch, |mut sample| {
            let Some(RefineState::Inferred(inferred)) = take_state::<RefineState>(&mut sample) else {
                return refine_error(
                    &sample,
                    &ModelError::Postprocess("the refiner produced nothing for this image".into()),
                );
            };
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
/// conversations, built in parallel.
pub struct TextStage {
    options: Arc<TextOptions>,
    pool: Arc<rayon::ThreadPool>,
}

impl TextStage {
    pub fn new(options: Arc<TextOptions>, pool: Arc<rayon::ThreadPool>) -> Self {
        TextStage { options, pool }
    }
}

impl Stage for TextStage {
    fn name(&self) -> &str {
        "text"
    }

    fn process(&mut self, batch: Vec<Record>) -> Vec<Record> {
        let options = &self.options;
        map_samples(&self.pool, batch, |mut sample| {
            let (pretrain, instruct) = texts(&sample.row, options);
            sample.pretrain = Some(pretrain);
            sample.instruct = instruct;
            Record::Sample(sample)
        })
    }
}

/// Runs `f` on every sample of `batch` on `pool`, keeping the order; raw items and error rows pass through.
fn map_samples(
    pool: &rayon::ThreadPool,
    batch: Vec<Record>,
    f: impl Fn(Box<Sample>) -> Record + Send + Sync,
) -> Vec<Record> {
    pool.install(|| {
        batch
            .into_par_iter()
            .map(|record| match record {
                Record::Sample(sample) => f(sample),
                other => other,
            })
            .collect()
    })
}

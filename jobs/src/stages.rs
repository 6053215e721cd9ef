//! Wiring operators into the engine: each stage adapts an operator to [`lyrics_pipeline::Stage`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use lyrics_operators::image::ImageOperator;
use lyrics_pipeline::{ItemError, RawItem, Record, Sample, Stage};
use lyrics_schemas::{ImageRef, SampleRow};
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
        Ok(Ok(image)) => Record::Sample(Box::new(Sample {
            row: SampleRow {
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
            },
            state: image.pixels.map(|p| Box::new(p) as Box<dyn std::any::Any + Send>),
        })),
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

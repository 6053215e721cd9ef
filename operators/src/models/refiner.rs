//! The fused refiner: tagger → detector → segmenter, over micro-batches.

use std::collections::BTreeMap;
use std::path::PathBuf;

use image::RgbImage;
use serde_json::json;

use super::batching::in_chunks;
use super::detector::Phrases;
use super::runtime::Device;
use super::segmenter::{MaskOut, SegmenterImage, SegmenterInput};
use super::segmenting::{SegmentingDetector, StretchedInput, phrase_prompts};
use super::{
    Detector, DetectorImage, DetectorPrompt, ModelError, ModelsConfig, PromptSource, Segmenter, Tag, Tagger,
    caption_prompt, classes_prompt, prompt_of,
};
use crate::geometry::{BoxXyxy, Rle};

/// Local files of a models config, by the keys of [`ModelsConfig::files`], with their SHA-256.
#[derive(Debug, Clone, Default)]
pub struct ModelPaths {
    /// Local file of each key (`tagger.model`, `detector.tokenizer`, ...).
    pub paths: BTreeMap<String, PathBuf>,
    /// Hex SHA-256 of each key's file.
    pub sha256: BTreeMap<String, String>,
}

impl ModelPaths {
    pub(crate) fn get(&self, key: &str) -> Result<&PathBuf, ModelError> {
        self.paths.get(key).ok_or_else(|| ModelError::Config(format!("{key} has no local file")))
    }

    fn text(&self, key: &str) -> Result<String, ModelError> {
        let path = self.get(key)?;
        std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config(format!("{key}: cannot read {}: {e}", path.display())))
    }
}

/// What the loaded graphs say about the inputs they take: sizes to resize to and encoder layouts. Read from the
/// graphs when they are loaded (a contract is what the graph declares, not what the models file assumes), and used
/// by [`prepare`] on the CPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Layout {
    /// The tagger's input (width, height); `None` without a tagger.
    pub tagger: Option<(u32, u32)>,
    /// Whether a detector runs, and the static (width, height) its graph declares, if any.
    pub detector: Option<Option<(u32, u32)>>,
    /// The segmenter's encoder input.
    pub segmenter: SegmenterInput,
    /// The image input of a detector that segments, when one runs (its prepared image goes in
    /// [`Prepared::detector`]).
    pub segmenting: Option<StretchedInput>,
}

/// The model inputs of one image that depend on the image alone.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The tagger's `[3, H, W]` input.
    pub tagger: Option<Vec<f32>>,
    /// The detector's image input.
    pub detector: Option<DetectorImage>,
    /// The segmenter's encoder input (`None` for `salient_crop`, which crops per box).
    pub segmenter: Option<SegmenterImage>,
    /// The sample's caption, for `detector.prompt = "caption"`.
    pub caption: Option<String>,
}

/// Computes [`Prepared`] for `image` for the graphs of `layout` (pure CPU; safe to run on many threads).
pub fn prepare(layout: &Layout, image: &RgbImage) -> Result<Prepared, ModelError> {
    Ok(Prepared {
        tagger: layout.tagger.map(|side| Tagger::prepare(image, side)).transpose()?,
        detector: match layout.segmenting {
            Some(input) => Some(input.prepare(image)?),
            None => layout.detector.map(|size| Detector::prepare(image, size)).transpose()?,
        },
        segmenter: layout.segmenter.prepare(image)?,
        caption: None,
    })
}

/// What the sessions produced for one image, in pixels.
#[derive(Debug, Clone, Default)]
pub struct Inferred {
    /// Size of the image the models saw, as displayed.
    pub width: u32,
    pub height: u32,
    pub tags: Vec<Tag>,
    /// Each kept detection, with its mask when a segmenter runs (finished on the CPU threads by [`finish`]).
    pub objects: Vec<(super::Detection, Option<MaskOut>)>,
    /// What phrases map back to as labels: the prompt's classes, or `None` for the tags (listed in [`finish`], on a
    /// CPU thread: thousands of tags can pass).
    pub vocabulary: Option<Vec<String>>,
    /// What decodes the detections' phrases, in [`finish`] (present whenever there are detections).
    pub phrases: Option<Phrases>,
}

/// One refined object, as stored: box normalized to `[0, 1]` of the displayed image.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinedObject {
    /// The tag the phrase maps back to (exact, then prefix, then suffix match), else the phrase.
    pub label: String,
    pub phrase: String,
    /// The detector's score.
    pub score: f32,
    /// `[x1, y1, x2, y2]` as fractions of the displayed image, clamped to it.
    pub bbox: [f32; 4],
    /// COCO RLE of the mask at the displayed image's size.
    pub mask: Option<Rle>,
    /// Foreground pixels of the mask.
    pub mask_area: Option<u64>,
    /// The segmenter's confidence in the mask.
    pub mask_score: Option<f32>,
}

/// What the refiner stores for one image: its tags and objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refined {
    pub tags: Vec<Tag>,
    pub objects: Vec<RefinedObject>,
}

/// The tag `phrase` refers to: an exact (case-insensitive) match, else the first tag the phrase starts with or
/// that starts with the phrase, else the first that ends with it or it ends with; `None` when nothing matches.
pub fn label_of<'a>(phrase: &str, tags: &'a [String]) -> Option<&'a str> {
    let p = phrase.trim().to_lowercase();
    if p.is_empty() {
        return None;
    }
    let lower: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    let find = |f: &dyn Fn(&str) -> bool| lower.iter().position(|t| f(t)).map(|i| tags[i].as_str());
    find(&|t| t == p)
        .or_else(|| find(&|t| t.starts_with(&p) || p.starts_with(t)))
        .or_else(|| find(&|t| t.ends_with(&p) || p.ends_with(t)))
}

/// Encodes masks and normalizes boxes (pure CPU; safe to run on many threads).
pub fn finish(inferred: Inferred) -> Result<Refined, ModelError> {
    let (w, h) = (inferred.width as f32, inferred.height as f32);
    let tags: Vec<String>;
    let vocabulary: &[String] = match &inferred.vocabulary {
        Some(classes) => classes,
        // Listed only where a phrase needs a label: thousands of tags can pass in an image with no objects.
        None if inferred.objects.is_empty() => &[],
        None => {
            tags = inferred.tags.iter().map(|t| t.tag.clone()).collect();
            &tags
        }
    };
    let mut objects = Vec::with_capacity(inferred.objects.len());
    for (mut detection, mask) in inferred.objects {
        if let Some(phrases) = &inferred.phrases {
            phrases.decode(&mut detection)?;
        }
        let label = label_of(&detection.phrase, vocabulary).unwrap_or(&detection.phrase).to_string();
        let b = detection.bbox.clamped(w, h).scaled(1.0 / w.max(1.0), 1.0 / h.max(1.0)).0;
        let (rle, area, score) = match mask.map(MaskOut::finish) {
            Some(mask) => (Some(mask.rle), Some(mask.area), Some(mask.score)),
            None => (None, None, None),
        };
        objects.push(RefinedObject {
            label,
            phrase: detection.phrase,
            score: detection.score,
            bbox: b,
            mask: rle,
            mask_area: area,
            mask_score: score,
        });
    }
    Ok(Refined { tags: inferred.tags, objects })
}

/// Time inside `Session::run`, summed over the sessions of a refiner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTime {
    /// Wall time.
    pub wall: std::time::Duration,
    /// CPU time of the calling thread (see [`super::OnnxModel::run_cpu`]).
    pub cpu: std::time::Duration,
    /// Number of runs.
    pub runs: u64,
}

/// The loaded models of a run. One per process and device; the thread that owns it runs every session.
pub struct Refiner {
    config: ModelsConfig,
    tagger: Option<Tagger>,
    detector: Option<Detector>,
    /// A detector that segments, in place of `detector` (and of any segmenter).
    segmenting: Option<Box<dyn SegmentingDetector>>,
    segmenter: Option<Segmenter>,
    description: String,
}

impl Refiner {
    /// Loads every model of `config` from its local files on `device`.
    pub fn load(
        config: &ModelsConfig,
        files: &ModelPaths,
        device: Device,
        threads: usize,
    ) -> Result<Refiner, ModelError> {
        let tagger = match &config.tagger {
            Some(t) => {
                let thresholds = if t.thresholds.is_some() { Some(files.text("tagger.thresholds")?) } else { None };
                Some(Tagger::load(
                    t,
                    files.get("tagger.model")?,
                    &files.text("tagger.tags")?,
                    thresholds.as_deref(),
                    device,
                    threads,
                )?)
            }
            None => None,
        };
        let segmenting: Option<Box<dyn SegmentingDetector>> = match &config.detector {
            Some(d) if d.family == super::DetectorFamily::Sam3 => {
                Some(Box::new(super::sam3::Sam3::load(d, files, device, threads)?))
            }
            _ => None,
        };
        let detector = match &config.detector {
            Some(d) if segmenting.is_none() => Some(Detector::load(
                d,
                files.get("detector.model")?,
                files.get("detector.tokenizer")?,
                device,
                threads,
            )?),
            _ => None,
        };
        let segmenter =
            config.segmenter.as_ref().map(|s| Segmenter::load_files(s, files, device, threads)).transpose()?;
        let description = describe(config, files);
        Ok(Refiner { config: config.clone(), tagger, detector, segmenting, segmenter, description })
    }

    /// The models file the refiner was loaded from.
    pub fn config(&self) -> &ModelsConfig {
        &self.config
    }

    /// What the loaded graphs take, for [`prepare`].
    pub fn layout(&self) -> Layout {
        Layout {
            tagger: self.tagger.as_ref().map(Tagger::side),
            detector: self.detector.as_ref().map(Detector::fixed_size),
            segmenter: self.segmenter.as_ref().map_or(SegmenterInput::None, Segmenter::input),
            segmenting: self.segmenting.as_ref().map(|s| s.input()),
        }
    }

    /// JSON naming every model, its file's checksum and its thresholds: the `refiner` column.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Time spent inside `Session::run` so far, over every session.
    pub fn session_time(&self) -> SessionTime {
        let mut models: Vec<&super::OnnxModel> = Vec::new();
        models.extend(self.tagger.as_ref().map(Tagger::model));
        models.extend(self.detector.as_ref().map(Detector::model));
        if let Some(s) = &self.segmenting {
            models.extend(s.models());
        }
        if let Some(s) = &self.segmenter {
            models.extend(s.models());
        }
        SessionTime {
            wall: models.iter().map(|m| m.run_time).sum(),
            cpu: models.iter().map(|m| m.run_cpu).sum(),
            runs: models.iter().map(|m| m.runs).sum(),
        }
    }

    /// Runs the models on a micro-batch; one result per image. A failure on one image does not fail the others.
    /// The images' inputs are borrowed: the caller frees them off this thread (tens of MB an image, whose unmapping
    /// would otherwise keep the sessions waiting).
    pub fn infer(&mut self, batch: Vec<(&RgbImage, &Prepared)>) -> Vec<Result<Inferred, ModelError>> {
        let mut results: Vec<Result<Inferred, ModelError>> = batch
            .iter()
            .map(|(image, _)| Ok(Inferred { width: image.width(), height: image.height(), ..Inferred::default() }))
            .collect();
        if let Some(tagger) = self.tagger.as_mut() {
            // A graph with a fixed batch gets batches of that size from the start, not a failed run first.
            let configured = self.config.tagger.as_ref().map_or(1, |t| t.batch_size);
            let batch_size = tagger.fixed_batch().map_or(configured, |fixed| configured.min(fixed.max(1)));
            let inputs: Vec<Option<&[f32]>> = batch.iter().map(|(_, p)| p.tagger.as_deref()).collect();
            let tagged = tag_in_batches(tagger, &inputs, batch_size);
            for (result, tags) in results.iter_mut().zip(tagged) {
                match tags {
                    Ok(tags) => {
                        if let Ok(r) = result {
                            r.tags = tags;
                        }
                    }
                    Err(e) => *result = Err(e),
                }
            }
        }
        let prompt = self.config.detector.as_ref().map(|d| d.prompt.clone()).unwrap_or_default();
        if let Some(segmenting) = self.segmenting.as_mut() {
            segment_each(segmenting.as_mut(), &prompt, &batch, &mut results);
            return results;
        }
        let Some(detector) = self.detector.as_mut() else { return results };
        // Every tag is at least its `,`, so the first `max_text_len` tags already make a prompt longer than the model
        // sees: the tokens it keeps, and their masks, are the whole prompt's. Thousands of tags (RAM's 4,585 can all
        // pass) would otherwise be tokenized on the inference thread for nothing, ~15 ms an image.
        let keep = detector.max_text_len();
        // Each image's prompt; an image without one (no tags, no caption) is not detected in.
        let mut prompts: Vec<Option<String>> = batch
            .iter()
            .zip(&results)
            .map(|((_, prepared), result)| {
                let r = result.as_ref().ok()?;
                match &prompt {
                    DetectorPrompt::Source(PromptSource::Tags) => {
                        (!r.tags.is_empty()).then(|| prompt_of(&r.tags[..r.tags.len().min(keep)]))
                    }
                    DetectorPrompt::Source(PromptSource::Caption) => {
                        prepared.caption.as_deref().filter(|c| !c.trim().is_empty()).map(caption_prompt)
                    }
                    DetectorPrompt::Classes(classes) => Some(classes_prompt(classes)),
                }
            })
            .collect();
        // An image the prepare stage did not prepare for the detector is prepared here; if that fails, the image
        // gets the error (its prompt is then gone, so it is not detected in).
        let mut owned: Vec<Option<DetectorImage>> = Vec::with_capacity(batch.len());
        for (i, ((image, prepared), prompt)) in batch.iter().zip(&mut prompts).enumerate() {
            owned.push(match (&prepared.detector, &prompt) {
                (None, Some(_)) => match Detector::prepare(image, detector.fixed_size()) {
                    Ok(prepared) => Some(prepared),
                    Err(e) => {
                        *prompt = None;
                        results[i] = Err(e);
                        None
                    }
                },
                _ => None,
            });
        }
        let items: Vec<Option<(&DetectorImage, &str, u32, u32)>> = batch
            .iter()
            .zip(&prompts)
            .zip(&owned)
            .map(|(((image, prepared), prompt), own)| {
                let detector_image = prepared.detector.as_ref().or(own.as_ref())?;
                Some((detector_image, prompt.as_deref()?, image.width(), image.height()))
            })
            .collect();
        let batch_size = self.config.detector.as_ref().map_or(1, |d| d.batch_size);
        let detected = detect_in_batches(detector, &items, batch_size);
        for (i, ((image, prepared), detections)) in batch.iter().zip(detected).enumerate() {
            let Ok(current) = results[i].as_mut() else { continue };
            current.vocabulary = match &prompt {
                DetectorPrompt::Classes(classes) => Some(classes.clone()),
                _ => None,
            };
            current.phrases = Some(detector.phrases());
            let Some(detections) = detections else { continue };
            let outcome = (|| -> Result<(), ModelError> {
                let detections = detections?;
                let masks: Vec<Option<MaskOut>> = match self.segmenter.as_mut() {
                    Some(segmenter) => {
                        let boxes: Vec<BoxXyxy> = detections
                            .iter()
                            .map(|d| d.bbox.clamped(image.width() as f32, image.height() as f32))
                            .collect();
                        segmenter.infer(image, prepared.segmenter.as_ref(), &boxes)?.into_iter().map(Some).collect()
                    }
                    None => vec![None; detections.len()],
                };
                current.objects = detections.into_iter().zip(masks).collect();
                Ok(())
            })();
            if let Err(e) = outcome {
                results[i] = Err(e);
            }
        }
        results
    }
}

/// Runs a detector that segments on each image still without an error: one prompt per tag, class or caption phrase
/// ([`phrase_prompts`]); the image prepared here if the prepare stage did not.
fn segment_each(
    segmenting: &mut dyn SegmentingDetector,
    prompt: &DetectorPrompt,
    batch: &[(&RgbImage, &Prepared)],
    results: &mut [Result<Inferred, ModelError>],
) {
    for ((image, prepared), result) in batch.iter().zip(results.iter_mut()) {
        let Ok(current) = result.as_mut() else { continue };
        current.vocabulary = match prompt {
            DetectorPrompt::Classes(classes) => Some(classes.clone()),
            _ => None,
        };
        let prompts = phrase_prompts(prompt, &current.tags, prepared.caption.as_deref());
        if prompts.is_empty() {
            continue;
        }
        let outcome = (|| -> Result<Vec<(super::Detection, Option<MaskOut>)>, ModelError> {
            let owned;
            let input = match &prepared.detector {
                Some(input) => input,
                None => {
                    owned = segmenting.input().prepare(image)?;
                    &owned
                }
            };
            let found = segmenting.infer(input, &prompts, image.width(), image.height())?;
            Ok(found.into_iter().map(|(detection, mask)| (detection, Some(mask))).collect())
        })();
        match outcome {
            Ok(objects) => current.objects = objects,
            Err(e) => *result = Err(e),
        }
    }
}

/// Detects in every image that has an input, `batch_size` at a time (images of one size together where the graph
/// cannot pad them), through [`in_chunks`]: out-of-memory halves the batch, and a batch that fails otherwise is
/// rerun image by image. `None` for images without an input.
#[allow(clippy::type_complexity)]
fn detect_in_batches(
    detector: &mut Detector,
    items: &[Option<(&DetectorImage, &str, u32, u32)>],
    batch_size: usize,
) -> Vec<Option<Result<Vec<super::Detection>, ModelError>>> {
    let mut out: Vec<Option<Result<Vec<super::Detection>, ModelError>>> = (0..items.len()).map(|_| None).collect();
    let todo: Vec<(usize, (&DetectorImage, &str, u32, u32))> =
        items.iter().enumerate().filter_map(|(i, item)| item.map(|item| (i, item))).collect();
    let pads = detector.pads_images();
    let joins = |a: &(usize, (&DetectorImage, &str, u32, u32)), b: &(usize, (&DetectorImage, &str, u32, u32))| {
        pads || (a.1.0.width, a.1.0.height) == (b.1.0.width, b.1.0.height)
    };
    let found = in_chunks(&todo, batch_size, "detector", joins, |chunk| {
        let inputs: Vec<(&DetectorImage, &str, u32, u32)> = chunk.iter().map(|(_, input)| *input).collect();
        detector.infer_batch(&inputs)
    });
    for ((i, _), detections) in todo.iter().zip(found) {
        out[*i] = Some(detections);
    }
    out
}

/// Tags every image that has an input, `batch_size` at a time, through [`in_chunks`]: out-of-memory halves the
/// batch, and a batch that fails otherwise is rerun image by image.
fn tag_in_batches(
    tagger: &mut Tagger,
    inputs: &[Option<&[f32]>],
    batch_size: usize,
) -> Vec<Result<Vec<Tag>, ModelError>> {
    let todo: Vec<(usize, &[f32])> =
        inputs.iter().enumerate().filter_map(|(i, input)| input.map(|input| (i, input))).collect();
    let mut found = in_chunks(
        &todo,
        batch_size,
        "tagger",
        |_, _| true,
        |chunk| {
            let images: Vec<&[f32]> = chunk.iter().map(|(_, input)| *input).collect();
            tagger.infer(&images)
        },
    )
    .into_iter();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        out.push(match input {
            Some(_) => {
                found.next().unwrap_or_else(|| Err(ModelError::Postprocess("the tagger gave no result".into())))
            }
            None => Err(ModelError::Preprocess("no tagger input was prepared".into())),
        });
    }
    out
}

/// JSON naming every model of `config`, its file's source and checksum, and its thresholds: the `refiner` column.
/// Known before any session is loaded, so a run can hash it into its spec first.
pub fn describe(config: &ModelsConfig, files: &ModelPaths) -> String {
    let file = |key: &str| -> serde_json::Value {
        let source = config.files().get(key).map(|f| f.source().to_string()).unwrap_or_default();
        json!({ "source": source, "sha256": files.sha256.get(key).cloned().unwrap_or_default() })
    };
    let mut out = serde_json::Map::new();
    if let Some(t) = &config.tagger {
        let mut v = json!({ "family": t.family, "model": file("tagger.model"), "tags": file("tagger.tags"), "threshold": shortest(t.threshold) });
        if t.thresholds.is_some() {
            v["thresholds"] = file("tagger.thresholds");
        }
        // Written only when set, so the description (and the spec hash) of existing jobs stays as it was.
        if t.scores != super::TaggerScores::Auto {
            v["scores"] = json!(t.scores);
        }
        out.insert("tagger".into(), v);
    }
    if let Some(d) = config.detector.as_ref().filter(|d| d.family == super::DetectorFamily::Sam3) {
        out.insert("detector".into(), super::sam3::describe(config, files, d));
    } else if let Some(d) = &config.detector {
        let mut v = json!({
            "family": d.family, "export": d.export, "model": file("detector.model"), "tokenizer": file("detector.tokenizer"),
            "box_threshold": shortest(d.box_threshold), "text_threshold": shortest(d.text_threshold), "iou_threshold": shortest(d.iou_threshold),
        });
        // Only a cap other than the default is written, so that the description (and the spec hash) of jobs
        // begun before the cap existed stays as it was.
        if d.max_detections != super::DEFAULT_MAX_DETECTIONS {
            v["max_detections"] = json!(d.max_detections);
        }
        if d.prompt != DetectorPrompt::default() {
            v["prompt"] = json!(d.prompt);
        }
        out.insert("detector".into(), v);
    }
    if let Some(s) = &config.segmenter {
        out.insert("segmenter".into(), super::segmenter::describe(s, files, file));
    }
    serde_json::Value::Object(out).to_string()
}

/// A setting for the `refiner` column: an f32 as its shortest decimal, not its f64 expansion (0.6, not
/// 0.6000000238418579).
pub(super) fn shortest(v: f32) -> serde_json::Value {
    v.to_string().parse::<f64>().map_or(json!(null), |f| json!(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_map_back_to_tags() {
        let tags: Vec<String> = ["dog", "traffic light", "red"].iter().map(|t| t.to_string()).collect();
        assert_eq!(label_of("Dog", &tags), Some("dog"));
        assert_eq!(label_of("traffic", &tags), Some("traffic light"));
        assert_eq!(label_of("dogs", &tags), Some("dog"));
        assert_eq!(label_of("light", &tags), Some("traffic light"));
        assert_eq!(label_of("cat", &tags), None);
        assert_eq!(label_of("", &tags), None);
    }
}

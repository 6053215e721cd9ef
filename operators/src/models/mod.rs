//! The visual refiner: a RAM-style tagger, a Grounding DINO detector prompted with its tags, and a segmenter for each
//! box, on ONNX Runtime (see each family's module for the public export it follows) — or, in place of the detector and
//! segmenter, a detector that segments ([`segmenting`]: SAM 3, in [`sam3`]).
//!
//! The work is split so the engine can overlap it: [`prepare`] turns a decoded image into every model input that
//! depends on the image alone (resizing and normalization; pure CPU, run on the decode threads in parallel);
//! [`Refiner::infer`] runs the sessions on a micro-batch (one thread owns them) and COCO RLE-encodes each mask as
//! the segmenter returns it, so no full-resolution mask outlives its decoder run; [`finish`] maps phrases to tags
//! and normalizes the boxes (CPU again, in parallel).
//!
//! What lives where: `refiner` drives the roles (it names no segmenter family) and `config` reads the models file.
//! The segmenter role is `segmenter`: its trait, [`BoxSegmenter`], the masks code its families share, and one
//! module per family beneath it (`sam`, `hf_sam`, `sam2`, `salient_crop`), each registered in one line of its
//! family list. The detector that segments is [`segmenting`] (the trait), its family [`sam3`]. The tagger and the
//! detector are still one module each (`tagger`, `detector`), their families matched there and in `config`.
//! [`runtime`] (sessions, graph contracts), [`preprocess`], `planes` and `batching` serve every role.

mod batching;
mod config;
mod detector;
mod planes;
pub mod preprocess;
mod refiner;
pub mod runtime;
pub mod sam3;
mod segmenter;
pub mod segmenting;
mod tagger;

pub use config::{
    DEFAULT_MAX_DETECTIONS, DetectorConfig, DetectorExport, DetectorFamily, DetectorPrompt, FileRef, ModelsConfig,
    PromptSource, SegmenterConfig, TaggerConfig, TaggerFamily, TaggerScores,
};
pub use detector::{Detection, Detector, DetectorImage, TextInputs, best_boxes, sub_sentence_masks};
pub use refiner::{
    Inferred, Layout, ModelPaths, Prepared, Refined, RefinedObject, Refiner, SessionTime, describe, finish,
    label_of, prepare,
};
pub use runtime::{Contract, Device, Element, OnnxModel, Port, thread_cpu_time};
pub use segmenter::{
    BoxSegmenter, Frame, Mask, MaskOut, Segmenter, SegmenterFamily, SegmenterImage, SegmenterInput, crop_region,
    salient_input, salient_output,
};
pub use tagger::{Tag, Tagger, caption_prompt, classes_prompt, output_is_logits, prompt_of};

/// Why a model could not be loaded or run. Per-image failures become error rows; load failures stop the job.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The models file is invalid (the message names the key).
    #[error("models file: {0}")]
    Config(String),
    /// The ONNX Runtime library cannot be found or started.
    #[error("{0}")]
    Runtime(String),
    /// The device cannot be used (an execution provider did not register).
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
    /// A model file cannot be loaded into a session.
    #[error("cannot load {model} from {path}: {message}")]
    Load { model: String, path: String, message: String },
    /// A model's inputs or outputs are not those of its family's export.
    #[error("{model} does not follow its contract: {message}")]
    Contract { model: String, message: String },
    /// A session run failed (out of memory included; see `runtime::is_out_of_memory`).
    #[error("{model} failed: {message}")]
    Run { model: String, message: String },
    /// An image or a prompt could not be turned into model inputs.
    #[error("preprocessing: {0}")]
    Preprocess(String),
    /// Model outputs could not be turned into tags, boxes or masks.
    #[error("postprocessing: {0}")]
    Postprocess(String),
}

impl ModelError {
    /// Short cause for the `errors` table.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Config(_) => "model_config",
            ModelError::Runtime(_) | ModelError::Device { .. } | ModelError::Load { .. } => "model_load",
            ModelError::Contract { .. } => "model_contract",
            ModelError::Run { .. } => "model_run",
            ModelError::Preprocess(_) => "model_preprocess",
            ModelError::Postprocess(_) => "model_postprocess",
        }
    }
}

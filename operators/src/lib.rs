//! What runs inside lyrics-prep stages, as plain types testable alone: image decoding and validation, resizing and
//! re-encoding ([`image`]); box and mask geometry, NMS and COCO RLE ([`geometry`]); the visual refiner's tagger,
//! detector and segmenter on ONNX Runtime ([`models`]); the grounded text formats, caption grounding and
//! instruction data built from refined objects ([`text`]). Operators know nothing of the engine that schedules them
//! (`lyrics-pipeline`): each takes an item and returns an item or a typed error that says which input was bad and
//! why. The gallery's annotated thumbnails are drawn by [`draw`].
//!
//! A new model family goes in a module of its own under `models/`, implementing the public export's exact input
//! and output contract and its reference pre- and post-processing; `models::config` names the family for models
//! files, and `models::Refiner` loads and drives it. A new text product goes under `text/`, returning row types of
//! `lyrics-schemas`.

pub mod draw;
pub mod geometry;
pub mod image;
pub mod models;
pub mod text;

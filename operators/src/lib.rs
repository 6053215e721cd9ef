//! What runs inside lyrics-prep stages, as plain types testable alone: image decoding and validation, resizing and
//! re-encoding ([`image`]); box and mask geometry, NMS and COCO RLE ([`geometry`]); the visual refiner's models on
//! ONNX Runtime ([`models`]); grounded text formats, caption grounding and instruction data ([`text`]). Operators
//! know nothing of the engine that schedules them (`lyrics-pipeline`): each takes an item and returns an item or a
//! typed error that says which input was bad and why.
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

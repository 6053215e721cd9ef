//! What runs inside lyrics-prep stages, as plain types testable alone: image decoding and validation, resizing and
//! re-encoding ([`image`]); box and mask geometry, NMS and COCO RLE ([`geometry`]); the visual refiner's tagger,
//! detector and segmenter on ONNX Runtime ([`models`]); the grounded text formats, caption grounding and
//! instruction data built from refined objects ([`text`]). Operators know nothing of the engine that schedules them
//! (`lyrics-pipeline`): each takes an item and returns an item or a typed error that says which input was bad and
//! why.

pub mod geometry;
pub mod image;
pub mod models;
pub mod text;

//! What runs inside lyrics-prep stages, as plain types testable alone: image decoding and validation, resizing and
//! re-encoding; box and mask geometry (NMS, COCO RLE); the visual refiner's models on ONNX Runtime. Operators know nothing of the engine that schedules them (`lyrics-pipeline`): each takes an item
//! and returns an item or a typed error that says which input was bad and why.

pub mod geometry;
pub mod image;
pub mod models;
pub mod text;

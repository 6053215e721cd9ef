//! Boxes and masks: coordinate conversions, IoU and non-maximum suppression, and COCO run-length encoding.

mod boxes;
mod rle;

pub use boxes::{BoxXyxy, cxcywh_to_xyxy, iou, nms, nms_at_most};
pub use rle::{Rle, RleError};

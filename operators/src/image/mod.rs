//! Images: decode and validate untrusted bytes, apply EXIF orientation, resize and re-encode.
//!
//! [`ImageOperator`] is the one entry point a stage calls; the submodules own one concern each.

mod decode;
mod encode;
mod error;
mod jpeg;
mod resize;

pub use decode::{DecodeLimits, DecodedImage, ImageFormatName, ImageOperator};
pub use encode::{EncodeFormat, EncodeSpec};
pub use error::ImageError;
pub use resize::{BorderColor, ResizeFilter, ResizeMode, ResizeSpec, resized_size};

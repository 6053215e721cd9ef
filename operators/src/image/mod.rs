//! Images: decode and validate untrusted bytes, apply EXIF orientation, resize and re-encode.
//!
//! [`ImageOperator`] is the one entry point a stage calls; the submodules own one concern each.

mod decode;
mod encode;
mod error;
mod jpeg;
#[cfg(feature = "turbojpeg")]
mod plane;
mod resize;
#[cfg(feature = "turbojpeg")]
mod yuv;

pub use decode::{DecodeLimits, DecodedImage, ImageFormatName, ImageOperator};
pub use encode::{EncodeFormat, EncodeSpec};
pub use error::ImageError;
pub use resize::{BorderColor, ResizeFilter, ResizeMode, ResizeSpec, resized_size};

/// The codec backends of this build and the SIMD the resizer found on this CPU, one per line, as
/// `lyrics-prep --version` prints them.
pub fn backends() -> String {
    let jpeg = if cfg!(feature = "turbojpeg") {
        "libjpeg-turbo 3 (TurboJPEG API; YCbCr-plane resize, DCT-scaled decode)"
    } else {
        "zune-jpeg decode, jpeg-encoder encode (pure Rust; build with the default `turbojpeg` feature for libjpeg-turbo)"
    };
    let simd = fast_image_resize::CpuExtensions::default();
    format!("jpeg: {jpeg}\npng, webp, gif, bmp: the image crate (pure Rust)\nresize: fast_image_resize, {simd:?}")
}

//! Encoding stored images: JPEG with 4:2:0 chroma (as Pillow writes by default) through libjpeg-turbo (the default
//! `turbojpeg` feature) or, without it, the SIMD `jpeg-encoder` (about three times slower); PNG and lossless WebP
//! with the `image` crate's encoders.

use image::{ExtendedColorType, ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

use super::{ImageError, ImageFormatName};

/// Format of re-encoded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodeFormat {
    #[default]
    #[serde(alias = "jpeg")]
    Jpg,
    Png,
    /// Lossless WebP (`quality` does not apply).
    Webp,
}

impl EncodeFormat {
    pub fn format_name(self) -> ImageFormatName {
        match self {
            EncodeFormat::Jpg => ImageFormatName::Jpeg,
            EncodeFormat::Png => ImageFormatName::Png,
            EncodeFormat::Webp => ImageFormatName::Webp,
        }
    }
}

/// The `[encode]` section of a job spec: how resized images are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeSpec {
    pub format: EncodeFormat,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
}

impl Default for EncodeSpec {
    fn default() -> Self {
        EncodeSpec { format: EncodeFormat::Jpg, quality: 95 }
    }
}

/// Encodes `image` as `format` (`quality` applies to JPEG).
pub(crate) fn encode(image: &RgbImage, format: EncodeFormat, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity((w as usize * h as usize) / 4 + 1024);
    let name = format.format_name().as_str();
    let fail = |message: String| ImageError::Encode { format: name, message };
    match format {
        EncodeFormat::Jpg => {
            if w > 65_535 || h > 65_535 {
                return Err(fail(format!("{w}x{h} exceeds JPEG's 65535 pixel side")));
            }
            out = encode_jpeg(image, quality.clamp(1, 100)).map_err(fail)?;
        }
        EncodeFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)
                .map_err(|e| fail(e.to_string()))?;
        }
        EncodeFormat::Webp => {
            image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(out)
}

#[cfg(not(feature = "turbojpeg"))]
fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity((w as usize * h as usize) / 4 + 1024);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder.encode(image.as_raw(), w as u16, h as u16, jpeg_encoder::ColorType::Rgb).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(feature = "turbojpeg")]
fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    with_compressor(quality, |compressor| {
        compressor.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
        compressor.compress_to_vec(rgb_view(image))
    })
}

/// `image` as libjpeg-turbo's packed RGB input.
#[cfg(feature = "turbojpeg")]
pub(crate) fn rgb_view(image: &RgbImage) -> turbojpeg::Image<&[u8]> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    turbojpeg::Image {
        pixels: image.as_raw().as_slice(),
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    }
}

/// Runs `f` with this thread's libjpeg-turbo compressor (made on first use), set to `quality`.
#[cfg(feature = "turbojpeg")]
pub(crate) fn with_compressor<T>(
    quality: u8,
    f: impl FnOnce(&mut turbojpeg::Compressor) -> turbojpeg::Result<T>,
) -> Result<T, String> {
    use std::cell::RefCell;
    thread_local! {
        static COMPRESSOR: RefCell<Option<turbojpeg::Compressor>> = const { RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(turbojpeg::Compressor::new().map_err(|e| e.to_string())?);
        }
        let compressor = slot.as_mut().ok_or("no compressor")?;
        compressor.set_quality(i32::from(quality.clamp(1, 100))).map_err(|e| e.to_string())?;
        f(compressor).map_err(|e| e.to_string())
    })
}

//! Encoding stored images: JPEG with the SIMD `jpeg-encoder` (4:2:0 chroma, as Pillow writes by default), PNG and
//! lossless WebP with the `image` crate's encoders.

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
            let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
                return Err(fail(format!("{w}x{h} exceeds JPEG's 65535 pixel side")));
            };
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            encoder
                .encode(image.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| fail(e.to_string()))?;
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

//! Decoding and validating untrusted image bytes.
//!
//! Checks run cheapest first, so hostile input costs little: byte size, magic bytes, the header's pixel count (a
//! 30000×30000 PNG is refused before a pixel is inflated), then the full decode, then stream completeness (see
//! [`super::jpeg`]). EXIF orientation is applied so that width, height and every later coordinate refer to the image
//! as displayed; such an image is stored upright and re-encoded without EXIF, since trainers (LLaVA's loader among
//! them) open images without applying EXIF.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage, metadata::Orientation};

use super::ImageError;
use super::encode::{EncodeFormat, EncodeSpec, encode};
use super::jpeg;
use super::resize::{ResizeSpec, check_resize, dct_scale, resize, resize_scaled};

/// Limits that protect the process from hostile input (the `[decode]` section of a job spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeLimits {
    /// Largest accepted width × height. Default: Pillow's `MAX_IMAGE_PIXELS` (89,478,485).
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes. Default: 64 MiB.
    pub max_bytes: u64,
    /// With libjpeg-turbo, decode a JPEG that is resized well down at the smallest DCT scale M/8 that keeps twice
    /// the output's size, then resize the rest of the way (4000×3000 → 1500×1125 → 512×384). BENCHMARKS.md
    /// gives its PSNR against a full decode. Default: on. (Left out of the serialized spec when on, so the spec
    /// hash of every job that does not set it is the one it had before the setting existed.)
    #[serde(skip_serializing_if = "is_true")]
    pub dct_scaling: bool,
    /// With libjpeg-turbo, resize a JPEG stored as JPEG by at most 4× in its YCbCr planes: no colour conversion,
    /// no chroma resampling, half the samples to resize (not for EXIF-rotated images, `border` padding or images
    /// whose pixels the refiner needs). BENCHMARKS.md gives its PSNR against the RGB path. Default: on (and left
    /// out of the serialized spec when on, as `dct_scaling`).
    #[serde(skip_serializing_if = "is_true")]
    pub ycbcr: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: 89_478_485, max_bytes: 64 << 20, dct_scaling: true, ycbcr: true }
    }
}

/// The formats the decoder accepts, by their names in the `format` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormatName {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
}

impl ImageFormatName {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormatName::Jpeg => "jpeg",
            ImageFormatName::Png => "png",
            ImageFormatName::Webp => "webp",
            ImageFormatName::Gif => "gif",
            ImageFormatName::Bmp => "bmp",
        }
    }

    fn of(format: ImageFormat) -> Result<Self, ImageError> {
        Ok(match format {
            ImageFormat::Jpeg => ImageFormatName::Jpeg,
            ImageFormat::Png => ImageFormatName::Png,
            ImageFormat::WebP => ImageFormatName::Webp,
            ImageFormat::Gif => ImageFormatName::Gif,
            ImageFormat::Bmp => ImageFormatName::Bmp,
            other => return Err(ImageError::Unsupported(format!("{other:?}").to_lowercase())),
        })
    }
}

/// A validated image, as it will be stored.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The stored bytes: the input as it was, or re-encoded when it was rotated upright or resized.
    pub bytes: Vec<u8>,
    pub format: ImageFormatName,
    /// Size of the stored image, as displayed.
    pub width: u32,
    pub height: u32,
    /// Hex SHA-256 of the input bytes.
    pub sha256: String,
    /// Whether `bytes` differ from the input.
    pub reencoded: bool,
    /// The stored image's RGB pixels, when the operator was asked to keep them for later stages.
    pub pixels: Option<RgbImage>,
}

/// Decodes, validates, orients, resizes and re-encodes one image. Cheap to share across threads.
#[derive(Debug, Clone, Default)]
pub struct ImageOperator {
    pub limits: DecodeLimits,
    pub resize: ResizeSpec,
    pub encode: EncodeSpec,
    /// Keep the decoded pixels in [`DecodedImage::pixels`] (for model stages), so nothing is decoded twice.
    pub keep_pixels: bool,
}

impl ImageOperator {
    pub fn process(&self, data: Vec<u8>) -> Result<DecodedImage, ImageError> {
        let size = data.len() as u64;
        if size == 0 {
            return Err(ImageError::Empty);
        }
        if size > self.limits.max_bytes {
            return Err(ImageError::TooManyBytes { size, limit: self.limits.max_bytes });
        }
        let format = image::guess_format(&data).map_err(|_| ImageError::NotAnImage)?;
        let name = ImageFormatName::of(format)?;
        if name == ImageFormatName::Jpeg
            && let Some(why) = jpeg::truncation(&data)
        {
            return Err(ImageError::Truncated(why.to_string()));
        }
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data));

        let mut reader = ImageReader::with_format(Cursor::new(data.as_slice()), format);
        let mut limits = Limits::default();
        // Header checks below refuse large images with a precise message; this bound only backs them up.
        limits.max_alloc = Some(self.limits.max_pixels.saturating_mul(8).max(64 << 20));
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(ImageError::from_image)?;
        let (width, height) = decoder.dimensions();
        let pixels = u64::from(width) * u64::from(height);
        if width == 0 || height == 0 {
            return Err(ImageError::Degenerate { width, height });
        }
        if pixels > self.limits.max_pixels {
            return Err(ImageError::Bomb { width, height, pixels, limit: self.limits.max_pixels });
        }
        // The output of every mode has the same pixel count whichever way EXIF turns the image.
        check_resize(width, height, &self.resize, self.limits.max_pixels)?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let turned = matches!(
            orientation,
            Orientation::Rotate90
                | Orientation::Rotate270
                | Orientation::Rotate90FlipH
                | Orientation::Rotate270FlipH
        );
        let display = if turned { (height, width) } else { (width, height) };
        let jpeg = name == ImageFormatName::Jpeg;
        let rotated = orientation != Orientation::NoTransforms;
        let in_planes = jpeg && !rotated && !self.keep_pixels && self.limits.ycbcr;
        if in_planes
            && self.encode.format == EncodeFormat::Jpg
            && let Some(Ok(out)) = ycbcr_resize(&data, (width, height), &self.resize, self.encode.quality)
        {
            let (bytes, width, height, format) = (out.bytes, out.width, out.height, ImageFormatName::Jpeg);
            return Ok(DecodedImage { bytes, format, width, height, sha256, reencoded: true, pixels: None });
        }
        let wanted = if jpeg && self.limits.dct_scaling && JPEG_DCT_SCALING {
            dct_scale(display.0, display.1, &self.resize).unwrap_or(8)
        } else {
            8
        };
        let fast = if jpeg { fast_jpeg(&data, width, height, wanted) } else { None };
        // The DCT scale the pixels were decoded at, in eighths.
        let (mut decoded, scale) = match fast {
            Some(rgb) => {
                drop(decoder);
                (DynamicImage::ImageRgb8(rgb), wanted)
            }
            None => (DynamicImage::from_decoder(decoder).map_err(ImageError::from_image)?, 8),
        };
        if rotated {
            decoded.apply_orientation(orientation);
        }
        if scale < 8 {
            let resized = resize_scaled(&to_rgb(decoded), display, scale, &self.resize, self.limits.max_pixels)?;
            return self.reencoded(resized, sha256);
        }
        let (width, height) = (decoded.width(), decoded.height());
        let needs_pixels = rotated || self.keep_pixels || self.resize.mode != super::ResizeMode::No;
        if !needs_pixels {
            return Ok(DecodedImage {
                bytes: data,
                format: name,
                width,
                height,
                sha256,
                reencoded: false,
                pixels: None,
            });
        }
        let rgb = to_rgb(decoded);
        if let Some(resized) = resize(&rgb, &self.resize, self.limits.max_pixels)? {
            return self.reencoded(resized, sha256);
        }
        let (bytes, format, reencoded) = if rotated {
            // Keep the source's family: lossy stays JPEG at the configured quality, the rest goes lossless.
            let target = if name == ImageFormatName::Jpeg { EncodeFormat::Jpg } else { EncodeFormat::Png };
            (encode(&rgb, target, self.encode.quality)?, target.format_name(), true)
        } else {
            (data, name, false)
        };
        let pixels = self.keep_pixels.then_some(rgb);
        Ok(DecodedImage { bytes, format, width, height, sha256, reencoded, pixels })
    }

    /// The stored image of a resized input: encoded as configured.
    fn reencoded(&self, resized: RgbImage, sha256: String) -> Result<DecodedImage, ImageError> {
        let bytes = encode(&resized, self.encode.format, self.encode.quality)?;
        let (width, height) = resized.dimensions();
        let pixels = self.keep_pixels.then_some(resized);
        let format = self.encode.format.format_name();
        Ok(DecodedImage { bytes, format, width, height, sha256, reencoded: true, pixels })
    }
}

#[cfg(feature = "turbojpeg")]
use super::yuv::resize_jpeg as ycbcr_resize;

/// Without libjpeg-turbo there is no YCbCr path: the RGB path runs.
#[cfg(not(feature = "turbojpeg"))]
fn ycbcr_resize(
    _data: &[u8],
    _full: (u32, u32),
    _spec: &ResizeSpec,
    _quality: u8,
) -> Option<Result<Resized, ImageError>> {
    None
}

/// What the YCbCr path gives: the resized JPEG and its size.
pub(crate) struct Resized {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Whether this build's JPEG decoder can decode at a DCT scale (libjpeg-turbo can; zune-jpeg cannot).
const JPEG_DCT_SCALING: bool = cfg!(feature = "turbojpeg");

/// JPEG pixels through libjpeg-turbo, decoded at the DCT scale `m`/8 (8: full size; the output is then
/// ceil(side × m/8) on each axis, as libjpeg scales), or `None` to take the `image` crate's path (which also says
/// precisely why a file cannot be decoded).
#[cfg(feature = "turbojpeg")]
fn fast_jpeg(data: &[u8], width: u32, height: u32, m: u32) -> Option<RgbImage> {
    with_decompressor(|decompressor| {
        let header = decompressor.read_header(data).ok()?;
        (header.width == width as usize && header.height == height as usize).then_some(())?;
        let factor = turbojpeg::ScalingFactor::new(m as usize, 8);
        decompressor.set_scaling_factor(factor).ok()?;
        let scaled = header.scaled(factor);
        let (w, h) = (scaled.width, scaled.height);
        let mut pixels = vec![0u8; w * h * 3];
        let image = turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        decompressor.decompress(data, image).ok()?;
        RgbImage::from_raw(u32::try_from(w).ok()?, u32::try_from(h).ok()?, pixels)
    })
}

/// Runs `f` with this thread's libjpeg-turbo decompressor (made on first use; `None` when it cannot be).
#[cfg(feature = "turbojpeg")]
pub(crate) fn with_decompressor<T>(f: impl FnOnce(&mut turbojpeg::Decompressor) -> Option<T>) -> Option<T> {
    use std::cell::RefCell;
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = turbojpeg::Decompressor::new().ok();
        }
        f(slot.as_mut()?)
    })
}

#[cfg(not(feature = "turbojpeg"))]
fn fast_jpeg(_data: &[u8], _width: u32, _height: u32, _m: u32) -> Option<RgbImage> {
    None
}

/// RGB pixels of any decoded image; transparency is composited over white, as a viewer shows it.
fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u16::from(src.0[3]);
        for c in 0..3 {
            dst.0[c] = ((u16::from(src.0[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ResizeMode, ResizeSpec};
    use image::{ImageEncoder, Rgb};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        encode(&img, EncodeFormat::Jpg, 90).unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, Rgb([1, 2, 3]));
        encode(&img, EncodeFormat::Png, 0).unwrap()
    }

    #[test]
    fn good_images_pass_unchanged() {
        let op = ImageOperator::default();
        let data = jpeg(64, 48);
        let out = op.process(data.clone()).unwrap();
        assert_eq!((out.width, out.height, out.format), (64, 48, ImageFormatName::Jpeg));
        assert_eq!(out.bytes, data);
        assert!(!out.reencoded);
        assert_eq!(out.sha256.len(), 64);
    }

    #[test]
    fn hostile_inputs_are_named() {
        let op = ImageOperator::default();
        assert_eq!(op.process(vec![]).unwrap_err().kind(), "empty");
        assert_eq!(op.process(b"just some text".to_vec()).unwrap_err().kind(), "not_an_image");
        let data = jpeg(64, 48);
        let cut = data[..data.len() / 2].to_vec();
        assert_eq!(op.process(cut).unwrap_err().kind(), "truncated");
        let small = ImageOperator {
            limits: DecodeLimits { max_pixels: 100, max_bytes: 1 << 20, ..DecodeLimits::default() },
            ..op.clone()
        };
        let err = small.process(png(11, 10)).unwrap_err();
        assert_eq!(err.kind(), "decompression_bomb");
        assert!(err.to_string().contains("11x10"), "{err}");
        let tiny = ImageOperator {
            limits: DecodeLimits { max_pixels: 100, max_bytes: 10, ..DecodeLimits::default() },
            ..op
        };
        assert_eq!(tiny.process(png(2, 2)).unwrap_err().kind(), "too_large");
    }

    #[test]
    fn resize_reencodes_to_the_spec() {
        let op = ImageOperator {
            resize: ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 32, ..ResizeSpec::default() },
            encode: EncodeSpec { format: EncodeFormat::Png, quality: 90 },
            keep_pixels: true,
            ..ImageOperator::default()
        };
        let out = op.process(jpeg(64, 48)).unwrap();
        assert_eq!((out.width, out.height, out.format), (32, 24, ImageFormatName::Png));
        assert!(out.reencoded);
        assert_eq!(out.pixels.unwrap().dimensions(), (32, 24));
        let again = ImageOperator::default().process(out.bytes).unwrap();
        assert_eq!((again.width, again.height), (32, 24));
    }

    #[test]
    fn a_resize_above_max_pixels_is_an_error_of_the_image() {
        let op = ImageOperator {
            resize: ResizeSpec { mode: ResizeMode::KeepRatioSmallest, image_size: 256, ..ResizeSpec::default() },
            ..ImageOperator::default()
        };
        let err = op.process(png(1, 50_000)).unwrap_err();
        assert_eq!(err.kind(), "resize_too_large");
        assert!(err.to_string().contains("256x12800000"), "{err}");
        // The same image in a mode whose output fits is accepted.
        let longest = ImageOperator {
            resize: ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 256, ..ResizeSpec::default() },
            ..ImageOperator::default()
        };
        assert_eq!((longest.process(png(1, 50_000)).unwrap().height), 256);
    }

    /// `jpeg` with an EXIF APP1 segment holding only an orientation tag, inserted after SOI.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied_and_stored_upright() {
        // Left half red, right half blue; orientation 6 displays it rotated 90° clockwise: red on top.
        let img = RgbImage::from_fn(64, 48, |x, _| if x < 32 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) });
        let data = with_orientation(&encode(&img, EncodeFormat::Jpg, 95).unwrap(), 6);
        let op = ImageOperator { keep_pixels: true, ..ImageOperator::default() };
        let out = op.process(data).unwrap();
        assert_eq!((out.width, out.height), (48, 64));
        assert!(out.reencoded);
        let pixels = out.pixels.unwrap();
        assert!(pixels.get_pixel(24, 8).0[0] > 150, "top is red");
        assert!(pixels.get_pixel(24, 56).0[2] > 150, "bottom is blue");
        let again = op.process(out.bytes).unwrap();
        assert_eq!((again.width, again.height), (48, 64));
        assert!(!again.reencoded, "stored image carries no orientation");
    }

    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        let n = a.as_raw().len() as f64;
        let mse =
            a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>()
                / n;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }

    #[test]
    fn a_dct_scaled_decode_gives_the_full_decodes_size_framing_and_look() {
        // A 1024x768 photo-like picture to max side 256: decoded at 3/8 (384x288), then resized.
        let img = RgbImage::from_fn(1024, 768, |x, y| {
            let v = |f: f64, p: f64| {
                (128.0 + 100.0 * ((f64::from(x) * f + f64::from(y) * 0.7 * f) / 90.0 + p).sin()) as u8
            };
            Rgb([v(1.0, 0.0), v(1.3, 1.0), v(0.8, 2.0)])
        });
        let upright = encode(&img, EncodeFormat::Jpg, 92).unwrap();
        let resize = ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 256, ..ResizeSpec::default() };
        let fast = ImageOperator { resize, keep_pixels: true, ..ImageOperator::default() };
        let full = ImageOperator {
            limits: DecodeLimits { dct_scaling: false, ..DecodeLimits::default() },
            ..fast.clone()
        };
        for (data, size) in [(upright.clone(), (256, 192)), (with_orientation(&upright, 6), (192, 256))] {
            let a = fast.process(data.clone()).unwrap();
            let b = full.process(data).unwrap();
            assert_eq!((a.width, a.height), size);
            assert_eq!((b.width, b.height), size);
            let (pa, pb) = (a.pixels.unwrap(), b.pixels.unwrap());
            let quality = psnr(&pa, &pb);
            assert!(quality >= 40.0, "PSNR {quality:.1} dB against the full decode");
            if JPEG_DCT_SCALING {
                assert_ne!(pa, pb, "the scaled decode was used");
            } else {
                assert_eq!(pa, pb, "without libjpeg-turbo both take the full decode");
            }
        }
    }

    #[test]
    fn transparency_is_composited_over_white() {
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([0, 0, 0, 0]));
        let mut data = Vec::new();
        image::codecs::png::PngEncoder::new(&mut data)
            .write_image(rgba.as_raw(), 2, 2, image::ExtendedColorType::Rgba8)
            .unwrap();
        let op = ImageOperator { keep_pixels: true, ..ImageOperator::default() };
        let out = op.process(data).unwrap();
        assert_eq!(out.pixels.unwrap().get_pixel(0, 0), &Rgb([255, 255, 255]));
    }
}

//! Resizing as img2dataset users know it: `keep_ratio` (longest side to `image_size`), `keep_ratio_smallest`,
//! `center_crop` and `border`, on the SIMD convolution resizer of `fast_image_resize`.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::ImageError;

/// How the stored image is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Store the image at its size.
    #[default]
    No,
    /// Keep the aspect ratio; the longest side becomes `image_size` (img2dataset's `keep_ratio_largest`).
    #[serde(alias = "keep_ratio_largest")]
    KeepRatio,
    /// Keep the aspect ratio; the smallest side becomes `image_size` (img2dataset's `keep_ratio`).
    KeepRatioSmallest,
    /// Smallest side to `image_size`, then the centred `image_size`² square.
    CenterCrop,
    /// Longest side to `image_size`, then padded to an `image_size`² square with `border_color`.
    Border,
}

/// The resampling filter of the convolution resizer. Downscaling convolves with the filter widened to the scale,
/// so every filter antialiases (like OpenCV's `INTER_AREA` for `bilinear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    Box,
    #[default]
    Bilinear,
    Hamming,
    CatmullRom,
    Lanczos3,
}

/// RGB colour of the `border` padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorderColor(pub [u8; 3]);

impl Default for BorderColor {
    /// White, as img2dataset pads.
    fn default() -> Self {
        BorderColor([255, 255, 255])
    }
}

/// The `[resize]` section of a job spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResizeSpec {
    pub mode: ResizeMode,
    pub image_size: u32,
    /// Leave images whose relevant side is already at most `image_size` as they are.
    pub resize_only_if_bigger: bool,
    pub filter: ResizeFilter,
    pub border_color: BorderColor,
}

impl Default for ResizeSpec {
    fn default() -> Self {
        ResizeSpec {
            mode: ResizeMode::No,
            image_size: 256,
            resize_only_if_bigger: false,
            filter: ResizeFilter::default(),
            border_color: BorderColor::default(),
        }
    }
}

/// Where the pixels of a source image go: the source crop, the size it is resized to, and the canvas it is
/// pasted on (centred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    crop: (u32, u32, u32, u32),
    scaled: (u32, u32),
    canvas: (u32, u32),
}

fn scale_to(w: u32, h: u32, side_of: u32, target: u32) -> (u32, u32) {
    let scale = f64::from(target) / f64::from(side_of);
    let dim = |d: u32| ((f64::from(d) * scale).round() as u32).max(1);
    (dim(w), dim(h))
}

fn geometry(w: u32, h: u32, spec: &ResizeSpec) -> Option<Geometry> {
    let s = spec.image_size.max(1);
    let full = (0, 0, w, h);
    let (longest, smallest) = (w.max(h), w.min(h));
    let keep = |side: u32| spec.resize_only_if_bigger && side <= s;
    match spec.mode {
        ResizeMode::No => None,
        ResizeMode::KeepRatio if keep(longest) => None,
        ResizeMode::KeepRatioSmallest if keep(smallest) => None,
        ResizeMode::KeepRatio => {
            let scaled = scale_to(w, h, longest, s);
            Some(Geometry { crop: full, scaled, canvas: scaled })
        }
        ResizeMode::KeepRatioSmallest => {
            let scaled = scale_to(w, h, smallest, s);
            Some(Geometry { crop: full, scaled, canvas: scaled })
        }
        ResizeMode::CenterCrop => {
            let crop = ((w - smallest) / 2, (h - smallest) / 2, smallest, smallest);
            let side = if keep(smallest) { smallest } else { s };
            Some(Geometry { crop, scaled: (side, side), canvas: (side, side) })
        }
        ResizeMode::Border => {
            let scaled = if keep(longest) { (w, h) } else { scale_to(w, h, longest, s) };
            Some(Geometry { crop: full, scaled, canvas: (s.max(scaled.0), s.max(scaled.1)) })
        }
    }
}

/// The size a `w`×`h` image is stored at under `spec`.
pub fn resized_size(w: u32, h: u32, spec: &ResizeSpec) -> (u32, u32) {
    geometry(w, h, spec).map_or((w, h), |g| g.canvas)
}

/// Refuses a resize whose output would exceed `max_pixels` (`decode.max_pixels`): `keep_ratio_smallest` of a thin
/// strip (1×50,000 at 256 asks for 256×12,800,000), or any upscale to a large `image_size`, would otherwise
/// allocate gigabytes for one image. Checked from the header's size, before a pixel is decoded.
pub(crate) fn check_resize(w: u32, h: u32, spec: &ResizeSpec, max_pixels: u64) -> Result<(), ImageError> {
    let Some(g) = geometry(w, h, spec) else { return Ok(()) };
    let (out_width, out_height) = g.canvas;
    let pixels = u64::from(out_width) * u64::from(out_height);
    if pixels > max_pixels {
        return Err(ImageError::ResizeTooLarge {
            width: w,
            height: h,
            out_width,
            out_height,
            pixels,
            limit: max_pixels,
        });
    }
    Ok(())
}

/// Resizes `image` under `spec`, or returns `None` when the spec leaves it as it is. An output above `max_pixels`
/// is refused (see [`check_resize`]).
pub(crate) fn resize(image: &RgbImage, spec: &ResizeSpec, max_pixels: u64) -> Result<Option<RgbImage>, ImageError> {
    let (w, h) = image.dimensions();
    check_resize(w, h, spec, max_pixels)?;
    let Some(g) = geometry(w, h, spec) else { return Ok(None) };
    if g.crop == (0, 0, w, h) && g.scaled == (w, h) && g.canvas == (w, h) {
        return Ok(None);
    }
    let corrupt = |e: &dyn std::fmt::Display| ImageError::Corrupt(format!("resize failed: {e}"));
    let src = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3).map_err(|e| corrupt(&e))?;
    let mut dst = Image::new(g.scaled.0, g.scaled.1, PixelType::U8x3);
    let filter = match spec.filter {
        ResizeFilter::Box => FilterType::Box,
        ResizeFilter::Bilinear => FilterType::Bilinear,
        ResizeFilter::Hamming => FilterType::Hamming,
        ResizeFilter::CatmullRom => FilterType::CatmullRom,
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
    };
    let (cx, cy, cw, ch) = g.crop;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)).crop(
        f64::from(cx),
        f64::from(cy),
        f64::from(cw),
        f64::from(ch),
    );
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| corrupt(&e))?;
    let scaled = RgbImage::from_raw(g.scaled.0, g.scaled.1, dst.into_vec())
        .ok_or_else(|| ImageError::Corrupt("resize produced a short buffer".into()))?;
    if g.canvas == g.scaled {
        return Ok(Some(scaled));
    }
    let mut canvas = RgbImage::from_pixel(g.canvas.0, g.canvas.1, image::Rgb(spec.border_color.0));
    let (ox, oy) = ((g.canvas.0 - g.scaled.0) / 2, (g.canvas.1 - g.scaled.1) / 2);
    image::imageops::replace(&mut canvas, &scaled, i64::from(ox), i64::from(oy));
    Ok(Some(canvas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(mode: ResizeMode, size: u32, only_if_bigger: bool) -> ResizeSpec {
        ResizeSpec { mode, image_size: size, resize_only_if_bigger: only_if_bigger, ..ResizeSpec::default() }
    }

    #[test]
    fn keep_ratio_scales_the_longest_side() {
        assert_eq!(resized_size(640, 480, &spec(ResizeMode::KeepRatio, 512, false)), (512, 384));
        assert_eq!(resized_size(480, 640, &spec(ResizeMode::KeepRatio, 512, false)), (384, 512));
        assert_eq!(resized_size(100, 50, &spec(ResizeMode::KeepRatio, 512, false)), (512, 256));
        assert_eq!(resized_size(100, 50, &spec(ResizeMode::KeepRatio, 512, true)), (100, 50));
    }

    #[test]
    fn other_modes() {
        assert_eq!(resized_size(640, 480, &spec(ResizeMode::KeepRatioSmallest, 240, false)), (320, 240));
        assert_eq!(resized_size(640, 480, &spec(ResizeMode::CenterCrop, 256, false)), (256, 256));
        assert_eq!(resized_size(640, 480, &spec(ResizeMode::Border, 256, false)), (256, 256));
        assert_eq!(resized_size(640, 480, &spec(ResizeMode::No, 256, false)), (640, 480));
    }

    #[test]
    fn border_pads_with_the_colour_and_centre_crop_keeps_the_centre() {
        let mut img = RgbImage::from_pixel(40, 20, image::Rgb([0, 0, 0]));
        for x in 10..30 {
            for y in 0..20 {
                img.put_pixel(x, y, image::Rgb([200, 10, 10]));
            }
        }
        let bordered = resize(&img, &spec(ResizeMode::Border, 20, false), u64::MAX).unwrap().unwrap();
        assert_eq!(bordered.dimensions(), (20, 20));
        assert_eq!(bordered.get_pixel(10, 0), &image::Rgb([255, 255, 255]));
        assert_eq!(bordered.get_pixel(10, 10), &image::Rgb([200, 10, 10]));
        let cropped = resize(&img, &spec(ResizeMode::CenterCrop, 10, false), u64::MAX).unwrap().unwrap();
        assert_eq!(cropped.dimensions(), (10, 10));
        // The convolution may blend the outermost column with its neighbours outside the crop, as resizing and then
        // cropping does.
        for x in 1..9 {
            assert_eq!(cropped.get_pixel(x, 5), &image::Rgb([200, 10, 10]));
        }
    }

    #[test]
    fn outputs_above_max_pixels_are_refused_before_allocating() {
        let strip = RgbImage::from_pixel(1, 50_000, image::Rgb([1, 2, 3]));
        let smallest = spec(ResizeMode::KeepRatioSmallest, 256, false);
        assert_eq!(resized_size(1, 50_000, &smallest), (256, 12_800_000));
        let err = resize(&strip, &smallest, 89_478_485).unwrap_err();
        assert_eq!(err.kind(), "resize_too_large");
        let text = err.to_string();
        assert!(
            text.contains("1x50000") && text.contains("256x12800000") && text.contains("decode.max_pixels"),
            "{text}"
        );
        // Upscaling to a huge image_size is refused the same way; an output at the limit is not.
        let err = check_resize(2, 2, &spec(ResizeMode::Border, 65_535, false), 1 << 30).unwrap_err();
        assert_eq!(err.kind(), "resize_too_large");
        assert!(check_resize(640, 480, &spec(ResizeMode::KeepRatioSmallest, 240, false), 320 * 240).is_ok());
        assert!(check_resize(640, 480, &spec(ResizeMode::KeepRatioSmallest, 240, false), 320 * 240 - 1).is_err());
        // Modes that leave the image as it is are never refused.
        assert!(check_resize(1, 50_000, &spec(ResizeMode::No, 256, false), 10).is_ok());
    }

    proptest! {
        #[test]
        fn sizes_are_positive_and_bounded(w in 1u32..5000, h in 1u32..5000, s in 1u32..2048) {
            for mode in [ResizeMode::KeepRatio, ResizeMode::KeepRatioSmallest, ResizeMode::CenterCrop, ResizeMode::Border] {
                let (rw, rh) = resized_size(w, h, &spec(mode, s, false));
                prop_assert!(rw >= 1 && rh >= 1);
                match mode {
                    ResizeMode::KeepRatio => prop_assert_eq!(rw.max(rh), s),
                    ResizeMode::KeepRatioSmallest => prop_assert_eq!(rw.min(rh), s),
                    _ => prop_assert_eq!((rw, rh), (s, s)),
                }
            }
        }
    }
}

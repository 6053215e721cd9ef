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
pub(crate) struct Geometry {
    pub crop: (u32, u32, u32, u32),
    pub scaled: (u32, u32),
    pub canvas: (u32, u32),
}

fn scale_to(w: u32, h: u32, side_of: u32, target: u32) -> (u32, u32) {
    let scale = f64::from(target) / f64::from(side_of);
    let dim = |d: u32| ((f64::from(d) * scale).round() as u32).max(1);
    (dim(w), dim(h))
}

pub(crate) fn geometry(w: u32, h: u32, spec: &ResizeSpec) -> Option<Geometry> {
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
    convolve(image, g, 1.0, spec).map(Some)
}

/// The DCT scale `M/8` (as `M`, 1 to 7) at which a JPEG of displayed size `w`×`h` can be decoded while keeping at
/// least [`DCT_MARGIN`] times the pixels that `spec` resizes it to, on both axes; `None` when no scale below 1
/// does. Decoding at the smallest such scale and resizing the rest of the way (see [`resize_scaled`]) skips most of
/// the decode's work on large downscales.
pub(crate) fn dct_scale(w: u32, h: u32, spec: &ResizeSpec) -> Option<u32> {
    let g = geometry(w, h, spec)?;
    let (_, _, cw, ch) = g.crop;
    let (tw, th) = g.scaled;
    let (num, den) = DCT_MARGIN;
    let enough =
        |side: u32, target: u32, m: u32| u64::from(side) * u64::from(m) * den >= 8 * num * u64::from(target);
    (1..8).find(|&m| enough(cw, tw, m) && enough(ch, th, m))
}

/// How much larger than the output a DCT-scaled decode must stay (2×). The DCT's own downscale is sharper than the
/// resize filters, so decoding right down to the output size changes what the resize would have averaged: on
/// the ingest benchmark's noisy photos, 640×480 → 512×384 through a 7/8 decode (1.09×) measured PSNR 38.8 dB
/// (min 36.5) against a full decode, and 640 → 64 through 1/8 (1.25×) a worst image of 37.8 dB, under the 40 dB
/// bar; with twice the output left to the resize every measured case stays above it (BENCHMARKS.md).
pub(crate) const DCT_MARGIN: (u64, u64) = (2, 1);

/// [`resize`] of an image of displayed size `full` that was decoded at the DCT scale `m`/8 (so `image` is about
/// `full` × m/8): the output is the size and framing `spec` gives `full`.
pub(crate) fn resize_scaled(
    image: &RgbImage,
    full: (u32, u32),
    m: u32,
    spec: &ResizeSpec,
    max_pixels: u64,
) -> Result<RgbImage, ImageError> {
    check_resize(full.0, full.1, spec, max_pixels)?;
    let g = geometry(full.0, full.1, spec)
        .ok_or_else(|| ImageError::Corrupt("a scaled decode without a resize".into()))?;
    convolve(image, g, f64::from(m) / 8.0, spec)
}

/// Resamples the crop of `g` (in the coordinates of the full image; `image` holds it at `scale`) to `g.scaled`,
/// and pastes it on `g.canvas`.
fn convolve(image: &RgbImage, g: Geometry, scale: f64, spec: &ResizeSpec) -> Result<RgbImage, ImageError> {
    let (w, h) = image.dimensions();
    let (cx, cy, cw, ch) = g.crop;
    let crop = [f64::from(cx) * scale, f64::from(cy) * scale, f64::from(cw) * scale, f64::from(ch) * scale];
    let pixels = resample(image.as_raw(), (w, h), PixelType::U8x3, crop, g.scaled, spec.filter)?;
    let scaled = RgbImage::from_raw(g.scaled.0, g.scaled.1, pixels)
        .ok_or_else(|| ImageError::Corrupt("resize produced a short buffer".into()))?;
    if g.canvas == g.scaled {
        return Ok(scaled);
    }
    let mut canvas = RgbImage::from_pixel(g.canvas.0, g.canvas.1, image::Rgb(spec.border_color.0));
    let (ox, oy) = ((g.canvas.0 - g.scaled.0) / 2, (g.canvas.1 - g.scaled.1) / 2);
    image::imageops::replace(&mut canvas, &scaled, i64::from(ox), i64::from(oy));
    Ok(canvas)
}

/// `crop` (x, y, width, height) cut to the `size` image.
pub(crate) fn clamp_crop([x, y, w, h]: [f64; 4], size: (u32, u32)) -> [f64; 4] {
    let (x, y) = (x.min(f64::from(size.0)), y.min(f64::from(size.1)));
    [x, y, w.min(f64::from(size.0) - x), h.min(f64::from(size.1) - y)]
}

/// Working buffers kept by a thread from one image to the next are freed when larger than this (a huge image's
/// must not stay with every thread of the pool).
pub(crate) const KEEP_BUFFER_BYTES: usize = 8 << 20;

/// Frees each of a thread's kept buffers that has grown above [`KEEP_BUFFER_BYTES`] (the YCbCr path's planes).
#[cfg(feature = "turbojpeg")]
pub(crate) fn shed_large(buffers: &mut [Vec<u8>]) {
    for buffer in buffers {
        if buffer.capacity() > KEEP_BUFFER_BYTES {
            *buffer = Vec::new();
        }
    }
}

thread_local! {
    /// This thread's resizer: it keeps its working buffers from one image to the next instead of allocating and
    /// zeroing them per plane.
    static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
}

/// Resamples the `crop` (x, y, width, height; fractional) of the `size` image `src` of `pixel` type to `out`, with
/// `filter` widened to the scale (antialiased). The crop is clamped to the image: a DCT-scaled image is
/// ceil(side × scale) wide, so a scaled crop can overshoot it by a fraction of a pixel.
pub(crate) fn resample(
    src: &[u8],
    size: (u32, u32),
    pixel: PixelType,
    crop: [f64; 4],
    out: (u32, u32),
    filter: ResizeFilter,
) -> Result<Vec<u8>, ImageError> {
    let mut samples = Vec::new();
    resample_into(src, size, pixel, crop, out, filter, &mut samples)?;
    Ok(samples)
}

/// [`resample`] into `samples`, whose allocation is reused (and only its growth zeroed).
pub(crate) fn resample_into(
    src: &[u8],
    size: (u32, u32),
    pixel: PixelType,
    crop: [f64; 4],
    out: (u32, u32),
    filter: ResizeFilter,
    samples: &mut Vec<u8>,
) -> Result<(), ImageError> {
    let corrupt = |e: &dyn std::fmt::Display| ImageError::Corrupt(format!("resize failed: {e}"));
    let image = ImageRef::new(size.0, size.1, src, pixel).map_err(|e| corrupt(&e))?;
    let mut buffer = std::mem::take(samples);
    buffer.resize(out.0 as usize * out.1 as usize * pixel.size(), 0);
    let mut dst = Image::from_vec_u8(out.0, out.1, buffer, pixel).map_err(|e| corrupt(&e))?;
    let filter = match filter {
        ResizeFilter::Box => FilterType::Box,
        ResizeFilter::Bilinear => FilterType::Bilinear,
        ResizeFilter::Hamming => FilterType::Hamming,
        ResizeFilter::CatmullRom => FilterType::CatmullRom,
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
    };
    let [x, y, w, h] = clamp_crop(crop, size);
    // Four channels are four samples of one plane (see plane.rs), never colour and alpha.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)).crop(x, y, w, h).use_alpha(false);
    RESIZER
        .with_borrow_mut(|resizer| {
            let resized = resizer.resize(&image, &mut dst, &options);
            if resizer.size_of_internal_buffers() > KEEP_BUFFER_BYTES {
                resizer.reset_internal_buffers();
            }
            resized
        })
        .map_err(|e| corrupt(&e))?;
    *samples = dst.into_vec();
    Ok(())
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

    #[test]
    fn the_dct_scale_is_the_smallest_that_keeps_the_output_pixels() {
        let keep = spec(ResizeMode::KeepRatio, 512, false);
        // 640x480 -> 512x384: 7/8 (560x420) keeps less than twice the output.
        assert_eq!(dct_scale(640, 480, &keep), None);
        assert_eq!(dct_scale(640, 480, &spec(ResizeMode::KeepRatio, 256, false)), Some(7), "560x420 for 256x192");
        assert_eq!(dct_scale(640, 480, &spec(ResizeMode::KeepRatio, 160, false)), Some(4), "320x240 for 160x120");
        assert_eq!(dct_scale(4000, 3000, &keep), Some(3), "1500x1125 for 512x384");
        assert_eq!(dct_scale(8192, 8192, &keep), Some(1));
        assert_eq!(dct_scale(100, 50, &keep), None, "an upscale");
        assert_eq!(dct_scale(640, 480, &spec(ResizeMode::No, 512, false)), None);
        // Centre crops count the crop, not the whole image: 1000 px at 5/8 is 625, at least 2 x 256.
        assert_eq!(dct_scale(2000, 1000, &spec(ResizeMode::CenterCrop, 256, false)), Some(5));
    }

    #[test]
    fn a_scaled_source_gives_the_size_and_framing_of_the_full_one() {
        let mut full = RgbImage::from_pixel(640, 480, image::Rgb([10, 20, 30]));
        for x in 320..640 {
            for y in 0..480 {
                full.put_pixel(x, y, image::Rgb([200, 100, 50]));
            }
        }
        let keep = spec(ResizeMode::KeepRatio, 160, false);
        let reference = resize(&full, &keep, u64::MAX).unwrap().unwrap();
        let m = dct_scale(640, 480, &keep).unwrap();
        let half = image::imageops::resize(&full, 640 * m / 8, 480 * m / 8, image::imageops::FilterType::Triangle);
        let scaled = resize_scaled(&half, (640, 480), m, &keep, u64::MAX).unwrap();
        assert_eq!(scaled.dimensions(), reference.dimensions());
        for (x, y) in [(10, 10), (150, 110), (60, 90), (120, 20)] {
            assert_eq!(scaled.get_pixel(x, y), reference.get_pixel(x, y), "({x}, {y})");
        }
    }

    proptest! {
        #[test]
        fn dct_scaled_sizes_cover_the_output(w in 1u32..6000, h in 1u32..6000, s in 1u32..2048) {
            for mode in [ResizeMode::KeepRatio, ResizeMode::KeepRatioSmallest, ResizeMode::CenterCrop, ResizeMode::Border] {
                let spec = spec(mode, s, false);
                if let Some(m) = dct_scale(w, h, &spec) {
                    let g = geometry(w, h, &spec).unwrap();
                    prop_assert!((1..8).contains(&m));
                    // At least twice the output on both axes, and no smaller scale would do.
                    prop_assert!(u64::from(g.crop.2) * u64::from(m) >= 16 * u64::from(g.scaled.0));
                    prop_assert!(u64::from(g.crop.3) * u64::from(m) >= 16 * u64::from(g.scaled.1));
                    if m > 1 {
                        let less = u64::from(m - 1);
                        prop_assert!(
                            u64::from(g.crop.2) * less < 16 * u64::from(g.scaled.0)
                                || u64::from(g.crop.3) * less < 16 * u64::from(g.scaled.1)
                        );
                    }
                }
            }
        }

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

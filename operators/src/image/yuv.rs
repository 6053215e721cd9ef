//! JPEG to resized JPEG without leaving YCbCr (libjpeg-turbo builds).
//!
//! A JPEG stores luma and (usually subsampled) chroma planes. The RGB path decodes them, upsamples the chroma and
//! converts every pixel to RGB, resizes three full channels, then converts back and downsamples the chroma to
//! encode. Here the planes are decoded as they are, each is resized on its own to the output's planes (4:2:0, as
//! the encoder writes), and the planes are encoded directly: no colour conversion, no chroma resampling twice,
//! and half the samples to resize.
//!
//! It applies when the stored image is a JPEG of a YCbCr JPEG, shrunk by at most [`MAX_RATIO`] without padding
//! (not `border`), with no EXIF rotation and no pixels kept for models; otherwise, or when libjpeg-turbo cannot
//! take the file, the RGB path runs (and names the problem precisely). The bound is measured: the chroma filtered
//! once at half resolution and the RGB path's chroma (filtered at full resolution, then averaged 2×2 by the
//! encoder) drift apart as the scale grows: on the ingest benchmark's photos the worst image stays above 40 dB
//! PSNR against the RGB path up to 4× (41.0 dB at 640 → 160) and falls under it past 6× (38.7 dB at 640 → 96);
//! BENCHMARKS.md has the table.

use std::borrow::Cow;

use turbojpeg::{Colorspace, ScalingFactor, Subsamp, YuvImage, YuvPlanesImage};

use super::ImageError;
use super::decode::{Resized, with_decompressor};
use super::plane::resample_plane;
use super::resize::{Geometry, KEEP_BUFFER_BYTES, ResizeSpec, geometry, shed_large};

/// One plane: its samples, row by row (`width` per row), and its size; borrowed from the decoder's buffer, or
/// owned once resized or extended.
struct Plane<'a> {
    samples: Cow<'a, [u8]>,
    width: usize,
    height: usize,
}

/// The largest shrink (crop side over output side, on either axis) taken in YCbCr.
pub(crate) const MAX_RATIO: u32 = 4;

/// The resized image, encoded; `None` when this path does not apply (the RGB path then runs).
pub(crate) fn resize_jpeg(
    data: &[u8],
    full: (u32, u32),
    spec: &ResizeSpec,
    quality: u8,
) -> Option<Result<Resized, ImageError>> {
    let g = geometry(full.0, full.1, spec)?;
    let unchanged = g.crop == (0, 0, full.0, full.1) && g.scaled == full;
    let (_, _, cw, ch) = g.crop;
    let too_far = cw > MAX_RATIO * g.scaled.0 || ch > MAX_RATIO * g.scaled.1;
    if g.canvas != g.scaled || unchanged || too_far {
        return None;
    }
    let decoded = decode_planes(data, full)?;
    Some(OUTPUT.with_borrow_mut(|outputs| {
        let (tw, th) = g.scaled;
        let bytes = resize_planes(&decoded.planes(), decoded.subsampling, g, spec, outputs)
            .and_then(|out| encode_planes(out, (tw as usize, th as usize), quality));
        // Also after a failure: a plane that grew for a large image is not kept by this thread.
        shed_large(outputs);
        Ok(Resized { bytes: bytes?, width: tw, height: th })
    }))
}

thread_local! {
    /// This thread's resized planes, reused from one image to the next: a fresh plane cost an allocation, its
    /// zeroing and its page faults (2.5% of an ingest run's CPU time).
    static OUTPUT: std::cell::RefCell<[Vec<u8>; 3]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// The decoder's Y, Cb and Cr planes, one after another at the start of `pixels`, with their sizes and the
/// chroma subsampling factors. `pixels` is this thread's decode buffer, handed back when the planes are dropped.
struct DecodedPlanes {
    pixels: Vec<u8>,
    luma: (usize, usize),
    chroma: (usize, usize),
    subsampling: (usize, usize),
}

thread_local! {
    /// The planes buffer of this thread's last decode. Reused, it costs no allocation, no zeroing and no page
    /// faults per image (the profile's `memset` and page-fault shares).
    static PLANES: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for DecodedPlanes {
    fn drop(&mut self) {
        let pixels = std::mem::take(&mut self.pixels);
        if pixels.len() <= KEEP_BUFFER_BYTES {
            PLANES.set(pixels);
        }
    }
}

impl DecodedPlanes {
    fn planes(&self) -> [Plane<'_>; 3] {
        let ((yw, yh), (cw, ch)) = (self.luma, self.chroma);
        let plane = |offset: usize, width: usize, height: usize| Plane {
            samples: Cow::Borrowed(&self.pixels[offset..offset + width * height]),
            width,
            height,
        };
        [plane(0, yw, yh), plane(yw * yh, cw, ch), plane(yw * yh + cw * ch, cw, ch)]
    }
}

/// The planes of `data` at full size (a DCT-scaled decode as well drifts from the RGB path faster: 640 → 100
/// through 4/8 planes measured a worst image of 38.3 dB).
fn decode_planes(data: &[u8], full: (u32, u32)) -> Option<DecodedPlanes> {
    with_decompressor(|decompressor| {
        let header = decompressor.read_header(data).ok()?;
        let same = header.width == full.0 as usize && header.height == full.1 as usize;
        if !same
            || header.colorspace != Colorspace::YCbCr
            || matches!(header.subsamp, Subsamp::Gray | Subsamp::Unknown)
        {
            return None;
        }
        // The thread's decompressor keeps the scale of its last RGB decode.
        decompressor.set_scaling_factor(ScalingFactor::ONE).ok()?;
        let len = turbojpeg::yuv_pixels_len(header.width, 1, header.height, header.subsamp).ok()?;
        let mut planes = DecodedPlanes {
            pixels: PLANES.take(),
            luma: (0, 0),
            chroma: (0, 0),
            subsampling: header.subsamp.size(),
        };
        if planes.pixels.len() < len {
            planes.pixels.resize(len, 0);
        }
        let yuv = YuvImage {
            pixels: &mut planes.pixels[..len],
            width: header.width,
            align: 1,
            height: header.height,
            subsamp: header.subsamp,
        };
        let (luma, chroma) = (yuv.y_size(), yuv.uv_size());
        decompressor.decompress_to_yuv(data, yuv).ok()?;
        if len < luma.0 * luma.1 + 2 * chroma.0 * chroma.1 {
            return None;
        }
        (planes.luma, planes.chroma) = (luma, chroma);
        Some(planes)
    })
}

/// Each plane resampled to the output's 4:2:0 planes, into `outputs`: the crop of `g` (full-image coordinates;
/// the chroma planes hold the image at 1/`sx`, 1/`sy`).
fn resize_planes<'o>(
    planes: &[Plane<'_>; 3],
    (sx, sy): (usize, usize),
    g: Geometry,
    spec: &ResizeSpec,
    outputs: &'o mut [Vec<u8>; 3],
) -> Result<[Plane<'o>; 3], ImageError> {
    let (cx, cy, cw, ch) = g.crop;
    let (tw, th) = (g.scaled.0 as usize, g.scaled.1 as usize);
    // The output's chroma planes cover 2·ceil(t/2) luma samples: a half sample past an odd edge.
    let (ow, oh) = (tw.div_ceil(2), th.div_ceil(2));
    let mut sizes = [(0, 0); 3];
    for (i, (plane, output)) in planes.iter().zip(outputs.iter_mut()).enumerate() {
        // Per axis: full-image coordinates to plane coordinates, for the crop's origin and for its extent.
        let (origin, extent, target) = if i == 0 {
            ((1.0, 1.0), (1.0, 1.0), (tw, th))
        } else {
            let (kx, ky) = (1.0 / sx as f64, 1.0 / sy as f64);
            let over = ((2 * ow) as f64 / tw as f64, (2 * oh) as f64 / th as f64);
            ((kx, ky), (kx * over.0, ky * over.1), (ow, oh))
        };
        let crop = [
            f64::from(cx) * origin.0,
            f64::from(cy) * origin.1,
            f64::from(cw) * extent.0,
            f64::from(ch) * extent.1,
        ];
        // The chroma of an odd-sized output reaches past the crop's edge: repeat the plane's edge out to there, as
        // an encoder pads an odd-sized image before it subsamples.
        let padded = extend(plane, (crop[0] + crop[2]).ceil() as usize, (crop[1] + crop[3]).ceil() as usize);
        let source = padded.as_ref().unwrap_or(plane);
        let size = (source.width as u32, source.height as u32);
        let target32 = (target.0 as u32, target.1 as u32);
        resample_plane(&source.samples, size, crop, target32, spec.filter, output)?;
        sizes[i] = target;
    }
    let outputs: &'o [Vec<u8>; 3] = outputs;
    Ok(std::array::from_fn(|i| Plane {
        samples: Cow::Borrowed(outputs[i].as_slice()),
        width: sizes[i].0,
        height: sizes[i].1,
    }))
}

/// `plane` repeated at its right and bottom edges to at least `width`×`height`; `None` when it is that large.
fn extend(plane: &Plane<'_>, width: usize, height: usize) -> Option<Plane<'static>> {
    if width <= plane.width && height <= plane.height {
        return None;
    }
    let (w, h) = (width.max(plane.width), height.max(plane.height));
    let mut samples = Vec::with_capacity(w * h);
    for row in 0..h {
        let line = &plane.samples[row.min(plane.height - 1) * plane.width..][..plane.width];
        samples.extend_from_slice(line);
        samples.extend(std::iter::repeat_n(line[plane.width - 1], w - plane.width));
    }
    Some(Plane { samples: Cow::Owned(samples), width: w, height: h })
}

/// Encodes 4:2:0 planes (`y` of `size`, chroma of half that, rounded up) as a JPEG at `quality`. libjpeg-turbo
/// wants the luma plane padded to whole chroma samples; the padding repeats the edge.
fn encode_planes(planes: [Plane<'_>; 3], (w, h): (usize, usize), quality: u8) -> Result<Vec<u8>, ImageError> {
    let [y, u, v] = planes;
    let (pw, ph) = (w.next_multiple_of(2), h.next_multiple_of(2));
    let y = extend(&y, pw, ph).unwrap_or(y);
    let image = YuvPlanesImage {
        y_plane: &y.samples[..],
        u_plane: &u.samples[..],
        v_plane: &v.samples[..],
        width: w,
        height: h,
        y_stride: pw,
        u_stride: u.width,
        v_stride: v.width,
        subsamp: Subsamp::Sub2x2,
    };
    super::encode::with_compressor(quality, |compressor| compressor.compress_yuv_planes_to_vec(&image))
        .map_err(|message| ImageError::Encode { format: "jpeg", message })
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use crate::image::{DecodeLimits, EncodeFormat, EncodeSpec, ImageOperator, ResizeMode, ResizeSpec};

    /// A photo-like picture: smooth colour waves, a hard edge, some texture.
    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (f64::from(x), f64::from(y));
            let wave = |f: f64, p: f64| (128.0 + 90.0 * ((fx * f + fy * 0.6 * f) / 70.0 + p).sin()) as u8;
            let texture = ((x * 7 + y * 13) % 17) as u8;
            if x > w / 3 && x < w / 2 && y > h / 4 {
                Rgb([230, 40u8.saturating_add(texture), 30])
            } else {
                Rgb([wave(1.0, 0.0), wave(1.4, 1.0).saturating_add(texture), wave(0.7, 2.0)])
            }
        })
    }

    fn jpeg(img: &RgbImage, subsamp: turbojpeg::Subsamp) -> Vec<u8> {
        turbojpeg::compress(crate::image::encode::rgb_view(img), 92, subsamp).unwrap().to_vec()
    }

    fn decoded(bytes: &[u8]) -> RgbImage {
        image::load_from_memory(bytes).unwrap().to_rgb8()
    }

    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        let n = a.as_raw().len() as f64;
        let mse =
            a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>();
        10.0 * (255.0f64 * 255.0 / (mse / n)).log10()
    }

    #[test]
    fn planes_resized_in_ycbcr_look_like_the_rgb_path_for_every_subsampling_and_size() {
        use turbojpeg::Subsamp;
        let encode = EncodeSpec { format: EncodeFormat::Jpg, quality: 90 };
        for (w, h, mode, size) in [
            (640, 480, ResizeMode::KeepRatio, 512),
            (641, 479, ResizeMode::KeepRatio, 333),
            (1000, 600, ResizeMode::CenterCrop, 256),
            (900, 700, ResizeMode::KeepRatioSmallest, 301),
        ] {
            let resize = ResizeSpec { mode, image_size: size, ..ResizeSpec::default() };
            let fast = ImageOperator { resize, encode, ..ImageOperator::default() };
            let rgb =
                ImageOperator { limits: DecodeLimits { ycbcr: false, ..DecodeLimits::default() }, ..fast.clone() };
            let img = picture(w, h);
            for subsamp in [Subsamp::Sub2x2, Subsamp::Sub2x1, Subsamp::None] {
                let data = jpeg(&img, subsamp);
                let (a, b) = (fast.process(data.clone()).unwrap(), rgb.process(data).unwrap());
                assert_eq!((a.width, a.height), (b.width, b.height), "{w}x{h} {subsamp:?}");
                assert!(a.reencoded && a.pixels.is_none());
                assert_ne!(a.bytes, b.bytes, "the YCbCr path was taken");
                let (pa, pb) = (decoded(&a.bytes), decoded(&b.bytes));
                assert_eq!(pa.dimensions(), (a.width, a.height));
                let quality = psnr(&pa, &pb);
                assert!(quality >= 40.0, "{w}x{h} {mode:?} {size} {subsamp:?}: PSNR {quality:.1} dB");
            }
        }
    }

    #[test]
    fn what_the_ycbcr_path_does_not_take_goes_the_rgb_way() {
        let img = picture(320, 240);
        let data = jpeg(&img, turbojpeg::Subsamp::Sub2x2);
        let resize = ResizeSpec { mode: ResizeMode::Border, image_size: 200, ..ResizeSpec::default() };
        let border = ImageOperator { resize, ..ImageOperator::default() };
        let rgb =
            ImageOperator { limits: DecodeLimits { ycbcr: false, ..DecodeLimits::default() }, ..border.clone() };
        assert_eq!(border.process(data.clone()).unwrap().bytes, rgb.process(data.clone()).unwrap().bytes);
        // Kept pixels (for the refiner) come from the RGB path.
        let resize = ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 200, ..ResizeSpec::default() };
        let keep = ImageOperator { resize, keep_pixels: true, ..ImageOperator::default() };
        let out = keep.process(data.clone()).unwrap();
        assert_eq!(out.pixels.as_ref().map(|p| p.dimensions()), Some((200, 150)));
        // An unchanged size is stored byte for byte.
        let same = ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 320, ..ResizeSpec::default() };
        let out = ImageOperator { resize: same, ..ImageOperator::default() }.process(data.clone()).unwrap();
        assert!(!out.reencoded);
        assert_eq!(out.bytes, data);
    }
}

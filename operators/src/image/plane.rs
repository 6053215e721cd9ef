//! One-channel planes (the YCbCr path's Y, Cb and Cr) resampled on fast_image_resize's four-channel kernel.
//!
//! For a one-channel image, fast_image_resize's horizontal pass computes each output sample on its own, and the
//! few taps of a moderate downscale (three or four for 640 → 512) all fall in its scalar tail: the ingest profile
//! had that pass at a fifth of the CPU time. Its four-channel kernel computes the four channels of a pixel at once.
//! So the vertical pass runs as usual, four consecutive rows are then interleaved into the channels of one
//! four-channel row, the horizontal pass runs on those, and the rows are taken apart again. The coefficients and
//! the arithmetic per sample are the same, so the output is identical to one-channel resampling (a property test
//! checks it over sizes and crops), in about 60% of the time (BENCHMARKS.md).

use fast_image_resize::PixelType;

use super::ImageError;
use super::resize::{KEEP_BUFFER_BYTES, ResizeFilter, clamp_crop, resample, resample_into};

/// `src` (one sample per pixel, `size`) resampled from `crop` to `out`, as [`resample`] with [`PixelType::U8`].
pub(crate) fn resample_plane(
    src: &[u8],
    size: (u32, u32),
    crop: [f64; 4],
    out: (u32, u32),
    filter: ResizeFilter,
) -> Result<Vec<u8>, ImageError> {
    let [x, y, w, h] = clamp_crop(crop, size);
    // As fast_image_resize decides which passes an image needs.
    let horizontal = f64::from(out.0) != w || x != x.round();
    let vertical = f64::from(out.1) != h || y != y.round();
    if !(horizontal && vertical) || out.0 == 0 || out.1 == 0 {
        return resample(src, size, PixelType::U8, crop, out, filter);
    }
    SCRATCH.with_borrow_mut(|[tall, packed, wide]| {
        // Every column, so that this pass needs no horizontal one.
        let rows = [0.0, y, f64::from(size.0), h];
        resample_into(src, size, PixelType::U8, rows, (size.0, out.1), filter, tall)?;
        let groups = out.1.div_ceil(4);
        interleave4(tall, size.0 as usize, out.1 as usize, packed);
        let crop = [x, 0.0, w, f64::from(groups)];
        resample_into(packed, (size.0, groups), PixelType::U8x4, crop, (out.0, groups), filter, wide)?;
        let plane = deinterleave4(wide, out.0 as usize, out.1 as usize);
        for buffer in [tall, packed, wide] {
            if buffer.capacity() > KEEP_BUFFER_BYTES {
                *buffer = Vec::new();
            }
        }
        Ok(plane)
    })
}

thread_local! {
    /// The intermediate planes of this thread's last call, reused: they cost no allocation and no zeroing.
    static SCRATCH: std::cell::RefCell<[Vec<u8>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Rows `4g .. 4g + 4` of the `width`×`height` plane as the four channels of row `g`; the last group repeats the
/// plane's last row where it runs past it (those samples are dropped again by [`deinterleave4`]).
fn interleave4(plane: &[u8], width: usize, height: usize, out: &mut Vec<u8>) {
    let groups = height.div_ceil(4);
    // Every sample is written below: only growth is zeroed.
    out.resize(groups * width * 4, 0);
    if width == 0 || height == 0 {
        return;
    }
    for (g, pixels) in out.chunks_exact_mut(width * 4).enumerate() {
        let row = |k: usize| {
            let start = (4 * g + k).min(height - 1) * width;
            plane.get(start..start + width).unwrap_or(&[])
        };
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        for ((((pixel, a), b), c), d) in pixels.chunks_exact_mut(4).zip(r0).zip(r1).zip(r2).zip(r3) {
            pixel.copy_from_slice(&[*a, *b, *c, *d]);
        }
    }
}

/// The inverse of [`interleave4`]: a `width`×`height` plane from rows of four-channel pixels.
fn deinterleave4(packed: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = vec![0u8; width * height];
    if width == 0 {
        return out;
    }
    let mut rows = out.chunks_mut(width);
    for pixels in packed.chunks_exact(width * 4) {
        let mut next = || rows.next().unwrap_or_default();
        let (o0, o1, o2, o3) = (next(), next(), next(), next());
        if o3.len() == width {
            let outputs = o0.iter_mut().zip(o1.iter_mut()).zip(o2.iter_mut()).zip(o3.iter_mut());
            for (pixel, (((a, b), c), d)) in pixels.chunks_exact(4).zip(outputs) {
                (*a, *b, *c, *d) = (pixel[0], pixel[1], pixel[2], pixel[3]);
            }
        } else {
            // The last group, partly past the plane.
            for (k, row) in [o0, o1, o2, o3].into_iter().enumerate() {
                for (sample, pixel) in row.iter_mut().zip(pixels.chunks_exact(4)) {
                    *sample = pixel[k];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plane(w: u32, h: u32, seed: u32) -> Vec<u8> {
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let noise = (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 27) as u8;
                ((x * 3 + y * 5 + seed) % 200) as u8 + noise
            })
            .collect()
    }

    #[test]
    fn interleaving_round_trips_every_height() {
        for (w, h) in [(1, 1), (3, 2), (5, 4), (7, 9), (640, 383)] {
            let p = plane(w, h, 7);
            let mut packed = vec![9; 3];
            interleave4(&p, w as usize, h as usize, &mut packed);
            let back = deinterleave4(&packed, w as usize, h as usize);
            assert_eq!(back, p, "{w}x{h}");
        }
    }

    #[test]
    fn the_benchmark_shrink_is_identical_to_one_channel_resampling() {
        let p = plane(640, 480, 1);
        let full = [0.0, 0.0, 640.0, 480.0];
        let ours = resample_plane(&p, (640, 480), full, (512, 384), ResizeFilter::Bilinear).unwrap();
        let one = resample(&p, (640, 480), PixelType::U8, full, (512, 384), ResizeFilter::Bilinear).unwrap();
        assert_eq!(ours, one);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_size_crop_and_filter_is_identical_to_one_channel_resampling(
            w in 1u32..90, h in 1u32..90, ow in 1u32..120, oh in 1u32..120,
            fx in 0.0f64..0.5, fy in 0.0f64..0.5, fw in 0.3f64..1.0, fh in 0.3f64..1.0,
            filter in prop_oneof![
                Just(ResizeFilter::Box), Just(ResizeFilter::Bilinear), Just(ResizeFilter::Hamming),
                Just(ResizeFilter::CatmullRom), Just(ResizeFilter::Lanczos3)
            ],
            seed in 0u32..1000,
        ) {
            let p = plane(w, h, seed);
            let (wf, hf) = (f64::from(w), f64::from(h));
            let crop = [fx * wf, fy * hf, fw * wf * (1.0 - fx), fh * hf * (1.0 - fy)];
            let ours = resample_plane(&p, (w, h), crop, (ow, oh), filter).unwrap();
            let one = resample(&p, (w, h), PixelType::U8, crop, (ow, oh), filter).unwrap();
            prop_assert_eq!(ours, one);
        }
    }
}

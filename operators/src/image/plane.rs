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
use super::resize::{ResizeFilter, clamp_crop, resample_into, shed_large};

/// `src` (one sample per pixel, `size`) resampled from `crop` to `out`, as [`super::resize::resample`] with
/// [`PixelType::U8`], into `plane` (its allocation reused, only its growth zeroed: every sample is written).
pub(crate) fn resample_plane(
    src: &[u8],
    size: (u32, u32),
    crop: [f64; 4],
    out: (u32, u32),
    filter: ResizeFilter,
    plane: &mut Vec<u8>,
) -> Result<(), ImageError> {
    let [x, y, w, h] = clamp_crop(crop, size);
    // As fast_image_resize decides which passes an image needs.
    let horizontal = f64::from(out.0) != w || x != x.round();
    let vertical = f64::from(out.1) != h || y != y.round();
    if !(horizontal && vertical) || out.0 == 0 || out.1 == 0 {
        return resample_into(src, size, PixelType::U8, crop, out, filter, plane);
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let [tall, packed, wide] = &mut *scratch;
        // Every column, so that this pass needs no horizontal one.
        let rows = [0.0, y, f64::from(size.0), h];
        let result = resample_into(src, size, PixelType::U8, rows, (size.0, out.1), filter, tall).and_then(|()| {
            let groups = out.1.div_ceil(4);
            interleave4(tall, size.0 as usize, out.1 as usize, packed);
            let crop = [x, 0.0, w, f64::from(groups)];
            resample_into(packed, (size.0, groups), PixelType::U8x4, crop, (out.0, groups), filter, wide)?;
            deinterleave4(wide, out.0 as usize, out.1 as usize, plane);
            Ok(())
        });
        // Also after a failure: an intermediate plane that grew for a large image is not kept by this thread.
        shed_large(scratch);
        result
    })
}

thread_local! {
    /// The intermediate planes of this thread's last call, reused: they cost no allocation and no zeroing.
    static SCRATCH: std::cell::RefCell<[Vec<u8>; 3]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
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

/// The inverse of [`interleave4`]: a `width`×`height` plane from rows of four-channel pixels, into `out`.
fn deinterleave4(packed: &[u8], width: usize, height: usize, out: &mut Vec<u8>) {
    // Every sample is written below: only growth is zeroed.
    out.resize(width * height, 0);
    if width == 0 {
        return;
    }
    let mut rows = out.chunks_mut(width);
    for pixels in packed.chunks_exact(width * 4) {
        let mut next = || rows.next().unwrap_or_default();
        let (o0, o1, o2, o3) = (next(), next(), next(), next());
        if o3.len() == width {
            // Whole blocks of pixels at once, then the row's last few one by one.
            let (blocks, _) = pixels.as_chunks::<{ 4 * BLOCK }>();
            let whole = blocks.len() * BLOCK;
            let [(h0, t0), (h1, t1), (h2, t2), (h3, t3)] = [o0, o1, o2, o3].map(|row| row.split_at_mut(whole));
            let heads = h0.as_chunks_mut().0.iter_mut().zip(h1.as_chunks_mut().0).zip(h2.as_chunks_mut().0);
            for ((block, ((a, b), c)), d) in blocks.iter().zip(heads).zip(h3.as_chunks_mut().0) {
                split_block(block, [a, b, c, d]);
            }
            let outputs = t0.iter_mut().zip(t1.iter_mut()).zip(t2.iter_mut()).zip(t3.iter_mut());
            for (pixel, (((a, b), c), d)) in pixels[whole * 4..].chunks_exact(4).zip(outputs) {
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
}

/// Pixels taken apart per [`split_block`] call: one 128-bit register of each row.
const BLOCK: usize = 16;

/// Sixteen four-channel pixels split into sixteen samples of each of four rows. Sample by sample, the compiler
/// moves one byte at a time (the de-interleaving was 3.3% of an ingest run's CPU time); SSE2 and NEON do a block
/// in a few shuffles (56 µs → 8 µs for a 512×384 plane, one thread).
#[cfg(target_arch = "x86_64")]
fn split_block(pixels: &[u8; 4 * BLOCK], rows: [&mut [u8; BLOCK]; 4]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8};
    let [o0, o1, o2, o3] = rows;
    let p = pixels.as_ptr().cast::<__m128i>();
    // SAFETY: SSE2 is part of x86_64; the four unaligned loads read the 64 bytes of `pixels` and each store
    // writes the 16 bytes of one row, all borrowed with those sizes.
    unsafe {
        // Channels k of pixels 0..16 (a0 b0 c0 d0 a1 ...) become rows: three rounds of byte zips, as OpenCV's
        // SSE2 four-channel de-interleave does.
        let (u0, u1, u2, u3) =
            (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)), _mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
        let (v0, v1) = (_mm_unpacklo_epi8(u0, u2), _mm_unpackhi_epi8(u0, u2));
        let (v2, v3) = (_mm_unpacklo_epi8(u1, u3), _mm_unpackhi_epi8(u1, u3));
        let (u0, u1) = (_mm_unpacklo_epi8(v0, v2), _mm_unpacklo_epi8(v1, v3));
        let (u2, u3) = (_mm_unpackhi_epi8(v0, v2), _mm_unpackhi_epi8(v1, v3));
        let (v0, v1) = (_mm_unpacklo_epi8(u0, u1), _mm_unpacklo_epi8(u2, u3));
        let (v2, v3) = (_mm_unpackhi_epi8(u0, u1), _mm_unpackhi_epi8(u2, u3));
        _mm_storeu_si128(o0.as_mut_ptr().cast(), _mm_unpacklo_epi8(v0, v1));
        _mm_storeu_si128(o1.as_mut_ptr().cast(), _mm_unpackhi_epi8(v0, v1));
        _mm_storeu_si128(o2.as_mut_ptr().cast(), _mm_unpacklo_epi8(v2, v3));
        _mm_storeu_si128(o3.as_mut_ptr().cast(), _mm_unpackhi_epi8(v2, v3));
    }
}

#[cfg(target_arch = "aarch64")]
fn split_block(pixels: &[u8; 4 * BLOCK], rows: [&mut [u8; BLOCK]; 4]) {
    use std::arch::aarch64::{vld4q_u8, vst1q_u8};
    let [o0, o1, o2, o3] = rows;
    // SAFETY: NEON is part of aarch64; `vld4q_u8` reads the 64 bytes of `pixels`, de-interleaved by channel, and
    // each store writes the 16 bytes of one row, all borrowed with those sizes.
    unsafe {
        let v = vld4q_u8(pixels.as_ptr());
        vst1q_u8(o0.as_mut_ptr(), v.0);
        vst1q_u8(o1.as_mut_ptr(), v.1);
        vst1q_u8(o2.as_mut_ptr(), v.2);
        vst1q_u8(o3.as_mut_ptr(), v.3);
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn split_block(pixels: &[u8; 4 * BLOCK], rows: [&mut [u8; BLOCK]; 4]) {
    for (k, row) in rows.into_iter().enumerate() {
        for (sample, pixel) in row.iter_mut().zip(pixels.chunks_exact(4)) {
            *sample = pixel[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::resize::resample;
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
        for (w, h) in [(1, 1), (3, 2), (5, 4), (7, 9), (15, 4), (16, 5), (17, 8), (33, 12), (47, 9), (640, 383)] {
            let p = plane(w, h, 7);
            let mut packed = vec![9; 3];
            interleave4(&p, w as usize, h as usize, &mut packed);
            let mut back = vec![5; 7];
            deinterleave4(&packed, w as usize, h as usize, &mut back);
            assert_eq!(back, p, "{w}x{h}");
        }
    }

    #[test]
    fn the_benchmark_shrink_is_identical_to_one_channel_resampling() {
        let p = plane(640, 480, 1);
        let full = [0.0, 0.0, 640.0, 480.0];
        let mut ours = Vec::new();
        resample_plane(&p, (640, 480), full, (512, 384), ResizeFilter::Bilinear, &mut ours).unwrap();
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
            // A buffer left over from a larger plane: only its first samples may be kept.
            let mut ours = vec![7; 200 * 200];
            resample_plane(&p, (w, h), crop, (ow, oh), filter, &mut ours).unwrap();
            let one = resample(&p, (w, h), PixelType::U8, crop, (ow, oh), filter).unwrap();
            prop_assert_eq!(ours, one);
        }
    }
}

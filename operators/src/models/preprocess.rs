//! Image preprocessing shared by the model families: resizing as the reference code resizes (PIL's bilinear, with
//! antialiasing when shrinking, to the bit), normalization into planar `[3, H, W]` f32 tensors, and zero padding.
//!
//! The resize is Pillow's own algorithm (`libImaging/Resample.c`: per-axis coefficients in 22-bit fixed point, the
//! horizontal pass rounded to 8 bits before the vertical one), not a fast approximation: `fast_image_resize` differs
//! from Pillow by one level on about one value in two thousand, and a detector's query selection can turn that into
//! other boxes than the reference's.

use image::RgbImage;

use super::ModelError;

/// How a family's reference code turns a pixel byte into a model input: `(byte / divisor - mean) / std` per
/// channel, each step an f32 operation in that order, as torchvision's `ToTensor` + `Normalize`, transformers' image
/// processors and segment-anything's `Sam.preprocess` compute it. The last bit matters: a graph whose query
/// selection sits on a near-tie picks other boxes when its input differs by one unit in the last place (multiplying
/// by `1 / 255` instead of dividing by 255 does so for about one byte value in three).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// What each byte is divided by first: 255 for models that take `0..=1`, 1 for models that take `0..=255`.
    pub divisor: f32,
    /// Per-channel mean, subtracted after the division.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, divided by last.
    pub std: [f32; 3],
}

impl Normalization {
    /// The input value of `byte` in `channel`.
    pub fn apply(&self, channel: usize, byte: u8) -> f32 {
        (f32::from(byte) / self.divisor - self.mean[channel]) / self.std[channel]
    }

    /// Every byte's value per channel: a lookup per pixel instead of a division and a subtraction, with the very
    /// same results.
    fn table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0f32; 256]; 3];
        for (channel, row) in table.iter_mut().enumerate() {
            for (byte, value) in row.iter_mut().enumerate() {
                *value = self.apply(channel, byte as u8);
            }
        }
        table
    }
}

/// ImageNet normalization of `0..=1` values (RAM, Grounding DINO, transformers' SAM processor, SAM 2).
pub const IMAGENET: Normalization =
    Normalization { divisor: 255.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
/// segment-anything's `pixel_mean` / `pixel_std`, on `0..=255` values.
pub const SAM_PIXELS: Normalization =
    Normalization { divisor: 1.0, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375] };

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` for the bilinear filter: for each output sample, the first source index and the
/// fixed-point weights of the source samples it reads (`INT32`, as `normalize_coeffs_8bpc` makes them).
fn pillow_coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).max(xmin);
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { *w };
                    let v = k * f64::from(1u32 << PRECISION_BITS);
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`. Sums stay in `i32` as Pillow's do: the weights of one sample add up to 2^22, so a sum of
/// 8-bit values is below 2^30.
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `image` resized to `w`×`h` exactly as PIL's `Image.resize((w, h), Image.BILINEAR)` (the image itself when
/// already that size). Integer sums, so the order they are taken in changes nothing: the vertical pass runs over
/// whole rows at a time, which the compiler vectorizes.
pub fn resize_bilinear(image: &RgbImage, w: u32, h: u32) -> Result<RgbImage, ModelError> {
    let (w, h) = (w.max(1), h.max(1));
    if image.dimensions() == (w, h) {
        return Ok(image.clone());
    }
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    if iw == 0 || ih == 0 {
        return Err(ModelError::Preprocess(format!("resize an empty {iw}x{ih} image to {w}x{h}")));
    }
    let (ow, oh) = (w as usize, h as usize);
    let raw = image.as_raw();
    let half = 1i32 << (PRECISION_BITS - 1);
    let vertical = pillow_coefficients(ih, oh);
    // Only the source rows the vertical pass reads go through the horizontal pass, as in Pillow.
    let first = vertical.first().map_or(0, |(start, _)| *start);
    let last = vertical.iter().map(|(start, k)| start + k.len()).max().unwrap_or(ih).max(first);
    let rows: Vec<u8> = if ow != iw {
        let horizontal = pillow_coefficients(iw, ow);
        let mut out = vec![0u8; (last - first) * ow * 3];
        for (line, dst) in raw[first * iw * 3..last * iw * 3].chunks_exact(iw * 3).zip(out.chunks_exact_mut(ow * 3))
        {
            for ((start, k), px) in horizontal.iter().zip(dst.chunks_exact_mut(3)) {
                let (mut r, mut g, mut b) = (half, half, half);
                for (src, &weight) in line[start * 3..].chunks_exact(3).zip(k) {
                    r += i32::from(src[0]) * weight;
                    g += i32::from(src[1]) * weight;
                    b += i32::from(src[2]) * weight;
                }
                px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
            }
        }
        out
    } else {
        raw[first * iw * 3..last * iw * 3].to_vec()
    };
    let out = if oh != ih {
        let width = ow * 3;
        let mut out = vec![0u8; oh * width];
        let mut sums = vec![0i32; width];
        for ((start, k), dst) in vertical.iter().zip(out.chunks_exact_mut(width)) {
            sums.fill(half);
            for (i, &weight) in k.iter().enumerate() {
                let row = &rows[(start - first + i) * width..][..width];
                for (sum, &v) in sums.iter_mut().zip(row) {
                    *sum += i32::from(v) * weight;
                }
            }
            for (o, &sum) in dst.iter_mut().zip(&sums) {
                *o = clip8(sum);
            }
        }
        out
    } else {
        rows
    };
    RgbImage::from_raw(w, h, out).ok_or_else(|| ModelError::Preprocess(format!("resize to {w}x{h}: short buffer")))
}

/// Planar `[3, out_h, out_w]` values of `image` under `normalization`, placed at the top left, zeros elsewhere
/// (padding after normalization, as SAM pads).
pub fn to_planar(image: &RgbImage, normalization: &Normalization, out_w: usize, out_h: usize) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let plane = out_w * out_h;
    let mut out = vec![0f32; 3 * plane];
    let table = normalization.table();
    let raw = image.as_raw();
    for y in 0..h.min(out_h) {
        for x in 0..w.min(out_w) {
            let p = (y * w + x) * 3;
            let o = y * out_w + x;
            for c in 0..3 {
                out[c * plane + o] = table[c][usize::from(raw[p + c])];
            }
        }
    }
    out
}

/// Grounding DINO's `RandomResize([800], max_size=1333)`: the shorter side to 800 unless the longer would pass
/// 1333, sizes truncated as torchvision's `get_size_with_aspect_ratio` truncates them. Returns `(w, h)`.
pub fn dino_size(w: u32, h: u32, size: u32, max_size: u32) -> (u32, u32) {
    let (min_side, max_side) = (f64::from(w.min(h)), f64::from(w.max(h)));
    let mut size = f64::from(size);
    if max_side / min_side * size > f64::from(max_size) {
        size = (f64::from(max_size) * min_side / max_side).round();
    }
    let size_u = size as u32;
    if (w <= h && w == size_u) || (h <= w && h == size_u) {
        return (w, h);
    }
    if w < h {
        (size_u, (size * f64::from(h) / f64::from(w)) as u32)
    } else {
        ((size * f64::from(w) / f64::from(h)) as u32, size_u)
    }
}

/// SAM's `ResizeLongestSide.get_preprocess_shape`: the longest side to `long`, each side rounded half up.
/// Returns `(w, h)`.
pub fn longest_side_size(w: u32, h: u32, long: u32) -> (u32, u32) {
    let scale = f64::from(long) / f64::from(w.max(h));
    ((f64::from(w) * scale + 0.5) as u32, (f64::from(h) * scale + 0.5) as u32)
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dino_sizes_match_torchvision() {
        assert_eq!(dino_size(640, 480, 800, 1333), (1066, 800));
        assert_eq!(dino_size(480, 640, 800, 1333), (800, 1066));
        assert_eq!(dino_size(4000, 1000, 800, 1333), (1332, 333));
        assert_eq!(dino_size(800, 600, 800, 1333), (1066, 800));
        assert_eq!(dino_size(1066, 800, 800, 1333), (1066, 800));
    }

    #[test]
    fn sam_sizes_round_half_up() {
        assert_eq!(longest_side_size(640, 480, 1024), (1024, 768));
        assert_eq!(longest_side_size(1500, 2250, 1024), (683, 1024));
        assert_eq!(longest_side_size(64, 64, 1024), (1024, 1024));
    }

    #[test]
    fn resizing_follows_pillow() {
        // PIL: Image.frombytes("RGB", (4, 1), bytes([0,0,0, 100,100,100, 200,200,200, 255,255,255]))
        //        .resize((2, 1), Image.BILINEAR).tobytes() == bytes([71,71,71, 209,209,209])
        // and .resize((6, 1), Image.BILINEAR) == [0, 50, 117, 183, 228, 255] per channel.
        let row = |values: &[u8]| {
            RgbImage::from_raw(values.len() as u32, 1, values.iter().flat_map(|v| [*v; 3]).collect()).unwrap()
        };
        let img = row(&[0, 100, 200, 255]);
        assert_eq!(resize_bilinear(&img, 2, 1).unwrap(), row(&[71, 209]));
        assert_eq!(resize_bilinear(&img, 6, 1).unwrap(), row(&[0, 50, 117, 183, 228, 255]));
    }

    /// Pillow's `ImagingResampleHorizontal_8bpc` / `ImagingResampleVertical_8bpc` as written there: one output
    /// value at a time, its taps in order.
    fn resize_one_at_a_time(image: &RgbImage, ow: usize, oh: usize) -> Vec<u8> {
        let (iw, ih) = (image.width() as usize, image.height() as usize);
        let half = 1i32 << (PRECISION_BITS - 1);
        let (horizontal, vertical) = (pillow_coefficients(iw, ow), pillow_coefficients(ih, oh));
        let raw = image.as_raw();
        let mut rows = vec![0u8; ih * ow * 3];
        for y in 0..ih {
            for (x, (start, k)) in horizontal.iter().enumerate() {
                for c in 0..3 {
                    let sum = k
                        .iter()
                        .enumerate()
                        .fold(half, |s, (i, w)| s + i32::from(raw[(y * iw + start + i) * 3 + c]) * w);
                    rows[(y * ow + x) * 3 + c] = clip8(sum);
                }
            }
        }
        let mut out = vec![0u8; oh * ow * 3];
        for (y, (start, k)) in vertical.iter().enumerate() {
            for x in 0..ow * 3 {
                let sum =
                    k.iter().enumerate().fold(half, |s, (i, w)| s + i32::from(rows[(start + i) * ow * 3 + x]) * w);
                out[y * ow * 3 + x] = clip8(sum);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn resizing_gives_pillows_values_whichever_way_it_goes(
            iw in 1u32..40, ih in 1u32..40, ow in 1u32..60, oh in 1u32..60, seed in proptest::prelude::any::<u64>(),
        ) {
            let mut state = seed | 1;
            let image = RgbImage::from_fn(iw, ih, |_, _| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
            });
            let resized = resize_bilinear(&image, ow, oh).unwrap();
            proptest::prop_assert_eq!(resized.into_raw(), resize_one_at_a_time(&image, ow as usize, oh as usize));
        }
    }

    #[test]
    fn normalization_is_torchvision_arithmetic_to_the_bit() {
        // numpy in float32, as torchvision's ToTensor + Normalize compute it:
        // ((np.arange(256, dtype=np.float32) / 255)[:, None] - MEAN) / STD, MEAN and STD float32 arrays, and
        // (np.arange(256, dtype=np.float32)[:, None] - SAM_MEAN) / SAM_STD. Multiplying by 1 / 255 instead
        // gives one unit in the last place less on the first two.
        assert_eq!(IMAGENET.apply(1, 24).to_bits(), 3_218_000_440);
        assert_eq!(IMAGENET.apply(2, 26).to_bits(), 3_215_783_660);
        assert_eq!(SAM_PIXELS.apply(0, 0).to_bits(), 0xc007_8bbd);
        assert_eq!(SAM_PIXELS.apply(1, 200).to_bits(), 0x3fbb_9b9c);
        assert_eq!(SAM_PIXELS.apply(2, 255).to_bits(), 0x4028_f5c3);
        let img = RgbImage::from_fn(256, 1, |x, _| image::Rgb([x as u8, 255 - x as u8, (x as u8).wrapping_mul(7)]));
        let out = to_planar(&img, &IMAGENET, 256, 1);
        for (x, pixel) in img.pixels().enumerate() {
            for c in 0..3 {
                assert_eq!(out[c * 256 + x].to_bits(), IMAGENET.apply(c, pixel[c]).to_bits());
            }
        }
    }

    #[test]
    fn planar_normalizes_and_pads() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 51]));
        let unit = Normalization { divisor: 255.0, mean: [0.0; 3], std: [1.0; 3] };
        let out = to_planar(&img, &unit, 3, 2);
        assert_eq!(out.len(), 18);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[2], 0.0, "padding");
        assert_eq!(out[6], 0.0);
        assert!((out[12] - 0.2).abs() < 1e-6);
    }
}

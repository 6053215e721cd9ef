//! The masks a segmenter gives, and the shared code that makes them: low-resolution logits handed off the inference
//! thread as they come out of a decoder ([`MaskOut::LowRes`], the best-scoring of each box's planes picked by
//! [`low_res_masks`]), upsampled to the displayed image and COCO RLE-encoded on the CPU threads
//! ([`MaskOut::finish`]), as SAM's, transformers' and SAM 2's post-processing make them.

use crate::geometry::{BoxXyxy, Rle};
use crate::models::ModelError;
use crate::models::planes::Plane;
use crate::models::runtime::View;

/// Side of the low-resolution masks SAM's decoders give.
pub const LOW_RES_SIDE: usize = 256;

/// A mask at the original image's resolution, COCO RLE-encoded as soon as it is made (a full-resolution mask of
/// every object of a batch would otherwise be held until the batch is done), with the model's confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    /// The mask, COCO compressed RLE (`size` is `[height, width]`).
    pub rle: Rle,
    /// Foreground pixels.
    pub area: u64,
    /// The model's confidence: SAM's predicted IoU, or ISNet's mean probability over the mask.
    pub score: f32,
}

impl Mask {
    /// The mask whose row-major pixel `i` of a `width`×`height` image is `foreground(i)`.
    pub fn encode(width: u32, height: u32, score: f32, foreground: impl Fn(usize) -> bool) -> Mask {
        let area = (0..width as usize * height as usize).filter(|&i| foreground(i)).count() as u64;
        Mask { width, height, rle: Rle::encode_with(height, width, foreground), area, score }
    }

    /// The row-major pixels (decoded from the RLE).
    pub fn pixels(&self) -> Result<Vec<bool>, ModelError> {
        self.rle.decode().map_err(|e| ModelError::Postprocess(e.to_string()))
    }
}

/// How a low-resolution mask maps onto the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// SAM's padded square: the image resized to `resized` (w, h) at the top left of a `side`² input.
    Padded { resized: (u32, u32), side: u32 },
    /// The image stretched to the whole input.
    Stretched,
}

/// A segmenter's output for one box: a finished mask, or low-resolution logits still to upsample (and, where the
/// prompt was not the box itself, the pixel rectangle `[x0, y0, x1, y1)` the mask is kept inside).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOut {
    Done(Mask),
    LowRes {
        logits: Plane,
        side: usize,
        frame: Frame,
        width: u32,
        height: u32,
        score: f32,
        within: Option<[u32; 4]>,
    },
}

impl MaskOut {
    /// The mask at the image's size (CPU work: upsampling and RLE encoding).
    pub fn finish(self) -> Mask {
        match self {
            MaskOut::Done(mask) => mask,
            MaskOut::LowRes { logits, side, frame, width, height, score, within } => {
                upsample_mask(&logits, side, frame, width, height, score, within)
            }
        }
    }
}

/// Interpolation taps of a bilinear resize from `src` to `dst` samples with half-pixel centres and clamped edges
/// (PyTorch's `interpolate(mode="bilinear", align_corners=False)`, OpenCV's `INTER_LINEAR`): for each output
/// sample, the two source indices and the weight of the second.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst.max(1) as f64;
    (0..dst)
        .map(|i| {
            let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let x0 = (x.floor() as usize).min(src - 1);
            let x1 = (x0 + 1).min(src - 1);
            (x0, x1, (x - x0 as f64) as f32)
        })
        .collect()
}

/// `src` (row-major `sw`×`sh`) resized to `dw`×`dh` by [`taps`], rows then columns: the whole computation
/// [`resize_region`] is held to.
#[cfg(test)]
fn resize_plane(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let mut rows = vec![0f32; dw * sh];
    for y in 0..sh {
        let line = &src[y * sw..(y + 1) * sw];
        for (x, &(x0, x1, w)) in tx.iter().enumerate() {
            rows[y * dw + x] = line[x0] * (1.0 - w) + line[x1] * w;
        }
    }
    let mut out = vec![0f32; dw * dh];
    for (y, &(y0, y1, w)) in ty.iter().enumerate() {
        for x in 0..dw {
            out[y * dw + x] = rows[y0 * dw + x] * (1.0 - w) + rows[y1 * dw + x] * w;
        }
    }
    out
}

/// `src` (row-major, `sw` wide) resized by the taps of some output columns (`tx`) and rows (`ty`) only, as
/// [`resize_plane`] computes them (the same products and sums, in the same order): the `ty.len()` × `tx.len()`
/// values, row-major. Only the source rows the wanted rows read are interpolated.
fn resize_region(src: &[f32], sw: usize, tx: &[(usize, usize, f32)], ty: &[(usize, usize, f32)]) -> Vec<f32> {
    let (Some(first), Some(last)) = (ty.first(), ty.last()) else { return Vec::new() };
    let (r0, r1) = (first.0, last.1);
    let n = tx.len();
    let mut rows = vec![0f32; n * (r1 - r0 + 1)];
    for (y, out) in (r0..=r1).zip(rows.chunks_exact_mut(n.max(1))) {
        let line = &src[y * sw..(y + 1) * sw];
        for (o, &(x0, x1, w)) in out.iter_mut().zip(tx) {
            *o = line[x0] * (1.0 - w) + line[x1] * w;
        }
    }
    let mut out = Vec::with_capacity(n * ty.len());
    for &(y0, y1, w) in ty {
        let (a, b) = (&rows[(y0 - r0) * n..][..n], &rows[(y1 - r0) * n..][..n]);
        out.extend(a.iter().zip(b).map(|(a, b)| a * (1.0 - w) + b * w));
    }
    out
}

/// The bounding box `[c0, r0, c1, r1]` (inclusive) of the cells of a `side`² plane above 0; `None` when none is.
fn positive_cells(logits: &[f32], side: usize) -> Option<[usize; 4]> {
    let mut found: Option<[usize; 4]> = None;
    for (r, row) in logits.chunks_exact(side.max(1)).enumerate() {
        let (Some(c0), Some(c1)) = (row.iter().position(|v| *v > 0.0), row.iter().rposition(|v| *v > 0.0)) else {
            continue;
        };
        found = Some(match found {
            None => [c0, r, c1, r],
            Some([a, b, c, _]) => [a.min(c0), b, c.max(c1), r],
        });
    }
    found
}

/// The mask of low-resolution logits, as `SamProcessor.post_process_masks` (padded frame: to the input side, the
/// resized image cropped, to the original size) or SAM 2's predictor (stretched: straight to the original size)
/// make it, thresholded at 0, and kept inside `within` when given.
///
/// Only what the mask's pixels read is computed: of the intermediate resize, the cells inside the crop that the
/// final resize reads (rows and columns of the kept rectangle); of the final one, the kept rectangle's pixels,
/// row by row. The values are those of the whole computation, bit for bit (a test holds them to it).
fn upsample_mask(
    logits: &[f32],
    side: usize,
    frame: Frame,
    width: u32,
    height: u32,
    score: f32,
    within: Option<[u32; 4]>,
) -> Mask {
    let (w, h) = (width as usize, height as usize);
    // The plane the last resize reads: the crop of the padded input, or the logits themselves.
    let (pw, ph) = match frame {
        Frame::Padded { resized, side: input } => {
            let input = input as usize;
            ((resized.0 as usize).clamp(1, input), (resized.1 as usize).clamp(1, input))
        }
        Frame::Stretched => (side, side),
    };
    let (all_x, all_y) = (taps(pw, w), taps(ph, h));
    let [x0, y0, x1, y1] = within.map_or([0, 0, w, h], |r| r.map(|v| v as usize));
    let (x1, y1) = (x1.min(w), y1.min(h));
    let (x0, y0) = (x0.min(x1), y0.min(y1));
    // A pixel whose every logit cell is at most 0 is background (a bilinear value is a weighted mean of its cells),
    // so only the pixels that read a cell of the positive cells' bounding box are computed.
    let [x0, y0, x1, y1] = match positive_cells(logits, side) {
        None => [x0, y0, x0, y0],
        Some([lc0, lr0, lc1, lr1]) => {
            let inner = match frame {
                Frame::Padded { side: input, .. } => Some(taps(side, input as usize)),
                Frame::Stretched => None,
            };
            let cells = |t: &(usize, usize, f32)| match &inner {
                Some(inner) => (inner[t.0].0, inner[t.1].1),
                None => (t.0, t.1),
            };
            let reads = |all: &[(usize, usize, f32)], from: usize, to: usize, lo: usize, hi: usize| {
                let first = (from..to).find(|&i| cells(&all[i]).1 >= lo).unwrap_or(to);
                let last = (first..to).rev().find(|&i| cells(&all[i]).0 <= hi).map_or(first, |i| i + 1);
                (first, last)
            };
            let (cx0, cx1) = reads(&all_x, x0, x1, lc0, lc1);
            let (cy0, cy1) = reads(&all_y, y0, y1, lr0, lr1);
            [cx0, cy0, cx1.max(cx0), cy1.max(cy0)]
        }
    };
    let (rw, rh) = (x1 - x0, y1 - y0);
    let (tx, ty) = (&all_x[x0..x1], &all_y[y0..y1]);
    let mut region = vec![0u8; rw * rh];
    if let (Some(fx), Some(lx), Some(fy), Some(ly)) = (tx.first(), tx.last(), ty.first(), ty.last()) {
        // The plane's cells those pixels read: columns c0..=c1, rows r0..=r1 (taps only move forward).
        let (c0, c1, r0, r1) = (fx.0, lx.1, fy.0, ly.1);
        let nc = c1 - c0 + 1;
        let plane: Vec<f32> = match frame {
            Frame::Padded { side: input, .. } => {
                let inner = taps(side, input as usize);
                resize_region(logits, side, &inner[c0..=c1], &inner[r0..=r1])
            }
            Frame::Stretched => {
                (r0..=r1).flat_map(|r| logits[r * side + c0..=r * side + c1].iter().copied()).collect()
            }
        };
        for (&(ya, yb, wy), out) in ty.iter().zip(region.chunks_exact_mut(rw)) {
            let (top_row, bottom_row) = (&plane[(ya - r0) * nc..][..nc], &plane[(yb - r0) * nc..][..nc]);
            for (o, &(xa, xb, wx)) in out.iter_mut().zip(tx) {
                let (xa, xb) = (xa - c0, xb - c0);
                let top = top_row[xa] * (1.0 - wx) + top_row[xb] * wx;
                let bottom = bottom_row[xa] * (1.0 - wx) + bottom_row[xb] * wx;
                *o = u8::from(top * (1.0 - wy) + bottom * wy > 0.0);
            }
        }
    }
    match Rle::encode_region(height, width, [x0, y0, x1, y1], &region) {
        Ok((rle, area)) => Mask { width, height, rle, area, score },
        // The region is sized from the rectangle above; a mismatch would be a bug here, and costs the mask only.
        Err(_) => Mask::encode(width, height, score, |_| false),
    }
}

/// The pixels `[x0, y0, x1, y1)` that `bbox`, clamped to the image, covers at least in part.
pub fn pixel_rect(bbox: &BoxXyxy, width: u32, height: u32) -> [u32; 4] {
    let b = bbox.clamped(width as f32, height as f32).0;
    let (x0, y0) = (b[0].floor() as u32, b[1].floor() as u32);
    [x0, y0, (b[2].ceil() as u32).clamp(x0, width), (b[3].ceil() as u32).clamp(y0, height)]
}

/// For each of `n` boxes, the best-scoring of its low-resolution masks (`pred` [.., n, k, s, s] with `scores`
/// [.., n, k]), handed on as logits for the CPU threads to upsample (kept inside `within[b]` where given).
#[allow(clippy::too_many_arguments)]
pub(super) fn low_res_masks(
    pred: &View<'_>,
    scores: &View<'_>,
    n: usize,
    frame: Frame,
    width: u32,
    height: u32,
    name: &str,
    within: Option<&[[u32; 4]]>,
) -> Result<Vec<MaskOut>, ModelError> {
    let k = scores.data.len() / n.max(1);
    let side = pred.shape.last().copied().unwrap_or(0);
    let plane = side * side;
    if k == 0 || side == 0 || pred.data.len() != n * k * plane || scores.data.len() != n * k {
        return Err(ModelError::Contract {
            model: "segmenter.decoder".into(),
            message: format!("{name} {:?} and scores {:?} for {n} boxes", pred.shape, scores.shape),
        });
    }
    Ok((0..n)
        .map(|b| {
            let row = &scores.data[b * k..(b + 1) * k];
            // The best score, the first of equals.
            let best = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            let start = (b * k + best) * plane;
            MaskOut::LowRes {
                logits: Plane::copy_of(&pred.data[start..start + plane]),
                side,
                frame,
                width,
                height,
                score: row[best],
                within: within.and_then(|w| w.get(b).copied()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_taps_follow_half_pixel_centres() {
        // Doubling: output 0 sits at source -0.25 (clamped to 0), output 1 at 0.25.
        let t = taps(2, 4);
        assert_eq!(t[0], (0, 1, 0.0));
        assert_eq!((t[1].0, t[1].1), (0, 1));
        assert!((t[1].2 - 0.25).abs() < 1e-6);
        assert_eq!((t[3].0, t[3].1), (1, 1), "past the last centre both taps are the edge");
        // Same size: the identity.
        let plane = [1.0, -2.0, 3.0, -4.0];
        assert_eq!(resize_plane(&plane, 2, 2, 2, 2), plane.to_vec());
    }

    #[test]
    fn a_mask_kept_within_a_rectangle_has_nothing_outside_it() {
        let logits = vec![5.0f32; 16];
        let whole = upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, None);
        assert_eq!(whole.area, 48);
        let rect = pixel_rect(&BoxXyxy([1.2, 0.5, 4.0, 9.0]), 8, 6);
        assert_eq!(rect, [1, 0, 4, 6], "floor of the start, ceil of the end, clamped to the image");
        let kept = upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, Some(rect));
        let pixels = kept.pixels().unwrap();
        assert_eq!(kept.area, 3 * 6);
        for (i, p) in pixels.iter().enumerate() {
            assert_eq!(*p, (1..4).contains(&(i % 8)), "pixel {i}");
        }
        // A box outside the image keeps nothing, and never a rectangle that ends before it starts.
        let [x0, y0, x1, y1] = pixel_rect(&BoxXyxy([20.0, 20.0, 30.0, 30.0]), 8, 6);
        assert!(x0 <= x1 && y0 <= y1);
        assert_eq!(upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, Some([x0, y0, x1, y1])).area, 0);
    }

    /// The upsampling as it was written first: the whole intermediate plane, then every pixel of the image.
    fn upsample_whole(
        logits: &[f32],
        side: usize,
        frame: Frame,
        width: u32,
        height: u32,
        within: Option<[u32; 4]>,
    ) -> Vec<bool> {
        let (w, h) = (width as usize, height as usize);
        let (plane, pw, ph) = match frame {
            Frame::Padded { resized, side: input } => {
                let input = input as usize;
                let full = resize_plane(logits, side, side, input, input);
                let (rw, rh) = ((resized.0 as usize).clamp(1, input), (resized.1 as usize).clamp(1, input));
                let mut crop = Vec::with_capacity(rw * rh);
                for y in 0..rh {
                    crop.extend_from_slice(&full[y * input..y * input + rw]);
                }
                (crop, rw, rh)
            }
            Frame::Stretched => (logits.to_vec(), side, side),
        };
        let (tx, ty) = (taps(pw, w), taps(ph, h));
        let [x0, y0, x1, y1] = within.map_or([0, 0, w, h], |r| r.map(|v| v as usize));
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if x < x0 || x >= x1 || y < y0 || y >= y1 {
                    return false;
                }
                let ((x0, x1, wx), (y0, y1, wy)) = (tx[x], ty[y]);
                let top = plane[y0 * pw + x0] * (1.0 - wx) + plane[y0 * pw + x1] * wx;
                let bottom = plane[y1 * pw + x0] * (1.0 - wx) + plane[y1 * pw + x1] * wx;
                top * (1.0 - wy) + bottom * wy > 0.0
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn upsampling_only_what_the_mask_reads_gives_the_whole_computations_pixels(
            side in 1usize..9, grow in 0usize..14, rw in 1usize..24, rh in 1usize..24,
            w in 1u32..40, h in 1u32..40, padded in proptest::bool::ANY,
            rect in proptest::option::of((0u32..44, 0u32..44, 0u32..44, 0u32..44)),
            seed in proptest::prelude::any::<u64>(), shift in proptest::sample::select(vec![0.0f32, 0.8, 0.97, 2.0]),
        ) {
            let mut state = seed | 1;
            let logits: Vec<f32> = (0..side * side).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0 - shift
            }).collect();
            let input = side + grow;
            let frame = if padded {
                Frame::Padded { resized: (rw.min(input) as u32, rh.min(input) as u32), side: input as u32 }
            } else {
                Frame::Stretched
            };
            let within = rect.map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)]);
            let mask = upsample_mask(&logits, side, frame, w, h, 0.5, within);
            let expected = upsample_whole(&logits, side, frame, w, h, within);
            proptest::prop_assert_eq!(mask.pixels().unwrap(), expected.clone());
            proptest::prop_assert_eq!(mask.area, expected.iter().filter(|p| **p).count() as u64);
        }
    }

    #[test]
    fn low_res_masks_map_through_the_padded_frame() {
        // A 4x4 low-res mask of a 16x16 padded input holding an 8x16 (w x h) image: the left half of the low-res
        // mask is the image; its top-left quarter is foreground.
        let mut logits = vec![-5.0f32; 16];
        for y in 0..2 {
            for x in 0..1 {
                logits[y * 4 + x] = 5.0;
            }
        }
        let mask = upsample_mask(&logits, 4, Frame::Padded { resized: (8, 16), side: 16 }, 4, 8, 0.9, None);
        let pixels = mask.pixels().unwrap();
        // Foreground: the left half of the columns, the top half of the rows (edges blur by a pixel).
        assert!(pixels[0] && pixels[8], "{pixels:?}");
        assert!(!pixels[3] && !pixels[7 * 4], "{pixels:?}");
        assert_eq!(mask.score, 0.9);
    }
}

//! COCO run-length encoding, bit-compatible with pycocotools (`maskApi.c`): runs over the mask in column-major
//! order, starting with a run of zeros, and the compressed `counts` string (5-bit groups with a continuation bit,
//! offset by 48, each count after the second stored as a delta against the count two before).

use serde::{Deserialize, Serialize};

/// A binary mask as COCO RLE: `size` is `[height, width]`, `counts` the compressed string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    pub size: [u32; 2],
    pub counts: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("mask of {len} values does not match size {height}x{width}")]
    Size { len: usize, height: u32, width: u32 },
    #[error("malformed RLE counts string at byte {0}")]
    Counts(usize),
    #[error("RLE runs cover {covered} pixels, the size says {expected}")]
    Coverage { covered: u64, expected: u64 },
}

impl Rle {
    /// Encodes a row-major mask of `height` × `width` (any nonzero value is foreground).
    pub fn encode(mask: &[bool], height: u32, width: u32) -> Result<Rle, RleError> {
        let (h, w) = (height as usize, width as usize);
        if mask.len() != h * w {
            return Err(RleError::Size { len: mask.len(), height, width });
        }
        Ok(Rle::encode_with(height, width, |i| mask[i]))
    }

    /// Encodes the mask whose row-major pixel `i` is `foreground(i)`, for `i` below `height` × `width`: a model's
    /// output is encoded where it lies, with no full-resolution copy of the mask.
    pub fn encode_with(height: u32, width: u32, foreground: impl Fn(usize) -> bool) -> Rle {
        let (h, w) = (height as usize, width as usize);
        let mut runs: Vec<u64> = Vec::new();
        let mut current = false;
        let mut run = 0u64;
        for x in 0..w {
            for y in 0..h {
                let v = foreground(y * w + x);
                if v != current {
                    runs.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        runs.push(run);
        Rle { size: [height, width], counts: counts_to_string(&runs) }
    }

    /// Encodes a mask that is background outside the rectangle `[x0, y0, x1, y1)` of a `height` × `width` image
    /// and `region` inside it (row-major, `x1 − x0` wide, nonzero is foreground); returns the RLE and the
    /// foreground area. The pixels outside the rectangle cost nothing: whole columns of background are one step.
    pub fn encode_region(height: u32, width: u32, rect: [usize; 4], region: &[u8]) -> Result<(Rle, u64), RleError> {
        let (h, w) = (height as usize, width as usize);
        let [x0, y0, x1, y1] = rect;
        let (x1, y1) = (x1.min(w), y1.min(h));
        let (x0, y0) = (x0.min(x1), y0.min(y1));
        let rw = x1 - x0;
        if region.len() != rw * (y1 - y0) {
            return Err(RleError::Size { len: region.len(), height: (y1 - y0) as u32, width: rw as u32 });
        }
        let mut runs = Runs { runs: Vec::new(), current: false, run: 0 };
        let mut area = 0u64;
        for x in 0..w {
            if x < x0 || x >= x1 || y0 == y1 {
                runs.add(false, h as u64);
                continue;
            }
            runs.add(false, y0 as u64);
            for y in y0..y1 {
                let v = region[(y - y0) * rw + (x - x0)] != 0;
                area += u64::from(v);
                runs.add(v, 1);
            }
            runs.add(false, (h - y1) as u64);
        }
        runs.runs.push(runs.run);
        Ok((Rle { size: [height, width], counts: counts_to_string(&runs.runs) }, area))
    }

    /// The run lengths (zeros first).
    pub fn runs(&self) -> Result<Vec<u64>, RleError> {
        let runs = counts_from_string(&self.counts)?;
        let covered: u64 = runs.iter().sum();
        let expected = u64::from(self.size[0]) * u64::from(self.size[1]);
        if covered != expected {
            return Err(RleError::Coverage { covered, expected });
        }
        Ok(runs)
    }

    /// The row-major mask.
    pub fn decode(&self) -> Result<Vec<bool>, RleError> {
        let runs = self.runs()?;
        let (h, w) = (self.size[0] as usize, self.size[1] as usize);
        let mut mask = vec![false; h * w];
        let mut i = 0usize;
        for (n, run) in runs.iter().enumerate() {
            for j in i..i + *run as usize {
                if n % 2 == 1 {
                    mask[(j % h.max(1)) * w + j / h.max(1)] = true;
                }
            }
            i += *run as usize;
        }
        Ok(mask)
    }

    /// Foreground pixels.
    pub fn area(&self) -> Result<u64, RleError> {
        Ok(self.runs()?.iter().skip(1).step_by(2).sum())
    }
}

/// Runs being counted, column-major, zeros first.
struct Runs {
    runs: Vec<u64>,
    current: bool,
    run: u64,
}

impl Runs {
    /// `n` more pixels of value `v`.
    fn add(&mut self, v: bool, n: u64) {
        if n == 0 {
            return;
        }
        if v != self.current {
            self.runs.push(self.run);
            self.run = 0;
            self.current = v;
        }
        self.run += n;
    }
}

fn counts_to_string(runs: &[u64]) -> String {
    let mut out = String::with_capacity(runs.len() * 2);
    for (i, &run) in runs.iter().enumerate() {
        let mut x = run as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push(char::from(c + 48));
            if !more {
                break;
            }
        }
    }
    out
}

fn counts_from_string(text: &str) -> Result<Vec<u64>, RleError> {
    let bytes = text.as_bytes();
    let mut runs: Vec<u64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let Some(&byte) = bytes.get(p) else { return Err(RleError::Counts(p)) };
            let c = i64::from(byte.checked_sub(48).filter(|c| *c < 64).ok_or(RleError::Counts(p))?);
            if k >= 12 {
                return Err(RleError::Counts(p));
            }
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if runs.len() > 2 {
            x += runs[runs.len() - 2] as i64;
        }
        runs.push(u64::try_from(x).map_err(|_| RleError::Counts(p))?);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_pycocotools_on_known_masks() {
        // pycocotools.mask.encode(np.asfortranarray([[0,1],[1,1]], dtype=np.uint8)) == {'size': [2, 2], 'counts': b'13'}
        let rle = Rle::encode(&[false, true, true, true], 2, 2).unwrap();
        assert_eq!(rle.counts, "13");
        // A 3x3 mask with the centre set: column-major runs [4, 1, 4]; deltas apply from the fourth count on.
        let mut centre = vec![false; 9];
        centre[4] = true;
        let rle = Rle::encode(&centre, 3, 3).unwrap();
        assert_eq!(rle.runs().unwrap(), vec![4, 1, 4]);
        assert_eq!(rle.counts, "414");
        assert_eq!(Rle::encode(&[false; 6], 2, 3).unwrap().counts, "6");
        assert_eq!(Rle::encode(&[true; 6], 2, 3).unwrap().counts, "06");
        // Runs needing several 5-bit groups and negative deltas.
        let runs = vec![100, 3, 1000, 2, 7];
        let text = counts_to_string(&runs);
        assert_eq!(counts_from_string(&text).unwrap(), runs);
    }

    #[test]
    fn malformed_counts_are_errors() {
        assert!(Rle { size: [2, 2], counts: "1".into() }.decode().is_err());
        assert!(counts_from_string("\u{1}").is_err());
        assert!(counts_from_string("o").is_err(), "a continuation bit with nothing after");
    }

    proptest! {
        #[test]
        fn round_trips(h in 1u32..24, w in 1u32..24, seed in any::<u64>()) {
            let mut state = seed | 1;
            let mask: Vec<bool> = (0..h * w).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                state % 3 == 0
            }).collect();
            let rle = Rle::encode(&mask, h, w).unwrap();
            prop_assert_eq!(rle.decode().unwrap(), mask.clone());
            prop_assert_eq!(rle.area().unwrap(), mask.iter().filter(|m| **m).count() as u64);
        }

        #[test]
        fn a_region_encodes_as_the_whole_mask_it_stands_for(
            h in 1u32..20, w in 1u32..20, a in 0usize..22, b in 0usize..22, c in 0usize..22, d in 0usize..22,
            seed in any::<u64>(),
        ) {
            let rect = [a.min(b), c.min(d), a.max(b), c.max(d)];
            let (x1, y1) = (rect[2].min(w as usize), rect[3].min(h as usize));
            let (x0, y0) = (rect[0].min(x1), rect[1].min(y1));
            let mut state = seed | 1;
            let region: Vec<u8> = (0..(x1 - x0) * (y1 - y0)).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                u8::from(state % 3 == 0)
            }).collect();
            let mut whole = vec![false; (h * w) as usize];
            for y in y0..y1 {
                for x in x0..x1 {
                    whole[y * w as usize + x] = region[(y - y0) * (x1 - x0) + (x - x0)] != 0;
                }
            }
            let (rle, area) = Rle::encode_region(h, w, rect, &region).unwrap();
            prop_assert_eq!(&rle, &Rle::encode(&whole, h, w).unwrap());
            prop_assert_eq!(area, whole.iter().filter(|m| **m).count() as u64);
        }

        #[test]
        fn counts_strings_round_trip(runs in proptest::collection::vec(0u64..1_000_000, 1..40)) {
            prop_assert_eq!(counts_from_string(&counts_to_string(&runs)).unwrap(), runs);
        }
    }
}

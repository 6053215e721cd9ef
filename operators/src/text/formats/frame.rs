//! Coordinate frames: the image a format's numbers are measured on. Trainers differ here — some read boxes on the
//! displayed image, some on the image padded to a square (`expand2square`), some on the image as their processor
//! resizes it (`smart_resize`) — and a box written in the wrong frame still parses, so the frame is data that every
//! format states and every conversion goes through.

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub fn new(width: u32, height: u32) -> Size {
        Size { width: width.max(1), height: height.max(1) }
    }
}

/// Qwen-VL's `smart_resize` settings: sides rounded to multiples of `factor`, the area kept in
/// `[min_pixels, max_pixels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resize {
    pub factor: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl Resize {
    /// Qwen2-VL and Qwen2.5-VL's processor (qwen-vl-utils' defaults): patches of 14 merged 2×2, 4 to 16384 tokens.
    pub const QWEN2_5_VL: Resize = Resize { factor: 28, min_pixels: 4 * 28 * 28, max_pixels: 16384 * 28 * 28 };
}

/// The frame a format measures boxes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frame {
    /// The image as displayed (EXIF orientation applied).
    Displayed,
    /// The image pasted centred on a square of side `max(w, h)`, as LLaVA's and Shikra's `expand2square`: the
    /// shorter side is offset by `(max(w, h) - side) // 2` whole pixels.
    PaddedSquare,
    /// The image as the model's processor resizes it.
    Resized(Resize),
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - v.signum() } else { r }
}

/// qwen-vl-utils' `smart_resize(height, width, factor, min_pixels, max_pixels)`, as `(width, height)`. Images more
/// than 200 times longer than wide, which qwen-vl-utils refuses, get the same arithmetic.
pub fn smart_resize(image: Size, resize: Resize) -> Size {
    let (h, w) = (image.height.max(1) as f64, image.width.max(1) as f64);
    let f = resize.factor.max(1) as f64;
    let (min, max) = (resize.min_pixels as f64, resize.max_pixels.max(resize.min_pixels) as f64);
    let mut h_bar = f.max(round_half_even(h / f) * f);
    let mut w_bar = f.max(round_half_even(w / f) * f);
    if h_bar * w_bar > max {
        let beta = ((h * w) / max).sqrt();
        h_bar = (h / beta / f).floor() * f;
        w_bar = (w / beta / f).floor() * f;
    } else if h_bar * w_bar < min {
        let beta = (min / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Size { width: w_bar.max(f) as u32, height: h_bar.max(f) as u32 }
}

impl Frame {
    /// The frame's size in pixels for an image of `image`.
    pub fn size(self, image: Size) -> Size {
        match self {
            Frame::Displayed => image,
            Frame::PaddedSquare => {
                let side = image.width.max(image.height).max(1);
                Size { width: side, height: side }
            }
            Frame::Resized(resize) => smart_resize(image, resize),
        }
    }

    /// The integer offsets of the image inside the padded square (`box_xyxy_expand2square`).
    fn offsets(image: Size) -> (f32, f32) {
        let side = image.width.max(image.height);
        (((side - image.width) / 2) as f32, ((side - image.height) / 2) as f32)
    }

    /// A box in fractions of the displayed image, in fractions of the frame. A resize scales each axis, so relative
    /// coordinates are the same in both.
    pub fn to_frame(self, b: [f32; 4], image: Size) -> [f32; 4] {
        match self {
            Frame::Displayed | Frame::Resized(_) => b,
            Frame::PaddedSquare => {
                let (w, h) = (image.width as f32, image.height as f32);
                let side = w.max(h);
                let (dx, dy) = Frame::offsets(image);
                [(b[0] * w + dx) / side, (b[1] * h + dy) / side, (b[2] * w + dx) / side, (b[3] * h + dy) / side]
            }
        }
    }

    /// A box in fractions of the frame, back in fractions of the displayed image (not clamped).
    pub fn to_image(self, b: [f32; 4], image: Size) -> [f32; 4] {
        match self {
            Frame::Displayed | Frame::Resized(_) => b,
            Frame::PaddedSquare => {
                let (w, h) = (image.width as f32, image.height as f32);
                let side = w.max(h);
                let (dx, dy) = Frame::offsets(image);
                [(b[0] * side - dx) / w, (b[1] * side - dy) / h, (b[2] * side - dx) / w, (b[3] * side - dy) / h]
            }
        }
    }

    /// How the README and the gallery name it.
    pub fn describe(self) -> String {
        match self {
            Frame::Displayed => "displayed image".into(),
            Frame::PaddedSquare => "padded square (expand2square)".into(),
            Frame::Resized(r) => format!(
                "resized image (smart_resize, factor {}, min_pixels {}, max_pixels {})",
                r.factor, r.min_pixels, r.max_pixels
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padded_square_offsets_are_whole_pixels() {
        // A 64×96 portrait: the square is 96 wide, the image starts at x = 16.
        let image = Size::new(64, 96);
        assert_eq!(Frame::PaddedSquare.size(image), Size::new(96, 96));
        assert_eq!(Frame::PaddedSquare.to_frame([0.0, 0.0, 1.0, 1.0], image), [16.0 / 96.0, 0.0, 80.0 / 96.0, 1.0]);
        // 101×50: (101 - 50) // 2 = 25, not 25.5.
        let image = Size::new(101, 50);
        assert_eq!(Frame::PaddedSquare.to_frame([0.0, 0.0, 1.0, 1.0], image)[1], 25.0 / 101.0);
        assert_eq!(Frame::PaddedSquare.to_frame([0.1, 0.2, 0.3, 0.4], Size::new(50, 50)), [0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn smart_resize_matches_qwen_vl_utils() {
        // Values from qwen-vl-utils 0.0.14's smart_resize(height, width, 28) with its defaults.
        let r = Resize::QWEN2_5_VL;
        assert_eq!(smart_resize(Size::new(640, 480), r), Size::new(644, 476));
        assert_eq!(smart_resize(Size::new(64, 64), r), Size::new(56, 56));
        // 42 / 28 = 1.5 rounds to 2 (even), 70 / 28 = 2.5 rounds to 2 (even).
        assert_eq!(smart_resize(Size::new(42, 70), r), Size::new(56, 56));
        assert_eq!(smart_resize(Size::new(10, 10), r), Size::new(56, 56));
        assert_eq!(smart_resize(Size::new(4000, 3000), r), Size::new(4004, 2996));
    }

    proptest! {
        #[test]
        fn frames_round_trip(w in 1u32..5000, h in 1u32..5000, a in 0.0f32..1.0, b in 0.0f32..1.0) {
            let image = Size::new(w, h);
            for frame in [Frame::Displayed, Frame::PaddedSquare, Frame::Resized(Resize::QWEN2_5_VL)] {
                let there = frame.to_frame([a, b, a, b], image);
                prop_assert!(there.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)), "{:?}", there);
                let back = frame.to_image(there, image);
                for (x, y) in back.iter().zip([a, b, a, b]) {
                    prop_assert!((x - y).abs() < 1e-3, "{:?} {:?}", back, [a, b]);
                }
            }
            let s = smart_resize(image, Resize::QWEN2_5_VL);
            prop_assert!(s.width.is_multiple_of(28) && s.height.is_multiple_of(28));
        }
    }
}

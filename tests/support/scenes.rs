//! Scenes for the refiner's fixture models: filled rectangles and ellipses of distinct palette colours on grey,
//! with their exact boxes and masks as ground truth.

use image::{Rgb, RgbImage};

pub const PALETTE: [(&str, [u8; 3]); 5] = [
    ("red", [230, 25, 75]),
    ("green", [60, 180, 75]),
    ("blue", [0, 130, 200]),
    ("yellow", [255, 225, 25]),
    ("purple", [145, 30, 180]),
];
pub const GREY: [u8; 3] = [128, 128, 128];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Rectangle,
    Ellipse,
}

/// A filled shape of palette colour `colour` inside `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub colour: usize,
    pub kind: Kind,
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl Shape {
    pub fn contains(&self, x: u32, y: u32) -> bool {
        if x < self.x0 || x >= self.x1 || y < self.y0 || y >= self.y1 {
            return false;
        }
        match self.kind {
            Kind::Rectangle => true,
            Kind::Ellipse => {
                let (cx, cy) = ((self.x0 + self.x1) as f64 / 2.0, (self.y0 + self.y1) as f64 / 2.0);
                let (rx, ry) = ((self.x1 - self.x0) as f64 / 2.0, (self.y1 - self.y0) as f64 / 2.0);
                let (dx, dy) = ((x as f64 + 0.5 - cx) / rx, (y as f64 + 0.5 - cy) / ry);
                dx * dx + dy * dy <= 1.0
            }
        }
    }

    pub fn name(&self) -> &'static str {
        PALETTE[self.colour].0
    }

    /// The tight box of the drawn pixels, normalized to the scene size.
    pub fn normalized_box(&self, w: u32, h: u32) -> [f32; 4] {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for y in self.y0..self.y1 {
            for x in self.x0..self.x1 {
                if self.contains(x, y) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
        }
        [x0 as f32 / w as f32, y0 as f32 / h as f32, x1 as f32 / w as f32, y1 as f32 / h as f32]
    }
}

#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// `shapes` given as (colour, kind, fractions x0, y0, x1, y1 of the scene).
    pub fn new(width: u32, height: u32, shapes: &[(usize, Kind, [f32; 4])]) -> Scene {
        let px = |f: f32, side: u32| ((f * side as f32).round() as u32).min(side);
        Scene {
            width,
            height,
            shapes: shapes
                .iter()
                .map(|(colour, kind, f)| Shape {
                    colour: *colour,
                    kind: *kind,
                    x0: px(f[0], width),
                    y0: px(f[1], height),
                    x1: px(f[2], width),
                    y1: px(f[3], height),
                })
                .collect(),
        }
    }

    pub fn render(&self) -> RgbImage {
        RgbImage::from_fn(self.width, self.height, |x, y| {
            let colour = self.shapes.iter().rev().find(|s| s.contains(x, y)).map_or(GREY, |s| PALETTE[s.colour].1);
            Rgb(colour)
        })
    }

    /// Row-major mask of what is visible of shape `i` (later shapes cover earlier ones).
    pub fn visible_mask(&self, i: usize) -> Vec<bool> {
        let mut mask = vec![false; (self.width * self.height) as usize];
        for y in 0..self.height {
            for x in 0..self.width {
                let top = self.shapes.iter().rposition(|s| s.contains(x, y));
                mask[(y * self.width + x) as usize] = top == Some(i);
            }
        }
        mask
    }

    /// The palette names present, in palette order (the tagger's tag order).
    pub fn tags(&self) -> Vec<&'static str> {
        let mut colours: Vec<usize> = self.shapes.iter().map(|s| s.colour).collect();
        colours.sort();
        colours.dedup();
        colours.into_iter().map(|c| PALETTE[c].0).collect()
    }
}

pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

pub fn mask_iou(a: &[bool], b: &[bool]) -> f32 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 { 1.0 } else { inter as f32 / union as f32 }
}

/// Decodes COCO RLE counts (pycocotools' format) into a row-major mask. Written apart from the operators' `Rle` on
/// purpose: the tests judge that encoder's output, so a bug shared by its encoder and decoder must not cancel out.
pub fn decode_rle(size: [i32; 2], counts: &str) -> Vec<bool> {
    let (h, w) = (size[0] as usize, size[1] as usize);
    let bytes = counts.as_bytes();
    let mut runs: Vec<i64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k) = (0i64, 0);
        loop {
            let c = i64::from(bytes[p]) - 48;
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
            x += runs[runs.len() - 2];
        }
        runs.push(x);
    }
    let mut mask = vec![false; h * w];
    let mut i = 0usize;
    for (n, run) in runs.iter().enumerate() {
        for j in i..i + *run as usize {
            if n % 2 == 1 {
                mask[(j % h) * w + j / h] = true;
            }
        }
        i += *run as usize;
    }
    mask
}

/// A scene as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("PNG encoding of an in-memory image");
    out
}

//! Annotated thumbnails, for people to judge the refiner's work: the image scaled down, each object's mask tinted
//! in its label's colour, its box outlined in the same colour, and `label score` written on the box, in DejaVu
//! Sans Bold (shipped in `assets/`, so nothing depends on the fonts of the machine).
//!
//! Colours are a fixed function of the label ([`label_colour`]): the same tag has the same colour on every card
//! and every page.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::geometry::Rle;

/// The font labels are written in.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-Bold.ttf");

/// Twenty colours that stay apart from each other on photos (Sasha Trubetskoy's list, without white and black).
const PALETTE: [[u8; 3]; 20] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
    [170, 110, 40],
    [255, 250, 200],
    [128, 0, 0],
    [170, 255, 195],
    [128, 128, 0],
    [255, 215, 180],
    [0, 0, 128],
    [128, 128, 128],
];

/// Box outlines are this many pixels wide, drawn inside the box.
pub const LINE: u32 = 3;
/// How much of a mask pixel is the label's colour.
pub const TINT: f32 = 0.45;

/// The colour of `label`, the same wherever it is drawn.
pub fn label_colour(label: &str) -> [u8; 3] {
    // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

/// One object to draw: its box as fractions of the image, its mask (at the image's size), and its caption.
pub struct Annotation<'a> {
    pub label: &'a str,
    pub score: f32,
    pub bbox: [f32; 4],
    pub mask: Option<&'a Rle>,
}

/// Why a thumbnail could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    #[error("the image cannot be decoded: {0}")]
    Decode(String),
    #[error("a mask is unreadable: {0}")]
    Mask(String),
}

/// The size of a thumbnail of `width` × `height` whose longer side is `side`: small images are enlarged too, so
/// that every card is as legible.
pub fn thumbnail_size(width: u32, height: u32, side: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    let scale = side as f64 / longest as f64;
    (((width as f64 * scale).round() as u32).max(1), ((height as f64 * scale).round() as u32).max(1))
}

/// The encoded `image` decoded and scaled so its longer side is `max_side`, with every annotation drawn on it: masks first
/// (so outlines stay visible), then boxes, then labels.
pub fn annotate(image: &[u8], annotations: &[Annotation<'_>], max_side: u32) -> Result<RgbImage, DrawError> {
    let decoded = image::load_from_memory(image).map_err(|e| DrawError::Decode(e.to_string()))?.to_rgb8();
    let (tw, th) = thumbnail_size(decoded.width(), decoded.height(), max_side);
    let mut thumb = if (tw, th) == decoded.dimensions() {
        decoded
    } else {
        image::imageops::resize(&decoded, tw, th, image::imageops::FilterType::Triangle)
    };
    for a in annotations {
        if let Some(rle) = a.mask {
            tint_mask(&mut thumb, rle, label_colour(a.label))?;
        }
    }
    for a in annotations {
        outline(&mut thumb, a.bbox, label_colour(a.label));
    }
    let font = FontRef::try_from_slice(FONT).map_err(|e| DrawError::Decode(format!("the label font: {e}")))?;
    for a in annotations {
        label(&mut thumb, &font, a);
    }
    Ok(thumb)
}

/// The pixel rectangle `[x0, y0, x1, y1)` of a fractional box on an image of `w` × `h`, at least one pixel.
pub fn pixel_box(bbox: [f32; 4], w: u32, h: u32) -> [u32; 4] {
    let at = |v: f32, side: u32| ((v.clamp(0.0, 1.0) * side as f32).round() as u32).min(side);
    let (x0, y0) = (at(bbox[0], w).min(w.saturating_sub(1)), at(bbox[1], h).min(h.saturating_sub(1)));
    let (x1, y1) = (at(bbox[2], w).max(x0 + 1), at(bbox[3], h).max(y0 + 1));
    [x0, y0, x1.min(w), y1.min(h)]
}

fn tint_mask(thumb: &mut RgbImage, rle: &Rle, colour: [u8; 3]) -> Result<(), DrawError> {
    let mask = rle.decode().map_err(|e| DrawError::Mask(e.to_string()))?;
    let [mh, mw] = rle.size;
    if mh == 0 || mw == 0 {
        return Ok(());
    }
    let (tw, th) = thumb.dimensions();
    for ty in 0..th {
        // The mask pixel under the centre of the thumbnail pixel.
        let my = (((ty as f64 + 0.5) * mh as f64 / th as f64) as u32).min(mh - 1);
        for tx in 0..tw {
            let mx = (((tx as f64 + 0.5) * mw as f64 / tw as f64) as u32).min(mw - 1);
            if mask[(my * mw + mx) as usize] {
                blend(&mut thumb.get_pixel_mut(tx, ty).0, colour, TINT);
            }
        }
    }
    Ok(())
}

/// `pixel` moved `amount` (0 to 1) of the way to `colour`.
fn blend(pixel: &mut [u8; 3], colour: [u8; 3], amount: f32) {
    for (p, c) in pixel.iter_mut().zip(colour) {
        *p = (*p as f32 * (1.0 - amount) + c as f32 * amount).round() as u8;
    }
}

fn outline(thumb: &mut RgbImage, bbox: [f32; 4], colour: [u8; 3]) {
    let (w, h) = thumb.dimensions();
    let [x0, y0, x1, y1] = pixel_box(bbox, w, h);
    let line = LINE.min((x1 - x0).div_ceil(2)).min((y1 - y0).div_ceil(2)).max(1);
    for y in y0..y1 {
        for x in x0..x1 {
            let edge = x < x0 + line || x + line >= x1 || y < y0 + line || y + line >= y1;
            if edge {
                thumb.put_pixel(x, y, Rgb(colour));
            }
        }
    }
}

/// Writes `label score` on a filled tab of the label's colour at the box's top-left corner, above the box when
/// there is room, else inside it.
fn label(thumb: &mut RgbImage, font: &FontRef<'_>, a: &Annotation<'_>) {
    let (w, h) = thumb.dimensions();
    let [x0, y0, ..] = pixel_box(a.bbox, w, h);
    let text = format!("{} {:.2}", a.label, a.score);
    let scale = PxScale::from(12.0);
    let scaled = font.as_scaled(scale);
    let text_width: f32 = text.chars().map(|c| scaled.h_advance(font.glyph_id(c))).sum();
    let (tab_w, tab_h) = (text_width.ceil() as u32 + 4, scaled.height().ceil() as u32 + 2);
    let top = if y0 >= tab_h { y0 - tab_h } else { y0 + LINE };
    let colour = label_colour(a.label);
    for y in top..(top + tab_h).min(h) {
        for x in x0..(x0 + tab_w).min(w) {
            thumb.put_pixel(x, y, Rgb(colour));
        }
    }
    // Dark text on light colours, light text on dark ones.
    let luma = 0.299 * colour[0] as f32 + 0.587 * colour[1] as f32 + 0.114 * colour[2] as f32;
    let ink = if luma > 140.0 { [0u8, 0, 0] } else { [255u8, 255, 255] };
    let mut caret = x0 as f32 + 2.0;
    let baseline = top as f32 + 1.0 + scaled.ascent();
    for c in text.chars() {
        let glyph = font.glyph_id(c).with_scale_and_position(scale, ab_glyph::point(caret, baseline));
        caret += scaled.h_advance(font.glyph_id(c));
        let Some(outlined) = font.outline_glyph(glyph) else { continue };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let (x, y) = (bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64);
            if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                return;
            }
            blend(&mut thumb.get_pixel_mut(x as u32, y as u32).0, ink, coverage);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grey_png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, Rgb([128, 128, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn boxes_are_outlined_and_masks_tinted_in_the_label_colour() {
        let (w, h) = (800u32, 400u32);
        let mut mask = vec![false; (w * h) as usize];
        for y in 100..300 {
            for x in 200..600 {
                mask[(y * w + x) as usize] = true;
            }
        }
        let rle = Rle::encode(&mask, h, w).unwrap();
        let bbox = [0.25, 0.25, 0.75, 0.75];
        let annotations = [Annotation { label: "dog", score: 0.9, bbox, mask: Some(&rle) }];
        let thumb = annotate(&grey_png(w, h), &annotations, 400).unwrap();
        assert_eq!(thumb.dimensions(), (400, 200));
        let colour = label_colour("dog");
        let [x0, y0, x1, y1] = pixel_box(bbox, 400, 200);
        // The bottom and right edges carry no label: every pixel of them is the colour.
        for x in x0..x1 {
            assert_eq!(thumb.get_pixel(x, y1 - 1).0, colour, "bottom edge at x={x}");
        }
        for y in y0..y1 {
            assert_eq!(thumb.get_pixel(x1 - 1, y).0, colour, "right edge at y={y}");
        }
        let centre = thumb.get_pixel((x0 + x1) / 2, (y0 + y1) / 2).0;
        let tinted = |grey: u8, c: u8| (grey as f32 * (1.0 - TINT) + c as f32 * TINT).round() as u8;
        assert_eq!(centre, [0, 1, 2].map(|i| tinted(128, colour[i])));
        assert_eq!(thumb.get_pixel(5, 195).0, [128, 128, 128], "outside the mask stays as it was");
        // The label tab sits above the box.
        assert_eq!(thumb.get_pixel(x0 + 1, y0 - 2).0.len(), 3);
    }

    #[test]
    fn colours_are_stable_per_label() {
        assert_eq!(label_colour("dog"), label_colour("dog"));
        let distinct: std::collections::HashSet<[u8; 3]> =
            ["red", "green", "blue", "yellow", "purple"].iter().map(|l| label_colour(l)).collect();
        assert!(distinct.len() >= 4);
    }

    #[test]
    fn a_corrupt_image_is_an_error() {
        assert!(matches!(annotate(b"not an image", &[], 100), Err(DrawError::Decode(_))));
    }

    proptest! {
        #[test]
        fn pixel_boxes_stay_inside_the_image(
            b in proptest::array::uniform4(-0.5f32..1.5), w in 1u32..500, h in 1u32..500
        ) {
            let [x0, y0, x1, y1] = pixel_box(b, w, h);
            prop_assert!(x0 < x1 && y0 < y1 && x1 <= w && y1 <= h);
        }

        #[test]
        fn thumbnails_fit_and_keep_the_shape(w in 1u32..5000, h in 1u32..5000, max in 16u32..1024) {
            let (tw, th) = thumbnail_size(w, h, max);
            prop_assert!(tw.max(th) <= max && tw >= 1 && th >= 1);
            // The shape is kept to within a pixel of rounding.
            prop_assert!((tw as f64 / max as f64 - w as f64 / w.max(h) as f64).abs() <= 1.0 / max as f64 + 1e-9);
        }
    }
}

//! Image preprocessing shared by the model families: resizing as the reference code resizes (PIL's bilinear, with
//! antialiasing when shrinking: `fast_image_resize`'s convolution follows Pillow's algorithm), normalization into
//! planar `[3, H, W]` f32 tensors, and zero padding.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::ModelError;

/// ImageNet mean and std, on 0..1 values (RAM, Grounding DINO).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation of RGB in `[0, 1]`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// SAM's pixel mean and std, on 0..255 values.
pub const SAM_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// SAM's `pixel_std`, of RGB in `0..=255`.
pub const SAM_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// `image` resized to `w`×`h` with PIL's bilinear filter (the image itself when already that size).
pub fn resize_bilinear(image: &RgbImage, w: u32, h: u32) -> Result<RgbImage, ModelError> {
    if image.dimensions() == (w, h) {
        return Ok(image.clone());
    }
    let fail = |e: &dyn std::fmt::Display| ModelError::Preprocess(format!("resize to {w}x{h}: {e}"));
    let src =
        ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3).map_err(|e| fail(&e))?;
    let mut dst = Image::new(w.max(1), h.max(1), PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| fail(&e))?;
    RgbImage::from_raw(w.max(1), h.max(1), dst.into_vec()).ok_or_else(|| fail(&"short buffer"))
}

/// Planar `[3, out_h, out_w]` values `(pixel * scale - mean) / std` of `image` placed at the top left, zeros
/// elsewhere (padding after normalization, as SAM pads).
pub fn to_planar(
    image: &RgbImage,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let plane = out_w * out_h;
    let mut out = vec![0f32; 3 * plane];
    let raw = image.as_raw();
    for y in 0..h.min(out_h) {
        for x in 0..w.min(out_w) {
            let p = (y * w + x) * 3;
            let o = y * out_w + x;
            for c in 0..3 {
                out[c * plane + o] = (f32::from(raw[p + c]) * scale - mean[c]) / std[c];
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
    fn planar_normalizes_and_pads() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 51]));
        let out = to_planar(&img, 1.0 / 255.0, [0.0; 3], [1.0; 3], 3, 2);
        assert_eq!(out.len(), 18);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[2], 0.0, "padding");
        assert_eq!(out[6], 0.0);
        assert!((out[12] - 0.2).abs() < 1e-6);
    }
}

//! The committed tiny real-architecture graphs (`examples/models/real-tiny`) and the photos beside them.

use std::path::PathBuf;

/// The folder of the tiny graphs, their models files and photos.
pub fn dir() -> PathBuf {
    super::repo_root().join("examples/models/real-tiny")
}

/// The displayed (width, height) of each committed photo.
pub const PHOTOS: [(&str, u32, u32); 6] = [
    ("landscape", 640, 426),
    ("panorama", 4000, 1000),
    ("portrait", 480, 640),
    ("rotated", 400, 600),
    ("square", 512, 512),
    ("tiny", 64, 64),
];

/// An object of photo `key` (displayed `w`×`h`) of a run of `models`: its box inside the image, its mask at the
/// displayed size, and its area that of the mask's pixels.
pub fn check_object(models: &str, key: &str, (w, h): (u32, u32), object: &lyrics_schemas::ObjectRow) {
    let [x1, y1, x2, y2] = object.bbox;
    assert!(
        0.0 <= x1 && x1 <= x2 && x2 <= 1.0 && 0.0 <= y1 && y1 <= y2 && y2 <= 1.0,
        "{models}/{key}: {:?}",
        object.bbox
    );
    let mask = object.mask.as_ref().unwrap_or_else(|| panic!("{models}/{key}: a box without a mask"));
    assert_eq!(mask.size, [h as i32, w as i32], "{models}/{key}: mask size");
    let pixels = super::scenes::decode_rle(mask.size, &mask.counts);
    assert_eq!(object.mask_area, Some(pixels.iter().filter(|p| **p).count() as i64), "{models}/{key}: area");
}

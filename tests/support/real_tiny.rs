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

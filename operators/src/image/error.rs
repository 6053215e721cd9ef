//! Why an image was rejected.

/// Why an input image was rejected. [`ImageError::kind`] is the short cause stored in the `errors` table.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty file (zero bytes)")]
    Empty,
    #[error("file of {size} bytes exceeds the limit of {limit} bytes")]
    TooManyBytes { size: u64, limit: u64 },
    #[error("not an image: the bytes match no known image format")]
    NotAnImage,
    #[error("unsupported image format {0} (supported: jpeg, png, webp, gif, bmp)")]
    Unsupported(String),
    #[error("decompression bomb: {width}x{height} = {pixels} pixels exceeds the limit of {limit} pixels")]
    Bomb { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error(
        "resizing the {width}x{height} image gives {out_width}x{out_height} = {pixels} pixels, more than \
         decode.max_pixels = {limit}"
    )]
    ResizeTooLarge { width: u32, height: u32, out_width: u32, out_height: u32, pixels: u64, limit: u64 },
    #[error("degenerate image of {width}x{height} pixels")]
    Degenerate { width: u32, height: u32 },
    #[error("truncated image: {0}")]
    Truncated(String),
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("cannot encode the {format} image: {message}")]
    Encode { format: &'static str, message: String },
}

impl ImageError {
    /// Short, stable cause for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty",
            ImageError::TooManyBytes { .. } => "too_large",
            ImageError::NotAnImage => "not_an_image",
            ImageError::Unsupported(_) => "unsupported_format",
            ImageError::Bomb { .. } => "decompression_bomb",
            ImageError::ResizeTooLarge { .. } => "resize_too_large",
            ImageError::Degenerate { .. } => "degenerate",
            ImageError::Truncated(_) => "truncated",
            ImageError::Corrupt(_) => "corrupt",
            ImageError::Encode { .. } => "encode",
        }
    }

    pub(crate) fn from_image(err: image::ImageError) -> ImageError {
        match &err {
            image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                ImageError::Truncated(err.to_string())
            }
            image::ImageError::Unsupported(_) => ImageError::Unsupported(err.to_string()),
            _ => {
                let text = err.to_string();
                if text.to_ascii_lowercase().contains("eof") || text.contains("end of") {
                    ImageError::Truncated(text)
                } else {
                    ImageError::Corrupt(text)
                }
            }
        }
    }
}

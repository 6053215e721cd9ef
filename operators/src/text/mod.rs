//! Text from the refiner's objects: the grounded formats trainers read (a registry, one file per format, each in its
//! trainer's coordinate frame) with their parsers, captions grounded span by span, and instruction conversations for
//! fine-tuning, kept as pieces that an export can write in another trainer's convention.

mod formats;
mod grounding;
mod instruct;
mod phrasings;
mod pieces;
mod rows;

pub use formats::{
    BoxFormat, Frame, GroundedFormat, GroundedObject, Resize, Size, format_box, format_objects, from_patch_indices,
    parse_objects, quantize_1000, smart_resize, to_patch_indices,
};
pub use grounding::{Span, caption_pieces, ground_caption, inline_caption};
pub use instruct::{Candidate, Conversation, InstructOptions, Task, Turn, build_conversations, filter_objects};
pub use pieces::{
    BOX_PLACEHOLDER, Piece, REF_PLACEHOLDER, Template, TemplateError, render, render_with, to_template,
    turns_from_template,
};
pub use rows::{TextOptions, image_file_name, texts};

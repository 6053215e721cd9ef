//! Text from the refiner's objects: the grounded formats trainers read (Lyrics, Qwen-VL, Kosmos-2, Shikra) with their
//! parsers, captions grounded span by span, and instruction conversations for fine-tuning.

mod formats;
mod grounding;
mod instruct;
mod phrasings;
mod rows;

pub use formats::{
    GroundedFormat, GroundedObject, format_box, format_objects, from_patch_indices, parse_objects, quantize_1000,
    to_patch_indices,
};
pub use grounding::{Span, ground_caption, inline_caption};
pub use instruct::{Candidate, Conversation, InstructOptions, Task, Turn, build_conversations, filter_objects};
pub use rows::{TextOptions, image_file_name, texts};

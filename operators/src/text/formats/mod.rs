//! The grounded text formats, as a registry: each format is one file of this folder implementing [`BoxFormat`]
//! (its name, its coordinate [`Frame`], how it writes a phrase with its boxes, how it reads them back, its
//! precision), and one line of the `registry!` list below. The `pretrain` columns, `[text] formats`,
//! `[text.instruct] box_format`, the SQL function `box_format` and the gallery all come from that list, so a new
//! format is one new file and one registration line (and, since the `pretrain` table's layout lives in the schemas
//! crate, its column name in `lyrics_schemas::FORMAT_COLUMNS`).
//!
//! Boxes come in as `[x1, y1, x2, y2]` fractions of the displayed image. [`GroundedFormat`] clamps them into
//! `[0, 1]`, orders their corners, puts the objects in reading order (top to bottom, then left to right), maps them
//! into the format's frame and hands them to the format as fractions of the frame together with the frame's size in
//! pixels; parsing maps them back. `parse(format(x))` returns `x` within the format's precision.

mod frame;

pub use frame::{Frame, Resize, Size, smart_resize};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A phrase and a box, as the formats carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundedObject {
    pub phrase: String,
    pub bbox: [f32; 4],
}

/// One grounded text convention. Boxes handed to these methods are fractions of the format's frame, clamped to
/// `[0, 1]` with ordered corners; `frame` is the frame's size in pixels.
pub trait BoxFormat: Send + Sync + 'static {
    /// The format's name: its `pretrain` column, its spelling in the job file and in SQL.
    fn name(&self) -> &'static str;
    /// The frame its coordinates are measured in.
    fn frame(&self) -> Frame {
        Frame::Displayed
    }
    /// The largest coordinate error a round trip may introduce, as a fraction of the frame's side.
    fn precision(&self, frame: Size) -> f32;
    /// Whether the objects are named by their tag rather than their phrase (the Lyrics Q-Former input).
    fn names_objects_by_label(&self) -> bool {
        false
    }
    /// One box, without a phrase.
    fn box_text(&self, b: [f32; 4], frame: Size) -> String;
    /// A phrase followed by its boxes, as a grounded caption inlines them.
    fn span_text(&self, phrase: &str, boxes: &[[f32; 4]], frame: Size) -> String;
    /// The objects, in reading order, with the caption where the format carries it. By default the boxes of one
    /// phrase follow that phrase once, and the phrases are joined by a space.
    fn objects_text(&self, objects: &[GroundedObject], caption: Option<&str>, frame: Size) -> String {
        let _ = caption;
        grouped(objects).iter().map(|(p, boxes)| self.span_text(p, boxes, frame)).collect::<Vec<_>>().join(" ")
    }
    /// The phrases and boxes of a text in this format, as the trainer reads them.
    fn parse(&self, text: &str, frame: Size) -> Vec<GroundedObject>;
}

/// Declares the format modules and lists them, in the order of the `pretrain` columns.
macro_rules! registry {
    ($($module:ident :: $format:ident),* $(,)?) => {
        $(mod $module;)*
        static REGISTRY: &[GroundedFormat] = &[$(GroundedFormat(&$module::$format)),*];
    };
}

registry! {
    lyrics::Lyrics,
    qwen::Qwen,
    kosmos2::Kosmos2,
    shikra::Shikra,
    qwen2_vl::Qwen2Vl,
    qwen2_5_vl::Qwen25Vl,
    qwen3_vl::Qwen3Vl,
    internvl::InternVl,
    minigpt_v2::MiniGptV2,
    paligemma::PaliGemma,
    florence2::Florence2,
    llava::Llava,
    ferret::Ferret,
}

pub use kosmos2::{from_patch_indices, to_patch_indices};
pub use qwen::quantize_1000;

/// A registered format.
#[derive(Clone, Copy)]
pub struct GroundedFormat(&'static dyn BoxFormat);

impl GroundedFormat {
    /// The Lyrics Q-Former input, the default instruction format.
    pub const LYRICS: GroundedFormat = GroundedFormat(&lyrics::Lyrics);
    /// Kosmos-2's, the default inline format of grounded captions.
    pub const KOSMOS2: GroundedFormat = GroundedFormat(&kosmos2::Kosmos2);

    /// Every registered format, in the order of the `pretrain` columns.
    pub fn all() -> &'static [GroundedFormat] {
        REGISTRY
    }

    /// The names of every registered format.
    pub fn names() -> Vec<&'static str> {
        REGISTRY.iter().map(|f| f.name()).collect()
    }

    /// The format named `name`.
    pub fn named(name: &str) -> Option<GroundedFormat> {
        REGISTRY.iter().copied().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn frame(self) -> Frame {
        self.0.frame()
    }

    /// The frame's size in pixels for an image of `image`.
    pub fn frame_size(self, image: Size) -> Size {
        self.0.frame().size(image)
    }

    /// Whether the objects are named by their tag rather than their phrase.
    pub fn names_objects_by_label(self) -> bool {
        self.0.names_objects_by_label()
    }

    /// The largest error a round trip may introduce, as fractions `[x, y]` of the displayed image's sides.
    pub fn tolerance(self, image: Size) -> [f32; 2] {
        let frame = self.frame_size(image);
        let p = self.0.precision(frame);
        match self.frame() {
            // A fraction of the square is `side / w` fractions of the image's width.
            Frame::PaddedSquare => {
                [p * frame.width as f32 / image.width as f32, p * frame.height as f32 / image.height as f32]
            }
            // A resize scales each axis, so a fraction of the frame is the same fraction of the image.
            Frame::Displayed | Frame::Resized(_) => [p, p],
        }
    }

    fn to_frame(self, b: [f32; 4], image: Size) -> [f32; 4] {
        unit(self.frame().to_frame(unit(b), image))
    }

    /// One box in the format's own notation (no phrase).
    pub fn format_box(self, b: [f32; 4], image: Size) -> String {
        self.0.box_text(self.to_frame(b, image), self.frame_size(image))
    }

    /// A phrase followed by its boxes, as a grounded caption inlines them.
    pub fn format_span(self, phrase: &str, boxes: &[[f32; 4]], image: Size) -> String {
        let boxes: Vec<[f32; 4]> = boxes.iter().map(|b| self.to_frame(*b, image)).collect();
        self.0.span_text(phrase, &boxes, self.frame_size(image))
    }

    /// The objects (and, for `lyrics`, the caption), in reading order.
    pub fn format_objects(self, objects: &[GroundedObject], caption: Option<&str>, image: Size) -> String {
        let ordered: Vec<GroundedObject> = reading_order(objects)
            .into_iter()
            .map(|o| GroundedObject { bbox: self.to_frame(o.bbox, image), phrase: o.phrase })
            .collect();
        self.0.objects_text(&ordered, caption, self.frame_size(image))
    }

    /// Reads back what [`GroundedFormat::format_objects`] wrote, boxes in fractions of the displayed image.
    pub fn parse_objects(self, text: &str, image: Size) -> Vec<GroundedObject> {
        self.0
            .parse(text, self.frame_size(image))
            .into_iter()
            .map(|o| GroundedObject { bbox: self.frame().to_image(o.bbox, image), phrase: o.phrase })
            .collect()
    }
}

impl PartialEq for GroundedFormat {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for GroundedFormat {}

impl std::hash::Hash for GroundedFormat {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl std::fmt::Debug for GroundedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for GroundedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for GroundedFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GroundedFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        GroundedFormat::named(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown grounded format `{name}`, expected one of {}",
                GroundedFormat::names().iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// One box in `format`'s notation, for an image of `image`.
pub fn format_box(format: GroundedFormat, b: [f32; 4], image: Size) -> String {
    format.format_box(b, image)
}

/// The objects (and, for `lyrics`, the caption) in `format`, for an image of `image`.
pub fn format_objects(
    format: GroundedFormat,
    objects: &[GroundedObject],
    caption: Option<&str>,
    image: Size,
) -> String {
    format.format_objects(objects, caption, image)
}

/// Reads back what [`format_objects`] wrote (the caption of `lyrics` is left out).
pub fn parse_objects(format: GroundedFormat, text: &str, image: Size) -> Vec<GroundedObject> {
    format.parse_objects(text, image)
}

fn clamp01(v: f32) -> f32 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// The box clamped into the unit square with ordered corners.
fn unit(b: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = b.map(clamp01);
    [x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)]
}

/// Groups boxes by phrase, keeping the order of first appearance.
fn grouped(objects: &[GroundedObject]) -> Vec<(&str, Vec<[f32; 4]>)> {
    let mut groups: Vec<(&str, Vec<[f32; 4]>)> = Vec::new();
    for o in objects {
        match groups.iter_mut().find(|(p, _)| *p == o.phrase) {
            Some((_, boxes)) => boxes.push(o.bbox),
            None => groups.push((o.phrase.as_str(), vec![o.bbox])),
        }
    }
    groups
}

/// Objects in reading order: top to bottom, then left to right, then by phrase.
fn reading_order(objects: &[GroundedObject]) -> Vec<GroundedObject> {
    let mut sorted: Vec<GroundedObject> =
        objects.iter().map(|o| GroundedObject { phrase: o.phrase.clone(), bbox: unit(o.bbox) }).collect();
    sorted.sort_by(|a, b| {
        a.bbox[1]
            .total_cmp(&b.bbox[1])
            .then(a.bbox[0].total_cmp(&b.bbox[0]))
            .then(a.phrase.cmp(&b.phrase))
            .then(a.bbox[2].total_cmp(&b.bbox[2]))
    });
    sorted
}

/// The numbers of `text` separated by `separator`, or `None` when one is not a number.
fn numbers(text: &str, separator: char) -> Option<Vec<f32>> {
    text.split(separator).map(|n| n.trim().parse::<f32>().ok()).collect()
}

/// Four numbers as a box.
fn four(v: &[f32]) -> Option<[f32; 4]> {
    (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
}

#[cfg(test)]
mod tests;

//! One refined sample's text products: its `pretrain` row (the grounded formats, the grounded caption and its spans)
//! and its `instruct` conversations, as the text stage writes them.

use lyrics_schemas::{FrameRow, InstructRow, PretrainRow, SampleRow, SpanRow};

use super::{
    Candidate, Frame, GroundedFormat, GroundedObject, InstructOptions, Piece, Size, build_conversations,
    ground_caption, inline_caption, to_template,
};

/// What the text stage writes.
#[derive(Debug, Clone)]
pub struct TextOptions {
    pub formats: Vec<GroundedFormat>,
    pub inline_format: GroundedFormat,
    pub instruct: InstructOptions,
}

/// The file name an image is exported under: the key with the extension of its format.
pub fn image_file_name(key: &str, format: &str) -> String {
    let ext = match format {
        "jpeg" => "jpg",
        other => other,
    };
    format!("{key}.{ext}")
}

/// The pretrain row and instruction rows of one refined sample.
pub fn texts(row: &SampleRow, options: &TextOptions) -> (PretrainRow, Vec<InstructRow>) {
    let objects = row.objects.as_deref().unwrap_or_default();
    let caption = row.caption.as_deref();
    let by_phrase: Vec<GroundedObject> =
        objects.iter().map(|o| GroundedObject { phrase: o.phrase.clone(), bbox: o.bbox }).collect();
    // The Lyrics input names each object by the tag its phrase maps back to.
    let by_label: Vec<GroundedObject> =
        objects.iter().map(|o| GroundedObject { phrase: o.label.clone(), bbox: o.bbox }).collect();
    let image = Size::new(row.width.max(1) as u32, row.height.max(1) as u32);
    // Registry order, whatever the order of `[text] formats`, so the columns and the row agree.
    let enabled: Vec<GroundedFormat> =
        GroundedFormat::all().iter().copied().filter(|f| options.formats.contains(f)).collect();
    let formats = enabled
        .iter()
        .map(|f| {
            let named = if f.names_objects_by_label() { &by_label } else { &by_phrase };
            (f.name().to_string(), f.format_objects(named, caption, image))
        })
        .collect();
    let frames = enabled
        .iter()
        .filter(|f| f.frame() != Frame::Displayed)
        .map(|f| {
            let size = f.frame_size(image);
            FrameRow { format: f.name().to_string(), width: size.width as i32, height: size.height as i32 }
        })
        .collect();
    let spans = caption.map(|c| ground_caption(c, &by_phrase)).unwrap_or_default();
    let pretrain = PretrainRow {
        key: row.key.clone(),
        image: row.image.clone(),
        caption: row.caption.clone(),
        formats,
        frames,
        grounded_caption: caption.map(|c| inline_caption(c, &spans, options.inline_format, image)),
        caption_spans: spans
            .iter()
            .flat_map(|s| {
                s.boxes.iter().map(move |b| SpanRow {
                    start: s.start as i32,
                    end: s.end as i32,
                    phrase: s.phrase.clone(),
                    bbox: *b,
                })
            })
            .collect(),
        objects: objects.to_vec(),
    };
    let tags: Vec<String> = row.tags.iter().flatten().map(|t| t.tag.clone()).collect();
    let candidates: Vec<Candidate> = objects
        .iter()
        .map(|o| Candidate { label: o.label.clone(), phrase: o.phrase.clone(), score: o.score, bbox: o.bbox })
        .collect();
    let file = image_file_name(&row.key, &row.format);
    let instruct = build_conversations(&row.key, caption, &tags, &candidates, &options.instruct)
        .into_iter()
        .map(|c| {
            let pieces: Vec<Vec<Piece>> = c.turns.iter().map(|t| t.pieces.clone()).collect();
            let (template, refs, boxes) = match to_template(&pieces) {
                Some(t) => (Some(t.texts), t.refs, t.boxes),
                None => (None, Vec::new(), Vec::new()),
            };
            InstructRow {
                id: c.id,
                key: row.key.clone(),
                image: file.clone(),
                task: c.task.name().to_string(),
                language: c.language.to_string(),
                conversations: c
                    .turns
                    .iter()
                    .map(|t| (t.from.to_string(), t.text(options.instruct.box_format, image)))
                    .collect(),
                template,
                refs,
                boxes,
            }
        })
        .collect();
    (pretrain, instruct)
}

//! One refined sample's text products: its `pretrain` row (the grounded formats, the grounded caption and its spans)
//! and its `instruct` conversations, as the text stage writes them.

use lyrics_schemas::{InstructRow, PretrainRow, SampleRow, SpanRow};

use super::{
    Candidate, GroundedFormat, GroundedObject, InstructOptions, build_conversations, format_objects,
    ground_caption, inline_caption,
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
    let wanted = |f: GroundedFormat| options.formats.contains(&f);
    let text = |f: GroundedFormat| -> Option<String> {
        wanted(f)
            .then(|| format_objects(f, if f == GroundedFormat::Lyrics { &by_label } else { &by_phrase }, caption))
    };
    let spans = caption.map(|c| ground_caption(c, &by_phrase)).unwrap_or_default();
    let pretrain = PretrainRow {
        key: row.key.clone(),
        image: row.image.clone(),
        caption: row.caption.clone(),
        lyrics: text(GroundedFormat::Lyrics),
        qwen: text(GroundedFormat::Qwen),
        kosmos2: text(GroundedFormat::Kosmos2),
        shikra: text(GroundedFormat::Shikra),
        grounded_caption: caption.map(|c| inline_caption(c, &spans, options.inline_format)),
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
    let image = image_file_name(&row.key, &row.format);
    let instruct = build_conversations(&row.key, caption, &tags, &candidates, &options.instruct)
        .into_iter()
        .map(|c| InstructRow {
            id: c.id,
            key: row.key.clone(),
            image: image.clone(),
            task: c.task.name().to_string(),
            language: c.language.to_string(),
            conversations: c.turns.into_iter().map(|t| (t.from.to_string(), t.value)).collect(),
        })
        .collect();
    (pretrain, instruct)
}

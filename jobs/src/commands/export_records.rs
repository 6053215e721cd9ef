//! One `instruct` row as a record of each export format: LLaVA's `{id, image, conversations}`; ms-swift's grounding
//! format (`messages` with `<ref-object>` and `<bbox>` placeholders, `images`, and `objects` holding the phrases and
//! the boxes as `norm1` fractions, which ms-swift's template for each model writes in that model's convention); and
//! InternVL's fine-tuning JSONL (`id`, `image`, `width`, `height`, `conversations`, boxes as InternVL writes them:
//! `<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>` on a 0–1000 grid).

use lyrics_operators::text::{GroundedFormat, Piece, Size, TemplateError, render_with, turns_from_template};
use lyrics_schemas::InstructRow;
use serde_json::{Value, json};

/// Why a conversation is left out of an export that needs its template.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("its text holds ms-swift's <ref-object> or <bbox>, or it was written before schema version 3")]
    NoTemplate,
    #[error("its template does not match its phrases and boxes: {0}")]
    Template(#[from] TemplateError),
}

/// LLaVA's record: `image` is the file name under the export's `images/`.
pub fn llava(row: &InstructRow, image: &str) -> Value {
    let conversations: Vec<Value> =
        row.conversations.iter().map(|(f, v)| json!({ "from": f, "value": v })).collect();
    json!({ "id": row.id, "image": image, "conversations": conversations })
}

/// ms-swift's role of a LLaVA turn.
fn role(from: &str) -> &str {
    match from {
        "human" => "user",
        "gpt" => "assistant",
        other => other,
    }
}

/// ms-swift's grounding record. The boxes are fractions of the image as stored (orientation applied), which is
/// the image ms-swift loads: `bbox_type: "norm1"` lets its template scale them to each model's own frame.
pub fn swift(row: &InstructRow, image: &str) -> Result<Value, RecordError> {
    let template = row.template.as_ref().ok_or(RecordError::NoTemplate)?;
    // Read back to check that placeholders and values agree: ms-swift fails a whole dataset on one that does not.
    turns_from_template(template, &row.refs, &row.boxes)?;
    let messages: Vec<Value> = row
        .conversations
        .iter()
        .zip(template)
        .map(|((from, _), content)| {
            // The templates put their own image tokens where `<image>` is, and the text straight after them, as
            // ms-swift's examples write it (`<image>Describe the image.`): LLaVA's newline is not theirs.
            let content = match content.strip_prefix("<image>\n") {
                Some(rest) => format!("<image>{rest}"),
                None => content.clone(),
            };
            json!({ "role": role(from), "content": content })
        })
        .collect();
    let boxes: Vec<[f64; 4]> = row.boxes.iter().map(|b| b.map(shortest)).collect();
    Ok(json!({
        "messages": messages,
        "images": [image],
        "objects": { "ref": row.refs, "bbox": boxes, "bbox_type": "norm1" },
    }))
}

/// The `f64` whose shortest decimal is `v`'s (`0.05`, not the `0.04999999701976776` that widening gives), so the
/// JSON says what the table holds.
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// InternVL's record, on an image of `size` (its `width` and `height`).
pub fn internvl(row: &InstructRow, image: &str, size: Size) -> Result<Value, RecordError> {
    let template = row.template.as_ref().ok_or(RecordError::NoTemplate)?;
    let turns = turns_from_template(template, &row.refs, &row.boxes)?;
    let format = GroundedFormat::named("internvl").unwrap_or(GroundedFormat::LYRICS);
    let conversations: Vec<Value> = row
        .conversations
        .iter()
        .zip(&turns)
        .map(|((from, _), pieces)| {
            let value = render_with(pieces, &mut |piece| match piece {
                Piece::Text(t) => t.clone(),
                // InternVL's referring questions name the object inside `<ref>` (its RefCOCO prompts).
                Piece::Ref(p) => format!("<ref>{p}</ref>"),
                Piece::Box(b) => format.format_box(*b, size),
                Piece::Span(p, boxes) => format.format_span(p, boxes, size),
            });
            json!({ "from": from, "value": value })
        })
        .collect();
    Ok(json!({
        "id": row.id,
        "image": image,
        "width": size.width,
        "height": size.height,
        "conversations": conversations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> InstructRow {
        InstructRow {
            id: "k-rec".into(),
            key: "k".into(),
            image: "k.jpg".into(),
            task: "rec".into(),
            language: "en".into(),
            conversations: vec![
                ("human".into(), "<image>\nWhere is the dog?".into()),
                ("gpt".into(), "[0.100, 0.200, 0.300, 0.400], [0.500, 0.500, 0.900, 0.900]".into()),
            ],
            template: Some(vec!["<image>\nWhere is the <ref-object>?".into(), "<bbox>, <bbox>".into()]),
            refs: vec!["dog".into()],
            boxes: vec![[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]],
        }
    }

    #[test]
    fn swift_records_carry_the_template_and_its_objects() {
        let record = swift(&row(), "images/k.jpg").unwrap();
        assert_eq!(
            record["messages"][0],
            json!({ "role": "user", "content": "<image>Where is the <ref-object>?" })
        );
        assert_eq!(record["messages"][1], json!({ "role": "assistant", "content": "<bbox>, <bbox>" }));
        assert_eq!(record["objects"]["ref"], json!(["dog"]));
        assert_eq!(record["objects"]["bbox_type"], "norm1");
        assert_eq!(record["objects"]["bbox"][0].to_string(), "[0.1,0.2,0.3,0.4]");
        let mut bad = row();
        bad.boxes.pop();
        assert!(matches!(swift(&bad, "k.jpg"), Err(RecordError::Template(_))));
        bad.template = None;
        assert!(matches!(swift(&bad, "k.jpg"), Err(RecordError::NoTemplate)));
    }

    #[test]
    fn internvl_records_write_refs_and_boxes_as_internvl_does() {
        let record = internvl(&row(), "k.jpg", Size::new(640, 480)).unwrap();
        assert_eq!(record["width"], 640);
        assert_eq!(record["conversations"][0]["value"], "<image>\nWhere is the <ref>dog</ref>?");
        assert_eq!(
            record["conversations"][1]["value"],
            "<box>[[100, 200, 300, 400]]</box>, <box>[[500, 500, 900, 900]]</box>"
        );
    }
}

//! COCO captions JSON: `images` (id, file_name, ...) and `annotations` (image_id, caption). One item per image,
//! with every caption of the image kept in file order; images without captions are kept with none. The file is
//! parsed once per process and shared by its units, which are ranges of its images.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::ObjectStoreExt;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fetch::{ImageRefItem, fetch_all, parent};
use super::{Emitter, ReadContext};
use crate::PipelineError;
use crate::item::ItemError;
use crate::plan::WorkUnit;
use crate::store::Location;

#[derive(Debug, Deserialize)]
pub(crate) struct CocoFile {
    pub images: Vec<Map<String, Value>>,
    #[serde(default)]
    pub annotations: Vec<Map<String, Value>>,
}

/// A parsed COCO file: its images, and the captions of each image id.
#[derive(Debug)]
pub(crate) struct Coco {
    pub images: Vec<Map<String, Value>>,
    captions: HashMap<String, Vec<String>>,
}

/// Parsed COCO files by URI, so the units of one file parse it once.
#[derive(Debug, Default)]
pub(crate) struct CocoCache(Mutex<HashMap<String, Arc<Coco>>>);

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) async fn load(at: &Location) -> Result<Coco, PipelineError> {
    let uri = at.uri();
    let bytes = at
        .store
        .get(&at.path)
        .await
        .map_err(|e| PipelineError::store(&uri, e))?
        .bytes()
        .await
        .map_err(|e| PipelineError::store(&uri, e))?;
    let file: CocoFile = serde_json::from_slice(&bytes).map_err(|e| {
        PipelineError::input(&uri, format!("not a COCO captions file (`images` and `annotations`): {e}"))
    })?;
    let mut captions: HashMap<String, Vec<String>> = HashMap::new();
    for annotation in &file.annotations {
        let (Some(image_id), Some(Value::String(caption))) =
            (annotation.get("image_id").and_then(id_text), annotation.get("caption"))
        else {
            continue;
        };
        captions.entry(image_id).or_default().push(caption.clone());
    }
    Ok(Coco { images: file.images, captions })
}

pub(crate) async fn read(ctx: &ReadContext, unit: &WorkUnit, emitter: &mut Emitter) -> Result<(), PipelineError> {
    let location = ctx.input.at(object_store::path::Path::from(unit.object.as_str()));
    let uri = location.uri();
    let cached = ctx.coco.0.lock().ok().and_then(|cache| cache.get(&uri).cloned());
    let coco = match cached {
        Some(coco) => coco,
        None => {
            let coco = Arc::new(load(&location).await?);
            if let Ok(mut cache) = ctx.coco.0.lock() {
                cache.insert(uri.clone(), coco.clone());
            }
            coco
        }
    };
    let [start, end] = unit.range;
    let images = coco.images.get(start as usize..(end as usize).min(coco.images.len())).unwrap_or_default();
    let mut items = Vec::with_capacity(images.len());
    for (n, image) in images.iter().enumerate() {
        let index = start + n as u64;
        let id = image.get("id").and_then(id_text);
        let file_name = image.get("file_name").and_then(Value::as_str).map(str::to_string);
        let key = file_name
            .as_deref()
            .map(super::file_stem)
            .or_else(|| id.clone())
            .unwrap_or_else(|| format!("image-{index}"));
        let mut meta = image.clone();
        meta.remove("file_name");
        let error =
            file_name.is_none().then(|| ItemError::new("read", "missing_image", "the COCO image has no file_name"));
        items.push(ImageRefItem {
            key,
            source: format!("{uri}#images[{index}]"),
            reference: file_name,
            inline: None,
            captions: id.and_then(|id| coco.captions.get(&id).cloned()).unwrap_or_default(),
            meta: (!meta.is_empty()).then(|| Value::Object(meta).to_string()),
            error,
        });
    }
    let base = location.at(parent(&location.path));
    fetch_all(ctx, &base, items, emitter).await
}

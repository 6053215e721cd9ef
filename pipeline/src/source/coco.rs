//! COCO captions JSON: `images` (id, file_name, ...) and `annotations` (image_id, caption). One item per image,
//! with every caption of the image kept in file order; images without captions are kept with none. A caption
//! whose `image_id` names no image of `images` belongs to no item: it is counted as a warning `orphan_caption`,
//! once per file (by the file's first unit). A file's units are ranges of its images; the source keeps the last
//! file it parsed, so the consecutive units of one file parse it once, and memory holds one parsed file at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fetch::{ImageRefItem, fetch_all, parent};
use super::{Emitter, Source, SourceContext};
use crate::PipelineError;
use crate::item::ItemError;
use crate::plan::{InputFormat, WorkUnit};
use crate::store::Location;

/// COCO captions files: units of `rows_per_unit` images.
pub(crate) struct CocoSource {
    pub ctx: SourceContext,
    pub cache: CocoCache,
}

impl Source for CocoSource {
    fn format(&self) -> InputFormat {
        InputFormat::Coco
    }

    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>> {
        Box::pin(async move {
            let mut units = Vec::new();
            for o in objects {
                let at = self.ctx.input.at(o.location.clone());
                let images = load(&at).await?.images.len() as u64;
                let per = self.ctx.options.rows_per_unit.max(1);
                let mut start = 0;
                while start < images {
                    let end = (start + per).min(images);
                    units.push(WorkUnit {
                        id: 0,
                        object: o.location.to_string(),
                        range: [start, end],
                        first_row: start,
                        files: vec![],
                    });
                    start = end;
                }
            }
            Ok(units)
        })
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    fn read<'a>(
        &'a self,
        unit: &'a WorkUnit,
        emitter: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(read(&self.ctx, &self.cache, unit, emitter))
    }
}

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
    /// Captions whose `image_id` names no image (or is missing), and the first such id.
    orphans: (u64, Option<String>),
}

/// The last parsed COCO file and its URI: units of one file are consecutive, so one entry is all it takes.
#[derive(Debug, Default)]
pub(crate) struct CocoCache(Mutex<Option<(String, Arc<Coco>)>>);

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
    let ids: std::collections::HashSet<String> =
        file.images.iter().filter_map(|image| image.get("id").and_then(id_text)).collect();
    let mut captions: HashMap<String, Vec<String>> = HashMap::new();
    let mut orphans = (0, None);
    for annotation in &file.annotations {
        let Some(Value::String(caption)) = annotation.get("caption") else { continue };
        match annotation.get("image_id").and_then(id_text) {
            Some(image_id) if ids.contains(&image_id) => {
                captions.entry(image_id).or_default().push(caption.clone())
            }
            image_id => {
                orphans.0 += 1;
                if orphans.1.is_none() {
                    orphans.1 = Some(image_id.unwrap_or_else(|| "(none)".into()));
                }
            }
        }
    }
    Ok(Coco { images: file.images, captions, orphans })
}

async fn read(
    ctx: &SourceContext,
    cache: &CocoCache,
    unit: &WorkUnit,
    emitter: &mut Emitter,
) -> Result<(), PipelineError> {
    let location = ctx.input.at(object_store::path::Path::from(unit.object.as_str()));
    let uri = location.uri();
    let cached =
        cache.0.lock().ok().and_then(|slot| slot.as_ref().filter(|(u, _)| *u == uri).map(|(_, coco)| coco.clone()));
    let coco = match cached {
        Some(coco) => coco,
        None => {
            // Drop the previous file before parsing the next, so two are never held at once.
            if let Ok(mut slot) = cache.0.lock() {
                *slot = None;
            }
            let coco = Arc::new(load(&location).await?);
            if let Ok(mut slot) = cache.0.lock() {
                *slot = Some((uri.clone(), coco.clone()));
            }
            coco
        }
    };
    let [start, end] = unit.range;
    if let (0, (count @ 1.., first)) = (start, &coco.orphans) {
        let first = first.as_deref().unwrap_or_default();
        emitter.warn_many(
            "orphan_caption",
            *count,
            &format!("{uri}: {count} captions name an image_id that is not in images[] (the first: {first}); they are dropped"),
        );
    }
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

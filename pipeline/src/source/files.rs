//! Loose image files under a prefix, each with an optional `.txt` caption and `.json` metadata of the same stem.
//! The key is the stem's path relative to the input prefix. A sidecar that cannot be read (missing, too large,
//! not JSON) makes its item an error row: a caption silently lost would be a silent drop.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::fetch::{ImageRefItem, get_limited};
use super::{Emitter, Source, SourceContext};
use crate::PipelineError;
use crate::item::{ItemError, RawItem, SourceRecord};
use crate::plan::{IMAGE_EXTENSIONS, InputFormat, WorkUnit, extension};

/// Loose files: units of `files_per_unit` images, each with its sidecars.
pub(crate) struct LooseFiles {
    pub ctx: SourceContext,
}

impl Source for LooseFiles {
    fn format(&self) -> InputFormat {
        InputFormat::Images
    }

    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>> {
        Box::pin(async move {
            // Group by stem so an image and its sidecars land in one unit, then cut every `files_per_unit` items.
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for o in objects {
                let path = o.location.as_ref();
                let stem = path.rsplit_once('.').map_or(path, |(stem, _)| stem);
                groups.entry(stem.to_string()).or_default().push(path.to_string());
            }
            let per = self.ctx.options.files_per_unit.max(1) as usize;
            let groups: Vec<Vec<String>> = groups.into_values().collect();
            Ok(groups
                .chunks(per)
                .map(|chunk| WorkUnit {
                    id: 0,
                    object: String::new(),
                    range: [0, 0],
                    first_row: 0,
                    files: chunk.iter().flatten().cloned().collect(),
                })
                .collect())
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
        Box::pin(read(&self.ctx, unit, emitter))
    }
}

async fn read(ctx: &SourceContext, unit: &WorkUnit, emitter: &mut Emitter) -> Result<(), PipelineError> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &unit.files {
        let stem = file.rsplit_once('.').map_or(file.as_str(), |(stem, _)| stem);
        groups.entry(stem.to_string()).or_default().push(file.clone());
    }
    let prefix = ctx.input.path.as_ref().to_string();
    let prefix = prefix.as_str();
    let limit = ctx.options.max_image_bytes;
    let storage = ctx.registry.options();
    let concurrency = ctx.registry.options().concurrency.max(1);
    let mut results = futures::stream::iter(groups.into_iter().map(|(stem, files)| async move {
        let key = stem.strip_prefix(prefix).unwrap_or(&stem).trim_start_matches('/').to_string();
        let image = files.iter().find(|f| extension(f).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())));
        let sidecar =
            |ext: &str| files.iter().find(|f| extension(f).as_deref() == Some(ext)).map(|f| f.to_string());
        let Some(image) = image else {
            let source = ctx.input.uri_of(&Path::from(files[0].as_str()));
            let error =
                ItemError::new("read", "missing_image", format!("{} has no image file beside it", files[0]));
            return Ok(SourceRecord::error(&key, &source, error));
        };
        let at = ctx.input.at(Path::from(image.as_str()));
        let source = at.uri();
        let bytes = match get_limited(&at, limit, storage).await? {
            Ok(bytes) => bytes,
            Err(error) => return Ok(SourceRecord::error(&key, &source, error)),
        };
        let mut item = ImageRefItem { key, source, ..ImageRefItem::default() };
        if let Some(txt) = sidecar("txt") {
            match get_limited(&ctx.input.at(Path::from(txt.as_str())), limit, storage).await? {
                Ok(text) => {
                    let caption = String::from_utf8_lossy(&text).trim().to_string();
                    item.captions = (!caption.is_empty()).then_some(caption).into_iter().collect();
                }
                Err(error) => return Ok(refused(&item, &txt, error)),
            }
        }
        if let Some(json) = sidecar("json") {
            let text = match get_limited(&ctx.input.at(Path::from(json.as_str())), limit, storage).await? {
                Ok(text) => text,
                Err(error) => return Ok(refused(&item, &json, error)),
            };
            match serde_json::from_slice::<serde_json::Value>(&text) {
                Ok(value) => item.meta = Some(value.to_string()),
                Err(e) => {
                    let error = ItemError::new("read", "bad_metadata", format!("{json} is not valid JSON: {e}"));
                    return Ok(SourceRecord::error(&item.key, &item.source, error));
                }
            }
        }
        let name = image.rsplit('/').next().map(str::to_string);
        Ok::<_, PipelineError>(SourceRecord::Raw(RawItem {
            key: item.key,
            source: item.source,
            image_path: name,
            bytes,
            captions: item.captions,
            meta: item.meta,
        }))
    }))
    .buffered(concurrency);
    while let Some(record) = results.next().await {
        emitter.push(record?).await?;
    }
    Ok(())
}

/// The error row of an item whose sidecar `file` could not be read.
fn refused(item: &ImageRefItem, file: &str, error: ItemError) -> SourceRecord {
    let error = ItemError::new("read", "bad_sidecar", format!("the sidecar {file} is refused: {}", error.message));
    SourceRecord::error(&item.key, &item.source, error)
}

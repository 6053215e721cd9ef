//! Loose image files under a prefix, each with an optional `.txt` caption and `.json` metadata of the same stem.
//! The key is the stem's path relative to the input prefix.

use std::collections::BTreeMap;

use futures::StreamExt;

use object_store::path::Path;

use super::fetch::{ImageRefItem, get_limited};
use super::{Emitter, ReadContext};
use crate::PipelineError;
use crate::item::{ItemError, RawItem, Record};
use crate::plan::{IMAGE_EXTENSIONS, WorkUnit, extension};

pub(crate) async fn read(ctx: &ReadContext, unit: &WorkUnit, emitter: &mut Emitter) -> Result<(), PipelineError> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &unit.files {
        let stem = file.rsplit_once('.').map_or(file.as_str(), |(stem, _)| stem);
        groups.entry(stem.to_string()).or_default().push(file.clone());
    }
    let prefix = ctx.input.path.as_ref().to_string();
    let prefix = prefix.as_str();
    let limit = ctx.options.max_image_bytes;
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
            return Ok(Record::error(&key, &source, error));
        };
        let at = ctx.input.at(Path::from(image.as_str()));
        let source = at.uri();
        let bytes = match get_limited(&at, limit).await? {
            Ok(bytes) => bytes,
            Err(error) => return Ok(Record::error(&key, &source, error)),
        };
        let mut item = ImageRefItem { key, source, ..ImageRefItem::default() };
        if let Some(txt) = sidecar("txt")
            && let Ok(text) = get_limited(&ctx.input.at(Path::from(txt.as_str())), limit).await?
        {
            let caption = String::from_utf8_lossy(&text).trim().to_string();
            item.captions = (!caption.is_empty()).then_some(caption).into_iter().collect();
        }
        if let Some(json) = sidecar("json")
            && let Ok(text) = get_limited(&ctx.input.at(Path::from(json.as_str())), limit).await?
        {
            match serde_json::from_slice::<serde_json::Value>(&text) {
                Ok(value) => item.meta = Some(value.to_string()),
                Err(e) => {
                    let error = ItemError::new("read", "bad_metadata", format!("{json} is not valid JSON: {e}"));
                    return Ok(Record::error(&item.key, &item.source, error));
                }
            }
        }
        let name = image.rsplit('/').next().map(str::to_string);
        Ok::<_, PipelineError>(Record::Raw(RawItem {
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

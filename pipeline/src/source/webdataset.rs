//! WebDataset tar shards, streamed: the tar is parsed on a blocking thread straight from the GET response body (or
//! the local file, see [`super::body`]), members grouped into samples by key (the member path up to the first `.`
//! of its file name), as the `webdataset` library groups them.
//!
//! Hostile members become error rows, never files: nothing is ever written to disk, but a member whose path climbs
//! out (`../`) or is absolute is refused by name all the same, as are links, devices and members above the size
//! limit; the members of one sample refused together make one error row. A shard cut short keeps every sample
//! completed before the damage, and the damage is one error row. A second image member under one key is a
//! warning (the first is kept).

use std::collections::HashSet;
use std::io::Read;
use std::path::Component;

use futures::future::BoxFuture;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::body::Body;
use super::{Emitter, Source, SourceContext, whole_object};
use crate::PipelineError;
use crate::item::{ItemError, RawItem, SourceRecord};
use crate::plan::{InputFormat, WorkUnit};

/// WebDataset tar shards: one unit per shard.
pub(crate) struct WebDataset {
    pub ctx: SourceContext,
}

impl Source for WebDataset {
    fn format(&self) -> InputFormat {
        InputFormat::Webdataset
    }

    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>> {
        Box::pin(async move { Ok(objects.iter().map(whole_object).collect()) })
    }

    fn read<'a>(
        &'a self,
        unit: &'a WorkUnit,
        emitter: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(read(&self.ctx, unit, emitter))
    }
}

const IMAGE_EXTS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "bmp"];

async fn read(ctx: &SourceContext, unit: &WorkUnit, emitter: &mut Emitter) -> Result<(), PipelineError> {
    let location = ctx.input.at(object_store::path::Path::from(unit.object.as_str()));
    let uri = location.uri();
    let result = location.store.get(&location.path).await.map_err(|e| PipelineError::store(&uri, e))?;
    let reader = Body::new(result);
    // Remember the store's own failure, so a parse error caused by a broken connection fails the unit (and is
    // retried by a rerun) instead of being blamed on the shard.
    let store_failure = reader.failure();
    let max_bytes = ctx.options.max_image_bytes;
    let mut shard = ShardReader { uri: uri.clone(), max_bytes, current: None, last_rejected: None };
    let batch_emitter = std::mem::replace(emitter, emitter.detached());
    let (returned, outcome) = tokio::task::spawn_blocking(move || {
        let mut emitter = batch_emitter;
        let outcome = shard.read_all(reader, &mut emitter);
        (emitter, outcome)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("tar reader of {uri} panicked: {e}")))?;
    *emitter = returned;
    match outcome {
        Ok(()) => Ok(()),
        Err(ReadFailure::Closed) => Err(super::Closed.into()),
        Err(ReadFailure::Archive { message, damaged }) => {
            if let Some(store_error) = store_failure.lock().ok().and_then(|slot| slot.clone()) {
                return Err(PipelineError::store(&uri, store_error));
            }
            // The shard itself is malformed: what was read stands, the rest is one error row, under the key of the
            // sample the damage cut short (else the shard's name).
            let (key, source) = match damaged {
                Some((key, member)) => (key, format!("{uri}#{member}")),
                None => (super::file_stem(&unit.object), uri.clone()),
            };
            let error = ItemError::new(
                "read",
                "corrupt_archive",
                format!("malformed tar, the rest of the shard is unreadable: {message}"),
            );
            emitter.push(SourceRecord::error(&key, &source, error)).await?;
            Ok(())
        }
    }
}

enum ReadFailure {
    Closed,
    /// The archive is malformed from here on; `damaged` is the key and first member of the sample it cut short.
    Archive {
        message: String,
        damaged: Option<(String, String)>,
    },
}

impl From<super::Closed> for ReadFailure {
    fn from(_: super::Closed) -> Self {
        ReadFailure::Closed
    }
}

/// The members of one sample, gathered while they are consecutive.
#[derive(Default)]
struct Group {
    key: String,
    image: Option<(String, Vec<u8>)>,
    caption: Option<String>,
    meta: Option<Vec<u8>>,
    extensions: HashSet<String>,
    first_member: String,
    problem: Option<ItemError>,
}

struct ShardReader {
    uri: String,
    max_bytes: u64,
    current: Option<Group>,
    /// The key of the last refused member, so the other members of that sample add no second row.
    last_rejected: Option<String>,
}

impl ShardReader {
    fn read_all(&mut self, reader: impl Read, emitter: &mut Emitter) -> Result<(), ReadFailure> {
        let mut archive = tar::Archive::new(reader);
        let entries =
            archive.entries().map_err(|e| ReadFailure::Archive { message: e.to_string(), damaged: None })?;
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    // Damage between members: the sample in progress is whole, so it stands.
                    self.finish(emitter)?;
                    return Err(ReadFailure::Archive { message: e.to_string(), damaged: None });
                }
            };
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let entry_type = entry.header().entry_type();
            if entry_type.is_dir() {
                continue;
            }
            if !(entry_type.is_file() || entry_type == tar::EntryType::Continuous) {
                let error = ItemError::new(
                    "read",
                    "unsupported_member",
                    format!("tar member {raw_path} is not a regular file ({entry_type:?})"),
                );
                self.reject(&raw_path, error, emitter)?;
                continue;
            }
            let unsafe_path = entry.path().map_or(true, |p| {
                p.components()
                    .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)))
            });
            if unsafe_path {
                let error = ItemError::new(
                    "read",
                    "unsafe_path",
                    format!("tar member path {raw_path} escapes the archive"),
                );
                self.reject(&raw_path, error, emitter)?;
                continue;
            }
            let Some((key, ext)) = split_member(&raw_path) else {
                let error =
                    ItemError::new("read", "no_key", format!("tar member {raw_path} has no key.extension name"));
                self.reject(&raw_path, error, emitter)?;
                continue;
            };
            let starts_new = match &self.current {
                Some(group) => group.key != key || group.extensions.contains(&ext),
                None => true,
            };
            if starts_new {
                self.finish(emitter)?;
                self.last_rejected = None;
                self.current = Some(Group { key: key.clone(), first_member: raw_path.clone(), ..Group::default() });
            }
            let size = entry.header().size().unwrap_or(0);
            let Some(group) = self.current.as_mut() else { continue };
            group.extensions.insert(ext.clone());
            let wanted = IMAGE_EXTS.contains(&ext.as_str()) || ext == "txt" || ext == "json";
            if !wanted || group.problem.is_some() {
                continue;
            }
            if size > self.max_bytes {
                group.problem = Some(ItemError::new(
                    "read",
                    "too_large",
                    format!("tar member {raw_path} has {size} bytes, over the limit of {} bytes", self.max_bytes),
                ));
                continue;
            }
            let mut data = Vec::with_capacity(size as usize);
            if let Err(e) = entry.read_to_end(&mut data) {
                // Damage inside a member: its sample is incomplete, and becomes the damage's one error row.
                let damaged = self.current.take().map(|g| (g.key, g.first_member));
                return Err(ReadFailure::Archive { message: e.to_string(), damaged });
            }
            if IMAGE_EXTS.contains(&ext.as_str()) {
                match &group.image {
                    None => group.image = Some((raw_path, data)),
                    Some((first, _)) => {
                        let message = format!(
                            "{}#{raw_path}: a second image member under the key {}; {first} is kept",
                            self.uri, group.key
                        );
                        emitter.warn("second_image", &message);
                    }
                }
            } else if ext == "txt" {
                let text = String::from_utf8_lossy(&data).trim().to_string();
                group.caption = (!text.is_empty()).then_some(text);
            } else {
                group.meta = Some(data);
            }
        }
        self.finish(emitter)?;
        emitter.flush_blocking()?;
        Ok(())
    }

    /// Refuses `member`: one error row per sample, however many of its members are refused.
    fn reject(&mut self, member: &str, error: ItemError, emitter: &mut Emitter) -> Result<(), ReadFailure> {
        self.finish(emitter)?;
        let key = split_member(member).map_or_else(|| member.to_string(), |(key, _)| key);
        if self.last_rejected.as_deref() == Some(key.as_str()) {
            return Ok(());
        }
        emitter.push_blocking(SourceRecord::error(&key, &format!("{}#{member}", self.uri), error))?;
        self.last_rejected = Some(key);
        Ok(())
    }

    /// Turns the group in progress into one record.
    fn finish(&mut self, emitter: &mut Emitter) -> Result<(), ReadFailure> {
        let Some(group) = self.current.take() else { return Ok(()) };
        let member = group.image.as_ref().map_or(group.first_member.as_str(), |(name, _)| name.as_str());
        let source = format!("{}#{member}", self.uri);
        let record = if let Some(problem) = group.problem {
            SourceRecord::error(&group.key, &source, problem)
        } else if let Some((name, bytes)) = group.image {
            match group.meta.map(|m| validate_meta(&m)).transpose() {
                Ok(meta) => SourceRecord::Raw(RawItem {
                    key: group.key,
                    source,
                    image_path: Some(name),
                    bytes,
                    captions: group.caption.into_iter().collect(),
                    meta,
                }),
                Err(error) => SourceRecord::error(&group.key, &source, error),
            }
        } else {
            let error = ItemError::new(
                "read",
                "missing_image",
                format!("sample {} has no image member (.jpg, .jpeg, .png, .webp)", group.key),
            );
            SourceRecord::error(&group.key, &source, error)
        };
        emitter.push_blocking(record)?;
        Ok(())
    }
}

fn validate_meta(data: &[u8]) -> Result<String, ItemError> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(value) => Ok(value.to_string()),
        Err(e) => Err(ItemError::new("read", "bad_metadata", format!("the .json member is not valid JSON: {e}"))),
    }
}

/// `dir/000123.seg.png` → (`dir/000123`, `seg.png`): the key runs to the first dot of the file name.
fn split_member(path: &str) -> Option<(String, String)> {
    let (dir, base) = match path.rsplit_once('/') {
        Some((dir, base)) => (Some(dir), base),
        None => (None, path),
    };
    let (stem, ext) = base.split_once('.')?;
    if stem.is_empty() || ext.is_empty() {
        return None;
    }
    let key = match dir {
        Some(dir) => format!("{}/{stem}", dir.trim_start_matches("./")),
        None => stem.to_string(),
    };
    Some((key, ext.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn members_split_at_the_first_dot_of_the_name() {
        assert_eq!(split_member("000001.jpg"), Some(("000001".into(), "jpg".into())));
        assert_eq!(split_member("a.b/000001.seg.PNG"), Some(("a.b/000001".into(), "seg.png".into())));
        assert_eq!(split_member("./x/1.txt"), Some(("x/1".into(), "txt".into())));
        assert_eq!(split_member(".hidden"), None);
        assert_eq!(split_member("noext"), None);
    }

    proptest! {
        #[test]
        fn split_never_panics_and_keeps_the_name(path in "[a-z./]{0,20}") {
            if let Some((key, ext)) = split_member(&path) {
                prop_assert!(!key.is_empty() && !ext.is_empty());
                prop_assert!(path.to_ascii_lowercase().ends_with(&ext));
            }
        }
    }
}

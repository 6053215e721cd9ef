//! WebDataset tar shards, streamed: the tar is parsed on a blocking thread straight from the GET response body (or
//! the local file, see [`super::body`]), members grouped into samples by key (the member path up to the first `.`
//! of its file name), as the `webdataset` library groups them.
//!
//! Hostile members become error rows, never files: nothing is ever written to disk, but a member whose path climbs
//! out (`../`) or is absolute is refused by name all the same, as are links, devices and members above the size
//! limit; the members of one sample refused together make one error row. Every sample is exactly one row: a
//! second image member under one key is a counted warning (the first is kept), and so are members without an
//! image that come back to a key after another sample's members (`d.jpg`, `e.txt`, `d.txt`: `split_sample`). A
//! key that comes back with an image of its own is a second item, which the emitter makes a `duplicate_key` row.
//!
//! A shard cut short, or malformed, keeps every sample completed before the damage, and the damage is one error
//! row. A sample is complete only once the next sample's header has been read (its members are consecutive, but
//! nothing says how many there are), so the sample in progress at the damage is never kept half-read: the error row
//! carries its key. A shard must end with its end-of-archive blocks: one that simply stops, even on a 512-byte
//! boundary between members, is cut short.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Read;
use std::path::Component;
use std::rc::Rc;

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
    let mut shard = ShardReader::new(uri.clone(), max_bytes);
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
            emitter.push(damage_row(&uri, &unit.object, &message, damaged)).await?;
            Ok(())
        }
    }
}

/// The shard itself is malformed: what was read stands, the rest is one error row, under the key of the sample the
/// damage cut short (else the shard's name).
fn damage_row(uri: &str, object: &str, message: &str, damaged: Option<(String, String)>) -> SourceRecord {
    let (key, source) = match damaged {
        Some((key, member)) => (key, format!("{uri}#{member}")),
        None => (super::file_stem(object), uri.to_string()),
    };
    let error = ItemError::new(
        "read",
        "corrupt_archive",
        format!("malformed tar, the rest of the shard is unreadable: {message}"),
    );
    SourceRecord::error(&key, &source, error)
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
    /// The first refusal among the sample's members: the whole sample becomes this one error row.
    problem: Option<ItemError>,
    /// The key's row was pushed before: these members come after another sample's, or repeat an extension.
    recurring: bool,
}

struct ShardReader {
    uri: String,
    max_bytes: u64,
    current: Option<Group>,
    /// The keys whose row has been pushed: members without an image that come back to one of them are a counted
    /// warning, never a second row for the key.
    finished: HashSet<String>,
}

/// Notes whether the reader ran out of bytes. The `tar` crate takes a clean end of input between members for the
/// end of the archive, so a shard cut on a 512-byte boundary would otherwise look whole; a whole shard ends with
/// its zero blocks, after which the crate reads no further.
struct EofWatch<R> {
    inner: R,
    hit_eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof.set(true);
        }
        Ok(n)
    }
}

/// What a member is, once its header is read.
enum Member {
    /// A regular file of a sample: its key and extension.
    File { key: String, ext: String },
    /// A member refused by name, under the key it would belong to.
    Refused { key: String, error: ItemError },
}

impl ShardReader {
    fn new(uri: String, max_bytes: u64) -> Self {
        ShardReader { uri, max_bytes, current: None, finished: HashSet::new() }
    }

    fn read_all(&mut self, reader: impl Read, emitter: &mut Emitter) -> Result<(), ReadFailure> {
        let max_bytes = self.max_bytes;
        let hit_eof = Rc::new(Cell::new(false));
        let mut archive = tar::Archive::new(EofWatch { inner: reader, hit_eof: hit_eof.clone() });
        let entries = archive.entries().map_err(|e| self.damage(e.to_string()))?;
        for entry in entries {
            // Damage between members: the sample in progress may have had more members past it, so it is not kept.
            let mut entry = entry.map_err(|e| self.damage(e.to_string()))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let entry_type = entry.header().entry_type();
            if entry_type.is_dir() {
                continue;
            }
            let (key, ext, refusal) = match self.classify(&entry, &raw_path, entry_type) {
                Member::File { key, ext } => (key, ext, None),
                Member::Refused { key, error } => (key, String::new(), Some(error)),
            };
            let group = self.group_for(&key, &ext, &raw_path, emitter)?;
            if let Some(error) = refusal {
                group.problem.get_or_insert(error);
                continue;
            }
            group.extensions.insert(ext.clone());
            let wanted = IMAGE_EXTS.contains(&ext.as_str()) || ext == "txt" || ext == "json";
            if !wanted || group.problem.is_some() {
                continue;
            }
            let size = entry.header().size().unwrap_or(0);
            if size > max_bytes {
                group.problem = Some(ItemError::new(
                    "read",
                    "too_large",
                    format!("tar member {raw_path} has {size} bytes, over the limit of {max_bytes} bytes"),
                ));
                continue;
            }
            let mut data = Vec::with_capacity(size.min(max_bytes) as usize);
            // A member cut short reads short without an error; the watch tells, and so does the next header.
            if let Err(e) = entry.read_to_end(&mut data) {
                return Err(self.damage(e.to_string()));
            }
            if hit_eof.get() {
                return Err(self.damage(format!("tar member {raw_path} is cut short")));
            }
            let Some(group) = self.current.as_mut() else { continue };
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
        if hit_eof.get() {
            return Err(self.damage("the shard ends without its end-of-archive blocks (cut short)".into()));
        }
        self.finish(emitter)?;
        emitter.flush_blocking()?;
        Ok(())
    }

    /// The damage as a failure: the sample in progress is given up, and its key carries the one error row.
    fn damage(&mut self, message: String) -> ReadFailure {
        let damaged = self.current.take().map(|g| (g.key, g.first_member));
        ReadFailure::Archive { message, damaged }
    }

    /// A member's key and extension, or why it is refused: links and devices, paths that climb out, names with
    /// no `key.extension`.
    fn classify<R: Read>(&self, entry: &tar::Entry<R>, raw_path: &str, entry_type: tar::EntryType) -> Member {
        let key_of = |path: &str| split_member(path).map_or_else(|| path.to_string(), |(key, _)| key);
        if !(entry_type.is_file() || entry_type == tar::EntryType::Continuous) {
            let error = ItemError::new(
                "read",
                "unsupported_member",
                format!("tar member {raw_path} is not a regular file ({entry_type:?})"),
            );
            return Member::Refused { key: key_of(raw_path), error };
        }
        let unsafe_path = entry.path().map_or(true, |p| {
            p.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)))
        });
        if unsafe_path {
            let error =
                ItemError::new("read", "unsafe_path", format!("tar member path {raw_path} escapes the archive"));
            return Member::Refused { key: key_of(raw_path), error };
        }
        match split_member(raw_path) {
            Some((key, ext)) => Member::File { key, ext },
            None => {
                let error =
                    ItemError::new("read", "no_key", format!("tar member {raw_path} has no key.extension name"));
                Member::Refused { key: raw_path.to_string(), error }
            }
        }
    }

    /// The group `member` belongs to: the one in progress while the key is the same and the extension new (as
    /// the `webdataset` library groups), else a new one.
    fn group_for(
        &mut self,
        key: &str,
        ext: &str,
        member: &str,
        emitter: &mut Emitter,
    ) -> Result<&mut Group, ReadFailure> {
        let same = self
            .current
            .as_ref()
            .is_some_and(|group| group.key == key && (ext.is_empty() || !group.extensions.contains(ext)));
        if !same {
            self.finish(emitter)?;
            let recurring = self.finished.contains(key);
            self.current = Some(Group {
                key: key.to_string(),
                first_member: member.to_string(),
                recurring,
                ..Group::default()
            });
        }
        self.current.as_mut().ok_or(ReadFailure::Closed)
    }

    /// Turns the group in progress into one record.
    fn finish(&mut self, emitter: &mut Emitter) -> Result<(), ReadFailure> {
        let Some(group) = self.current.take() else { return Ok(()) };
        if group.recurring && group.image.is_none() && group.problem.is_none() {
            // Stray sidecars of a sample read earlier (`d.jpg`, `e.txt`, `d.txt`): not an item of their own. A
            // recurring key with an image is a second item, and the emitter makes it a `duplicate_key` row.
            let message = format!(
                "{}#{}: members of the sample {} after other samples' members, with no image; the sample as read \
                 earlier is kept, these are skipped",
                self.uri, group.first_member, group.key
            );
            emitter.warn("split_sample", &message);
            return Ok(());
        }
        self.finished.insert(group.key.clone());
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
    use crate::item::Msg;
    use crate::metrics::Metrics;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// One row as the reader gives it: the key, the caption of a sample, or the kind of an error row.
    #[derive(Debug, Clone, PartialEq)]
    enum Row {
        Sample(String, Option<String>),
        Error(String, String),
    }

    /// Reads `bytes` as the source does, damage row included; the rows and the warnings by kind.
    fn read_shard(bytes: &[u8]) -> (Vec<Row>, std::collections::BTreeMap<String, u64>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
        let mut emitter = Emitter::new(0, tx, 4, Arc::new(Metrics::default()));
        let mut shard = ShardReader::new("mem://s.tar".into(), 1 << 20);
        match shard.read_all(bytes, &mut emitter) {
            Ok(()) => {}
            Err(ReadFailure::Closed) => panic!("closed"),
            Err(ReadFailure::Archive { message, damaged }) => {
                emitter.push_blocking(damage_row("mem://s.tar", "s.tar", &message, damaged)).unwrap();
                emitter.flush_blocking().unwrap();
            }
        }
        let warnings = emitter.warnings.clone();
        drop(emitter);
        let mut rows = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            let Msg::Batch { records, .. } = msg else { continue };
            for record in records {
                rows.push(match record {
                    SourceRecord::Raw(raw) => Row::Sample(raw.key, raw.captions.first().cloned()),
                    SourceRecord::Error(row) => Row::Error(row.key, row.kind.to_string()),
                });
            }
        }
        (rows, warnings)
    }

    fn header(name: &str, size: usize, kind: tar::EntryType) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        header.set_cksum();
        header
    }

    /// A tar of `members`, and where each member's header starts.
    fn tar_of(members: &[(&str, &[u8])]) -> (Vec<u8>, Vec<usize>) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut starts = Vec::new();
        for (name, data) in members {
            starts.push(builder.get_ref().len());
            builder.append(&header(name, data.len(), tar::EntryType::Regular), *data).unwrap();
        }
        (builder.into_inner().unwrap(), starts)
    }

    /// Six samples of an image and a caption, of sizes that put member ends on and off 512-byte boundaries.
    fn six_samples() -> (Vec<u8>, Vec<usize>) {
        let images: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8 + 1; [512, 700, 1024, 1, 1500, 511][i]]).collect();
        let captions: Vec<String> = (0..6).map(|i| format!("caption {i}")).collect();
        let mut members: Vec<(String, &[u8])> = Vec::new();
        for i in 0..6 {
            members.push((format!("{i:02}.jpg"), &images[i]));
            members.push((format!("{i:02}.txt"), captions[i].as_bytes()));
        }
        let named: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        tar_of(&named)
    }

    #[test]
    fn a_whole_shard_is_every_sample_with_its_caption() {
        let (bytes, _) = six_samples();
        let (rows, warnings) = read_shard(&bytes);
        let expected: Vec<Row> =
            (0..6).map(|i| Row::Sample(format!("{i:02}"), Some(format!("caption {i}")))).collect();
        assert_eq!(rows, expected);
        assert!(warnings.is_empty());
    }

    /// Every cut of the shard, on a 512-byte boundary or not: the samples whose next sample's header was read
    /// whole are kept with their captions, and the damage is exactly one error row, under the key of the sample it
    /// cut short (the shard's name before the first header). Only a cut past the first end-of-archive block reads
    /// as the whole shard.
    #[test]
    fn every_cut_keeps_the_complete_samples_and_makes_one_error_row() {
        let (bytes, starts) = six_samples();
        // The first member of sample i+1 starts at starts[2 * (i + 1)]; the end-of-archive blocks after the last.
        let data_end = {
            let last = starts[11];
            last + 512 + "caption 5".len().div_ceil(512) * 512
        };
        for cut in 0..bytes.len() {
            let (rows, warnings) = read_shard(&bytes[..cut]);
            assert!(warnings.is_empty(), "cut {cut}: {warnings:?}");
            if cut >= data_end + 512 {
                assert_eq!(rows.len(), 6, "cut {cut}: {rows:?}");
                assert!(rows.iter().all(|r| matches!(r, Row::Sample(_, Some(_)))), "cut {cut}: {rows:?}");
                continue;
            }
            // Samples whose successor's first header is whole.
            let complete = (0..6).filter(|i| i + 1 < 6 && cut >= starts[2 * (i + 1)] + 512).count();
            let expected_error_key = if cut >= 512 { format!("{complete:02}") } else { "s".to_string() };
            let mut expected: Vec<Row> =
                (0..complete).map(|i| Row::Sample(format!("{i:02}"), Some(format!("caption {i}")))).collect();
            expected.push(Row::Error(expected_error_key, "corrupt_archive".into()));
            assert_eq!(rows, expected, "cut {cut} of {}", bytes.len());
        }
    }

    #[test]
    fn a_link_member_makes_its_sample_one_error_row() {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header("a.jpg", 3, tar::EntryType::Regular), &b"abc"[..]).unwrap();
        let mut link = header("d.jpg", 0, tar::EntryType::Symlink);
        link.set_link_name("a.jpg").unwrap();
        link.set_cksum();
        builder.append(&link, &b""[..]).unwrap();
        builder.append(&header("d.txt", 3, tar::EntryType::Regular), &b"cap"[..]).unwrap();
        builder.append(&header("e.jpg", 3, tar::EntryType::Regular), &b"xyz"[..]).unwrap();
        let (rows, _) = read_shard(&builder.into_inner().unwrap());
        assert_eq!(
            rows,
            [
                Row::Sample("a".into(), None),
                Row::Error("d".into(), "unsupported_member".into()),
                Row::Sample("e".into(), None)
            ]
        );
    }

    #[test]
    fn sidecars_coming_back_to_a_key_are_a_warning_and_a_second_image_a_duplicate() {
        let members: [(&str, &[u8]); 7] = [
            ("d.jpg", b"img"),
            ("e.txt", b"e"),
            ("d.txt", b"late"),
            ("d.json", b"{}"),
            ("f.jpg", b"f"),
            ("f.txt", b"f"),
            ("f.jpg", b"again"),
        ];
        let (bytes, _) = tar_of(&members);
        let (rows, warnings) = read_shard(&bytes);
        assert_eq!(
            rows,
            [
                Row::Sample("d".into(), None),
                Row::Error("e".into(), "missing_image".into()),
                Row::Sample("f".into(), Some("f".into())),
                Row::Error("f".into(), "duplicate_key".into()),
            ]
        );
        assert_eq!(warnings.get("split_sample"), Some(&1), "{warnings:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

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

//! An object's body as a blocking [`Read`], for the parsers that run on a blocking thread (tar shards, manifests).
//!
//! A local file is read from the file itself. `GetResult::into_stream` would read it in 8 KiB chunks, each one
//! a round trip through the runtime's blocking pool and back to the parsing thread: about 40 thread wake-ups and
//! 14 allocations per image of a WebDataset shard, which the ingest profile showed as kernel scheduling time.
//! Other stores hand their response body over as it streams in.
//!
//! A failed read is remembered, so that a parse error it causes is blamed on the store (the unit fails and a rerun
//! retries it) and not on the input.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Take};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::{GetResult, GetResultPayload};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Reads of this size or more bypass the buffer (tar members), smaller ones (tar headers) are served from it.
const BUFFER_BYTES: usize = 64 << 10;

/// The first failure of the store while reading, if any.
pub(crate) type StoreFailure = Arc<Mutex<Option<String>>>;

/// The body of a GET. Build it on the async side, read it on a blocking thread.
pub(crate) struct Body {
    source: Inner,
    failure: StoreFailure,
}

enum Inner {
    /// A local file, opened by the store; positioned at the range's start on the first read.
    File {
        file: Option<File>,
        range: Range<u64>,
        reader: Option<BufReader<Take<File>>>,
    },
    Stream(Box<dyn Read + Send>),
}

impl Body {
    pub(crate) fn new(result: GetResult) -> Body {
        let failure = StoreFailure::default();
        let source = match result.payload {
            GetResultPayload::File(file, _) => Inner::File { file: Some(file), range: result.range, reader: None },
            GetResultPayload::Stream(stream) => {
                let seen = failure.clone();
                let stream = stream.map_err(move |e| {
                    remember(&seen, e.to_string());
                    std::io::Error::other(e)
                });
                Inner::Stream(Box::new(SyncIoBridge::new(StreamReader::new(stream))))
            }
        };
        Body { source, failure }
    }

    /// Where the store's first failure is written; keep it to ask after the parse.
    pub(crate) fn failure(&self) -> StoreFailure {
        self.failure.clone()
    }
}

fn remember(slot: &StoreFailure, message: String) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(message);
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let outcome = match &mut self.source {
            Inner::Stream(reader) => return reader.read(buf),
            Inner::File { file, range, reader } => {
                if let Some(mut file) = file.take() {
                    let opened = file.seek(SeekFrom::Start(range.start)).map(|_| {
                        BufReader::with_capacity(BUFFER_BYTES, file.take(range.end.saturating_sub(range.start)))
                    });
                    match opened {
                        Ok(opened) => *reader = Some(opened),
                        Err(e) => {
                            remember(&self.failure, e.to_string());
                            return Err(e);
                        }
                    }
                }
                match reader {
                    Some(reader) => reader.read(buf),
                    None => Err(std::io::Error::other("the file could not be positioned")),
                }
            }
        };
        if let Err(e) = &outcome
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            remember(&self.failure, e.to_string());
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

    async fn local_with(bytes: &'static [u8]) -> (tempfile::TempDir, LocalFileSystem, Path) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let path = Path::from("object.bin");
        store.put(&path, PutPayload::from_static(bytes)).await.unwrap();
        (dir, store, path)
    }

    fn read_on_a_blocking_thread(body: Body) -> Vec<u8> {
        let mut body = body;
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn a_local_file_is_read_whole_and_as_a_range() {
        let bytes: &'static [u8] = b"0123456789abcdefghij";
        let (_dir, store, path) = local_with(bytes).await;
        let whole = Body::new(store.get(&path).await.unwrap());
        assert!(matches!(whole.source, Inner::File { .. }));
        let got = tokio::task::spawn_blocking(move || read_on_a_blocking_thread(whole)).await.unwrap();
        assert_eq!(got, bytes);

        let options = GetOptions { range: Some(GetRange::Bounded(5..12)), ..GetOptions::default() };
        let part = Body::new(store.get_opts(&path, options).await.unwrap());
        let got = tokio::task::spawn_blocking(move || read_on_a_blocking_thread(part)).await.unwrap();
        assert_eq!(got, b"56789ab");
    }

    #[tokio::test]
    async fn a_stream_is_read_as_it_comes() {
        let bytes: &'static [u8] = b"streamed body";
        let (_dir, store, path) = local_with(bytes).await;
        // What a remote store hands over: the body as a stream.
        let range = 0..bytes.len() as u64;
        let meta = store.head(&path).await.unwrap();
        let streamed = GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::once(async move {
                Ok(bytes::Bytes::from_static(bytes))
            }))),
            meta,
            range,
            attributes: Default::default(),
        };
        let body = Body::new(streamed);
        assert!(matches!(body.source, Inner::Stream(_)));
        let failure = body.failure();
        let got = tokio::task::spawn_blocking(move || read_on_a_blocking_thread(body)).await.unwrap();
        assert_eq!(got, bytes);
        assert!(failure.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failing_stream_is_remembered_as_the_stores_failure() {
        let (_dir, store, path) = local_with(b"x").await;
        let meta = store.head(&path).await.unwrap();
        let failing = GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::iter(vec![
                Ok(bytes::Bytes::from_static(b"start")),
                Err(object_store::Error::Generic { store: "test", source: "connection reset".into() }),
            ]))),
            meta,
            range: 0..10,
            attributes: Default::default(),
        };
        let body = Body::new(failing);
        let failure = body.failure();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut body = body;
            let mut out = Vec::new();
            body.read_to_end(&mut out).map(|_| out)
        })
        .await
        .unwrap();
        assert!(outcome.is_err());
        let message = failure.lock().unwrap().clone().unwrap();
        assert!(message.contains("connection reset"), "{message}");
    }
}

//! Shard files on a local disk, written past the page cache (`O_DIRECT` on Linux).
//!
//! Written through the page cache, every byte of a shard is copied into freshly allocated cache pages that nothing
//! reads again soon. On a virtual machine whose host backs guest memory on first touch and takes freed pages back,
//! every such page costs a fault on the host as well: on the benchmark machine, writing 100 MB that way took
//! 1.3 s of kernel CPU, against 0.06 s with `O_DIRECT`, and an ingest run's system time fell from 0.6–1.0 s to
//! 0.2–0.3 s of its 4.5–5 s (BENCHMARKS.md). On any machine, a job that writes terabytes no longer pushes its inputs
//! out of the cache.
//!
//! A shard goes to a hidden staging file beside it (`.NAME#DIGITS`: the dot hides it from readers that open the
//! folder, the `#` suffix from `object_store`'s listings) and is renamed into place once whole, so no reader ever
//! sees half a shard. A process killed mid-shard leaves its staging file: the next writer of that unit removes it,
//! and so does the job's finalization ([`staging_files`]). Data leaves
//! in aligned chunks from an aligned buffer; the last partial block goes through a second, ordinary handle. Where
//! the filesystem refuses `O_DIRECT` (tmpfs, some network filesystems), or off Linux, the same file is written
//! through the cache.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Alignment of the buffer, of file offsets and of direct write lengths: the largest logical block size in use.
const ALIGN: usize = 4096;
/// Bytes gathered before a write: large enough that each write keeps the device busy, small enough to keep.
const CHUNK: usize = 4 << 20;
/// Buffers kept for the next shard, so that one is not allocated and faulted in for every shard.
const POOLED: usize = 2;

static POOL: Mutex<Vec<Aligned>> = Mutex::new(Vec::new());
static STAGED: AtomicU64 = AtomicU64::new(0);

/// [`CHUNK`] bytes at an [`ALIGN`]-aligned address inside a `Vec` (whose heap block never moves with it).
struct Aligned {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn take() -> Aligned {
        if let Some(buffer) = POOL.lock().ok().and_then(|mut pool| pool.pop()) {
            return buffer;
        }
        let raw = vec![0u8; CHUNK + ALIGN];
        // `align_offset` may answer "cannot" (usize::MAX); the buffer is then used unaligned, through the cache.
        let offset = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, offset, len: 0 }
    }

    fn aligned(&self) -> bool {
        self.offset < ALIGN
    }

    fn capacity(&self) -> usize {
        CHUNK
    }

    fn start(&self) -> usize {
        if self.aligned() { self.offset } else { 0 }
    }

    fn filled(&self) -> &[u8] {
        &self.raw[self.start()..self.start() + self.len]
    }

    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity() - self.len);
        let at = self.start() + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    fn consume(&mut self, n: usize) {
        let start = self.start();
        self.raw.copy_within(start + n..start + self.len, start);
        self.len -= n;
    }

    fn give_back(mut self) {
        self.len = 0;
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOLED
        {
            pool.push(self);
        }
    }
}

/// The staging file, once created.
struct Staged {
    file: File,
    path: PathBuf,
    /// Opened with `O_DIRECT`: writes must be aligned in address, offset and length.
    direct: bool,
    written: u64,
}

/// One shard file being written: bytes in, a whole file at `target` on [`DirectFile::complete`].
pub(crate) struct DirectFile {
    target: PathBuf,
    /// The staging file's path from its creation until it is renamed or removed: while it is set, the file is
    /// this writer's to clean up.
    staging: Option<PathBuf>,
    staged: Option<Staged>,
    buffer: Option<Aligned>,
}

impl DirectFile {
    pub(crate) fn new(target: PathBuf) -> DirectFile {
        DirectFile { target, staging: None, staged: None, buffer: None }
    }

    /// Takes `data`; whole chunks go to the file as the buffer fills.
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let buffer = self.buffer.get_or_insert_with(Aligned::take);
            let n = buffer.fill(data);
            data = &data[n..];
            if buffer.len == buffer.capacity() {
                self.flush(false).await?;
            }
        }
        Ok(())
    }

    /// Writes what is left and renames the staging file into place.
    pub(crate) async fn complete(&mut self) -> io::Result<()> {
        self.flush(true).await?;
        let (Some(staging), target) = (self.staging.clone(), self.target.clone()) else {
            return Err(io::Error::other(format!("{}: no staging file to complete", self.target.display())));
        };
        if let Some(unit) = crate::sink::unit_of_shard(&target.to_string_lossy()) {
            crate::failpoint::hit("before-rename", unit);
        }
        let staged = self.staged.take();
        blocking(move || {
            drop(staged);
            std::fs::rename(&staging, &target)
                .map_err(|e| named(e, &format!("cannot rename {} to {}", staging.display(), target.display())))
        })
        .await?;
        self.staging = None;
        if let Some(buffer) = self.buffer.take() {
            buffer.give_back();
        }
        Ok(())
    }

    /// Removes the staging file: nothing of the shard stays.
    pub(crate) async fn abort(mut self) {
        self.staged = None;
        if let Some(staging) = self.staging.take() {
            let _ = blocking(move || remove_staging(&staging)).await;
        }
    }

    /// Writes the buffer out: its whole aligned blocks, and with `last` the tail too. Creates the staging file
    /// first (on the last flush even with nothing to write: an empty shard is still a file).
    async fn flush(&mut self, last: bool) -> io::Result<()> {
        let staged = match self.staged.take() {
            Some(staged) => staged,
            None => {
                let target = self.target.clone();
                let (staging, staged) = blocking(move || open_staging(&target)).await?;
                self.staging = Some(staging);
                staged
            }
        };
        let Some(buffer) = self.buffer.take() else {
            self.staged = Some(staged);
            return Ok(());
        };
        let (staged, buffer) = blocking(move || write_out(staged, buffer, last)).await?;
        self.staged = Some(staged);
        self.buffer = Some(buffer);
        Ok(())
    }
}

impl Drop for DirectFile {
    /// A shard dropped unfinished (its unit failed, a write failed, or the job stopped) leaves no staging file.
    fn drop(&mut self) {
        self.staged = None;
        if let Some(staging) = self.staging.take() {
            let _ = remove_staging(&staging);
        }
    }
}

fn remove_staging(staging: &Path) -> io::Result<()> {
    match std::fs::remove_file(staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

fn named(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Names tried for one staging file before giving up.
const STAGING_TRIES: u32 = 100;

/// Creates a staging file beside `target` (and the directories above it) under a name no other writer holds
/// (created exclusively, as `object_store`'s local store does), with `O_DIRECT` where the filesystem takes it.
fn open_staging(target: &Path) -> io::Result<(PathBuf, Staged)> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| named(e, &format!("cannot create {}", dir.display())))?;
    }
    let open = |path: &Path, first: bool| {
        let mut options = OpenOptions::new();
        options.write(true);
        if first {
            options.create_new(true);
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.custom_flags(libc::O_DIRECT);
            }
        } else {
            // After a refused O_DIRECT the name is ours already: the exclusive create came first.
            options.create(true).truncate(true);
        }
        options.open(path)
    };
    let direct = cfg!(target_os = "linux");
    for _ in 0..STAGING_TRIES {
        let staging = staging_path(target, std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed) % 1_000_000);
        let created = match open(&staging, true) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // tmpfs and others refuse the flag itself.
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => open(&staging, false).map(|f| (f, false)),
            other => other.map(|f| (f, direct)),
        };
        return match created {
            Ok((file, direct)) => Ok((staging.clone(), Staged { file, path: staging, direct, written: 0 })),
            Err(e) => Err(named(e, &format!("cannot create {}", staging.display()))),
        };
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("cannot create a staging file beside {}: {STAGING_TRIES} names taken", target.display()),
    ))
}

/// The staging file of `target`: `.NAME#DIGITS` beside it. The leading dot hides it from every reader that opens
/// the table's folder (pyarrow, Hugging Face `datasets` and polars skip names starting with `.` or `_`), and the
/// `#` suffix from `object_store`'s listings and `*.parquet` globs, so a staging file a killed process left behind
/// breaks no reader of the finished output.
fn staging_path(target: &Path, pid: u32, n: u64) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}#{pid}{n:06}"))
}

/// The name of the file a staging file stands for, when `name` is one: this module's `.NAME#DIGITS`, or
/// `NAME#DIGITS`, the staging name of `object_store`'s local store (its multipart uploads, and this module's own
/// before it hid them).
pub(crate) fn staged_name(name: &str) -> Option<&str> {
    let (stem, digits) = name.rsplit_once('#')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let stem = stem.strip_prefix('.').unwrap_or(stem);
    (!stem.is_empty()).then_some(stem)
}

/// The staging files left in `dir` (none when it does not exist), with the names of the files they stand for.
pub(crate) fn staging_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(named(e, &format!("cannot list {}", dir.display()))),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| named(e, &format!("cannot list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stands_for) = staged_name(&name) {
            found.push((stands_for.to_string(), entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes staging files a killed process left behind; returns how many were removed.
pub(crate) fn remove_stale(paths: &[PathBuf]) -> io::Result<u64> {
    for path in paths {
        remove_staging(path)
            .map_err(|e| named(e, &format!("cannot remove the stale staging file {}", path.display())))?;
    }
    Ok(paths.len() as u64)
}

/// Writes the buffer's whole blocks (all of it with `last`) at the end of the staging file; the buffer keeps the
/// unwritten rest.
fn write_out(mut staged: Staged, mut buffer: Aligned, last: bool) -> io::Result<(Staged, Aligned)> {
    let whole = buffer.len / ALIGN * ALIGN;
    if staged.direct && buffer.aligned() && whole > 0 {
        match staged.file.write_all(&buffer.filled()[..whole]) {
            Ok(()) => {
                staged.written += whole as u64;
                buffer.consume(whole);
            }
            // Some filesystems take the flag at open and refuse the writes: go on through the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && staged.written == 0 => {
                staged = reopen_buffered(staged)?;
            }
            Err(e) => return Err(named(e, &format!("cannot write {}", staged.path.display()))),
        }
    }
    if !staged.direct || !buffer.aligned() || last {
        if staged.direct && buffer.len > 0 {
            // The tail is not a whole block: through an ordinary handle, at the end of what was written.
            staged = reopen_buffered(staged)?;
        }
        let rest = buffer.len;
        staged
            .file
            .write_all(buffer.filled())
            .map_err(|e| named(e, &format!("cannot write {}", staged.path.display())))?;
        staged.written += rest as u64;
        buffer.consume(rest);
    }
    Ok((staged, buffer))
}

/// The staging file opened again without `O_DIRECT`, positioned at the end of what was written.
fn reopen_buffered(staged: Staged) -> io::Result<Staged> {
    let Staged { path, written, .. } = staged;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| named(e, &format!("cannot open {}", path.display())))?;
    file.set_len(written)
        .and_then(|()| file.seek(SeekFrom::Start(written)))
        .map_err(|e| named(e, &format!("cannot write {}", path.display())))?;
    Ok(Staged { file, path, direct: false, written })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 131 + seed * 17) % 251) as u8).collect()
    }

    async fn write_in_pieces(dir: &Path, pieces: &[usize]) -> (PathBuf, Vec<u8>) {
        let target = dir.join("sub/dir/part-000000-000.parquet");
        let mut file = DirectFile::new(target.clone());
        let mut expected = Vec::new();
        for (i, &n) in pieces.iter().enumerate() {
            let piece = bytes(n, i);
            file.write(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
            assert!(!target.exists(), "no reader sees the shard before it is whole");
        }
        file.complete().await.unwrap();
        (target, expected)
    }

    #[tokio::test]
    async fn the_file_is_every_byte_in_order_across_chunks_and_a_partial_tail() {
        // Around the chunk and block edges: a tail under one block, whole blocks only, several chunks.
        for pieces in [vec![], vec![1], vec![ALIGN], vec![CHUNK - 1, 2, ALIGN + 3], vec![3 * CHUNK + 5, 7]] {
            let dir = tempfile::tempdir().unwrap();
            let (target, expected) = write_in_pieces(dir.path(), &pieces).await;
            assert_eq!(std::fs::read(&target).unwrap(), expected, "pieces {pieces:?}");
            let left: Vec<_> =
                std::fs::read_dir(dir.path().join("sub/dir")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left.len(), 1, "no staging file stays: {left:?}");
        }
    }

    #[tokio::test]
    async fn an_aborted_or_dropped_shard_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.parquet");
        let mut file = DirectFile::new(target.clone());
        file.write(&bytes(CHUNK + 10, 1)).await.unwrap();
        file.abort().await;
        let mut dropped = DirectFile::new(target.clone());
        dropped.write(&bytes(CHUNK * 2, 2)).await.unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_unwritable_place_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let mut file = DirectFile::new(dir.path().join("file/part.parquet"));
        file.write(b"abc").await.unwrap();
        let e = file.complete().await.unwrap_err();
        assert!(e.to_string().contains("file"), "{e}");
    }

    #[test]
    fn a_staging_name_another_writer_holds_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("part.parquet");
        let next = STAGED.load(Ordering::Relaxed);
        let held: Vec<PathBuf> =
            (next..next + 5).map(|n| staging_path(&target, std::process::id(), n % 1_000_000)).collect();
        for path in &held {
            std::fs::write(path, b"another writer's").unwrap();
        }
        let (staging, _staged) = open_staging(&target).unwrap();
        assert!(!held.contains(&staging), "{} was taken", staging.display());
        for path in &held {
            assert_eq!(std::fs::read(path).unwrap(), b"another writer's");
        }
    }

    #[test]
    fn staging_files_are_hidden_and_found_by_the_file_they_stand_for() {
        let staging = staging_path(Path::new("/o/samples/part-000028-001.parquet"), 2165, 85);
        assert_eq!(staging, Path::new("/o/samples/.part-000028-001.parquet#2165000085"));
        let name = staging.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(staged_name(&name), Some("part-000028-001.parquet"));
        assert_eq!(staged_name("part-000028-001.parquet#21654000085"), Some("part-000028-001.parquet"));
        for not_staging in ["part-000028-001.parquet", "a#", "a#12x", "#12", ".#12", "_SUCCESS"] {
            assert_eq!(staged_name(not_staging), None, "{not_staging}");
        }

        let dir = tempfile::tempdir().unwrap();
        for name in [".part-000001-000.parquet#1000001", "part-000002-000.parquet#7", "part-000001-000.parquet"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = staging_files(dir.path()).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["part-000001-000.parquet", "part-000002-000.parquet"]);
        let paths: Vec<PathBuf> = found.into_iter().map(|(_, p)| p).collect();
        assert_eq!(remove_stale(&paths).unwrap(), 2);
        assert_eq!(walk_names(dir.path()), ["part-000001-000.parquet"]);
        assert!(staging_files(&dir.path().join("missing")).unwrap().is_empty());
    }

    fn walk_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_filesystem_without_direct_writes_gets_the_same_file() {
        // tmpfs refuses O_DIRECT at open.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let (target, expected) = write_in_pieces(dir.path(), &[CHUNK + 5, 100]).await;
        assert_eq!(std::fs::read(&target).unwrap(), expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_split_round_trips(pieces in proptest::collection::vec(0usize..40_000, 0..12)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (target, expected) = runtime.block_on(write_in_pieces(dir.path(), &pieces));
            prop_assert_eq!(std::fs::read(&target).unwrap(), expected);
        }
    }
}

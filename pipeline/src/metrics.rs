//! Counters and per-stage busy time, shared by the stages of a run and read by progress reporting.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a run has done so far. Every field only grows.
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub items_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub samples: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub units_total: AtomicU64,
    pub units_done: AtomicU64,
    pub units_skipped: AtomicU64,
    pub units_failed: AtomicU64,
    read_blocked_ns: AtomicU64,
    busy: Mutex<BTreeMap<String, Duration>>,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    warnings_by_kind: Mutex<BTreeMap<String, u64>>,
    rows_by_table: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            items_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            units_total: AtomicU64::new(0),
            units_done: AtomicU64::new(0),
            units_skipped: AtomicU64::new(0),
            units_failed: AtomicU64::new(0),
            read_blocked_ns: AtomicU64::new(0),
            busy: Mutex::new(BTreeMap::new()),
            errors_by_kind: Mutex::new(BTreeMap::new()),
            warnings_by_kind: Mutex::new(BTreeMap::new()),
            rows_by_table: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Time the reader spent waiting for room downstream (not busy).
    pub(crate) fn read_blocked(&self, waited: Duration) {
        Metrics::add(&self.read_blocked_ns, waited.as_nanos() as u64);
    }

    pub(crate) fn read_blocked_total(&self) -> Duration {
        Duration::from_nanos(Metrics::get(&self.read_blocked_ns))
    }

    pub fn add_busy(&self, stage: &str, busy: Duration) {
        if let Ok(mut map) = self.busy.lock() {
            *map.entry(stage.to_string()).or_default() += busy;
        }
    }

    /// Counts what a committed unit wrote, as its marker says.
    pub(crate) fn record_unit(&self, marker: &crate::commit::UnitMarker) {
        Metrics::add(&self.units_done, 1);
        Metrics::add(&self.samples, marker.rows);
        Metrics::add(&self.errors, marker.errors);
        Metrics::add(&self.bytes_written, marker.shards.iter().map(|s| s.bytes).sum());
        let merge = |map: &Mutex<BTreeMap<String, u64>>, counts: &mut dyn Iterator<Item = (String, u64)>| {
            if let Ok(mut map) = map.lock() {
                for (name, n) in counts {
                    *map.entry(name).or_default() += n;
                }
            }
        };
        merge(&self.errors_by_kind, &mut marker.errors_by_kind.iter().map(|(k, n)| (k.clone(), *n)));
        merge(&self.warnings_by_kind, &mut marker.warnings_by_kind.iter().map(|(k, n)| (k.clone(), *n)));
        merge(&self.rows_by_table, &mut marker.shards.iter().map(|s| (s.table.clone(), s.rows)));
    }

    /// Busy time per stage, in pipeline order of first report.
    pub fn busy(&self) -> BTreeMap<String, Duration> {
        self.busy.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn errors_by_kind(&self) -> BTreeMap<String, u64> {
        self.errors_by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Warnings by kind: problems that cost no item (see [`crate::source::Emitter::warn`]).
    pub fn warnings_by_kind(&self) -> BTreeMap<String, u64> {
        self.warnings_by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Rows written per table by the units committed in this run.
    pub fn rows_by_table(&self) -> BTreeMap<String, u64> {
        self.rows_by_table.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

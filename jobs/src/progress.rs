//! Progress while a job runs (a bar with rate and ETA on a terminal, periodic log lines otherwise) and the final
//! summary: items, rows, errors by kind, bytes, images/s, per-stage busy time.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use lyrics_pipeline::{Metrics, RunReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    Off,
}

impl ProgressMode {
    pub fn resolved(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            other => other,
        }
    }
}

/// Reports progress from a thread of its own until dropped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    pub fn start(mode: ProgressMode, metrics: Arc<Metrics>, log_every: Duration) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = (mode != ProgressMode::Off).then(|| {
            std::thread::spawn(move || {
                let bar = (mode == ProgressMode::Bar).then(|| {
                    let bar = ProgressBar::new(0);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} units  {msg}  ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                });
                let mut last_log = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let line = line(&metrics);
                    if let Some(bar) = &bar {
                        let total = Metrics::get(&metrics.units_total);
                        bar.set_length(total.saturating_sub(Metrics::get(&metrics.units_skipped)));
                        bar.set_position(Metrics::get(&metrics.units_done) + Metrics::get(&metrics.units_failed));
                        bar.set_message(line);
                    } else if last_log.elapsed() >= log_every {
                        last_log = Instant::now();
                        tracing::info!("{line}");
                    }
                }
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            })
        });
        Reporter { stop, thread }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn line(m: &Metrics) -> String {
    let items = Metrics::get(&m.items_read);
    format!(
        "units {}/{} items {items} ({:.1}/s) rows {} errors {}",
        Metrics::get(&m.units_done) + Metrics::get(&m.units_skipped),
        Metrics::get(&m.units_total),
        rate(items, m.started.elapsed()),
        Metrics::get(&m.samples),
        Metrics::get(&m.errors),
    )
}

/// A byte count in the unit that fits it: `812 B`, `14.2 kB`, `3.1 MB`, `1.20 GB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// The summary of `run --summary json`: what [`summary`] says, as one JSON object. A launcher reads it instead of
/// the text, whose wording may change.
pub fn summary_json(report: &RunReport, metrics: &Metrics, worker: &str) -> serde_json::Value {
    let elapsed = metrics.started.elapsed();
    let items = Metrics::get(&metrics.items_read);
    let failed: Vec<serde_json::Value> =
        report.failed.iter().map(|(unit, error)| serde_json::json!({"unit": unit, "error": error})).collect();
    serde_json::json!({
        "worker": worker,
        "format": report.format.name(),
        "units": {
            "in_plan": report.units_in_plan,
            "mine": report.units_mine,
            "done": report.units_done,
            "already_committed": report.units_skipped,
            "failed": failed,
            "taken": report.taken,
            "held": held_json(report),
        },
        "items": items,
        "bytes_read": Metrics::get(&metrics.bytes_read),
        "rows": metrics.rows_by_table(),
        "errors_by_kind": metrics.errors_by_kind(),
        "warnings_by_kind": metrics.warnings_by_kind(),
        "bytes_written": Metrics::get(&metrics.bytes_written),
        "seconds": elapsed.as_secs_f64(),
        "images_per_s": rate(items, elapsed),
        // The summary's busy line at full precision: benchmarks divide these by counts of boxes.
        "busy_s": metrics.busy().into_iter().map(|(stage, t)| (stage, t.as_secs_f64())).collect::<std::collections::BTreeMap<_, _>>(),
        "complete": report.finalized.is_some(),
        "retried": report.retried.map(|r| serde_json::json!({
            "units": r.units,
            "units_done": r.units_done,
            "items": r.items,
            "recovered": r.recovered,
        })),
    })
}

/// The units left to other workers' live leases, one entry each: the holder and when its lease runs out.
fn held_json(report: &RunReport) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    report
        .held
        .iter()
        .map(|(unit, lease)| match lease {
            Some(lease) => {
                let expires = UNIX_EPOCH + Duration::from_millis(lease.expires_ms);
                serde_json::json!({
                    "unit": unit,
                    "owner": lease.owner,
                    "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
                    "expires_in_s": expires.duration_since(now).unwrap_or_default().as_secs_f64(),
                })
            }
            None => serde_json::json!({"unit": unit}),
        })
        .collect()
}

/// One line per worker holding some of this worker's units: which units, and when its lease runs out, so the
/// user knows when a rerun can take over the units of a worker that is gone.
fn held_lines(report: &RunReport, now: SystemTime) -> String {
    let mut by_holder: BTreeMap<Option<&str>, (Vec<String>, u64)> = BTreeMap::new();
    for (unit, lease) in &report.held {
        let entry = by_holder.entry(lease.as_ref().map(|l| l.owner.as_str())).or_default();
        entry.0.push(unit.to_string());
        entry.1 = entry.1.max(lease.as_ref().map_or(0, |l| l.expires_ms));
    }
    let mut out = String::new();
    for (owner, (units, expires_ms)) in by_holder {
        let which =
            if units.len() == 1 { format!("unit {}", units[0]) } else { format!("units {}", units.join(", ")) };
        let Some(owner) = owner else {
            out += &format!("  held     {which}: claimed by another worker (its lease could not be read)\n");
            continue;
        };
        let expires = UNIX_EPOCH + Duration::from_millis(expires_ms);
        let left = expires.duration_since(now).unwrap_or_default().as_secs_f64().ceil();
        out += &format!(
            "  held     {which}: another worker's lease ({owner}) runs until {} ({left:.0} s from now); if that \
             worker is gone, rerun after then to take over\n",
            humantime::format_rfc3339_seconds(expires)
        );
    }
    out
}

/// The summary printed when a run ends.
pub fn summary(report: &RunReport, metrics: &Metrics, worker: &str) -> String {
    let elapsed = metrics.started.elapsed();
    let items = Metrics::get(&metrics.items_read);
    let mut out = format!(
        "lyrics-prep run finished in {:.1} s (worker {worker}, input format {})\n",
        elapsed.as_secs_f64(),
        report.format.name()
    );
    out += &format!(
        "  units    {} done, {} already committed, {} failed; {} of {} in the plan are this worker's\n",
        report.units_done,
        report.units_skipped,
        report.failed.len(),
        report.units_mine,
        report.units_in_plan
    );
    out += &format!("  items    {items} read ({})\n", human_bytes(Metrics::get(&metrics.bytes_read)));
    out += &format!(
        "  rows     {} samples, {} errors\n",
        Metrics::get(&metrics.samples),
        Metrics::get(&metrics.errors)
    );
    let products: Vec<String> = metrics
        .rows_by_table()
        .into_iter()
        .filter(|(table, _)| table != "samples" && table != "errors")
        .map(|(table, n)| format!("{n} {table}"))
        .collect();
    if !products.is_empty() {
        out += &format!("  tables   {}\n", products.join(", "));
    }
    let kinds = metrics.errors_by_kind();
    if !kinds.is_empty() {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out += &format!("  errors   {}\n", list.join(", "));
    }
    let warnings = metrics.warnings_by_kind();
    if !warnings.is_empty() {
        let list: Vec<String> = warnings.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out += &format!("  warnings {}\n", list.join(", "));
    }
    out += &format!("  written  {}\n", human_bytes(Metrics::get(&metrics.bytes_written)));
    out += &format!("  rate     {:.1} images/s\n", rate(items, elapsed));
    let busy: Vec<String> =
        metrics.busy().iter().map(|(stage, t)| format!("{stage} {:.2} s", t.as_secs_f64())).collect();
    out += &format!("  busy     {}\n", busy.join(", "));
    if let Some(retried) = report.retried {
        out += &format!(
            "  retried  {} items of {} units read again ({} units rewritten): {} are samples now\n",
            retried.items, retried.units, retried.units_done, retried.recovered
        );
    }
    if !report.taken.is_empty() {
        let units: Vec<String> = report.taken.iter().map(u64::to_string).collect();
        out += &format!(
            "  taken    units {} were taken over by other workers (their leases ran out)\n",
            units.join(", ")
        );
    }
    out += &held_lines(report, SystemTime::now());
    for (unit, error) in &report.failed {
        out += &format!("  FAILED   unit {unit}: {error}\n");
    }
    if let Some(notice) = report.finalized.and_then(|f| f.notice()) {
        out += &format!("  keys     {notice}\n");
    }
    out += if report.finalized.is_some() {
        "  output   complete: _lyrics/manifest.json and _SUCCESS written\n"
    } else if report.failed.is_empty() {
        "  output   this worker is done; other workers' units remain\n"
    } else {
        "  output   incomplete: rerun the same command to retry the failed units\n"
    };
    out
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_are_shown_in_the_unit_that_fits() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(14_200), "14.2 kB");
        assert_eq!(human_bytes(3_100_000), "3.1 MB");
        assert_eq!(human_bytes(1_200_000_000), "1.20 GB");
    }
}

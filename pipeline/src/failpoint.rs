//! Crash points for the resume tests: with `LYRICS_FAILPOINT=<name>:<unit>` in the environment, the process dies on
//! the spot (no destructor, no flush, as under `kill -9`) when it reaches that point of that unit. Unset, a check
//! costs one comparison.
//!
//! Points: `before-rename` (a shard of the unit is written whole to its local staging file, not yet renamed into
//! place), `after-shard` (a shard of the unit is complete, the unit is not), `before-marker` (every shard of the
//! unit is complete, its commit marker is not written), `before-retry-marker` (a retried unit's new shards are whole
//! and recorded, its old error rows and marker not yet replaced), `before-amended-marker` (finalizing has rewritten the
//! unit's shards without its cross-unit duplicates, and not yet its marker).
//!
//! With `LYRICS_FAILPOINT_ONCE=FILE` a crash point fires once across processes (the first creates FILE).
//!
//! Pause points (`pause-before-marker:<unit>`) hold the process for a few seconds there, so a test can freeze it
//! at a known place.
//!
//! Panic points, for the tests that a panic costs one item and never the unit: `LYRICS_FAILPOINT=<name>:<key>`
//! makes [`panic_point`] panic when a stage reaches point `name` with the item `key`.

use std::sync::OnceLock;

static SPEC: OnceLock<Option<String>> = OnceLock::new();

pub(crate) fn hit(name: &str, unit: u64) {
    let spec = SPEC.get_or_init(|| std::env::var("LYRICS_FAILPOINT").ok());
    if let Some(spec) = spec
        && spec.split_once(':').is_some_and(|(n, u)| n == name && u.parse() == Ok(unit))
        && first_time()
    {
        eprintln!("failpoint {spec} reached: aborting");
        std::process::abort();
    }
}

/// With `LYRICS_FAILPOINT_ONCE=FILE`, a crash point fires in the first process that reaches it only: that one
/// creates FILE (exclusively), so a retried task of an engine that passes the same environment gets through.
fn first_time() -> bool {
    match std::env::var_os("LYRICS_FAILPOINT_ONCE") {
        None => true,
        Some(file) => std::fs::OpenOptions::new().write(true).create_new(true).open(file).is_ok(),
    }
}

/// Panics when the failpoint `<name>:<key>` is set: stages call it with the item they are working on.
pub fn panic_point(name: &str, key: &str) {
    let spec = SPEC.get_or_init(|| std::env::var("LYRICS_FAILPOINT").ok());
    if let Some(spec) = spec
        && spec.split_once(':').is_some_and(|(n, k)| n == name && k == key)
    {
        panic!("failpoint {spec} reached");
    }
}

/// With `LYRICS_FAILPOINT=pause-<name>:<unit>`, blocks the thread for a few seconds at that point of that unit,
/// so a test can freeze the process (SIGSTOP) at a known place.
pub(crate) fn pause(name: &str, unit: u64) {
    let spec = SPEC.get_or_init(|| std::env::var("LYRICS_FAILPOINT").ok());
    if let Some(spec) = spec
        && spec
            .split_once(':')
            .is_some_and(|(n, u)| n.strip_prefix("pause-") == Some(name) && u.parse() == Ok(unit))
    {
        eprintln!("failpoint {spec} reached: pausing");
        std::thread::sleep(std::time::Duration::from_secs(4));
    }
}

//! The lyrics-prep streaming engine. It knows nothing of images or models: it plans work units over an input in
//! object storage and reads them as items ([`source`]), runs them through the [`Stage`]s it is given on threads
//! of their own, joined by bounded channels ([`runner`]), writes the tables the stages declared as sharded Parquet
//! ([`table`], [`sink`]) and commits each unit so that a rerun resumes exactly where a killed run stopped
//! ([`commit`]). Workers split the units statically ([`partition`]).
//!
//! Where new things go:
//!
//! - **A new input format** is a type implementing [`Source`] (planning and reading together) in a module of
//!   its own under `source/`, and one line in [`source::open`]; [`InputFormat`] names it for `--format` and
//!   extension inference. The emitter checks keys and duplicates for every source alike.
//! - **A new stage** is a type implementing [`Stage`] over the job's sample state `S`, built where the job wires
//!   its stages (the binary's `stages` module); it reports per-item failures as error rows and job-ending ones as
//!   a [`StageError`], and never exits the process.
//! - **A new product table** is a row type with a `TableRow` impl in `schemas`, declared with
//!   [`Tables::declare`] where its stage is built; rows reach it through the [`TableHandle`]. The sink, the
//!   manifest, `status`, `sql` and `export` pick it up from the declaration and the manifest.
//! - **A reader of an output** goes through [`commit::OutputView`], never through markers or listings of its own.

pub mod claims;
pub mod commit;
pub mod dedup;
mod direct;
mod error;
mod failpoint;
pub mod item;
pub mod keys;
pub mod metrics;
mod order;
pub mod partition;
pub mod plan;
pub mod retry;
pub mod runner;
pub mod sink;
pub mod source;
pub mod store;
pub mod table;
pub mod web;

pub use commit::OutputView;
pub use error::PipelineError;
pub use failpoint::panic_point;
pub use item::{ItemError, Msg, Products, RawItem, Record, Sample, SourceRecord};
pub use metrics::Metrics;
pub use partition::Worker;
pub use plan::{InputFormat, Plan, Planned, WorkUnit};
pub use retry::RetryKinds;
pub use runner::{Retried, RunConfig, RunReport, Stage, StageError, panic_row, run};
pub use sink::SinkOptions;
pub use source::{Emitter, Source, SourceContext, SourceOptions};
pub use store::{Location, StorageOptions, StoreRegistry, redact};
pub use table::{TableHandle, Tables};
pub use web::DownloadOptions;

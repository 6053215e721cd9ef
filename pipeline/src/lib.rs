//! The lyrics-prep streaming engine. It knows nothing of images or models: it plans work units over an input in
//! object storage, reads them as records ([`source`]), runs them through the [`Stage`]s it is given on threads
//! of their own, joined by bounded channels ([`runner`]), writes sharded Parquet ([`sink`]) and commits each unit
//! so that a rerun resumes exactly where a killed run stopped ([`commit`]). Workers split the units statically
//! ([`partition`]).

pub mod commit;
mod error;
mod failpoint;
pub mod item;
pub mod metrics;
pub mod partition;
pub mod plan;
pub mod runner;
pub mod sink;
pub mod source;
pub mod store;

pub use error::PipelineError;
pub use item::{ItemError, RawItem, Record, Sample};
pub use metrics::Metrics;
pub use partition::Worker;
pub use plan::{InputFormat, Plan, WorkUnit};
pub use runner::{RunConfig, RunReport, Stage, run};
pub use sink::SinkOptions;
pub use source::SourceOptions;
pub use store::{Location, StorageOptions, StoreRegistry, redact};

//! Errors of the engine. Item-level problems are not errors here: they become error rows (see [`crate::ItemError`]).

/// A failure of a whole operation: planning, a work unit, a commit.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Config(String),
    #[error("{uri}: {message}")]
    Store { uri: String, message: String },
    #[error("{uri}: {message}")]
    Input { uri: String, message: String },
    #[error("cannot resume {output}: {message}")]
    Resume { output: String, message: String },
    #[error("cannot write {uri}: {message}")]
    Sink { uri: String, message: String },
    /// Another worker took over this claimed unit (see [`crate::claims`]): this worker leaves it alone.
    #[error("unit {unit} was taken over by another worker")]
    Taken { unit: u64 },
    /// A stage found that the job cannot go on (see [`crate::Stage`]).
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    pub(crate) fn store(uri: impl Into<String>, err: impl std::fmt::Display) -> Self {
        PipelineError::Store {
            uri: crate::store::redact(&uri.into()),
            message: crate::store::redact_secrets(&err.to_string()),
        }
    }

    pub(crate) fn input(uri: impl Into<String>, message: impl std::fmt::Display) -> Self {
        PipelineError::Input { uri: crate::store::redact(&uri.into()), message: message.to_string() }
    }

    pub(crate) fn sink(uri: impl Into<String>, err: impl std::fmt::Display) -> Self {
        PipelineError::Sink {
            uri: crate::store::redact(&uri.into()),
            message: crate::store::redact_secrets(&err.to_string()),
        }
    }
}

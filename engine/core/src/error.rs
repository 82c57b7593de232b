//! One error type for the engine. The Python bindings map each variant to an exception class.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is malformed: `at` names the field (e.g. `tasks[1].weight`).
    #[error("invalid plan at {at}: {message}")]
    Plan { at: String, message: String },
    /// The target cannot be used (bad URL, unsupported scheme).
    #[error("invalid target {target:?}: {message}")]
    Target { target: String, message: String },
    /// Reading or writing a run directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A report from another process (an agent's interval) that cannot be added: another
    /// version's shape, or histograms of another layout. The run goes on without it.
    #[error("bad report from {reporter}: {message}")]
    Report { reporter: String, message: String },
    /// A run directory or log that exists but cannot be read as one.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl Error {
    pub fn plan(at: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Plan {
            at: at.into(),
            message: message.into(),
        }
    }
    pub fn report(reporter: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Report {
            reporter: reporter.into(),
            message: message.into(),
        }
    }
    /// The same error, its field's path put under `prefix` (`stages[0]` → `load.stages[0]`).
    pub fn under(self, prefix: &str) -> Self {
        match self {
            Error::Plan { at, message } => Error::Plan {
                at: format!("{prefix}{at}"),
                message,
            },
            other => other,
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

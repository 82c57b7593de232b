//! `loadpilot._engine`: thin bindings over `loadpilot-core`. Types are converted, the GIL is
//! released while the engine works, and core errors become Python exceptions. No logic lives
//! here; the Python package wraps these in its public API.

mod hist;
mod hlog;
mod merge;
mod python_side;
mod run;
mod target;

use std::sync::OnceLock;

use loadpilot_core::error::Error;
use loadpilot_core::runner;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

pyo3::create_exception!(
    _engine,
    LoadPilotError,
    PyException,
    "Base of every LoadPilot error."
);
pyo3::create_exception!(
    _engine,
    PlanError,
    LoadPilotError,
    "The plan (or scenario) is invalid."
);
pyo3::create_exception!(
    _engine,
    TargetError,
    LoadPilotError,
    "The target URL cannot be used."
);
pyo3::create_exception!(
    _engine,
    RunDirError,
    LoadPilotError,
    "A run directory cannot be written or read."
);

pub(crate) struct CoreError(Error);

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        CoreError(e)
    }
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        let msg = e.0.to_string();
        match e.0 {
            Error::Plan { .. } => PlanError::new_err(msg),
            Error::Target { .. } => TargetError::new_err(msg),
            Error::Io { .. } | Error::Format { .. } => RunDirError::new_err(msg),
        }
    }
}

/// Engine threads: `LOADPILOT_THREADS`, else one per core.
pub(crate) fn threads() -> usize {
    std::env::var("LOADPILOT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    static RT: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = runner::build_runtime(threads())
        .map_err(|e| LoadPilotError::new_err(format!("cannot start the engine runtime: {e}")))?;
    Ok(RT.get_or_init(|| rt))
}

#[pymodule]
mod _engine {
    #[pymodule_export]
    use super::hist::PyHistogram;
    #[pymodule_export]
    use super::hlog::{read_hlog, read_hlog_from, read_log};
    #[pymodule_export]
    use super::merge::PyMerge;
    #[pymodule_export]
    use super::python_side::{PyCheck, PyMailbox, PySession, PyTicket, PyTickets};
    #[pymodule_export]
    use super::run::{profile_points, start_run, validate_plan, PyRun};
    #[pymodule_export]
    use super::target::{start_target, PyTarget};
    #[pymodule_export]
    use super::{LoadPilotError, PlanError, RunDirError, TargetError};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let kinds: Vec<&str> = loadpilot_core::http::ErrorKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        m.add("ERROR_KINDS", kinds)?;
        m.add("ROW_COLUMNS", loadpilot_core::metrics::ROW_COLUMNS.to_vec())
    }
}

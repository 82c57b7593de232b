//! `loadpilot._engine`: thin bindings over `loadpilot-core`. Types are converted, the GIL is
//! released while the engine works, core errors become Python exceptions, and the engine's
//! rules (limits, defaults, file names, error kinds, end reasons) are exported for Python to
//! read rather than restate. The Python package wraps these in its public API.

mod hist;
mod hlog;
mod merge;
mod python_side;
mod run;
mod testbed;

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

pyo3::create_exception!(
    _engine,
    ReportError,
    LoadPilotError,
    "A report from another process (an agent's interval) that cannot be added."
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
            Error::Report { .. } => ReportError::new_err(msg),
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

/// Values as newline-delimited JSON (rows, in the order given): what Python parses with
/// Polars in one call.
pub(crate) fn ndjson<T: serde::Serialize>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        serde_json::to_writer(&mut out, &v).expect("rows serialize");
        out.push(b'\n');
    }
    out
}

#[pymodule]
mod _engine {
    #[pymodule_export]
    use super::hist::PyHistogram;
    #[pymodule_export]
    use super::hlog::{read_hlog, read_hlog_from, read_log, split_tag};
    #[pymodule_export]
    use super::merge::PyMerge;
    #[pymodule_export]
    use super::python_side::{PyCall, PyCheck, PyMailbox, PySession, PyTicket, PyTickets};
    #[pymodule_export]
    use super::run::{
        arrivals_before, normalize_plan, profile_points, request_name, request_name_problem,
        start_run, summarize_dir, target_allowed, validate_plan, PyRun,
    };
    #[pymodule_export]
    use super::testbed::{start_target, PyTarget};
    #[pymodule_export]
    use super::{LoadPilotError, PlanError, ReportError, RunDirError, TargetError};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::{PyAnyMethods, PyModuleMethods};
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let kinds: Vec<&str> = loadpilot_core::outcome::ErrorKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        m.add("ERROR_KINDS", kinds)?;
        m.add(
            "ROW_COLUMNS",
            loadpilot_core::measure::rows::ROW_COLUMNS.to_vec(),
        )?;
        let ends: Vec<&str> = loadpilot_core::measure::summary::Ended::ALL
            .iter()
            .map(|e| e.name())
            .collect();
        m.add("END_REASONS", ends)?;
        let files: std::collections::BTreeMap<&str, &str> = loadpilot_core::measure::rundir::FILES
            .iter()
            .copied()
            .collect();
        m.add("RUN_FILES", files)?;
        m.add("MAX_SECONDS", loadpilot_core::plan::MAX_SECONDS)?;
        m.add("DEFAULT_MAX_USERS", loadpilot_core::plan::DEFAULT_MAX_USERS)?;
        m.add("MAX_STREAMS", loadpilot_core::plan::MAX_STREAMS_LIMIT)?;
        m.add(
            "MAX_REDIRECTS",
            loadpilot_core::http::redirect::MAX_REDIRECTS_LIMIT,
        )?;
        let defaults = loadpilot_core::plan::defaults().to_string();
        let json = pyo3::types::PyModule::import(m.py(), "json")?;
        m.add("PLAN_DEFAULTS", json.call_method1("loads", (defaults,))?)
    }
}

//! Reading `.hlog` files.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::hist::PyHistogram;
use crate::CoreError;

/// One `.hlog` line: (tag, start_s, length_s, histogram).
type LogLine = (Option<String>, f64, f64, PyHistogram);

fn log_lines(entries: Vec<loadpilot_core::rundir::LogEntry>) -> Vec<LogLine> {
    entries
        .into_iter()
        .map(|e| (e.tag, e.start_s, e.length_s, PyHistogram { h: e.hist }))
        .collect()
}

/// Reads an `.hlog` into its lines.
#[pyfunction]
pub(crate) fn read_hlog(path: PathBuf) -> PyResult<Vec<LogLine>> {
    let entries = loadpilot_core::rundir::read_hlog(&path).map_err(CoreError)?;
    Ok(log_lines(entries))
}

/// Follows an `.hlog` as it grows: the complete lines from byte `offset` on, and the offset
/// to call again with.
#[pyfunction]
pub(crate) fn read_hlog_from(path: PathBuf, offset: u64) -> PyResult<(Vec<LogLine>, u64)> {
    let (entries, next) =
        loadpilot_core::rundir::read_hlog_from(&path, offset).map_err(CoreError)?;
    Ok((log_lines(entries), next))
}

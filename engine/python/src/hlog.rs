//! Reading `.hlog` files.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::hist::{per_ms, PyHistogram};
use crate::CoreError;

/// One `.hlog` line: (tag, start_s, length_s, histogram).
type LogLine = (Option<String>, f64, f64, PyHistogram);

fn log_lines(entries: Vec<loadpilot_core::measure::rundir::LogEntry>) -> Vec<LogLine> {
    entries
        .into_iter()
        .map(|e| (e.tag, e.start_s, e.length_s, PyHistogram::ours(e.hist)))
        .collect()
}

/// Reads an `.hlog` into its lines.
#[pyfunction]
pub(crate) fn read_hlog(path: PathBuf) -> PyResult<Vec<LogLine>> {
    let entries = loadpilot_core::measure::rundir::read_hlog(&path).map_err(CoreError)?;
    Ok(log_lines(entries))
}

/// Follows an `.hlog` as it grows: the complete lines from byte `offset` on, and the offset
/// to call again with.
#[pyfunction]
pub(crate) fn read_hlog_from(path: PathBuf, offset: u64) -> PyResult<(Vec<LogLine>, u64)> {
    let (entries, next) =
        loadpilot_core::measure::rundir::read_hlog_from(&path, offset).map_err(CoreError)?;
    Ok((log_lines(entries), next))
}

/// One interval of any HdrHistogram log: (tag, seconds after its start time, seconds since the
/// epoch, length in seconds, histogram).
type ForeignLine = (Option<String>, f64, f64, f64, PyHistogram);

/// Reads any HdrHistogram interval log (V0, V1 or V2 encodings; `#[StartTime:` and
/// `#[BaseTime:` honoured) whose values are in `unit`: its start time (seconds since the
/// epoch) and its intervals, each histogram in its writer's own layout.
#[pyfunction]
pub(crate) fn read_log(path: PathBuf, unit: &str) -> PyResult<(f64, Vec<ForeignLine>)> {
    let scale = per_ms(unit)?;
    let log = loadpilot_core::measure::hlog::read_log(&path).map_err(CoreError)?;
    let lines = log
        .intervals
        .into_iter()
        .map(|iv| {
            (
                iv.tag,
                iv.offset_s,
                iv.absolute_s,
                iv.length_s,
                PyHistogram {
                    h: iv.hist,
                    per_ms: scale,
                },
            )
        })
        .collect();
    Ok((log.start_time_s, lines))
}

/// A LoadPilot log tag read back: (task, request name or None).
#[pyfunction]
pub(crate) fn split_tag(tag: &str) -> (String, Option<String>) {
    loadpilot_core::measure::names::split_tag(tag)
}

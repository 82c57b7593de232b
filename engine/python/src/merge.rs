//! `Merge`: a distributed run's coordinator adds its agents' intervals into one run directory.

use std::path::PathBuf;
use std::sync::Mutex;

use loadpilot_core::merge::Merge;
use loadpilot_core::metrics::Interval;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::hist::PyHistogram;
use crate::CoreError;

/// The one run a distributed run's agents report into: intervals added per (interval,
/// task), rows and summary as a local run gives them.
#[pyclass(module = "loadpilot._engine", name = "Merge")]
pub(crate) struct PyMerge {
    inner: Mutex<Merge>,
}

impl PyMerge {
    fn lock(&self) -> std::sync::MutexGuard<'_, Merge> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ndjson<'py>(
    py: Python<'py>,
    rows: impl Iterator<Item = serde_json::Value>,
) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, &r).expect("rows serialize");
        out.push(b'\n');
    }
    PyBytes::new(py, &out)
}

#[pymethods]
impl PyMerge {
    /// Creates the run directory `out_dir` for `plan_json` whose clock starts at `epoch0`;
    /// `names`: the entries reported (tasks, then hooks), `paths`: where each task runs.
    #[new]
    fn new(
        plan_json: &str,
        out_dir: PathBuf,
        names: Vec<String>,
        paths: Vec<String>,
        epoch0: f64,
    ) -> PyResult<Self> {
        let m = Merge::create(&out_dir, plan_json, names, paths, epoch0).map_err(CoreError)?;
        Ok(PyMerge {
            inner: Mutex::new(m),
        })
    }

    /// Adds one interval (JSON, as `Run.take_intervals` gives it) reported by `reporter`:
    /// `fresh`, `duplicate` (already seen, ignored) or `late` (folded into the next
    /// interval to close).
    fn add(&self, reporter: &str, interval: &[u8]) -> PyResult<&'static str> {
        let iv: Interval = serde_json::from_slice(interval)
            .map_err(|e| PyValueError::new_err(format!("not an interval: {e}")))?;
        Ok(self.lock().add(reporter, &iv).map_err(CoreError)?.name())
    }

    /// Closes every interval each of `live` has reported, and every interval below
    /// `through`; returns how many closed.
    fn close_ready(&self, live: Vec<String>, through: u64) -> PyResult<usize> {
        Ok(self.lock().close_ready(&live, through).map_err(CoreError)?)
    }

    /// `reporter` will report nothing more (its agent was lost): its taken and unstarted
    /// arrivals count as unsent, its unanswered iterations as cancelled. Returns the arrivals
    /// it took, per entry.
    fn give_up(&self, reporter: &str) -> Vec<u64> {
        self.lock().give_up(reporter)
    }

    /// The requests `reporter` has reported so far.
    fn requests_of(&self, reporter: &str) -> u64 {
        self.lock().requests_of(reporter)
    }

    /// The highest interval `reporter` reported, if any.
    fn reported_upto(&self, reporter: &str) -> Option<u64> {
        self.lock().reported_upto(reporter)
    }

    /// Rows closed since the last call, as newline-delimited JSON.
    fn take_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let rows = self.lock().take_rows();
        ndjson(
            py,
            rows.into_iter()
                .map(|r| serde_json::to_value(r).expect("rows serialize")),
        )
    }

    /// Per-reporter rows added since the last call (newline-delimited JSON, each with its
    /// `agent`).
    fn take_reporter_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let rows = self.lock().take_reporter_rows();
        ndjson(
            py,
            rows.into_iter().map(|(who, r)| {
                let mut v = serde_json::to_value(r).expect("rows serialize");
                v.as_object_mut()
                    .expect("a row is an object")
                    .insert("agent".into(), who.into());
                v
            }),
        )
    }

    /// Everything closed so far: corrected latency (`service=False`) or service time.
    #[pyo3(signature = (task=None, service=false))]
    fn histogram(&self, task: Option<&str>, service: bool) -> PyResult<PyHistogram> {
        let d = self.lock().cumulative(task).map_err(CoreError)?;
        Ok(PyHistogram::ours(if service {
            d.service
        } else {
            d.corrected
        }))
    }

    /// The summary of what has closed so far (`ended` "running").
    fn summary_so_far_json(&self) -> String {
        let m = self.lock();
        let s = m.summary("running", m.sent_s(), 0.0, None);
        serde_json::to_string(&s).expect("summaries serialize")
    }

    /// Closes what is still open, writes `summary.json` and returns it. `targets`: per entry,
    /// the arrivals that were due (open model).
    #[pyo3(signature = (ended, duration_s=None, drain_s=0.0, targets=None))]
    fn finish(
        &self,
        ended: &str,
        duration_s: Option<f64>,
        drain_s: f64,
        targets: Option<Vec<f64>>,
    ) -> PyResult<String> {
        let s = self
            .lock()
            .finish(ended, duration_s, drain_s, targets)
            .map_err(CoreError)?;
        Ok(serde_json::to_string(&s).expect("summaries serialize"))
    }

    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.lock().names().to_vec()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.lock().path()
    }
}

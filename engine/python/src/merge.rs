//! `Merge`: a distributed run's coordinator adds its agents' intervals into one run directory.

use std::path::PathBuf;
use std::sync::Mutex;

use loadpilot_core::measure::merge::Merge;
use loadpilot_core::measure::summary::Ended;
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

#[pymethods]
impl PyMerge {
    /// Creates the run directory `out_dir` for `plan_json` whose clock starts at `epoch0`;
    /// `names`: the entries reported (tasks, then hooks), `runs_on`: where each task runs.
    #[new]
    fn new(
        plan_json: &str,
        out_dir: PathBuf,
        names: Vec<String>,
        runs_on: Vec<String>,
        epoch0: f64,
    ) -> PyResult<Self> {
        let m = Merge::create(&out_dir, plan_json, names, runs_on, epoch0).map_err(CoreError)?;
        Ok(PyMerge {
            inner: Mutex::new(m),
        })
    }

    /// Adds one interval (JSON, as `Run.take_intervals` gives it) reported by `reporter`:
    /// `fresh`, `duplicate` (already seen, ignored) or `late` (folded into the next
    /// interval to close). A report that cannot be added raises `ReportError`.
    fn add(&self, reporter: &str, interval: &[u8]) -> PyResult<&'static str> {
        Ok(self
            .lock()
            .add_json(reporter, interval)
            .map_err(CoreError)?
            .name())
    }

    /// Closes every interval each of `live` has reported, and every interval below
    /// `through`; returns how many closed.
    fn close_ready(&self, live: Vec<String>, through: u64) -> PyResult<usize> {
        Ok(self.lock().close_ready(&live, through).map_err(CoreError)?)
    }

    /// `reporter` will report nothing more (its agent was lost): its taken and unstarted
    /// arrivals count as unsent, its unanswered iterations as cancelled, and so do the
    /// arrivals its agent last said it had `sent` (per entry) beyond what it reported.
    /// Returns the arrivals it took, per entry.
    #[pyo3(signature = (reporter, sent=Vec::new()))]
    fn lose(&self, reporter: &str, sent: Vec<u64>) -> Vec<u64> {
        self.lock().lose(reporter, &sent)
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
        PyBytes::new(py, &crate::ndjson(rows))
    }

    /// Per-reporter rows added since the last call (newline-delimited JSON, each with its
    /// `agent`).
    fn take_reporter_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let rows = self.lock().take_reporter_rows();
        let tagged = rows.into_iter().map(|(who, r)| {
            let mut v = serde_json::to_value(r).expect("rows serialize");
            v.as_object_mut()
                .expect("a row is an object")
                .insert("agent".into(), who.into());
            v
        });
        PyBytes::new(py, &crate::ndjson(tagged))
    }

    /// Everything closed so far: corrected latency (`service=False`) or service time; of
    /// one task, of all, or of one request name of a task.
    #[pyo3(signature = (task=None, service=false, request=None))]
    fn histogram(
        &self,
        task: Option<&str>,
        service: bool,
        request: Option<&str>,
    ) -> PyResult<PyHistogram> {
        let d = self.lock().cumulative(task, request).map_err(CoreError)?;
        Ok(PyHistogram::ours(if service {
            d.service
        } else {
            d.corrected
        }))
    }

    /// The summary of what has closed so far (`ended` "running").
    fn summary_so_far_json(&self) -> String {
        let m = self.lock();
        let s = m.summary(Ended::Running, m.sent_s(), 0.0, None);
        serde_json::to_string(&s).expect("summaries serialize")
    }

    /// Closes what is still open, writes `summary.json` and returns it. `stopped`: the reason
    /// the run was stopped with, if it was; else it ended as the gravest of its slices'
    /// `ends`. `targets`: per entry, the arrivals that were due (open model).
    /// `fate_unknown`: arrivals lost agents may have sent that their takeovers sent again.
    #[pyo3(signature = (stopped, ends, duration_s=None, drain_s=0.0, targets=None, fate_unknown=0))]
    fn finish(
        &self,
        stopped: Option<&str>,
        ends: Vec<String>,
        duration_s: Option<f64>,
        drain_s: f64,
        targets: Option<Vec<f64>>,
        fate_unknown: u64,
    ) -> PyResult<String> {
        let stopped = stopped.map(Ended::parse).transpose().map_err(CoreError)?;
        let ends = ends
            .iter()
            .map(|e| Ended::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CoreError)?;
        let s = self
            .lock()
            .finish(stopped, &ends, duration_s, drain_s, targets, fate_unknown)
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

//! `Run`: a run in progress or finished; starting runs, and what Python asks of plans.

use std::path::PathBuf;
use std::time::Duration;

use loadpilot_core::measure::summary::Ended;
use loadpilot_core::plan::Plan;
use loadpilot_core::runner::{self, RunHandle};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::hist::PyHistogram;
use crate::python_side::PyTickets;
use crate::{runtime, threads, CoreError, PlanError};

/// A run in progress (or finished) in this process.
#[pyclass(module = "loadpilot._engine", name = "Run")]
pub(crate) struct PyRun {
    handle: RunHandle,
}

#[pymethods]
impl PyRun {
    /// Interval rows closed since the last call, as newline-delimited JSON.
    fn take_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let out = crate::ndjson(self.handle.take_rows());
        PyBytes::new(py, &out)
    }

    /// Intervals closed since the last call, each whole as JSON (histograms and counters of
    /// every entry): empty unless the run was started to report them.
    fn take_intervals<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.handle
            .take_intervals()
            .iter()
            .map(|iv| PyBytes::new(py, &serde_json::to_vec(iv).expect("intervals serialize")))
            .collect()
    }

    /// Waits up to `timeout_s` (None: until the end) with the GIL released; True once the run
    /// has ended. Signals are checked every 100 ms, so Ctrl-C raises KeyboardInterrupt here.
    #[pyo3(signature = (timeout_s=None))]
    fn wait(&self, py: Python<'_>, timeout_s: Option<f64>) -> PyResult<bool> {
        // A timeout beyond a year (or inf, or nan) waits as long as None does.
        let deadline = timeout_s
            .filter(|t| *t <= loadpilot_core::plan::MAX_SECONDS)
            .map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let step = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let handle = self.handle.clone();
            if py.detach(move || handle.wait(step)) {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Asks the run to stop: no new requests start, in-flight ones are dropped, the partial
    /// interval is closed and the summary written.
    /// `reason`: `stopped` (the default) or `aborted` (a threshold failed during the run).
    #[pyo3(signature = (reason="stopped"))]
    fn stop(&self, reason: &str) -> PyResult<()> {
        let reason = match reason {
            "stopped" => Ended::Stopped,
            "aborted" => Ended::Aborted,
            other => {
                return Err(PyValueError::new_err(format!(
                    "reason is 'stopped' or 'aborted', got {other:?}"
                )))
            }
        };
        self.handle.stop_with(reason);
        Ok(())
    }

    #[getter]
    fn done(&self) -> bool {
        self.handle.is_done()
    }

    /// `summary.json` as text, once the run has ended.
    fn summary_json(&self) -> Option<String> {
        self.handle
            .summary()
            .map(|s| serde_json::to_string(&s).expect("summaries serialize"))
    }

    /// `summary.json` as text once the run has ended; while it goes, the summary of the
    /// seconds closed so far (`ended` "running").
    fn summary_so_far_json(&self) -> String {
        serde_json::to_string(&self.handle.summary_so_far()).expect("summaries serialize")
    }

    /// The run's own error, if it ended on one (e.g. the disk filled up).
    fn failure(&self) -> Option<String> {
        self.handle.failure()
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
        let d = self.handle.cumulative(task, request).map_err(CoreError)?;
        Ok(PyHistogram::ours(if service {
            d.service
        } else {
            d.corrected
        }))
    }

    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.handle.names().to_vec()
    }

    /// Where the engine posts the Python work of this run (task bodies, hooks); None when
    /// the plan has no Python part.
    fn tickets(&self) -> Option<PyTickets> {
        self.handle.tickets().map(|inner| PyTickets { inner })
    }

    /// Seconds since the run's clock started (0 while its users are set up).
    fn elapsed_s(&self) -> f64 {
        self.handle.elapsed_s()
    }

    /// A distributed slice's progress (open model): one past the highest arrival index of
    /// the schedule sent, and the arrivals sent per task; None for a closed model or a run
    /// that is no slice.
    fn progress(&self) -> Option<(u64, Vec<u64>)> {
        self.handle.progress()
    }

    /// The most virtual users (or connections) the run has at once.
    fn max_users(&self) -> u64 {
        self.handle.max_users()
    }

    /// The Python side cannot go on: the run ends with this error.
    fn python_failed(&self, why: &str) {
        self.handle.python_failed(why);
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.handle.dir().clone()
    }
}

/// Validates `plan_json`, creates `out_dir` and starts the run; returns at once.
/// `report`: keep every closed interval whole for `take_intervals` (an agent's run).
#[pyfunction]
#[pyo3(signature = (plan_json, out_dir, report=false))]
pub(crate) fn start_run(plan_json: &str, out_dir: PathBuf, report: bool) -> PyResult<PyRun> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    let rt = runtime()?;
    let handle =
        runner::start_with(rt.handle(), threads(), plan, out_dir, report).map_err(CoreError)?;
    Ok(PyRun { handle })
}

/// Corners, total and peak (see `profile_points`).
type ProfileShape = (Vec<(f64, f64)>, f64, f64);

/// A profile's corners `(seconds, value)` (two per linear piece, so consecutive pairs are its
/// segments), its total (the integral of the curve) and its peak, as the engine schedules
/// them: the one rule for charts, the tuner, capacity planning and serve mode's caps.
#[pyfunction]
pub(crate) fn profile_points(stages_json: &str) -> PyResult<ProfileShape> {
    let stages: Vec<loadpilot_core::plan::Stage> = serde_json::from_str(stages_json)
        .map_err(|e| PlanError::new_err(format!("invalid stages: {e}")))?;
    let p = loadpilot_core::plan::profile::Profile::new(&stages).map_err(CoreError)?;
    Ok((p.points(), p.total(), p.peak()))
}

/// An open model's arrivals of the plan's slice (its shard, from its `from_s` and
/// `from_index`) due before `until_s` seconds into the run, per task; None for a closed
/// model. What a lost slice was due to send by an instant.
#[pyfunction]
pub(crate) fn arrivals_before(plan_json: &str, until_s: f64) -> PyResult<Option<Vec<u64>>> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    loadpilot_core::runner::arrivals_before(&plan, until_s).map_err(|e| CoreError(e).into())
}

/// The plan as the engine reads it, every default filled in (JSON): what the plan models of
/// another language must agree with.
#[pyfunction]
pub(crate) fn normalize_plan(plan_json: &str) -> PyResult<String> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    Ok(plan.to_json())
}

/// The summary (JSON) of a run cut short, rebuilt from its run directory's files.
#[pyfunction]
pub(crate) fn summarize_dir(dir: PathBuf) -> PyResult<String> {
    let s = loadpilot_core::measure::rundir::summarize_dir(&dir).map_err(CoreError)?;
    Ok(serde_json::to_string(&s).expect("summaries serialize"))
}

/// Checks a plan without running it.
#[pyfunction]
pub(crate) fn validate_plan(plan_json: &str) -> PyResult<()> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    plan.validate().map_err(CoreError)?;
    loadpilot_core::http::Target::parse(&plan.target, plan.insecure).map_err(CoreError)?;
    Ok(())
}

/// The name a request's measurements are kept under: `name`, or the method and the path as
/// written without its query.
#[pyfunction]
#[pyo3(signature = (name, method, path))]
pub(crate) fn request_name(name: Option<&str>, method: &str, path: &str) -> String {
    loadpilot_core::plan::request_name(name, method, path)
}

/// Why `name` cannot name a request, or None.
#[pyfunction]
pub(crate) fn request_name_problem(name: &str) -> Option<String> {
    loadpilot_core::plan::request_name_problem(name)
}

/// Whether a process started with the allow-list `patterns` may send load to `url` (the
/// engine's rule, which its redirects follow too): no patterns means loopback only.
#[pyfunction]
pub(crate) fn target_allowed(url: &str, patterns: Vec<String>) -> bool {
    loadpilot_core::http::allow::url_allowed(url, &patterns)
}

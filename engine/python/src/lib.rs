//! `loadpilot._engine`: thin bindings over `loadpilot-core`. Types are converted, the GIL is
//! released while the engine works, and core errors become Python exceptions. No logic lives
//! here; the Python package wraps these in its public API.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loadpilot_core::check::Check;
use loadpilot_core::error::Error;
use loadpilot_core::metrics::{decode_hist, encode_hist, new_hist, Hist};
use loadpilot_core::plan::Expect;
use loadpilot_core::plan::Plan;
use loadpilot_core::runner::{self, RunHandle};
use loadpilot_core::session::{Mailbox, NoResponse, PyRequest, Session};
use loadpilot_core::target::{self, TargetConfig, TargetServer};
use loadpilot_core::template::Scope;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::runtime::Runtime;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;

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

struct CoreError(Error);

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
fn threads() -> usize {
    std::env::var("LOADPILOT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn runtime() -> PyResult<&'static Runtime> {
    static RT: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = runner::build_runtime(threads())
        .map_err(|e| LoadPilotError::new_err(format!("cannot start the engine runtime: {e}")))?;
    Ok(RT.get_or_init(|| rt))
}

/// An HdrHistogram of latencies recorded in microseconds; figures are returned in milliseconds.
#[pyclass(module = "loadpilot._engine", name = "Histogram")]
#[derive(Clone)]
struct PyHistogram {
    h: Hist,
}

#[pymethods]
impl PyHistogram {
    #[new]
    fn new() -> Self {
        PyHistogram { h: new_hist() }
    }

    /// Reads the base64 V2 (compressed) encoding used in `.hlog` files.
    #[staticmethod]
    fn decode(text: &str) -> PyResult<Self> {
        decode_hist(text)
            .map(|h| PyHistogram { h })
            .map_err(PyValueError::new_err)
    }

    fn encode(&self) -> String {
        encode_hist(&self.h)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.h.len()
    }

    /// The latency (ms) at percentile `p` (0..100).
    fn percentile(&self, p: f64) -> PyResult<Option<f64>> {
        if !(0.0..=100.0).contains(&p) {
            return Err(PyValueError::new_err(format!(
                "percentile must be in 0..100, got {p}"
            )));
        }
        Ok((!self.h.is_empty()).then(|| self.h.value_at_percentile(p) as f64 / 1000.0))
    }

    #[getter]
    fn max(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.max() as f64 / 1000.0)
    }

    #[getter]
    fn min(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.min() as f64 / 1000.0)
    }

    #[getter]
    fn mean(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.mean() / 1000.0)
    }

    /// Records a latency given in milliseconds.
    fn record(&mut self, ms: f64) -> PyResult<()> {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "latency must be >= 0 ms, got {ms}"
            )));
        }
        let us = ((ms * 1000.0).round() as u64).clamp(1, loadpilot_core::metrics::HIGHEST_US);
        self.h.saturating_record(us);
        Ok(())
    }

    /// Records many latencies given in milliseconds (one call for a whole column).
    fn record_many(&mut self, values: Vec<f64>) -> PyResult<()> {
        if let Some(bad) = values.iter().find(|ms| !(ms.is_finite() && **ms >= 0.0)) {
            return Err(PyValueError::new_err(format!(
                "latency must be >= 0 ms, got {bad}"
            )));
        }
        for ms in values {
            let us = ((ms * 1000.0).round() as u64).clamp(1, loadpilot_core::metrics::HIGHEST_US);
            self.h.saturating_record(us);
        }
        Ok(())
    }

    /// The recorded buckets as `(values_ms, counts)`, each value the highest latency its
    /// bucket stands for (what `percentile` answers), in increasing order.
    fn buckets(&self) -> (Vec<f64>, Vec<u64>) {
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for v in self.h.iter_recorded() {
            values.push(v.value_iterated_to() as f64 / 1000.0);
            counts.push(v.count_at_value());
        }
        (values, counts)
    }

    /// The percentile distribution as HdrHistogram prints it (`.hgrm`): rows of
    /// `(value_ms, quantile, total_count)`, `ticks` steps per halving of the distance to 100%.
    #[pyo3(signature = (ticks=5))]
    fn quantiles(&self, ticks: u32) -> PyResult<Vec<(f64, f64, u64)>> {
        if ticks == 0 {
            return Err(PyValueError::new_err("ticks must be at least 1"));
        }
        let mut total = 0u64;
        Ok(self
            .h
            .iter_quantiles(ticks)
            .map(|v| {
                total += v.count_since_last_iteration();
                (
                    v.value_iterated_to() as f64 / 1000.0,
                    v.quantile_iterated_to(),
                    total,
                )
            })
            .collect())
    }

    /// The standard deviation of the recorded latencies, in milliseconds.
    #[getter]
    fn stdev(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.stdev() / 1000.0)
    }

    /// Adds another histogram's counts into this one.
    fn add(&mut self, other: &PyHistogram) -> PyResult<()> {
        self.h
            .add(&other.h)
            .map_err(|e| PyValueError::new_err(format!("{e:?}")))
    }

    fn __add__(&self, other: &PyHistogram) -> PyResult<PyHistogram> {
        let mut out = self.clone();
        out.add(other)?;
        Ok(out)
    }

    fn __eq__(&self, other: &PyHistogram) -> bool {
        self.h == other.h
    }

    fn __repr__(&self) -> String {
        match self.percentile(99.0).ok().flatten() {
            Some(p99) => format!("Histogram(count={}, p99={p99:.3} ms)", self.h.len()),
            None => "Histogram(count=0)".into(),
        }
    }
}

/// A run in progress (or finished) in this process.
#[pyclass(module = "loadpilot._engine", name = "Run")]
struct PyRun {
    handle: RunHandle,
}

#[pymethods]
impl PyRun {
    /// Interval rows closed since the last call, as newline-delimited JSON.
    fn take_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::new();
        for r in self.handle.take_rows() {
            serde_json::to_writer(&mut out, &r).expect("rows serialize");
            out.push(b'\n');
        }
        PyBytes::new(py, &out)
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
            "stopped" => "stopped",
            "aborted" => "aborted",
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

    /// The run's own error, if it ended on one (e.g. the disk filled up).
    fn failure(&self) -> Option<String> {
        self.handle.failure()
    }

    /// Everything closed so far: corrected latency (`service=False`) or service time.
    #[pyo3(signature = (task=None, service=false))]
    fn histogram(&self, task: Option<&str>, service: bool) -> PyResult<PyHistogram> {
        let d = self.handle.cumulative(task).map_err(CoreError)?;
        Ok(PyHistogram {
            h: if service { d.service } else { d.corrected },
        })
    }

    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.handle.names().to_vec()
    }

    // What the Python-logic virtual users of `loadpilot` call; see engine/core/src/session.rs.

    /// Arrivals released so far as (index, due_s, task), waiting up to `wait_s` for the first
    /// with the GIL released; None once the schedule is done.
    fn take_arrivals(&self, py: Python<'_>, wait_s: f64) -> Option<Vec<(u64, f64, usize)>> {
        let handle = self.handle.clone();
        let wait = Duration::from_secs_f64(wait_s.clamp(0.0, 3600.0));
        py.detach(move || handle.take_arrivals(wait))
            .map(|v| v.into_iter().map(|a| (a.index, a.due_s, a.task)).collect())
    }

    /// Whether a virtual user may run an iteration of `task` due at `due_s` (None: now, a
    /// closed model's user); counts it as started.
    #[pyo3(signature = (task, due_s=None))]
    fn begin_iteration(&self, task: usize, due_s: Option<f64>) -> bool {
        self.handle.begin_iteration(task, due_s)
    }

    /// An iteration of `task` ran to its end.
    fn end_iteration(&self, task: usize) {
        self.handle.end_iteration(task);
    }

    fn next_task(&self) -> usize {
        self.handle.next_task()
    }

    fn users_at(&self, t: f64) -> f64 {
        self.handle.users_at(t)
    }

    fn max_users(&self) -> u64 {
        self.handle.max_users()
    }

    fn think_s(&self) -> f64 {
        self.handle.think_s()
    }

    fn elapsed_s(&self) -> f64 {
        self.handle.elapsed_s()
    }

    fn duration_s(&self) -> f64 {
        self.handle.duration_s()
    }

    fn is_stopping(&self) -> bool {
        self.handle.is_stopping()
    }

    fn record_exception(&self, task: usize) {
        self.handle.record_exception(task);
    }

    fn user_active(&self, active: bool) {
        self.handle.user_active(active);
    }

    fn exhaust(&self) {
        self.handle.exhaust();
    }

    fn finish_python(&self) {
        self.handle.finish_python();
    }

    fn session(&self, vu: u64) -> PySession {
        PySession {
            inner: Arc::new(self.handle.session(vu)),
            n_tasks: self.handle.names().len(),
        }
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.handle.dir().clone()
    }
}

/// (status, headers, body) of a response, or the kind of error.
type Outcome = Result<(u16, Vec<(String, String)>, Vec<u8>), String>;

fn outcome(r: Result<loadpilot_core::http::Response, NoResponse>) -> Outcome {
    r.map(|resp| (resp.status, resp.headers, resp.body.to_vec()))
        .map_err(|k| k.name().to_string())
}

/// A tuple (status, [(name, value)], body: bytes), or the error kind as a str.
fn outcome_to_py(py: Python<'_>, result: Outcome) -> PyResult<Py<PyAny>> {
    Ok(match result {
        Ok((status, headers, body)) => (status, headers, PyBytes::new(py, &body))
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Err(kind) => kind.into_pyobject(py)?.into_any().unbind(),
    })
}

/// One Python virtual user's connection: requests are timed and recorded by the engine.
#[pyclass(module = "loadpilot._engine", name = "Session")]
struct PySession {
    inner: Arc<Session>,
    n_tasks: usize,
}

#[allow(clippy::too_many_arguments)]
fn py_request(
    n_tasks: usize,
    task: Option<usize>,
    method: &str,
    path: &str,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout_s: Option<f64>,
    due_s: Option<f64>,
    expect_json: Option<&str>,
) -> PyResult<PyRequest> {
    let check = match expect_json {
        None => Check::default(),
        Some(text) => {
            let e: Expect = serde_json::from_str(text)
                .map_err(|e| PlanError::new_err(format!("invalid expect: {e}")))?;
            Check::compile(&e, &Scope::default(), "expect").map_err(CoreError)?
        }
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| PyValueError::new_err(format!("invalid HTTP method {method:?}")))?;
    if !path.starts_with('/') {
        return Err(PyValueError::new_err(format!(
            "request paths start with '/' (the target comes from the plan), got {path:?}"
        )));
    }
    let mut hs = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|_| PyValueError::new_err(format!("invalid value for header {k:?}")))?;
        hs.push((name, value));
    }
    if let Some(t) = timeout_s {
        loadpilot_core::plan::seconds("timeout", t, false)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
    }
    if task.is_some_and(|t| t >= n_tasks) {
        return Err(PyValueError::new_err(format!("no task number {task:?}")));
    }
    Ok(PyRequest {
        task,
        method,
        path: path.to_string(),
        headers: hs,
        body: body.map(Bytes::from).unwrap_or_default(),
        timeout: timeout_s.map(Duration::from_secs_f64),
        due_s,
        check,
    })
}

#[pymethods]
impl PySession {
    /// Starts a request and returns at once; its result is posted to `mailbox` under `id`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (task, method, path, headers, body, timeout_s, due_s, expect, mailbox, id))]
    fn request(
        &self,
        task: Option<usize>,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        timeout_s: Option<f64>,
        due_s: Option<f64>,
        expect: Option<&str>,
        mailbox: &PyMailbox,
        id: u64,
    ) -> PyResult<()> {
        let n = self.n_tasks;
        let req = py_request(
            n, task, method, path, headers, body, timeout_s, due_s, expect,
        )?;
        let session = self.inner.clone();
        let mailbox = mailbox.inner.clone();
        runtime()?.spawn(async move {
            let result = session.request(req).await;
            mailbox.post(id, result);
        });
        Ok(())
    }

    /// The same, blocking this thread (not the others) until the response is in.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (task, method, path, headers, body, timeout_s, due_s, expect))]
    fn request_blocking(
        &self,
        py: Python<'_>,
        task: Option<usize>,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        timeout_s: Option<f64>,
        due_s: Option<f64>,
        expect: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        let n = self.n_tasks;
        let req = py_request(
            n, task, method, path, headers, body, timeout_s, due_s, expect,
        )?;
        let session = self.inner.clone();
        let rt = runtime()?;
        let result =
            py.detach(move || rt.block_on(async move { outcome(session.request(req).await) }));
        outcome_to_py(py, result)
    }

    #[getter]
    fn vu(&self) -> u64 {
        self.inner.vu
    }
}

/// Finished requests waiting for the event loop (see `Mailbox` in engine/core/src/session.rs).
#[pyclass(module = "loadpilot._engine", name = "Mailbox")]
struct PyMailbox {
    inner: Arc<Mailbox>,
}

#[pymethods]
impl PyMailbox {
    #[new]
    fn new() -> PyResult<Self> {
        let inner = Mailbox::new()
            .map_err(|e| LoadPilotError::new_err(format!("cannot create a mailbox: {e}")))?;
        Ok(PyMailbox {
            inner: Arc::new(inner),
        })
    }

    /// The descriptor to watch with `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    /// Everything posted so far as (id, (status, headers, body) or error kind).
    fn take(&self, py: Python<'_>) -> PyResult<Vec<(u64, Py<PyAny>)>> {
        self.inner
            .take()
            .into_iter()
            .map(|(id, r)| Ok((id, outcome_to_py(py, outcome(r))?)))
            .collect()
    }
}

/// Validates `plan_json`, creates `out_dir` and starts the run; returns at once.
#[pyfunction]
fn start_run(plan_json: &str, out_dir: PathBuf) -> PyResult<PyRun> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    let rt = runtime()?;
    let handle = runner::start(rt.handle(), threads(), plan, out_dir).map_err(CoreError)?;
    Ok(PyRun { handle })
}

/// A profile's corners `(seconds, value)` and its total (the integral of the curve), as the
/// engine schedules them: the one rule for charts, the tuner and capacity planning.
#[pyfunction]
fn profile_points(stages_json: &str) -> PyResult<(Vec<(f64, f64)>, f64)> {
    let stages: Vec<loadpilot_core::profile::Stage> = serde_json::from_str(stages_json)
        .map_err(|e| PlanError::new_err(format!("invalid stages: {e}")))?;
    let p = loadpilot_core::profile::Profile::new(&stages).map_err(CoreError)?;
    Ok((p.points(), p.total()))
}

/// Checks a plan without running it.
#[pyfunction]
fn validate_plan(plan_json: &str) -> PyResult<()> {
    let plan = Plan::from_json(plan_json).map_err(CoreError)?;
    plan.validate().map_err(CoreError)?;
    loadpilot_core::http::Target::parse(&plan.target, plan.insecure).map_err(CoreError)?;
    Ok(())
}

/// The built-in target server, running on the engine's runtime in this process.
#[pyclass(module = "loadpilot._engine", name = "TargetServer")]
struct PyTarget {
    server: TargetServer,
}

#[pymethods]
impl PyTarget {
    #[getter]
    fn url(&self) -> String {
        self.server.url()
    }
    #[getter]
    fn port(&self) -> u16 {
        self.server.addr.port()
    }
    fn stop(&self) {
        self.server.stop();
    }
}

#[pyfunction]
fn start_target(config_json: &str) -> PyResult<PyTarget> {
    let cfg: TargetConfig = serde_json::from_str(config_json)
        .map_err(|e| PlanError::new_err(format!("invalid target settings: {e}")))?;
    let rt = runtime()?;
    let server = target::start(rt.handle(), cfg).map_err(CoreError)?;
    Ok(PyTarget { server })
}

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
fn read_hlog(path: PathBuf) -> PyResult<Vec<LogLine>> {
    let entries = loadpilot_core::rundir::read_hlog(&path).map_err(CoreError)?;
    Ok(log_lines(entries))
}

/// Follows an `.hlog` as it grows: the complete lines from byte `offset` on, and the offset
/// to call again with.
#[pyfunction]
fn read_hlog_from(path: PathBuf, offset: u64) -> PyResult<(Vec<LogLine>, u64)> {
    let (entries, next) =
        loadpilot_core::rundir::read_hlog_from(&path, offset).map_err(CoreError)?;
    Ok((log_lines(entries), next))
}

#[pymodule]
mod _engine {
    #[pymodule_export]
    use super::{
        profile_points, read_hlog, read_hlog_from, start_run, start_target, validate_plan,
        LoadPilotError, PlanError, PyHistogram, PyMailbox, PyRun, PySession, PyTarget, RunDirError,
        TargetError,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let kinds: Vec<&str> = loadpilot_core::http::ErrorKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        m.add("ERROR_KINDS", kinds)
    }
}

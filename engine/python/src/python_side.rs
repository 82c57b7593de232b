//! What Python's virtual users use: the tickets the engine posts (task bodies and hooks to
//! run), each user's `Session` (requests timed and recorded by the engine), the `Mailbox` their
//! results come back through, and `Check`, an `expect` compiled once. See
//! `engine/core/src/runner/python.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use loadpilot_core::outcome::ErrorKind;
use loadpilot_core::plan::check;
use loadpilot_core::plan::template::Scope;
use loadpilot_core::plan::Expect;
use loadpilot_core::runner::python::{
    Asked, Done, FileAsked, Inbox, Mailbox, NoResponse, PyRequest, Session, Ticket, Work,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{runtime, CoreError, LoadPilotError, PlanError};

/// Python work the engine posted: take them in batches when `fileno()` is readable.
#[pyclass(module = "loadpilot._engine", name = "Tickets")]
pub(crate) struct PyTickets {
    pub(crate) inner: Arc<Inbox<Ticket>>,
}

#[pymethods]
impl PyTickets {
    /// The descriptor to watch with `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    /// The tickets posted so far, each as `(ticket, vu, task, hook, due_s, row)` (what the
    /// ticket's getters give, in one call), and whether the run is over (no more will come).
    #[allow(clippy::type_complexity)]
    fn take(&self) -> (Vec<TicketParts>, bool) {
        let (tickets, closed) = self.inner.take();
        let tickets = tickets
            .into_iter()
            .map(|mut t| {
                let (vu, work, due_s, row) = (t.vu, t.work, t.due_s, t.row.take());
                let ticket = PyTicket {
                    inner: Mutex::new(t),
                };
                (ticket, vu, task_of(work), hook_of(work), due_s, row)
            })
            .collect();
        (tickets, closed)
    }
}

/// A ticket with its parts: (ticket, vu, task, hook, due_s, row).
type TicketParts = (
    PyTicket,
    u64,
    Option<usize>,
    Option<&'static str>,
    Option<f64>,
    Option<Vec<String>>,
);

fn task_of(work: Work) -> Option<usize> {
    match work {
        Work::Task(i) => Some(i),
        _ => None,
    }
}

fn hook_of(work: Work) -> Option<&'static str> {
    match work {
        Work::Task(_) => None,
        Work::OnStart => Some("on_start"),
        Work::OnStop => Some("on_stop"),
    }
}

/// One piece of Python work for one virtual user: a task's iteration, `on_start` or
/// `on_stop`. Answer it with `done`; one dropped unanswered counts as cancelled.
#[pyclass(module = "loadpilot._engine", name = "Ticket")]
pub(crate) struct PyTicket {
    inner: Mutex<Ticket>,
}

impl PyTicket {
    fn with<R>(&self, f: impl FnOnce(&mut Ticket) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[pymethods]
impl PyTicket {
    #[getter]
    fn vu(&self) -> u64 {
        self.with(|t| t.vu)
    }

    /// The task's number for an iteration; None for a hook.
    #[getter]
    fn task(&self) -> Option<usize> {
        self.with(|t| task_of(t.work))
    }

    /// `on_start` or `on_stop`; None for an iteration.
    #[getter]
    fn hook(&self) -> Option<&'static str> {
        self.with(|t| hook_of(t.work))
    }

    #[getter]
    fn iteration(&self) -> u64 {
        self.with(|t| t.iteration)
    }

    /// Seconds after the run's start the iteration was due (its first request is measured
    /// from it); None: from when it is sent.
    #[getter]
    fn due_s(&self) -> Option<f64> {
        self.with(|t| t.due_s)
    }

    /// The feeder row's values, in the feeder's column order (given once: `Tickets.take`
    /// hands it over with the ticket, which then holds it no more).
    #[getter]
    fn row(&self) -> Option<Vec<String>> {
        self.with(|t| t.row.clone())
    }

    /// The user's session (the same for every ticket of the user).
    #[getter]
    fn session(&self) -> PySession {
        self.with(|t| PySession {
            inner: t.session.clone(),
        })
    }

    /// How it ended: `ran`, `raised` or `cancelled`; `values` (on_start only): the user's
    /// values for its engine requests.
    #[pyo3(signature = (how, values=None))]
    fn done(&self, how: &str, values: Option<BTreeMap<String, String>>) -> PyResult<()> {
        let d = match (how, values) {
            ("ran", Some(v)) => Done::Started(v),
            ("ran", None) => Done::Ran,
            ("raised", _) => Done::Raised,
            ("cancelled", _) => Done::Cancelled,
            (other, _) => {
                return Err(PyValueError::new_err(format!(
                    "a ticket ends as 'ran', 'raised' or 'cancelled', not {other:?}"
                )))
            }
        };
        self.with(|t| t.done(d));
        Ok(())
    }
}

/// `expect=`, compiled once and used for many requests.
#[pyclass(module = "loadpilot._engine", name = "Check", frozen)]
pub(crate) struct PyCheck {
    inner: check::Check,
}

#[pymethods]
impl PyCheck {
    #[new]
    fn new(expect_json: &str) -> PyResult<Self> {
        let e: Expect = serde_json::from_str(expect_json)
            .map_err(|e| PlanError::new_err(format!("invalid expect: {e}")))?;
        let inner = check::Check::compile(&e, &Scope::default(), "expect").map_err(CoreError)?;
        Ok(PyCheck { inner })
    }
}

/// (status, headers, body, url, redirects, elapsed seconds) of a response, or the kind of
/// error.
type Outcome = Result<
    (
        u16,
        Vec<(String, String)>,
        Vec<u8>,
        Option<String>,
        u32,
        f64,
    ),
    String,
>;

fn outcome(r: Result<loadpilot_core::http::Response, NoResponse>) -> Outcome {
    r.map(|resp| {
        (
            resp.status,
            resp.headers,
            resp.body.to_vec(),
            resp.url,
            resp.redirects,
            resp.elapsed.as_secs_f64(),
        )
    })
    .map_err(|k| k.name().to_string())
}

/// A tuple (status, [(name, value)], body: bytes, url or None, redirects, elapsed seconds), or
/// the error kind as a str.
fn outcome_to_py(py: Python<'_>, result: Outcome) -> PyResult<Py<PyAny>> {
    Ok(match result {
        Ok((status, headers, body, url, redirects, elapsed)) => (
            status,
            headers,
            PyBytes::new(py, &body),
            url,
            redirects,
            elapsed,
        )
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Err(kind) => kind.into_pyobject(py)?.into_any().unbind(),
    })
}

/// One virtual user's connection: requests are timed and recorded by the engine.
#[pyclass(module = "loadpilot._engine", name = "Session")]
pub(crate) struct PySession {
    inner: Arc<Session>,
}

/// A file of a form: (field, file name, content, path, content type).
type PyFile = (
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
);

/// A request checked against its session's run, ready to send (once or more).
#[pyclass(module = "loadpilot._engine", name = "Call", frozen)]
pub(crate) struct PyCall {
    inner: PyRequest,
}

#[pymethods]
impl PySession {
    /// A request checked against this run (a `ValueError` saying what is wrong). `task`: the
    /// entry it counts for (a task, or on_start's); None for on_stop's. `name`: what it is
    /// measured under (None: the method and the path without its query).
    /// `form`: name and value pairs (urlencoded, or a multipart form's text fields when
    /// there are `files`: (field, file name, content, path, content type), content or path
    /// given, the others None for their defaults). `follow_redirects`, `max_redirects`: None
    /// for the plan's.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (task, name, method, path, headers, body, form, files, timeout_s, due_s, check, follow_redirects, max_redirects))]
    fn prepare(
        &self,
        task: Option<usize>,
        name: Option<&str>,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        form: Option<Vec<(String, String)>>,
        files: Vec<PyFile>,
        timeout_s: Option<f64>,
        due_s: Option<f64>,
        check: Option<PyRef<'_, PyCheck>>,
        follow_redirects: Option<bool>,
        max_redirects: Option<u32>,
    ) -> PyResult<PyCall> {
        let asked = Asked {
            task,
            name,
            method,
            path,
            headers,
            body,
            form,
            files: files
                .into_iter()
                .map(|(field, filename, content, path, content_type)| FileAsked {
                    field,
                    filename,
                    content,
                    path,
                    content_type,
                })
                .collect(),
            timeout_s,
            due_s,
            check: check.map(|c| c.inner.clone()),
            follow_redirects,
            max_redirects,
        };
        let inner = PyRequest::new(asked, self.inner.entries()).map_err(PyValueError::new_err)?;
        Ok(PyCall { inner })
    }

    /// Starts `call` and returns at once; its result is posted to `mailbox` under `id`.
    fn request(&self, call: &PyCall, mailbox: &PyMailbox, id: u64) -> PyResult<()> {
        let req = call.inner.clone();
        let session = self.inner.clone();
        let mailbox = mailbox.inner.clone();
        runtime()?.spawn(async move {
            let result = session.request(req).await;
            let _ = mailbox.post((id, result));
        });
        Ok(())
    }

    /// The same, blocking this thread (not the others) until the response is in. The
    /// exchange runs on the engine's threads, as an async body's does (its socket's events
    /// are handled where they arrive); this thread is woken once, when it is over.
    fn request_blocking(&self, py: Python<'_>, call: &PyCall) -> PyResult<Py<PyAny>> {
        let req = call.inner.clone();
        let session = self.inner.clone();
        let rt = runtime()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(outcome(session.request(req).await));
        });
        let result = py
            .detach(move || rx.recv())
            .map_err(|_| LoadPilotError::new_err("the engine dropped a request"))?;
        outcome_to_py(py, result)
    }

    /// A request's failure decided in Python once its response was in (`catch_response`):
    /// `kind` is `check` (a failure or an exception in the block) or `status` (a 4xx or 5xx
    /// not marked a success), counted now for request `name` of entry `task`, with `message`.
    /// `name`: what the request was measured under (None: its method and path, as sent).
    #[pyo3(signature = (task, name, method, path, kind, message))]
    fn settle(
        &self,
        task: Option<usize>,
        name: Option<&str>,
        method: &str,
        path: &str,
        kind: &str,
        message: &str,
    ) -> PyResult<()> {
        let kind = [ErrorKind::Check, ErrorKind::Status]
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "a settled failure is of kind check or status, not {kind:?}"
                ))
            })?;
        let name = loadpilot_core::plan::request_name(name, method, path);
        self.inner.settle(task, &name, kind, message);
        Ok(())
    }

    /// The user's wait after its current iteration (closed model), chosen in Python: it
    /// replaces the plan's think time once. A value that is not a finite time >= 0 is ignored.
    fn wait_next(&self, seconds: f64) {
        self.inner.wait_next(seconds);
    }

    #[getter]
    fn vu(&self) -> u64 {
        self.inner.vu
    }
}

/// Finished requests waiting for the event loop.
#[pyclass(module = "loadpilot._engine", name = "Mailbox")]
pub(crate) struct PyMailbox {
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
            .0
            .into_iter()
            .map(|(id, r)| Ok((id, outcome_to_py(py, outcome(r))?)))
            .collect()
    }
}

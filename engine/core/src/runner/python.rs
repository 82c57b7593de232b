//! Python in a run: the engine's side.
//!
//! The engine runs every iteration (see `runner`). A task whose body is Python code, and the
//! per-user hooks (`on_start`, `on_stop`), are run by Python when the engine asks: the worker
//! posts a [`Ticket`] to a [`Inbox`] that the Python event loop watches, Python runs the body
//! on that user's [`Session`] and says how it ended, and the worker goes on. The engine keeps
//! time, counts and records for both kinds of iteration; Python only decides what to send.
//! A session's requests are timed and recorded exactly as engine requests are (latency from
//! the iteration's due instant, service time from the send).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::Method;
use tokio::sync::oneshot;

use crate::http::body::{self, Payload};
use crate::http::{Client, Outgoing, Response};
use crate::outcome::ErrorKind;
use crate::plan::check::Check;
use crate::plan::template::Values;
use crate::plan::Hooks;
use crate::runner::{exchange, Ctx, Keep};

/// Why a Python request has no response: a failure the engine counted, or the run ending
/// while it was in flight (its iteration is then counted as cancelled, nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResponse {
    Failed(ErrorKind),
    Cancelled,
}

impl NoResponse {
    /// The name Python's `RequestError.kind` carries.
    pub fn name(self) -> &'static str {
        match self {
            NoResponse::Failed(kind) => kind.name(),
            NoResponse::Cancelled => "cancelled",
        }
    }
}

/// A queue one side appends to and the Python event loop drains in batches. Engine threads
/// never take the GIL: they append and, when the queue was empty, write one byte to a socket
/// the loop watches (`loop.add_reader`), so the loop wakes once for a whole batch.
pub struct Inbox<T> {
    items: Mutex<(Vec<T>, bool)>,
    bell: UnixStream,
    watched: UnixStream,
}

/// Finished requests of Python code, by the id Python gave each.
pub type Mailbox = Inbox<(u64, Result<Response, NoResponse>)>;

impl<T> Inbox<T> {
    pub fn new() -> std::io::Result<Self> {
        let (bell, watched) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        watched.set_nonblocking(true)?;
        Ok(Inbox {
            items: Mutex::new((Vec::new(), false)),
            bell,
            watched,
        })
    }

    /// The descriptor that becomes readable when items are waiting (or the inbox closed).
    pub fn fd(&self) -> RawFd {
        self.watched.as_raw_fd()
    }

    fn ring(&self) {
        // A full socket buffer means a wake-up is pending already.
        let _ = (&self.bell).write(&[1]);
    }

    /// Appends `item`; hands it back when the inbox is closed.
    pub fn post(&self, item: T) -> Result<(), T> {
        let was_empty = {
            let mut g = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if g.1 {
                return Err(item);
            }
            g.0.push(item);
            g.0.len() == 1
        };
        if was_empty {
            self.ring();
        }
        Ok(())
    }

    /// No more items: what waits is dropped, the reader is woken to see it.
    pub fn close(&self) {
        let dropped = {
            let mut g = self.items.lock().unwrap_or_else(|e| e.into_inner());
            g.1 = true;
            std::mem::take(&mut g.0)
        };
        drop(dropped);
        self.ring();
    }

    /// Everything posted so far, and whether the inbox is closed. The bell is silenced
    /// first, so an item posted meanwhile rings it again and is never left unnoticed.
    pub fn take(&self) -> (Vec<T>, bool) {
        let mut sink = [0u8; 256];
        while matches!((&self.watched).read(&mut sink), Ok(n) if n > 0) {}
        let mut g = self.items.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut g.0), g.1)
    }
}

/// What the engine asks Python to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// An iteration of this task (its body is Python code).
    Task(usize),
    OnStart,
    OnStop,
}

/// How Python says a ticket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The body ran to its end (a request that failed was counted by the engine already).
    Ran,
    /// `on_start` ran, and set these values for the user's engine requests.
    Started(BTreeMap<String, String>),
    /// The body raised: an `exception` error of its iteration.
    Raised,
    /// The run ended under it: nothing more is counted.
    Cancelled,
}

/// One piece of Python work for one virtual user.
pub struct Ticket {
    pub vu: u64,
    pub work: Work,
    /// The iteration's number (the feeder row's), or the user's for hooks.
    pub iteration: u64,
    /// The iteration's due instant, seconds after the run's start: its first request is
    /// measured from it. `None`: from when it is sent.
    pub due_s: Option<f64>,
    pub row: Option<Vec<String>>,
    pub session: Arc<Session>,
    reply: Option<oneshot::Sender<Done>>,
}

impl Ticket {
    /// Says how the work ended; the first word counts.
    pub fn done(&mut self, how: Done) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(how);
        }
    }
}

/// The Python side of a run: the tickets, the hooks, and the users whose `on_stop` is due.
pub(crate) struct PythonSide {
    pub(crate) tickets: Arc<Inbox<Ticket>>,
    pub(crate) hooks: Hooks,
    /// Users that started (their `on_start` ran, or there is none): `on_stop` runs for them.
    pub(crate) started: Mutex<Vec<Arc<Session>>>,
}

impl PythonSide {
    pub(crate) fn new(hooks: Hooks) -> std::io::Result<Self> {
        Ok(PythonSide {
            tickets: Arc::new(Inbox::new()?),
            hooks,
            started: Mutex::new(Vec::new()),
        })
    }

    /// Posts a ticket and waits for Python's word. A ticket Python drops unanswered, or one
    /// posted once the Python side is gone, is `Cancelled`.
    pub(crate) async fn ask(
        &self,
        session: &Arc<Session>,
        work: Work,
        iteration: u64,
        due_s: Option<f64>,
        row: Option<Vec<String>>,
    ) -> Done {
        let (tx, rx) = oneshot::channel();
        let ticket = Ticket {
            vu: session.vu,
            work,
            iteration,
            due_s,
            row,
            session: session.clone(),
            reply: Some(tx),
        };
        if self.tickets.post(ticket).is_err() {
            return Done::Cancelled;
        }
        rx.await.unwrap_or(Done::Cancelled)
    }
}

/// One virtual user's connection and cookies, shared by its engine and Python iterations.
pub struct Session {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) client: tokio::sync::Mutex<Client>,
    pub vu: u64,
    /// The wait Python chose for after the current iteration (closed model), in seconds as
    /// f64 bits; `NO_WAIT`: the plan's think time.
    wait: AtomicU64,
}

const NO_WAIT: u64 = u64::MAX;

/// A request as Python gives it.
#[derive(Clone)]
pub struct PyRequest {
    /// The entry it counts for (a task, or `on_start`); `None` for `on_stop`, whose requests
    /// come after the run's measurement and are sent even when the run was stopped.
    pub task: Option<usize>,
    /// The name its measurements are kept under (`request_name`'s rule).
    pub name: String,
    pub method: Method,
    /// Path and query, appended to the target's base path.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Payload,
    /// `None`: the plan's timeout (the scenario's `timeout`), as for engine tasks.
    pub timeout: Option<Duration>,
    /// The iteration's due instant (seconds after the start), for its first request.
    pub due_s: Option<f64>,
    /// `expect`; without one, a 4xx or 5xx counts as a `status` error.
    pub check: Check,
    /// Whether redirects are followed, and how many at most; `None`: the plan's.
    pub follow_redirects: Option<bool>,
    pub max_redirects: Option<u32>,
}

/// A request as Python asked for it, unchecked: `PyRequest::new` checks it.
pub struct Asked<'a> {
    pub task: Option<usize>,
    /// `None`: the method and the path without its query.
    pub name: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// A form's name and value pairs: sent urlencoded, or as the text fields of a multipart
    /// form when there are `files`.
    pub form: Option<Vec<(String, String)>>,
    pub files: Vec<FileAsked>,
    pub timeout_s: Option<f64>,
    pub due_s: Option<f64>,
    pub check: Option<Check>,
    /// Whether redirects are followed, and how many at most; `None`: the plan's.
    pub follow_redirects: Option<bool>,
    pub max_redirects: Option<u32>,
}

/// A file of a form as Python gives it: its field, file name, content or path (read as
/// the request is sent), content type.
pub struct FileAsked {
    pub field: String,
    pub filename: Option<String>,
    pub content: Option<Vec<u8>>,
    pub path: Option<String>,
    pub content_type: Option<String>,
}

impl PyRequest {
    /// Checks what Python asked for against a run of `entries` entries: a method and header
    /// names and values HTTP allows, a path (the target comes from the plan), a timeout in
    /// range, an entry the run has. The error says which.
    pub fn new(a: Asked<'_>, entries: usize) -> Result<Self, String> {
        let method = Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid HTTP method {:?}", a.method))?;
        if !a.path.starts_with('/') {
            return Err(format!(
                "request paths start with '/' (the target comes from the plan), got {:?}",
                a.path
            ));
        }
        let mut headers = Vec::with_capacity(a.headers.len());
        for (k, v) in a.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("invalid header name {k:?}"))?;
            let value =
                HeaderValue::from_str(&v).map_err(|_| format!("invalid value for header {k:?}"))?;
            headers.push((name, value));
        }
        if let Some(t) = a.timeout_s {
            crate::plan::seconds("timeout", t, false).map_err(|e| e.to_string())?;
        }
        if a.task.is_some_and(|t| t >= entries) {
            return Err(format!("no task number {:?}", a.task));
        }
        if let Some(why) = a.name.and_then(crate::plan::request_name_problem) {
            return Err(why);
        }
        if let Some(n) = a.max_redirects {
            crate::plan::redirects_in_range("max_redirects", n).map_err(|e| e.to_string())?;
        }
        let has_type = headers.iter().any(|(k, _)| *k == CONTENT_TYPE);
        let (body, content_type) = match (a.body, a.form, a.files) {
            (body, None, files) if files.is_empty() => (
                Payload::from(body.map(Bytes::from).unwrap_or_default()),
                None,
            ),
            (None, Some(form), files) if files.is_empty() => {
                let ct = HeaderValue::from_static("application/x-www-form-urlencoded");
                (Payload::from(crate::http::form_body(form)), Some(ct))
            }
            (None, form, files) => {
                let mut parts = Vec::with_capacity(files.len());
                for f in files {
                    let (filename, content_type) = body::part_defaults(
                        &f.field,
                        f.filename.as_deref(),
                        f.path.as_deref(),
                        f.content_type.as_deref(),
                    )?;
                    let source = match (f.content, f.path) {
                        (Some(c), None) => body::Source::Content(Bytes::from(c)),
                        (None, Some(p)) => {
                            body::Source::Path(p.as_str().into(), body::file_len(&p)?)
                        }
                        _ => {
                            return Err(format!("file {:?}: give its content or its path", f.field))
                        }
                    };
                    parts.push(body::FilePart {
                        field: f.field,
                        filename,
                        content_type,
                        source,
                    });
                }
                let boundary = body::boundary();
                let ct =
                    HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                        .map_err(|_| "bad boundary".to_string())?;
                let form = form.unwrap_or_default();
                (body::multipart(&boundary, &form, &parts), Some(ct))
            }
            _ => return Err("a body and a form are two bodies: give one".to_string()),
        };
        if let (Some(ct), false) = (content_type, has_type) {
            headers.push((CONTENT_TYPE, ct));
        }
        Ok(PyRequest {
            task: a.task,
            name: crate::plan::request_name(a.name, method.as_str(), a.path),
            method,
            path: a.path.to_string(),
            headers,
            body,
            timeout: a.timeout_s.map(Duration::from_secs_f64),
            due_s: a.due_s,
            check: a.check.unwrap_or_default(),
            follow_redirects: a.follow_redirects,
            max_redirects: a.max_redirects,
        })
    }
}

impl Session {
    /// A request's failure decided in Python after its response was recorded (a check of
    /// `catch_response`): an error of `kind` of request `name` of entry `task`, now, with its
    /// message. Requests of no entry (`on_stop`'s) are not measured.
    pub fn settle(&self, task: Option<usize>, name: &str, kind: ErrorKind, message: &str) {
        let Some(task) = task.filter(|t| *t < self.entries()) else {
            return;
        };
        let slot = self.ctx.names.slot(task, name);
        self.ctx
            .recorder
            .record_both(task, slot, Instant::now(), |d| d.failed(kind, message));
    }

    pub(crate) fn new(ctx: Arc<Ctx>, vu: u64) -> Self {
        Session {
            client: tokio::sync::Mutex::new(Client::new(ctx.target.clone(), ctx.local_user(vu))),
            ctx,
            vu,
            wait: AtomicU64::new(NO_WAIT),
        }
    }

    /// The user's wait after its current iteration, chosen by Python code (a Locust
    /// `wait_time`): instead of the plan's think time, once. Not a finite time >= 0: ignored.
    pub fn wait_next(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.wait.store(seconds.to_bits(), Ordering::Relaxed);
        }
    }

    /// The wait Python chose for after this iteration, if any; cleared.
    pub(crate) fn take_wait(&self) -> Option<Duration> {
        match self.wait.swap(NO_WAIT, Ordering::Relaxed) {
            NO_WAIT => None,
            bits => Some(Duration::from_secs_f64(f64::from_bits(bits).min(1e9))),
        }
    }

    /// How many entries requests may count for: the plan's tasks, then on_start's.
    pub fn entries(&self) -> usize {
        self.ctx.recorder.entries()
    }

    /// Sends, records, and returns the whole response (or why there is none).
    pub async fn request(&self, r: PyRequest) -> Result<Response, NoResponse> {
        let ctx = &self.ctx;
        let mut client = self.client.lock().await;
        let from = match (r.due_s, ctx.started()) {
            (Some(d), Some(start)) => start + Duration::from_secs_f64(d),
            _ => Instant::now(),
        };
        if let (Some(_), Some(task)) = (r.due_s, r.task.filter(|t| *t < self.entries())) {
            // The iteration's first request: how long after its due instant Python sent it.
            let now = Instant::now();
            let late = now.saturating_duration_since(from).as_micros() as u64;
            ctx.recorder.record(task, now, |d| d.began_late(late));
        }
        let path = format!("{}{}", ctx.target.base_path(), r.path);
        let keep = Keep {
            body: true,
            headers: true,
        };
        let timeout = r.timeout.unwrap_or(ctx.default_timeout);
        let redirects =
            crate::plan::redirects(r.follow_redirects, r.max_redirects, ctx.redirect_defaults);
        let exchanged = exchange(ctx, &mut client, from, timeout, keep, redirects, || {
            Outgoing::new(r.method, &path, r.headers, r.body, &ctx.target.authority())
                .map_err(|_| ErrorKind::Check)
        });
        let Some(task) = r.task else {
            // on_stop: sent whatever state the run is in, bounded by its timeout.
            let ex = exchanged.await;
            return ex
                .outcome
                .map(|(_, resp)| resp)
                .map_err(|f| NoResponse::Failed(f.kind));
        };
        // A request still in flight when the run ends is cancelled with its iteration, not
        // left to finish after the run.
        let ex = tokio::select! {
            biased;
            r = exchanged => r,
            _ = ctx.stop.cancelled() => {
                client.disconnect();
                return Err(NoResponse::Cancelled);
            }
        };
        let values = Values {
            vu: self.vu,
            iter: 0,
            row: None,
            user: None,
        };
        let slot = ctx.names.slot(task, &r.name);
        ex.record(ctx, (task, slot), &r.check, &values, false, || {
            crate::http::encode_target(&path).into_owned()
        });
        let end = ex.end;
        ex.outcome
            .map(|(sent, mut resp)| {
                resp.elapsed = end.saturating_duration_since(sent);
                resp
            })
            .map_err(|f| NoResponse::Failed(f.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending<T>(inbox: &Inbox<T>) -> isize {
        let mut buf = [0u8; 16];
        // SAFETY: a peek into a local buffer of the given length; the socket is
        // non-blocking, so an empty one answers -1 (EAGAIN) at once.
        let n = unsafe {
            libc::recv(
                inbox.fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        };
        n.max(0)
    }

    #[test]
    fn an_inbox_rings_once_for_a_batch_and_hands_over_everything() {
        let mb: Mailbox = Inbox::new().unwrap();
        assert_eq!(pending(&mb), 0);
        for id in 0..3 {
            assert!(mb
                .post((id, Err(NoResponse::Failed(ErrorKind::Timeout))))
                .is_ok());
        }
        assert_eq!(pending(&mb), 1, "one ring for three results");
        let (taken, closed) = mb.take();
        assert_eq!(
            taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(!closed);
        assert_eq!(pending(&mb), 0, "taking silences the bell");
        assert!(mb.post((9, Err(NoResponse::Cancelled))).is_ok());
        assert_eq!(pending(&mb), 1, "a result after the take rings again");
    }

    #[test]
    fn a_closed_inbox_drops_what_waits_refuses_more_and_wakes_its_reader() {
        let inbox: Inbox<u32> = Inbox::new().unwrap();
        inbox.post(1).unwrap();
        let _ = inbox.take();
        inbox.close();
        assert!(pending(&inbox) > 0, "the reader wakes to see the end");
        assert_eq!(inbox.post(3), Err(3));
        assert_eq!(inbox.take(), (vec![], true));
    }
}

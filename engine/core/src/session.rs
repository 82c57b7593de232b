//! Python-logic virtual users: the engine's side.
//!
//! When a plan's tasks are on the Python path, virtual users are Python objects and the engine
//! (a) hands out the open model's arrivals at their due instants through a queue that a Python
//! thread drains in batches, and (b) gives each virtual user a `Session`: its own connection and
//! cookies, whose requests are timed and recorded exactly as engine requests are (latency from
//! the iteration's due instant, service time from the send). Python decides what to send; the
//! engine keeps time.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Method, Request};
use tokio_util::sync::CancellationToken;

use crate::check::Check;
use crate::http::{Client, ErrorKind, Response};
use crate::runner::{exchange, Begin, Ctx, Model, RunHandle, LATE};
use crate::template::Values;

/// Why a Python task's request has no response: a failure the engine counted, or the run
/// ending while it was in flight (its iteration is then counted as cancelled, nothing else).
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

/// An arrival for a Python virtual user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyArrival {
    pub index: u64,
    /// Seconds after the run started.
    pub due_s: f64,
    pub task: usize,
}

#[derive(Default)]
struct Queue {
    arrivals: VecDeque<PyArrival>,
    closed: bool,
}

#[derive(Default)]
pub(crate) struct PythonSide {
    /// Cancelled by Python when its virtual users are done.
    pub(crate) finished: CancellationToken,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl PythonSide {
    fn push(&self, a: PyArrival) {
        self.queue.lock().unwrap().arrivals.push_back(a);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.queue.lock().unwrap().closed = true;
        self.ready.notify_all();
    }
}

/// Walks the open model's schedule and releases each arrival at its due instant.
pub(crate) async fn dispatch(ctx: Arc<Ctx>) {
    let (Model::Open { schedule, .. }, Some(py)) = (&ctx.model, &ctx.python) else {
        return;
    };
    loop {
        let next = schedule.lock().unwrap().next();
        let Some(a) = next else { break };
        let due = ctx.start + Duration::from_secs_f64(a.due);
        let task = ctx.mix.pick(a.index);
        if due > Instant::now() {
            tokio::select! {
                _ = crate::pacer::until(due) => {}
                _ = ctx.stop.cancelled() => break,
            }
        }
        // Handed out, the arrival is Python's to start; one it never starts is unsent.
        ctx.recorder.record(task, Instant::now(), |d| d.taken += 1);
        py.push(PyArrival {
            index: a.index,
            due_s: a.due,
            task,
        });
    }
    py.close();
}

fn side(ctx: &Ctx) -> &PythonSide {
    ctx.python
        .as_ref()
        .expect("only runs of python tasks are driven from Python")
}

/// What Python calls to drive a run of Python tasks.
impl RunHandle {
    /// Arrivals released so far, waiting up to `wait` for the first; `None` once the schedule
    /// is done (or the run stopped) and everything was taken.
    pub fn take_arrivals(&self, wait: Duration) -> Option<Vec<PyArrival>> {
        let py = side(self.ctx());
        let q = py.queue.lock().unwrap();
        let (mut q, _) = py
            .ready
            .wait_timeout_while(q, wait, |q| q.arrivals.is_empty() && !q.closed)
            .unwrap();
        if q.arrivals.is_empty() && q.closed {
            return None;
        }
        Some(q.arrivals.drain(..).collect())
    }

    /// A virtual user is about to run an iteration of `task`, due at `due_s` (an open model's
    /// arrival) or now (`None`, a closed model's user). Returns false when it must not: the
    /// run is stopping or past its planned end (an open model's arrival is then unsent).
    /// Late starts count as missed.
    pub fn begin_iteration(&self, task: usize, due_s: Option<f64>) -> bool {
        let ctx = self.ctx();
        let now = Instant::now();
        if now >= ctx.send_until || ctx.stop.is_cancelled() {
            return false;
        }
        let due = due_s.map(|d| ctx.start + Duration::from_secs_f64(d));
        Begin {
            taken: due.is_none(),
            late: due.is_some_and(|d| now > d + LATE),
            due,
        }
        .record(ctx, task);
        true
    }

    /// A virtual user's iteration of `task` ran to its end (answered, failed or raised).
    /// Once the run has stopped (or its drain ended) an iteration still going is cancelled,
    /// as an engine iteration is, even if its Python code runs on a moment longer.
    pub fn end_iteration(&self, task: usize) {
        let ctx = self.ctx();
        if !ctx.stop.is_cancelled() {
            ctx.recorder
                .record(task, Instant::now(), |d| d.iterations += 1);
        }
    }

    /// The task of the closed model's next iteration (the same exact mix as the engine's).
    pub fn next_task(&self) -> usize {
        let ctx = self.ctx();
        match &ctx.model {
            Model::Closed { iterations, .. } => {
                ctx.mix.pick(iterations.fetch_add(1, Ordering::Relaxed))
            }
            Model::Open { .. } => 0,
        }
    }

    /// How many virtual users the closed model wants at `t` seconds.
    pub fn users_at(&self, t: f64) -> f64 {
        match &self.ctx().model {
            Model::Closed { users, .. } => users.rate_at(t),
            Model::Open { .. } => 0.0,
        }
    }

    pub fn max_users(&self) -> u64 {
        match &self.ctx().model {
            Model::Closed { users, .. } => users.peak().ceil() as u64,
            Model::Open { connections, .. } => *connections as u64,
        }
    }

    pub fn think_s(&self) -> f64 {
        match &self.ctx().model {
            Model::Closed { think, .. } => think.as_secs_f64(),
            Model::Open { .. } => 0.0,
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.ctx().start.elapsed().as_secs_f64()
    }

    pub fn duration_s(&self) -> f64 {
        self.ctx().duration
    }

    pub fn is_stopping(&self) -> bool {
        self.ctx().stop.is_cancelled()
    }

    /// A Python task raised: counted as an `exception` error of that task (an error of the
    /// iteration, not a request).
    pub fn record_exception(&self, task: usize) {
        let now = Instant::now();
        self.ctx().recorder.record(task, now, |d| d.exception());
    }

    pub fn user_active(&self, active: bool) {
        let d = if active { 1 } else { -1 };
        self.ctx()
            .recorder
            .active_users
            .fetch_add(d, Ordering::Relaxed);
    }

    /// A unique feeder ran out on the Python side: the run ends as `exhausted`.
    pub fn exhaust(&self) {
        let ctx = self.ctx();
        ctx.exhausted.store(true, Ordering::Relaxed);
        ctx.stop_now();
    }

    /// Python's virtual users are all done: the run can close.
    pub fn finish_python(&self) {
        side(self.ctx()).finished.cancel();
    }

    pub fn session(&self, vu: u64) -> Session {
        let ctx = self.ctx().clone();
        Session {
            client: tokio::sync::Mutex::new(Client::new(ctx.target.clone())),
            ctx,
            vu,
        }
    }
}

/// One Python virtual user's connection and cookies.
pub struct Session {
    ctx: Arc<Ctx>,
    client: tokio::sync::Mutex<Client>,
    pub vu: u64,
}

/// A request as Python gives it.
pub struct PyRequest {
    /// The task it counts for; `None` for hooks (`on_start`, `on_stop`), whose requests are
    /// set-up and go uncounted.
    pub task: Option<usize>,
    pub method: Method,
    /// Path and query, appended to the target's base path.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// `None`: the plan's timeout (the scenario's `timeout`), as for engine tasks.
    pub timeout: Option<Duration>,
    /// The iteration's due instant (seconds after the start), for its first request.
    pub due_s: Option<f64>,
    /// `expect`; without one, a 4xx or 5xx counts as a `status` error.
    pub check: Check,
}

impl Session {
    /// Sends, records, and returns the whole response (or the error's kind).
    pub async fn request(&self, r: PyRequest) -> Result<Response, NoResponse> {
        let ctx = &self.ctx;
        let mut client = self.client.lock().await;
        let from = r
            .due_s
            .map(|d| ctx.start + Duration::from_secs_f64(d))
            .unwrap_or_else(Instant::now);
        let uri = crate::http::encode_target(&format!("{}{}", ctx.target.base_path(), r.path))
            .into_owned();
        let exchanged = exchange(
            ctx,
            &mut client,
            r.timeout.unwrap_or(ctx.default_timeout),
            true,
            true,
            || {
                let mut b = Request::builder()
                    .method(r.method)
                    .uri(uri)
                    .header(HOST, ctx.target.authority());
                for (k, v) in r.headers {
                    b = b.header(k, v);
                }
                b.body(Full::new(r.body)).map_err(|_| ErrorKind::Check)
            },
        );
        // A request still in flight when the run ends is cancelled with its iteration, not
        // left to finish after the run.
        let (end, result) = tokio::select! {
            r = exchanged => r,
            _ = ctx.stop.cancelled() => {
                client.disconnect();
                return Err(NoResponse::Cancelled);
            }
        };
        let Some(task) = r.task else {
            return result.map(|(_, resp)| resp).map_err(NoResponse::Failed);
        };
        match result {
            Ok((sent, resp)) => {
                let corrected = end.saturating_duration_since(from).as_micros() as u64;
                let service = end.duration_since(sent).as_micros() as u64;
                let values = Values {
                    vu: self.vu,
                    iter: 0,
                    row: None,
                    user: None,
                };
                let failure = r
                    .check
                    .evaluate(resp.status, &resp.body, corrected, &values);
                ctx.recorder.record(task, end, |d| {
                    d.response(resp.status, resp.bytes, corrected, service);
                    if let Some(f) = failure {
                        d.error(f.into(), true);
                    }
                });
                Ok(resp)
            }
            Err(kind) => {
                ctx.recorder.record(task, end, |d| d.error(kind, false));
                Err(NoResponse::Failed(kind))
            }
        }
    }
}

/// Where finished requests wait for the Python event loop. Engine threads never take the GIL:
/// they append here and, when the box was empty, write one byte to a socket the loop watches
/// (`loop.add_reader`), so the loop wakes once for a whole batch and collects it with `take`.
pub struct Mailbox {
    items: Mutex<Vec<(u64, Result<Response, NoResponse>)>>,
    bell: UnixStream,
    watched: UnixStream,
}

impl Mailbox {
    pub fn new() -> std::io::Result<Self> {
        let (bell, watched) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        watched.set_nonblocking(true)?;
        Ok(Mailbox {
            items: Mutex::new(Vec::new()),
            bell,
            watched,
        })
    }

    /// The descriptor that becomes readable when results are waiting.
    pub fn fd(&self) -> RawFd {
        self.watched.as_raw_fd()
    }

    pub fn post(&self, id: u64, result: Result<Response, NoResponse>) {
        let was_empty = {
            let mut items = self.items.lock().unwrap();
            let was_empty = items.is_empty();
            items.push((id, result));
            was_empty
        };
        if was_empty {
            // A full socket buffer means a wake-up is pending already.
            let _ = (&self.bell).write(&[1]);
        }
    }

    /// Everything posted so far. The bell is silenced first, so a result posted meanwhile
    /// rings it again and is never left waiting unnoticed.
    pub fn take(&self) -> Vec<(u64, Result<Response, NoResponse>)> {
        let mut sink = [0u8; 256];
        while matches!((&self.watched).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.items.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mailbox_rings_once_for_a_batch_and_hands_over_everything() {
        let mb = Mailbox::new().unwrap();
        let pending = |mb: &Mailbox| {
            let mut buf = [0u8; 16];
            // SAFETY: a peek into a local buffer of the given length; the socket is
            // non-blocking, so an empty one answers -1 (EAGAIN) at once.
            let n =
                unsafe { libc::recv(mb.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
            n.max(0)
        };
        assert_eq!(pending(&mb), 0);
        for id in 0..3 {
            mb.post(id, Err(NoResponse::Failed(ErrorKind::Timeout)));
        }
        assert_eq!(pending(&mb), 1, "one ring for three results");
        let taken = mb.take();
        assert_eq!(
            taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(pending(&mb), 0, "taking silences the bell");
        mb.post(9, Err(NoResponse::Cancelled));
        assert_eq!(pending(&mb), 1, "a result after the take rings again");
    }

    #[test]
    fn released_arrivals_are_taken_in_batches_until_the_queue_closes() {
        let side = PythonSide::default();
        let a = |index| PyArrival {
            index,
            due_s: index as f64,
            task: 0,
        };
        side.push(a(0));
        side.push(a(1));
        let q = side.queue.lock().unwrap();
        assert_eq!(q.arrivals.len(), 2);
        drop(q);
        side.close();
        let q = side.queue.lock().unwrap();
        assert!(q.closed && q.arrivals.iter().map(|a| a.index).eq([0, 1]));
    }
}

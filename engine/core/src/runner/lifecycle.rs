//! A run's life, step by step: set its users up, wait for its start, close one interval per
//! second into the run directory and the row queue, wind down (drain what is in flight at the
//! planned end, or cancel it on a stop), close what is left, run the users' `on_stop`, and
//! write the summary.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use super::compile::Compiled;
use super::python::Work;
use super::workers::{closed_users, open_worker, set_up, start_user, wanted_at_start, User};
use super::{lock, Ctx, Model, RunHandle, RunState};
use crate::error::Result;
use crate::measure::metrics::{Interval, TaskData, WireRequest};
use crate::measure::rows::{Row, Span};
use crate::measure::rundir::{epoch_seconds, RunWriter};
use crate::measure::summary::{Ended, Head, Summary, Totals};
use crate::plan::Plan;

/// How long after a second ends its interval is closed: lets requests that completed just
/// before the boundary finish recording.
const CLOSE_GRACE: Duration = Duration::from_millis(20);
/// An arrival due before the planned end may still be sent this long after it (a worker
/// woken a moment late); after it nothing new is sent, and what was due and not sent is
/// counted as unsent.
pub(super) const END_GRACE: Duration = Duration::from_millis(20);
/// After a stop, how long workers get to notice it before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The longest the users' `on_stop` hooks may take, all together, once the run has ended.
const ON_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Creates the run directory and starts the run's task on `rt`.
pub(super) fn launch(
    rt: &Handle,
    c: Compiled,
    plan: Plan,
    dir: PathBuf,
    report: bool,
) -> Result<RunHandle> {
    let writer = RunWriter::create(&dir, &plan.to_json())?;
    let ctx = Arc::new(c.ctx);
    let runs_on = plan
        .tasks
        .iter()
        .map(|t| t.path.name().to_string())
        .collect();
    let state = Arc::new(RunState {
        totals: Mutex::new(Totals::new(c.names.clone(), runs_on)),
        names: c.names,
        dir,
        rows: Mutex::new(Vec::new()),
        summary: Mutex::new(None),
        failure: Mutex::new(None),
        done: Mutex::new(false),
        done_cv: Condvar::new(),
        plan,
        epoch0: OnceLock::new(),
        sent_s: Mutex::new(0.0),
        intervals: report.then(|| Mutex::new(Vec::new())),
    });
    let handle = RunHandle {
        state: state.clone(),
        ctx: ctx.clone(),
    };
    let driving = rt.spawn(drive(ctx.clone(), state.clone(), writer));
    // A bug that panics the run's task must end the run with an error, never leave callers
    // waiting on a run that will not end, nor its workers sending.
    rt.spawn(async move {
        if let Err(e) = driving.await {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            ctx.stop_now();
            if let Some(py) = &ctx.python {
                py.tickets.close();
                lock(&py.started).clear();
            }
            state.fail(format!("the engine failed during the run: {why}"));
            state.finish();
        }
    });
    Ok(handle)
}

/// How the schedule's part of a run ended.
enum Phase {
    /// The planned end was reached; workers may still have requests in flight.
    Planned,
    /// Every worker finished before the planned end (the schedule or the users were done).
    Joined,
    /// Stopped (or a unique feeder ran out) `at` seconds in; workers are gone.
    Stopped { at: f64 },
}

/// Where the run stands once every worker is gone.
struct WoundDown {
    duration_s: f64,
    drain_s: f64,
    /// The interval still open: its index and length.
    last: (u64, f64),
    /// The drain (`Completed`), or the drain limit cut it short (`DrainTimeout`).
    drained: Ended,
    /// Whether what is left open is the drain (after the planned end).
    is_drain: bool,
}

async fn drive(ctx: Arc<Ctx>, state: Arc<RunState>, mut writer: RunWriter) {
    let ready = set_up_users(&ctx).await;
    let wall_start = wait_for_start(&ctx).await;
    ctx.start_clock();
    if let Err(e) = writer.begin(wall_start) {
        state.fail(e.to_string());
        ctx.stop_now();
    }
    let mut workers_done = spawn_workers(&ctx, ready);
    let epoch0 = epoch_seconds(wall_start);
    let _ = state.epoch0.set(epoch0);
    let mut closer = Closer {
        ctx: &ctx,
        state: &state,
        writer: &mut writer,
        epoch0,
        gauges: None,
    };
    // Arrivals due and never taken from the schedule, per task.
    let mut skipped = vec![0u64; state.names.len()];
    let (phase, next) = close_intervals(&mut closer, &mut workers_done, &mut skipped).await;
    let end = wind_down(&ctx, phase, next, &mut workers_done, &mut skipped).await;
    let drain_s = close_last(&mut closer, &end, &skipped);
    let ended = ctx.stop.ended(state.failed(), end.drained);
    let summary = summarize(
        &ctx,
        &state,
        epoch0,
        end.duration_s,
        drain_s,
        ended,
        &skipped,
    );
    if let Err(e) = writer.summary(&summary) {
        state.fail(e.to_string());
    }
    // The measured part is on disk; the users' on_stop runs before the run says it is done.
    tear_down(&ctx).await;
    *lock(&state.summary) = Some(summary);
    state.finish();
}

/// The users wanted from the start, set up (their `on_start` run) before the clock starts;
/// `None` for a user that is not this run's own or whose `on_start` failed.
async fn set_up_users(ctx: &Arc<Ctx>) -> Vec<Option<User>> {
    if ctx.python.as_ref().is_some_and(|p| p.hooks.on_start) {
        return tokio::select! {
            users = set_up(ctx, 0..wanted_at_start(ctx)) => users,
            _ = ctx.stop.cancelled() => Vec::new(),
        };
    }
    let mut users = Vec::new();
    for vu in 0..wanted_at_start(ctx) {
        users.push(match ctx.owns_user(vu) {
            true => start_user(ctx, vu).await,
            false => None,
        });
    }
    users
}

/// Waits for the instant the run starts: now, or a distributed run's agreed instant (every
/// slice starts at it). Returns that instant.
async fn wait_for_start(ctx: &Ctx) -> SystemTime {
    let Some(at) = ctx.start_at else {
        return SystemTime::now();
    };
    let ahead = at - epoch_seconds(SystemTime::now());
    if ahead > 0.0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(ahead)) => {}
            _ = ctx.stop.cancelled() => {}
        }
    }
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at)
}

/// Starts the workers (unless the run was stopped already) and a joiner that waits for them
/// all; what it returns resolves once every worker is gone. On a stop, workers get
/// `STOP_GRACE` to notice it and are aborted after.
fn spawn_workers(ctx: &Arc<Ctx>, ready: Vec<Option<User>>) -> oneshot::Receiver<()> {
    let mut workers = JoinSet::new();
    if !ctx.stop.is_cancelled() {
        match &ctx.model {
            Model::Open { .. } => {
                // A user whose on_start failed takes no arrivals: the others take them.
                for user in ready.into_iter().flatten() {
                    workers.spawn(open_worker(ctx.clone(), user));
                }
            }
            Model::Closed { .. } => {
                workers.spawn(closed_users(ctx.clone(), ready));
            }
        }
    }
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let stop = ctx.stop.token();
    tokio::spawn(async move {
        tokio::select! {
            _ = async { while workers.join_next().await.is_some() {} } => {}
            _ = stop.cancelled() => {
                // Workers drop what is in flight as soon as they see the token; whatever has
                // not noticed it in a moment is aborted.
                let all = async { while workers.join_next().await.is_some() {} };
                if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
                    workers.abort_all();
                    while workers.join_next().await.is_some() {}
                }
            }
        }
        let _ = done_tx.send(());
    });
    done_rx
}

/// Closes one interval per second until the planned end, a stop, or every worker finishing.
/// Returns how the schedule's part ended and the index of the next interval to close.
async fn close_intervals(
    closer: &mut Closer<'_>,
    workers_done: &mut oneshot::Receiver<()>,
    skipped: &mut [u64],
) -> (Phase, u64) {
    let ctx = closer.ctx;
    let clock = ctx.clock();
    let n_intervals = ctx.duration.ceil().max(1.0) as u64;
    // The last interval's gauges are read just before the planned end, while users are still
    // at work.
    let gauge_at = clock.start + Duration::from_secs_f64((ctx.duration - 0.1).max(0.0));
    let mut i = 0u64;
    loop {
        let is_last = i + 1 >= n_intervals;
        let boundary = if is_last {
            clock.send_until
        } else {
            clock.start + Duration::from_secs(i + 1) + CLOSE_GRACE
        };
        tokio::select! {
            _ = sleep_until(gauge_at.into()), if is_last && closer.gauges.is_none() => {
                closer.gauges = Some(gauges(ctx));
            }
            _ = sleep_until(boundary.into()) => {
                let mut data = ctx.recorder.take(i, false);
                let length = if is_last { ctx.duration - i as f64 } else { 1.0 };
                if is_last {
                    // Nothing new is sent from here on: what was due and not taken is unsent.
                    let left = finish_schedule(ctx, ctx.duration);
                    for (t, n) in left.iter().enumerate() {
                        data[t].counts.unsent += n;
                        skipped[t] += n;
                    }
                }
                if let Err(e) = closer.close(i, length, data) {
                    closer.state.fail(e.to_string());
                    ctx.stop_now();
                }
                i += 1;
                if is_last {
                    return (Phase::Planned, i);
                }
            }
            _ = &mut *workers_done => return match ctx.stop.at() {
                // Workers saw a stop and were gone before this loop woke.
                Some(at) => (Phase::Stopped { at }, i),
                None => (Phase::Joined, i),
            },
            _ = ctx.stop.cancelled() => {
                closer.gauges = Some(gauges(ctx));
                let _ = (&mut *workers_done).await;
                let at = ctx.stop.at().unwrap_or(ctx.duration);
                return (Phase::Stopped { at }, i);
            }
        }
    }
}

/// Waits until every worker is gone: at the planned end, for what is in flight (up to the
/// drain limit); after a stop or an early end, what the schedule still held is unsent.
async fn wind_down(
    ctx: &Ctx,
    phase: Phase,
    next: u64,
    workers_done: &mut oneshot::Receiver<()>,
    skipped: &mut [u64],
) -> WoundDown {
    match phase {
        Phase::Planned => {
            let clock = ctx.clock();
            let deadline = clock.planned_end + ctx.drain_limit;
            let mut drained = Ended::Completed;
            tokio::select! {
                _ = &mut *workers_done => {}
                _ = sleep_until(deadline.into()) => {
                    drained = Ended::DrainTimeout;
                    ctx.stop.cancel();
                    let _ = (&mut *workers_done).await;
                }
                _ = ctx.stop.cancelled() => {
                    let _ = (&mut *workers_done).await;
                }
            }
            let drain = clock.planned_end.elapsed().as_secs_f64();
            WoundDown {
                duration_s: ctx.duration,
                drain_s: drain,
                last: (next, drain),
                drained,
                is_drain: true,
            }
        }
        Phase::Joined | Phase::Stopped { .. } => {
            let at = match phase {
                Phase::Stopped { at } => at,
                _ => ctx.duration,
            };
            let left = finish_schedule(ctx, at);
            for (t, n) in left.iter().enumerate() {
                skipped[t] += n;
            }
            WoundDown {
                duration_s: at,
                drain_s: 0.0,
                last: (next, (at - next as f64).clamp(0.0, 1.0)),
                drained: Ended::Completed,
                is_drain: false,
            }
        }
    }
}

/// Closes what remains open once every worker is gone (the last interval, or the drain):
/// arrivals taken and never started are unsent, iterations started and never finished are
/// cancelled. Returns the drain's length (0 when nothing happened in it).
fn close_last(closer: &mut Closer<'_>, end: &WoundDown, skipped: &[u64]) -> f64 {
    let mut data = closer.ctx.recorder.take(u64::MAX, true);
    if !end.is_drain {
        for (t, n) in skipped.iter().enumerate() {
            data[t].counts.unsent += n;
        }
    }
    {
        let totals = lock(&closer.state.totals);
        for (d, before) in data.iter_mut().zip(totals.entries()) {
            let mut total = before.counts;
            total.add(&d.counts);
            // Taken and never started: unsent. Started and never finished: cancelled.
            d.counts.unsent += total.taken.saturating_sub(total.started);
            d.counts.cancelled += total.started.saturating_sub(total.iterations);
        }
    }
    let anything = data.iter().any(|d| d.counts.any());
    // A drain in which nothing happened (everything had come back by the planned end) is
    // not a row, and no time.
    if end.is_drain && !anything {
        return 0.0;
    }
    let (i, length) = end.last;
    if let Err(e) = closer.close(i, length, data) {
        closer.state.fail(e.to_string());
    }
    if end.is_drain {
        end.drain_s
    } else {
        0.0
    }
}

/// Ends the open model's schedule at `at` seconds: the arrivals due before it that nobody
/// took, per task.
fn finish_schedule(ctx: &Ctx, at: f64) -> Vec<u64> {
    match &ctx.model {
        Model::Open { schedule, .. } => {
            lock(schedule).finish_before(at, &ctx.mix, ctx.bodies.len())
        }
        Model::Closed { .. } => vec![0; ctx.bodies.len()],
    }
}

/// Runs `on_stop` for every user that started, bounded by `ON_STOP_LIMIT`, then tells
/// Python the run is over.
async fn tear_down(ctx: &Arc<Ctx>) {
    let Some(py) = &ctx.python else { return };
    let users = std::mem::take(&mut *lock(&py.started));
    if py.hooks.on_stop && !users.is_empty() {
        let limit = Duration::from_secs_f64(py.hooks.timeout_s).min(ON_STOP_LIMIT);
        let mut stopping = JoinSet::new();
        for session in users {
            let ctx = ctx.clone();
            stopping.spawn(async move {
                if let Some(py) = &ctx.python {
                    py.ask(&session, Work::OnStop, session.vu, None, None).await;
                }
            });
        }
        let all = async { while stopping.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(limit, all).await;
        stopping.abort_all();
    }
    py.tickets.close();
}

struct Closer<'a> {
    ctx: &'a Ctx,
    state: &'a RunState,
    writer: &'a mut RunWriter,
    epoch0: f64,
    /// In-flight requests and active users to report instead of the current ones.
    gauges: Option<(i64, i64)>,
}

fn gauges(ctx: &Ctx) -> (i64, i64) {
    (
        ctx.recorder.in_flight.load(Ordering::Relaxed),
        ctx.recorder.active_users.load(Ordering::Relaxed),
    )
}

impl Closer<'_> {
    /// Writes interval `i` (`length` seconds; the drain when `i` is past the schedule) from
    /// `data`, adds it to the run's totals and hands rows to readers.
    fn close(&mut self, i: u64, length: f64, mut data: Vec<TaskData>) -> Result<()> {
        let ctx = self.ctx;
        let start_s = (i as f64).min(ctx.duration);
        let drain = i as f64 >= ctx.duration;
        if !drain {
            *lock(&self.state.sent_s) += length;
        }
        let (in_flight, active_users) = self.gauges.unwrap_or_else(|| gauges(ctx));
        let span = Span {
            start_s,
            length_s: length,
            drain,
            in_flight,
            active_users,
        };
        // Read after the data was taken: every slot recorded into has its name by then.
        let requests = ctx.names.requests();
        let names = &self.state.names;
        let n = names.len();
        data.resize_with((n + requests.len()).max(data.len()), TaskData::new);
        let mut rows: Vec<Row> = data[..n]
            .iter()
            .enumerate()
            .map(|(t, d)| {
                let target_rps = target_rps(ctx, t, start_s, length, drain);
                span.row(self.epoch0, &names[t], None, target_rps, d)
            })
            .collect();
        rows.extend(
            requests
                .iter()
                .zip(&data[n..])
                .map(|((e, name), d)| span.row(self.epoch0, &names[*e], Some(name), None, d)),
        );
        self.writer
            .interval(names, &requests, start_s, length, &data, &rows)?;
        let before_slice = !drain && start_s + length <= ctx.from_s;
        if let (Some(q), false) = (&self.state.intervals, before_slice) {
            let whole = Interval {
                index: i,
                start_s,
                length_s: length,
                drain,
                in_flight,
                active_users,
                target_rps: rows[..n].iter().map(|r| r.target_rps).collect(),
                tasks: data[..n].iter().map(TaskData::to_wire).collect(),
                requests: requests
                    .iter()
                    .zip(&data[n..])
                    .filter(|(_, d)| d.counts.any())
                    .map(|((e, name), d)| WireRequest {
                        entry: *e,
                        name: name.clone(),
                        data: d.to_wire(),
                    })
                    .collect(),
            };
            lock(q).push(whole);
        }
        lock(&self.state.totals).add(&data, &requests);
        lock(&self.state.rows).extend(rows);
        ctx.recorder.recycle(data);
        Ok(())
    }
}

/// The profile's rate for entry `t` over `[start_s, start_s + length)`: an open model's
/// share of its slice; `None` for a closed model and for hooks (no arrivals of their own).
fn target_rps(ctx: &Ctx, t: usize, start_s: f64, length: f64, drain: bool) -> Option<f64> {
    match &ctx.model {
        _ if t >= ctx.bodies.len() => None,
        Model::Open { .. } if drain => Some(0.0),
        Model::Open { arrivals, .. } if length > 0.0 => {
            let n = arrivals.cumulative(start_s + length) - arrivals.cumulative(start_s);
            Some(n / ctx.shards * ctx.mix.share(t) / length)
        }
        _ => None,
    }
}

/// The summary of what was recorded and closed: of the whole run at its end, or of the
/// seconds closed so far while it goes (`Ended::Running`). An open model's target per task
/// is what was taken from its schedule and what was skipped.
pub(super) fn summarize(
    ctx: &Ctx,
    state: &RunState,
    epoch0: f64,
    duration_s: f64,
    drain_s: f64,
    ended: Ended,
    skipped: &[u64],
) -> Summary {
    let totals = lock(&state.totals);
    let open = matches!(ctx.model, Model::Open { .. });
    let targets: Option<Vec<f64>> = open.then(|| {
        totals
            .entries()
            .iter()
            .enumerate()
            .map(|(i, d)| (d.counts.taken + skipped.get(i).copied().unwrap_or(0)) as f64)
            .collect()
    });
    let head = Head {
        name: &state.plan.name,
        started_at: epoch0,
        duration_s,
        drain_s,
        planned_duration_s: ctx.duration,
        ended,
        model: if open { "open" } else { "closed" },
    };
    totals.summary(head, targets.as_deref())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::measure::summary::Ended;
    use crate::plan::Plan;
    use crate::runner::python::{Done, Work};

    use super::super::start;

    fn refused_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_due_arrival_is_accounted_for_when_the_target_refuses_connections() {
        // A port nothing listens on: every request fails at once with `connect`.
        let port = refused_port();
        let plan = Plan::from_json(&format!(
            r#"{{"target": "http://127.0.0.1:{port}",
                "load": {{"model": "open", "stages": [{{"kind": "constant", "rate": 200, "duration_s": 1}}]}},
                "tasks": [{{"name": "a", "weight": 3, "requests": [{{"path": "/"}}]}},
                          {{"name": "b", "requests": [{{"path": "/"}}]}}]}}"#
        ))
        .unwrap();
        let dir = temp_dir("refused");
        let run = start(&tokio::runtime::Handle::current(), 2, plan, dir.clone()).unwrap();
        let waiter = run.clone();
        tokio::task::spawn_blocking(move || waiter.wait(Duration::from_secs(20)))
            .await
            .unwrap();
        let s = run.summary().expect("a finished run has a summary");
        assert_eq!(s.ended, Ended::Completed);
        assert_eq!(s.target_requests, Some(200.0));
        let targets: Vec<_> = s.tasks.iter().map(|t| t.target_requests).collect();
        assert_eq!(targets, [Some(150.0), Some(50.0)]);
        for t in &s.tasks {
            let st = &t.stats;
            assert_eq!(
                t.target_requests,
                Some((st.iterations.unwrap() + st.cancelled + st.unsent) as f64)
            );
            assert_eq!(st.errors_by_kind["connect"], st.requests);
        }
        assert_eq!(s.overall.error_rate, 1.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Plays Python's part from a thread: answers every ticket as `answer` says, and records
    /// what it was asked.
    fn python_side(
        run: &super::RunHandle,
        answer: impl Fn(Work, u64) -> Option<Done> + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<(Work, u64, Option<f64>)>> {
        let inbox = run.tickets().expect("a plan with Python parts has tickets");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Unanswered tickets are kept: a ticket dropped unanswered reads as cancelled.
            let mut held = Vec::new();
            loop {
                let (tickets, closed) = inbox.take();
                for mut t in tickets {
                    seen.push((t.work, t.vu, t.due_s));
                    match answer(t.work, t.vu) {
                        Some(d) => t.done(d),
                        None => held.push(t),
                    }
                }
                if closed {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_iterations_and_hooks_run_in_the_engines_loop_and_are_accounted_for() {
        let port = refused_port();
        let plan = Plan::from_json(&format!(
            r#"{{"target": "http://127.0.0.1:{port}",
                "load": {{"model": "open", "connections": 4,
                          "stages": [{{"kind": "constant", "rate": 100, "duration_s": 1}}]}},
                "tasks": [{{"name": "py", "path": "python"}}],
                "hooks": {{"on_start": true, "on_stop": true}}}}"#
        ))
        .unwrap();
        let dir = temp_dir("tickets");
        let run = start(&tokio::runtime::Handle::current(), 2, plan, dir.clone()).unwrap();
        // User 3's on_start raises: it takes no arrivals, the other three take them all.
        // Every tenth iteration raises.
        let count = std::sync::atomic::AtomicU64::new(0);
        let py = python_side(&run, move |work, vu| match work {
            Work::OnStart if vu == 3 => Some(Done::Raised),
            Work::OnStart => Some(Done::Started(Default::default())),
            Work::Task(_) => {
                let k = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(if k % 10 == 9 { Done::Raised } else { Done::Ran })
            }
            Work::OnStop => Some(Done::Ran),
        });
        let waiter = run.clone();
        tokio::task::spawn_blocking(move || waiter.wait(Duration::from_secs(20)))
            .await
            .unwrap();
        let seen = py.join().unwrap();
        let s = run.summary().unwrap();
        assert_eq!(s.ended, Ended::Completed);
        let names: Vec<_> = s.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["py", "on_start"]);
        let py_task = &s.tasks[0];
        assert_eq!(py_task.target_requests, Some(100.0));
        assert_eq!(py_task.stats.iterations, Some(100));
        assert_eq!(py_task.stats.errors_by_kind["exception"], 10);
        let hook = &s.tasks[1];
        assert_eq!(
            (hook.path.as_str(), hook.stats.iterations),
            ("hook", Some(4))
        );
        assert_eq!(hook.stats.errors_by_kind["exception"], 1);
        let starts = seen.iter().filter(|(w, ..)| *w == Work::OnStart).count();
        let stops: Vec<u64> = seen
            .iter()
            .filter(|(w, ..)| *w == Work::OnStop)
            .map(|(_, vu, _)| *vu)
            .collect();
        assert_eq!(starts, 4);
        assert_eq!(
            stops.len(),
            3,
            "on_stop for the users that started: {stops:?}"
        );
        assert!(!stops.contains(&3));
        // Every iteration was due on the schedule (100/s, every 10 ms) and none by user 3.
        let dues: Vec<f64> = seen
            .iter()
            .filter(|(w, ..)| matches!(w, Work::Task(_)))
            .map(|(_, vu, due)| {
                assert_ne!(*vu, 3);
                due.expect("open-model iterations carry their due instant")
            })
            .collect();
        assert_eq!(dues.len(), 100);
        assert!(dues
            .iter()
            .zip(&dues[1..])
            .all(|(a, b)| (b - a - 0.01).abs() < 1e-6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_python_iteration_is_cancelled_at_the_drain_limit() {
        let port = refused_port();
        let plan = Plan::from_json(&format!(
            r#"{{"target": "http://127.0.0.1:{port}",
                "load": {{"model": "closed", "think_s": 0.1,
                          "stages": [{{"kind": "constant", "rate": 2, "duration_s": 1}}]}},
                "tasks": [{{"name": "py", "path": "python"}}],
                "max_drain_s": 0.5}}"#
        ))
        .unwrap();
        let dir = temp_dir("unanswered");
        let run = start(&tokio::runtime::Handle::current(), 2, plan, dir.clone()).unwrap();
        // User 1 never answers: its first iteration hangs until the drain gives up on it.
        let py = python_side(&run, |_, vu| (vu == 0).then_some(Done::Ran));
        let waiter = run.clone();
        let ended = tokio::task::spawn_blocking(move || waiter.wait(Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(ended, "the run ends by itself");
        let seen = py.join().unwrap();
        let s = run.summary().unwrap();
        assert_eq!(s.ended, Ended::DrainTimeout);
        let st = &s.tasks[0].stats;
        assert_eq!(st.cancelled, 1, "{st:?}");
        let by_user0 = seen.iter().filter(|(_, vu, _)| *vu == 0).count() as u64;
        assert_eq!(st.iterations, Some(by_user0));
        assert!(by_user0 >= 5, "user 0 ran about every 0.1 s: {by_user0}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! A run: compiles a plan, drives virtual users on the runtime, closes one interval per second
//! into the run directory and the row queue, and writes the summary at the end.
//!
//! Open model: `connections` workers, each with its own keep-alive connection, take the next
//! arrival from the one schedule, wait until it is due, send it, and record latency from the
//! instant it was due. A worker that takes an arrival already late (every connection was busy)
//! counts it as missed and still measures from the due instant, so the generator's own queueing
//! shows up in corrected latency and in `missed`, never as a silently thinner schedule.
//!
//! Closed model: one worker per virtual user; user `i` runs while the profile's value is above
//! `i`, so ramps start and stop users in order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::http::{Client, CompiledRequest, ErrorKind, Target};
use crate::metrics::{Recorder, Row, RowContext, TaskData};
use crate::pacer;
use crate::plan::{ArrivalKind, FeedMode, Feeder, Load, Plan};
use crate::profile::Profile;
use crate::rundir::{epoch_seconds, RunWriter, Stats, Summary, TaskSummary};
use crate::schedule::{Arrivals, Mix, Rng, Schedule};
use crate::session::PythonSide;
use crate::template::{Scope, Values};

/// An arrival taken this long after it was due found no free connection.
const LATE: Duration = Duration::from_millis(1);
/// How long after a second ends its interval is closed: lets requests that completed just
/// before the boundary finish recording.
const CLOSE_GRACE: Duration = Duration::from_millis(20);
/// The longest a finished schedule waits for requests still in flight.
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// Builds the one multi-thread runtime the engine runs on; each worker thread gets its own
/// metrics shard.
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadpilot-engine")
        .on_thread_start(crate::metrics::register_worker_thread)
        .enable_all()
        .build()
}

pub(crate) enum Model {
    Open {
        schedule: Mutex<Schedule>,
        connections: u32,
        arrivals: Profile,
    },
    Closed {
        users: Profile,
        think: Duration,
        iterations: AtomicU64,
    },
}

struct FeedRows {
    rows: Vec<Vec<String>>,
    mode: FeedMode,
    seed: u64,
}

impl FeedRows {
    fn row(&self, iter: u64) -> Option<&[String]> {
        let n = self.rows.len() as u64;
        let i = match self.mode {
            FeedMode::Cycle => iter % n,
            FeedMode::Random => Rng::new(self.seed ^ iter.wrapping_mul(0x9E37_79B9)).next_u64() % n,
            FeedMode::Unique if iter < n => iter,
            FeedMode::Unique => return None,
        };
        Some(&self.rows[i as usize])
    }
}

pub(crate) struct Ctx {
    pub(crate) start: Instant,
    pub(crate) duration: f64,
    /// How many shards the schedule is split into (this run runs one of them).
    shards: f64,
    pub(crate) target: Arc<Target>,
    tasks: Vec<Vec<CompiledRequest>>,
    pub(crate) mix: Mix,
    pub(crate) model: Model,
    feeder: Option<FeedRows>,
    user_vars: Vec<BTreeMap<String, String>>,
    pub(crate) recorder: Recorder,
    pub(crate) stop: CancellationToken,
    pub(crate) exhausted: AtomicBool,
    /// Set when the plan's virtual users live in Python (see `session`).
    pub(crate) python: Option<PythonSide>,
}

/// What Python (or any caller) sees of a run.
pub struct RunState {
    pub names: Vec<String>,
    pub dir: PathBuf,
    rows: Mutex<Vec<Row>>,
    cumulative: Mutex<Vec<TaskData>>,
    summary: Mutex<Option<Summary>>,
    failure: Mutex<Option<String>>,
    done: Mutex<bool>,
    done_cv: Condvar,
    stop: CancellationToken,
    /// Set by `stop()`: tells a stopped run from one whose token was cancelled for another
    /// reason (a unique feeder ran out, in-flight requests outlived the drain).
    stop_requested: AtomicBool,
}

#[derive(Clone)]
pub struct RunHandle(Arc<RunState>, Arc<Ctx>);

impl RunHandle {
    pub(crate) fn ctx(&self) -> &Arc<Ctx> {
        &self.1
    }

    pub fn stop(&self) {
        self.0.stop_requested.store(true, Ordering::SeqCst);
        self.0.stop.cancel();
    }
    pub fn is_done(&self) -> bool {
        *self.0.done.lock().unwrap()
    }
    /// Waits up to `timeout` for the run to end; true if it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = self.0.done.lock().unwrap();
        let (g, _) = self
            .0
            .done_cv
            .wait_timeout_while(g, timeout, |d| !*d)
            .unwrap();
        *g
    }
    /// Rows closed since the last call.
    pub fn take_rows(&self) -> Vec<Row> {
        std::mem::take(&mut *self.0.rows.lock().unwrap())
    }
    pub fn summary(&self) -> Option<Summary> {
        self.0.summary.lock().unwrap().clone()
    }
    /// Set when the run ended on an error of its own (e.g. the disk filled up).
    pub fn failure(&self) -> Option<String> {
        self.0.failure.lock().unwrap().clone()
    }
    pub fn names(&self) -> &[String] {
        &self.0.names
    }
    pub fn dir(&self) -> &PathBuf {
        &self.0.dir
    }
    /// Everything closed so far for one task, or for all tasks (`None`).
    pub fn cumulative(&self, task: Option<&str>) -> Result<TaskData> {
        let c = self.0.cumulative.lock().unwrap();
        match task {
            None => {
                let mut all = TaskData::new();
                c.iter().for_each(|d| all.add(d));
                Ok(all)
            }
            Some(name) => {
                let i = self.0.names.iter().position(|n| n == name).ok_or_else(|| {
                    Error::plan(
                        "task",
                        format!("no task named {name:?}; tasks: {:?}", self.0.names),
                    )
                })?;
                Ok(c[i].clone())
            }
        }
    }
}

fn compile_feeder(f: &Feeder) -> FeedRows {
    FeedRows {
        rows: f.rows.clone(),
        mode: f.mode,
        seed: f.seed,
    }
}

/// Validates and compiles `plan`, creates the run directory and starts the run on `rt`.
/// Returns at once; every problem with the plan or the directory is reported here, before any
/// request is sent.
pub fn start(rt: &Handle, threads: usize, plan: Plan, dir: PathBuf) -> Result<RunHandle> {
    plan.validate()?;
    let target = Target::parse(&plan.target, plan.insecure)?;
    let user_var_names: Vec<String> = plan
        .user_vars
        .iter()
        .flat_map(|m| m.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let columns = plan
        .feeder
        .as_ref()
        .map(|f| f.columns.clone())
        .unwrap_or_default();
    let scope = Scope::new(&columns, &user_var_names, &plan.vars);
    let mut tasks = Vec::new();
    for (ti, t) in plan.tasks.iter().enumerate() {
        let mut reqs = Vec::new();
        for (ri, r) in t.requests.iter().enumerate() {
            let at = format!("tasks[{ti}].requests[{ri}]");
            reqs.push(CompiledRequest::compile(
                r,
                &scope,
                &target,
                plan.timeout_s,
                &at,
            )?);
        }
        tasks.push(reqs);
    }
    let weights: Vec<u32> = plan.tasks.iter().map(|t| t.weight).collect();
    let mix = Mix::new(&weights)?;
    let shard = plan.shard.map_or((0, 1), |s| (s.index, s.count));
    let (model, duration) = match &plan.load {
        Load::Open {
            stages,
            arrivals,
            seed,
            connections,
        } => {
            let profile = Profile::new(stages).map_err(|e| prefix(e, "load."))?;
            let kind = match arrivals {
                ArrivalKind::Uniform => Arrivals::Uniform,
                ArrivalKind::Poisson => Arrivals::Poisson { seed: *seed },
            };
            let duration = profile.duration();
            let schedule = Schedule::new(profile.clone(), kind, shard)?;
            (
                Model::Open {
                    schedule: Mutex::new(schedule),
                    connections: *connections,
                    arrivals: profile,
                },
                duration,
            )
        }
        Load::Closed { stages, think_s } => {
            let profile = Profile::new(stages).map_err(|e| prefix(e, "load."))?;
            let duration = profile.duration();
            (
                Model::Closed {
                    users: profile,
                    think: Duration::from_secs_f64(*think_s),
                    iterations: AtomicU64::new(0),
                },
                duration,
            )
        }
    };
    let names: Vec<String> = plan.tasks.iter().map(|t| t.name.clone()).collect();
    let wall_start = SystemTime::now();
    let writer = RunWriter::create(&dir, &plan.to_json(), wall_start)?;
    let n_intervals = duration.ceil().max(1.0) as u64;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        start,
        duration,
        shards: shard.1 as f64,
        target,
        tasks,
        mix,
        model,
        feeder: plan.feeder.as_ref().map(compile_feeder),
        user_vars: plan.user_vars.clone(),
        recorder: Recorder::new(start, names.len(), n_intervals - 1, threads),
        stop: stop.clone(),
        exhausted: AtomicBool::new(false),
        python: plan.python().then(PythonSide::default),
    });
    let state = Arc::new(RunState {
        cumulative: Mutex::new(names.iter().map(|_| TaskData::new()).collect()),
        names,
        dir,
        rows: Mutex::new(Vec::new()),
        summary: Mutex::new(None),
        failure: Mutex::new(None),
        done: Mutex::new(false),
        done_cv: Condvar::new(),
        stop,
        stop_requested: AtomicBool::new(false),
    });
    let handle = RunHandle(state.clone(), ctx.clone());
    rt.spawn(drive(ctx, state, writer, plan, wall_start, n_intervals));
    Ok(handle)
}

fn prefix(e: Error, p: &str) -> Error {
    match e {
        Error::Plan { at, message } => Error::Plan {
            at: format!("{p}{at}"),
            message,
        },
        other => other,
    }
}

async fn drive(
    ctx: Arc<Ctx>,
    state: Arc<RunState>,
    mut writer: RunWriter,
    plan: Plan,
    wall_start: SystemTime,
    n_intervals: u64,
) {
    let mut workers = JoinSet::new();
    if let Some(py) = &ctx.python {
        // Python's virtual users do the work; the engine hands out arrivals and waits for them
        // to say they are done.
        if matches!(ctx.model, Model::Open { .. }) {
            workers.spawn(crate::session::dispatch(ctx.clone()));
        }
        let finished = py.finished.clone();
        workers.spawn(async move { finished.cancelled().await });
    } else {
        spawn_workers(&ctx, &mut workers);
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_deadline = ctx.start + Duration::from_secs_f64(ctx.duration) + MAX_DRAIN;
    let joiner_stop = ctx.stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = workers.join_next() => if r.is_none() { break },
                _ = tokio::time::sleep_until(drain_deadline.into()) => {
                    joiner_stop.cancel();
                    workers.abort_all();
                    while workers.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let _ = done_tx.send(());
    });

    let epoch0 = epoch_seconds(wall_start);
    let mut closer = Closer {
        ctx: &ctx,
        state: &state,
        writer: &mut writer,
        epoch0,
        gauges: None,
    };
    let mut i = 0u64;
    let mut stopped = false;
    // The last interval closes after the workers are gone; its gauges are read just before the
    // planned end, while users are still at work.
    let planned_end = ctx.start + Duration::from_secs_f64((ctx.duration - 0.1).max(0.0));
    loop {
        let is_last = i + 1 >= n_intervals;
        let boundary = ctx.start + Duration::from_secs(i + 1) + CLOSE_GRACE;
        tokio::select! {
            _ = sleep_until(planned_end.into()), if is_last && closer.gauges.is_none() => {
                closer.gauges = Some(gauges(&ctx));
            }
            _ = sleep_until(boundary.into()), if !is_last => {
                if let Err(e) = closer.close(i, 1.0, false) {
                    *state.failure.lock().unwrap() = Some(e.to_string());
                    ctx.stop.cancel();
                }
                i += 1;
            }
            _ = &mut done_rx => break,
            _ = ctx.stop.cancelled() => {
                stopped = true;
                closer.gauges = Some(gauges(&ctx));
                // Workers drop what is in flight as soon as they see the token.
                let _ = (&mut done_rx).await;
                break;
            }
        }
    }
    // The workers may have seen the stop and finished before this loop did: ask the flag.
    let stopped = stopped || state.stop_requested.load(Ordering::SeqCst);
    let elapsed = ctx.start.elapsed().as_secs_f64();
    let last_len = if stopped {
        (elapsed - i as f64).clamp(0.0, 1.0)
    } else {
        (ctx.duration - i as f64).clamp(0.0, 1.0)
    };
    if let Err(e) = closer.close(i, last_len, true) {
        *state.failure.lock().unwrap() = Some(e.to_string());
    }
    let duration_s = if stopped {
        elapsed.min(ctx.duration)
    } else {
        ctx.duration
    };
    let ended = if ctx.exhausted.load(Ordering::Relaxed) {
        "exhausted"
    } else if stopped {
        "stopped"
    } else {
        "completed"
    };
    let summary = summarize(&ctx, &state, &plan, epoch0, duration_s, ended);
    if let Err(e) = writer.summary(&summary) {
        *state.failure.lock().unwrap() = Some(e.to_string());
    }
    *state.summary.lock().unwrap() = Some(summary);
    *state.done.lock().unwrap() = true;
    state.done_cv.notify_all();
}

fn spawn_workers(ctx: &Arc<Ctx>, workers: &mut JoinSet<()>) {
    match &ctx.model {
        Model::Open { connections, .. } => {
            for vu in 0..*connections as u64 {
                workers.spawn(open_worker(ctx.clone(), vu));
            }
        }
        Model::Closed { users, .. } => {
            for vu in 0..users.peak().ceil() as u64 {
                workers.spawn(closed_worker(ctx.clone(), vu));
            }
        }
    }
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
    fn close(&mut self, i: u64, length: f64, everything: bool) -> Result<()> {
        let ctx = self.ctx;
        let data = ctx.recorder.take(i, everything);
        let start_s = i as f64;
        let (in_flight, active_users) = self.gauges.unwrap_or_else(|| gauges(ctx));
        let rows: Vec<Row> = data
            .iter()
            .enumerate()
            .map(|(t, d)| {
                let target_rps = match &ctx.model {
                    Model::Open { arrivals, .. } if length > 0.0 => {
                        let n =
                            arrivals.cumulative(start_s + length) - arrivals.cumulative(start_s);
                        Some(n / ctx.shards * ctx.mix.share(t) / length)
                    }
                    _ => None,
                };
                Row::new(
                    RowContext {
                        time: self.epoch0 + start_s,
                        elapsed_s: start_s,
                        interval_s: length,
                        task: &self.state.names[t],
                        target_rps,
                        in_flight,
                        active_users,
                    },
                    d,
                )
            })
            .collect();
        self.writer
            .interval(&self.state.names, start_s, length, &data, &rows)?;
        {
            let mut c = self.state.cumulative.lock().unwrap();
            for (acc, d) in c.iter_mut().zip(&data) {
                acc.add(d);
            }
        }
        self.state.rows.lock().unwrap().extend(rows);
        ctx.recorder.recycle(data);
        Ok(())
    }
}

fn summarize(
    ctx: &Ctx,
    state: &RunState,
    plan: &Plan,
    epoch0: f64,
    duration_s: f64,
    ended: &str,
) -> Summary {
    let c = state.cumulative.lock().unwrap();
    let mut all = TaskData::new();
    let tasks = c
        .iter()
        .zip(&state.names)
        .enumerate()
        .map(|(i, (d, name))| {
            all.add(d);
            TaskSummary {
                name: name.clone(),
                path: plan.tasks[i].path.name().into(),
                stats: Stats::of(d, duration_s),
            }
        })
        .collect();
    let (model, target_requests) = match &ctx.model {
        Model::Open { arrivals, .. } => {
            ("open", Some(arrivals.cumulative(duration_s) / ctx.shards))
        }
        Model::Closed { .. } => ("closed", None),
    };
    Summary {
        name: plan.name.clone(),
        started_at: epoch0,
        duration_s,
        planned_duration_s: ctx.duration,
        ended: ended.into(),
        model: model.into(),
        target_requests,
        overall: Stats::of(&all, duration_s),
        tasks,
    }
}

async fn open_worker(ctx: Arc<Ctx>, vu: u64) {
    let Model::Open { schedule, .. } = &ctx.model else {
        return;
    };
    let mut client = Client::new(ctx.target.clone());
    let user = pick_user(&ctx, vu);
    // One registration with the token for the worker's life: a fresh `cancelled()` per request
    // would take the token's lock, shared by every worker, on every request.
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if ctx.stop.is_cancelled() {
            break;
        }
        let next = schedule.lock().unwrap().next();
        let Some(arrival) = next else { break };
        let due = ctx.start + Duration::from_secs_f64(arrival.due);
        let task = ctx.mix.pick(arrival.index);
        let now = Instant::now();
        let late = now > due + LATE;
        if due > now {
            tokio::select! {
                _ = pacer::until(due) => {}
                _ = &mut stopped => break,
            }
        }
        if late {
            ctx.recorder.record(task, now, |d| d.missed += 1);
        }
        tokio::select! {
            go_on = iteration(&ctx, &mut client, vu, arrival.index, task, Some(due), user) => {
                if !go_on { break }
            }
            _ = &mut stopped => break,
        }
    }
}

async fn closed_worker(ctx: Arc<Ctx>, vu: u64) {
    let Model::Closed {
        users,
        think,
        iterations,
    } = &ctx.model
    else {
        return;
    };
    let mut client = Client::new(ctx.target.clone());
    let user = pick_user(&ctx, vu);
    let level = vu as f64;
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    let mut active = false;
    loop {
        let t = ctx.start.elapsed().as_secs_f64();
        if t >= ctx.duration || ctx.stop.is_cancelled() {
            break;
        }
        if users.rate_at(t) <= level {
            if active {
                active = false;
                ctx.recorder.active_users.fetch_sub(1, Ordering::Relaxed);
            }
            // Sleep until this user is wanted again, or to the end of the run.
            let wake = users.next_time_above(level, t).unwrap_or(ctx.duration);
            let at = ctx.start + Duration::from_secs_f64(wake.min(ctx.duration));
            tokio::select! {
                _ = sleep_until(at.into()) => continue,
                _ = &mut stopped => break,
            }
        }
        if !active {
            active = true;
            ctx.recorder.active_users.fetch_add(1, Ordering::Relaxed);
        }
        let iter = iterations.fetch_add(1, Ordering::Relaxed);
        let task = ctx.mix.pick(iter);
        // Boxed: an iteration's state (the request in flight, hyper's futures) is about 1.5 KiB;
        // inline it would stay in every user's task while the user thinks, and a run may hold
        // tens of thousands of thinking users.
        let went = tokio::select! {
            go_on = Box::pin(iteration(&ctx, &mut client, vu, iter, task, None, user)) => go_on,
            _ = &mut stopped => false,
        };
        if !went {
            break;
        }
        if !think.is_zero() || !client.has_connection() {
            // Without think time, a user whose target refuses connections would spin: pause
            // briefly so the errors are counted without burning the CPU the run measures.
            let pause = if think.is_zero() {
                Duration::from_millis(10)
            } else {
                *think
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stopped => break,
            }
        }
    }
    if active {
        ctx.recorder.active_users.fetch_sub(1, Ordering::Relaxed);
    }
}

fn pick_user(ctx: &Ctx, vu: u64) -> Option<usize> {
    if ctx.user_vars.is_empty() {
        None
    } else {
        Some(vu as usize % ctx.user_vars.len())
    }
}

/// Sends one request on `client`, bounded by `timeout` (connecting included), and counts it
/// in flight meanwhile. Returns when it ended, and when it was sent with the response.
pub(crate) async fn exchange(
    ctx: &Ctx,
    client: &mut Client,
    timeout: Duration,
    keep_body: bool,
    keep_headers: bool,
    build: impl FnOnce() -> Result<hyper::Request<http_body_util::Full<bytes::Bytes>>, ErrorKind>,
) -> (Instant, Result<(Instant, crate::http::Response), ErrorKind>) {
    let rec = &ctx.recorder;
    rec.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = tokio::time::timeout(timeout, async {
        client.ensure_connected().await?;
        let built = build()?;
        let sent = Instant::now();
        let resp = client.send(built, keep_body, keep_headers).await?;
        Ok::<_, ErrorKind>((sent, resp))
    })
    .await
    .unwrap_or_else(|_| {
        // The answer may still come later; the connection can no longer be trusted.
        client.disconnect();
        Err(ErrorKind::Timeout)
    });
    rec.in_flight.fetch_sub(1, Ordering::Relaxed);
    (Instant::now(), result)
}

/// Runs one iteration of `task`. Returns false when the run should end for this worker
/// (a unique feeder ran out).
async fn iteration(
    ctx: &Ctx,
    client: &mut Client,
    vu: u64,
    iter: u64,
    task: usize,
    due: Option<Instant>,
    user: Option<usize>,
) -> bool {
    let row = match &ctx.feeder {
        Some(f) => match f.row(iter) {
            Some(r) => Some(r),
            None => {
                ctx.exhausted.store(true, Ordering::Relaxed);
                ctx.stop.cancel();
                return false;
            }
        },
        None => None,
    };
    let values = Values {
        vu,
        iter,
        row,
        user: user.map(|u| &ctx.user_vars[u]),
    };
    let rec = &ctx.recorder;
    for (ri, req) in ctx.tasks[task].iter().enumerate() {
        // Only the first request of an iteration has a due instant; the next ones start when
        // the previous answered.
        let from = match due {
            Some(d) if ri == 0 => d,
            _ => Instant::now(),
        };
        let keep_body = req.check.needs_body();
        let (end, result) = exchange(ctx, client, req.timeout, keep_body, false, || {
            req.build(&values, &ctx.target)
        })
        .await;
        match result {
            Ok((sent, resp)) => {
                let corrected = end.duration_since(from).as_micros() as u64;
                let service = end.duration_since(sent).as_micros() as u64;
                let failure = req
                    .check
                    .evaluate(resp.status, &resp.body, corrected, &values);
                rec.record(task, end, |d| {
                    d.response(resp.status, resp.bytes, corrected, service);
                    if let Some(f) = failure {
                        d.error(f.into(), true);
                    }
                });
            }
            Err(kind) => {
                rec.record(task, end, |d| d.error(kind, false));
                // The rest of the iteration depends on this request having been answered.
                break;
            }
        }
    }
    true
}

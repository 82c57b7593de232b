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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
pub(crate) const LATE: Duration = Duration::from_millis(1);
/// How long after a second ends its interval is closed: lets requests that completed just
/// before the boundary finish recording.
const CLOSE_GRACE: Duration = Duration::from_millis(20);
/// An arrival due before the planned end may still be sent this long after it (a worker
/// woken a moment late); after it nothing new is sent, and what was due and not sent is
/// counted as unsent.
const END_GRACE: Duration = Duration::from_millis(20);
/// After a stop, how long workers get to notice it before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(1);

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
    /// `start + duration`.
    pub(crate) planned_end: Instant,
    /// Nothing new is sent from this instant on (`planned_end + END_GRACE`).
    pub(crate) send_until: Instant,
    /// The longest the run waits after the planned end for requests in flight.
    drain_limit: Duration,
    /// The plan's request timeout.
    pub(crate) default_timeout: Duration,
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
    /// When the run was stopped before its planned end (seconds after the start).
    stopped_at: std::sync::OnceLock<f64>,
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
    /// Set by the first `stop()`, with its reason (`stopped` or `aborted`): tells a stopped
    /// run from one whose token was cancelled for another reason (a unique feeder ran out,
    /// in-flight requests outlived the drain).
    stop_reason: std::sync::OnceLock<&'static str>,
}

#[derive(Clone)]
pub struct RunHandle(Arc<RunState>, Arc<Ctx>);

impl Ctx {
    /// Ends the run now, before its planned end: nothing new is sent, what is in flight is
    /// cancelled. The first call's instant is the end of the run's sending time.
    pub(crate) fn stop_now(&self) {
        self.stopped_at
            .get_or_init(|| self.start.elapsed().as_secs_f64().min(self.duration));
        self.stop.cancel();
    }
}

impl RunHandle {
    pub(crate) fn ctx(&self) -> &Arc<Ctx> {
        &self.1
    }

    /// Stops the run: nothing new is sent, what is in flight is cancelled.
    pub fn stop(&self) {
        self.stop_with("stopped");
    }

    /// Stops the run with the reason the summary gives: `stopped` or `aborted` (a threshold
    /// failed while the run went).
    pub fn stop_with(&self, reason: &'static str) {
        let _ = self.0.stop_reason.set(reason);
        self.1.stop_now();
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
    let longest_timeout = tasks
        .iter()
        .flatten()
        .map(|r| r.timeout)
        .fold(Duration::from_secs_f64(plan.timeout_s), Duration::max);
    // Python task bodies may give any request its own timeout: for them only the cap holds.
    let cap = Duration::from_secs_f64(plan.max_drain_s);
    let drain_limit = if plan.python() {
        cap
    } else {
        longest_timeout.min(cap)
    };
    let users = match &plan.load {
        Load::Open { connections, .. } => *connections as u64,
        Load::Closed { .. } => match &model {
            Model::Closed { users, .. } => users.peak().ceil() as u64,
            Model::Open { .. } => 0,
        },
    };
    check_descriptors(users)?;
    let names: Vec<String> = plan.tasks.iter().map(|t| t.name.clone()).collect();
    let wall_start = SystemTime::now();
    let writer = RunWriter::create(&dir, &plan.to_json(), wall_start)?;
    let n_intervals = duration.ceil().max(1.0) as u64;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let planned_end = start + Duration::from_secs_f64(duration);
    let ctx = Arc::new(Ctx {
        start,
        duration,
        planned_end,
        send_until: planned_end + END_GRACE,
        drain_limit,
        default_timeout: Duration::from_secs_f64(plan.timeout_s),
        shards: shard.1 as f64,
        target,
        tasks,
        mix,
        model,
        feeder: plan.feeder.as_ref().map(compile_feeder),
        user_vars: plan.user_vars.clone(),
        recorder: Recorder::new(start, names.len(), duration, threads),
        stop,
        stopped_at: std::sync::OnceLock::new(),
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
        stop_reason: std::sync::OnceLock::new(),
    });
    let handle = RunHandle(state.clone(), ctx.clone());
    let driving = rt.spawn(drive(
        ctx.clone(),
        state.clone(),
        writer,
        plan,
        wall_start,
        n_intervals,
    ));
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
            *state.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("the engine failed during the run: {why}"));
            *state.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            state.done_cv.notify_all();
        }
    });
    Ok(handle)
}

/// Descriptors a process needs beyond one per connection: the runtime, the run directory,
/// Python and its imports.
const SPARE_DESCRIPTORS: u64 = 128;

/// Raises this process's descriptor limit to the most it may have, and refuses up front a run
/// whose users or connections need more than that: one clear line before the run, not
/// thousands of failed connections during it.
fn check_descriptors(users: u64) -> Result<()> {
    let limit = raise_descriptor_limit();
    let needed = users + SPARE_DESCRIPTORS;
    match limit {
        Some(limit) if needed > limit => Err(Error::plan(
            "load",
            format!(
                "needs ~{needed} file descriptors ({users} users or connections), the limit \
                 is {limit}: raise it (ulimit -n {needed}) or ask for fewer"
            ),
        )),
        _ => Ok(()),
    }
}

/// Sets the soft limit on open descriptors to the hard limit; returns the limit now in force.
fn raise_descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
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

/// How the schedule's part of a run ended.
enum Phase {
    /// The planned end was reached; workers may still have requests in flight.
    Planned,
    /// Every worker finished before the planned end (the schedule or the users were done).
    Joined,
    /// Stopped (or a unique feeder ran out) `at` seconds in; workers are gone.
    Stopped { at: f64 },
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
    let joiner_stop = ctx.stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = workers.join_next() => if r.is_none() { break },
                _ = joiner_stop.cancelled() => {
                    // Workers drop what is in flight as soon as they see the token; whatever
                    // has not noticed it in a moment is aborted.
                    let grace = tokio::time::sleep(STOP_GRACE);
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            r = workers.join_next() => if r.is_none() { break },
                            _ = &mut grace => {
                                workers.abort_all();
                                while workers.join_next().await.is_some() {}
                                break;
                            }
                        }
                    }
                    break;
                }
            }
        }
        let _ = done_tx.send(());
    });

    let epoch0 = epoch_seconds(wall_start);
    let n_tasks = state.names.len();
    let mut closer = Closer {
        ctx: &ctx,
        state: &state,
        writer: &mut writer,
        epoch0,
        gauges: None,
    };
    let fail = |e: Error| {
        *state.failure.lock().unwrap() = Some(e.to_string());
        ctx.stop_now();
    };
    // Arrivals due and never taken from the schedule, per task.
    let mut skipped = vec![0u64; n_tasks];
    let mut i = 0u64;
    // The last interval's gauges are read just before the planned end, while users are still
    // at work.
    let gauge_at = ctx.start + Duration::from_secs_f64((ctx.duration - 0.1).max(0.0));
    let phase = loop {
        let is_last = i + 1 >= n_intervals;
        let boundary = if is_last {
            ctx.send_until
        } else {
            ctx.start + Duration::from_secs(i + 1) + CLOSE_GRACE
        };
        tokio::select! {
            _ = sleep_until(gauge_at.into()), if is_last && closer.gauges.is_none() => {
                closer.gauges = Some(gauges(&ctx));
            }
            _ = sleep_until(boundary.into()) => {
                let mut data = ctx.recorder.take(i, false);
                let length = if is_last { ctx.duration - i as f64 } else { 1.0 };
                if is_last {
                    // Nothing new is sent from here on: what was due and not taken is unsent.
                    let left = finish_schedule(&ctx, ctx.duration);
                    for (t, n) in left.iter().enumerate() {
                        data[t].unsent += n;
                        skipped[t] += n;
                    }
                }
                if let Err(e) = closer.close(i, length, data) {
                    fail(e);
                }
                i += 1;
                if is_last {
                    break Phase::Planned;
                }
            }
            _ = &mut done_rx => match ctx.stopped_at.get() {
                // Workers saw a stop and were gone before this loop woke.
                Some(&at) => break Phase::Stopped { at },
                None => break Phase::Joined,
            },
            _ = ctx.stop.cancelled() => {
                closer.gauges = Some(gauges(&ctx));
                let _ = (&mut done_rx).await;
                let at = ctx.stopped_at.get().copied().unwrap_or(ctx.duration);
                break Phase::Stopped { at };
            }
        }
    };
    let exhausted = ctx.exhausted.load(Ordering::Relaxed);
    let mut ended = "completed";
    let (duration_s, drain_s, last_i, last_len) = match phase {
        Phase::Planned => {
            // The drain: wait for what is in flight, up to the drain limit.
            let deadline = ctx.planned_end + ctx.drain_limit;
            tokio::select! {
                _ = &mut done_rx => {}
                _ = sleep_until(deadline.into()) => {
                    ended = "drain_timeout";
                    ctx.stop.cancel();
                    let _ = (&mut done_rx).await;
                }
                _ = ctx.stop.cancelled() => {
                    let _ = (&mut done_rx).await;
                }
            }
            let drain = ctx.planned_end.elapsed().as_secs_f64();
            (ctx.duration, drain, i, drain)
        }
        Phase::Joined | Phase::Stopped { .. } => {
            let at = match phase {
                Phase::Stopped { at } => at,
                _ => ctx.duration,
            };
            let left = finish_schedule(&ctx, at);
            for (t, n) in left.iter().enumerate() {
                skipped[t] += n;
            }
            (at, 0.0, i, (at - i as f64).clamp(0.0, 1.0))
        }
    };
    // Every worker is gone: what remains open is the last interval (or the drain).
    let mut data = ctx.recorder.take(u64::MAX, true);
    if !matches!(phase, Phase::Planned) {
        for (t, n) in skipped.iter().enumerate() {
            data[t].unsent += n;
        }
    }
    {
        let cumulative = state.cumulative.lock().unwrap();
        for (t, d) in data.iter_mut().enumerate() {
            let mut total = cumulative[t].clone();
            total.add(d);
            // Taken and never started: unsent. Started and never finished: cancelled.
            d.unsent += total.taken.saturating_sub(total.started);
            d.cancelled += total.started.saturating_sub(total.iterations);
        }
    }
    let is_drain = matches!(phase, Phase::Planned);
    let anything = data
        .iter()
        .any(|d| d.requests + d.unsent + d.cancelled + d.error_total() + d.taken > 0);
    // A drain in which nothing happened (everything had come back by the planned end) is
    // not a row, and no time.
    let drain_s = if is_drain && !anything { 0.0 } else { drain_s };
    if !is_drain || anything {
        if let Err(e) = closer.close(last_i, last_len, data) {
            *state.failure.lock().unwrap() = Some(e.to_string());
        }
    }
    if state.failure.lock().unwrap().is_some() {
        // The run directory could not be written (a full disk): what the summary says was
        // measured, but rows may be missing from the files.
        ended = "failed";
    } else if let (Some(reason), "completed") = (state.stop_reason.get(), ended) {
        ended = reason;
    } else if exhausted {
        ended = "exhausted";
    }
    let summary = summarize(
        &ctx, &state, &plan, epoch0, duration_s, drain_s, ended, &skipped,
    );
    if let Err(e) = writer.summary(&summary) {
        *state.failure.lock().unwrap() = Some(e.to_string());
    }
    *state.summary.lock().unwrap() = Some(summary);
    *state.done.lock().unwrap() = true;
    state.done_cv.notify_all();
}

/// Ends the open model's schedule at `at` seconds: the arrivals due before it that nobody
/// took, per task.
fn finish_schedule(ctx: &Ctx, at: f64) -> Vec<u64> {
    match &ctx.model {
        Model::Open { schedule, .. } => schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish_before(at, &ctx.mix, ctx.tasks.len()),
        Model::Closed { .. } => vec![0; ctx.tasks.len()],
    }
}

fn spawn_workers(ctx: &Arc<Ctx>, workers: &mut JoinSet<()>) {
    match &ctx.model {
        Model::Open { connections, .. } => {
            for vu in 0..*connections as u64 {
                workers.spawn(open_worker(ctx.clone(), vu));
            }
        }
        Model::Closed { .. } => {
            workers.spawn(closed_users(ctx.clone()));
        }
    }
}

/// Starts each closed-model user when the profile first wants it (a ramp of 10,000 users
/// starts them over the ramp, not all at once), and waits for them. Aborting this task
/// aborts every user.
async fn closed_users(ctx: Arc<Ctx>) {
    let Model::Closed { users, .. } = &ctx.model else {
        return;
    };
    let mut started = JoinSet::new();
    for vu in 0..users.peak().ceil() as u64 {
        // Levels are reached in order: user `vu + 1` is never wanted before user `vu`.
        let Some(t) = users.next_time_above(vu as f64, 0.0) else {
            break;
        };
        if t >= ctx.duration {
            break;
        }
        let at = ctx.start + Duration::from_secs_f64(t);
        if at > Instant::now() {
            tokio::select! {
                _ = sleep_until(at.into()) => {}
                _ = ctx.stop.cancelled() => break,
            }
        }
        started.spawn(closed_worker(ctx.clone(), vu));
    }
    while started.join_next().await.is_some() {}
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
    fn close(&mut self, i: u64, length: f64, data: Vec<TaskData>) -> Result<()> {
        let ctx = self.ctx;
        let start_s = (i as f64).min(ctx.duration);
        let drain = i as f64 >= ctx.duration;
        let (in_flight, active_users) = self.gauges.unwrap_or_else(|| gauges(ctx));
        let rows: Vec<Row> = data
            .iter()
            .enumerate()
            .map(|(t, d)| {
                let target_rps = match &ctx.model {
                    Model::Open { .. } if drain => Some(0.0),
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
                        // Nothing is sent in the drain: its requests were sent before it.
                        achieved_s: (!drain).then_some(length),
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

#[allow(clippy::too_many_arguments)]
fn summarize(
    ctx: &Ctx,
    state: &RunState,
    plan: &Plan,
    epoch0: f64,
    duration_s: f64,
    drain_s: f64,
    ended: &str,
    skipped: &[u64],
) -> Summary {
    let c = state.cumulative.lock().unwrap();
    let open = matches!(ctx.model, Model::Open { .. });
    let mut all = TaskData::new();
    let mut all_target = 0u64;
    let tasks = c
        .iter()
        .zip(&state.names)
        .enumerate()
        .map(|(i, (d, name))| {
            all.add(d);
            let target = d.taken + skipped[i];
            all_target += target;
            TaskSummary {
                name: name.clone(),
                path: plan.tasks[i].path.name().into(),
                target_requests: open.then_some(target as f64),
                stats: Stats::of(d, duration_s),
            }
        })
        .collect();
    Summary {
        name: plan.name.clone(),
        started_at: epoch0,
        duration_s,
        drain_s,
        planned_duration_s: ctx.duration,
        ended: ended.into(),
        model: if open { "open" } else { "closed" }.into(),
        target_requests: open.then_some(all_target as f64),
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
    // An arrival taken and not sent is counted as unsent when the run ends (taken - started),
    // if it was due before the run stopped: a worker takes its next arrival ahead of time.
    let give_up = |task: usize, due_s: f64| {
        if ctx.stopped_at.get().is_none_or(|&at| due_s < at) {
            ctx.recorder.record(task, Instant::now(), |d| d.taken += 1);
        }
    };
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
                _ = &mut stopped => {
                    give_up(task, arrival.due);
                    break;
                }
            }
        }
        if Instant::now() >= ctx.send_until || ctx.stop.is_cancelled() {
            // Due before the planned end, but the generator got to it too late.
            give_up(task, arrival.due);
            break;
        }
        let begin = Begin {
            taken: true,
            late,
            due: Some(due),
        };
        tokio::select! {
            go_on = iteration(&ctx, &mut client, vu, arrival.index, task, begin, user) => {
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
        let begin = Begin {
            taken: true,
            late: false,
            due: None,
        };
        // Boxed: an iteration's state (the request in flight, hyper's futures) is about 1.5 KiB;
        // inline it would stay in every user's task while the user thinks, and a run may hold
        // tens of thousands of thinking users.
        let went = tokio::select! {
            go_on = Box::pin(iteration(&ctx, &mut client, vu, iter, task, begin, user)) => go_on,
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
            // Thinking past the planned end would hold the run open for nothing.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = sleep_until(ctx.planned_end.into()) => break,
                _ = &mut stopped => break,
            }
        }
    }
    if active {
        ctx.recorder.active_users.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an iteration begins: whether it counts as a taken arrival (engine workers take and
/// start in one step), whether it started late (missed), and the instant it was due.
pub(crate) struct Begin {
    pub(crate) taken: bool,
    pub(crate) late: bool,
    pub(crate) due: Option<Instant>,
}

impl Begin {
    /// Records the iteration's start, in one visit to the recorder.
    pub(crate) fn record(&self, ctx: &Ctx, task: usize) {
        ctx.recorder.record(task, Instant::now(), |d| {
            d.taken += self.taken as u64;
            d.started += 1;
            d.missed += self.late as u64;
        });
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
    /// Counts a request in flight for as long as it lives, including when it is dropped
    /// (cancelled) before it ends.
    struct InFlight<'a>(&'a AtomicI64);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    ctx.recorder.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&ctx.recorder.in_flight);
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
    begin: Begin,
    user: Option<usize>,
) -> bool {
    let row = match &ctx.feeder {
        Some(f) => match f.row(iter) {
            Some(r) => Some(r),
            None => {
                if begin.taken {
                    ctx.recorder.record(task, Instant::now(), |d| d.taken += 1);
                }
                ctx.exhausted.store(true, Ordering::Relaxed);
                ctx.stop_now();
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
    begin.record(ctx, task);
    let rec = &ctx.recorder;
    let requests = &ctx.tasks[task];
    for (ri, req) in requests.iter().enumerate() {
        // Only the first request of an iteration has a due instant; the next ones start when
        // the previous answered.
        let from = match begin.due {
            Some(d) if ri == 0 => d,
            _ => Instant::now(),
        };
        let keep_body = req.check.needs_body();
        let (end, result) = exchange(ctx, client, req.timeout, keep_body, false, || {
            req.build(&values, &ctx.target)
        })
        .await;
        let last = ri + 1 == requests.len();
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
                    d.iterations += last as u64;
                });
            }
            Err(kind) => {
                rec.record(task, end, |d| {
                    d.error(kind, false);
                    d.iterations += 1;
                });
                // The rest of the iteration depends on this request having been answered.
                break;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(mode: FeedMode) -> FeedRows {
        FeedRows {
            rows: (0..4).map(|i| vec![format!("r{i}")]).collect(),
            mode,
            seed: 7,
        }
    }

    fn picks(f: &FeedRows, n: u64) -> Vec<Option<String>> {
        (0..n).map(|k| f.row(k).map(|r| r[0].clone())).collect()
    }

    #[test]
    fn feeder_rows_cycle_repeat_by_seed_and_run_out_when_unique() {
        let cycle = picks(&rows(FeedMode::Cycle), 6);
        let named = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(cycle, named(&["r0", "r1", "r2", "r3", "r0", "r1"]));
        let random = picks(&rows(FeedMode::Random), 64);
        assert_eq!(
            random,
            picks(&rows(FeedMode::Random), 64),
            "the same seed, the same rows"
        );
        let other = FeedRows {
            seed: 8,
            ..rows(FeedMode::Random)
        };
        assert_ne!(random, picks(&other, 64));
        assert!((0..4).all(|i| random.contains(&Some(format!("r{i}")))));
        let unique = picks(&rows(FeedMode::Unique), 6);
        assert_eq!(&unique[..4], named(&["r0", "r1", "r2", "r3"]).as_slice());
        assert_eq!(&unique[4..], &[None, None]);
    }

    #[test]
    fn the_descriptor_limit_is_raised_and_checked_before_a_run() {
        let limit = raise_descriptor_limit().expect("a finite limit here");
        assert!(check_descriptors(limit / 2).is_ok());
        let e = check_descriptors(limit * 2).unwrap_err().to_string();
        assert!(
            e.contains("file descriptors") && e.contains(&format!("limit is {limit}")),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_due_arrival_is_accounted_for_when_the_target_refuses_connections() {
        // A port nothing listens on: every request fails at once with `connect`.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let plan = Plan::from_json(&format!(
            r#"{{"target": "http://127.0.0.1:{port}",
                "load": {{"model": "open", "stages": [{{"kind": "constant", "rate": 200, "duration_s": 1}}]}},
                "tasks": [{{"name": "a", "weight": 3, "requests": [{{"path": "/"}}]}},
                          {{"name": "b", "requests": [{{"path": "/"}}]}}]}}"#
        ))
        .unwrap();
        let dir = std::env::temp_dir().join(format!("lp-runner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = start(&Handle::current(), 2, plan, dir.clone()).unwrap();
        let waiter = run.clone();
        tokio::task::spawn_blocking(move || waiter.wait(Duration::from_secs(20)))
            .await
            .unwrap();
        let s = run.summary().expect("a finished run has a summary");
        assert_eq!(s.ended, "completed");
        assert_eq!(s.target_requests, Some(200.0));
        let targets: Vec<_> = s.tasks.iter().map(|t| t.target_requests).collect();
        assert_eq!(targets, [Some(150.0), Some(50.0)]);
        for t in &s.tasks {
            let st = &t.stats;
            assert_eq!(
                t.target_requests,
                Some((st.iterations + st.cancelled + st.unsent) as f64)
            );
            assert_eq!(st.errors_by_kind["connect"], st.requests);
        }
        assert_eq!(s.overall.error_rate, 1.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

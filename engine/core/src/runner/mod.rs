//! A run: compiles a plan (`compile`), sets its users up, drives them on the runtime and
//! closes one interval per second into the run directory and the row queue (`lifecycle`),
//! runs every iteration in one worker loop per model (`workers`) and records each exchange
//! (`record`).
//!
//! Open model: `connections` workers, each with its own keep-alive connection, take the next
//! arrival from the one schedule, wait until it is due, run it, and record latency from the
//! instant it was due. A worker that takes an arrival already late (every connection was busy)
//! counts it as missed and still measures from the due instant, so the generator's own queueing
//! shows up in corrected latency and in `missed`, never as a silently thinner schedule.
//!
//! Closed model: one worker per virtual user; user `i` runs while the profile's value is above
//! `i`, so ramps start and stop users in order.
//!
//! An iteration's body is either the task's compiled requests or Python code: the worker then
//! asks Python to run it (see `session`) and waits, keeping time and counts as for its own.

mod compile;
mod lifecycle;
pub mod pacer;
pub mod python;
mod record;
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::Result;
use crate::http::{CompiledRequest, Target};
use crate::measure::metrics::{Interval, Recorder, TaskData};
use crate::measure::names::Names;
use crate::measure::rows::Row;
use crate::measure::rundir;
use crate::measure::summary::Summary;
use crate::measure::summary::{Ended, Totals};
use crate::plan::profile::Profile;
use crate::plan::schedule::{Mix, Rng, Schedule};
use crate::plan::{FeedMode, Plan};
use crate::runner::python::{Inbox, PythonSide, Ticket};

pub(crate) use record::{exchange, Keep};

/// An arrival taken this long after it was due found no free connection.
pub(crate) const LATE: Duration = Duration::from_millis(1);

/// Builds the one multi-thread runtime the engine runs on; each worker thread gets its own
/// metrics shard.
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadpilot-engine")
        .on_thread_start(crate::measure::metrics::register_worker_thread)
        .enable_all()
        .build()
}

pub(crate) enum Model {
    Open {
        schedule: Mutex<Schedule>,
        connections: u32,
        arrivals: Profile,
        /// A distributed run's slice only (the coordinator takes it over from there).
        sent: Option<Progress>,
    },
    Closed {
        users: Profile,
        think: Think,
        iterations: AtomicU64,
        /// This slice's share of the plan's `max_iterations`, and the iterations ended so far.
        budget: Option<u64>,
        ended: AtomicU64,
    },
}

/// How far an open model's slice has got: what a distributed run's coordinator needs to take
/// the slice over from the first arrival it was not known to have sent.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// One past the highest arrival index sent.
    upto: AtomicU64,
    /// Arrivals sent, per task.
    started: Vec<AtomicU64>,
}

impl Progress {
    pub(crate) fn new(tasks: usize) -> Self {
        Progress {
            upto: AtomicU64::new(0),
            started: (0..tasks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Arrival `index` of `task` is being sent.
    pub(crate) fn sent(&self, index: u64, task: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.upto.fetch_max(index + 1, Relaxed);
        if let Some(c) = self.started.get(task) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// One past the highest arrival index sent, and the arrivals sent per task.
    pub(crate) fn read(&self) -> (u64, Vec<u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        // Counts first: every arrival they count is below the index read after them.
        let started = self.started.iter().map(|c| c.load(Relaxed)).collect();
        (self.upto.load(Relaxed), started)
    }
}

/// A closed-model user's wait between iterations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Think {
    /// Drawn uniformly from `min` to `max` (equal: a constant think time).
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    /// Iterations start `pace` apart: the wait is what the iteration left of it.
    pub(crate) pace: Option<Duration>,
}

impl Think {
    /// The wait after an iteration that took `took`; `draw` is a uniform number in [0, 1).
    pub(crate) fn after(&self, took: Duration, draw: f64) -> Duration {
        if let Some(pace) = self.pace {
            return pace.saturating_sub(took);
        }
        if self.max > self.min {
            return self.min + (self.max - self.min).mul_f64(draw);
        }
        self.min
    }
}

impl Model {
    /// Virtual users (closed model) or connections (open model) at the peak.
    pub(crate) fn peak_users(&self) -> u64 {
        match self {
            Model::Open { connections, .. } => *connections as u64,
            Model::Closed { users, .. } => users.peak().ceil() as u64,
        }
    }
}

/// One request of an engine task: compiled, and the slot its name is measured in.
pub(crate) struct Step {
    pub(crate) request: CompiledRequest,
    pub(crate) slot: usize,
}

/// What an iteration of a task runs.
pub(crate) enum Body {
    /// The task's requests, compiled.
    Engine(Vec<Step>),
    /// Python code, run by Python when the engine asks.
    Python,
}

pub(crate) struct FeedRows {
    rows: Vec<Vec<String>>,
    mode: FeedMode,
    seed: u64,
}

impl FeedRows {
    /// The row of iteration `iter`; `None` once a unique feeder has run out.
    pub(crate) fn row(&self, iter: u64) -> Option<&[String]> {
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

/// How a run stops before its planned end, all in one place: the token every worker watches,
/// when it was stopped, why (when a caller stopped it), and whether a unique feeder ran out.
#[derive(Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    /// When the run was stopped before its planned end (seconds after the start).
    at: OnceLock<f64>,
    /// Set by the first `RunHandle::stop`, with its reason (`Stopped` or `Aborted`): tells a
    /// stopped run from one whose token was cancelled for another reason (a unique feeder ran
    /// out, in-flight requests outlived the drain).
    reason: OnceLock<Ended>,
    exhausted: AtomicBool,
}

impl Stop {
    /// Resolves once the run is stopping (for whatever reason).
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
    /// Cancels what is in flight without ending the run's sending time (the drain's end).
    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
    /// When the run was stopped before its planned end, if it was.
    pub(crate) fn at(&self) -> Option<f64> {
        self.at.get().copied()
    }
    /// A unique feeder ran out: the run ends as `exhausted`.
    pub(crate) fn exhaust(&self) {
        self.exhausted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    /// How the run ended, once it has: a failure first, then the caller's reason, then a
    /// feeder that ran out, then what the drain says (`Completed` or `DrainTimeout`).
    pub(crate) fn ended(&self, failed: bool, drained: Ended) -> Ended {
        if failed {
            Ended::Failed
        } else if drained != Ended::Completed {
            drained
        } else if let Some(&reason) = self.reason.get() {
            reason
        } else if self.exhausted.load(std::sync::atomic::Ordering::Relaxed) {
            Ended::Exhausted
        } else {
            Ended::Completed
        }
    }
}

/// The run's clock, started once its users are set up.
pub(crate) struct Clock {
    pub(crate) start: Instant,
    /// `start + duration`.
    pub(crate) planned_end: Instant,
    /// Nothing new is sent from this instant on (`planned_end + END_GRACE`).
    pub(crate) send_until: Instant,
}

pub(crate) struct Ctx {
    clock: OnceLock<Clock>,
    pub(crate) duration: f64,
    /// The longest the run waits after the planned end for requests in flight.
    pub(crate) drain_limit: Duration,
    /// The plan's request timeout.
    pub(crate) default_timeout: Duration,
    /// The share of requests sent with a trace context (the plan's `trace`).
    pub(crate) trace: f64,
    /// The plan's `follow_redirects` and `max_redirects`, for Python's requests.
    pub(crate) redirect_defaults: (bool, u32),
    /// How many shards the schedule is split into (this run runs one of them).
    pub(crate) shards: f64,
    /// This run's shard `(index, count)`: closed-model users `vu` with `vu % count == index`
    /// are its own.
    pub(crate) shard: (u64, u64),
    /// When the schedule's 0 s falls, seconds since the Unix epoch (a distributed run's
    /// agreed start); `None`: as soon as the users are set up.
    pub(crate) start_at: Option<f64>,
    /// The slice begins this many seconds in (a slice taken over part-way through a run):
    /// earlier intervals are empty by construction and not reported.
    pub(crate) from_s: f64,
    pub(crate) target: Arc<Target>,
    /// Per task of the plan (the entries after them, if any, count hooks).
    pub(crate) bodies: Vec<Body>,
    pub(crate) mix: Mix,
    pub(crate) model: Model,
    pub(crate) feeder: Option<FeedRows>,
    pub(crate) user_vars: Vec<BTreeMap<String, String>>,
    pub(crate) recorder: Recorder,
    /// The names measurements are kept under: entries, then request names.
    pub(crate) names: Names,
    pub(crate) stop: Stop,
    /// Set when any part of the plan runs in Python (a task body or a hook).
    pub(crate) python: Option<PythonSide>,
    /// Every request's entry, latency and trace id, a line each, when the environment names
    /// a file in `TEST_REQUEST_LOG`: the tests' full record to check what is kept against.
    pub(crate) request_log: Option<std::sync::Mutex<std::fs::File>>,
}

/// The environment variable that makes a run write every request to a file (for tests).
pub const TEST_REQUEST_LOG: &str = "LOADPILOT_TEST_REQUEST_LOG";

impl Ctx {
    /// Whether closed-model user `vu` belongs to this run's shard.
    /// (An open model's users are its connections: all its own.)
    pub(crate) fn owns_user(&self, vu: u64) -> bool {
        matches!(self.model, Model::Open { .. }) || vu % self.shard.1 == self.shard.0
    }

    /// User `vu`'s place among this run's own users (0, 1, 2, ...): a closed-model shard owns
    /// every `count`-th user of the schedule.
    pub(crate) fn local_user(&self, vu: u64) -> u64 {
        match self.model {
            Model::Open { .. } => vu,
            Model::Closed { .. } => vu / self.shard.1.max(1),
        }
    }

    /// Starts the run's clock (once): now, or at the agreed instant `start_at` (an instant
    /// already past starts the clock in the past).
    fn start_clock(&self) -> Instant {
        let now = Instant::now();
        let start = match self.start_at {
            None => now,
            Some(at) => {
                let ahead = at - rundir::epoch_seconds(std::time::SystemTime::now());
                if ahead >= 0.0 {
                    now + Duration::from_secs_f64(ahead)
                } else {
                    now.checked_sub(Duration::from_secs_f64(-ahead))
                        .unwrap_or(now)
                }
            }
        };
        let planned_end = start + Duration::from_secs_f64(self.duration);
        let _ = self.clock.set(Clock {
            start,
            planned_end,
            send_until: planned_end + lifecycle::END_GRACE,
        });
        self.recorder.begin(start);
        start
    }

    /// The run's clock; workers only run once it has started.
    pub(crate) fn clock(&self) -> &Clock {
        self.clock
            .get()
            .expect("workers start after the run's clock")
    }

    /// The entry `on_start`'s requests and set-ups are counted under: the one after the
    /// plan's tasks.
    pub(crate) fn hook_entry(&self) -> usize {
        self.bodies.len()
    }

    /// When the run's clock started; `None` while users are being set up.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.clock.get().map(|c| c.start)
    }

    /// Ends the run now, before its planned end: nothing new is sent, what is in flight is
    /// cancelled. The first call's instant is the end of the run's sending time.
    pub(crate) fn stop_now(&self) {
        self.stop.at.get_or_init(|| {
            self.started()
                .map_or(0.0, |s| s.elapsed().as_secs_f64().min(self.duration))
        });
        self.stop.cancel();
    }
}

/// What Python (or any caller) sees of a run.
pub struct RunState {
    pub names: Vec<String>,
    pub dir: PathBuf,
    rows: Mutex<Vec<Row>>,
    totals: Mutex<Totals>,
    summary: Mutex<Option<Summary>>,
    failure: Mutex<Option<String>>,
    done: Mutex<bool>,
    done_cv: Condvar,
    plan: Plan,
    /// When the run's clock started, seconds since the Unix epoch.
    epoch0: OnceLock<f64>,
    /// Seconds of sending closed so far (the drain is not sending time).
    sent_s: Mutex<f64>,
    /// Closed intervals kept whole for `take_intervals` (when the run reports them).
    intervals: Option<Mutex<Vec<Interval>>>,
}

/// A lock whose holder panicked still guards data that is whole (every update under these
/// locks is a single assignment or addition): the run goes on with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunState {
    fn finish(&self) {
        *lock(&self.done) = true;
        self.done_cv.notify_all();
    }

    /// Records the run's first failure (later ones are consequences).
    fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
    }

    fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }
}

/// A run, as its caller holds it.
#[derive(Clone)]
pub struct RunHandle {
    state: Arc<RunState>,
    ctx: Arc<Ctx>,
}

impl RunHandle {
    /// Stops the run: nothing new is sent, what is in flight is cancelled.
    pub fn stop(&self) {
        self.stop_with(Ended::Stopped);
    }

    /// Stops the run with the reason the summary gives: `Stopped` or `Aborted` (a threshold
    /// failed while the run went).
    pub fn stop_with(&self, reason: Ended) {
        let _ = self.ctx.stop.reason.set(reason);
        self.ctx.stop_now();
    }
    pub fn is_done(&self) -> bool {
        *lock(&self.state.done)
    }
    /// Waits up to `timeout` for the run to end; true if it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = lock(&self.state.done);
        let (g, _) = self
            .state
            .done_cv
            .wait_timeout_while(g, timeout, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
    /// Intervals closed since the last call, whole (only for runs started to report them).
    pub fn take_intervals(&self) -> Vec<Interval> {
        self.state
            .intervals
            .as_ref()
            .map(|q| std::mem::take(&mut *lock(q)))
            .unwrap_or_default()
    }
    /// Rows closed since the last call.
    pub fn take_rows(&self) -> Vec<Row> {
        std::mem::take(&mut *lock(&self.state.rows))
    }
    pub fn summary(&self) -> Option<Summary> {
        lock(&self.state.summary).clone()
    }
    /// The final summary once the run has ended; while it goes, the summary of the seconds
    /// closed so far (`ended` "running"), by the same rule.
    pub fn summary_so_far(&self) -> Summary {
        if let Some(s) = self.summary() {
            return s;
        }
        let sent = *lock(&self.state.sent_s);
        let epoch0 = self.state.epoch0.get().copied().unwrap_or(0.0);
        lifecycle::summarize(
            &self.ctx,
            &self.state,
            epoch0,
            sent,
            0.0,
            Ended::Running,
            &[],
        )
    }
    /// Set when the run ended on an error of its own (e.g. the disk filled up).
    pub fn failure(&self) -> Option<String> {
        lock(&self.state.failure).clone()
    }
    pub fn names(&self) -> &[String] {
        &self.state.names
    }
    pub fn dir(&self) -> &PathBuf {
        &self.state.dir
    }
    /// Everything closed so far: of one task, of all (`None`), or of request name `request`
    /// of `task`.
    pub fn cumulative(&self, task: Option<&str>, request: Option<&str>) -> Result<TaskData> {
        lock(&self.state.totals).of(task, request)
    }

    /// Seconds since the run's clock started (0 while its users are set up).
    pub fn elapsed_s(&self) -> f64 {
        self.ctx
            .started()
            .map_or(0.0, |s| s.elapsed().as_secs_f64())
    }

    /// Where the engine posts Python's work; `None` when no part of the plan is Python.
    pub fn tickets(&self) -> Option<Arc<Inbox<Ticket>>> {
        self.ctx.python.as_ref().map(|p| p.tickets.clone())
    }

    /// A distributed slice's progress (open model): one past the highest arrival index sent,
    /// and the arrivals sent per task; `None` for a closed model or a run that is no slice.
    pub fn progress(&self) -> Option<(u64, Vec<u64>)> {
        match &self.ctx.model {
            Model::Open { sent, .. } => sent.as_ref().map(Progress::read),
            Model::Closed { .. } => None,
        }
    }

    /// The most virtual users (closed model) or connections (open model) the run has at once.
    pub fn max_users(&self) -> u64 {
        self.ctx.model.peak_users()
    }

    /// The Python side cannot go on: the run ends with this error.
    pub fn python_failed(&self, why: &str) {
        self.state
            .fail(format!("Python virtual users failed: {why}"));
        self.ctx.stop_now();
        if let Some(py) = &self.ctx.python {
            py.tickets.close();
        }
    }
}

pub use compile::arrivals_before;

/// Validates and compiles `plan`, creates the run directory and starts the run on `rt`.
/// Returns at once; every problem with the plan or the directory is reported here, before any
/// request is sent.
pub fn start(rt: &Handle, threads: usize, plan: Plan, dir: PathBuf) -> Result<RunHandle> {
    start_with(rt, threads, plan, dir, false)
}

/// As `start`; with `report`, every closed interval is also kept whole (histograms and
/// counters of every task) for `take_intervals`: what an agent of a distributed run sends.
pub fn start_with(
    rt: &Handle,
    threads: usize,
    plan: Plan,
    dir: PathBuf,
    report: bool,
) -> Result<RunHandle> {
    let compiled = compile::compile(&plan, threads)?;
    compile::check_descriptors(compiled.users)?;
    lifecycle::launch(rt, compiled, plan, dir, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_fixed_drawn_between_bounds_or_what_the_pace_leaves() {
        let ms = Duration::from_millis;
        let fixed = Think {
            min: ms(100),
            max: ms(100),
            pace: None,
        };
        assert_eq!(fixed.after(ms(30), 0.9), ms(100));
        let between = Think {
            min: ms(50),
            max: ms(150),
            pace: None,
        };
        assert_eq!(between.after(ms(30), 0.0), ms(50));
        assert_eq!(between.after(ms(30), 0.5), ms(100));
        let paced = Think {
            min: ms(0),
            max: ms(0),
            pace: Some(ms(100)),
        };
        assert_eq!(paced.after(ms(30), 0.5), ms(70));
        assert_eq!(paced.after(ms(130), 0.5), ms(0));
    }

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
}

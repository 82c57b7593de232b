//! Recording latencies and counts, per task and per one-second interval.
//!
//! Each runtime worker thread records into its own shard; a shard's mutex is shared only with the
//! collector, which takes it once a second, so recording never waits on another worker (the shape
//! of hdrhistogram's `SyncHistogram` + per-thread `Recorder`, without its refresh handshake that
//! would stall on a recorder blocked in a long request).
//!
//! A sample belongs to the interval in which its request completed. Each shard keeps samples of
//! different intervals apart, so the collector can close interval `i` exactly, however late it
//! wakes up.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use crate::measure::kept::{Keeper, Kept};
use crate::outcome::ErrorKind;

/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const SIGFIG: u8 = 3;

/// Every histogram LoadPilot records: microseconds, in the layout below.
pub use crate::measure::hlog::Hist;

pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

pub fn decode_hist(text: &str) -> Result<Hist, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let h: Hist = Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| format!("not an HdrHistogram: {e:?}"))?;
    if h.low() == LOWEST_US && h.high() == HIGHEST_US && h.sigfig() == SIGFIG && !h.is_auto_resize()
    {
        // Already in the standard layout (every LoadPilot histogram).
        return Ok(h);
    }
    // Re-home into the standard bounds so histograms from any writer add up.
    let mut out = new_hist();
    out.add(&h).map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

pub const STATUS_CLASSES: usize = 5;
pub const ERROR_KINDS: usize = ErrorKind::ALL.len();

/// A task's counts over an interval (or any span, once added up): what a local run and a
/// distributed run's merge count alike, and what travels between them as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests that completed (with a response or an error).
    pub requests: u64,
    /// Failed requests (and Python exceptions) by kind, in `ErrorKind::ALL`'s order.
    #[serde(deserialize_with = "errors_counts")]
    pub errors: [u64; ERROR_KINDS],
    /// Responses by status class: 1xx to 5xx.
    #[serde(deserialize_with = "status_counts")]
    pub status: [u64; STATUS_CLASSES],
    pub bytes_in: u64,
    /// Redirects followed.
    #[serde(default)]
    pub redirects: u64,
    /// Arrivals that could not start on time (no free connection).
    pub missed: u64,
    /// Arrivals taken from the schedule (or handed to Python, or picked by a closed-model
    /// user): each is started or, once the run ends, counted as unsent.
    pub taken: u64,
    /// Iterations that began sending.
    pub started: u64,
    /// Iterations that ran to their end (answered, failed or raised).
    pub iterations: u64,
    /// Arrivals that were due and never sent.
    pub unsent: u64,
    /// Iterations that were sent and still unanswered when the run was stopped or its drain
    /// ended.
    pub cancelled: u64,
}

/// A fixed number of counts, refused with a message that says which and how many (a report
/// from an engine of another version).
fn counts<'de, D: serde::Deserializer<'de>, const N: usize>(
    d: D,
    what: &str,
) -> Result<[u64; N], D::Error> {
    let v = Vec::<u64>::deserialize(d)?;
    let n = v.len();
    v.try_into()
        .map_err(|_| serde::de::Error::custom(format!("{what}: {n} counts, expected {N}")))
}

fn errors_counts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u64; ERROR_KINDS], D::Error> {
    counts(d, "errors")
}

fn status_counts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<[u64; STATUS_CLASSES], D::Error> {
    counts(d, "status")
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        let Counters {
            requests,
            errors,
            status,
            bytes_in,
            redirects,
            missed,
            taken,
            started,
            iterations,
            unsent,
            cancelled,
        } = o;
        self.requests += requests;
        self.bytes_in += bytes_in;
        self.redirects += redirects;
        self.missed += missed;
        self.taken += taken;
        self.started += started;
        self.iterations += iterations;
        self.unsent += unsent;
        self.cancelled += cancelled;
        for (a, b) in self.errors.iter_mut().zip(errors) {
            *a += b;
        }
        for (a, b) in self.status.iter_mut().zip(status) {
            *a += b;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The share of outcomes that failed: failed requests, exceptions and cancelled
    /// iterations, over answered requests, exceptions and cancelled iterations. A request that
    /// never came back counts against the run.
    pub fn error_rate(&self) -> f64 {
        let exceptions = self.errors[ErrorKind::Exception as usize];
        let outcomes = self.requests + exceptions + self.cancelled;
        if outcomes == 0 {
            0.0
        } else {
            (self.error_total() + self.cancelled) as f64 / outcomes as f64
        }
    }

    /// Whether anything at all was counted.
    pub fn any(&self) -> bool {
        *self != Counters::default()
    }
}

/// The most distinct failure messages kept per slot: past it, a new message is counted under
/// `OTHER_MESSAGES` (a check whose message varies per request must not grow without bound).
pub const MAX_MESSAGES: usize = 100;
/// Where messages past `MAX_MESSAGES` are counted.
pub const OTHER_MESSAGES: &str = "(other messages)";
/// The longest message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_MESSAGE_LEN: usize = 300;

/// Failure messages and how often each came (a failed check's, as Python gave it).
pub type Messages = Vec<(String, u64)>;

/// Adds `n` of `message` (cut to `MAX_MESSAGE_LEN`) to `into`, within `MAX_MESSAGES`.
pub fn add_message(into: &mut Messages, message: &str, n: u64) {
    let mut end = message.len().min(MAX_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut message = &message[..end];
    if into.len() >= MAX_MESSAGES && !into.iter().any(|(m, _)| m == message) {
        message = OTHER_MESSAGES;
    }
    match into.iter_mut().find(|(m, _)| m == message) {
        Some(m) => m.1 += n,
        None => into.push((message.to_string(), n)),
    }
}

/// What one task did in one interval (or over any span, once added up).
#[derive(Clone)]
pub struct TaskData {
    pub corrected: Hist,
    pub service: Hist,
    pub counts: Counters,
    /// The messages of its failed checks (those given one), with their counts.
    pub messages: Messages,
    /// How late each iteration of an open model began after its due instant (waiting for a
    /// free connection, a late wake-up, Python's event loop): the generator's own delay,
    /// which `corrected` includes. Made on the first sample (a request name's data has none).
    pub late: Option<Hist>,
    /// Its slowest requests and a uniform sample of them, with their context (a request
    /// name's data keeps them; an entry's has none).
    pub kept: Keeper,
}

impl TaskData {
    pub fn new() -> Self {
        TaskData {
            corrected: new_hist(),
            service: new_hist(),
            counts: Counters::default(),
            messages: Vec::new(),
            late: None,
            kept: Keeper::default(),
        }
    }

    /// An iteration began `late_us` after it was due.
    pub fn began_late(&mut self, late_us: u64) {
        self.late
            .get_or_insert_with(new_hist)
            .saturating_record(late_us.clamp(LOWEST_US, HIGHEST_US));
    }

    pub fn add(&mut self, o: &TaskData) {
        self.corrected
            .add(&o.corrected)
            .expect("same bounds always add");
        self.service
            .add(&o.service)
            .expect("same bounds always add");
        self.counts.add(&o.counts);
        for (m, n) in &o.messages {
            add_message(&mut self.messages, m, *n);
        }
        if let Some(l) = &o.late {
            self.late
                .get_or_insert_with(new_hist)
                .add(l)
                .expect("same bounds always add");
        }
        self.kept.add(&o.kept);
    }

    /// Back to empty, keeping the histograms' memory.
    pub fn reset(&mut self) {
        self.corrected.reset();
        self.service.reset();
        if let Some(l) = &mut self.late {
            l.reset();
        }
        self.counts = Counters::default();
        self.messages.clear();
        self.kept.clear();
    }

    /// A failure decided after the response was recorded (a Python check): an error of
    /// `kind`, with its message.
    pub fn failed(&mut self, kind: ErrorKind, message: &str) {
        self.error(kind, true);
        if !message.is_empty() {
            add_message(&mut self.messages, message, 1);
        }
    }

    /// A request that got no answer to keep: an error of its kind, with its message if it
    /// has one (a failed redirect's).
    pub fn unanswered(&mut self, f: &crate::outcome::Failed) {
        self.error(f.kind, false);
        if let Some(m) = &f.message {
            add_message(&mut self.messages, m, 1);
        }
    }

    /// A completed response: its status and both latencies.
    pub fn response(&mut self, status: u16, bytes: u64, corrected_us: u64, service_us: u64) {
        let c = &mut self.counts;
        c.requests += 1;
        c.bytes_in += bytes;
        if (100..600).contains(&status) {
            c.status[(status / 100 - 1) as usize] += 1;
        }
        self.corrected
            .saturating_record(corrected_us.clamp(LOWEST_US, HIGHEST_US));
        self.service
            .saturating_record(service_us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// An error, counted by kind. Errors with a response are recorded by `response` too.
    pub fn error(&mut self, kind: ErrorKind, with_response: bool) {
        if !with_response {
            self.counts.requests += 1;
        }
        self.counts.errors[kind as usize] += 1;
    }

    /// A Python task raised: an error of its iteration, not a request.
    pub fn exception(&mut self) {
        self.counts.errors[ErrorKind::Exception as usize] += 1;
    }

    pub fn to_wire(&self) -> WireData {
        WireData {
            corrected: crate::measure::hlog::encode(&self.corrected),
            service: crate::measure::hlog::encode(&self.service),
            counts: self.counts,
            messages: self.messages.clone(),
            late: self
                .late
                .as_ref()
                .filter(|l| !l.is_empty())
                .map(crate::measure::hlog::encode),
            kept: (!self.kept.is_empty()).then(|| self.kept.clone()),
        }
    }

    pub fn from_wire(w: &WireData) -> Result<Self, String> {
        let mut d = TaskData::new();
        d.add_parsed(w, &w.parse()?);
        Ok(d)
    }

    /// Adds `w` (checked by `parse` into `p`): its counts go straight into this data's
    /// histograms, bucket for bucket, with no histogram of its own laid out.
    pub fn add_parsed(&mut self, w: &WireData, p: &ParsedWire) {
        for &(v, n) in &p.corrected {
            self.corrected.record_n(v, n).expect("checked by parse");
        }
        for &(v, n) in &p.service {
            self.service.record_n(v, n).expect("checked by parse");
        }
        self.counts.add(&w.counts);
        for (m, n) in &w.messages {
            add_message(&mut self.messages, m, *n);
        }
        if !p.late.is_empty() {
            let late = self.late.get_or_insert_with(new_hist);
            for &(v, n) in &p.late {
                late.record_n(v, n).expect("checked by parse");
            }
        }
        if let Some(k) = &w.kept {
            self.kept.add(k);
        }
    }
}

/// A task's data as it travels between processes (a distributed run's agents to their
/// coordinator): histograms as `.hlog` encodes them, counters as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireData {
    pub corrected: String,
    pub service: String,
    #[serde(flatten)]
    pub counts: Counters,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Messages,
    /// The iterations' lateness (`TaskData::late`), if any began in an open model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<String>,
    /// The slowest requests and the sample (`TaskData::kept`), if any were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Keeper>,
}

/// A `WireData`'s histograms decoded into their counts and checked to be in LoadPilot's own
/// layout (so they add up exactly, bucket for bucket).
pub struct ParsedWire {
    pub corrected: Vec<(u64, u64)>,
    pub service: Vec<(u64, u64)>,
    pub late: Vec<(u64, u64)>,
}

impl WireData {
    pub fn parse(&self) -> Result<ParsedWire, String> {
        let ours = |what: &str, text: &str| -> Result<Vec<(u64, u64)>, String> {
            let c =
                crate::measure::hlog::decode_counts(text).map_err(|e| format!("{what}: {e}"))?;
            if c.lowest != LOWEST_US || c.sigfig != SIGFIG {
                return Err(format!(
                    "{what}: a histogram of another layout (lowest {}, {} digits)",
                    c.lowest, c.sigfig
                ));
            }
            if c.counts.last().is_some_and(|&(v, _)| v > HIGHEST_US) {
                return Err(format!("{what}: a value beyond an hour"));
            }
            Ok(c.counts)
        };
        if let Some(k) = &self.kept {
            let most = crate::plan::MAX_KEPT;
            if k.keep > most
                || k.sample_size > most
                || k.slowest.len() > k.keep as usize
                || k.sample.len() > k.sample_size as usize
            {
                return Err(format!(
                    "kept: {} slowest of {} and {} sampled of {} (at most {most} each)",
                    k.slowest.len(),
                    k.keep,
                    k.sample.len(),
                    k.sample_size
                ));
            }
        }
        Ok(ParsedWire {
            corrected: ours("corrected", &self.corrected)?,
            service: ours("service", &self.service)?,
            late: match &self.late {
                Some(l) => ours("late", l)?,
                None => Vec::new(),
            },
        })
    }
}

/// One closed interval of a run, every task's data and what a row needs besides: what an
/// agent of a distributed run sends its coordinator, which adds them up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    /// The interval's index: second `index` of the run, or the drain when `drain`.
    pub index: u64,
    pub start_s: f64,
    pub length_s: f64,
    pub drain: bool,
    pub in_flight: i64,
    pub active_users: i64,
    /// Per entry (tasks, then hooks): the profile's rate for this slice and what it did.
    pub target_rps: Vec<Option<f64>>,
    pub tasks: Vec<WireData>,
    /// Per request name that has data in this interval: its entry, its name, what it did.
    #[serde(default)]
    pub requests: Vec<WireRequest>,
}

/// A request name's data in an interval, as it travels (names, not slots: each process
/// gives its names slots in the order it sees them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRequest {
    pub entry: usize,
    pub name: String,
    #[serde(flatten)]
    pub data: WireData,
}

impl Default for TaskData {
    fn default() -> Self {
        Self::new()
    }
}

struct Shard {
    /// Interval that `current` holds.
    interval: u64,
    current: Option<Vec<TaskData>>,
    /// Closed intervals this shard still holds, oldest first.
    older: Vec<(u64, Vec<TaskData>)>,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

/// Called on each runtime worker thread as it starts: gives it its own shard.
pub fn register_worker_thread() {
    SHARD.with(|s| s.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed)));
}

pub struct Recorder {
    /// When the run's clock started; until then everything counts into the first interval.
    start: std::sync::OnceLock<Instant>,
    n_tasks: usize,
    /// The last interval of the schedule; samples that complete after the planned end belong
    /// to the drain interval that follows it.
    last_interval: u64,
    /// The planned end, seconds after the start.
    planned_end: f64,
    shards: Vec<Mutex<Shard>>,
    /// Emptied interval sets, reused so a long run allocates no histogram per second.
    spare: Mutex<Vec<Vec<TaskData>>>,
    pub in_flight: AtomicI64,
    pub active_users: AtomicI64,
    /// How many of the slowest requests, and how many sampled, each request name keeps per
    /// interval (0 and 0: none).
    keep: (u32, u32),
}

impl Recorder {
    /// A recorder for a run of `duration` seconds: intervals `0..ceil(duration)` of the
    /// schedule, then one drain interval for what completes after the planned end.
    pub fn new(n_tasks: usize, duration: f64, threads: usize) -> Self {
        let last_interval = (duration.ceil().max(1.0) as u64) - 1;
        let shards = (0..threads + 1)
            .map(|_| {
                Mutex::new(Shard {
                    interval: 0,
                    current: None,
                    older: Vec::new(),
                })
            })
            .collect();
        Recorder {
            start: std::sync::OnceLock::new(),
            n_tasks,
            last_interval,
            planned_end: duration,
            shards,
            spare: Mutex::new(Vec::new()),
            in_flight: AtomicI64::new(0),
            active_users: AtomicI64::new(0),
            keep: (0, 0),
        }
    }

    /// Each request name keeps its `slowest` requests and a sample of `sample` per interval.
    pub fn keeping(mut self, slowest: u32, sample: u32) -> Self {
        self.keep = (slowest, sample);
        self
    }

    /// Seconds from the run's start to `at` (0 before it started).
    pub fn since_start(&self, at: Instant) -> f64 {
        self.start
            .get()
            .map_or(0.0, |s| at.saturating_duration_since(*s).as_secs_f64())
    }

    /// How many entries (tasks and hooks) it counts.
    pub fn entries(&self) -> usize {
        self.n_tasks
    }

    /// The run's clock starts now (once).
    pub fn begin(&self, start: Instant) {
        let _ = self.start.set(start);
    }

    fn shard(&self) -> &Mutex<Shard> {
        let n = self.shards.len();
        let ix = SHARD.with(|s| s.get());
        // Threads that are not runtime workers share the last shard.
        let i = if ix == usize::MAX {
            n - 1
        } else {
            ix % (n - 1).max(1)
        };
        &self.shards[i]
    }

    /// The interval of the schedule in which `at` falls, or the drain interval
    /// (`last_interval + 1`) from the planned end on.
    pub fn interval_of(&self, at: Instant) -> u64 {
        let Some(start) = self.start.get() else {
            return 0;
        };
        let t = at.saturating_duration_since(*start);
        if t.as_secs_f64() >= self.planned_end {
            self.last_interval + 1
        } else {
            t.as_secs().min(self.last_interval)
        }
    }

    /// Records into slot `task`'s data of the interval in which `at` falls.
    pub fn record(&self, task: usize, at: Instant, f: impl FnOnce(&mut TaskData)) {
        self.record_in(at, |slots| f(at_slot(slots, task)));
    }

    /// Records the same into two slots (a request's entry and its name's) at once.
    pub fn record_both(
        &self,
        entry: usize,
        request: usize,
        at: Instant,
        f: impl Fn(&mut TaskData),
    ) {
        self.record_in(at, |slots| {
            f(at_slot(slots, entry));
            f(at_slot(slots, request));
        });
    }

    /// Records one request into its entry's and its name's data (as `record_both`), and
    /// keeps it among its name's slowest or in its sample if it belongs there: `make` gathers
    /// its context, given its random key, only then.
    pub fn record_request(
        &self,
        entry: usize,
        request: usize,
        at: Instant,
        f: impl Fn(&mut TaskData),
        latency_us: u64,
        make: impl FnOnce(u64) -> Kept,
    ) {
        let (slowest, sample) = self.keep;
        self.record_in(at, |slots| {
            f(at_slot(slots, entry));
            let d = at_slot(slots, request);
            f(d);
            if slowest + sample > 0 {
                d.kept.keep = slowest;
                d.kept.sample_size = sample;
                let key = crate::measure::kept::draw();
                if d.kept.wants(latency_us, key) {
                    d.kept.offer(make(key));
                }
            }
        });
    }

    fn record_in(&self, at: Instant, f: impl FnOnce(&mut Vec<TaskData>)) {
        let interval = self.interval_of(at);
        let mut s = self.shard().lock().unwrap_or_else(|e| e.into_inner());
        if interval > s.interval {
            if let Some(cur) = s.current.take() {
                let i = s.interval;
                s.older.push((i, cur));
            }
            s.interval = interval;
        }
        // A sample for an interval this shard already moved past (a thread descheduled across
        // a boundary) joins the current one: late by a moment, never lost.
        let cur = s.current.get_or_insert_with(|| self.fresh());
        f(cur);
    }

    /// An empty set of per-task data: a recycled one when there is one (once per interval
    /// per thread, so this lock is not on the per-request path).
    fn fresh(&self) -> Vec<TaskData> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| (0..self.n_tasks).map(|_| TaskData::new()).collect())
    }

    /// Hands back a set taken with `take`, once its data has been used.
    pub fn recycle(&self, mut data: Vec<TaskData>) {
        data.iter_mut().for_each(TaskData::reset);
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        // A few sets cover every shard and the closer; more would be memory kept for nothing.
        if spare.len() < self.shards.len() + 2 {
            spare.push(data);
        }
    }

    /// Takes every sample of intervals up to and including `upto`, added up per slot (the
    /// entries, then as many request slots as were recorded into: pad to the names known).
    /// With `everything`, also takes what is still open (the run has ended).
    /// Hand the result back with `recycle` once it has been used.
    pub fn take(&self, upto: u64, everything: bool) -> Vec<TaskData> {
        let mut out = self.fresh();
        let mut used = Vec::new();
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut s.older)
                .into_iter()
                .partition(|(i, _)| *i <= upto || everything);
            s.older = keep;
            used.extend(due.into_iter().map(|(_, data)| data));
            if s.interval <= upto || everything {
                used.extend(s.current.take());
            }
        }
        // Adding up happens outside the shard locks, so recording threads never wait on it.
        for data in used {
            if out.len() < data.len() {
                out.resize_with(data.len(), TaskData::new);
            }
            for (o, d) in out.iter_mut().zip(&data) {
                o.add(d);
            }
            self.recycle(data);
        }
        out
    }
}

/// Slot `i` of an interval's data, added on first use (request names come as they are seen).
pub(crate) fn at_slot(slots: &mut Vec<TaskData>, i: usize) -> &mut TaskData {
    if slots.len() <= i {
        slots.resize_with(i + 1, TaskData::new);
    }
    &mut slots[i]
}

/// Latency figures in milliseconds; `None` where there were no samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub min: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Percentiles {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.max.is_none()
    }

    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        // Java HdrHistogram's rule, the one `.hgrm` rows and Python's `percentile` use; all
        // five in one pass over the histogram.
        let [p50, p90, p95, p99, p999] =
            crate::measure::hlog::values_at_percentiles(h, [50.0, 90.0, 95.0, 99.0, 99.9])
                .map(|v| Some(ms(v)));
        Percentiles {
            p50,
            p90,
            p95,
            p99,
            p999,
            max: Some(ms(h.max())),
            mean: Some(h.mean() / 1000.0),
            min: Some(ms(h.min())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_give_exact_percentiles_of_the_union() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=900u64 {
            a.record(v * 10).unwrap();
        }
        for v in 901..=1000u64 {
            b.record(v * 10).unwrap();
        }
        let mut all = new_hist();
        for v in 1..=1000u64 {
            all.record(v * 10).unwrap();
        }
        let mut merged = a.clone();
        merged.add(&b).unwrap();
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
        assert_eq!(merged.len(), 1000);
    }

    #[test]
    fn encoding_round_trips() {
        let mut h = new_hist();
        for v in [1u64, 50, 1234, 99_999, 3_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_hist(&crate::measure::hlog::encode(&h)).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn lateness_adds_up_and_travels_only_where_iterations_began() {
        let mut a = TaskData::new();
        for us in [0u64, 200, 5_000] {
            a.began_late(us);
        }
        let mut b = TaskData::new();
        b.began_late(40_000);
        let mut sum = a.clone();
        sum.add(&b);
        let late = sum.late.as_ref().unwrap();
        assert_eq!((late.len(), late.max()), (4, new_hist_with(40_000).max()));
        assert_eq!(late.min(), 1, "on time counts as the lowest value");
        let back = TaskData::from_wire(&sum.to_wire()).unwrap();
        assert_eq!(
            back.late, sum.late,
            "a slice's lateness reaches the merge exactly"
        );
        // A request name's data (no iteration begins there) carries none, and reads back so.
        let named = TaskData::new();
        assert!(named.to_wire().late.is_none());
        assert!(TaskData::from_wire(&named.to_wire())
            .unwrap()
            .late
            .is_none());
        let text = serde_json::to_string(&named.to_wire()).unwrap();
        assert!(!text.contains("late"), "{text}");
    }

    #[test]
    fn recorder_keeps_intervals_apart_and_samples_after_the_end_join_the_drain() {
        let start = Instant::now();
        let rec = Recorder::new(2, 2.5, 1);
        rec.begin(start);
        let at = |s: f64| start + std::time::Duration::from_secs_f64(s);
        rec.record(0, at(0.5), |d| d.response(200, 10, 1000, 900));
        rec.record(1, at(0.7), |d| d.error(ErrorKind::Connect, false));
        rec.record(0, at(1.2), |d| d.response(200, 10, 2000, 900));
        rec.record(0, at(2.2), |d| d.response(200, 10, 3000, 900));
        rec.record(0, at(7.0), |d| d.response(500, 10, 3000, 900));
        assert_eq!(rec.interval_of(at(2.49)), 2);
        assert_eq!(rec.interval_of(at(2.5)), 3);
        let first = rec.take(0, false);
        assert_eq!(first[0].counts.requests, 1);
        assert_eq!(first[1].counts.errors[ErrorKind::Connect as usize], 1);
        let second = rec.take(1, false);
        assert_eq!(second[0].corrected.max(), new_hist_with(2000).max());
        let last = rec.take(2, false);
        assert_eq!((last[0].counts.status[1], last[0].counts.status[4]), (1, 0));
        let drain = rec.take(3, false); // the drain follows the schedule's 3 intervals
        assert_eq!(
            drain[0].counts.status[4], 1,
            "what completes after the planned end lands in the drain interval"
        );
    }

    #[test]
    fn failure_messages_are_bounded_cut_and_travel_with_their_counts() {
        let mut d = TaskData::new();
        d.failed(ErrorKind::Check, "no total");
        d.failed(ErrorKind::Check, "no total");
        let long = "é".repeat(MAX_MESSAGE_LEN); // two bytes each: cut at a boundary
        d.failed(ErrorKind::Check, &long);
        d.failed(ErrorKind::Check, &long);
        assert_eq!(d.messages[0], ("no total".to_string(), 2));
        assert_eq!(d.messages[1].0.len(), MAX_MESSAGE_LEN);
        assert_eq!(d.messages[1].1, 2, "a long message cut alike each time");
        for i in 0..MAX_MESSAGES + 5 {
            d.failed(ErrorKind::Check, &format!("id {i}"));
        }
        assert_eq!(d.messages.len(), MAX_MESSAGES + 1);
        let other = d
            .messages
            .iter()
            .find(|(m, _)| m == OTHER_MESSAGES)
            .unwrap();
        assert_eq!(other.1, 7);
        assert_eq!(
            d.counts.errors[ErrorKind::Check as usize],
            4 + MAX_MESSAGES as u64 + 5
        );
        let back = TaskData::from_wire(&d.to_wire()).unwrap();
        assert_eq!(back.messages, d.messages);
        let mut sum = TaskData::new();
        sum.add(&back);
        sum.add(&d);
        assert_eq!(sum.messages[0], ("no total".to_string(), 4));
    }

    #[test]
    fn kept_requests_travel_and_a_report_keeping_more_than_it_may_is_refused() {
        let mut d = TaskData::new();
        d.kept.keep = 2;
        d.kept
            .offer(crate::measure::kept::tests_support::kept(9_000, 3));
        let wire = d.to_wire();
        assert_eq!(TaskData::from_wire(&wire).unwrap().kept, d.kept);
        let mut hostile = wire.clone();
        let k = hostile.kept.as_mut().unwrap();
        k.keep = crate::plan::MAX_KEPT + 1;
        assert!(hostile.parse().err().unwrap().starts_with("kept: "));
        let mut lying = wire;
        let k = lying.kept.as_mut().unwrap();
        k.slowest = vec![k.slowest[0].clone(); 3];
        assert!(lying.parse().is_err(), "three slowest of two");
    }

    fn new_hist_with(v: u64) -> Hist {
        let mut h = new_hist();
        h.record(v).unwrap();
        h
    }
}

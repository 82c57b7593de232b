//! The run directory, written while the run goes (format documented in docs/run-directory.md).
//!
//! Every closed interval is appended and flushed before the next one starts, so a run that is
//! killed keeps every finished interval: `latency.hlog`, `service.hlog` and `metrics.jsonl`
//! grow line by line; `summary.json` is written once at the end.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::measure::hlog::LogWriter;
use crate::measure::kept::{Keeper, Kept};
use crate::measure::metrics::{add_message, at_slot, decode_hist, Hist, TaskData};
use crate::measure::names::{request_tag, split_tag, Names};
use crate::measure::rows::{Row, Span};
use crate::measure::summary::{Ended, Head, Summary, Totals};
use crate::plan::profile::Profile;
use crate::plan::{Load, Plan};

/// The plan the run ran.
pub const PLAN: &str = "plan.json";
/// Corrected latency: one histogram per task per interval, tagged with the task.
pub const LATENCY_LOG: &str = "latency.hlog";
/// Service time, as `LATENCY_LOG`.
pub const SERVICE_LOG: &str = "service.hlog";
/// Corrected latency per request name: one histogram per name per interval it has any,
/// tagged `task|name` (`names::request_tag`). Apart from `LATENCY_LOG`, whose histograms
/// add up to the run's whatever reads them.
pub const REQUESTS_LATENCY_LOG: &str = "requests-latency.hlog";
/// Service time per request name, as `REQUESTS_LATENCY_LOG`.
pub const REQUESTS_SERVICE_LOG: &str = "requests-service.hlog";
/// The rows, one line per task per interval, appended as intervals close.
pub const METRICS_JSONL: &str = "metrics.jsonl";
/// The rows as one file, written (by Python) once the run has ended.
pub const METRICS_PARQUET: &str = "metrics.parquet";
/// Whole-run figures, written once at the end.
pub const SUMMARY: &str = "summary.json";
/// A distributed run's per-agent corrected latency: one histogram per agent slice, task and
/// interval, tagged `slice:task`.
pub const AGENTS_LOG: &str = "agents.hlog";
/// A distributed run's events (agents found, lost, taken over; bad reports), one JSON per line.
pub const EVENTS: &str = "events.jsonl";
/// A distributed run's agents: their rows (`agents.jsonl`), and their state at the end.
pub const AGENTS_JSONL: &str = "agents.jsonl";
pub const AGENTS_PARQUET: &str = "agents.parquet";

/// The failure messages of each interval, one JSON per line (`elapsed_s`, `task`, `request`,
/// `message`, `count`): what a run cut short rebuilds its failures table from.
pub const FAILURES_JSONL: &str = "failures.jsonl";

/// One line of `failures.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureLine {
    pub elapsed_s: f64,
    pub task: String,
    pub request: String,
    pub message: String,
    pub count: u64,
}

/// Each request name's slowest requests and its sample, per interval, with their context: one
/// JSON per line (`SlowLine`), appended as intervals close, written only when any are kept.
pub const SLOW_JSONL: &str = "slow.jsonl";
/// The same as one file, written (by Python) once the run has ended.
pub const SLOW_PARQUET: &str = "slow.parquet";

/// One line of `slow.jsonl`: a kept request (`Kept`), its times as Unix seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlowLine {
    pub task: String,
    pub request: String,
    /// `slowest` (among its name's slowest of its second) or `sample`.
    pub kind: String,
    /// When it ended, seconds after the run's start (the interval it counts in).
    pub elapsed_s: f64,
    pub latency_ms: f64,
    pub service_ms: Option<f64>,
    pub due: f64,
    pub sent: Option<f64>,
    pub end: f64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub url: String,
    pub user: u64,
    pub iteration: u64,
    pub row: Option<Vec<String>>,
    pub connection: Option<u64>,
    pub new_connection: bool,
    /// Milliseconds spent opening the connection, when it was opened for this request.
    pub connect_ms: Option<f64>,
    pub trace_id: Option<String>,
    pub agent: Option<String>,
}

impl SlowLine {
    fn of(task: &str, request: &str, kind: &str, k: &Kept, epoch0: f64) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        SlowLine {
            task: task.to_string(),
            request: request.to_string(),
            kind: kind.to_string(),
            elapsed_s: k.end_s,
            latency_ms: ms(k.latency_us),
            service_ms: k.service_us.map(ms),
            due: epoch0 + k.due_s,
            sent: k.sent_s.map(|s| epoch0 + s),
            end: epoch0 + k.end_s,
            status: k.status,
            error: k.error.clone(),
            url: k.url.clone(),
            user: k.user,
            iteration: k.iteration,
            row: k.row.clone(),
            connection: k.connection,
            new_connection: k.new_connection,
            connect_ms: k.connect_us.map(ms),
            trace_id: k.trace_id.clone(),
            agent: k.agent.clone(),
        }
    }
}

/// Every file of a run directory, by what it holds: what Python reads its names from.
pub const FILES: &[(&str, &str)] = &[
    ("plan", PLAN),
    ("latency_log", LATENCY_LOG),
    ("service_log", SERVICE_LOG),
    ("requests_latency_log", REQUESTS_LATENCY_LOG),
    ("requests_service_log", REQUESTS_SERVICE_LOG),
    ("metrics_jsonl", METRICS_JSONL),
    ("metrics_parquet", METRICS_PARQUET),
    ("failures_jsonl", FAILURES_JSONL),
    ("slow_jsonl", SLOW_JSONL),
    ("slow_parquet", SLOW_PARQUET),
    ("summary", SUMMARY),
    ("agents_log", AGENTS_LOG),
    ("events", EVENTS),
    ("agents_jsonl", AGENTS_JSONL),
    ("agents_parquet", AGENTS_PARQUET),
];

pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct RunWriter {
    dir: PathBuf,
    latency: LogWriter,
    service: LogWriter,
    requests_latency: LogWriter,
    requests_service: LogWriter,
    metrics: BufWriter<File>,
    /// `failures.jsonl`, opened with the first failure.
    failures: Option<BufWriter<File>>,
    /// `slow.jsonl`, opened with the first kept request.
    slow: Option<BufWriter<File>>,
    /// The run's start, Unix seconds (from `begin`).
    epoch0: f64,
}

impl RunWriter {
    /// Creates `dir` (which must not hold a run already) and writes `plan.json`; `begin`
    /// writes the logs' headers once the run's clock starts.
    pub fn create(dir: &Path, plan_json: &str) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if dir.join(METRICS_JSONL).exists() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already holds a run; choose another directory",
                ),
            ));
        }
        let plan_path = dir.join(PLAN);
        fs::write(&plan_path, plan_json).map_err(|e| Error::io(&plan_path, e))?;
        let mpath = dir.join(METRICS_JSONL);
        let metrics = BufWriter::new(File::create(&mpath).map_err(|e| Error::io(&mpath, e))?);
        Ok(RunWriter {
            dir: dir.to_path_buf(),
            latency: LogWriter::create(dir.join(LATENCY_LOG), "corrected latency")?,
            service: LogWriter::create(dir.join(SERVICE_LOG), "service time")?,
            requests_latency: LogWriter::create(
                dir.join(REQUESTS_LATENCY_LOG),
                "corrected latency per request name",
            )?,
            requests_service: LogWriter::create(
                dir.join(REQUESTS_SERVICE_LOG),
                "service time per request name",
            )?,
            metrics,
            failures: None,
            slow: None,
            epoch0: 0.0,
        })
    }

    /// The run's clock started at `start`: the logs' headers.
    pub fn begin(&mut self, start: SystemTime) -> Result<()> {
        self.epoch0 = epoch_seconds(start);
        self.latency.begin(start)?;
        self.service.begin(start)?;
        self.requests_latency.begin(start)?;
        self.requests_service.begin(start)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one closed interval and flushes it to disk: per slot of `data`, the entries
    /// (`names`) and then the request names (`requests`: entry, name), and the rows. A
    /// request name's histograms are written for the intervals it has any.
    pub fn interval(
        &mut self,
        names: &[String],
        requests: &[(usize, String)],
        start_s: f64,
        length_s: f64,
        data: &[TaskData],
        rows: &[Row],
    ) -> Result<()> {
        for (name, d) in names.iter().zip(data) {
            self.latency.write(name, start_s, length_s, &d.corrected)?;
            self.service.write(name, start_s, length_s, &d.service)?;
        }
        let past = data.get(names.len()..).unwrap_or_default();
        for ((entry, name), d) in requests.iter().zip(past) {
            for (message, count) in &d.messages {
                self.failure(&FailureLine {
                    elapsed_s: start_s,
                    task: names[*entry].clone(),
                    request: name.clone(),
                    message: message.clone(),
                    count: *count,
                })?;
            }
            self.kept(&names[*entry], name, &d.kept)?;
            if d.corrected.is_empty() && d.service.is_empty() {
                continue;
            }
            let tag = request_tag(&names[*entry], name);
            self.requests_latency
                .write(&tag, start_s, length_s, &d.corrected)?;
            self.requests_service
                .write(&tag, start_s, length_s, &d.service)?;
        }
        let mpath = self.dir.join(METRICS_JSONL);
        for r in rows {
            // Serialized first, so a failing write (a full disk) is an error, never a panic.
            let mut line = serde_json::to_vec(r).expect("rows serialize");
            line.push(b'\n');
            self.metrics
                .write_all(&line)
                .map_err(|e| Error::io(&mpath, e))?;
        }
        self.latency.flush()?;
        self.service.flush()?;
        self.requests_latency.flush()?;
        self.requests_service.flush()?;
        if let Some(f) = &mut self.failures {
            f.flush()
                .map_err(|e| Error::io(self.dir.join(FAILURES_JSONL), e))?;
        }
        if let Some(f) = &mut self.slow {
            f.flush()
                .map_err(|e| Error::io(self.dir.join(SLOW_JSONL), e))?;
        }
        self.metrics.flush().map_err(|e| Error::io(&mpath, e))
    }

    /// Appends a failure line, creating the file with the first one (a run without failures
    /// has none).
    fn failure(&mut self, line: &FailureLine) -> Result<()> {
        let path = self.dir.join(FAILURES_JSONL);
        if self.failures.is_none() {
            let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.failures = Some(BufWriter::new(f));
        }
        let mut text = serde_json::to_vec(line).expect("failure lines serialize");
        text.push(b'\n');
        let out = self.failures.as_mut().expect("just opened");
        out.write_all(&text).map_err(|e| Error::io(&path, e))
    }

    /// Appends a request name's kept requests (slowest first, then the sample), creating the
    /// file with the first.
    fn kept(&mut self, task: &str, request: &str, kept: &Keeper) -> Result<()> {
        if kept.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(SLOW_JSONL);
        if self.slow.is_none() {
            let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.slow = Some(BufWriter::new(f));
        }
        let out = self.slow.as_mut().expect("just opened");
        let slowest = kept.sorted_slowest().into_iter().map(|k| ("slowest", k));
        for (kind, k) in slowest.chain(kept.sample.iter().map(|k| ("sample", k))) {
            let line = SlowLine::of(task, request, kind, k, self.epoch0);
            let mut text = serde_json::to_vec(&line).expect("slow lines serialize");
            text.push(b'\n');
            out.write_all(&text).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    pub fn summary(&mut self, s: &Summary) -> Result<()> {
        let p = self.dir.join(SUMMARY);
        let text = serde_json::to_string_pretty(s).expect("summaries serialize");
        write_atomic(&p, text.as_bytes())
    }
}

/// Writes `path` whole or not at all: a temporary file beside it, synced, then renamed over
/// it. A full disk leaves no half-written file that later reads as complete.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The rows a run wrote to `metrics.jsonl`: a torn last line (the writer killed mid-write) is
/// skipped; any other line that is not a row is an error naming it.
pub fn read_rows(dir: &Path) -> Result<Vec<Row>> {
    let path = dir.join(METRICS_JSONL);
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let lines: Vec<&str> = text.lines().collect();
    let torn_ok = if text.ends_with('\n') { 0 } else { lines.len() };
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(line) {
            Ok(r) => rows.push(r),
            Err(_) if i + 1 == torn_ok => {}
            Err(e) => {
                return Err(Error::Format {
                    path,
                    message: format!("line {}: not a row: {e}", i + 1),
                })
            }
        }
    }
    Ok(rows)
}

/// The summary of a run cut short (killed before it wrote `summary.json`), rebuilt from what
/// it wrote as it went: counts from its rows, percentiles from its interval logs' histograms,
/// by the rule every summary is built by. It `ended` as `interrupted`; what the rows do not
/// carry (iterations, the arrivals that were due) is unknown.
pub fn summarize_dir(dir: &Path) -> Result<Summary> {
    let plan_path = dir.join(PLAN);
    let text = fs::read_to_string(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
    let plan = Plan::from_json(&text).map_err(|e| Error::Format {
        path: plan_path.clone(),
        message: e.to_string(),
    })?;
    let (model, stages) = match &plan.load {
        Load::Open { stages, .. } => ("open", stages),
        Load::Closed { stages, .. } => ("closed", stages),
    };
    let planned = Profile::new(stages)?.duration();
    let names = plan.entry_names();
    let runs_on = plan
        .tasks
        .iter()
        .map(|t| t.path.name().to_string())
        .collect();
    // Slots as the run gave them: its entries, then its request names as first met.
    let slots = Names::new(names.clone(), plan.max_request_names as usize);
    let slot = |task: &str, request: Option<&str>| {
        let i = names.iter().position(|n| n == task)?;
        Some(request.map_or(i, |r| slots.slot(i, r)))
    };
    let mut data: Vec<TaskData> = Vec::new();
    let rows = read_rows(dir)?;
    // Each interval counts once towards the sending time (or the drain's, after the planned
    // end), whatever the number of entries with a row in it.
    let mut spans = std::collections::BTreeMap::new();
    for row in &rows {
        if let Some(s) = slot(&row.task, row.request.as_deref()) {
            at_slot(&mut data, s).counts.add(&Span::counters_of(row));
        }
        spans.insert(row.elapsed_s.to_bits(), (row.elapsed_s, row.interval_s));
    }
    let logs = [
        (LATENCY_LOG, false),
        (SERVICE_LOG, true),
        (REQUESTS_LATENCY_LOG, false),
        (REQUESTS_SERVICE_LOG, true),
    ];
    for (log, service) in logs {
        let path = dir.join(log);
        if !path.exists() {
            continue;
        }
        for e in read_hlog(&path)? {
            let Some((task, request)) = e.tag.as_deref().map(split_tag) else {
                continue;
            };
            let Some(s) = slot(&task, request.as_deref()) else {
                continue;
            };
            let d = at_slot(&mut data, s);
            let h = if service {
                &mut d.service
            } else {
                &mut d.corrected
            };
            h.add(&e.hist).map_err(|e| Error::Format {
                path: path.clone(),
                message: format!("{e:?}"),
            })?;
        }
    }
    let failures = dir.join(FAILURES_JSONL);
    if failures.exists() {
        let text = fs::read_to_string(&failures).map_err(|e| Error::io(&failures, e))?;
        for (i, line) in text.lines().enumerate() {
            match serde_json::from_str::<FailureLine>(line) {
                Ok(f) => {
                    if let Some(s) = slot(&f.task, Some(&f.request)) {
                        add_message(&mut at_slot(&mut data, s).messages, &f.message, f.count);
                    }
                }
                // A torn last line (the writer was killed mid-write) is left out.
                Err(_) if i + 1 == text.lines().count() && !text.ends_with('\n') => {}
                Err(e) => {
                    return Err(Error::Format {
                        path: failures.clone(),
                        message: format!("line {}: {e}", i + 1),
                    })
                }
            }
        }
    }
    let mut totals = Totals::new(names.clone(), runs_on);
    totals.add(&data, &slots.requests());
    let (mut duration_s, mut drain_s) = (0.0, 0.0);
    for (start, length) in spans.values() {
        if *start < planned {
            duration_s += length;
        } else {
            drain_s += length;
        }
    }
    let started_at = rows.iter().map(|r| r.time).reduce(f64::min).unwrap_or(0.0);
    let head = Head {
        name: &plan.name,
        started_at,
        duration_s,
        drain_s,
        planned_duration_s: planned,
        ended: Ended::Interrupted,
        model,
    };
    let mut s = totals.summary(head, None);
    s.overall.iterations = None;
    for t in &mut s.tasks {
        t.stats.iterations = None;
    }
    Ok(s)
}

/// One histogram line of an `.hlog`.
pub struct LogEntry {
    pub tag: Option<String>,
    pub start_s: f64,
    pub length_s: f64,
    pub hist: Hist,
}

/// Reads one of LoadPilot's interval logs (any other log: `hlog::read_log`). A torn last line
/// (no newline after it: the writer was killed mid-write) is skipped; any other bad line is an
/// error naming the line.
pub fn read_hlog(path: &Path) -> Result<Vec<LogEntry>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<&str> = text.lines().collect();
    // Only a last line without its newline can be torn (the writer killed mid-write).
    let torn_ok = if text.ends_with('\n') { 0 } else { lines.len() };
    parse_hlog_lines(path, &lines, torn_ok)
}

/// Follows an interval log as it grows: the entries of the complete lines from byte `offset`
/// on, and the offset to call again with. A line not yet ended by a newline is left for the
/// next call.
pub fn read_hlog_from(path: &Path, offset: u64) -> Result<(Vec<LogEntry>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let lines: Vec<&str> = text.lines().collect();
    let entries = parse_hlog_lines(path, &lines, 0)?;
    Ok((entries, offset + complete as u64))
}

/// Parses `.hlog` lines; line number `torn` (1-based) may be torn and is then skipped (0: no
/// line may be). Errors name the line.
fn parse_hlog_lines(path: &Path, lines: &[&str], torn: usize) -> Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('"') {
            continue;
        }
        let (tag, rest) = match line.strip_prefix("Tag=") {
            Some(r) => match r.split_once(',') {
                Some((t, rest)) => (Some(t.to_string()), rest),
                None => (None, ""),
            },
            None => (None, line),
        };
        let parsed = (|| {
            let mut f = rest.splitn(4, ',');
            let start_s: f64 = f.next()?.parse().ok()?;
            let length_s: f64 = f.next()?.parse().ok()?;
            let _max = f.next()?;
            let hist = decode_hist(f.next()?).ok()?;
            Some(LogEntry {
                tag: tag.clone(),
                start_s,
                length_s,
                hist,
            })
        })();
        match parsed {
            Some(e) => out.push(e),
            None if i + 1 == torn => {} // torn last line
            None => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    message: format!("line {}: not an interval histogram", i + 1),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::hlog::encode;
    use crate::measure::metrics::new_hist;

    fn line(tag: &str, start: f64, us: u64) -> String {
        let mut h = new_hist();
        h.record(us).unwrap();
        format!(
            "Tag={tag},{start:.3},1.000,{:.3},{}\n",
            us as f64 / 1000.0,
            encode(&h)
        )
    }

    #[test]
    fn a_growing_log_is_followed_line_by_complete_line() {
        let path = std::env::temp_dir().join(format!("lp-follow-{}.hlog", std::process::id()));
        let third = line("a", 2.0, 3000);
        let (head, tail) = third.split_at(20);
        let text = format!(
            "#[a header]\n{}{}{head}",
            line("a", 0.0, 1000),
            line("b", 1.0, 2000)
        );
        fs::write(&path, &text).unwrap();

        // The whole-file reader skips the torn last line; the follower leaves it for later.
        assert_eq!(read_hlog(&path).unwrap().len(), 2);
        let (first, offset) = read_hlog_from(&path, 0).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(offset as usize, text.len() - head.len());

        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(tail.as_bytes())
            .unwrap();
        let (next, end) = read_hlog_from(&path, offset).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].tag.as_deref(), next[0].start_s), (Some("a"), 2.0));
        assert_eq!(end as usize, text.len() + tail.len());
        assert!(read_hlog_from(&path, end).unwrap().0.is_empty());
        fs::remove_file(&path).unwrap();
    }
}

//! The run directory, written while the run goes (format documented in docs/run-directory.md).
//!
//! Every closed interval is appended and flushed before the next one starts, so a run that is
//! killed keeps every finished interval: `latency.hlog`, `service.hlog` and `metrics.jsonl`
//! grow line by line; `summary.json` is written once at the end.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::{decode_hist, encode_hist, Hist, Percentiles, Row, TaskData};

pub const PLAN: &str = "plan.json";
pub const LATENCY_LOG: &str = "latency.hlog";
pub const SERVICE_LOG: &str = "service.hlog";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const SUMMARY: &str = "summary.json";
/// A distributed run's per-agent corrected latency: one histogram per agent slice, task and
/// interval, tagged `slice:task`.
pub const AGENTS_LOG: &str = "agents.hlog";

pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) struct Hlog {
    path: PathBuf,
    what: &'static str,
    out: BufWriter<File>,
}

impl Hlog {
    pub(crate) fn create(path: PathBuf, what: &'static str) -> Result<Self> {
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Hlog {
            path,
            what,
            out: BufWriter::new(f),
        })
    }

    /// Writes the header, with the instant the run's clock started.
    pub(crate) fn begin(&mut self, start: SystemTime) -> Result<()> {
        let start_s = epoch_seconds(start);
        let what = self.what;
        write!(
            self.out,
            "#[LoadPilot {what}, microseconds; one histogram per task per interval, tagged with the task]\n\
             #[Histogram log format version 1.3]\n\
             #[StartTime: {start_s:.3} (seconds since epoch)]\n\
             #[BaseTime: {start_s:.3} (seconds since epoch)]\n\
             #[MaxValueDivisor: 1000.000]\n\
             \"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    pub(crate) fn write(&mut self, tag: &str, start_s: f64, length_s: f64, h: &Hist) -> Result<()> {
        writeln!(
            self.out,
            "Tag={tag},{start_s:.3},{length_s:.3},{:.3},{}",
            h.max() as f64 / 1000.0,
            encode_hist(h)
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    /// As `write`, for a histogram already encoded (`encoded`, whose largest value is `max`).
    pub(crate) fn write_encoded(
        &mut self,
        tag: &str,
        start_s: f64,
        length_s: f64,
        max: u64,
        encoded: &str,
    ) -> Result<()> {
        writeln!(
            self.out,
            "Tag={tag},{start_s:.3},{length_s:.3},{:.3},{encoded}",
            max as f64 / 1000.0,
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

pub struct RunWriter {
    dir: PathBuf,
    latency: Hlog,
    service: Hlog,
    metrics: BufWriter<File>,
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
            latency: Hlog::create(dir.join(LATENCY_LOG), "corrected latency")?,
            service: Hlog::create(dir.join(SERVICE_LOG), "service time")?,
            metrics,
        })
    }

    /// The run's clock started at `start`: the logs' headers.
    pub fn begin(&mut self, start: SystemTime) -> Result<()> {
        self.latency.begin(start)?;
        self.service.begin(start)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one closed interval and flushes it to disk.
    pub fn interval(
        &mut self,
        names: &[String],
        start_s: f64,
        length_s: f64,
        data: &[TaskData],
        rows: &[Row],
    ) -> Result<()> {
        for (name, d) in names.iter().zip(data) {
            self.latency.write(name, start_s, length_s, &d.corrected)?;
            self.service.write(name, start_s, length_s, &d.service)?;
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
        self.metrics.flush().map_err(|e| Error::io(&mpath, e))
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

/// Whole-run figures of one task or of all tasks together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Failed requests, exceptions and cancelled iterations over all outcomes: a request that
    /// never came back counts against the run.
    pub error_rate: f64,
    pub missed: u64,
    /// Iterations that ran to their end (for tasks of one request: `requests`).
    pub iterations: u64,
    /// Iterations sent and still unanswered when the run was stopped or its drain ended.
    pub cancelled: u64,
    /// Arrivals that were due and never sent.
    pub unsent: u64,
    pub bytes_in: u64,
    /// Requests over the time they were being sent (`duration_s`).
    pub achieved_rps: f64,
    /// From the instant each request was due (coordinated-omission corrected).
    pub latency_ms: Percentiles,
    /// From the instant each request was sent.
    pub service_ms: Percentiles,
}

impl Stats {
    pub fn of(d: &TaskData, duration_s: f64) -> Self {
        let errors_by_kind = crate::http::ErrorKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), d.errors[*k as usize]))
            .collect();
        Stats {
            requests: d.requests,
            errors: d.error_total(),
            errors_by_kind,
            error_rate: d.error_rate(),
            missed: d.missed,
            iterations: d.iterations,
            cancelled: d.cancelled,
            unsent: d.unsent,
            bytes_in: d.bytes_in,
            achieved_rps: if duration_s > 0.0 {
                d.requests as f64 / duration_s
            } else {
                0.0
            },
            latency_ms: Percentiles::of(&d.corrected),
            service_ms: Percentiles::of(&d.service),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub name: String,
    /// `engine`: the whole iteration runs inside the engine.
    pub path: String,
    /// Arrivals of this task that were due (open model).
    pub target_requests: Option<f64>,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    /// How long requests were being sent: the planned duration, or up to the stop.
    pub duration_s: f64,
    /// How long the run waited after the planned end for requests still in flight.
    pub drain_s: f64,
    pub planned_duration_s: f64,
    /// Why the run ended: `completed`, `stopped` (stop() or a signal), `aborted` (a threshold
    /// failed during the run), `drain_timeout` (requests were still in flight when the drain
    /// ended: they are counted as cancelled), `exhausted` (a unique feeder ran out) or `failed` (the
    /// run directory could not be written).
    pub ended: String,
    pub model: String,
    /// Arrivals that were due (open model): for every task,
    /// `target_requests == iterations + cancelled + unsent`.
    pub target_requests: Option<f64>,
    pub overall: Stats,
    pub tasks: Vec<TaskSummary>,
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
    use crate::metrics::new_hist;

    fn line(tag: &str, start: f64, us: u64) -> String {
        let mut h = new_hist();
        h.record(us).unwrap();
        format!(
            "Tag={tag},{start:.3},1.000,{:.3},{}\n",
            us as f64 / 1000.0,
            encode_hist(&h)
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

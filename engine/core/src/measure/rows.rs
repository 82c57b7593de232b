//! The rows of a run: one per task per interval, and one per request name of a task, in `metrics.jsonl` while the run goes and
//! `metrics.parquet` at its end. A local run and a distributed run's merge build them alike,
//! from a `Span` and a task's data.

use serde::{Deserialize, Serialize};

use crate::measure::metrics::{Percentiles, TaskData};
use crate::outcome::ErrorKind;

/// One row of `metrics.jsonl` / `metrics.parquet`: one task in one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// Rows of older runs lack the newer error kinds: they read as 0.
#[serde(default)]
pub struct Row {
    /// Interval start, seconds since the Unix epoch.
    pub time: f64,
    /// Interval start, seconds since the run started.
    pub elapsed_s: f64,
    /// Interval length: 1 s, less for the last second of the schedule or of a stopped run;
    /// the drain's length for the drain row (`elapsed_s` at the planned end).
    pub interval_s: f64,
    pub task: String,
    /// The request name, in a request's row; `None` in a task's row (which counts all of
    /// the task's requests, and its iterations).
    pub request: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub errors_connect: u64,
    pub errors_dns: u64,
    pub errors_tls: u64,
    pub errors_timeout: u64,
    pub errors_reset: u64,
    pub errors_status: u64,
    pub errors_check: u64,
    pub errors_exception: u64,
    pub errors_protocol: u64,
    pub errors_fd_limit: u64,
    pub errors_goaway: u64,
    pub errors_rst_stream: u64,
    pub errors_redirect: u64,
    pub status_1xx: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub bytes_in: u64,
    /// Redirects followed (hops after the first answer; the requests count each exchange
    /// once, whatever its hops).
    pub redirects: u64,
    /// The profile's rate for this task (open model only).
    pub target_rps: Option<f64>,
    pub achieved_rps: f64,
    pub missed: u64,
    /// Iterations cancelled in this interval (in flight when the run stopped or the drain
    /// ended).
    pub cancelled: u64,
    /// Arrivals given up in this interval: due, never sent.
    pub unsent: u64,
    /// Iterations that ran to their end in this interval, in a task's row (what its
    /// `target_rps` counts: a task of two requests sends two per iteration); `None` in a
    /// request name's row, and in rows of runs recorded before they were counted.
    pub iterations: Option<u64>,
    pub in_flight: i64,
    pub active_users: i64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub service_p50_ms: Option<f64>,
    pub service_p99_ms: Option<f64>,
}

/// The columns of a row, in order, with their types (`f64`, `u64`, `i64`, `str`; every `f64`
/// but `time`, `elapsed_s`, `interval_s` and `achieved_rps` may be null, and `request` and
/// `iterations`): the one schema
/// Python's reader uses (`_engine.ROW_COLUMNS`).
pub const ROW_COLUMNS: &[(&str, &str)] = &[
    ("time", "f64"),
    ("elapsed_s", "f64"),
    ("interval_s", "f64"),
    ("task", "str"),
    ("request", "str"),
    ("requests", "u64"),
    ("errors", "u64"),
    ("errors_connect", "u64"),
    ("errors_dns", "u64"),
    ("errors_tls", "u64"),
    ("errors_timeout", "u64"),
    ("errors_reset", "u64"),
    ("errors_status", "u64"),
    ("errors_check", "u64"),
    ("errors_exception", "u64"),
    ("errors_protocol", "u64"),
    ("errors_fd_limit", "u64"),
    ("errors_goaway", "u64"),
    ("errors_rst_stream", "u64"),
    ("errors_redirect", "u64"),
    ("status_1xx", "u64"),
    ("status_2xx", "u64"),
    ("status_3xx", "u64"),
    ("status_4xx", "u64"),
    ("status_5xx", "u64"),
    ("bytes_in", "u64"),
    ("redirects", "u64"),
    ("target_rps", "f64"),
    ("achieved_rps", "f64"),
    ("missed", "u64"),
    ("cancelled", "u64"),
    ("unsent", "u64"),
    ("iterations", "u64"),
    ("in_flight", "i64"),
    ("active_users", "i64"),
    ("p50_ms", "f64"),
    ("p90_ms", "f64"),
    ("p95_ms", "f64"),
    ("p99_ms", "f64"),
    ("p999_ms", "f64"),
    ("max_ms", "f64"),
    ("mean_ms", "f64"),
    ("service_p50_ms", "f64"),
    ("service_p99_ms", "f64"),
];

/// Where an interval's rows sit besides their data: its start and length, whether it is the
/// drain, and the run-wide gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Span {
    /// Seconds after the run's clock started.
    pub start_s: f64,
    pub length_s: f64,
    /// The drain after the planned end: nothing is sent in it, so it has no achieved rate.
    pub drain: bool,
    pub in_flight: i64,
    pub active_users: i64,
}

impl Span {
    /// The row of `task` (or of its request `request`) in this span, for a run whose clock
    /// started at `epoch0` (seconds since the Unix epoch).
    pub fn row(
        &self,
        epoch0: f64,
        task: &str,
        request: Option<&str>,
        target_rps: Option<f64>,
        d: &TaskData,
    ) -> Row {
        let l = Percentiles::of(&d.corrected);
        let s = Percentiles::of(&d.service);
        let c = &d.counts;
        let e = &c.errors;
        Row {
            time: epoch0 + self.start_s,
            elapsed_s: self.start_s,
            interval_s: self.length_s,
            task: task.to_string(),
            request: request.map(str::to_string),
            requests: c.requests,
            errors: c.error_total(),
            errors_connect: e[ErrorKind::Connect as usize],
            errors_dns: e[ErrorKind::Dns as usize],
            errors_tls: e[ErrorKind::Tls as usize],
            errors_timeout: e[ErrorKind::Timeout as usize],
            errors_reset: e[ErrorKind::Reset as usize],
            errors_status: e[ErrorKind::Status as usize],
            errors_check: e[ErrorKind::Check as usize],
            errors_exception: e[ErrorKind::Exception as usize],
            errors_protocol: e[ErrorKind::Protocol as usize],
            errors_fd_limit: e[ErrorKind::FdLimit as usize],
            errors_goaway: e[ErrorKind::GoAway as usize],
            errors_rst_stream: e[ErrorKind::RstStream as usize],
            errors_redirect: e[ErrorKind::Redirect as usize],
            status_1xx: c.status[0],
            status_2xx: c.status[1],
            status_3xx: c.status[2],
            status_4xx: c.status[3],
            status_5xx: c.status[4],
            bytes_in: c.bytes_in,
            redirects: c.redirects,
            target_rps,
            // Nothing is sent in the drain: its requests were sent before it.
            achieved_rps: if self.drain || self.length_s <= 0.0 {
                0.0
            } else {
                c.requests as f64 / self.length_s
            },
            missed: c.missed,
            cancelled: c.cancelled,
            unsent: c.unsent,
            iterations: request.is_none().then_some(c.iterations),
            in_flight: self.in_flight,
            active_users: self.active_users,
            p50_ms: l.p50,
            p90_ms: l.p90,
            p95_ms: l.p95,
            p99_ms: l.p99,
            p999_ms: l.p999,
            max_ms: l.max,
            mean_ms: l.mean,
            service_p50_ms: s.p50,
            service_p99_ms: s.p99,
        }
    }

    /// The counters a row carries, back (what a run cut short is summarised from).
    pub fn counters_of(row: &Row) -> crate::measure::metrics::Counters {
        let mut errors = [0; crate::measure::metrics::ERROR_KINDS];
        for k in ErrorKind::ALL {
            errors[k as usize] = match k {
                ErrorKind::Connect => row.errors_connect,
                ErrorKind::Dns => row.errors_dns,
                ErrorKind::Tls => row.errors_tls,
                ErrorKind::Timeout => row.errors_timeout,
                ErrorKind::Reset => row.errors_reset,
                ErrorKind::Status => row.errors_status,
                ErrorKind::Check => row.errors_check,
                ErrorKind::Exception => row.errors_exception,
                ErrorKind::Protocol => row.errors_protocol,
                ErrorKind::FdLimit => row.errors_fd_limit,
                ErrorKind::GoAway => row.errors_goaway,
                ErrorKind::RstStream => row.errors_rst_stream,
                ErrorKind::Redirect => row.errors_redirect,
            };
        }
        crate::measure::metrics::Counters {
            requests: row.requests,
            errors,
            status: [
                row.status_1xx,
                row.status_2xx,
                row.status_3xx,
                row.status_4xx,
                row.status_5xx,
            ],
            bytes_in: row.bytes_in,
            redirects: row.redirects,
            missed: row.missed,
            unsent: row.unsent,
            cancelled: row.cancelled,
            iterations: row.iterations.unwrap_or(0),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_columns_are_what_a_row_serializes_to_in_order() {
        let span = Span {
            length_s: 1.0,
            ..Span::default()
        };
        let row = span.row(1.0, "a", Some("GET /"), Some(1.0), &TaskData::new());
        let text = serde_json::to_string(&row).unwrap();
        let value = serde_json::to_value(&row).unwrap();
        let named: Vec<&str> = ROW_COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(value.as_object().unwrap().len(), named.len());
        // Every column is there, in this order.
        let at: Vec<usize> = named
            .iter()
            .map(|n| text.find(&format!("\"{n}\":")).expect(n))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        // The error columns follow the engine's kinds, in their order.
        let errors: Vec<&str> = named
            .iter()
            .filter_map(|n| n.strip_prefix("errors_"))
            .collect();
        let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(errors, kinds);
    }

    #[test]
    fn a_row_gives_back_the_counters_it_was_built_from() {
        let mut d = TaskData::new();
        d.response(503, 7, 1000, 900);
        d.error(ErrorKind::Status, true);
        d.error(ErrorKind::GoAway, false);
        d.error(ErrorKind::Redirect, false);
        d.counts.redirects = 4;
        d.counts.missed = 3;
        d.counts.unsent = 2;
        d.counts.cancelled = 1;
        d.counts.iterations = 5;
        let span = Span {
            length_s: 1.0,
            ..Span::default()
        };
        let back = Span::counters_of(&span.row(0.0, "a", None, None, &d));
        assert_eq!(back, d.counts);
    }
}

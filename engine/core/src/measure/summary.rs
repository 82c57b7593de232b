//! A run's summary (`summary.json`): whole-run figures per task and overall, and why the run
//! ended. A local run, a distributed run's merge and a run cut short (rebuilt from its files)
//! all build it here, from the same totals by the same rule.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::measure::metrics::{Percentiles, TaskData};
use crate::outcome::ErrorKind;

/// Why a run ended (`summary.json`'s `ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// The run goes on (a summary of the seconds closed so far).
    Running,
    /// The planned end was reached and everything in flight came back.
    Completed,
    /// Stopped: `stop()`, Ctrl-C or a signal.
    Stopped,
    /// A threshold failed while the run went.
    Aborted,
    /// Requests were still in flight when the drain ended: they are counted as cancelled.
    DrainTimeout,
    /// A unique feeder ran out.
    Exhausted,
    /// The run directory could not be written (a full disk): the files may lack rows.
    Failed,
    /// Rebuilt from the files of a run cut short (its process was killed).
    Interrupted,
}

impl Ended {
    pub const ALL: [Ended; 8] = [
        Ended::Running,
        Ended::Completed,
        Ended::Stopped,
        Ended::Aborted,
        Ended::DrainTimeout,
        Ended::Exhausted,
        Ended::Failed,
        Ended::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ended::Running => "running",
            Ended::Completed => "completed",
            Ended::Stopped => "stopped",
            Ended::Aborted => "aborted",
            Ended::DrainTimeout => "drain_timeout",
            Ended::Exhausted => "exhausted",
            Ended::Failed => "failed",
            Ended::Interrupted => "interrupted",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Ended::ALL
            .into_iter()
            .find(|e| e.name() == name)
            .ok_or_else(|| {
                let all: Vec<&str> = Ended::ALL.iter().map(|e| e.name()).collect();
                Error::plan("ended", format!("{name:?} is not one of {all:?}"))
            })
    }

    /// How a run of several slices ended, from how each slice did: the gravest of
    /// `failed`, `drain_timeout`, `exhausted`, `aborted`, else `completed`.
    pub fn of_slices(ends: impl IntoIterator<Item = Ended>) -> Ended {
        const GRAVEST_FIRST: [Ended; 4] = [
            Ended::Failed,
            Ended::DrainTimeout,
            Ended::Exhausted,
            Ended::Aborted,
        ];
        let ends: Vec<Ended> = ends.into_iter().collect();
        GRAVEST_FIRST
            .into_iter()
            .find(|e| ends.contains(e))
            .unwrap_or(Ended::Completed)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// Iterations that ran to their end (for tasks of one request: `requests`); `None` in the
    /// summary of a run cut short, whose rows do not count them.
    pub iterations: Option<u64>,
    /// Iterations sent and still unanswered when the run was stopped or its drain ended.
    pub cancelled: u64,
    /// Arrivals that were due and never sent.
    pub unsent: u64,
    pub bytes_in: u64,
    /// Redirects followed (a request's hops are part of that one request).
    #[serde(default)]
    pub redirects: u64,
    /// Requests over the time they were being sent (`duration_s`).
    pub achieved_rps: f64,
    /// From the instant each request was due (coordinated-omission corrected).
    pub latency_ms: Percentiles,
    /// From the instant each request was sent.
    pub service_ms: Percentiles,
    /// How late each iteration began after its due instant (open model; empty otherwise):
    /// the generator's own delay, part of `latency_ms`.
    #[serde(default, skip_serializing_if = "Percentiles::is_empty")]
    pub late_ms: Percentiles,
}

impl Stats {
    pub fn of(d: &TaskData, duration_s: f64) -> Self {
        let c = &d.counts;
        let errors_by_kind = ErrorKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), c.errors[*k as usize]))
            .collect();
        Stats {
            requests: c.requests,
            errors: c.error_total(),
            errors_by_kind,
            error_rate: c.error_rate(),
            missed: c.missed,
            iterations: Some(c.iterations),
            cancelled: c.cancelled,
            unsent: c.unsent,
            bytes_in: c.bytes_in,
            redirects: c.redirects,
            achieved_rps: if duration_s > 0.0 {
                c.requests as f64 / duration_s
            } else {
                0.0
            },
            latency_ms: Percentiles::of(&d.corrected),
            service_ms: Percentiles::of(&d.service),
            late_ms: d.late.as_ref().map(Percentiles::of).unwrap_or_default(),
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

/// Whole-run figures of one request name of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub task: String,
    pub name: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// One failure message of a request name and how often it came (Locust's failures table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureCount {
    pub task: String,
    pub request: String,
    pub message: String,
    pub count: u64,
}

/// The most failure messages a summary lists (the most frequent).
pub const MAX_FAILURES: usize = 100;

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
    /// Why the run ended.
    pub ended: Ended,
    /// `open` or `closed`.
    pub model: String,
    /// Arrivals that were due (open model): for every task,
    /// `target_requests == iterations + cancelled + unsent`.
    pub target_requests: Option<f64>,
    pub overall: Stats,
    pub tasks: Vec<TaskSummary>,
    /// Per request name of each task (in the order names were first seen); empty in the
    /// summaries of runs recorded before requests were measured apart.
    #[serde(default)]
    pub requests: Vec<RequestSummary>,
    /// The messages of failed checks, most frequent first (at most `MAX_FAILURES`).
    #[serde(default)]
    pub failures: Vec<FailureCount>,
    /// Arrivals a lost agent of a distributed run may have sent after its last report of
    /// progress, which its takeover sent again: the target may have received up to this
    /// many requests more than were due. 0 when no agent was lost (or for a local run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fate_unknown: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A run's totals so far: per entry (tasks, then hooks) and per request name, everything
/// closed, added up. What the summary, `Run.histogram` and the merge's totals are read from.
pub struct Totals {
    names: Vec<String>,
    /// Where each task runs (`engine`, `python`); entries past the tasks are hooks.
    runs_on: Vec<String>,
    /// The request names after the entries: (entry, name), in slot order.
    requests: Vec<(usize, String)>,
    /// Per slot: the entries, then the request names.
    data: Vec<TaskData>,
}

/// What a summary says besides its figures.
pub struct Head<'a> {
    pub name: &'a str,
    /// When the run's clock started, seconds since the Unix epoch.
    pub started_at: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub planned_duration_s: f64,
    pub ended: Ended,
    /// `open` or `closed`.
    pub model: &'a str,
}

impl Totals {
    pub fn new(names: Vec<String>, runs_on: Vec<String>) -> Self {
        Totals {
            data: names.iter().map(|_| TaskData::new()).collect(),
            names,
            runs_on,
            requests: Vec::new(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds one closed interval's data, slot by slot; `requests`: the request names known
    /// (every name of `data`'s slots, and maybe more).
    pub fn add(&mut self, data: &[TaskData], requests: &[(usize, String)]) {
        if requests.len() > self.requests.len() {
            self.requests = requests.to_vec();
        }
        let slots = (self.names.len() + self.requests.len()).max(data.len());
        if self.data.len() < slots {
            self.data.resize_with(slots, TaskData::new);
        }
        for (acc, d) in self.data.iter_mut().zip(data) {
            acc.add(d);
        }
    }

    fn of_request(&self, task: &str, name: &str) -> Result<TaskData> {
        let of_task = |e: &usize| self.names.get(*e).is_some_and(|t| t == task);
        match self
            .requests
            .iter()
            .position(|(e, n)| n == name && of_task(e))
        {
            Some(i) => Ok(self.data[self.names.len() + i].clone()),
            None => {
                let known: Vec<&str> = self
                    .requests
                    .iter()
                    .filter(|(e, _)| of_task(e))
                    .map(|(_, n)| n.as_str())
                    .collect();
                Err(Error::plan(
                    "request",
                    format!("task {task:?} has no request named {name:?}; its requests: {known:?}"),
                ))
            }
        }
    }

    /// The entries' totals (tasks, then hooks).
    pub fn entries(&self) -> &[TaskData] {
        &self.data[..self.names.len()]
    }

    /// Everything closed so far: of one entry (by name) or of all (`None`); with `request`,
    /// of that request name of entry `task` (which it then needs).
    pub fn of(&self, task: Option<&str>, request: Option<&str>) -> Result<TaskData> {
        if let Some(name) = request {
            let task = task.ok_or_else(|| {
                Error::plan(
                    "request",
                    "a request is named within its task: give the task too",
                )
            })?;
            return self.of_request(task, name);
        }
        match task {
            None => {
                let mut all = TaskData::new();
                self.entries().iter().for_each(|d| all.add(d));
                Ok(all)
            }
            Some(name) => self
                .names
                .iter()
                .position(|n| n == name)
                .map(|i| self.data[i].clone())
                .ok_or_else(|| {
                    Error::plan(
                        "task",
                        format!("no task named {name:?}; tasks: {:?}", self.names),
                    )
                }),
        }
    }

    /// The summary of these totals. `targets`: per entry, the arrivals that were due (an
    /// open model's; `None` for a closed model).
    pub fn summary(&self, head: Head<'_>, targets: Option<&[f64]>) -> Summary {
        let mut all = TaskData::new();
        let tasks: Vec<TaskSummary> = self
            .entries()
            .iter()
            .zip(&self.names)
            .enumerate()
            .map(|(i, (d, name))| {
                all.add(d);
                TaskSummary {
                    name: name.clone(),
                    path: self
                        .runs_on
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| "hook".into()),
                    target_requests: targets.map(|t| t.get(i).copied().unwrap_or(0.0)),
                    stats: Stats::of(d, head.duration_s),
                }
            })
            .collect();
        let mut failures: Vec<FailureCount> = self
            .requests
            .iter()
            .zip(&self.data[self.names.len()..])
            .flat_map(|((e, name), d)| {
                d.messages.iter().map(move |(m, n)| FailureCount {
                    task: self.names[*e].clone(),
                    request: name.clone(),
                    message: m.clone(),
                    count: *n,
                })
            })
            .collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.count));
        failures.truncate(MAX_FAILURES);
        Summary {
            failures,
            fate_unknown: 0,
            name: head.name.to_string(),
            started_at: head.started_at,
            duration_s: head.duration_s,
            drain_s: head.drain_s,
            planned_duration_s: head.planned_duration_s,
            ended: head.ended,
            model: head.model.to_string(),
            target_requests: targets.map(|_| tasks.iter().filter_map(|t| t.target_requests).sum()),
            overall: Stats::of(&all, head.duration_s),
            tasks,
            requests: self
                .requests
                .iter()
                .zip(&self.data[self.names.len()..])
                .map(|((e, name), d)| RequestSummary {
                    task: self.names[*e].clone(),
                    name: name.clone(),
                    stats: Stats {
                        iterations: None,
                        ..Stats::of(d, head.duration_s)
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_have_names_that_read_back_and_slices_end_by_the_gravest() {
        for e in Ended::ALL {
            assert_eq!(Ended::parse(e.name()).unwrap(), e);
            assert_eq!(
                serde_json::to_string(&e).unwrap(),
                format!("\"{}\"", e.name())
            );
        }
        assert!(Ended::parse("done").is_err());
        use Ended::*;
        assert_eq!(Ended::of_slices([Completed, Completed]), Completed);
        assert_eq!(Ended::of_slices([]), Completed);
        assert_eq!(Ended::of_slices([Completed, Aborted, Exhausted]), Exhausted);
        assert_eq!(Ended::of_slices([DrainTimeout, Failed, Completed]), Failed);
    }
}

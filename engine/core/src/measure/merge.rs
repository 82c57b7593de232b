//! A distributed run's one picture: the coordinator adds the intervals its agents report
//! (histograms added, counters summed: percentiles of the whole, never averaged) into the same
//! run directory, rows and summary a local run has.
//!
//! Agents report each closed interval once per slice they run (a "reporter": an agent's own
//! slice, or a slice it took over). An interval closes when every live reporter has reported
//! it, or when the caller says its grace is over; a report that arrives after its interval
//! closed is folded into the next interval to close (so the rows still add up to the
//! summary), and a report seen twice (a redelivery) is counted once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::measure::hlog::LogWriter;
use crate::measure::metrics::{at_slot, Counters, Interval, TaskData, WireData};
use crate::measure::names::Names;
use crate::measure::rows::{Row, Span};
use crate::measure::rundir::{RunWriter, AGENTS_LOG};
use crate::measure::summary::{Ended, Head, Summary, Totals};

/// Where a report went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Into its own interval, still open.
    Fresh,
    /// Already seen from this reporter: ignored.
    Duplicate,
    /// Its interval had closed: folded into the next interval to close.
    Late,
}

impl Added {
    pub fn name(self) -> &'static str {
        match self {
            Added::Fresh => "fresh",
            Added::Duplicate => "duplicate",
            Added::Late => "late",
        }
    }
}

fn span_of(iv: &Interval) -> Span {
    Span {
        start_s: iv.start_s,
        length_s: iv.length_s,
        drain: iv.drain,
        in_flight: iv.in_flight,
        active_users: iv.active_users,
    }
}

struct Open {
    span: Span,
    target_rps: Vec<Option<f64>>,
    data: Vec<TaskData>,
}

/// What the coordinator knows of one slice at the end: its own summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceEnd {
    pub reporter: String,
    pub summary: Summary,
}

pub struct Merge {
    name: String,
    model: String,
    epoch0: f64,
    duration: f64,
    writer: RunWriter,
    /// Each slice's own histograms, as reported (`agents.hlog`).
    agents_log: LogWriter,
    open: BTreeMap<u64, Open>,
    /// Every interval below this index has closed.
    closed_below: u64,
    /// Reports that came after their interval closed, for the next one to close.
    late: Option<Open>,
    /// Per reporter: the intervals seen.
    seen: HashMap<String, BTreeSet<u64>>,
    /// Per reporter and entry: what it has reported, added up.
    counts: HashMap<String, Vec<Counters>>,
    totals: Totals,
    /// The request names the agents reported, given slots in the order first seen.
    request_names: Names,
    rows: Vec<Row>,
    /// Per report: the slice's row of all its tasks (the `agent` rows that find a slow agent).
    reporter_rows: Vec<(String, Row)>,
    /// Where a report's tasks are added up for its row.
    scratch: TaskData,
    sent_s: f64,
}

impl Merge {
    /// Creates the run directory `dir` (plan and log headers) for a run whose clock starts at
    /// `epoch0` (seconds since the Unix epoch) and whose entries are `names` (tasks, then
    /// hooks); `runs_on`: where each task runs (`engine`, `python`).
    pub fn create(
        dir: &Path,
        plan_json: &str,
        names: Vec<String>,
        runs_on: Vec<String>,
        epoch0: f64,
    ) -> Result<Self> {
        let plan = crate::plan::Plan::from_json(plan_json)?;
        let (model, stages) = match &plan.load {
            crate::plan::Load::Open { stages, .. } => ("open", stages),
            crate::plan::Load::Closed { stages, .. } => ("closed", stages),
        };
        let duration = crate::plan::profile::Profile::new(stages)?.duration();
        let mut writer = RunWriter::create(dir, plan_json)?;
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(epoch0);
        writer.begin(start)?;
        let mut agents_log =
            LogWriter::create(dir.join(AGENTS_LOG), "corrected latency per agent")?;
        agents_log.begin(start)?;
        Ok(Merge {
            request_names: Names::new(names.clone(), plan.max_request_names as usize),
            totals: Totals::new(names, runs_on),
            name: plan.name.clone(),
            model: model.into(),
            epoch0,
            duration,
            writer,
            agents_log,
            open: BTreeMap::new(),
            closed_below: 0,
            late: None,
            seen: HashMap::new(),
            counts: HashMap::new(),
            rows: Vec::new(),
            reporter_rows: Vec::new(),
            scratch: TaskData::new(),
            sent_s: 0.0,
        })
    }

    pub fn dir(&self) -> &Path {
        self.writer.dir()
    }

    pub fn names(&self) -> &[String] {
        self.totals.names()
    }

    /// Adds `reporter`'s interval, as JSON (what an agent publishes). A report that cannot be
    /// added (not an interval, another shape) is an `Error::Report` and changes nothing.
    pub fn add_json(&mut self, reporter: &str, json: &[u8]) -> Result<Added> {
        let iv: Interval = serde_json::from_slice(json)
            .map_err(|e| Error::report(reporter, format!("not an interval: {e}")))?;
        self.add(reporter, &iv)
    }

    /// Adds `reporter`'s interval.
    pub fn add(&mut self, reporter: &str, iv: &Interval) -> Result<Added> {
        let n = self.names().len();
        if iv.tasks.len() != n || iv.target_rps.len() != n {
            return Err(Error::report(
                reporter,
                format!(
                    "an interval of {} entries, the run has {}",
                    iv.tasks.len(),
                    n
                ),
            ));
        }
        let parsed = iv
            .tasks
            .iter()
            .map(WireData::parse)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::report(reporter, e))?;
        let mut parsed_requests = Vec::with_capacity(iv.requests.len());
        for r in &iv.requests {
            if r.entry >= n {
                return Err(Error::report(
                    reporter,
                    format!("request {:?} of entry {}, the run has {n}", r.name, r.entry),
                ));
            }
            if let Some(why) = crate::plan::request_name_problem(&r.name) {
                return Err(Error::report(reporter, why));
            }
            let p = r.data.parse().map_err(|e| Error::report(reporter, e))?;
            parsed_requests.push(p);
        }
        if !self
            .seen
            .entry(reporter.to_string())
            .or_default()
            .insert(iv.index)
        {
            return Ok(Added::Duplicate);
        }
        // The slice's own view: all its tasks together in one row, its histograms as they
        // came (nothing encoded again).
        let scratch = &mut self.scratch;
        scratch.reset();
        for ((name, w), p) in self.totals.names().iter().zip(&iv.tasks).zip(&parsed) {
            scratch.add_parsed(w, p);
            let max = p
                .corrected
                .last()
                .map_or(0, |&(v, _)| scratch.corrected.highest_equivalent(v));
            self.agents_log.write_encoded(
                &format!("{reporter}:{name}"),
                iv.start_s,
                iv.length_s,
                max,
                &w.corrected,
            )?;
        }
        self.agents_log.flush()?;
        let target = iv.target_rps.iter().flatten().copied().reduce(|a, b| a + b);
        let row = span_of(iv).row(self.epoch0, "all", None, target, &self.scratch);
        self.reporter_rows.push((reporter.to_string(), row));
        let counts = self
            .counts
            .entry(reporter.to_string())
            .or_insert_with(|| vec![Counters::default(); n]);
        for (c, d) in counts.iter_mut().zip(&iv.tasks) {
            c.add(&d.counts);
        }
        let late = iv.index < self.closed_below;
        let blank = || Open {
            span: Span {
                in_flight: 0,
                active_users: 0,
                ..span_of(iv)
            },
            target_rps: vec![None; iv.tasks.len()],
            data: iv.tasks.iter().map(|_| TaskData::new()).collect(),
        };
        let slot = if late {
            self.late.get_or_insert_with(blank)
        } else {
            self.open.entry(iv.index).or_insert_with(blank)
        };
        if !late {
            // Slices stopped at slightly different instants: the interval is the longest.
            slot.span.length_s = slot.span.length_s.max(iv.length_s);
            slot.span.in_flight += iv.in_flight;
            slot.span.active_users += iv.active_users;
            for (acc, t) in slot.target_rps.iter_mut().zip(&iv.target_rps) {
                if let Some(t) = t {
                    *acc = Some(acc.unwrap_or(0.0) + t);
                }
            }
        }
        for ((acc, w), p) in slot.data.iter_mut().zip(&iv.tasks).zip(&parsed) {
            acc.add_parsed(w, p);
        }
        for (r, p) in iv.requests.iter().zip(&parsed_requests) {
            let at = self.request_names.slot(r.entry, &r.name);
            let d = at_slot(&mut slot.data, at);
            d.add_parsed(&r.data, p);
            // Each kept request says which agent sent it.
            for k in d.kept.slowest.iter_mut().chain(d.kept.sample.iter_mut()) {
                k.agent.get_or_insert_with(|| reporter.to_string());
            }
        }
        Ok(if late { Added::Late } else { Added::Fresh })
    }

    /// `reporter` is gone (its agent was lost) and will report nothing more: what it had
    /// taken and not started counts as unsent, what it had started and not reported ended
    /// as cancelled (folded into the next interval to close). `sent`: per entry, the
    /// arrivals its agent last said it had sent; those beyond what it reported were sent
    /// and their outcome is unknown: cancelled too. Returns the arrivals it took, per entry:
    /// its share of what was due.
    pub fn lose(&mut self, reporter: &str, sent: &[u64]) -> Vec<u64> {
        let n = self.names().len();
        let counts = self
            .counts
            .entry(reporter.to_string())
            .or_insert_with(|| vec![Counters::default(); n]);
        let mut extra: Vec<TaskData> = (0..n).map(|_| TaskData::new()).collect();
        for (i, (c, d)) in counts.iter_mut().zip(extra.iter_mut()).enumerate() {
            // Sent and never reported: taken, started, and never ended.
            let unreported = sent.get(i).copied().unwrap_or(0).saturating_sub(c.started);
            d.counts.taken = unreported;
            d.counts.started = unreported;
            c.taken += unreported;
            c.started += unreported;
            // Taken and never started: unsent. Started and never ended: cancelled.
            let unsent = c.taken.saturating_sub(c.started).saturating_sub(c.unsent);
            let cancelled = c
                .started
                .saturating_sub(c.iterations)
                .saturating_sub(c.cancelled);
            d.counts.unsent = unsent;
            d.counts.cancelled = cancelled;
            c.unsent += unsent;
            c.cancelled += cancelled;
        }
        let taken: Vec<u64> = counts.iter().map(|c| c.taken).collect();
        let slot = self.late.get_or_insert_with(|| Open {
            span: Span::default(),
            target_rps: vec![None; n],
            data: (0..n).map(|_| TaskData::new()).collect(),
        });
        for (acc, d) in slot.data.iter_mut().zip(&extra) {
            acc.add(d);
        }
        taken
    }

    /// The requests `reporter` has reported so far.
    pub fn requests_of(&self, reporter: &str) -> u64 {
        self.counts
            .get(reporter)
            .map_or(0, |c| c.iter().map(|c| c.requests).sum())
    }

    /// The highest interval index `reporter` has reported, if any.
    pub fn reported_upto(&self, reporter: &str) -> Option<u64> {
        self.seen.get(reporter).and_then(|s| s.last().copied())
    }

    /// Closes, in order, every open interval each of `live` has reported, and every interval
    /// below `through` whatever was reported (its grace is over). Returns how many closed.
    pub fn close_ready(&mut self, live: &[String], through: u64) -> Result<usize> {
        let mut n = 0;
        while let Some((&i, _)) = self.open.iter().next() {
            let everyone = live
                .iter()
                .all(|r| self.seen.get(r).is_some_and(|s| s.contains(&i)));
            if !(everyone || i < through) {
                break;
            }
            let iv = self.open.remove(&i).expect("just seen");
            self.close(i, iv)?;
            n += 1;
        }
        Ok(n)
    }

    fn close(&mut self, i: u64, mut iv: Open) -> Result<()> {
        let requests = self.request_names.requests();
        let n = self.totals.names().len();
        let slots = n + requests.len();
        iv.data.resize_with(slots.max(iv.data.len()), TaskData::new);
        if let Some(late) = self.late.take() {
            for (acc, d) in iv.data.iter_mut().zip(&late.data) {
                acc.add(d);
            }
        }
        let names = self.totals.names();
        let mut rows: Vec<Row> = (iv.data.iter().zip(names).zip(&iv.target_rps))
            .map(|((d, name), target)| iv.span.row(self.epoch0, name, None, *target, d))
            .collect();
        rows.extend(
            requests
                .iter()
                .zip(&iv.data[n..])
                .map(|((e, name), d)| iv.span.row(self.epoch0, &names[*e], Some(name), None, d)),
        );
        self.writer.interval(
            names,
            &requests,
            iv.span.start_s,
            iv.span.length_s,
            &iv.data,
            &rows,
        )?;
        if !iv.span.drain {
            self.sent_s += iv.span.length_s;
        }
        self.totals.add(&iv.data, &requests);
        self.rows.extend(rows);
        self.closed_below = self.closed_below.max(i + 1);
        Ok(())
    }

    /// Rows closed since the last call.
    pub fn take_rows(&mut self) -> Vec<Row> {
        std::mem::take(&mut self.rows)
    }

    /// Per-reporter rows added since the last call.
    pub fn take_reporter_rows(&mut self) -> Vec<(String, Row)> {
        std::mem::take(&mut self.reporter_rows)
    }

    /// Everything closed so far: of one entry, of all, or of one request name of an entry.
    pub fn cumulative(&self, task: Option<&str>, request: Option<&str>) -> Result<TaskData> {
        self.totals.of(task, request)
    }

    /// Closes whatever is still open (a slice that never reported it is lost) and writes the
    /// summary. `stopped`: the reason the run was stopped with, if it was; otherwise it ended
    /// as the gravest of its slices' `ends`. `targets`: per entry, the arrivals that were due
    /// (open model), from the slices' own summaries plus what lost slices had taken.
    pub fn finish(
        &mut self,
        stopped: Option<Ended>,
        ends: &[Ended],
        duration_s: Option<f64>,
        drain_s: f64,
        targets: Option<Vec<f64>>,
        fate_unknown: u64,
    ) -> Result<Summary> {
        let rest: Vec<u64> = self.open.keys().copied().collect();
        for i in rest {
            let iv = self.open.remove(&i).expect("listed");
            self.close(i, iv)?;
        }
        if let Some(late) = self.late.take() {
            // Nothing left to fold it into: it joins the totals (and the files) as the
            // last interval it was reported for.
            let i = self.closed_below;
            self.close(i, late)?;
        }
        let ended = stopped.unwrap_or_else(|| Ended::of_slices(ends.iter().copied()));
        let mut summary = self.summary(ended, duration_s.unwrap_or(self.sent_s), drain_s, targets);
        summary.fate_unknown = fate_unknown;
        self.writer.summary(&summary)?;
        Ok(summary)
    }

    /// The summary of what has closed so far (`Ended::Running` while the run goes).
    pub fn summary(
        &self,
        ended: Ended,
        duration_s: f64,
        drain_s: f64,
        targets: Option<Vec<f64>>,
    ) -> Summary {
        let open = self.model == "open";
        // While the run goes: what was taken so far.
        let targets = open.then(|| {
            targets.unwrap_or_else(|| {
                let taken = self.totals.entries().iter();
                taken.map(|d| d.counts.taken as f64).collect()
            })
        });
        let head = Head {
            name: &self.name,
            started_at: self.epoch0,
            duration_s,
            drain_s,
            planned_duration_s: self.duration,
            ended,
            model: &self.model,
        };
        self.totals.summary(head, targets.as_deref())
    }

    /// Seconds of sending closed so far.
    pub fn sent_s(&self) -> f64 {
        self.sent_s
    }

    pub fn path(&self) -> PathBuf {
        self.writer.dir().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::metrics::new_hist;

    const PLAN: &str = r#"{"target": "http://127.0.0.1:1", "load": {"model": "open", "stages": [{"kind": "constant", "rate": 10, "duration_s": 3}]}, "tasks": [{"name": "a", "requests": [{"path": "/"}]}]}"#;

    fn interval(index: u64, values: &[u64]) -> Interval {
        let mut d = TaskData::new();
        for v in values {
            d.response(200, 1, *v, *v);
            d.counts.taken += 1;
            d.counts.started += 1;
            d.counts.iterations += 1;
        }
        Interval {
            index,
            start_s: index as f64,
            length_s: 1.0,
            drain: false,
            in_flight: 1,
            active_users: 0,
            target_rps: vec![Some(5.0)],
            tasks: vec![d.to_wire()],
            requests: Vec::new(),
        }
    }

    /// An interval whose task sent the named requests `(name, latency)`.
    fn named(index: u64, sent: &[(&str, u64)]) -> Interval {
        let mut iv = interval(index, &sent.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        let mut by_name: Vec<(String, TaskData)> = Vec::new();
        for (name, v) in sent {
            let at = match by_name.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    by_name.push((name.to_string(), TaskData::new()));
                    by_name.len() - 1
                }
            };
            by_name[at].1.response(200, 1, *v, *v);
        }
        iv.requests = by_name
            .into_iter()
            .map(|(name, d)| crate::measure::metrics::WireRequest {
                entry: 0,
                name,
                data: d.to_wire(),
            })
            .collect();
        iv
    }

    #[test]
    fn request_names_merge_by_name_whatever_order_each_agent_saw_them_in() {
        let mut m = merge("names");
        let live = vec!["x".to_string(), "y".to_string()];
        m.add(
            "x",
            &named(0, &[("login", 100), ("cart", 200), ("cart", 250)]),
        )
        .unwrap();
        m.add("y", &named(0, &[("cart", 300), ("login", 400)]))
            .unwrap();
        m.close_ready(&live, 0).unwrap();
        let rows = m.take_rows();
        let of = |name: &str| {
            rows.iter()
                .find(|r| r.request.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no row of {name}"))
                .requests
        };
        assert_eq!((rows.len(), of("login"), of("cart")), (3, 2, 3));
        assert_eq!(rows[0].request, None, "the task's row comes first");
        assert_eq!(rows[0].requests, 5);
        let mut cart = new_hist();
        for v in [200u64, 250, 300] {
            cart.record(v).unwrap();
        }
        assert_eq!(
            m.cumulative(Some("a"), Some("cart")).unwrap().corrected,
            cart
        );
        let bad = Interval {
            requests: vec![crate::measure::metrics::WireRequest {
                entry: 3,
                name: "x".into(),
                data: TaskData::new().to_wire(),
            }],
            ..interval(1, &[])
        };
        assert!(matches!(m.add("x", &bad), Err(Error::Report { .. })));
        let s = m
            .finish(None, &[Ended::Completed], None, 0.0, None, 0)
            .unwrap();
        let names: Vec<(&str, u64)> = s
            .requests
            .iter()
            .map(|r| (r.name.as_str(), r.stats.requests))
            .collect();
        assert_eq!(names, [("login", 2), ("cart", 3)]);
        assert_eq!(s.requests[1].stats.latency_ms.max, Some(0.3));
    }

    fn merge(name: &str) -> Merge {
        let dir = std::env::temp_dir().join(format!("lp-merge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Merge::create(&dir, PLAN, vec!["a".into()], vec!["engine".into()], 1e9).unwrap()
    }

    #[test]
    fn reports_add_up_once_each_and_close_when_every_live_reporter_has_reported() {
        let mut m = merge("add");
        let live = vec!["x".to_string(), "y".to_string()];
        assert_eq!(m.add("x", &interval(0, &[100, 200])).unwrap(), Added::Fresh);
        assert_eq!(m.close_ready(&live, 0).unwrap(), 0, "y has not reported");
        assert_eq!(
            m.add("x", &interval(0, &[100, 200])).unwrap(),
            Added::Duplicate
        );
        assert_eq!(m.add("y", &interval(0, &[300])).unwrap(), Added::Fresh);
        assert_eq!(m.close_ready(&live, 0).unwrap(), 1);
        let rows = m.take_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].requests, 3);
        assert_eq!(rows[0].target_rps, Some(10.0), "the slices' rates add up");
        assert_eq!(rows[0].in_flight, 2);
        let mut all = new_hist();
        for v in [100u64, 200, 300] {
            all.record(v).unwrap();
        }
        assert_eq!(m.cumulative(None, None).unwrap().corrected, all);
        // Interval 1 from x only: closes once its grace is over; y's report then is late and
        // joins the next interval to close.
        m.add("x", &interval(1, &[100])).unwrap();
        assert_eq!(m.close_ready(&live, 2).unwrap(), 1);
        assert_eq!(m.add("y", &interval(1, &[400])).unwrap(), Added::Late);
        m.add("x", &interval(2, &[100])).unwrap();
        m.add("y", &interval(2, &[100])).unwrap();
        m.close_ready(&live, 0).unwrap();
        let rows = m.take_rows();
        assert_eq!(
            rows.iter().map(|r| r.requests).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let s = m
            .finish(None, &[Ended::Completed], None, 0.0, Some(vec![7.0]), 0)
            .unwrap();
        assert_eq!(s.overall.requests, 7, "nothing lost, nothing twice");
        assert_eq!(s.target_requests, Some(7.0));
        assert_eq!(s.duration_s, 3.0);
        assert_eq!(m.take_reporter_rows().len(), 6);
        let text = std::fs::read_to_string(m.dir().join(crate::measure::rundir::SUMMARY)).unwrap();
        assert!(text.contains("\"requests\": 7"), "{text}");
    }

    #[test]
    fn a_lost_reporter_leaves_its_unanswered_iterations_cancelled() {
        let mut m = merge("lost");
        let mut iv = interval(0, &[100]);
        let mut d = TaskData::from_wire(&iv.tasks[0]).unwrap();
        d.counts.taken += 3; // 4 taken, 2 started, 1 ended
        d.counts.started += 1;
        iv.tasks[0] = d.to_wire();
        m.add("x", &iv).unwrap();
        m.close_ready(&["x".to_string()], 0).unwrap();
        assert_eq!(m.lose("x", &[]), vec![4]);
        let s = m.finish(None, &[], None, 0.0, Some(vec![4.0]), 0).unwrap();
        let o = &s.overall;
        assert_eq!((o.iterations, o.cancelled, o.unsent), (Some(1), 1, 2));
        assert_eq!(s.fate_unknown, 0);
    }

    #[test]
    fn arrivals_a_lost_reporter_sent_and_never_reported_are_due_and_cancelled() {
        let mut m = merge("lost-sent");
        let mut iv = interval(0, &[100]);
        let mut d = TaskData::from_wire(&iv.tasks[0]).unwrap();
        d.counts.taken += 1; // 2 taken, 2 started, 1 ended
        d.counts.started += 1;
        iv.tasks[0] = d.to_wire();
        m.add("x", &iv).unwrap();
        m.close_ready(&["x".to_string()], 0).unwrap();
        // Its agent said it had sent 5: three more than it reported, their fate unknown.
        assert_eq!(m.lose("x", &[5]), vec![5]);
        let s = m.finish(None, &[], None, 0.0, Some(vec![5.0]), 7).unwrap();
        let o = &s.overall;
        assert_eq!((o.iterations, o.cancelled, o.unsent), (Some(1), 4, 0));
        assert_eq!(s.target_requests, Some(5.0));
        assert_eq!(s.fate_unknown, 7);
        let text = std::fs::read_to_string(m.dir().join(crate::measure::rundir::SUMMARY)).unwrap();
        assert!(text.contains("\"fate_unknown\": 7"), "{text}");
        // A reporter that never reported still had its sent arrivals counted.
        let mut m = merge("lost-silent");
        assert_eq!(m.lose("y", &[3]), vec![3]);
        let s = m.finish(None, &[], None, 0.0, Some(vec![3.0]), 0).unwrap();
        assert_eq!(s.overall.cancelled, 3);
    }

    #[test]
    fn a_report_of_another_shape_is_refused() {
        let mut m = merge("shape");
        let mut iv = interval(0, &[1]);
        iv.tasks.push(TaskData::new().to_wire());
        let e = m.add("x", &iv).unwrap_err();
        assert!(matches!(e, Error::Report { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "bad report from x: an interval of 2 entries, the run has 1"
        );
    }
}

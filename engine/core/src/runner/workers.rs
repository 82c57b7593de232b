//! The one worker loop per model, and the iteration both run: an engine body's requests, or a
//! Python body run by Python when the worker asks. Either way the worker takes the arrival (or
//! the closed model's turn), keeps time from its due instant, and counts how it ended.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio::time::sleep_until;

use super::{exchange, Body, Ctx, Keep, Model, LATE};
use crate::plan::template::Values;
use crate::runner::pacer;
use crate::runner::python::{Done, Session, Work};

/// A virtual user: its connection (shared with its Python code) and its template values.
pub(super) struct User {
    session: Arc<Session>,
    /// The plan's values for this user merged with what its `on_start` set; `None`: it has
    /// none of its own (the plan's, if any, are used).
    own: Option<BTreeMap<String, String>>,
}

impl User {
    fn values<'a>(&'a self, ctx: &'a Ctx) -> Option<&'a BTreeMap<String, String>> {
        self.own.as_ref().or_else(|| {
            (!ctx.user_vars.is_empty())
                .then(|| &ctx.user_vars[self.vu() as usize % ctx.user_vars.len()])
        })
    }

    fn vu(&self) -> u64 {
        self.session.vu
    }
}

/// Makes user `vu` and runs its `on_start` (if the scenario has one), counted under its own
/// name and bounded by the hook timeout. `None`: the user takes no part (its `on_start`
/// raised, timed out, or the run ended meanwhile).
pub(super) async fn start_user(ctx: &Arc<Ctx>, vu: u64) -> Option<User> {
    let session = Arc::new(Session::new(ctx.clone(), vu));
    let Some(py) = &ctx.python else {
        return Some(User { session, own: None });
    };
    let mut own = None;
    if py.hooks.on_start {
        let hook = ctx.hook_entry();
        Begin {
            taken: true,
            late: false,
            due: None,
        }
        .record(ctx, hook);
        // on_start sees the row of the user's number, without using it up.
        let row = ctx
            .feeder
            .as_ref()
            .and_then(|f| f.row(vu))
            .map(<[String]>::to_vec);
        let limit = Duration::from_secs_f64(py.hooks.timeout_s);
        let asked = py.ask(&session, Work::OnStart, vu, None, row);
        let done = tokio::select! {
            d = tokio::time::timeout(limit, asked) => d.unwrap_or(Done::Cancelled),
            _ = ctx.stop.cancelled() => Done::Cancelled,
        };
        let now = Instant::now();
        match done {
            Done::Started(values) => {
                ctx.recorder.record(hook, now, |d| d.counts.iterations += 1);
                let mut merged = User {
                    session: session.clone(),
                    own: None,
                }
                .values(ctx)
                .cloned()
                .unwrap_or_default();
                merged.extend(values);
                own = Some(merged);
            }
            Done::Ran => ctx.recorder.record(hook, now, |d| d.counts.iterations += 1),
            Done::Raised => {
                ctx.recorder.record(hook, now, |d| {
                    d.exception();
                    d.counts.iterations += 1;
                });
                return None;
            }
            // Started and never ended: counted as cancelled.
            Done::Cancelled => return None,
        }
    }
    if py.hooks.on_stop {
        py.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session.clone());
    }
    Some(User { session, own })
}

/// Sets up users `vus` before the run's clock starts, at most `CONCURRENT_STARTS` at once.
/// Index `i` of the result is user `vus.start + i`.
pub(super) async fn set_up(ctx: &Arc<Ctx>, vus: std::ops::Range<u64>) -> Vec<Option<User>> {
    /// At most this many `on_start` hooks run at once.
    const CONCURRENT_STARTS: usize = 64;
    let first = vus.start;
    let mut users: Vec<Option<User>> = (vus.start..vus.end).map(|_| None).collect();
    let mut pending = vus;
    let mut running = JoinSet::new();
    loop {
        while running.len() < CONCURRENT_STARTS {
            let Some(vu) = pending.next() else { break };
            if !ctx.owns_user(vu) {
                // Another shard's user: none of this run's.
                continue;
            }
            let ctx = ctx.clone();
            running.spawn(async move { (vu, start_user(&ctx, vu).await) });
        }
        match running.join_next().await {
            Some(Ok((vu, user))) => users[(vu - first) as usize] = user,
            Some(Err(_)) => {}
            None => break,
        }
    }
    users
}

/// How an iteration begins: whether it counts as a taken arrival (engine workers take and
/// start in one step), whether it started late (missed), and the instant it was due.
pub(super) struct Begin {
    pub(super) taken: bool,
    pub(super) late: bool,
    pub(super) due: Option<Instant>,
}

impl Begin {
    /// Records the iteration's start, in one visit to the recorder.
    fn record(&self, ctx: &Ctx, task: usize) {
        let now = Instant::now();
        ctx.recorder.record(task, now, |d| {
            d.counts.taken += self.taken as u64;
            d.counts.started += 1;
            d.counts.missed += self.late as u64;
            if let Some(due) = self.due {
                d.began_late(now.saturating_duration_since(due).as_micros() as u64);
            }
        });
    }
}

pub(super) async fn open_worker(ctx: Arc<Ctx>, user: User) {
    let Model::Open { schedule, sent, .. } = &ctx.model else {
        return;
    };
    let clock = ctx.clock();
    // One registration with the token for the worker's life: a fresh `cancelled()` per request
    // would take the token's lock, shared by every worker, on every request.
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    // An arrival taken and not sent is counted as unsent when the run ends (taken - started),
    // if it was due before the run stopped: a worker takes its next arrival ahead of time.
    let give_up = |task: usize, due_s: f64| {
        if ctx.stop.at().is_none_or(|at| due_s < at) {
            ctx.recorder
                .record(task, Instant::now(), |d| d.counts.taken += 1);
        }
    };
    loop {
        if ctx.stop.is_cancelled() {
            break;
        }
        let next = super::lock(schedule).next();
        let Some(arrival) = next else { break };
        let due = clock.start + Duration::from_secs_f64(arrival.due);
        let task = ctx.mix.pick(arrival.index);
        let now = Instant::now();
        let late = now > due + LATE;
        if due > now {
            tokio::select! {
                biased;
                _ = pacer::until(due) => {}
                _ = &mut stopped => {
                    give_up(task, arrival.due);
                    break;
                }
            }
        }
        if Instant::now() >= clock.send_until || ctx.stop.is_cancelled() {
            // Due before the planned end, but the generator got to it too late.
            give_up(task, arrival.due);
            break;
        }
        let begin = Begin {
            taken: true,
            late,
            due: Some(due),
        };
        if let Some(sent) = sent {
            sent.sent(arrival.index, task);
        }
        // Biased (polled in order): no random draw per iteration to pick a branch.
        tokio::select! {
            biased;
            go_on = iteration(&ctx, &user, arrival.index, task, begin) => {
                if !go_on { break }
            }
            _ = &mut stopped => break,
        }
    }
}

/// Starts each closed-model user when the profile first wants it (a ramp of 10,000 users
/// starts them over the ramp, not all at once), and waits for them. `ready`: the users set up
/// before the clock started (`None`: that one takes no part). Aborting this task aborts every
/// user.
pub(super) async fn closed_users(ctx: Arc<Ctx>, ready: Vec<Option<User>>) {
    let Model::Closed { users, .. } = &ctx.model else {
        return;
    };
    let clock = ctx.clock();
    let mut ready = ready.into_iter();
    let mut started = JoinSet::new();
    for vu in 0..ctx.model.peak_users() {
        let prepared = ready.next();
        if matches!(prepared, Some(None)) || !ctx.owns_user(vu) {
            continue;
        }
        // Levels are reached in order: user `vu + 1` is never wanted before user `vu`.
        let Some(t) = users.next_time_above(vu as f64, 0.0) else {
            break;
        };
        if t >= ctx.duration {
            break;
        }
        let at = clock.start + Duration::from_secs_f64(t);
        if at > Instant::now() {
            tokio::select! {
                _ = sleep_until(at.into()) => {}
                _ = ctx.stop.cancelled() => break,
            }
        }
        started.spawn(closed_worker(ctx.clone(), vu, prepared.flatten()));
    }
    while started.join_next().await.is_some() {}
}

/// Users wanted from the start: set up before the clock starts.
pub(super) fn wanted_at_start(ctx: &Ctx) -> u64 {
    match &ctx.model {
        Model::Open { connections, .. } => *connections as u64,
        Model::Closed { users, .. } => (0..ctx.model.peak_users())
            .take_while(|&vu| users.next_time_above(vu as f64, 0.0) == Some(0.0))
            .count() as u64,
    }
}

async fn closed_worker(ctx: Arc<Ctx>, vu: u64, user: Option<User>) {
    let Model::Closed {
        users,
        think,
        iterations,
        budget,
        ended,
    } = &ctx.model
    else {
        return;
    };
    let user = match user {
        Some(u) => u,
        // Wanted later in the run: its set-up is part of the ramp.
        None => match start_user(&ctx, vu).await {
            Some(u) => u,
            None => return,
        },
    };
    let clock = ctx.clock();
    let level = vu as f64;
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    let mut active = false;
    // Each user's own draws of a random think time, the same from run to run.
    let mut rng = vu ^ 0x005E_ED0F_7A11_u64;
    loop {
        let t = clock.start.elapsed().as_secs_f64();
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
            let at = clock.start + Duration::from_secs_f64(wake.min(ctx.duration));
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
        if let Some(b) = *budget {
            if iter >= b {
                // The iterations are all given out: this user is done. The last to end
                // ends the run (none at all: ended at once).
                if b == 0 {
                    ctx.stop_now();
                }
                break;
            }
        }
        let task = ctx.mix.pick(iter);
        let begin = Begin {
            taken: true,
            late: false,
            due: None,
        };
        // The clock is read only for a paced wait, which is what the iteration left of it.
        let began = think.pace.map(|_| Instant::now());
        // Boxed: an iteration's state (the request in flight, the exchange's futures) is about
        // 1.5 KiB; inline it would stay in every user's task while the user thinks, and a run
        // may hold tens of thousands of thinking users.
        let went = tokio::select! {
            biased;
            go_on = Box::pin(iteration(&ctx, &user, iter, task, begin)) => go_on,
            _ = &mut stopped => false,
        };
        if !went {
            break;
        }
        if budget.is_some_and(|b| ended.fetch_add(1, Ordering::AcqRel) + 1 == b) {
            // The last of the run's iterations has ended: nothing is in flight any more.
            ctx.stop_now();
            break;
        }
        let wait = match user.session.take_wait() {
            Some(chosen) => chosen,
            None => {
                let draw = if think.max > think.min {
                    rng = splitmix(rng);
                    (rng >> 11) as f64 / (1u64 << 53) as f64
                } else {
                    0.0
                };
                think.after(began.map_or(Duration::ZERO, |b| b.elapsed()), draw)
            }
        };
        // Without think time, a user whose target refuses connections would spin: pause
        // briefly so the errors are counted without burning the CPU the run measures.
        let refused = matches!(ctx.bodies[task], Body::Engine(_))
            && !user
                .session
                .client
                .try_lock()
                .is_ok_and(|c| c.has_connection());
        if !wait.is_zero() || refused {
            let pause = if wait.is_zero() {
                Duration::from_millis(10)
            } else {
                wait
            };
            // Thinking past the planned end would hold the run open for nothing.
            tokio::select! {
                biased;
                _ = tokio::time::sleep(pause) => {}
                _ = sleep_until(clock.planned_end.into()) => break,
                _ = &mut stopped => break,
            }
        }
    }
    if active {
        ctx.recorder.active_users.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one iteration of `task` for `user`. Returns false when the run should end for this
/// worker (a unique feeder ran out).
async fn iteration(ctx: &Ctx, user: &User, iter: u64, task: usize, begin: Begin) -> bool {
    let row = match &ctx.feeder {
        Some(f) => match f.row(iter) {
            Some(r) => Some(r),
            None => {
                if begin.taken {
                    ctx.recorder
                        .record(task, Instant::now(), |d| d.counts.taken += 1);
                }
                ctx.stop.exhaust();
                ctx.stop_now();
                return false;
            }
        },
        None => None,
    };
    let values = Values {
        vu: user.vu(),
        iter,
        row,
        user: user.values(ctx),
    };
    begin.record(ctx, task);
    match &ctx.bodies[task] {
        Body::Engine(requests) => {
            let mut client = user.session.client.lock().await;
            for (ri, step) in requests.iter().enumerate() {
                let req = &step.request;
                // Only the first request of an iteration has a due instant; the next ones
                // start when the previous answered.
                let from = match begin.due {
                    Some(d) if ri == 0 => d,
                    _ => Instant::now(),
                };
                let keep = Keep {
                    body: req.check.needs_body(),
                    headers: false,
                };
                let ex = exchange(
                    ctx,
                    &mut client,
                    from,
                    req.timeout,
                    keep,
                    req.max_redirects,
                    || req.build(&values, &ctx.target),
                )
                .await;
                let failed = ex.outcome.is_err();
                let last = ri + 1 == requests.len();
                ex.record(
                    ctx,
                    (task, step.slot),
                    &req.check,
                    &values,
                    last || failed,
                    || req.url(&values),
                );
                if failed {
                    // The rest of the iteration depends on this request having been answered.
                    break;
                }
            }
        }
        Body::Python => {
            let py = ctx
                .python
                .as_ref()
                .expect("a plan with a python task has a Python side");
            let start = ctx.clock().start;
            let due_s = begin
                .due
                .map(|d| d.saturating_duration_since(start).as_secs_f64());
            let row = row.map(<[String]>::to_vec);
            let done = py
                .ask(&user.session, Work::Task(task), iter, due_s, row)
                .await;
            let now = Instant::now();
            match done {
                Done::Ran | Done::Started(_) => {
                    ctx.recorder.record(task, now, |d| d.counts.iterations += 1);
                }
                Done::Raised => ctx.recorder.record(task, now, |d| {
                    d.exception();
                    d.counts.iterations += 1;
                }),
                // The run ended under it: started and never ended, so cancelled.
                Done::Cancelled => {}
            }
        }
    }
    true
}

/// One step of SplitMix64: a small, good generator for think-time draws.
fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE5_E9B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

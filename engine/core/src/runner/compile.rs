//! From a plan to what a run needs: requests compiled against the target and the template
//! scope, the exact task mix, the model with its schedule, the recorder; and the checks that
//! refuse a plan before anything is sent.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{Body, Ctx, FeedRows, Model, Progress, Step, Think};
use crate::error::{Error, Result};
use crate::http::{CompiledRequest, Target};
use crate::measure::metrics::Recorder;
use crate::measure::names::Names;
use crate::plan::profile::Profile;
use crate::plan::schedule::{Arrivals, Mix, Schedule};
use crate::plan::template::Scope;
use crate::plan::{request_name, ArrivalKind, Load, Plan, TaskPath};
use crate::runner::python::PythonSide;

pub(super) struct Compiled {
    pub(super) ctx: Ctx,
    /// The plan's tasks, then the hooks counted beside them (`on_start`).
    pub(super) names: Vec<String>,
    /// Users (closed model) or connections (open model) at the peak.
    pub(super) users: u64,
}

pub(super) fn compile(plan: &Plan, threads: usize) -> Result<Compiled> {
    plan.validate()?;
    let target = Target::of_plan(plan)?;
    let names = plan.entry_names();
    let named = Names::new(names.clone(), plan.max_request_names as usize);
    let bodies = compile_bodies(plan, &target, &named)?;
    let weights: Vec<u32> = plan.tasks.iter().map(|t| t.weight).collect();
    let mix = Mix::new(&weights)?;
    let shard = plan.shard.map_or((0, 1), |s| (s.index, s.count));
    let (model, duration) = build_model(plan, shard)?;
    let drain_limit = drain_limit(plan, &bodies);
    let users = model.peak_users();
    let python = if plan.python() {
        let side = PythonSide::new(plan.hooks.clone())
            .map_err(|e| Error::plan("hooks", format!("cannot reach Python: {e}")))?;
        Some(side)
    } else {
        None
    };
    let ctx = Ctx {
        clock: OnceLock::new(),
        duration,
        drain_limit,
        default_timeout: Duration::from_secs_f64(plan.timeout_s),
        trace: plan.trace,
        redirect_defaults: plan.redirect_defaults(),
        shards: shard.1 as f64,
        shard,
        start_at: plan.shard.and_then(|s| s.start_at),
        from_s: plan.shard.map_or(0.0, |s| s.from_s),
        target,
        bodies,
        mix,
        model,
        feeder: plan.feeder.as_ref().map(|f| FeedRows {
            rows: f.rows.clone(),
            mode: f.mode,
            seed: f.seed,
        }),
        user_vars: plan.user_vars.clone(),
        recorder: Recorder::new(names.len(), duration, threads)
            .keeping(plan.keep_slowest, plan.keep_sample),
        names: named,
        stop: super::Stop::default(),
        python,
        request_log: std::env::var_os(super::TEST_REQUEST_LOG)
            // Appended to: a distributed run's agents write theirs to the same file.
            .and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
            })
            .map(std::sync::Mutex::new),
    };
    Ok(Compiled { ctx, names, users })
}

/// Each task's body: its requests compiled against the target and the template scope (the
/// feeder's columns, per-user values and what on_start sets, the plan's vars), or Python.
fn compile_bodies(plan: &Plan, target: &Target, names: &Names) -> Result<Vec<Body>> {
    // A user's values: the plan's per-user values, and what its on_start sets.
    let user_value_names: Vec<String> = plan
        .user_vars
        .iter()
        .flat_map(|m| m.keys().cloned())
        .chain(plan.hooks.values.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let columns = plan
        .feeder
        .as_ref()
        .map(|f| f.columns.clone())
        .unwrap_or_default();
    let scope = Scope::new(&columns, &user_value_names, &plan.vars);
    let mut bodies = Vec::new();
    for (ti, t) in plan.tasks.iter().enumerate() {
        bodies.push(match t.path {
            TaskPath::Python => Body::Python,
            TaskPath::Engine => {
                let mut reqs = Vec::new();
                for (ri, r) in t.requests.iter().enumerate() {
                    let at = format!("tasks[{ti}].requests[{ri}]");
                    let mut request =
                        CompiledRequest::compile(r, &scope, target, plan.timeout_s, &at)?;
                    request.max_redirects = crate::plan::redirects(
                        r.follow_redirects,
                        r.max_redirects,
                        plan.redirect_defaults(),
                    );
                    let name = request_name(r.name.as_deref(), &r.method, &r.path);
                    reqs.push(Step {
                        request,
                        slot: names.slot(ti, &name),
                    });
                }
                Body::Engine(reqs)
            }
        });
    }
    Ok(bodies)
}

/// An open model's arrivals of the plan's shard (from its `from_s` and `from_index`) due
/// before `until_s` seconds into the run, per task: what a slice was due to send by then.
/// `None` for a closed model.
pub fn arrivals_before(plan: &Plan, until_s: f64) -> Result<Option<Vec<u64>>> {
    let weights: Vec<u32> = plan.tasks.iter().map(|t| t.weight).collect();
    let mix = Mix::new(&weights)?;
    let shard = plan.shard.map_or((0, 1), |s| (s.index, s.count));
    let (model, _) = build_model(plan, shard)?;
    Ok(match model {
        Model::Open { schedule, .. } => {
            let mut schedule = schedule.into_inner().unwrap_or_else(|e| e.into_inner());
            Some(schedule.finish_before(until_s, &mix, weights.len()))
        }
        Model::Closed { .. } => None,
    })
}

/// The load model (an open model's schedule of this shard, or a closed model's users) and
/// the run's planned duration.
fn build_model(plan: &Plan, shard: (u64, u64)) -> Result<(Model, f64)> {
    Ok(match &plan.load {
        Load::Open {
            stages,
            arrivals,
            seed,
            connections,
        } => {
            let profile = Profile::new(stages).map_err(|e| e.under("load."))?;
            let kind = match arrivals {
                ArrivalKind::Uniform => Arrivals::Uniform,
                ArrivalKind::Poisson => Arrivals::Poisson { seed: *seed },
            };
            let duration = profile.duration();
            let (from_s, from_index) = plan.shard.map_or((0.0, 0), |s| (s.from_s, s.from_index));
            let schedule =
                Schedule::new(profile.clone(), kind, shard)?.starting_at(from_s, from_index);
            (
                Model::Open {
                    schedule: Mutex::new(schedule),
                    connections: *connections,
                    arrivals: profile,
                    // Counted only where a coordinator reads it: not on a local run's path.
                    sent: plan.shard.map(|_| Progress::new(plan.tasks.len())),
                },
                duration,
            )
        }
        Load::Closed {
            stages,
            think_s,
            think_max_s,
            pace_s,
            max_iterations,
        } => {
            let profile = Profile::new(stages).map_err(|e| e.under("load."))?;
            let duration = profile.duration();
            (
                Model::Closed {
                    users: profile,
                    think: Think {
                        min: Duration::from_secs_f64(*think_s),
                        max: Duration::from_secs_f64(think_max_s.unwrap_or(*think_s)),
                        pace: pace_s.map(Duration::from_secs_f64),
                    },
                    iterations: AtomicU64::new(0),
                    budget: max_iterations.map(|n| share_of(n, shard)),
                    ended: AtomicU64::new(0),
                },
                duration,
            )
        }
    })
}

/// A slice's share of `n` iterations: as even as whole numbers allow, the first slices
/// taking one more.
fn share_of(n: u64, (index, count): (u64, u64)) -> u64 {
    let count = count.max(1);
    n / count + u64::from(index < n % count)
}

/// How long the run waits after its planned end for what is in flight: the longest request
/// timeout, capped by `max_drain_s` (Python bodies may give any request any timeout: for them
/// only the cap holds).
fn drain_limit(plan: &Plan, bodies: &[Body]) -> Duration {
    let longest_timeout = bodies
        .iter()
        .flat_map(|b| match b {
            Body::Engine(reqs) => reqs.as_slice(),
            Body::Python => &[],
        })
        .map(|s| s.request.timeout)
        .fold(Duration::from_secs_f64(plan.timeout_s), Duration::max);
    // Python task bodies may give any request its own timeout: for them only the cap holds.
    let cap = Duration::from_secs_f64(plan.max_drain_s);
    if bodies.iter().any(|b| matches!(b, Body::Python)) {
        cap
    } else {
        longest_timeout.min(cap)
    }
}

/// Descriptors a process needs beyond one per connection: the runtime, the run directory,
/// Python and its imports.
const SPARE_DESCRIPTORS: u64 = 128;

/// Raises this process's descriptor limit to the most it may have, and refuses up front a run
/// whose users or connections need more than that: one clear line before the run, not
/// thousands of failed connections during it.
pub(super) fn check_descriptors(users: u64) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tasks: &str, extra: &str) -> Plan {
        Plan::from_json(&format!(
            r#"{{"target": "http://127.0.0.1:9",
                "load": {{"model": "open", "stages": [{{"kind": "constant", "rate": 10, "duration_s": 1}}]}},
                "tasks": {tasks}{extra}}}"#
        ))
        .unwrap()
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

    #[test]
    fn each_task_keeps_its_own_path_and_on_start_is_counted_beside_them() {
        let mixed = r#"[{"name": "a", "requests": [{"path": "/{{token}}"}]},
                        {"name": "b", "path": "python"}]"#;
        let c = compile(
            &plan(
                mixed,
                r#", "hooks": {"on_start": true, "values": ["token"]}"#,
            ),
            1,
        )
        .unwrap();
        assert_eq!(c.names, ["a", "b", "on_start"]);
        assert!(matches!(c.ctx.bodies[0], Body::Engine(_)));
        assert!(matches!(c.ctx.bodies[1], Body::Python));
        assert_eq!(c.ctx.hook_entry(), 2);
        // Without on_start's value, the template names something nobody sets.
        let e = compile(&plan(mixed, ""), 1).err().unwrap().to_string();
        assert!(
            e.contains("token") && e.contains("tasks[0].requests[0]"),
            "{e}"
        );
        let engine_only = compile(
            &plan(r#"[{"name": "a", "requests": [{"path": "/"}]}]"#, ""),
            1,
        )
        .unwrap();
        assert!(engine_only.ctx.python.is_none() && engine_only.names == ["a"]);
    }

    #[test]
    fn slices_share_the_iterations_out_to_the_last_one() {
        for n in [1u64, 2, 7, 45, 1000] {
            for count in 1u64..6 {
                let shares: Vec<u64> = (0..count).map(|i| share_of(n, (i, count))).collect();
                assert_eq!(
                    shares.iter().sum::<u64>(),
                    n,
                    "{n} over {count}: {shares:?}"
                );
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
        assert_eq!(share_of(45, (0, 2)), 23);
        assert_eq!(share_of(1, (1, 2)), 0);
    }
}

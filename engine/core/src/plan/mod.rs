//! The plan: everything a run needs, as JSON. Python builds it with pydantic models that mirror
//! these structs; serde reads it here. `deny_unknown_fields` everywhere so a typo is an error
//! that names the field rather than a silently ignored option.

pub mod check;
pub mod profile;
pub mod schedule;
pub mod template;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One stage of a profile as written in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage {
    /// `rate` per second (or users) for `duration_s`.
    Constant { rate: f64, duration_s: f64 },
    /// Linear change from `from` to `to` over `duration_s`.
    Ramp { from: f64, to: f64, duration_s: f64 },
    /// `steps` equal plateaus from `from` to `to` (inclusive) over `duration_s`.
    Step {
        from: f64,
        to: f64,
        steps: u32,
        duration_s: f64,
    },
    /// Holds `base`, jumps to `peak` for `peak_s` in the middle of `duration_s`, back to `base`.
    Spike {
        base: f64,
        peak: f64,
        peak_s: f64,
        duration_s: f64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default = "default_name")]
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8080`. Request paths are appended to it.
    pub target: String,
    pub load: Load,
    pub tasks: Vec<TaskSpec>,
    /// Rows handed out one per iteration.
    #[serde(default)]
    pub feeder: Option<Feeder>,
    /// Per-virtual-user values: user `i` sees `user_vars[i % len]`.
    #[serde(default)]
    pub user_vars: Vec<BTreeMap<String, String>>,
    /// Values shared by every iteration.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Default per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// The longest a new connection may take to open (name lookup, TCP and TLS handshakes),
    /// within the request's own timeout: past it the request fails as `dns`, `connect` or
    /// `tls`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// Accept self-signed or otherwise unverifiable TLS certificates.
    #[serde(default)]
    pub insecure: bool,
    /// Run only this slice of the arrival schedule (distributed runs).
    #[serde(default)]
    pub shard: Option<Shard>,
    /// The longest wait after the planned end for requests still in flight (the drain is
    /// also bounded by the longest request timeout). Still in flight after it: cancelled.
    #[serde(default = "default_max_drain")]
    pub max_drain_s: f64,
    /// The most virtual users (closed model) or connections (open model) a plan may ask
    /// for: a guard against a typo that would need unbounded memory. Raise it on purpose.
    #[serde(default = "default_max_users")]
    pub max_users: u64,
    /// Per-user hooks written in Python (`on_start`, `on_stop`).
    #[serde(default)]
    pub hooks: Hooks,
    /// The HTTP version spoken to the target.
    #[serde(default)]
    pub http: HttpVersion,
    /// HTTP/2: the most users (closed model) or workers (open model) whose requests share
    /// one connection as concurrent streams.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// The most distinct request names measured apart; past it, new names are measured
    /// together under `other` (a test must not explode its own memory, nor a Prometheus).
    #[serde(default = "default_max_request_names")]
    pub max_request_names: u32,
    /// Whether redirects are followed (each request may say otherwise).
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    /// The most redirects one request follows; past it the request fails (`redirect`).
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// The hosts redirects may lead to, as an agent's or serve mode's allow-list says
    /// (`host`, `host:port` globs, `loopback`; empty: loopback only); `None`: any. A hop
    /// elsewhere fails (`redirect`) and nothing is sent there.
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// The share of requests sent with a W3C trace context (`traceparent`), from 0 (none) to
    /// 1 (every one); a request that sets its own keeps it.
    #[serde(default = "default_trace")]
    pub trace: f64,
    /// How many of its slowest requests each request name keeps per second, with their
    /// context (0: none).
    #[serde(default = "default_keep_slowest")]
    pub keep_slowest: u32,
    /// How many requests of each name are kept per second as a uniform sample (0: none).
    #[serde(default = "default_keep_sample")]
    pub keep_sample: u32,
}

/// The most requests a name may keep per second, slowest or sampled.
pub const MAX_KEPT: u32 = 1000;

/// Which HTTP the engine speaks to the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1, one keep-alive connection per user (or per open-model worker).
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2: over TLS by ALPN, over cleartext with prior knowledge (h2c).
    #[serde(rename = "2")]
    Http2,
    /// HTTP/2 where the server offers it by ALPN (TLS); HTTP/1.1 otherwise (cleartext too).
    #[serde(rename = "auto")]
    Auto,
}

/// The most streams one HTTP/2 connection may be asked to carry.
pub const MAX_STREAMS_LIMIT: u32 = 10_000;

/// A scenario's per-user hooks. They run in Python, on the user's own connection, when the
/// engine asks: `on_start` before the user's first iteration (before the run's clock starts
/// for users wanted from the start), `on_stop` when the run ends or is stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub on_start: bool,
    #[serde(default)]
    pub on_stop: bool,
    /// Values each user's `on_start` sets (its attributes) for the user's engine requests:
    /// `{{name}}` in a template.
    #[serde(default)]
    pub values: Vec<String>,
    /// The longest one hook may take; a user whose `on_start` takes longer takes no part.
    #[serde(default = "default_hook_timeout")]
    pub timeout_s: f64,
}

fn default_hook_timeout() -> f64 {
    60.0
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_start: false,
            on_stop: false,
            values: Vec::new(),
            timeout_s: default_hook_timeout(),
        }
    }
}

/// `max_redirects` within `0..=MAX_REDIRECTS_LIMIT`.
pub fn redirects_in_range(at: &str, n: u32) -> Result<()> {
    let limit = crate::http::redirect::MAX_REDIRECTS_LIMIT;
    if n > limit {
        return Err(Error::plan(at, format!("{n} is out of range (0..{limit})")));
    }
    Ok(())
}

/// How many redirects a request follows: none if it (or, when it does not say, the plan)
/// says not to follow them; else its own `max_redirects` or the plan's.
pub fn redirects(follow: Option<bool>, max: Option<u32>, plan: (bool, u32)) -> u32 {
    if follow.unwrap_or(plan.0) {
        max.unwrap_or(plan.1)
    } else {
        0
    }
}

impl Plan {
    /// The plan's `follow_redirects` and `max_redirects`, for `redirects`.
    pub fn redirect_defaults(&self) -> (bool, u32) {
        (self.follow_redirects, self.max_redirects)
    }
}

/// The name the requests of `on_start` are counted under.
pub const ON_START: &str = "on_start";

/// The longest duration, timeout or think time a plan may give: a year.
pub const MAX_SECONDS: f64 = 366.0 * 86_400.0;

fn default_name() -> String {
    "run".to_string()
}
fn default_timeout() -> f64 {
    30.0
}
fn default_connect_timeout() -> f64 {
    crate::http::DEFAULT_CONNECT_TIMEOUT.as_secs_f64()
}
fn default_max_drain() -> f64 {
    10.0
}
pub const DEFAULT_MAX_USERS: u64 = 100_000;
fn default_max_users() -> u64 {
    DEFAULT_MAX_USERS
}
fn default_max_streams() -> u32 {
    100
}
fn default_max_request_names() -> u32 {
    1000
}
fn default_trace() -> f64 {
    1.0
}
fn default_keep_slowest() -> u32 {
    5
}
fn default_keep_sample() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_max_redirects() -> u32 {
    crate::http::redirect::DEFAULT_MAX_REDIRECTS
}
fn default_connections() -> u32 {
    256
}
fn default_weight() -> u32 {
    1
}
fn default_method() -> String {
    "GET".to_string()
}

/// Every default a plan's fields take when the plan leaves them out, by field (`connections`
/// of an open load, `hook_timeout_s` for `hooks.timeout_s`, `weight` of a task, `method` of a
/// request): what Python's plan models read, so each default is declared once, here.
pub fn defaults() -> serde_json::Value {
    serde_json::json!({
        "name": default_name(),
        "timeout_s": default_timeout(),
        "connect_timeout_s": default_connect_timeout(),
        "max_drain_s": default_max_drain(),
        "max_users": default_max_users(),
        "http": HttpVersion::default(),
        "max_streams": default_max_streams(),
        "max_request_names": default_max_request_names(),
        "follow_redirects": true,
        "max_redirects": default_max_redirects(),
        "insecure": false,
        "connections": default_connections(),
        "arrivals": ArrivalKind::default(),
        "seed": 0,
        "think_s": 0.0,
        "hook_timeout_s": default_hook_timeout(),
        "weight": default_weight(),
        "path": TaskPath::default(),
        "method": default_method(),
        "feed_mode": FeedMode::default(),
        "trace": default_trace(),
        "keep_slowest": default_keep_slowest(),
        "keep_sample": default_keep_sample(),
        "max_kept": MAX_KEPT,
    })
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// This slice keeps every `count`-th arrival (open model) or user (closed model) of the
    /// one global schedule, starting at `index`.
    pub index: u64,
    pub count: u64,
    /// The instant, seconds since the Unix epoch, at which the global schedule's 0 s falls:
    /// every slice of a distributed run starts its clock then. May lie in the past (a slice
    /// taken over from a lost agent).
    #[serde(default)]
    pub start_at: Option<f64>,
    /// The slice begins this many seconds into the schedule: arrivals due earlier are not
    /// its own (neither sent nor counted), and users start at the level the profile wants
    /// then.
    #[serde(default)]
    pub from_s: f64,
    /// Arrivals of the global schedule below this index are not its own (open model): a
    /// takeover starts from the first arrival the lost slice was not known to have sent.
    #[serde(default)]
    pub from_index: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalKind {
    #[default]
    Uniform,
    Poisson,
}

/// Open model: arrivals per second whatever the server does. Closed model: a number of virtual
/// users, each looping over tasks, waiting between iterations: `think_s`, or a time drawn
/// uniformly from `think_s` to `think_max_s`, or what is left of `pace_s` after the iteration
/// (iterations start `pace_s` apart, as Locust's `constant_pacing`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum Load {
    Open {
        stages: Vec<Stage>,
        #[serde(default)]
        arrivals: ArrivalKind,
        #[serde(default)]
        seed: u64,
        /// Connections (and so the most requests in flight). An arrival that finds them all busy
        /// waits, is counted as missed, and its latency still counts from when it was due.
        #[serde(default = "default_connections")]
        connections: u32,
    },
    Closed {
        /// Stage values are user counts.
        stages: Vec<Stage>,
        #[serde(default)]
        think_s: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        think_max_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pace_s: Option<f64>,
        /// At most this many iterations in all (every user's together; a distributed run's
        /// slices share them out): once they have all ended the run ends, before its
        /// duration if that comes first (Locust's `-i`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_iterations: Option<u64>,
    },
}

/// Where a task's iterations run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPath {
    /// Entirely in the engine, from the task's request templates.
    #[default]
    Engine,
    /// Python code per iteration (virtual users in the Python process) whose requests go
    /// through the engine's client; the task lists no requests.
    Python,
}

impl TaskPath {
    pub fn name(self) -> &'static str {
        match self {
            TaskPath::Engine => "engine",
            TaskPath::Python => "python",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub path: TaskPath,
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// The name its measurements are kept under; by default the method and the path as
    /// written, without its query (`GET /items/{{id}}`): see `request_name`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query, may hold `{{name}}` placeholders.
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw body (templated).
    #[serde(default)]
    pub body: Option<String>,
    /// JSON body (string values templated); sets `content-type: application/json`.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// A form body: `[name, value]` pairs (templated), sent urlencoded as
    /// `application/x-www-form-urlencoded`.
    #[serde(default)]
    pub form: Option<Vec<(String, String)>>,
    /// Basic authentication: `[user, password]` (templated), sent as `Authorization: Basic`.
    #[serde(default)]
    pub auth: Option<(String, String)>,
    /// Files to upload: the body is then `multipart/form-data`, `form`'s pairs its text
    /// fields, then these files.
    #[serde(default)]
    pub files: Option<Vec<FileSpec>>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Whether this request follows redirects (default: the plan's `follow_redirects`).
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    /// The most redirects this request follows (default: the plan's `max_redirects`).
    #[serde(default)]
    pub max_redirects: Option<u32>,
}

/// A file part of a multipart form: its content given, or a file on disk read as each
/// request is sent (never held whole in memory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The form field's name (templated).
    pub field: String,
    /// The file name sent (templated); default: the last part of `path`, else the field.
    #[serde(default)]
    pub filename: Option<String>,
    /// The content, as text (templated).
    #[serde(default)]
    pub content: Option<String>,
    /// A file on the machine that sends (relative to its working directory); its length is
    /// read when the plan is compiled.
    #[serde(default)]
    pub path: Option<String>,
    /// Default: `application/octet-stream`.
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Accepted status codes.
    #[serde(default)]
    pub status: Option<Vec<u16>>,
    /// Accepted inclusive range, e.g. `[200, 299]`.
    #[serde(default)]
    pub status_range: Option<(u16, u16)>,
    #[serde(default)]
    pub body_contains: Option<String>,
    /// `$.a.b[0].c` style path into a JSON body, compared with `json_equals`.
    #[serde(default)]
    pub json_path: Option<String>,
    #[serde(default)]
    pub json_equals: Option<serde_json::Value>,
    #[serde(default)]
    pub max_latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedMode {
    /// Row `k % n` for iteration `k`.
    #[default]
    Cycle,
    /// A seeded random row per iteration.
    Random,
    /// Each row once; the run ends when rows run out.
    Unique,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feeder {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    #[serde(default)]
    pub mode: FeedMode,
    #[serde(default)]
    pub seed: u64,
}

/// A number of seconds in a plan: finite, above 0 (or 0 when `zero_ok`), at most a year.
/// The message names the field and the value, whatever it is.
pub fn seconds(at: &str, v: f64, zero_ok: bool) -> Result<()> {
    let ok = v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v <= MAX_SECONDS;
    if !ok {
        let low = if zero_ok { ">= 0" } else { "> 0" };
        return Err(Error::plan(
            at,
            format!("must be {low} and at most {MAX_SECONDS} seconds (a year), got {v}"),
        ));
    }
    Ok(())
}

/// Names accepted as task names: they become hlog tags and Parquet values.
/// The longest request name.
pub const MAX_REQUEST_NAME: usize = 200;

/// The name a request's measurements are kept under: its own, or the method and the path as
/// written (placeholders unexpanded), without the query.
pub fn request_name(name: Option<&str>, method: &str, path: &str) -> String {
    match name {
        Some(n) => n.to_string(),
        None => {
            let path = path.split(['?', '#']).next().unwrap_or(path);
            format!("{} {path}", method.to_ascii_uppercase())
        }
    }
}

/// Why `name` cannot name a request (a name is fixed for the run: no `{{placeholder}}`).
pub fn request_name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("a request name cannot be empty".into())
    } else if name.len() > MAX_REQUEST_NAME {
        Some(format!(
            "a request name has at most {MAX_REQUEST_NAME} bytes"
        ))
    } else if name.contains("{{") {
        Some(format!(
            "request name {name:?} holds a placeholder: a name is fixed for the run (it would \
             make a new name per request); put the placeholder in the path and name the request"
        ))
    } else if name.chars().any(char::is_control) {
        Some(format!("request name {name:?} holds a control character"))
    } else {
        None
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
}

impl Plan {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::plan(
                format!("line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
        })
    }

    /// What a run of this plan counts under, in order: its tasks, then `on_start` when it has
    /// one (the entries; request names come after them).
    pub fn entry_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tasks.iter().map(|t| t.name.clone()).collect();
        if self.hooks.on_start {
            names.push(ON_START.to_string());
        }
        names
    }

    /// Whether any part of the plan runs in Python (a task body or a hook).
    pub fn python(&self) -> bool {
        self.hooks.on_start
            || self.hooks.on_stop
            || self.tasks.iter().any(|t| t.path == TaskPath::Python)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }

    /// Checks what serde cannot: names, counts, ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_STREAMS_LIMIT).contains(&self.max_streams) {
            return Err(Error::plan(
                "max_streams",
                format!(
                    "{} is out of range (1..{MAX_STREAMS_LIMIT})",
                    self.max_streams
                ),
            ));
        }
        if self.max_request_names == 0 {
            return Err(Error::plan("max_request_names", "must be >= 1"));
        }
        redirects_in_range("max_redirects", self.max_redirects)?;
        if !(0.0..=1.0).contains(&self.trace) {
            return Err(Error::plan(
                "trace",
                format!(
                    "{} is not a share: give 0 (none) to 1 (every request)",
                    self.trace
                ),
            ));
        }
        for (field, n) in [
            ("keep_slowest", self.keep_slowest),
            ("keep_sample", self.keep_sample),
        ] {
            if n > MAX_KEPT {
                return Err(Error::plan(
                    field,
                    format!("{n} is out of range (0..{MAX_KEPT})"),
                ));
            }
        }
        self.validate_tasks()?;
        seconds("timeout_s", self.timeout_s, false)?;
        seconds("connect_timeout_s", self.connect_timeout_s, false)?;
        seconds("max_drain_s", self.max_drain_s, false)?;
        seconds("hooks.timeout_s", self.hooks.timeout_s, false)?;
        if !self.hooks.on_start && !self.hooks.values.is_empty() {
            return Err(Error::plan(
                "hooks.values",
                "values come from on_start; the plan has none",
            ));
        }
        self.validate_load()?;
        self.validate_shard()?;
        self.validate_feeder()
    }

    /// Names unique and valid, engine tasks with requests and Python tasks without, request
    /// timeouts in range.
    fn validate_tasks(&self) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(Error::plan("tasks", "a plan needs at least one task"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if !valid_name(&t.name) {
                return Err(Error::plan(
                    format!("tasks[{i}].name"),
                    format!(
                        "{:?} is not a valid task name (letters, digits, _ - . : /, at most 64)",
                        t.name
                    ),
                ));
            }
            if !seen.insert(&t.name) {
                return Err(Error::plan(
                    format!("tasks[{i}].name"),
                    format!("{:?} is used by two tasks", t.name),
                ));
            }
            match t.path {
                TaskPath::Engine if t.requests.is_empty() => {
                    return Err(Error::plan(
                        format!("tasks[{i}].requests"),
                        "an engine task needs at least one request",
                    ));
                }
                TaskPath::Python if !t.requests.is_empty() => {
                    return Err(Error::plan(
                        format!("tasks[{i}].requests"),
                        "a python task sends its requests from Python; it lists none",
                    ));
                }
                _ => {}
            }
            if t.name == ON_START {
                return Err(Error::plan(
                    format!("tasks[{i}].name"),
                    "\"on_start\" names the requests of the per-user hook; choose another",
                ));
            }
            for (ri, r) in t.requests.iter().enumerate() {
                if let Some(why) = r.name.as_deref().and_then(request_name_problem) {
                    return Err(Error::plan(format!("tasks[{i}].requests[{ri}].name"), why));
                }
                if let Some(v) = r.timeout_s {
                    seconds(&format!("tasks[{i}].requests[{ri}].timeout_s"), v, false)?;
                }
                if let Some(n) = r.max_redirects {
                    redirects_in_range(&format!("tasks[{i}].requests[{ri}].max_redirects"), n)?;
                }
            }
        }
        Ok(())
    }

    /// Connections (open model) or users at the profile's peak (closed model) within
    /// `max_users`.
    fn validate_load(&self) -> Result<()> {
        match &self.load {
            Load::Open { connections, .. } => {
                if *connections == 0 {
                    return Err(Error::plan("load.connections", "must be >= 1"));
                }
                if *connections as u64 > self.max_users {
                    return Err(Error::plan(
                        "load.connections",
                        format!(
                            "{connections} connections is more than max_users ({}); \
                             raise max_users if you mean it",
                            self.max_users
                        ),
                    ));
                }
            }
            Load::Closed {
                think_s,
                think_max_s,
                pace_s,
                stages,
                max_iterations,
            } => {
                if *max_iterations == Some(0) {
                    return Err(Error::plan("load.max_iterations", "must be >= 1"));
                }
                seconds("load.think_s", *think_s, true)?;
                if let Some(max) = think_max_s {
                    seconds("load.think_max_s", *max, true)?;
                    if max < think_s {
                        return Err(Error::plan(
                            "load.think_max_s",
                            format!("{max} is less than think_s ({think_s})"),
                        ));
                    }
                }
                if let Some(pace) = pace_s {
                    seconds("load.pace_s", *pace, true)?;
                    if *think_s != 0.0 || think_max_s.is_some() {
                        return Err(Error::plan(
                            "load.pace_s",
                            "paced iterations have no think time: give pace_s or think_s, not both",
                        ));
                    }
                }
                let peak = profile::Profile::new(stages)
                    .map_err(|e| e.under("load."))?
                    .peak();
                if peak > self.max_users as f64 {
                    return Err(Error::plan(
                        "load.stages",
                        format!(
                            "asks for {peak} virtual users, more than max_users ({}); \
                             raise max_users if you mean it",
                            self.max_users
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_shard(&self) -> Result<()> {
        let Some(sh) = &self.shard else {
            return Ok(());
        };
        if !(sh.from_s.is_finite() && sh.from_s >= 0.0) {
            return Err(Error::plan(
                "shard.from_s",
                format!("must be a number of seconds >= 0, got {}", sh.from_s),
            ));
        }
        if sh.start_at.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(Error::plan(
                "shard.start_at",
                "must be seconds since the Unix epoch",
            ));
        }
        if sh.count == 0 || sh.index >= sh.count {
            return Err(Error::plan(
                "shard",
                format!("index must be < count, got {}/{}", sh.index, sh.count),
            ));
        }
        Ok(())
    }

    fn validate_feeder(&self) -> Result<()> {
        let Some(f) = &self.feeder else {
            return Ok(());
        };
        if f.rows.is_empty() {
            return Err(Error::plan(
                "feeder.rows",
                "a feeder needs at least one row",
            ));
        }
        for (i, r) in f.rows.iter().enumerate() {
            if r.len() != f.columns.len() {
                return Err(Error::plan(
                    format!("feeder.rows[{i}]"),
                    format!("has {} values for {} columns", r.len(), f.columns.len()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str) -> Result<Plan> {
        let p = Plan::from_json(json)?;
        p.validate()?;
        Ok(p)
    }

    fn with(tasks: &str, load: &str, extra: &str) -> String {
        format!(r#"{{"target": "http://127.0.0.1:1", "load": {load}, "tasks": {tasks}{extra}}}"#)
    }

    const OPEN: &str =
        r#"{"model": "open", "stages": [{"kind": "constant", "rate": 1, "duration_s": 1}]}"#;
    const ONE: &str = r#"[{"name": "a", "requests": [{"path": "/"}]}]"#;

    fn error_of(json: &str) -> String {
        plan(json).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_plan_takes_its_defaults() {
        let p = plan(&with(ONE, OPEN, "")).unwrap();
        assert_eq!(
            (p.timeout_s, p.max_drain_s, p.max_users),
            (30.0, 10.0, 100_000)
        );
        assert!(matches!(
            p.load,
            Load::Open {
                connections: 256,
                ..
            }
        ));
        assert_eq!(p.tasks[0].requests[0].method, "GET");
        assert!(!p.python());
    }

    #[test]
    fn a_typo_names_its_line_and_column() {
        let e = error_of("{\n  \"target\": \"x\",\n  \"lod\": {}\n}");
        assert!(e.contains("line 3 column"), "{e}");
        assert!(e.contains("lod"), "{e}");
    }

    #[test]
    fn every_broken_field_is_named() {
        let two = r#"[{"name": "a", "requests": [{"path": "/"}]}, {"name": "a", "requests": [{"path": "/"}]}]"#;
        let hook_name = r#"[{"name": "on_start", "requests": [{"path": "/"}]}]"#;
        let closed =
            r#"{"model": "closed", "stages": [{"kind": "constant", "rate": 2, "duration_s": 1}]}"#;
        for (json, at) in [
            (with(two, OPEN, ""), "tasks[1].name"),
            (with(hook_name, OPEN, ""), "tasks[0].name"),
            (
                with(ONE, OPEN, r#", "hooks": {"values": ["token"]}"#),
                "hooks.values",
            ),
            (
                with(
                    r#"[{"name": "a b", "requests": [{"path": "/"}]}]"#,
                    OPEN,
                    "",
                ),
                "tasks[0].name",
            ),
            (with(r#"[{"name": "a"}]"#, OPEN, ""), "tasks[0].requests"),
            (with(ONE, OPEN, r#", "timeout_s": 1e300"#), "timeout_s"),
            (with(ONE, OPEN, r#", "max_drain_s": 0"#), "max_drain_s"),
            (
                with(
                    ONE,
                    closed,
                    r#", "shard": {"index": 0, "count": 2, "from_s": -1}"#,
                ),
                "shard.from_s",
            ),
            (
                with(ONE, OPEN, r#", "shard": {"index": 2, "count": 2}"#),
                "shard",
            ),
            (with(ONE, closed, r#", "max_users": 1"#), "load.stages"),
            (
                with(
                    ONE,
                    OPEN,
                    r#", "feeder": {"columns": ["a", "b"], "rows": [["1"]]}"#,
                ),
                "feeder.rows[0]",
            ),
        ] {
            let e = error_of(&json);
            assert!(e.contains(&format!("at {at}")), "{at}: {e}");
        }
    }

    #[test]
    fn seconds_must_be_finite_positive_and_at_most_a_year() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_SECONDS * 2.0] {
            let e = seconds("x", bad, false).unwrap_err().to_string();
            assert!(
                e.contains("at x") && e.contains(&format!("got {bad}")),
                "{e}"
            );
        }
        assert!(seconds("x", 0.0, true).is_ok());
        assert!(seconds("x", MAX_SECONDS, false).is_ok());
    }
}

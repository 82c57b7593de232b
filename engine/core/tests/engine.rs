//! The engine end to end in Rust alone: a real run against the built-in target over loopback.

use std::time::Duration;

use loadpilot_core::plan::Plan;
use loadpilot_core::rundir::{read_hlog, LATENCY_LOG, METRICS_JSONL};
use loadpilot_core::runner::{build_runtime, start};
use loadpilot_core::target::{self, TargetConfig};

fn plan(target: &str, body: &str) -> Plan {
    Plan::from_json(&format!(r#"{{"target": "{target}", {body}}}"#)).unwrap()
}

#[test]
fn a_short_open_run_sends_its_schedule_and_writes_its_directory() {
    let rt = build_runtime(2).unwrap();
    let server = target::start(rt.handle(), TargetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("lp-core-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = plan(
        &server.url(),
        r#""load": {"model": "open", "stages": [{"kind": "constant", "rate": 200, "duration_s": 2}]},
           "tasks": [{"name": "a", "weight": 3, "requests": [{"path": "/"}]},
                     {"name": "b", "requests": [{"path": "/json", "expect": {"json_path": "$.items[1].id", "json_equals": 2}}]}]"#,
    );
    let run = start(rt.handle(), 2, p, dir.clone()).unwrap();
    assert!(run.wait(Duration::from_secs(20)));
    let s = run.summary().unwrap();
    assert_eq!(s.overall.requests, 400);
    assert_eq!(s.overall.errors, 0, "{:?}", s.overall.errors_by_kind);
    assert_eq!(s.tasks[0].stats.requests, 300);
    assert_eq!(s.tasks[1].stats.requests, 100);
    let logged: u64 = read_hlog(&dir.join(LATENCY_LOG))
        .unwrap()
        .iter()
        .map(|e| e.hist.len())
        .sum();
    assert_eq!(logged, 400);
    let rows = std::fs::read_to_string(dir.join(METRICS_JSONL)).unwrap();
    assert_eq!(rows.lines().count(), 4, "two intervals of two tasks");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_target_is_counted_as_connect_errors() {
    let rt = build_runtime(2).unwrap();
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("lp-core-test-unreach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = plan(
        &format!("http://127.0.0.1:{port}"),
        r#""load": {"model": "open", "stages": [{"kind": "constant", "rate": 50, "duration_s": 1}]},
           "tasks": [{"name": "a", "requests": [{"path": "/"}]}]"#,
    );
    let run = start(rt.handle(), 2, p, dir.clone()).unwrap();
    assert!(run.wait(Duration::from_secs(20)));
    let s = run.summary().unwrap();
    assert_eq!(s.overall.requests, 50);
    assert_eq!(s.overall.errors_by_kind["connect"], 50);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The engine end to end in Rust alone: a real run against the built-in target over loopback.

use std::time::Duration;

use loadpilot_core::measure::rundir::{read_hlog, LATENCY_LOG, METRICS_JSONL};
use loadpilot_core::measure::summary::Summary;
use loadpilot_core::plan::Plan;
use loadpilot_core::runner::{build_runtime, start};
use loadpilot_core::testbed::{self, TargetConfig};

fn plan(target: &str, body: &str) -> Plan {
    Plan::from_json(&format!(r#"{{"target": "{target}", {body}}}"#)).unwrap()
}

#[test]
fn a_short_open_run_sends_its_schedule_and_writes_its_directory() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("lp-core-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = plan(
        &server.url(),
        r#""load": {"model": "open", "stages": [{"kind": "constant", "rate": 200, "duration_s": 2}]},
           "tasks": [{"name": "a", "weight": 3, "requests": [{"path": "/?x={{__vu}}"}]},
                     {"name": "b", "requests": [{"path": "/json", "name": "the json", "expect": {"json_path": "$.items[1].id", "json_equals": 2}},
                                                {"path": "/"}]}]"#,
    );
    let run = start(rt.handle(), 2, p, dir.clone()).unwrap();
    assert!(run.wait(Duration::from_secs(20)));
    let s = run.summary().unwrap();
    assert_eq!(s.overall.requests, 500);
    assert_eq!(s.overall.errors, 0, "{:?}", s.overall.errors_by_kind);
    assert_eq!(s.tasks[0].stats.requests, 300);
    assert_eq!(s.tasks[1].stats.requests, 200);
    // Per request name: its own or the method and the path as written, without the query.
    let named: Vec<(&str, &str, u64)> = s
        .requests
        .iter()
        .map(|r| (r.task.as_str(), r.name.as_str(), r.stats.requests))
        .collect();
    assert_eq!(
        named,
        [
            ("a", "GET /", 300),
            ("b", "the json", 100),
            ("b", "GET /", 100)
        ]
    );
    // The logs hold each task's histograms, and apart, each request name's.
    let mut logged = std::collections::BTreeMap::<String, u64>::new();
    let requests_log = dir.join(loadpilot_core::measure::rundir::REQUESTS_LATENCY_LOG);
    for e in read_hlog(&dir.join(LATENCY_LOG))
        .unwrap()
        .into_iter()
        .chain(read_hlog(&requests_log).unwrap())
    {
        *logged.entry(e.tag.unwrap()).or_default() += e.hist.len();
    }
    let expected: std::collections::BTreeMap<String, u64> = [
        ("a", 300),
        ("b", 200),
        ("a|GET%20/", 300),
        ("b|the%20json", 100),
        ("b|GET%20/", 100),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(logged, expected);
    let rows = std::fs::read_to_string(dir.join(METRICS_JSONL)).unwrap();
    assert_eq!(
        rows.lines().count(),
        10,
        "two intervals of two tasks and three request names"
    );
    // A run cut short is summarised from its files alike, per request too.
    let rebuilt = loadpilot_core::measure::rundir::summarize_dir(&dir).unwrap();
    let again: Vec<(&str, &str, u64)> = rebuilt
        .requests
        .iter()
        .map(|r| (r.task.as_str(), r.name.as_str(), r.stats.requests))
        .collect();
    assert_eq!(again, named);
    assert_eq!(
        rebuilt.requests[1].stats.latency_ms, s.requests[1].stats.latency_ms,
        "percentiles from the logs' histograms"
    );
    server.stop();
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

/// Runs the plan `body` against `url` on `rt` (a run directory of its own, removed after) and
/// returns its summary.
fn run(rt: &tokio::runtime::Runtime, url: &str, body: &str, name: &str) -> Summary {
    let dir = std::env::temp_dir().join(format!("lp-core-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = start(rt.handle(), 2, plan(url, body), dir.clone()).unwrap();
    assert!(run.wait(Duration::from_secs(30)));
    let s = run.summary().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    s
}

#[test]
fn a_hundred_open_model_workers_share_one_http2_connection_with_exact_weights() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let s = run(
        &rt,
        &server.url(),
        r#""http": "2", "max_streams": 100,
           "load": {"model": "open", "connections": 100,
                    "stages": [{"kind": "constant", "rate": 1000, "duration_s": 2}]},
           "tasks": [{"name": "a", "weight": 3, "requests": [{"path": "/"}]},
                     {"name": "b", "requests": [{"path": "/json"}]}]"#,
        "h2-open",
    );
    assert_eq!(s.overall.requests, 2000);
    assert_eq!(s.overall.errors, 0, "{:?}", s.overall.errors_by_kind);
    assert_eq!(s.tasks[0].stats.requests, 1500);
    assert_eq!(s.tasks[1].stats.requests, 500);
    assert_eq!(server.served(), 2000);
    assert_eq!(server.served_h2(), 2000, "every request came over HTTP/2");
    assert_eq!(server.connections(), 1, "on one connection");
    server.stop();
}

#[test]
fn a_hundred_closed_model_users_have_their_streams_in_flight_at_once() {
    let rt = build_runtime(2).unwrap();
    // Each answer takes 50 ms: one user sends at most 20 a second, one stream at a time on
    // the connection at most 20 a second in all.
    let cfg = TargetConfig {
        delay_ms: 50.0,
        ..TargetConfig::default()
    };
    let server = testbed::start(rt.handle(), cfg).unwrap();
    let s = run(
        &rt,
        &server.url(),
        r#""http": "2", "max_streams": 100,
           "load": {"model": "closed", "stages": [{"kind": "constant", "rate": 100, "duration_s": 2}]},
           "tasks": [{"name": "a", "requests": [{"path": "/"}]}]"#,
        "h2-closed",
    );
    assert_eq!(s.overall.errors, 0, "{:?}", s.overall.errors_by_kind);
    // 100 streams at once: ~4,000 in 2 s (50 per stream at best).
    assert!(s.overall.requests > 2_000, "{}", s.overall.requests);
    assert_eq!(server.served(), s.overall.requests);
    assert_eq!(server.served_h2(), s.overall.requests);
    assert_eq!(server.connections(), 1);
    server.stop();
}

#[test]
fn over_tls_auto_takes_http2_when_the_server_offers_it_and_1_1_stays_1_1() {
    let rt = build_runtime(2).unwrap();
    let cfg = TargetConfig {
        tls: true,
        ..TargetConfig::default()
    };
    let server = testbed::start(rt.handle(), cfg).unwrap();
    for (http, h2) in [("auto", 200), ("2", 200), ("1.1", 0)] {
        let before = (server.served(), server.served_h2());
        let s = run(
            &rt,
            &server.url(),
            &format!(
                r#""http": "{http}", "insecure": true, "max_streams": 10,
                   "load": {{"model": "open", "connections": 20,
                            "stages": [{{"kind": "constant", "rate": 200, "duration_s": 1}}]}},
                   "tasks": [{{"name": "a", "requests": [{{"path": "/cookies/set?k=v"}}, {{"path": "/cookies", "expect": {{"body_contains": "k=v"}}}}]}}]"#
            ),
            &format!("h2-tls-{http}"),
        );
        assert_eq!(s.overall.requests, 400, "{http}");
        assert_eq!(
            s.overall.errors, 0,
            "{http}: {:?}",
            s.overall.errors_by_kind
        );
        assert_eq!(server.served() - before.0, 400, "{http}");
        assert_eq!(server.served_h2() - before.1, 2 * h2, "{http}");
    }
    server.stop();
}

/// How the hostile HTTP/2 server below misbehaves.
#[derive(Clone, Copy)]
enum Hostile {
    /// Resets every second stream (RST_STREAM, REFUSED_STREAM); answers the others.
    ResetHalf,
    /// Answers each stream after 20 ms; after `n` streams on a connection, sends GOAWAY
    /// with an error and closes it, leaving what is in flight unanswered.
    GoAwayAfter(u64),
    /// Answers at once; the first connection goes silent after `n` streams (reads nothing,
    /// answers nothing, PINGs included) and is never closed: a black hole.
    FirstSilentAfter(u64),
}

/// Counts (streams taken, streams answered, connections).
type HostileCounts = [std::sync::atomic::AtomicU64; 3];

fn hostile_h2_server(
    rt: &tokio::runtime::Runtime,
    how: Hostile,
) -> (String, std::sync::Arc<HostileCounts>) {
    use std::sync::atomic::Ordering;
    let counts: std::sync::Arc<HostileCounts> = std::sync::Arc::new(Default::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = counts.clone();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let index = c[2].fetch_add(1, Ordering::Relaxed);
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let mut seen = 0u64;
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    seen += 1;
                    let n = c[0].fetch_add(1, Ordering::Relaxed);
                    let c = c.clone();
                    let answer = move |mut respond: h2::server::SendResponse<bytes::Bytes>| {
                        let resp = hyper::Response::new(());
                        if let Ok(mut body) = respond.send_response(resp, false) {
                            if body
                                .send_data(bytes::Bytes::from_static(b"OK"), true)
                                .is_ok()
                            {
                                c[1].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    };
                    match how {
                        Hostile::ResetHalf if n % 2 == 1 => {
                            respond.send_reset(h2::Reason::REFUSED_STREAM)
                        }
                        Hostile::ResetHalf => answer(respond),
                        Hostile::FirstSilentAfter(limit) if index == 0 && seen > limit => {
                            // Holds the connection without polling it again.
                            match std::future::pending::<std::convert::Infallible>().await {}
                        }
                        Hostile::FirstSilentAfter(_) => answer(respond),
                        Hostile::GoAwayAfter(limit) => {
                            if seen == limit {
                                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                            } else {
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    answer(respond);
                                });
                            }
                        }
                    }
                }
            });
        }
    });
    (url, counts)
}

/// 400 requests in 1 s from 8 open-model workers, 4 streams a connection, against `url`.
fn h2_run_against(url: &str, name: &str) -> Summary {
    let rt = build_runtime(2).unwrap();
    run(
        &rt,
        url,
        r#""http": "2", "max_streams": 4, "timeout_s": 2,
           "load": {"model": "open", "connections": 8,
                    "stages": [{"kind": "constant", "rate": 400, "duration_s": 1}]},
           "tasks": [{"name": "a", "requests": [{"path": "/"}]}]"#,
        name,
    )
}

#[test]
fn a_reset_stream_is_counted_as_rst_stream_and_the_connection_carries_on() {
    use std::sync::atomic::Ordering;
    let rt = build_runtime(1).unwrap();
    let (url, counts) = hostile_h2_server(&rt, Hostile::ResetHalf);
    let s = h2_run_against(&url, "h2-reset");
    let kinds = &s.overall.errors_by_kind;
    assert_eq!(
        s.overall.requests, 400,
        "every due request is accounted for"
    );
    let answered = counts[1].load(Ordering::Relaxed);
    assert_eq!(s.overall.requests - s.overall.errors, answered, "{kinds:?}");
    assert_eq!(kinds["rst_stream"], 400 - answered, "{kinds:?}");
    assert_eq!(s.overall.errors, kinds["rst_stream"], "{kinds:?}");
    assert!((190..=210).contains(&answered), "{answered}");
    // A reset is one stream's end, not the connection's: 8 workers, 4 streams a connection.
    assert_eq!(counts[2].load(Ordering::Relaxed), 2);
}

#[test]
fn a_connection_closed_after_goaway_is_replaced_and_what_it_cut_off_is_counted() {
    use std::sync::atomic::Ordering;
    let rt = build_runtime(1).unwrap();
    let (url, counts) = hostile_h2_server(&rt, Hostile::GoAwayAfter(25));
    let s = h2_run_against(&url, "h2-goaway");
    let kinds = &s.overall.errors_by_kind;
    // The server is slow (20 ms an answer, 8 streams): an arrival still waiting for a free
    // worker at the end is counted as unsent.
    assert_eq!(
        s.overall.requests + s.overall.unsent + s.overall.cancelled,
        400,
        "every due request is accounted for"
    );
    // An answer the server had buffered when it closed may not have left it.
    let taken = counts[0].load(Ordering::Relaxed);
    let answered = counts[1].load(Ordering::Relaxed);
    let ok = s.overall.requests - s.overall.errors;
    assert!(ok > 0 && ok <= answered, "{ok} of {answered}: {kinds:?}");
    // The server's side: every stream it took was sent, so it is answered, failed or
    // cancelled; every stream it took and never answered is a failure or cancelled.
    assert!(
        s.overall.requests + s.overall.cancelled >= taken,
        "{taken} streams taken: {:?}",
        s.overall
    );
    assert!(
        s.overall.errors + s.overall.cancelled >= taken - answered,
        "{taken} taken, {answered} answered: {kinds:?}"
    );
    assert_eq!(
        s.overall.errors,
        kinds["goaway"] + kinds["reset"],
        "{kinds:?}"
    );
    assert!(
        counts[2].load(Ordering::Relaxed) > 4,
        "connections were replaced"
    );
}

/// A server that speaks just enough HTTP/2 to refuse everything: its SETTINGS, then, once the
/// client has sent anything more than its preface, GOAWAY with last-stream-id 0 (no stream
/// will be processed) and ENHANCE_YOUR_CALM; it keeps the connection until the client closes.
/// Counts connections.
fn refusing_h2_server(
    rt: &tokio::runtime::Runtime,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = connections.clone();
    rt.spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
                const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b];
                let mut buf = vec![0u8; 65536];
                if tcp.write_all(&SETTINGS).await.is_err() {
                    return;
                }
                // The preface (24 bytes) and the client's SETTINGS come first; HEADERS after.
                let mut got = 0;
                while got <= 24 + 9 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                if tcp.write_all(&GOAWAY).await.is_err() {
                    return;
                }
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (url, connections)
}

#[test]
fn a_request_refused_by_goaway_is_counted_as_goaway_and_the_connection_is_replaced() {
    use std::sync::atomic::Ordering;
    let rt = build_runtime(1).unwrap();
    let (url, connections) = refusing_h2_server(&rt);
    let s = h2_run_against(&url, "h2-refused");
    let kinds = &s.overall.errors_by_kind;
    assert_eq!(
        s.overall.requests, 400,
        "every due request is accounted for"
    );
    assert_eq!(kinds["goaway"], 400, "{kinds:?}");
    assert_eq!(s.overall.errors, 400, "{kinds:?}");
    assert!(
        connections.load(Ordering::Relaxed) > 2,
        "connections were replaced"
    );
}

#[test]
fn a_connection_that_stops_answering_is_found_dead_by_ping_and_replaced() {
    use std::sync::atomic::Ordering;
    let rt = build_runtime(1).unwrap();
    let (url, counts) = hostile_h2_server(&rt, Hostile::FirstSilentAfter(20));
    let s = run(
        &build_runtime(2).unwrap(),
        &url,
        r#""http": "2", "max_streams": 4, "timeout_s": 0.3,
           "load": {"model": "open", "connections": 8,
                    "stages": [{"kind": "constant", "rate": 200, "duration_s": 3}]},
           "tasks": [{"name": "a", "requests": [{"path": "/"}]}]"#,
        "h2-silent",
    );
    let kinds = &s.overall.errors_by_kind;
    assert_eq!(
        s.overall.requests + s.overall.unsent,
        600,
        "every due request is accounted for: {kinds:?}"
    );
    assert_eq!(s.overall.errors, kinds["timeout"], "{kinds:?}");
    assert_eq!(
        s.overall.requests - s.overall.errors,
        counts[1].load(Ordering::Relaxed),
        "every answer counted"
    );
    // The silent connection's users timed out (0.3 s), its PING went unanswered (0.3 s more),
    // and they moved to a new connection: a few timeouts, not one per request for 3 s. (A
    // healthy connection starved of CPU for 0.3 s under parallel tests may be replaced too.)
    assert!(
        counts[2].load(Ordering::Relaxed) >= 3,
        "replaced at least once"
    );
    assert!(
        (1..=20).contains(&s.overall.errors),
        "{} timeouts",
        s.overall.errors
    );
}

#[test]
fn redirects_are_followed_as_one_request_with_their_hops_counted() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let other = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let away = format!("{}/anything", other.url());
    let s = run(
        &rt,
        &server.url(),
        &format!(
            r#""load": {{"model": "open", "stages": [{{"kind": "constant", "rate": 10, "duration_s": 1}}]}},
               "tasks": [{{"name": "a", "requests": [
                   {{"path": "/redirect/3", "name": "chain", "expect": {{"status": [200], "body_contains": "redirected"}}}},
                   {{"method": "POST", "path": "/redirect-to?url=/anything&status=303", "body": "x", "name": "see other", "expect": {{"body_contains": "\"method\":\"GET\""}}}},
                   {{"method": "POST", "path": "/redirect-to?url=/anything&status=307", "body": "kept", "name": "temporary", "expect": {{"body_contains": "\"body\":\"kept\""}}}},
                   {{"path": "/redirect-to?url={away}", "name": "away", "expect": {{"body_contains": "\"path\":\"/anything\""}}}},
                   {{"path": "/redirect/2", "name": "not followed", "follow_redirects": false, "expect": {{"status": [302]}}}},
                   {{"path": "/redirect/12", "name": "too far", "expect": {{"status": [200]}}}}
               ]}}]"#
        ),
        "redirects",
    );
    let by_name = |n: &str| &s.requests.iter().find(|r| r.name == n).unwrap().stats;
    // Each exchange counts once, whatever its hops; its hops are counted apart.
    for (name, hops) in [
        ("chain", 30),
        ("see other", 10),
        ("temporary", 10),
        ("away", 10),
        ("not followed", 0),
    ] {
        let st = by_name(name);
        assert_eq!(
            (st.requests, st.errors, st.redirects),
            (10, 0, hops),
            "{name}: {st:?}"
        );
    }
    // Eleven hops are one too many: an error of its own kind, with the chain in the failures.
    let far = by_name("too far");
    assert_eq!(
        (far.requests, far.errors_by_kind["redirect"]),
        (10, 10),
        "{far:?}"
    );
    assert_eq!(
        far.redirects, 0,
        "a failed chain's hops are not counted as followed"
    );
    let line = s.failures.iter().find(|f| f.request == "too far").unwrap();
    assert!(
        line.message.starts_with(&format!(
            "too many redirects (more than 10): {}/redirect/12 -> /redirect/11 -> ",
            server.url()
        )),
        "{}",
        line.message
    );
    assert_eq!(line.count, 10);
    // The server saw every hop: the chain's, the one not followed, the ten of the one too
    // far (from /redirect/12 down to /redirect/2); the other origin its own.
    let seen = server.served_by_path();
    for (p, n) in [
        ("/redirect/12", 10),
        ("/redirect/3", 20),
        ("/redirect/2", 30),
        ("/redirect/1", 10),
        ("/redirect/0", 10),
        ("/anything", 20),
    ] {
        assert_eq!(seen[p], n, "{p}");
    }
    assert_eq!(other.served_by_path()["/anything"], 10);
    assert_eq!(s.overall.redirects, 60);
}

#[test]
fn a_redirect_outside_the_allowed_hosts_sends_nothing_there() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let other = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let port = server.addr.port();
    let s = run(
        &rt,
        &server.url(),
        &format!(
            r#""load": {{"model": "open", "stages": [{{"kind": "constant", "rate": 5, "duration_s": 1}}]}},
               "allow_hosts": ["127.0.0.1:{port}"],
               "tasks": [{{"name": "a", "requests": [{{"path": "/redirect-to?url={}/x"}}]}}]"#,
            other.url()
        ),
        "allow",
    );
    assert_eq!(s.overall.errors_by_kind["redirect"], 5, "{:?}", s.overall);
    assert_eq!(other.served(), 0, "nothing was sent outside the allow-list");
    let line = &s.failures[0];
    assert!(
        line.message.contains("refused: not an allowed target"),
        "{}",
        line.message
    );
}

#[test]
fn a_file_larger_than_a_stream_window_is_uploaded_whole_on_either_http_version() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("lp-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.bin");
    // 300 kB, past HTTP/2's first 64 kB window, ending in a mark the check looks for.
    let mut data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    data.extend_from_slice(b"<the end>");
    std::fs::write(&file, &data).unwrap();
    for http in ["1.1", "2"] {
        let s = run(
            &rt,
            &server.url(),
            &format!(
                r#""http": "{http}",
                   "load": {{"model": "open", "connections": 4, "stages": [{{"kind": "constant", "rate": 20, "duration_s": 1}}]}},
                   "tasks": [{{"name": "up", "requests": [{{"method": "POST", "path": "/echo",
                       "form": [["note", "n"]], "files": [{{"field": "f", "path": "{}"}}],
                       "expect": {{"status": [200], "body_contains": "<the end>\r\n--loadpilot-"}}}}]}}]"#,
                file.display()
            ),
            &format!("upload-{http}"),
        );
        assert_eq!(s.overall.errors, 0, "HTTP/{http}: {:?}", s.failures);
        assert_eq!(s.overall.requests, 20);
        // The echo holds the whole form, the file in it.
        assert!(s.overall.bytes_in > 20 * data.len() as u64, "HTTP/{http}");
    }
    assert_eq!(server.served_h2(), 20);
    let _ = std::fs::remove_dir_all(&dir);
    server.stop();
}

#[test]
fn a_run_cut_short_keeps_its_failures() {
    let rt = build_runtime(2).unwrap();
    let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("lp-core-failures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = plan(
        &server.url(),
        r#""load": {"model": "open", "stages": [{"kind": "constant", "rate": 50, "duration_s": 2}]},
           "tasks": [{"name": "a", "requests": [
               {"path": "/status/503", "name": "down"},
               {"path": "/redirect/5", "name": "far", "max_redirects": 1}]}]"#,
    );
    let run = start(rt.handle(), 2, p, dir.clone()).unwrap();
    assert!(run.wait(Duration::from_secs(20)));
    let s = run.summary().unwrap();
    let lines: Vec<(&str, &str, u64)> = s
        .failures
        .iter()
        .map(|f| (f.request.as_str(), &f.message[..8], f.count))
        .collect();
    assert_eq!(lines, [("down", "HTTP 503", 100), ("far", "too many", 100)]);
    // Rebuilt from the files alone (as for a run whose summary was never written): the same.
    let rebuilt = loadpilot_core::measure::rundir::summarize_dir(&dir).unwrap();
    assert_eq!(rebuilt.failures, s.failures);
    let _ = std::fs::remove_dir_all(&dir);
    server.stop();
}

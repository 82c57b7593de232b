//! The built-in target: a small HTTP/1.1 and HTTP/2 (h2 over TLS, h2c over cleartext) server to
//! load without a server of your own, and the
//! server behind the demo, the tutorials, the tests and the benchmark.
//!
//! Routes: `/echo` returns the request body; `/json` a small JSON document; `/status/NNN` that
//! status; `/cookies/set?name=value` sets a cookie (and redirects to `next=` if given) and
//! `/cookies` shows the ones sent back; `/headers` the request's headers as JSON, `/anything`
//! its method, path, query, body and content type as JSON; `/redirect/N` redirects N times
//! (302) before answering, `/redirect-to?url=U&status=S` redirects to `U` with status `S`
//! (302 by default); anything else `OK`. `?delay_ms=N` adds a delay to one request.
//!
//! Behaviours (all optional): a fixed delay, a random delay up to a maximum, an error rate, and a
//! stall: for `stall_ms` out of every `stall_every_s` seconds the server answers nothing; what
//! arrives meanwhile is answered when the stall ends, as during a GC pause or a failover.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::plan::schedule::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default = "default_host")]
    pub host: String,
    /// 0 picks a free port.
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub delay_ms: f64,
    /// With a value above `delay_ms`, each delay is uniform in `[delay_ms, delay_max_ms]`.
    #[serde(default)]
    pub delay_max_ms: Option<f64>,
    /// Share of requests answered with 500, 0..1.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub stall_ms: f64,
    #[serde(default)]
    pub stall_every_s: f64,
    #[serde(default)]
    pub seed: u64,
    /// Serve https with a fresh self-signed certificate.
    #[serde(default)]
    pub tls: bool,
    /// At most this many requests served at once (0: no limit); the rest wait their turn, as
    /// at a server with a fixed pool of workers. With a delay `d` it saturates at
    /// `concurrency / d` requests per second.
    #[serde(default)]
    pub concurrency: u32,
    /// How many `traceparent`s the trace log keeps (the first this many requests that carry
    /// one, with their path and query; 0 keeps none). Each costs the target an allocation
    /// and about 130 bytes, so a target whose log nobody reads should keep none.
    #[serde(default = "default_keep_traces")]
    pub keep_traces: usize,
}

fn default_keep_traces() -> usize {
    100_000
}

fn default_host() -> String {
    "127.0.0.1".into()
}

impl Default for TargetConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl TargetConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: &str| Err(Error::plan(format!("target.{f}"), m));
        if !(self.delay_ms.is_finite() && self.delay_ms >= 0.0) {
            return bad("delay_ms", "must be >= 0");
        }
        if let Some(m) = self.delay_max_ms {
            if !(m.is_finite() && m >= self.delay_ms) {
                return bad("delay_max_ms", "must be >= delay_ms");
            }
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return bad("error_rate", "must be between 0 and 1");
        }
        if self.stall_ms < 0.0 || self.stall_every_s < 0.0 {
            return bad("stall_ms", "stall_ms and stall_every_s must be >= 0");
        }
        if self.stall_ms > 0.0 && self.stall_ms >= self.stall_every_s * 1000.0 {
            return bad(
                "stall_ms",
                "a stall must be shorter than the period it repeats in",
            );
        }
        Ok(())
    }
}

/// What the target has seen.
#[derive(Default)]
struct Counts {
    /// Requests received (each one is answered, after any delay or stall).
    served: AtomicU64,
    /// Of them, over HTTP/2.
    served_h2: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Requests received per path (the first `MAX_PATHS` paths), what a test checks a run's
    /// per-request counts against.
    by_path: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The W3C `traceparent` of each request that carried one, with its path and query, in
    /// the order they came (the first `keep_traces`): the target's trace log.
    traces: std::sync::Mutex<Vec<(String, String)>>,
}

/// The most distinct paths counted apart.
const MAX_PATHS: usize = 10_000;
struct Behaviour {
    cfg: TargetConfig,
    start: Instant,
    counter: AtomicU64,
    counts: Arc<Counts>,
    workers: Option<tokio::sync::Semaphore>,
}

impl Behaviour {
    fn uniform(&self) -> f64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Rng::new(self.cfg.seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D)).next_f64()
    }

    /// How long a request that arrives now waits for the current stall to end.
    fn stall_left(&self) -> Duration {
        let c = &self.cfg;
        if c.stall_ms <= 0.0 || c.stall_every_s <= 0.0 {
            return Duration::ZERO;
        }
        let t = self.start.elapsed().as_secs_f64();
        let phase_ms = (t % c.stall_every_s) * 1000.0;
        // The stall sits at the end of each period, so a run that starts with the server is
        // not stalled from its first instant.
        let stall_from = c.stall_every_s * 1000.0 - c.stall_ms;
        if phase_ms >= stall_from {
            Duration::from_secs_f64((c.stall_every_s * 1000.0 - phase_ms) / 1000.0)
        } else {
            Duration::ZERO
        }
    }

    fn delay(&self, query_ms: Option<f64>) -> Duration {
        let c = &self.cfg;
        let mut ms = match c.delay_max_ms {
            Some(max) if max > c.delay_ms => c.delay_ms + (max - c.delay_ms) * self.uniform(),
            _ => c.delay_ms,
        };
        ms += query_ms.unwrap_or(0.0).max(0.0);
        Duration::from_secs_f64(ms / 1000.0)
    }
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The largest body `/bytes/N` serves (64 MiB).
const MAX_BYTES: usize = 64 << 20;

/// One buffer of `MAX_BYTES` for every `/bytes/N` response, made on first use.
fn filler() -> &'static [u8] {
    static FILL: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    FILL.get_or_init(|| Box::leak(vec![b'x'; MAX_BYTES].into_boxed_slice()))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    b: Arc<Behaviour>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    b.counts.served.fetch_add(1, Ordering::Relaxed);
    if req.version() == hyper::Version::HTTP_2 {
        b.counts.served_h2.fetch_add(1, Ordering::Relaxed);
    }
    {
        let mut by_path = b.counts.by_path.lock().unwrap_or_else(|e| e.into_inner());
        let path = req.uri().path();
        if let Some(n) = by_path.get_mut(path) {
            *n += 1;
        } else if by_path.len() < MAX_PATHS {
            by_path.insert(path.to_string(), 1);
        }
    }
    if let Some(t) = req
        .headers()
        .get("traceparent")
        .filter(|_| b.cfg.keep_traces > 0)
    {
        let mut traces = b.counts.traces.lock().unwrap_or_else(|e| e.into_inner());
        if traces.len() < b.cfg.keep_traces {
            let at = req.uri().path_and_query().map_or("/", |p| p.as_str());
            traces.push((
                at.to_string(),
                String::from_utf8_lossy(t.as_bytes()).into_owned(),
            ));
        }
    }
    // Held until the response is built: a worker is busy for the delay and the stall alike.
    let _worker = match &b.workers {
        Some(w) => Some(w.acquire().await.expect("the semaphore is never closed")),
        None => None,
    };
    let stall = b.stall_left();
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let extra = query_value(&query, "delay_ms").and_then(|v| v.parse().ok());
    let delay = b.delay(extra);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if b.cfg.error_rate > 0.0 && b.uniform() < b.cfg.error_rate {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "injected error"));
    }
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/echo" => {
            let ct = req.headers().get(CONTENT_TYPE).cloned();
            let mut r = text(StatusCode::OK, body_of(req).await);
            if let Some(ct) = ct {
                r.headers_mut().insert(CONTENT_TYPE, ct);
            }
            r
        }
        "/json" => {
            let mut r = text(
                StatusCode::OK,
                r#"{"ok":true,"items":[{"id":1,"name":"tea"},{"id":2,"name":"cake"}]}"#,
            );
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }
        "/headers" => {
            // The request's headers as a JSON object (a name sent twice: its last value).
            let seen: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.as_str().to_string(), serde_json::Value::String(v))
                })
                .collect();
            let mut r = text(StatusCode::OK, serde_json::Value::Object(seen).to_string());
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }
        "/cookies" => {
            let sent = req
                .headers()
                .get(COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            text(StatusCode::OK, sent)
        }
        "/cookies/set" => {
            let next = query_pairs(&query)
                .find(|(k, _)| k == "next")
                .map(|(_, v)| v);
            let mut r = match next {
                Some(to) => redirect(StatusCode::FOUND, &to),
                None => text(StatusCode::OK, "set"),
            };
            for kv in query
                .split('&')
                .filter(|kv| kv.contains('=') && !kv.starts_with("next="))
            {
                if let Ok(v) = format!("{kv}; Path=/").parse() {
                    r.headers_mut().append(SET_COOKIE, v);
                }
            }
            r
        }
        "/anything" => {
            let method = req.method().to_string();
            let ct = req
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = body_of(req).await;
            let seen = serde_json::json!({
                "method": method,
                "path": path,
                "query": query,
                "content_type": ct,
                "body": String::from_utf8_lossy(&body),
            });
            let mut r = text(StatusCode::OK, seen.to_string());
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }
        "/redirect-to" => {
            let mut to = None;
            let mut status = StatusCode::FOUND;
            for (k, v) in query_pairs(&query) {
                match k.as_str() {
                    "url" => to = Some(v),
                    "status" => match v
                        .parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                    {
                        Some(c) if c.is_redirection() => status = c,
                        _ => return Ok(text(StatusCode::BAD_REQUEST, "status: 300..=399")),
                    },
                    _ => {}
                }
            }
            match to {
                Some(to) => redirect(status, &to),
                None => text(StatusCode::BAD_REQUEST, "redirect-to needs url="),
            }
        }
        p if p.starts_with("/redirect/") => match p[10..].parse::<u32>() {
            Ok(0) => text(StatusCode::OK, "redirected"),
            Ok(n) => redirect(StatusCode::FOUND, &format!("/redirect/{}", n - 1)),
            Err(_) => text(StatusCode::BAD_REQUEST, "redirect: a count"),
        },
        p if p.starts_with("/bytes/") => match p[7..].parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => text(StatusCode::OK, Bytes::from_static(&filler()[..n])),
            _ => text(StatusCode::BAD_REQUEST, "bytes: 0..=67108864"),
        },
        p if p.starts_with("/status/") => match p[8..]
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => text(code, code.as_str().to_string()),
            None => text(StatusCode::BAD_REQUEST, "bad status"),
        },
        _ => text(StatusCode::OK, "OK"),
    };
    Ok(resp)
}

/// A request's whole body (empty if it broke off).
async fn body_of(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// The name and value pairs of a query, percent-decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// A `status` redirect to `to`.
fn redirect(status: StatusCode, to: &str) -> Response<Full<Bytes>> {
    let mut r = text(status, "");
    match to.parse() {
        Ok(v) => {
            r.headers_mut().insert(hyper::header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "redirect: not a valid Location"),
    }
}

/// A running built-in target. Dropping it does not stop it; call `stop`.
pub struct TargetServer {
    pub addr: SocketAddr,
    tls: bool,
    stop: CancellationToken,
    counts: Arc<Counts>,
}

impl TargetServer {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// Requests received so far.
    pub fn served(&self) -> u64 {
        self.counts.served.load(Ordering::Relaxed)
    }
    /// Requests received over HTTP/2 so far.
    pub fn served_h2(&self) -> u64 {
        self.counts.served_h2.load(Ordering::Relaxed)
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }
    /// Requests received per path so far (the first 10,000 paths).
    pub fn served_by_path(&self) -> std::collections::HashMap<String, u64> {
        self.counts
            .by_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The `traceparent` headers received so far, with the path and query each came with,
    /// in order (the first `keep_traces`).
    pub fn traces(&self) -> Vec<(String, String)> {
        self.counts
            .traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Binds (synchronously, so the port is known and errors surface at once) and serves on `rt`.
pub fn start(rt: &tokio::runtime::Handle, cfg: TargetConfig) -> Result<TargetServer> {
    cfg.validate()?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let std_listener =
        std::net::TcpListener::bind(&addr).map_err(|e| Error::io(addr.clone(), e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(addr.clone(), e))?;
    let local = std_listener
        .local_addr()
        .map_err(|e| Error::io(addr.clone(), e))?;
    let acceptor = if cfg.tls {
        Some(tokio_rustls::TlsAcceptor::from(
            crate::http::tls::self_signed_server(&cfg.host)?,
        ))
    } else {
        None
    };
    let tls = cfg.tls;
    let stop = CancellationToken::new();
    let workers =
        (cfg.concurrency > 0).then(|| tokio::sync::Semaphore::new(cfg.concurrency as usize));
    let counts = Arc::new(Counts::default());
    let b = Arc::new(Behaviour {
        cfg,
        start: Instant::now(),
        counter: AtomicU64::new(0),
        counts: counts.clone(),
        workers,
    });
    let token = stop.clone();
    let _guard = rt.enter();
    let listener = TcpListener::from_std(std_listener).map_err(|e| Error::io(addr, e))?;
    rt.spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = token.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            b.counts.connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let b = b.clone();
            let token = token.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(b.clone(), req));
                // HTTP/1.1 and HTTP/2 (by ALPN over TLS, by the connection preface on h2c).
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                tokio::select! {
                    _ = async {
                        match acceptor {
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                                }
                            }
                        }
                    } => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
    Ok(TargetServer {
        addr: local,
        tls,
        counts,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn query_values_are_found_by_key() {
        assert_eq!(query_value("a=1&delay_ms=20&b", "delay_ms"), Some("20"));
        assert_eq!(query_value("delay_msx=3", "delay_ms"), None);
        assert_eq!(query_value("", "delay_ms"), None);
    }

    #[test]
    fn settings_out_of_range_are_refused_with_their_name() {
        let cfg = |json: &str| serde_json::from_str::<TargetConfig>(json).unwrap();
        for (json, field) in [
            (r#"{"delay_ms": -1}"#, "target.delay_ms"),
            (r#"{"error_rate": 1.5}"#, "target.error_rate"),
        ] {
            let e = cfg(json).validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(TargetConfig::default().validate().is_ok());
    }

    /// Sends one raw HTTP/1.1 request and returns the whole answer as text.
    async fn ask(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_routes_answer_as_documented() {
        let server = start(&tokio::runtime::Handle::current(), TargetConfig::default()).unwrap();
        let at = server.addr;
        assert!(ask(at, "/").await.ends_with("\r\n\r\nOK"));
        assert!(ask(at, "/status/418").await.starts_with("HTTP/1.1 418"));
        assert!(ask(at, "/status/1000").await.starts_with("HTTP/1.1 400"));
        assert!(ask(at, "/json").await.contains(r#""name":"tea""#));
        let bytes = ask(at, "/bytes/5000").await;
        assert!(bytes.contains("content-length: 5000"), "{bytes}");
        assert!(bytes.ends_with(&"x".repeat(5000)));
        assert!(ask(at, "/bytes/999999999")
            .await
            .starts_with("HTTP/1.1 400"));
        let set = ask(at, "/cookies/set?sid=s1").await;
        assert!(set.contains("set-cookie: sid=s1; Path=/"), "{set}");
        let headers = ask(at, "/headers").await;
        assert!(headers.contains(r#""host":"x""#), "{headers}");
        server.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_pool_serves_one_request_at_a_time() {
        let cfg = TargetConfig {
            delay_ms: 100.0,
            concurrency: 1,
            ..TargetConfig::default()
        };
        let server = start(&tokio::runtime::Handle::current(), cfg).unwrap();
        let started = std::time::Instant::now();
        let (a, b) = tokio::join!(ask(server.addr, "/"), ask(server.addr, "/"));
        assert!(a.ends_with("OK") && b.ends_with("OK"));
        // Two requests of 100 ms through one worker: one after the other.
        assert!(started.elapsed() >= Duration::from_millis(200));
        server.stop();
    }
}

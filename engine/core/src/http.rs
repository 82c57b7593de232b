//! The HTTP side of a virtual user: one keep-alive HTTP/1.1 connection it owns, requests built
//! from compiled templates, per-user cookies, and errors sorted into kinds.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::check::{Check, Failure};
use crate::error::{Error, Result};
use crate::plan::RequestSpec;
use crate::template::{Scope, Template, Values};

/// Kinds of failure, counted separately. The order is the column order in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Dns,
    Tls,
    Timeout,
    Reset,
    Status,
    Check,
    /// A Python task raised.
    Exception,
    /// The server's answer broke HTTP: a malformed status line or headers, bad chunking, a
    /// body shorter than announced, headers too large.
    Protocol,
    /// This machine ran out of file descriptors (EMFILE/ENFILE): the generator's limit, not
    /// the server's.
    FdLimit,
}

impl ErrorKind {
    /// The kinds counted in metrics, in column order.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Connect,
        ErrorKind::Dns,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status,
        ErrorKind::Check,
        ErrorKind::Exception,
        ErrorKind::Protocol,
        ErrorKind::FdLimit,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Dns => "dns",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Status => "status",
            ErrorKind::Check => "check",
            ErrorKind::Exception => "exception",
            ErrorKind::Protocol => "protocol",
            ErrorKind::FdLimit => "fd_limit",
        }
    }
}

impl From<Failure> for ErrorKind {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Status => ErrorKind::Status,
            Failure::Check => ErrorKind::Check,
        }
    }
}

/// The parsed target: where to connect and what to send as `Host`.
#[derive(Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    authority: HeaderValue,
    base_path: String,
    tls: Option<Tls>,
    resolved: OnceLock<Vec<SocketAddr>>,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Target {
    /// `insecure` accepts any certificate from an `https://` target.
    pub fn parse(url: &str, insecure: bool) -> Result<Arc<Self>> {
        let bad = |m: &str| Error::Target {
            target: url.to_string(),
            message: m.to_string(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(s) => {
                return Err(bad(&format!(
                    "unsupported scheme {s:?}; use http:// or https://"
                )))
            }
            None => return Err(bad("missing scheme; write it as http://host:port")),
        };
        let auth = uri.authority().ok_or_else(|| bad("missing host"))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match explicit_port(auth.as_str()) {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(&format!("port {p:?} is not a port (1..65535)"))),
            },
        };
        let tls = if https {
            Some(Tls {
                connector: tokio_rustls::TlsConnector::from(crate::tls::client_config(insecure)),
                name: crate::tls::server_name(host)?,
            })
        } else {
            None
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Arc::new(Target {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| bad("bad host"))?,
            base_path,
            tls,
            resolved: OnceLock::new(),
        }))
    }

    /// The `Host` header value.
    pub fn authority(&self) -> HeaderValue {
        self.authority.clone()
    }

    /// The path part of the target URL, prefixed to every request path.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    async fn addrs(&self) -> Result<&[SocketAddr], ErrorKind> {
        if let Some(a) = self.resolved.get() {
            return Ok(a);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| ErrorKind::Dns)?
            .collect();
        if found.is_empty() {
            return Err(ErrorKind::Dns);
        }
        Ok(self.resolved.get_or_init(|| found))
    }
}

/// The port written in an authority (`host:port`, `[v6]:port`), if any, as text.
fn explicit_port(authority: &str) -> Option<&str> {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    after_host.rsplit_once(':').map(|(_, p)| p)
}

/// Percent-encodes what may not stand in a request target (spaces, quotes, `<>`, `{}`, `|`,
/// `\\`, `^`, backquotes, controls, non-ASCII) as httpx and requests do; what may (reserved
/// characters and existing `%XX` escapes) is kept.
pub fn encode_target(target: &str) -> std::borrow::Cow<'_, str> {
    fn keep(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~:/?#@!$&'()*+,;=%".contains(&b)
    }
    if target.bytes().all(keep) {
        return std::borrow::Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len() + 16);
    for b in target.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One virtual user's connection and cookies.
pub struct Client {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    cookies: Vec<(String, String)>,
}

/// A response as far as metrics, checks and Python tasks care.
pub struct Response {
    pub status: u16,
    pub bytes: u64,
    /// Kept when asked for (checks on the body, Python tasks); empty otherwise.
    pub body: Bytes,
    /// Kept for Python tasks only.
    pub headers: Vec<(String, String)>,
}

/// Bytes of a response body kept for checks and Python tasks; the rest is read, counted in
/// `bytes_in` and dropped, so a 50 MB body costs no 50 MB per request in flight.
pub const BODY_KEPT: usize = 1 << 20;

fn classify_io(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    // EMFILE, ENFILE: this machine's descriptor limit, not the server's doing.
    if matches!(e.raw_os_error(), Some(24) | Some(23)) {
        return ErrorKind::FdLimit;
    }
    match e.kind() {
        K::TimedOut => ErrorKind::Timeout,
        K::ConnectionRefused | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            ErrorKind::Connect
        }
        _ => ErrorKind::Reset,
    }
}

/// Sorts a hyper error. `in_body`: the response's head had arrived, so a connection that
/// ended early cut the body short (the server broke HTTP) rather than dropped an idle
/// keep-alive connection (a reset).
fn classify_hyper(e: &hyper::Error, in_body: bool) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Timeout;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                // hyper's body decoders report bad chunking and short bodies this way.
                K::InvalidData | K::InvalidInput => ErrorKind::Protocol,
                K::UnexpectedEof if in_body => ErrorKind::Protocol,
                _ => classify_io(io),
            };
        }
        src = s.source();
    }
    // A head that does not parse, or a body that breaks off, is the server breaking HTTP; a
    // connection that closes before any answer is a reset (an idle keep-alive one, say).
    if in_body || e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ErrorKind::Protocol;
    }
    ErrorKind::Reset
}

/// HTTP/1.1 over an open stream (plain or TLS).
async fn attach<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, ErrorKind>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| classify_hyper(&e, false))?;
    // The connection future drives the socket; it ends when the sender is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Client {
    pub fn new(target: Arc<Target>) -> Self {
        Client {
            target,
            sender: None,
            cookies: Vec::new(),
        }
    }

    pub fn has_connection(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    async fn connect(&mut self) -> Result<(), ErrorKind> {
        let addrs = self.target.addrs().await?;
        let mut last = ErrorKind::Connect;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let sender = match &self.target.tls {
                        None => attach(stream).await?,
                        Some(tls) => {
                            let stream = tls
                                .connector
                                .connect(tls.name.clone(), stream)
                                .await
                                .map_err(|_| ErrorKind::Tls)?;
                            attach(stream).await?
                        }
                    };
                    self.sender = Some(sender);
                    return Ok(());
                }
                Err(e) => last = classify_io(&e),
            }
        }
        Err(last)
    }

    /// Makes sure a connection is open; the time this takes is part of the request's latency.
    pub async fn ensure_connected(&mut self) -> Result<(), ErrorKind> {
        if !self.has_connection() {
            self.sender = None;
            // Boxed: connecting (TCP, TLS, the HTTP/1 handshake) needs far more state than a
            // request on an open connection, and is rare; inline it would be moved with every
            // request's future.
            Box::pin(self.connect()).await?;
        }
        Ok(())
    }

    /// Drops the connection (after a timeout its state is unknown); the next request reconnects.
    pub fn disconnect(&mut self) {
        self.sender = None;
    }

    /// Sends `req` on the open connection and reads the whole response. The caller bounds it
    /// in time and calls `disconnect` when it gives up.
    pub async fn send(
        &mut self,
        mut req: Request<Full<Bytes>>,
        keep_body: bool,
        keep_headers: bool,
    ) -> Result<Response, ErrorKind> {
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if let Ok(v) = HeaderValue::from_str(&jar.join("; ")) {
                req.headers_mut().insert(COOKIE, v);
            }
        }
        let sender = self.sender.as_mut().ok_or(ErrorKind::Reset)?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| classify_hyper(&e, false))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| classify_hyper(&e, false))?;
            let status = resp.status().as_u16();
            let headers: Vec<(String, String)> = if keep_headers {
                resp.headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let cookies: Vec<(String, String)> = resp
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| {
                    let pair = v.split(';').next()?;
                    let (k, val) = pair.split_once('=')?;
                    Some((k.trim().to_string(), val.trim().to_string()))
                })
                .collect();
            // One allocation of the size that will be kept, not a chain of doublings (each
            // a copy, and fragments the allocator keeps when large bodies come in parallel).
            let announced = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let mut kept = match announced {
                Some(n) if keep_body => Vec::with_capacity(n.min(BODY_KEPT)),
                _ => Vec::new(),
            };
            let mut body = resp.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| classify_hyper(&e, true))?;
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    if keep_body && kept.len() < BODY_KEPT {
                        let room = BODY_KEPT - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
            Ok::<_, ErrorKind>((status, bytes, Bytes::from(kept), cookies, headers))
        };
        match exchange.await {
            Ok((status, bytes, body, cookies, headers)) => {
                for (k, v) in cookies {
                    match self.cookies.iter_mut().find(|(n, _)| *n == k) {
                        Some(slot) => slot.1 = v,
                        None => self.cookies.push((k, v)),
                    }
                }
                Ok(Response {
                    status,
                    bytes,
                    body,
                    headers,
                })
            }
            Err(kind) => {
                self.sender = None;
                Err(kind)
            }
        }
    }
}

/// A request of a task, compiled once per run.
pub struct CompiledRequest {
    method: Method,
    path: Template,
    headers: Vec<(HeaderName, Template)>,
    body: Option<Template>,
    json: bool,
    pub timeout: Duration,
    pub check: Check,
    /// Set when nothing in the request varies: the request is cloned instead of rendered.
    constant: Option<Request<Full<Bytes>>>,
}

impl CompiledRequest {
    pub fn compile(
        spec: &RequestSpec,
        scope: &Scope,
        target: &Target,
        default_timeout: f64,
        at: &str,
    ) -> Result<Self> {
        let method = Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::plan(format!("{at}.method"), format!("{:?}", spec.method)))?;
        if !spec.path.starts_with('/') {
            return Err(Error::plan(
                format!("{at}.path"),
                format!("must start with '/', got {:?}", spec.path),
            ));
        }
        let path = Template::compile(
            &format!("{}{}", target.base_path, spec.path),
            scope,
            &format!("{at}.path"),
        )?;
        let mut headers = Vec::new();
        for (k, v) in &spec.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                Error::plan(format!("{at}.headers"), format!("bad header name {k:?}"))
            })?;
            headers.push((
                name,
                Template::compile(v, scope, &format!("{at}.headers.{k}"))?,
            ));
        }
        let (body, json) = match (&spec.body, &spec.json) {
            (Some(_), Some(_)) => {
                return Err(Error::plan(at, "give either body or json, not both"));
            }
            (Some(b), None) => (
                Some(Template::compile(b, scope, &format!("{at}.body"))?),
                false,
            ),
            (None, Some(j)) => (
                Some(Template::compile(
                    &j.to_string(),
                    scope,
                    &format!("{at}.json"),
                )?),
                true,
            ),
            (None, None) => (None, false),
        };
        let timeout = spec.timeout_s.unwrap_or(default_timeout);
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(Error::plan(format!("{at}.timeout_s"), "must be > 0"));
        }
        let check = match &spec.expect {
            Some(e) => Check::compile(e, scope, &format!("{at}.expect"))?,
            None => Check::default(),
        };
        let mut req = CompiledRequest {
            method,
            path,
            headers,
            body,
            json,
            timeout: Duration::from_secs_f64(timeout),
            check,
            constant: None,
        };
        let varies = req.path.as_constant().is_none()
            || req.headers.iter().any(|(_, t)| t.as_constant().is_none())
            || req.body.as_ref().is_some_and(|b| b.as_constant().is_none());
        if !varies {
            let empty = Values {
                vu: 0,
                iter: 0,
                row: None,
                user: None,
            };
            let built = req.render(&empty, target).map_err(|m| Error::plan(at, m))?;
            req.constant = Some(built);
        }
        Ok(req)
    }

    fn render(&self, v: &Values<'_>, target: &Target) -> Result<Request<Full<Bytes>>, String> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(encode_target(&self.path.render(v)).as_ref())
            .header(HOST, target.authority.clone());
        for (name, t) in &self.headers {
            b = b.header(name, t.render(v));
        }
        if self.json {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        let body = self
            .body
            .as_ref()
            .map(|t| Bytes::from(t.render(v)))
            .unwrap_or_default();
        b.body(Full::new(body)).map_err(|e| e.to_string())
    }

    /// The request for one iteration. A rendered value that is not valid in HTTP (say a header
    /// value with a newline from a feeder row) is a check failure of that iteration.
    pub fn build(
        &self,
        v: &Values<'_>,
        target: &Target,
    ) -> Result<Request<Full<Bytes>>, ErrorKind> {
        if let Some(c) = &self.constant {
            let mut r = Request::new(c.body().clone());
            *r.method_mut() = c.method().clone();
            *r.uri_mut() = c.uri().clone();
            *r.headers_mut() = c.headers().clone();
            return Ok(r);
        }
        self.render(v, target).map_err(|_| ErrorKind::Check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_out_of_range_is_an_error_not_port_80() {
        for url in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://[::1]:70000/x",
        ] {
            let err = Target::parse(url, false).unwrap_err().to_string();
            assert!(err.contains("is not a port"), "{url}: {err}");
        }
        assert_eq!(Target::parse("http://127.0.0.1", false).unwrap().port, 80);
        assert_eq!(Target::parse("https://localhost", true).unwrap().port, 443);
        assert_eq!(
            Target::parse("http://[::1]:8080", false).unwrap().port,
            8080
        );
    }

    #[test]
    fn characters_a_target_may_not_hold_are_percent_encoded() {
        assert_eq!(
            encode_target("/search?q=<b>x</b> y&z=é"),
            "/search?q=%3Cb%3Ex%3C/b%3E%20y&z=%C3%A9"
        );
        // Reserved characters and escapes already made stay as they are.
        let kept = "/a/b?c=1&d=%20e+f;g=(h)*i,j:k@l!$'~";
        assert_eq!(encode_target(kept), kept);
        assert!(matches!(encode_target(kept), std::borrow::Cow::Borrowed(_)));
        assert!(encode_target("/{\"a\"}|\\^`").parse::<Uri>().is_ok());
    }

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_the_server() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(classify_io(&emfile), ErrorKind::FdLimit);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), ErrorKind::Connect);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset), ErrorKind::Reset);
    }

    #[test]
    fn every_counted_kind_has_its_own_name() {
        let names: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}

//! The HTTP side of a virtual user: on HTTP/1.1 one keep-alive connection it owns (spoken by
//! `h1`), on HTTP/2 a stream at a time on a connection its group of users shares (`h2`);
//! requests built from compiled templates, per-user cookies, and errors sorted into kinds.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING,
};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Uri};
use tokio::net::TcpStream;

use crate::h1::{self, Stream};
use crate::http2;
use crate::plan::HttpVersion;

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
    /// HTTP/2: the server's GOAWAY refused the request (a stream it will not process). One cut
    /// off when the connection then closes is a `Reset`.
    GoAway,
    /// HTTP/2: the server reset the request's stream (RST_STREAM).
    RstStream,
}

impl ErrorKind {
    /// The kinds counted in metrics, in column order.
    pub const ALL: [ErrorKind; 12] = [
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
        ErrorKind::GoAway,
        ErrorKind::RstStream,
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
            ErrorKind::GoAway => "goaway",
            ErrorKind::RstStream => "rst_stream",
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
    http: HttpVersion,
    /// `http = auto` over TLS: whether the server chose HTTP/2 by ALPN (asked once a run).
    negotiated: tokio::sync::OnceCell<bool>,
    origin: http2::Origin,
    pool: http2::Pool,
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
    /// `insecure` accepts any certificate from an `https://` target. Speaks HTTP/1.1.
    pub fn parse(url: &str, insecure: bool) -> Result<Arc<Self>> {
        Self::with_http(url, insecure, HttpVersion::Http1, 1)
    }

    /// As `parse`, speaking `http`; on HTTP/2 up to `max_streams` users share a connection.
    pub fn with_http(
        url: &str,
        insecure: bool,
        http: HttpVersion,
        max_streams: u32,
    ) -> Result<Arc<Self>> {
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
                connector: tokio_rustls::TlsConnector::from(crate::tls::client_config(
                    insecure,
                    match http {
                        HttpVersion::Http1 => &[b"http/1.1"],
                        HttpVersion::Http2 => &[b"h2"],
                        HttpVersion::Auto => &[b"h2", b"http/1.1"],
                    },
                )),
                name: crate::tls::server_name(host)?,
            })
        } else {
            None
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        let origin = http2::Origin {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority: auth.clone(),
        };
        Ok(Arc::new(Target {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| bad("bad host"))?,
            base_path,
            tls,
            resolved: OnceLock::new(),
            http,
            negotiated: tokio::sync::OnceCell::new(),
            origin,
            pool: http2::Pool::new(max_streams),
        }))
    }

    /// Whether requests go over HTTP/2: as the plan says, or (`auto`) as the server chose by
    /// ALPN on a first connection (over cleartext `auto` is HTTP/1.1).
    async fn speaks_h2(&self) -> Result<bool, ErrorKind> {
        match (self.http, &self.tls) {
            (HttpVersion::Http1, _) | (HttpVersion::Auto, None) => Ok(false),
            (HttpVersion::Http2, _) => Ok(true),
            (HttpVersion::Auto, Some(_)) => self
                .negotiated
                .get_or_try_init(|| async {
                    let stream = Box::pin(self.connect()).await?;
                    Ok(matches!(&stream, Stream::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2")))
                })
                .await
                .copied(),
        }
    }

    /// A new connection (TCP, then TLS for `https://`).
    async fn connect(&self) -> Result<Stream, ErrorKind> {
        let addrs = self.addrs().await?;
        let mut last = ErrorKind::Connect;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Stream::Plain(stream)),
                        Some(tls) => Ok(Stream::Tls(Box::new(
                            tls.connector
                                .connect(tls.name.clone(), stream)
                                .await
                                .map_err(|_| ErrorKind::Tls)?,
                        ))),
                    };
                }
                Err(e) => last = classify_io(&e),
            }
        }
        Err(last)
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

/// A request ready to send: its parts, and HTTP/1.1's head written once.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub method: Method,
    /// Path and query, as sent.
    pub path: PathAndQuery,
    /// The request's own headers (no `host`, `content-length` or `cookie`).
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    pub body: Bytes,
    /// Request line and header lines (`host` and `content-length` included), each ending
    /// in CRLF, without the blank line.
    h1_head: Bytes,
}

impl Outgoing {
    /// `path` is percent-encoded where it must be; a header that is not valid in HTTP is an
    /// error.
    pub fn new(
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        authority: &HeaderValue,
    ) -> Result<Self, String> {
        let path: PathAndQuery = encode_target(path)
            .parse()
            .map_err(|e| format!("bad request path: {e}"))?;
        let has = |n: &HeaderName| headers.iter().any(|(k, _)| k == n);
        let mut head = BytesMut::with_capacity(128);
        head.put_slice(method.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(path.as_str().as_bytes());
        head.put_slice(b" HTTP/1.1\r\n");
        if !has(&HOST) {
            head.put_slice(b"host: ");
            head.put_slice(authority.as_bytes());
            head.put_slice(b"\r\n");
        }
        for (k, v) in &headers {
            head.put_slice(k.as_str().as_bytes());
            head.put_slice(b": ");
            head.put_slice(v.as_bytes());
            head.put_slice(b"\r\n");
        }
        let expects_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        if (!body.is_empty() || expects_body) && !has(&CONTENT_LENGTH) && !has(&TRANSFER_ENCODING) {
            head.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        Ok(Outgoing {
            method,
            path,
            headers: headers.into(),
            body,
            h1_head: head.freeze(),
        })
    }
}

/// One virtual user's connection and cookies.
pub struct Client {
    target: Arc<Target>,
    /// The user's number: on HTTP/2 it picks the shared connection.
    user: u64,
    conn: Option<Stream>,
    h2: Option<http2::Conn>,
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

pub(crate) fn classify_io(e: &std::io::Error) -> ErrorKind {
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
        K::InvalidData => ErrorKind::Protocol,
        _ => ErrorKind::Reset,
    }
}

impl Client {
    /// User `user`'s client (on HTTP/2, users `k * max_streams ..` share a connection).
    pub fn new(target: Arc<Target>, user: u64) -> Self {
        Client {
            target,
            user,
            conn: None,
            h2: None,
            cookies: Vec::new(),
        }
    }

    pub fn has_connection(&self) -> bool {
        self.conn.is_some() || self.h2.as_ref().is_some_and(|c| !c.is_dead())
    }

    /// Makes sure a connection is open; the time this takes is part of the request's latency.
    /// A kept-alive connection the server has closed meanwhile is replaced.
    pub async fn ensure_connected(&mut self) -> Result<(), ErrorKind> {
        if self.conn.as_mut().is_some_and(Stream::is_stale) {
            self.conn = None;
        }
        if self.h2.as_ref().is_some_and(http2::Conn::is_dead) {
            self.h2 = None;
        }
        if self.conn.is_none() && self.h2.is_none() {
            // Boxed: connecting (TCP, TLS) needs far more state than a request on an open
            // connection, and is rare; inline it would be moved with every request's future.
            Box::pin(self.connect()).await?;
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), ErrorKind> {
        let target = self.target.clone();
        if target.speaks_h2().await? {
            let conn = target.pool.get(self.user, || target.connect()).await?;
            self.h2 = Some(conn);
        } else {
            self.conn = Some(target.connect().await?);
        }
        Ok(())
    }

    /// A request got no answer within `timeout`: its connection's state is unknown, so it is
    /// dropped (the next request reconnects). On HTTP/2 the user lets go of its group's
    /// connection, which must answer a PING within `timeout` to be kept for the others.
    pub fn timed_out(&mut self, timeout: Duration) {
        if let Some(conn) = &self.h2 {
            conn.suspect(timeout);
        }
        self.disconnect();
    }

    /// Drops the connection (after a timeout its state is unknown); the next request reconnects.
    /// On HTTP/2 the user lets go of its group's connection; the others keep it.
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.h2 = None;
    }

    /// Sends `req` on the open connection and reads the whole response. The caller bounds it
    /// in time and calls `disconnect` when it gives up.
    pub async fn send(
        &mut self,
        req: Outgoing,
        keep_body: bool,
        keep_headers: bool,
    ) -> Result<Response, ErrorKind> {
        let jar = (!self.cookies.is_empty()).then(|| {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            jar.join("; ")
        });
        // A cookie the server set that is not valid in a header is not sent back.
        let cookie = jar.as_deref().and_then(|j| HeaderValue::from_str(j).ok());
        let result = if let Some(conn) = &self.h2 {
            http2::exchange(
                conn,
                &self.target.origin,
                &req,
                cookie.as_ref(),
                keep_body,
                keep_headers,
            )
            .await
        } else {
            let stream = self.conn.as_mut().ok_or(ErrorKind::Reset)?;
            let sent = h1::Sent {
                head: &req.h1_head,
                cookie: cookie.as_ref().map(HeaderValue::as_bytes),
                body: &req.body,
                head_only: req.method == Method::HEAD,
            };
            h1::exchange(stream, sent, keep_body, keep_headers).await
        };
        match result {
            Ok(got) => {
                if !got.reusable {
                    self.conn = None;
                }
                for (k, v) in got.set_cookies {
                    match self.cookies.iter_mut().find(|(n, _)| *n == k) {
                        Some(slot) => slot.1 = v,
                        None => self.cookies.push((k, v)),
                    }
                }
                Ok(Response {
                    status: got.status,
                    bytes: got.bytes,
                    body: Bytes::from(got.body),
                    headers: got.headers,
                })
            }
            Err(kind) => {
                // HTTP/1.1: the connection's state is unknown. HTTP/2: a failure of the
                // connection has marked it dead for all its users (`ensure_connected`).
                self.conn = None;
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
    constant: Option<Outgoing>,
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

    fn render(&self, v: &Values<'_>, target: &Target) -> Result<Outgoing, String> {
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, t) in &self.headers {
            let value = HeaderValue::from_str(&t.render(v))
                .map_err(|_| format!("header {name} is not valid in HTTP"))?;
            headers.push((name.clone(), value));
        }
        if self.json && !headers.iter().any(|(k, _)| k == CONTENT_TYPE) {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        let body = self
            .body
            .as_ref()
            .map(|t| Bytes::from(t.render(v)))
            .unwrap_or_default();
        Outgoing::new(
            self.method.clone(),
            &self.path.render(v),
            headers,
            body,
            &target.authority,
        )
    }

    /// The request for one iteration. A rendered value that is not valid in HTTP (say a header
    /// value with a newline from a feeder row) is a check failure of that iteration.
    pub fn build(&self, v: &Values<'_>, target: &Target) -> Result<Outgoing, ErrorKind> {
        if let Some(c) = &self.constant {
            return Ok(c.clone());
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

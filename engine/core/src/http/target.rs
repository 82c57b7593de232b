//! The parsed target URL: where to connect (DNS resolved once a run), TLS and ALPN, the HTTP
//! version spoken, and the pool of shared HTTP/2 connections.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::http::uri::Scheme;
use hyper::Uri;
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::http::h1::Stream;
use crate::http::http2;
use crate::outcome::{classify_io, ErrorKind};
use crate::plan::HttpVersion;

/// The parsed target: where to connect and what to send as `Host`.
#[derive(Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub(super) authority: HeaderValue,
    pub(super) base_path: String,
    tls: Option<Tls>,
    resolved: OnceLock<Vec<SocketAddr>>,
    http: HttpVersion,
    /// `http = auto` over TLS: whether the server chose HTTP/2 by ALPN (asked once a run).
    negotiated: tokio::sync::OnceCell<bool>,
    pub(super) origin: http2::Origin,
    pub(super) pool: http2::Pool,
    /// The hosts redirects may lead to (`allow::url_allowed`); `None`: any.
    allow: Option<Arc<[String]>>,
    insecure: bool,
    max_streams: u32,
    /// The other origins redirects led to, each parsed (and resolved) once a run.
    others: std::sync::Mutex<Vec<Arc<Target>>>,
    /// Connections opened to it so far (each numbered by it as it opens).
    pub(super) opened: std::sync::atomic::AtomicU64,
    /// The longest a connection may take to open, its name's lookup, TCP and TLS handshakes
    /// together (`connect`).
    connect_timeout: Duration,
}

/// How long a connection may take to open unless a plan says (`connect_timeout_s`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most other origins a run's redirects may lead to.
pub const MAX_OTHER_ORIGINS: usize = 64;

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
        Self::build(
            url,
            insecure,
            http,
            max_streams,
            None,
            DEFAULT_CONNECT_TIMEOUT,
        )
        .map(Arc::new)
    }

    /// A plan's target; redirects may lead only to the hosts `allow` names, if given.
    pub fn of_plan(plan: &crate::plan::Plan) -> Result<Arc<Self>> {
        let allow = plan.allow_hosts.as_ref().map(|a| a.clone().into());
        Self::build(
            &plan.target,
            plan.insecure,
            plan.http,
            plan.max_streams,
            allow,
            Duration::from_secs_f64(plan.connect_timeout_s),
        )
        .map(Arc::new)
    }

    fn build(
        url: &str,
        insecure: bool,
        http: HttpVersion,
        max_streams: u32,
        allow: Option<Arc<[String]>>,
        connect_timeout: Duration,
    ) -> Result<Self> {
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
                connector: tokio_rustls::TlsConnector::from(crate::http::tls::client_config(
                    insecure,
                    match http {
                        HttpVersion::Http1 => &[b"http/1.1"],
                        HttpVersion::Http2 => &[b"h2"],
                        HttpVersion::Auto => &[b"h2", b"http/1.1"],
                    },
                )),
                name: crate::http::tls::server_name(host)?,
            })
        } else {
            None
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        let origin = http2::Origin {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority: auth.clone(),
        };
        Ok(Target {
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
            allow,
            insecure,
            max_streams,
            others: std::sync::Mutex::new(Vec::new()),
            opened: std::sync::atomic::AtomicU64::new(0),
            connect_timeout,
        })
    }

    /// The absolute URL of `path` (path and query, as sent) on this target.
    pub(super) fn url_of(&self, path: &str) -> Result<url::Url, String> {
        let s = format!("{}://{}{path}", self.origin.scheme, self.origin.authority);
        url::Url::parse(&s).map_err(|e| format!("{s}: {e}"))
    }

    /// Whether `url` is on this target's origin (scheme, host, port).
    pub(super) fn serves(&self, url: &url::Url) -> bool {
        let host = url.host_str().unwrap_or("");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (url.scheme() == "https") == self.tls.is_some()
            && url.port_or_known_default() == Some(self.port)
            && host.eq_ignore_ascii_case(&self.host)
    }

    /// The target of another origin a redirect led to: refused (with why) if the run's
    /// allow-list does not name its host, or past `MAX_OTHER_ORIGINS`. It speaks as this one
    /// (TLS checks, HTTP version), keeps its own connections and shares its run's redirects'
    /// allow-list.
    pub(super) fn other(&self, url: &url::Url) -> Result<Arc<Target>, String> {
        let origin = url.origin().ascii_serialization();
        if let Some(allow) = &self.allow {
            if !crate::http::allow::url_allowed(&origin, allow) {
                let named = if allow.is_empty() {
                    "loopback".to_string()
                } else {
                    allow.join(", ")
                };
                return Err(format!(
                    "redirect to {origin} refused: not an allowed target (allowed: {named})"
                ));
            }
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = others.iter().find(|t| t.serves(url)) {
            return Ok(t.clone());
        }
        if others.len() >= MAX_OTHER_ORIGINS {
            return Err(format!(
                "redirect to {origin}: more than {MAX_OTHER_ORIGINS} other origins in one run"
            ));
        }
        let t = Self::build(
            &origin,
            self.insecure,
            self.http,
            self.max_streams,
            self.allow.clone(),
            self.connect_timeout,
        )
        .map(Arc::new)
        .map_err(|e| format!("redirect to {origin}: {e}"))?;
        others.push(t.clone());
        Ok(t)
    }

    /// Whether requests go over HTTP/2: as the plan says, or (`auto`) as the server chose by
    /// ALPN on a first connection (over cleartext `auto` is HTTP/1.1).
    pub(super) async fn speaks_h2(&self) -> Result<bool, ErrorKind> {
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

    /// A new connection (TCP, then TLS for `https://`), opened within the connect timeout;
    /// the step it runs out in gives the error's kind: the name's lookup `dns`, the TCP
    /// handshake `connect` (a target that drops SYNs would otherwise hold the request for its
    /// whole timeout, and the run's end would find it still waiting), the TLS handshake `tls`.
    pub(super) async fn connect(&self) -> Result<Stream, ErrorKind> {
        let within = tokio::time::Instant::now() + self.connect_timeout;
        let addrs = tokio::time::timeout_at(within, self.addrs())
            .await
            .map_err(|_| ErrorKind::Dns)??;
        let mut last = ErrorKind::Connect;
        for addr in addrs {
            match tokio::time::timeout_at(within, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Stream::Plain(stream)),
                        Some(tls) => Ok(Stream::Tls(Box::new(
                            tokio::time::timeout_at(
                                within,
                                tls.connector.connect(tls.name.clone(), stream),
                            )
                            .await
                            .map_err(|_| ErrorKind::Tls)?
                            .map_err(|_| ErrorKind::Tls)?,
                        ))),
                    };
                }
                Ok(Err(e)) => last = classify_io(&e),
                Err(_) => last = ErrorKind::Connect,
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
}

//! One virtual user's client: its connection (HTTP/1.1) or stream of a shared connection
//! (HTTP/2), its cookies, and the response as metrics, checks and Python tasks see it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;

use crate::error::Result;
use crate::http::h1::{self, Stream};
use crate::http::http2;
use crate::http::{redirect, Outgoing, Target};
use crate::outcome::{ErrorKind, Failed};

/// One virtual user's connection and cookies, and its connections to the other origins its
/// redirects led to.
pub struct Client {
    /// The user's number: on HTTP/2 it picks the shared connection.
    user: u64,
    /// The target's connection.
    main: Link,
    /// Other origins' connections, opened by redirects.
    others: Vec<Link>,
    /// The user's cookies, by host (as browsers keep them: whatever the port).
    cookies: Vec<Cookie>,
}

/// A connection to one origin: HTTP/1.1's own, or a stream of a shared HTTP/2 one.
struct Link {
    target: Arc<Target>,
    conn: Option<Stream>,
    h2: Option<http2::Conn>,
    /// The connection's number (its target's count when it opened); 0 before the first.
    number: u64,
}

struct Cookie {
    host: String,
    name: String,
    value: String,
}

/// A response as far as metrics, checks and Python tasks care.
pub struct Response {
    pub status: u16,
    /// Bytes of every answer of the exchange (its redirects' too).
    pub bytes: u64,
    /// Kept when asked for (checks on the body, Python tasks); empty otherwise.
    pub body: Bytes,
    /// Kept for Python tasks only.
    pub headers: Vec<(String, String)>,
    /// A redirect's `Location`, when it was not followed.
    pub location: Option<String>,
    /// Redirects followed to get this answer.
    pub redirects: u32,
    /// Where the redirects led (absolute URL); `None` when none was followed.
    pub url: Option<String>,
    /// From the instant the request was sent to its last answer (Python tasks' responses;
    /// zero elsewhere).
    pub elapsed: Duration,
}

/// Bytes of a response body kept for checks and Python tasks; the rest is read, counted in
/// `bytes_in` and dropped, so a 50 MB body costs no 50 MB per request in flight.
pub const BODY_KEPT: usize = 1 << 20;

/// What of a response to keep beyond its status and size: the body (for checks and Python),
/// the headers (for Python).
#[derive(Clone, Copy)]
pub struct Keep {
    pub body: bool,
    pub headers: bool,
}

impl Link {
    fn new(target: Arc<Target>) -> Self {
        Link {
            target,
            conn: None,
            h2: None,
            number: 0,
        }
    }

    fn disconnect(&mut self) {
        self.conn = None;
        self.h2 = None;
    }

    /// Makes sure a connection is open; the time this takes is part of the request's latency.
    /// A kept-alive connection the server has closed meanwhile is replaced.
    async fn ensure_connected(&mut self, user: u64) -> Result<(), ErrorKind> {
        if self.conn.as_mut().is_some_and(Stream::is_stale) {
            self.conn = None;
        }
        if self.h2.as_ref().is_some_and(http2::Conn::is_dead) {
            self.h2 = None;
        }
        if self.conn.is_none() && self.h2.is_none() {
            // Boxed: connecting (TCP, TLS) needs far more state than a request on an open
            // connection, and is rare; inline it would be moved with every request's future.
            Box::pin(self.connect(user)).await?;
        }
        Ok(())
    }

    async fn connect(&mut self, user: u64) -> Result<(), ErrorKind> {
        let target = self.target.clone();
        if target.speaks_h2().await? {
            let conn = target.pool.get(user, || target.connect()).await?;
            self.h2 = Some(conn);
        } else {
            self.conn = Some(target.connect().await?);
        }
        self.number = target.opened.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(())
    }
}

impl Client {
    /// User `user`'s client (on HTTP/2, users `k * max_streams ..` share a connection).
    pub fn new(target: Arc<Target>, user: u64) -> Self {
        Client {
            user,
            main: Link::new(target),
            others: Vec::new(),
            cookies: Vec::new(),
        }
    }

    pub fn has_connection(&self) -> bool {
        self.main.conn.is_some() || self.main.h2.as_ref().is_some_and(|c| !c.is_dead())
    }

    /// The number of the target's connection this user is on (as the run opened them; on
    /// HTTP/2, as its users took the shared one), if it has one.
    pub fn connection(&self) -> Option<u64> {
        (self.main.number > 0 && self.has_connection()).then_some(self.main.number)
    }

    /// Makes sure a connection to the target is open; the time this takes is part of the
    /// request's latency.
    pub async fn ensure_connected(&mut self) -> Result<(), ErrorKind> {
        self.main.ensure_connected(self.user).await
    }

    /// A request got no answer within `timeout`: its connection's state is unknown, so it is
    /// dropped (the next request reconnects). On HTTP/2 the user lets go of its group's
    /// connection, which must answer a PING within `timeout` to be kept for the others.
    pub fn timed_out(&mut self, timeout: Duration) {
        for link in std::iter::once(&self.main).chain(&self.others) {
            if let Some(conn) = &link.h2 {
                conn.suspect(timeout);
            }
        }
        self.disconnect();
    }

    /// Drops the connections (after a timeout their state is unknown); the next request
    /// reconnects. On HTTP/2 the user lets go of its group's connection; the others keep it.
    pub fn disconnect(&mut self) {
        self.main.disconnect();
        self.others.iter_mut().for_each(Link::disconnect);
    }

    /// Sends `req` on the open connection to the target and reads the whole response, then
    /// follows up to `max_redirects` redirects (each hop on the connection of its origin).
    /// The caller bounds it in time and calls `disconnect` when it gives up.
    pub async fn fetch(
        &mut self,
        req: Outgoing,
        keep: Keep,
        max_redirects: u32,
    ) -> Result<Response, Failed> {
        let resp = self.send(None, &req, keep).await?;
        if max_redirects > 0 && redirect::is_followed(resp.status) && resp.location.is_some() {
            // Boxed: rare, and its state would otherwise weigh on every request's future.
            return Box::pin(self.follow(req, resp, keep, max_redirects)).await;
        }
        Ok(resp)
    }

    /// The redirects after `resp`, the answer to `req`: up to `max` hops, each measured as
    /// part of the one exchange.
    async fn follow(
        &mut self,
        mut req: Outgoing,
        mut resp: Response,
        keep: Keep,
        max: u32,
    ) -> Result<Response, Failed> {
        let redirect = |m: String| Failed::new(ErrorKind::Redirect, m);
        let mut url = self
            .main
            .target
            .url_of(req.path.as_str())
            .map_err(redirect)?;
        let mut at: Option<usize> = None;
        let mut chain = vec![url.clone()];
        let mut bytes = resp.bytes;
        let mut hops = 0;
        while redirect::is_followed(resp.status) {
            let Some(location) = resp.location.take() else {
                break;
            };
            let next = redirect::resolve(&url, &location).map_err(redirect)?;
            if hops == max {
                let looped = chain.contains(&next);
                chain.push(next);
                // Each hop as its path where it stays on the first's origin.
                let first = chain[0].origin();
                let path: Vec<&str> = chain
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        if i > 0 && u.origin() == first {
                            &u[url::Position::BeforePath..]
                        } else {
                            u.as_str()
                        }
                    })
                    .collect();
                let what = if looped {
                    "redirect loop"
                } else {
                    "too many redirects"
                };
                return Err(redirect(format!(
                    "{what} (more than {max}): {}",
                    path.join(" -> ")
                )));
            }
            let to = if self.main.target.serves(&next) {
                None
            } else {
                Some(self.link_to(&next).map_err(redirect)?)
            };
            let link = match to {
                None => &mut self.main,
                Some(i) => &mut self.others[i],
            };
            req = req
                .redirected(resp.status, &next, &link.target.authority, to != at)
                .map_err(redirect)?;
            link.ensure_connected(self.user).await?;
            resp = self.send(to, &req, keep).await?;
            bytes += resp.bytes;
            hops += 1;
            at = to;
            url = next;
            chain.push(url.clone());
        }
        resp.bytes = bytes;
        resp.redirects = hops;
        resp.url = Some(url.to_string());
        Ok(resp)
    }

    /// The index in `others` of the link to `url`'s origin, opened if new.
    fn link_to(&mut self, url: &url::Url) -> Result<usize, String> {
        if let Some(i) = self.others.iter().position(|l| l.target.serves(url)) {
            return Ok(i);
        }
        let target = self.main.target.other(url)?;
        self.others.push(Link::new(target));
        Ok(self.others.len() - 1)
    }

    /// The `Cookie` header for a request to `host`: the request's own, then the user's.
    fn cookie_header(&self, host: &str, own: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut line: Vec<u8> = own.map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        for c in self.cookies.iter().filter(|c| c.host == host) {
            if !line.is_empty() {
                line.extend_from_slice(b"; ");
            }
            line.extend_from_slice(c.name.as_bytes());
            line.push(b'=');
            line.extend_from_slice(c.value.as_bytes());
        }
        if line.is_empty() {
            return None;
        }
        // A cookie the server set that is not valid in a header is not sent back.
        HeaderValue::from_bytes(&line).ok().or_else(|| own.cloned())
    }

    /// Sends `req` on the open connection of `link` (`None`: the target's) and reads the
    /// whole response.
    async fn send(
        &mut self,
        link: Option<usize>,
        req: &Outgoing,
        keep: Keep,
    ) -> Result<Response, Failed> {
        let cookie = if self.cookies.is_empty() && req.cookie.is_none() {
            None
        } else {
            let l = link.map_or(&self.main, |i| &self.others[i]);
            self.cookie_header(&l.target.host, req.cookie.as_ref())
        };
        let l = match link {
            None => &mut self.main,
            Some(i) => &mut self.others[i],
        };
        let result = if let Some(conn) = &l.h2 {
            http2::exchange(
                conn,
                &l.target.origin,
                req,
                cookie.as_ref(),
                keep.body,
                keep.headers,
            )
            .await
        } else {
            let stream = l.conn.as_mut().ok_or(ErrorKind::Reset)?;
            let trace = req.trace.map(|t| t.bytes());
            let sent = h1::Sent {
                head: &req.h1_head,
                cookie: cookie.as_ref().map(HeaderValue::as_bytes),
                trace: trace.as_ref().map(|t| &t[..]),
                body: &req.body,
                head_only: req.method == Method::HEAD,
            };
            h1::exchange(stream, sent, keep.body, keep.headers).await
        };
        match result {
            Ok(got) => {
                if !got.reusable {
                    l.conn = None;
                }
                let target = (!got.set_cookies.is_empty()).then(|| l.target.clone());
                for (name, value) in got.set_cookies {
                    let host = target.as_ref().map_or("", |t| t.host.as_str());
                    match self
                        .cookies
                        .iter_mut()
                        .find(|c| c.name == name && c.host == host)
                    {
                        Some(c) => c.value = value,
                        None => self.cookies.push(Cookie {
                            host: host.to_string(),
                            name,
                            value,
                        }),
                    }
                }
                Ok(Response {
                    status: got.status,
                    bytes: got.bytes,
                    body: Bytes::from(got.body),
                    headers: got.headers,
                    location: got.location,
                    redirects: 0,
                    url: None,
                    elapsed: Duration::ZERO,
                })
            }
            Err(kind) => {
                // HTTP/1.1: the connection's state is unknown. HTTP/2: a failure of the
                // connection has marked it dead for all its users (`ensure_connected`).
                l.conn = None;
                Err(kind.into())
            }
        }
    }
}

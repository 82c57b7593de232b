//! One virtual user's client: its connection (HTTP/1.1) or stream of a shared connection
//! (HTTP/2), its cookies, and the response as metrics, checks and Python tasks see it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;

use crate::error::Result;
use crate::http::h1::{self, Stream};
use crate::http::http2;
use crate::http::{Outgoing, Target};
use crate::outcome::ErrorKind;

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

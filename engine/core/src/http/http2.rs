//! HTTP/2 for a target that speaks it (the `h2` crate: framing, HPACK, flow control, SETTINGS).
//! A connection carries the streams of up to `max_streams` users: users `0..max_streams` share
//! the first, and so on. Each user holds a handle on its group's connection; a connection that
//! ended (closed, reset, GOAWAY) is replaced by the next user of its group to send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, COOKIE, HOST};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, Uri};

use crate::http::body::Payload;
use crate::http::h1::{cookie_pair, Body, Got, Stream};
use crate::http::Outgoing;
use crate::outcome::{classify_io, ErrorKind};

/// A stream's receive window; the connection's is `CONNECTION_WINDOW`. Larger than the
/// protocol's 64 KiB default so that a large body is not paced by window updates.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// One user's handle on a shared connection.
#[derive(Clone)]
pub struct Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Set when the connection ended or failed: its users connect again.
    dead: Arc<AtomicBool>,
    /// Asks the connection's prober for a PING answered within the given time.
    probe: tokio::sync::mpsc::Sender<Duration>,
}

impl Conn {
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// A request on this connection got no answer in time. Others may just be slow, so the
    /// connection is not dropped for it: it is sent a PING, and if no PONG comes back
    /// `within`, it is marked dead, so its users connect again rather than wait out their
    /// timeouts on a connection that no longer answers. One probe at a time.
    pub fn suspect(&self, within: Duration) {
        let _ = self.probe.try_send(within);
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// The connections of a run's users, one per group of `max_streams` users.
pub struct Pool {
    max_streams: u32,
    slots: Mutex<HashMap<u64, Slot>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_streams", &self.max_streams)
            .finish()
    }
}

impl Pool {
    pub fn new(max_streams: u32) -> Self {
        Pool {
            max_streams: max_streams.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, user: u64) -> Slot {
        let group = user / u64::from(self.max_streams);
        let mut slots = self.slots.lock().expect("no panic holds this lock");
        slots.entry(group).or_default().clone()
    }

    /// The live connection of `user`'s group, made with `connect` (TCP, TLS) if there is none.
    /// Users of the group who ask meanwhile wait for the same connection.
    pub async fn get<F, Fut>(&self, user: u64, connect: F) -> Result<Conn, ErrorKind>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Stream, ErrorKind>>,
    {
        let slot = self.slot(user);
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        *held = None;
        let io = connect().await?;
        let conn = handshake(io, self.max_streams).await?;
        *held = Some(conn.clone());
        Ok(conn)
    }
}

async fn handshake<T>(io: T, max_streams: u32) -> Result<Conn, ErrorKind>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_max_send_streams(max_streams as usize)
        .max_concurrent_reset_streams(max_streams as usize * 2)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| kind(&e))?;
    let dead = Arc::new(AtomicBool::new(false));
    let pings = connection.ping_pong();
    let flag = dead.clone();
    tokio::spawn(async move {
        let _ = Batched::new(connection).await;
        flag.store(true, Ordering::Relaxed);
    });
    let (probe, mut probes) = tokio::sync::mpsc::channel::<Duration>(1);
    if let Some(mut pings) = pings {
        let flag = dead.clone();
        // Ends when the connection's last handle is dropped (or it is found dead).
        tokio::spawn(async move {
            while let Some(within) = probes.recv().await {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let pong = tokio::time::timeout(within, pings.ping(h2::Ping::opaque())).await;
                if !matches!(pong, Ok(Ok(_))) {
                    flag.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
    }
    Ok(Conn { send, dead, probe })
}

/// A connection's task, which lets the users woken with it go first. A user that sends a
/// request wakes the connection to write it, and tokio runs a task just woken next: polled at
/// once, the connection would write each request on its own (one `sendto` per request,
/// measured). Put back behind the tasks already runnable, it finds every request they queued
/// meanwhile and writes them all at once, as h2load does (one write per round of answers).
struct Batched<F> {
    inner: F,
    deferred: bool,
}

impl<F> Batched<F> {
    fn new(inner: F) -> Self {
        Batched {
            inner,
            deferred: false,
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for Batched<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if !self.deferred {
            // Woken by itself while it runs, a task goes to the back of the queue.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.deferred = false;
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// Sorts an HTTP/2 failure: the server's GOAWAY and RST_STREAM are their own kinds; the
/// connection's I/O errors as on HTTP/1; anything else broke the protocol.
pub fn kind(e: &h2::Error) -> ErrorKind {
    if e.is_go_away() && e.is_remote() {
        ErrorKind::GoAway
    } else if e.is_reset() && e.is_remote() {
        ErrorKind::RstStream
    } else if let Some(io) = e.get_io() {
        classify_io(io)
    } else if e.is_io() {
        ErrorKind::Reset
    } else {
        ErrorKind::Protocol
    }
}

/// How requests name the target on HTTP/2 (`:scheme`, `:authority`).
#[derive(Debug, Clone)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// Headers HTTP/2 forbids (connection-specific ones): left out, as a proxy would.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// The URI and headers `req` is sent with to `origin` (without the user's cookies): built
/// once for a request that never varies, per request otherwise.
pub(crate) fn head(origin: &Origin, req: &Outgoing) -> Result<(Uri, HeaderMap), ErrorKind> {
    let mut authority = origin.authority.clone();
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 2);
    for (k, v) in req.headers.iter() {
        if *k == HOST {
            // `Host` given by the request becomes `:authority`.
            if let Ok(a) = Authority::try_from(v.as_bytes()) {
                authority = a;
            }
            continue;
        }
        if connection_specific(k) {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    let expects_body = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    if (!req.body.is_empty() || expects_body) && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(req.body.len()));
    }
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(origin.scheme.clone());
    parts.authority = Some(authority);
    parts.path_and_query = Some(req.path.clone());
    let uri = Uri::from_parts(parts).map_err(|_| ErrorKind::Protocol)?;
    Ok((uri, headers))
}

/// Sends `req` as one stream on `conn` and reads its whole answer.
pub async fn exchange(
    conn: &Conn,
    origin: &Origin,
    req: &Outgoing,
    cookie: Option<&HeaderValue>,
    keep_body: bool,
    keep_headers: bool,
) -> Result<Got, ErrorKind> {
    let (uri, mut headers) = match &req.h2_head {
        Some(h) => (h.0.clone(), h.1.clone()),
        None => head(origin, req)?,
    };
    if let Some(c) = cookie {
        headers.insert(COOKIE, c.clone());
    }
    if let Some(t) = &req.trace {
        let mut value = HeaderValue::from_bytes(&t.bytes()).expect("hex digits are a valid header");
        // New on every request: sent as a literal HPACK never indexes, so it does not push
        // the headers that repeat (the user's cookie, the target's own) out of both sides'
        // tables, nor cost either side an insertion and an eviction per request.
        value.set_sensitive(true);
        headers.insert(crate::http::TRACEPARENT.clone(), value);
    }
    let mut request = Request::new(());
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    // Waits for a free stream if the connection is at the server's concurrency limit. A
    // handle of this request's own: one kept from request to request would hold on to a
    // stream still waiting to open when its request timed out, and send it after all.
    let mut send = conn
        .send
        .clone()
        .ready()
        .await
        .map_err(|e| fail(conn, &e))?;
    let (response, mut body_out) = send
        .send_request(request, req.body.is_empty())
        .map_err(|e| fail(conn, &e))?;
    match &req.body {
        Payload::Bytes(b) if !b.is_empty() => {
            // Sent as the stream's window allows (h2 holds what does not fit yet).
            body_out
                .send_data(b.clone(), true)
                .map_err(|e| fail(conn, &e))?;
        }
        Payload::Bytes(_) => {}
        Payload::Pieces(..) => {
            // Files are read as the stream's window opens, a chunk at a time.
            let mut chunks = req.body.chunks();
            let mut next = chunks.next().await?;
            while let Some(chunk) = next {
                next = chunks.next().await?;
                paced(conn, &mut body_out, chunk, next.is_none()).await?;
            }
        }
    }
    let response = response.await.map_err(|e| fail(conn, &e))?;
    let (head, mut incoming) = response.into_parts();
    let mut headers = Vec::new();
    let mut set_cookies = Vec::new();
    for (name, value) in head.headers.iter() {
        if name == hyper::header::SET_COOKIE {
            set_cookies.extend(cookie_pair(value.as_bytes()));
        }
        if keep_headers {
            headers.push((
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    let announced = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = Body::new(keep_body, announced);
    while let Some(chunk) = incoming.data().await {
        let chunk = chunk.map_err(|e| fail(conn, &e))?;
        let _ = incoming.flow_control().release_capacity(chunk.len());
        body.take(&chunk);
    }
    Ok(Got {
        status: head.status.as_u16(),
        bytes: body.bytes,
        body: body.kept,
        headers,
        set_cookies,
        location: head
            .status
            .is_redirection()
            .then(|| head.headers.get(hyper::header::LOCATION))
            .flatten()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string()),
        reusable: true,
    })
}

/// Sends `data` on `out` as its window allows, holding no more than it at a time.
async fn paced(
    conn: &Conn,
    out: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), ErrorKind> {
    while !data.is_empty() {
        out.reserve_capacity(data.len());
        let room = match std::future::poll_fn(|cx| out.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(fail(conn, &e)),
            None => return Err(ErrorKind::Reset),
        };
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        out.send_data(piece, end && data.is_empty())
            .map_err(|e| fail(conn, &e))?;
    }
    Ok(())
}

/// `e`'s kind; a failure of the whole connection (not of one stream) marks it dead, so its
/// users connect again.
fn fail(conn: &Conn, e: &h2::Error) -> ErrorKind {
    let k = kind(e);
    if k != ErrorKind::RstStream {
        conn.dead.store(true, Ordering::Relaxed);
    }
    k
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::*;
    use crate::testbed::{self, TargetConfig};

    /// A socket that counts the writes it is given.
    struct Counting {
        io: tokio::net::TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl Counting {
        fn count(&self, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            self.count(r)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            self.count(r)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[test]
    fn the_requests_of_users_woken_together_go_out_in_one_write() {
        // One engine thread, the built-in target on it too: 16 users of one connection, each
        // sending 50 requests as soon as its answer is in.
        let rt = crate::runner::build_runtime(1).unwrap();
        let server = testbed::start(rt.handle(), TargetConfig::default()).unwrap();
        let url = server.url();
        let authority = Authority::try_from(url.trim_start_matches("http://")).unwrap();
        let counted = Arc::new(AtomicUsize::new(0));
        let (sent, during) = rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .unwrap();
            let io = Counting {
                io: tcp,
                writes: counted.clone(),
            };
            let conn = handshake(io, 16).await.unwrap();
            let origin = Origin {
                scheme: Scheme::HTTP,
                authority: authority.clone(),
            };
            let host = HeaderValue::from_str(authority.as_str()).unwrap();
            let req =
                Arc::new(Outgoing::new(Method::GET, "/", vec![], Bytes::new(), &host).unwrap());
            exchange(&conn, &origin, &req, None, false, false)
                .await
                .unwrap();
            let before = counted.load(Ordering::Relaxed);
            let users: Vec<_> = (0..16)
                .map(|_| {
                    let (conn, origin, req) = (conn.clone(), origin.clone(), req.clone());
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            let got = exchange(&conn, &origin, &req, None, false, false)
                                .await
                                .unwrap();
                            assert_eq!(got.status, 200);
                        }
                    })
                })
                .collect();
            for u in users {
                u.await.unwrap();
            }
            (800, counted.load(Ordering::Relaxed) - before)
        });
        assert_eq!(server.served_h2(), 801);
        // Written one by one, that is a write per request (800); together, a few per round.
        assert!(during * 4 <= sent, "{during} writes for {sent} requests");
    }
}

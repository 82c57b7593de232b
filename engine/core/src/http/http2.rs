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

async fn handshake(io: Stream, max_streams: u32) -> Result<Conn, ErrorKind> {
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
        let _ = connection.await;
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
        let value = HeaderValue::from_bytes(&t.bytes()).expect("hex digits are a valid header");
        headers.insert(crate::http::TRACEPARENT.clone(), value);
    }
    let mut request = Request::new(());
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    // Waits for a free stream if the connection is at the server's concurrency limit.
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

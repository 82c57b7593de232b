//! HTTP/1.1 written and read on the user's own task: the request's bytes go straight to the
//! socket and the answer is parsed with `httparse` (hyper's own parser) into a buffer taken
//! from a per-thread pool for as long as the exchange lasts. An idle keep-alive connection
//! holds its socket and nothing else: no dispatcher channel, no connection task, no buffers.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::http::body::Payload;
use crate::http::BODY_KEPT;
use crate::outcome::{classify_io, ErrorKind};

/// A connection's byte stream: plain TCP, or TLS over it (boxed: rustls's state is large and
/// most runs are plain).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// Whether an idle keep-alive connection can no longer be used: the server closed it (or
    /// sent something unasked). Polls once, without waiting.
    pub fn is_stale(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(self).poll_read(&mut cx, &mut rb).is_ready()
    }
}

/// Buffers of this size are kept in the pool; a buffer grown past it (a huge head) is freed.
const POOLED_SIZE: usize = 16 * 1024;
/// At most this many idle buffers per thread.
const POOL_DEPTH: usize = 256;
/// The largest response head read (status line and headers), as hyper's default.
pub const MAX_HEAD: usize = 400 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 128;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool, returned to the pool of whichever thread drops it.
struct Pooled(Vec<u8>);

impl Pooled {
    fn take() -> Self {
        let v = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(POOLED_SIZE));
        Pooled(v)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() == POOLED_SIZE {
            v.clear();
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_DEPTH {
                    p.push(v);
                }
            });
        }
    }
}

/// What the exchange needs to know of the request.
pub struct Sent<'a> {
    /// Request line and header lines, each ending in CRLF; the blank line is not included.
    pub head: &'a [u8],
    /// A `cookie` header line to add (without CRLF), if the user has cookies.
    pub cookie: Option<&'a [u8]>,
    /// A `traceparent` header value to add, if the request carries a trace context.
    pub trace: Option<&'a [u8]>,
    pub body: &'a Payload,
    /// A HEAD request: its answer has no body whatever it announces.
    pub head_only: bool,
}

/// A response read off the wire.
pub struct Got {
    pub status: u16,
    pub bytes: u64,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub set_cookies: Vec<(String, String)>,
    /// A redirect's (3xx) `Location`, as the server wrote it.
    pub location: Option<String>,
    /// The connection may carry the next request.
    pub reusable: bool,
}

/// How the body of a response ends.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Bytes read from the stream into a pooled buffer, consumed from the front.
struct Reader<'s> {
    stream: &'s mut Stream,
    buf: Pooled,
    pos: usize,
}

impl Reader<'_> {
    fn pending(&self) -> &[u8] {
        &self.buf.0[self.pos..]
    }

    /// Reads more from the socket after what is pending. `Ok(false)`: the peer closed.
    async fn fill(&mut self) -> Result<bool, ErrorKind> {
        let v = &mut self.buf.0;
        if self.pos > 0 && self.pos == v.len() {
            v.clear();
            self.pos = 0;
        } else if v.len() == v.capacity() {
            if self.pos > 0 {
                v.drain(..self.pos);
                self.pos = 0;
            } else {
                v.reserve(v.capacity().max(4096));
            }
        }
        match self.stream.read_buf(v).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(classify_io(&e)),
        }
    }

    /// The length of the next line (to its CRLF, which stays pending), reading as needed; a
    /// line longer than `max` or cut off by the close breaks the protocol.
    async fn line(&mut self, max: usize) -> Result<usize, ErrorKind> {
        loop {
            if let Some(i) = find_crlf(self.pending()) {
                return Ok(i);
            }
            if self.pending().len() > max || !self.fill().await? {
                return Err(ErrorKind::Protocol);
            }
        }
    }

    /// Exactly `left` bytes of body into `body`; a close before them breaks the protocol.
    async fn copy(&mut self, mut left: u64, body: &mut Body) -> Result<(), ErrorKind> {
        while left > 0 {
            if self.pending().is_empty() && !self.fill().await? {
                return Err(ErrorKind::Protocol);
            }
            let n = (self.pending().len() as u64).min(left) as usize;
            body.take(&self.pending()[..n]);
            self.pos += n;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A response body as it arrives: every byte counted, the first `BODY_KEPT` kept if asked.
pub(crate) struct Body {
    pub bytes: u64,
    pub kept: Vec<u8>,
    keep: bool,
}

impl Body {
    /// `announced`: the length the response gave, to size what is kept.
    pub fn new(keep: bool, announced: Option<u64>) -> Self {
        let kept = match announced {
            Some(n) if keep => Vec::with_capacity((n as usize).min(BODY_KEPT)),
            _ => Vec::new(),
        };
        Body {
            bytes: 0,
            kept,
            keep,
        }
    }

    pub fn take(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.keep && self.kept.len() < BODY_KEPT {
            let room = BODY_KEPT - self.kept.len();
            self.kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

/// The `name=value` pair of a `set-cookie` header value (attributes after `;` dropped).
pub(crate) fn cookie_pair(value: &[u8]) -> Option<(String, String)> {
    let (name, value) = std::str::from_utf8(value)
        .ok()?
        .split(';')
        .next()?
        .split_once('=')?;
    Some((name.trim().to_string(), value.trim().to_string()))
}

/// A response's head: what the body's reading and the caller need of it.
struct Head {
    status: u16,
    framing: Framing,
    /// The length the response announced, to size what is kept of its body.
    announced: Option<u64>,
    reusable: bool,
    headers: Vec<(String, String)>,
    set_cookies: Vec<(String, String)>,
    location: Option<String>,
}

/// Writes the request and reads its whole answer. Every way the server can break HTTP is a
/// `Protocol` error; a connection closed before any byte of an answer is a `Reset`.
pub async fn exchange(
    stream: &mut Stream,
    req: Sent<'_>,
    keep_body: bool,
    keep_headers: bool,
) -> Result<Got, ErrorKind> {
    let mut buf = Pooled::take();
    write_request(stream, &req, &mut buf.0).await?;
    let mut r = Reader {
        stream,
        buf,
        pos: 0,
    };
    let head = r.head(req.head_only, keep_headers).await?;
    let mut body = Body::new(keep_body, head.announced);
    let mut reusable = head.reusable;
    match head.framing {
        Framing::None => {}
        Framing::Length(left) => r.copy(left, &mut body).await?,
        Framing::Close => {
            r.until_close(&mut body).await?;
            reusable = false;
        }
        Framing::Chunked => r.chunks(&mut body).await?,
    }
    // Bytes beyond the answer were never asked for: the connection is out of step.
    if !r.pending().is_empty() {
        reusable = false;
    }
    Ok(Got {
        status: head.status,
        bytes: body.bytes,
        body: body.kept,
        headers: head.headers,
        set_cookies: head.set_cookies,
        location: head.location,
        reusable,
    })
}

/// Writes the request's head (with the user's cookies), the blank line and the body: one
/// write when the body is small enough to go in the pooled buffer `out` (left empty after).
async fn write_request(
    stream: &mut Stream,
    req: &Sent<'_>,
    out: &mut Vec<u8>,
) -> Result<(), ErrorKind> {
    out.extend_from_slice(req.head);
    if let Some(c) = req.cookie {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(t) = req.trace {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(t);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let io = |e: std::io::Error| classify_io(&e);
    match req.body {
        Payload::Bytes(body) => {
            let inline = body.len() <= POOLED_SIZE / 2;
            if inline {
                out.extend_from_slice(body);
            }
            stream.write_all(out).await.map_err(io)?;
            if !inline {
                stream.write_all(body).await.map_err(io)?;
            }
        }
        Payload::Pieces(..) => {
            // Files are read as they are sent, a chunk at a time.
            stream.write_all(out).await.map_err(io)?;
            let mut chunks = req.body.chunks();
            while let Some(chunk) = chunks.next().await? {
                stream.write_all(&chunk).await.map_err(io)?;
            }
        }
    }
    stream.flush().await.map_err(io)?;
    out.clear();
    Ok(())
}

impl Reader<'_> {
    /// Reads the response's head, skipping interim (1xx) answers. `head_only`: the request
    /// was a HEAD (no body, whatever the head announces).
    async fn head(&mut self, head_only: bool, keep_headers: bool) -> Result<Head, ErrorKind> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut fields);
            let parsed = match resp.parse(self.pending()) {
                Ok(httparse::Status::Complete(n)) => Some(n),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err(ErrorKind::Protocol),
            };
            let Some(n) = parsed else {
                if self.pending().len() >= MAX_HEAD {
                    return Err(ErrorKind::Protocol);
                }
                let had = !self.pending().is_empty();
                if !self.fill().await? {
                    // Closed before an answer began (an idle keep-alive connection, say), or
                    // in the middle of a head.
                    return Err(if had {
                        ErrorKind::Protocol
                    } else {
                        ErrorKind::Reset
                    });
                }
                continue;
            };
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                self.pos += n;
                continue;
            }
            let head = parse_head(&resp, status, head_only, keep_headers)?;
            self.pos += n;
            return Ok(head);
        }
    }

    /// A body that runs to the close of the connection.
    async fn until_close(&mut self, body: &mut Body) -> Result<(), ErrorKind> {
        loop {
            if !self.pending().is_empty() {
                body.take(self.pending());
                self.pos = self.buf.0.len();
            }
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    /// A chunked body: size lines (hex, then extensions), chunks with their CRLF, the last
    /// chunk and its trailers to the blank line.
    async fn chunks(&mut self, body: &mut Body) -> Result<(), ErrorKind> {
        loop {
            let line = self.line(4096).await?;
            let size = chunk_size(&self.pending()[..line]).ok_or(ErrorKind::Protocol)?;
            self.pos += line + 2;
            if size == 0 {
                // Trailers, to the blank line.
                loop {
                    let line = self.line(MAX_HEAD).await?;
                    self.pos += line + 2;
                    if line == 0 {
                        return Ok(());
                    }
                }
            }
            self.copy(size, body).await?;
            // The chunk's own CRLF.
            if self.line(2).await? != 0 {
                return Err(ErrorKind::Protocol);
            }
            self.pos += 2;
        }
    }
}

/// The head's fields: how the body is framed (length, chunked, to the close, none), whether
/// the connection stays usable, the cookies it sets, and its headers when asked for.
fn parse_head(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head_only: bool,
    keep_headers: bool,
) -> Result<Head, ErrorKind> {
    let http10 = resp.version == Some(0);
    let mut reusable = !http10;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    // A transfer coding that does not end in chunked: the body runs to the close.
    let mut other_coding = false;
    let mut headers = Vec::new();
    let mut set_cookies = Vec::new();
    let mut location = None;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(ErrorKind::Protocol)?;
            if length.is_some_and(|l| l != v) {
                return Err(ErrorKind::Protocol);
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read to the close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            other_coding = !chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                    reusable = true;
                }
            }
        } else if name.eq_ignore_ascii_case("set-cookie") {
            set_cookies.extend(cookie_pair(h.value));
        } else if (300..400).contains(&status) && name.eq_ignore_ascii_case("location") {
            location = Some(String::from_utf8_lossy(h.value).trim().to_string());
        }
        if keep_headers {
            headers.push((
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            ));
        }
    }
    let no_body = head_only || status == 204 || status == 304 || status == 101;
    let framing = if no_body {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let (Some(l), false) = (length, other_coding) {
        Framing::Length(l)
    } else {
        reusable = false;
        Framing::Close
    };
    if status == 101 {
        reusable = false;
    }
    Ok(Head {
        status,
        framing,
        announced: length,
        reusable,
        headers,
        set_cookies,
        location,
    })
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The size of a chunk from its size line (hex, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        n = n * 16 + (d as char).to_digit(16)? as u64;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"1ffffffffffffffff"), None);
    }

    /// Serves `answer` in pieces of `piece` bytes (so every parse step sees partial input) on a
    /// loopback connection, and exchanges one GET over it; the server closes after answering.
    async fn exchange_with(answer: &'static [u8], piece: usize) -> Result<Got, ErrorKind> {
        exchange_held(answer, piece, false, false).await
    }

    /// As `exchange_with`, a HEAD when `head_only`; with `hold`, the server keeps the
    /// connection open after its answer (as a kept-alive server does), so a client that waits
    /// for a body the answer does not have waits until the test's 2 s limit (a timeout).
    async fn exchange_held(
        answer: &'static [u8],
        piece: usize,
        head_only: bool,
        hold: bool,
    ) -> Result<Got, ErrorKind> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = tcp.read(&mut req).await;
            for part in answer.chunks(piece) {
                // A client that found the answer broken has gone: the rest is not read.
                if tcp.write_all(part).await.is_err() || tcp.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            if hold {
                // Until the client closes.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut req))
                    .await;
            }
        });
        let mut stream = Stream::Plain(TcpStream::connect(addr).await.unwrap());
        let head: &[u8] = if head_only {
            b"HEAD / HTTP/1.1\r\nhost: x\r\n"
        } else {
            b"GET / HTTP/1.1\r\nhost: x\r\n"
        };
        let sent = Sent {
            head,
            cookie: None,
            trace: None,
            body: &Payload::default(),
            head_only,
        };
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            exchange(&mut stream, sent, true, false),
        )
        .await
        .unwrap_or(Err(ErrorKind::Timeout));
        drop(stream);
        server.await.unwrap();
        got
    }

    #[tokio::test(flavor = "current_thread")]
    async fn head_204_and_304_answers_have_no_body_whatever_they_announce() {
        for piece in [1, 4096] {
            let got = exchange_held(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                piece,
                true,
                true,
            )
            .await
            .unwrap();
            assert_eq!((got.status, got.bytes), (200, 0), "HEAD, {piece}");
            assert!(got.reusable, "HEAD, {piece}");
            for answer in [
                &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
                &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"[..],
            ] {
                let got = exchange_held(answer, piece, false, true).await.unwrap();
                assert_eq!(got.bytes, 0, "{piece}");
                assert!(got.reusable, "{piece}");
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bodies_are_read_by_length_by_chunks_with_trailers_and_to_the_close() {
        for piece in [1, 3, 4096] {
            let got = exchange_with(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
                  Set-Cookie: a=1; Path=/\r\n\r\nhello",
                piece,
            )
            .await
            .unwrap();
            assert_eq!(
                (got.status, got.bytes, &got.body[..]),
                (200, 5, &b"hello"[..])
            );
            assert_eq!(got.set_cookies, vec![("a".into(), "1".into())]);
            assert!(got.reusable);

            let got = exchange_with(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
                piece,
            )
            .await
            .unwrap();
            assert_eq!((got.bytes, &got.body[..]), (6, &b"hello!"[..]), "{piece}");
            assert!(got.reusable, "{piece}");

            let got = exchange_with(b"HTTP/1.1 200 OK\r\n\r\nto the close", piece)
                .await
                .unwrap();
            assert_eq!(&got.body[..], b"to the close", "{piece}");
            assert!(!got.reusable);

            let bad = exchange_with(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
                piece,
            )
            .await;
            assert_eq!(bad.err(), Some(ErrorKind::Protocol), "{piece}");
        }
    }

    #[test]
    fn pooled_buffers_come_back_to_the_pool() {
        let depth = || POOL.with(|p| p.borrow().len());
        let before = depth();
        let b = Pooled::take();
        assert_eq!(b.0.capacity(), POOLED_SIZE);
        drop(b);
        assert_eq!(depth(), before.max(1));
        let mut grown = Pooled::take();
        grown.0.reserve(POOLED_SIZE * 4);
        let after_take = depth();
        drop(grown);
        assert_eq!(depth(), after_take, "a grown buffer is freed, not pooled");
    }
}

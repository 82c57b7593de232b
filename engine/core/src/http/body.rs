//! A request's body: bytes, or pieces (a multipart form) whose files are read from disk as
//! they are sent, a chunk at a time, never copied whole per request.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::outcome::ErrorKind;

/// How much of a file is read (and sent) at a time.
pub const CHUNK: usize = 64 * 1024;

/// A request body.
#[derive(Clone, Debug)]
pub enum Payload {
    Bytes(Bytes),
    /// Pieces sent in order, and their total length.
    Pieces(Arc<[Piece]>, u64),
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Bytes(Bytes::new())
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Bytes(b)
    }
}

/// A piece of a body: bytes, or a file of a known length.
#[derive(Debug)]
pub enum Piece {
    Bytes(Bytes),
    File { path: PathBuf, len: u64 },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Pieces(_, len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body in chunks, as it is sent: bytes as they are, files read `CHUNK` at a time.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks {
            payload: self,
            at: 0,
            file: None,
        }
    }
}

/// The chunks of a body, in order (`Payload::chunks`).
pub struct Chunks<'a> {
    payload: &'a Payload,
    /// The next piece.
    at: usize,
    /// The file being read, and how many of its bytes are still to send.
    file: Option<(tokio::fs::File, u64)>,
}

impl Chunks<'_> {
    /// The next chunk; `None` at the end. A file that cannot be read, or is shorter than it
    /// was when the request was built, fails the request (`check`: this side's doing, not
    /// the server's).
    pub async fn next(&mut self) -> Result<Option<Bytes>, ErrorKind> {
        loop {
            if let Some((file, left)) = &mut self.file {
                if *left == 0 {
                    self.file = None;
                    continue;
                }
                let want = (*left).min(CHUNK as u64) as usize;
                let mut buf = BytesMut::zeroed(want);
                let mut got = 0;
                while got < want {
                    let n = file
                        .read(&mut buf[got..])
                        .await
                        .map_err(|_| ErrorKind::Check)?;
                    if n == 0 {
                        return Err(ErrorKind::Check);
                    }
                    got += n;
                }
                *left -= want as u64;
                return Ok(Some(buf.freeze()));
            }
            let pieces = match self.payload {
                Payload::Bytes(b) => {
                    let first = self.at == 0;
                    self.at = 1;
                    return Ok((first && !b.is_empty()).then(|| b.clone()));
                }
                Payload::Pieces(p, _) => p,
            };
            let Some(piece) = pieces.get(self.at) else {
                return Ok(None);
            };
            self.at += 1;
            match piece {
                Piece::Bytes(b) if b.is_empty() => continue,
                Piece::Bytes(b) => return Ok(Some(b.clone())),
                Piece::File { path, len } => {
                    let f = tokio::fs::File::open(path)
                        .await
                        .map_err(|_| ErrorKind::Check)?;
                    self.file = Some((f, *len));
                }
            }
        }
    }
}

/// Where a file part's content comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Content(Bytes),
    /// A file on disk and its length when the request was compiled.
    Path(PathBuf, u64),
}

/// A file part of a multipart form.
#[derive(Debug, Clone)]
pub struct FilePart {
    pub field: String,
    pub filename: String,
    pub content_type: String,
    pub source: Source,
}

/// A file part's file name and content type where they are not given: the last part of its
/// path (else its field), `application/octet-stream`; a content type HTTP does not allow is
/// an error.
pub fn part_defaults(
    field: &str,
    filename: Option<&str>,
    path: Option<&str>,
    content_type: Option<&str>,
) -> Result<(String, String), String> {
    let filename = match (filename, path) {
        (Some(n), _) => n.to_string(),
        (None, Some(p)) => std::path::Path::new(p)
            .file_name()
            .map_or_else(|| field.to_string(), |n| n.to_string_lossy().into_owned()),
        (None, None) => field.to_string(),
    };
    let content_type = content_type.unwrap_or("application/octet-stream");
    if hyper::header::HeaderValue::from_str(content_type).is_err() {
        return Err(format!(
            "content type {content_type:?} is not valid in HTTP"
        ));
    }
    Ok((filename, content_type.to_string()))
}

/// The length now of a file to send from disk; why not, if it cannot be.
pub fn file_len(path: &str) -> Result<u64, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path:?} is not a file"));
    }
    Ok(meta.len())
}

/// A boundary no body will hold by chance: random per process and per call.
pub fn boundary() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("loadpilot-{a:016x}{:016x}", h.finish())
}

/// A name or file name as a quoted string of `Content-Disposition` (as browsers write it:
/// `"`, CR and LF percent-encoded).
fn quoted(s: &str, out: &mut BytesMut) {
    out.extend_from_slice(b"\"");
    for c in s.bytes() {
        match c {
            b'"' => out.extend_from_slice(b"%22"),
            b'\r' => out.extend_from_slice(b"%0D"),
            b'\n' => out.extend_from_slice(b"%0A"),
            _ => out.extend_from_slice(&[c]),
        }
    }
    out.extend_from_slice(b"\"");
}

/// A `multipart/form-data` body (RFC 7578): the text `fields`, then the `files`, between
/// `boundary` lines. Files on disk stay there until the body is sent.
pub fn multipart(boundary: &str, fields: &[(String, String)], files: &[FilePart]) -> Payload {
    let mut pieces = Vec::with_capacity(files.len() * 2 + 2);
    let mut head = BytesMut::new();
    for (name, value) in fields {
        head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        head.extend_from_slice(b"content-disposition: form-data; name=");
        quoted(name, &mut head);
        head.extend_from_slice(b"\r\n\r\n");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for f in files {
        head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        head.extend_from_slice(b"content-disposition: form-data; name=");
        quoted(&f.field, &mut head);
        head.extend_from_slice(b"; filename=");
        quoted(&f.filename, &mut head);
        head.extend_from_slice(b"\r\ncontent-type: ");
        head.extend_from_slice(f.content_type.as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        match &f.source {
            Source::Content(b) => head.extend_from_slice(b),
            Source::Path(path, len) => {
                pieces.push(Piece::Bytes(head.split().freeze()));
                pieces.push(Piece::File {
                    path: path.clone(),
                    len: *len,
                });
            }
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    pieces.push(Piece::Bytes(head.freeze()));
    let len = pieces
        .iter()
        .map(|p| match p {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        })
        .sum();
    match &pieces[..] {
        [Piece::Bytes(b)] => Payload::Bytes(b.clone()),
        _ => Payload::Pieces(pieces.into(), len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(p: &Payload) -> Result<Vec<u8>, ErrorKind> {
        let mut out = Vec::new();
        let mut c = p.chunks();
        while let Some(chunk) = c.next().await? {
            assert!(chunk.len() <= CHUNK.max(4096), "chunks stay small");
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_file_is_read_as_the_body_is_sent_and_its_length_is_known_before() {
        let dir = std::env::temp_dir().join(format!("lp-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let files = [
            FilePart {
                field: "doc".into(),
                filename: "a \"b\".txt".into(),
                content_type: "text/plain".into(),
                source: Source::Content(Bytes::from_static(b"hello")),
            },
            FilePart {
                field: "big".into(),
                filename: "big.bin".into(),
                content_type: "application/octet-stream".into(),
                source: Source::Path(path.clone(), data.len() as u64),
            },
        ];
        let body = multipart("XyZ", &[("note".into(), "x y".into())], &files);
        let sent = collect(&body).await.unwrap();
        assert_eq!(sent.len() as u64, body.len());
        let mut want = b"--XyZ\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nx y\r\n\
            --XyZ\r\ncontent-disposition: form-data; name=\"doc\"; filename=\"a %22b%22.txt\"\r\n\
            content-type: text/plain\r\n\r\nhello\r\n\
            --XyZ\r\ncontent-disposition: form-data; name=\"big\"; filename=\"big.bin\"\r\n\
            content-type: application/octet-stream\r\n\r\n"
            .to_vec();
        want.extend_from_slice(&data);
        want.extend_from_slice(b"\r\n--XyZ--\r\n");
        assert_eq!(sent, want);
        // A file that shrank since fails the request rather than send a short body.
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(collect(&body).await, Err(ErrorKind::Check));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(boundary(), boundary());
        assert!(boundary().starts_with("loadpilot-"));
    }
}

//! Requests: a task's request compiled once per run (`CompiledRequest`), and a request ready
//! to send (`Outgoing`, HTTP/1.1's head written once for a request with no placeholder).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, TRANSFER_ENCODING,
};
use hyper::http::uri::PathAndQuery;
use hyper::Method;

use crate::error::{Error, Result};
use crate::http::body::{multipart, FilePart, Payload, Source};
use crate::http::Target;
use crate::outcome::ErrorKind;
use crate::plan::check::Check;
use crate::plan::template::{Scope, Template, Values};
use crate::plan::RequestSpec;

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
    /// The request's own headers but `cookie` (no `content-length` unless it gave one).
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    /// The request's own `Cookie` header (several joined with `; `): sent in one header with
    /// the user's cookies (RFC 6265 allows one), on HTTP/1.1 and HTTP/2 alike.
    pub cookie: Option<HeaderValue>,
    pub body: Payload,
    /// Request line and header lines (`host` and `content-length` included), each ending
    /// in CRLF, without the blank line (nor the cookies: they are added as it is sent).
    pub(super) h1_head: Bytes,
    /// HTTP/2's URI and headers, built once for a request that never varies.
    pub(super) h2_head: Option<Arc<(hyper::Uri, hyper::HeaderMap)>>,
    /// Its W3C trace context, sent as `traceparent` (with each hop of its redirects).
    pub trace: Option<crate::measure::kept::TraceContext>,
}

/// The W3C trace context header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl Outgoing {
    /// `path` is percent-encoded where it must be; a header that is not valid in HTTP is an
    /// error.
    pub fn new(
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: impl Into<Payload>,
        authority: &HeaderValue,
    ) -> Result<Self, String> {
        let body = body.into();
        let path: PathAndQuery = encode_target(path)
            .parse()
            .map_err(|e| format!("bad request path: {e}"))?;
        let (cookies, headers): (Vec<_>, Vec<_>) =
            headers.into_iter().partition(|(k, _)| *k == COOKIE);
        let cookie = match &cookies[..] {
            [] => None,
            [(_, one)] => Some(one.clone()),
            many => {
                let joined: Vec<&[u8]> = many.iter().map(|(_, v)| v.as_bytes()).collect();
                Some(
                    HeaderValue::from_bytes(&joined.join(&b"; "[..]))
                        .map_err(|_| "cookie is not valid in HTTP".to_string())?,
                )
            }
        };
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
            cookie,
            body,
            h1_head: head.freeze(),
            h2_head: None,
            trace: None,
        })
    }
}

/// What a request's body is made of.
enum BodyParts {
    None,
    /// Sent as rendered.
    Raw(Template),
    /// Sent as rendered, as `application/json`.
    Json(Template),
    /// Name and value pairs, each rendered, then urlencoded.
    Form(Vec<(Template, Template)>),
    /// A `multipart/form-data` form: text fields, then files.
    Multipart {
        fields: Vec<(Template, Template)>,
        files: Vec<FileTemplate>,
        boundary: String,
    },
}

/// A file part of a form, compiled.
struct FileTemplate {
    field: Template,
    filename: Template,
    content_type: String,
    source: FileSource,
}

enum FileSource {
    Content(Template),
    /// On disk, with its length when compiled.
    Path(std::path::PathBuf, u64),
}

impl BodyParts {
    fn templates(&self) -> Vec<&Template> {
        match self {
            BodyParts::None => Vec::new(),
            BodyParts::Raw(t) | BodyParts::Json(t) => vec![t],
            BodyParts::Form(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
            BodyParts::Multipart { fields, files, .. } => fields
                .iter()
                .flat_map(|(k, v)| [k, v])
                .chain(files.iter().flat_map(|f| {
                    let content = match &f.source {
                        FileSource::Content(t) => Some(t),
                        FileSource::Path(..) => None,
                    };
                    [&f.field, &f.filename].into_iter().chain(content)
                }))
                .collect(),
        }
    }
}

/// `s` as `application/x-www-form-urlencoded` writes it: letters, digits and `*-._` as they
/// are, a space as `+`, every other byte as `%XX` (what browsers, requests and httpx send).
pub fn form_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Name and value pairs as an `application/x-www-form-urlencoded` body (`form_encode`d, joined
/// with `=` and `&`): the one form encoder of both paths.
pub fn form_body<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Bytes {
    let mut out = String::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_encode(k.as_ref(), &mut out);
        out.push('=');
        form_encode(v.as_ref(), &mut out);
    }
    Bytes::from(out)
}

impl FileTemplate {
    fn compile(f: &crate::plan::FileSpec, scope: &Scope, at: &str) -> Result<Self> {
        let source = match (&f.content, &f.path) {
            (Some(c), None) => FileSource::Content(Template::compile(c, scope, at)?),
            (None, Some(p)) => {
                let len = crate::http::body::file_len(p)
                    .map_err(|why| Error::plan(format!("{at}.path"), why))?;
                FileSource::Path(p.into(), len)
            }
            _ => return Err(Error::plan(at, "give one of content and path")),
        };
        let (filename, content_type) = crate::http::body::part_defaults(
            &f.field,
            f.filename.as_deref(),
            f.path.as_deref(),
            f.content_type.as_deref(),
        )
        .map_err(|why| Error::plan(format!("{at}.content_type"), why))?;
        Ok(FileTemplate {
            field: Template::compile(&f.field, scope, &format!("{at}.field"))?,
            filename: Template::compile(&filename, scope, &format!("{at}.filename"))?,
            content_type,
            source,
        })
    }
}

/// A request of a task, compiled once per run.
pub struct CompiledRequest {
    method: Method,
    path: Template,
    headers: Vec<(HeaderName, Template)>,
    body: BodyParts,
    /// Basic authentication: user and password.
    auth: Option<(Template, Template)>,
    pub timeout: Duration,
    pub check: Check,
    /// Redirects followed (0: none); the plan's unless the request says.
    pub max_redirects: u32,
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
        let pairs = |pairs: &[(String, String)]| -> Result<Vec<(Template, Template)>> {
            let mut compiled = Vec::with_capacity(pairs.len());
            for (i, (k, v)) in pairs.iter().enumerate() {
                let here = format!("{at}.form[{i}]");
                compiled.push((
                    Template::compile(k, scope, &here)?,
                    Template::compile(v, scope, &here)?,
                ));
            }
            Ok(compiled)
        };
        let body = match (&spec.body, &spec.json, &spec.form, &spec.files) {
            (None, None, None, None) => BodyParts::None,
            (Some(b), None, None, None) => {
                BodyParts::Raw(Template::compile(b, scope, &format!("{at}.body"))?)
            }
            (None, Some(j), None, None) => BodyParts::Json(Template::compile(
                &j.to_string(),
                scope,
                &format!("{at}.json"),
            )?),
            (None, None, Some(p), None) => BodyParts::Form(pairs(p)?),
            (None, None, form, Some(files)) => BodyParts::Multipart {
                fields: pairs(form.as_deref().unwrap_or_default())?,
                files: files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| FileTemplate::compile(f, scope, &format!("{at}.files[{i}]")))
                    .collect::<Result<_>>()?,
                boundary: crate::http::body::boundary(),
            },
            _ => {
                return Err(Error::plan(
                    at,
                    "give one of body, json and form (files go with form)",
                ));
            }
        };
        let auth = match &spec.auth {
            Some((user, password)) => {
                let here = format!("{at}.auth");
                if user.contains(':') {
                    return Err(Error::plan(here, "a user name cannot hold ':'"));
                }
                Some((
                    Template::compile(user, scope, &here)?,
                    Template::compile(password, scope, &here)?,
                ))
            }
            None => None,
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
            auth,
            timeout: Duration::from_secs_f64(timeout),
            check,
            max_redirects: crate::http::redirect::DEFAULT_MAX_REDIRECTS,
            constant: None,
        };
        let varies = req.path.as_constant().is_none()
            || req.headers.iter().any(|(_, t)| t.as_constant().is_none())
            || req
                .body
                .templates()
                .iter()
                .any(|b| b.as_constant().is_none())
            || req
                .auth
                .as_ref()
                .is_some_and(|(u, p)| u.as_constant().is_none() || p.as_constant().is_none());
        if !varies {
            let empty = Values {
                vu: 0,
                iter: 0,
                row: None,
                user: None,
            };
            let mut built = req.render(&empty, target).map_err(|m| Error::plan(at, m))?;
            built.h2_head = crate::http::http2::head(&target.origin, &built)
                .ok()
                .map(Arc::new);
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
        let has_type = headers.iter().any(|(k, _)| k == CONTENT_TYPE);
        let (body, content_type) = match &self.body {
            BodyParts::None => (Payload::default(), None),
            BodyParts::Raw(t) => (Payload::from(Bytes::from(t.render(v))), None),
            BodyParts::Json(t) => (
                Payload::from(Bytes::from(t.render(v))),
                Some(HeaderValue::from_static("application/json")),
            ),
            BodyParts::Form(pairs) => {
                let out = form_body(pairs.iter().map(|(k, val)| (k.render(v), val.render(v))));
                (
                    Payload::from(out),
                    Some(HeaderValue::from_static(
                        "application/x-www-form-urlencoded",
                    )),
                )
            }
            BodyParts::Multipart {
                fields,
                files,
                boundary,
            } => {
                let fields: Vec<(String, String)> = fields
                    .iter()
                    .map(|(k, val)| (k.render(v), val.render(v)))
                    .collect();
                let files: Vec<FilePart> = files
                    .iter()
                    .map(|f| FilePart {
                        field: f.field.render(v),
                        filename: f.filename.render(v),
                        content_type: f.content_type.clone(),
                        source: match &f.source {
                            FileSource::Content(t) => Source::Content(Bytes::from(t.render(v))),
                            FileSource::Path(p, len) => Source::Path(p.clone(), *len),
                        },
                    })
                    .collect();
                (
                    multipart(boundary, &fields, &files),
                    HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                        .ok(),
                )
            }
        };
        if let (Some(ct), false) = (content_type, has_type) {
            headers.push((CONTENT_TYPE, ct));
        }
        if let Some((user, password)) = &self.auth {
            use base64::Engine as _;
            let pair = format!("{}:{}", user.render(v), password.render(v));
            let coded = base64::engine::general_purpose::STANDARD.encode(pair);
            let value = HeaderValue::from_str(&format!("Basic {coded}"))
                .map_err(|_| "basic authentication is not valid in HTTP".to_string())?;
            headers.push((hyper::header::AUTHORIZATION, value));
        }
        Outgoing::new(
            self.method.clone(),
            &self.path.render(v),
            headers,
            body,
            &target.authority,
        )
    }

    /// The path and query it is sent to in one iteration, as sent.
    pub fn url(&self, v: &Values<'_>) -> String {
        encode_target(&self.path.render(v)).into_owned()
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
    fn characters_a_target_may_not_hold_are_percent_encoded() {
        assert_eq!(
            encode_target("/search?q=<b>x</b> y&z=é"),
            "/search?q=%3Cb%3Ex%3C/b%3E%20y&z=%C3%A9"
        );
        // Reserved characters and escapes already made stay as they are.
        let kept = "/a/b?c=1&d=%20e+f;g=(h)*i,j:k@l!$'~";
        assert_eq!(encode_target(kept), kept);
        assert!(matches!(encode_target(kept), std::borrow::Cow::Borrowed(_)));
        assert!(encode_target("/{\"a\"}|\\^`").parse::<hyper::Uri>().is_ok());
    }
}

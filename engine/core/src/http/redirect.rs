//! Following redirects as requests, httpx and k6 do: where a `Location` leads, and the
//! request that goes there.

use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::Method;
use url::Url;

use crate::http::body::Payload;
use crate::http::Outgoing;

/// Redirects followed when neither the plan nor the request says otherwise.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// The most redirects a plan or a request may ask to follow.
pub const MAX_REDIRECTS_LIMIT: u32 = 100;

/// The statuses whose `Location` is followed.
pub fn is_followed(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Where `location` leads from `from` (the URL just asked): an absolute URL, or a
/// reference relative to `from`. Anything but an `http://` or `https://` URL is an error
/// that says so.
pub fn resolve(from: &Url, location: &str) -> Result<Url, String> {
    let mut to = from
        .join(location)
        .map_err(|e| format!("redirect to {location:?}: not a URL ({e})"))?;
    match to.scheme() {
        "http" | "https" if to.host_str().is_some_and(|h| !h.is_empty()) => {
            // The fragment stays with the client; it is never sent.
            to.set_fragment(None);
            Ok(to)
        }
        "http" | "https" => Err(format!("redirect to {location:?}: no host")),
        s => Err(format!("redirect to {location:?}: {s}: is not HTTP")),
    }
}

/// The method after a `status` redirect: 303 turns anything but HEAD into GET, 301 and 302
/// turn POST into GET (as browsers, requests and httpx do); 307 and 308 keep it.
pub fn method_after(status: u16, method: &Method) -> Method {
    match status {
        303 if *method != Method::HEAD => Method::GET,
        301 | 302 if *method == Method::POST => Method::GET,
        _ => method.clone(),
    }
}

impl Outgoing {
    /// The request a `status` redirect sends to `to` (its path and query), where `Host` is
    /// `authority`. A request turned into GET loses its body and the headers that described
    /// it; one to another origin loses its `Authorization`, `Cookie` and `Host` (its cookies
    /// are the other origin's), as requests and httpx do.
    pub fn redirected(
        &self,
        status: u16,
        to: &Url,
        authority: &hyper::header::HeaderValue,
        cross_origin: bool,
    ) -> Result<Outgoing, String> {
        let method = method_after(status, &self.method);
        let body_kept = method == self.method;
        let headers = self
            .headers
            .iter()
            .filter(|(k, _)| {
                (body_kept
                    || !(*k == CONTENT_TYPE || *k == CONTENT_LENGTH || *k == TRANSFER_ENCODING))
                    && !(cross_origin && (*k == AUTHORIZATION || *k == HOST))
            })
            .cloned()
            .chain(
                self.cookie
                    .iter()
                    .filter(|_| !cross_origin)
                    .map(|c| (hyper::header::COOKIE, c.clone())),
            )
            .collect();
        let mut target = to.path().to_string();
        if let Some(q) = to.query() {
            target.push('?');
            target.push_str(q);
        }
        Outgoing::new(
            method,
            &target,
            headers,
            if body_kept {
                self.body.clone()
            } else {
                Payload::default()
            },
            authority,
        )
        .map(|mut next| {
            next.trace = self.trace;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue, COOKIE};

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_location_is_read_against_the_url_it_answered() {
        let from = url("http://127.0.0.1:8080/a/b?x=1");
        let to = |l: &str| resolve(&from, l).map(|u| u.to_string());
        assert_eq!(to("/c").unwrap(), "http://127.0.0.1:8080/c");
        assert_eq!(to("c?y=2").unwrap(), "http://127.0.0.1:8080/a/c?y=2");
        assert_eq!(to("../d").unwrap(), "http://127.0.0.1:8080/d");
        assert_eq!(to("//127.0.0.1:9/e").unwrap(), "http://127.0.0.1:9/e");
        assert_eq!(
            to("https://localhost/f#frag").unwrap(),
            "https://localhost/f"
        );
        assert_eq!(to("?z=3").unwrap(), "http://127.0.0.1:8080/a/b?z=3");
        let err = to("ftp://127.0.0.1/x").unwrap_err();
        assert!(err.contains("ftp: is not HTTP"), "{err}");
        assert!(to("http://").is_err());
    }

    #[test]
    fn methods_change_as_browsers_change_them() {
        for (status, from, to) in [
            (301, Method::POST, Method::GET),
            (302, Method::POST, Method::GET),
            (303, Method::POST, Method::GET),
            (303, Method::PUT, Method::GET),
            (303, Method::HEAD, Method::HEAD),
            (301, Method::PUT, Method::PUT),
            (302, Method::DELETE, Method::DELETE),
            (307, Method::POST, Method::POST),
            (308, Method::PUT, Method::PUT),
        ] {
            assert_eq!(method_after(status, &from), to, "{status} {from}");
        }
    }

    #[test]
    fn a_redirected_request_keeps_or_drops_its_body_and_credentials() {
        let h = |k: &str, v: &str| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        };
        let here = HeaderValue::from_static("127.0.0.1:1");
        let post = Outgoing::new(
            Method::POST,
            "/login",
            vec![
                h("content-type", "application/x-www-form-urlencoded"),
                h("authorization", "Basic eDp5"),
                h("cookie", "a=1"),
                h("x-trace", "7"),
            ],
            bytes::Bytes::from_static(b"u=1"),
            &here,
        )
        .unwrap();
        let names = |o: &Outgoing| -> Vec<String> {
            o.headers.iter().map(|(k, _)| k.to_string()).collect()
        };
        // 303 on the same origin: a GET without the body or what described it.
        let next = post
            .redirected(303, &url("http://127.0.0.1:1/home?x=1"), &here, false)
            .unwrap();
        assert_eq!(
            (next.method.clone(), next.path.as_str()),
            (Method::GET, "/home?x=1")
        );
        assert!(next.body.is_empty());
        assert_eq!(names(&next), ["authorization", "x-trace"]);
        assert_eq!(next.cookie, Some(HeaderValue::from_static("a=1")));
        let head = String::from_utf8(next.h1_head.to_vec()).unwrap();
        assert!(
            head.starts_with("GET /home?x=1 HTTP/1.1\r\nhost: 127.0.0.1:1\r\n"),
            "{head}"
        );
        assert!(!head.contains("content-length"), "{head}");
        // 307 to another origin: the body goes along, the credentials do not.
        let there = HeaderValue::from_static("127.0.0.1:2");
        let next = post
            .redirected(307, &url("http://127.0.0.1:2/in"), &there, true)
            .unwrap();
        assert_eq!(next.method, Method::POST);
        assert!(matches!(&next.body, Payload::Bytes(b) if &b[..] == b"u=1"));
        assert_eq!(names(&next), ["content-type", "x-trace"]);
        assert_eq!(next.cookie, None);
        assert!(!next.headers.iter().any(|(k, _)| *k == COOKIE));
        let head = String::from_utf8(next.h1_head.to_vec()).unwrap();
        assert!(head.contains("host: 127.0.0.1:2\r\n"), "{head}");
        assert!(head.contains("content-length: 3\r\n"), "{head}");
    }
}

//! Which hosts a process may send load to: the allow-list agents and serve mode are started
//! with (`--allow-target`). One rule for the target a plan names and for every host a
//! redirect leads to.

use std::net::IpAddr;

/// Whether `url` (an `http://` or `https://` URL) is allowed by `patterns`. No patterns:
/// loopback only. A pattern is a host or `host:port` glob (`*.test`, `10.0.0.*:8080`: `*`,
/// `?` and `[...]` as in shell patterns), matched without regard to case; `loopback` names
/// 127.0.0.0/8, ::1 and localhost. A URL without a host is never allowed.
pub fn url_allowed(url: &str, patterns: &[String]) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match (u.host_str(), u.port_or_known_default()) {
        (Some(host), Some(port)) if !host.is_empty() => host_allowed(host, port, patterns),
        _ => false,
    }
}

/// Whether `host` (a name, an IPv4 address, an IPv6 address with or without brackets) on
/// `port` is allowed by `patterns` (see `url_allowed`).
pub fn host_allowed(host: &str, port: u16, patterns: &[String]) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let loopback = ["loopback".to_string()];
    let patterns = if patterns.is_empty() {
        &loopback[..]
    } else {
        patterns
    };
    let with_port = format!("{host}:{port}");
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        if p == "loopback" {
            is_loopback(&host)
        } else {
            glob(p.as_bytes(), host.as_bytes()) || glob(p.as_bytes(), with_port.as_bytes())
        }
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Shell-pattern matching of the whole of `s`: `*` any run, `?` any one byte, `[abc]`,
/// `[a-z]`, `[!abc]` one byte of (or not of) a set; a `[` with no closing `]` is itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => match class(&p[1..]) {
            Some((matches, rest)) => {
                !s.is_empty() && matches(s[0]) && glob(&p[1 + rest..], &s[1..])
            }
            None => s.first() == Some(&b'[') && glob(&p[1..], &s[1..]),
        },
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// The set `p` opens (just after its `[`): whether a byte is in it, and how many bytes of
/// `p` it takes (its closing `]` included); `None` if it never closes.
fn class(p: &[u8]) -> Option<(impl Fn(u8) -> bool + '_, usize)> {
    let negated = p.first() == Some(&b'!');
    let start = negated as usize;
    // A `]` first in the set is one of its members.
    let close = p
        .iter()
        .skip(start + 1)
        .position(|&b| b == b']')
        .map(|i| i + start + 1)?;
    let members = &p[start..close];
    let within = move |b: u8| {
        let mut i = 0;
        while i < members.len() {
            if i + 2 < members.len() && members[i + 1] == b'-' {
                if (members[i]..=members[i + 2]).contains(&b) {
                    return true;
                }
                i += 3;
            } else {
                if members[i] == b {
                    return true;
                }
                i += 1;
            }
        }
        false
    };
    Some((move |b| within(b) != negated, close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(url: &str, patterns: &[&str]) -> bool {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        url_allowed(url, &p)
    }

    #[test]
    fn loopback_only_without_patterns() {
        assert!(allowed("http://127.0.0.1:8080", &[]));
        assert!(allowed("http://127.9.0.1", &[]));
        assert!(allowed("http://localhost", &[]));
        assert!(allowed("http://LocalHost:1/x", &[]));
        assert!(allowed("http://[::1]:80/x", &[]));
        assert!(!allowed("http://0.0.0.0:9", &[]));
        assert!(!allowed("http://:80", &[]));
        assert!(!allowed("http://example.test", &[]));
        assert!(!allowed("not a url", &[]));
    }

    #[test]
    fn patterns_match_the_host_or_host_and_port() {
        assert!(!allowed("http://127.0.0.1", &["127.0.0.2"]));
        assert!(allowed("http://127.0.0.2:8443", &["127.0.0.2"]));
        assert!(allowed("http://127.0.0.7:8080", &["127.0.0.*:8080"]));
        assert!(!allowed("http://127.0.0.7:9090", &["127.0.0.*:8080"]));
        assert!(allowed("http://127.0.0.1:1", &["127.0.0.2", "loopback"]));
        assert!(allowed("https://api.example.test", &["*.EXAMPLE.test"]));
        assert!(allowed("https://api.example.test", &["*:443"]));
        assert!(!allowed("http://api.example.test", &["*:443"]));
        assert!(allowed("http://h7.test", &["h[0-9].test"]));
        assert!(!allowed("http://hx.test", &["h[0-9].test"]));
        assert!(allowed("http://hx.test", &["h[!0-9].test"]));
        assert!(allowed("http://h1.test", &["h?.test"]));
        assert!(!allowed("http://h12.test", &["h?.test"]));
    }
}

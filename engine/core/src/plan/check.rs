//! Checks on a response (`expect`), evaluated in the engine so they cost no Python call.

use crate::error::{Error, Result};
use crate::plan::template::{Scope, Template, Values};
use crate::plan::Expect;

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// A compiled `expect`.
#[derive(Debug, Clone, Default)]
pub struct Check {
    status: Option<Vec<u16>>,
    status_range: Option<(u16, u16)>,
    /// May hold placeholders, filled with the iteration's values.
    body_contains: Option<Template>,
    json: Option<(Vec<PathStep>, serde_json::Value)>,
    max_latency_us: Option<u64>,
}

/// Why a response failed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unexpected status (or, with no `expect`, a 4xx/5xx).
    Status,
    /// Body, JSON or latency check.
    Check,
}

fn parse_path(path: &str, at: &str) -> Result<Vec<PathStep>> {
    let p = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    for part in p.split('.').filter(|s| !s.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(PathStep::Key(key.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let close = r
                .find(']')
                .ok_or_else(|| Error::plan(at, format!("unclosed '[' in {path:?}")))?;
            let idx = r[..close]
                .parse()
                .map_err(|_| Error::plan(at, format!("bad index {:?} in {path:?}", &r[..close])))?;
            steps.push(PathStep::Index(idx));
            rest = &r[close + 1..];
        }
        if !rest.is_empty() {
            return Err(Error::plan(at, format!("cannot read {rest:?} in {path:?}")));
        }
    }
    Ok(steps)
}

impl Check {
    pub fn compile(e: &Expect, scope: &Scope, at: &str) -> Result<Self> {
        if let Some((lo, hi)) = e.status_range {
            if lo > hi {
                return Err(Error::plan(
                    format!("{at}.status_range"),
                    format!("{lo} > {hi}"),
                ));
            }
        }
        let json = match (&e.json_path, &e.json_equals) {
            (Some(p), Some(v)) => Some((parse_path(p, &format!("{at}.json_path"))?, v.clone())),
            (None, None) => None,
            _ => return Err(Error::plan(at, "json_path and json_equals go together")),
        };
        let max_latency_us = match e.max_latency_ms {
            Some(ms) if !(ms.is_finite() && ms > 0.0) => {
                return Err(Error::plan(format!("{at}.max_latency_ms"), "must be > 0"))
            }
            Some(ms) => Some((ms * 1000.0) as u64),
            None => None,
        };
        Ok(Check {
            status: e.status.clone(),
            status_range: e.status_range,
            body_contains: e
                .body_contains
                .as_ref()
                .map(|s| Template::compile(s, scope, &format!("{at}.body_contains")))
                .transpose()?,
            json,
            max_latency_us,
        })
    }

    /// Whether the body must be kept to evaluate this check.
    pub fn needs_body(&self) -> bool {
        self.body_contains.is_some() || self.json.is_some()
    }

    pub fn evaluate(
        &self,
        status: u16,
        body: &[u8],
        latency_us: u64,
        values: &Values<'_>,
    ) -> Option<Failure> {
        self.evaluate_why(status, body, latency_us, values)
            .map(|(f, _)| f)
    }

    /// As `evaluate`, with the failure's message (what the summary's failures list).
    pub fn evaluate_why(
        &self,
        status: u16,
        body: &[u8],
        latency_us: u64,
        values: &Values<'_>,
    ) -> Option<(Failure, &'static str)> {
        let status_ok = match (&self.status, self.status_range) {
            (None, None) => status < 400,
            (set, range) => {
                set.as_ref().is_some_and(|s| s.contains(&status))
                    || range.is_some_and(|(lo, hi)| (lo..=hi).contains(&status))
            }
        };
        if !status_ok {
            return Some((Failure::Status, "unexpected status"));
        }
        if let Some(t) = &self.body_contains {
            let needle = t.render(values);
            let needle = needle.as_bytes();
            if !needle.is_empty() && !body.windows(needle.len()).any(|w| w == needle) {
                return Some((Failure::Check, "the body lacks the expected text"));
            }
        }
        if let Some((path, want)) = &self.json {
            let ok = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    let mut cur = &v;
                    for step in path {
                        cur = match step {
                            PathStep::Key(k) => cur.get(k)?,
                            PathStep::Index(i) => cur.get(i)?,
                        };
                    }
                    Some(cur == want)
                })
                .unwrap_or(false);
            if !ok {
                return Some((
                    Failure::Check,
                    "the JSON path does not hold the expected value",
                ));
            }
        }
        if self.max_latency_us.is_some_and(|m| latency_us > m) {
            return Some((Failure::Check, "slower than the latency limit"));
        }
        None
    }
}

impl From<Failure> for crate::outcome::ErrorKind {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Status => crate::outcome::ErrorKind::Status,
            Failure::Check => crate::outcome::ErrorKind::Check,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: Expect) -> Check {
        Check::compile(&e, &Scope::default(), "expect").unwrap()
    }

    const V: Values<'static> = Values {
        vu: 0,
        iter: 0,
        row: None,
        user: None,
    };

    #[test]
    fn without_expect_only_4xx_and_5xx_fail() {
        let c = Check::default();
        assert_eq!(c.evaluate(204, b"", 1, &V), None);
        assert_eq!(c.evaluate(404, b"", 1, &V), Some(Failure::Status));
    }

    #[test]
    fn status_set_and_range_are_either_or() {
        let c = check(Expect {
            status: Some(vec![201]),
            status_range: Some((300, 302)),
            ..Default::default()
        });
        assert_eq!(c.evaluate(201, b"", 1, &V), None);
        assert_eq!(c.evaluate(302, b"", 1, &V), None);
        assert_eq!(c.evaluate(200, b"", 1, &V), Some(Failure::Status));
    }

    #[test]
    fn json_path_equals_walks_keys_and_indexes() {
        let c = check(Expect {
            json_path: Some("$.items[1].id".into()),
            json_equals: Some(serde_json::json!(7)),
            ..Default::default()
        });
        assert_eq!(
            c.evaluate(200, br#"{"items":[{"id":1},{"id":7}]}"#, 1, &V),
            None
        );
        assert_eq!(
            c.evaluate(200, br#"{"items":[{"id":1},{"id":8}]}"#, 1, &V),
            Some(Failure::Check)
        );
        assert_eq!(c.evaluate(200, b"not json", 1, &V), Some(Failure::Check));
    }

    #[test]
    fn body_contains_and_max_latency() {
        let c = check(Expect {
            body_contains: Some("ok".into()),
            max_latency_ms: Some(2.0),
            ..Default::default()
        });
        assert_eq!(c.evaluate(200, b"all ok", 1500, &V), None);
        assert_eq!(c.evaluate(200, b"nope", 1500, &V), Some(Failure::Check));
        assert_eq!(c.evaluate(200, b"ok", 2500, &V), Some(Failure::Check));
    }

    #[test]
    fn a_bad_json_path_names_its_field() {
        let e = Check::compile(
            &Expect {
                json_path: Some("$.a[x]".into()),
                json_equals: Some(serde_json::json!(1)),
                ..Default::default()
            },
            &Scope::default(),
            "tasks[0].requests[0].expect",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tasks[0].requests[0].expect.json_path"), "{e}");
    }
}

//! The names a run's measurements are kept under: its entries (tasks, then hooks) and, within
//! each, its named requests. Every measured thing has a slot: the entries first, in the
//! plan's order, then each request name of an entry as it is first seen (an engine task's
//! when the plan is compiled, a Python task's when it first sends it).
//!
//! The number of request names is bounded: past the plan's `max_request_names`, a new name
//! is measured under `other` (per entry), and the run says so once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// The request name past the limit.
pub const OTHER: &str = "other";

/// Between an entry and a request name in an interval log's tag: never in a task's name.
pub const TAG_SEPARATOR: char = '|';

/// The tag of a request's histograms in an interval log: the entry, the separator, the name
/// with what a log's tag may not hold (spaces, commas) and `%` percent-encoded.
pub fn request_tag(entry: &str, name: &str) -> String {
    let mut out = String::with_capacity(entry.len() + name.len() + 8);
    out.push_str(entry);
    out.push(TAG_SEPARATOR);
    for c in name.chars() {
        if c == '%' || c == ',' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A log tag read back: the entry, and the request name for a request's tag.
pub fn split_tag(tag: &str) -> (String, Option<String>) {
    match tag.split_once(TAG_SEPARATOR) {
        None => (tag.to_string(), None),
        Some((entry, coded)) => {
            let bytes = coded.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let hex = |j: usize| {
                    bytes
                        .get(j..j + 2)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                };
                match (bytes[i], hex(i + 1)) {
                    (b'%', Some(b)) => {
                        out.push(b);
                        i += 3;
                    }
                    (b, _) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            (
                entry.to_string(),
                Some(String::from_utf8_lossy(&out).into_owned()),
            )
        }
    }
}

#[derive(Default, Clone)]
struct Known {
    /// Per request slot (after the entries): its entry and name.
    requests: Vec<(usize, String)>,
    /// Per entry: its request names' places in `requests`.
    by_entry: Vec<HashMap<String, usize>>,
    /// Names given a slot of their own (`other` not counted).
    named: usize,
}

/// A run's names: fixed entries, request names added as they are first seen.
pub struct Names {
    entries: Vec<String>,
    max: usize,
    known: RwLock<Known>,
    /// Set once the run has said that names went to `other`.
    said: AtomicBool,
}

impl Names {
    /// `entries`: the tasks, then the hooks; at most `max` request names.
    pub fn new(entries: Vec<String>, max: usize) -> Self {
        let known = Known {
            by_entry: vec![HashMap::new(); entries.len()],
            ..Known::default()
        };
        Names {
            entries,
            max,
            known: RwLock::new(known),
            said: AtomicBool::new(false),
        }
    }

    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The slot of request `name` of `entry`: its own (given on first use), or, once `max`
    /// names have one, the entry's `other`.
    pub fn slot(&self, entry: usize, name: &str) -> usize {
        let base = self.entries.len();
        {
            let k = self.known.read().unwrap_or_else(|e| e.into_inner());
            if let Some(&i) = k.by_entry[entry].get(name) {
                return base + i;
            }
        }
        let mut k = self.known.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = k.by_entry[entry].get(name) {
            return base + i;
        }
        let name = if k.named >= self.max && name != OTHER {
            if !self.said.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "loadpilot: more than {} request names; later names are measured together \
                     under {OTHER:?} (raise max_request_names to keep them apart)",
                    self.max
                );
            }
            if let Some(&i) = k.by_entry[entry].get(OTHER) {
                return base + i;
            }
            OTHER
        } else {
            k.named += usize::from(name != OTHER);
            name
        };
        let i = k.requests.len();
        k.requests.push((entry, name.to_string()));
        k.by_entry[entry].insert(name.to_string(), i);
        base + i
    }

    /// Every request name so far, in slot order, as (entry, name).
    pub fn requests(&self) -> Vec<(usize, String)> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_slots_after_the_entries_and_past_the_limit_go_to_other() {
        let n = Names::new(vec!["a".into(), "b".into()], 2);
        assert_eq!(n.slot(0, "GET /x"), 2);
        assert_eq!(
            n.slot(1, "GET /x"),
            3,
            "the same name in another task is another"
        );
        assert_eq!(n.slot(0, "GET /x"), 2);
        assert_eq!(n.slot(0, "GET /y"), 4);
        assert_eq!(n.slot(0, "GET /z"), 4, "one other per entry");
        assert_eq!(n.slot(1, "GET /z"), 5);
        assert_eq!(
            n.requests(),
            [
                (0, "GET /x".to_string()),
                (1, "GET /x".to_string()),
                (0, OTHER.to_string()),
                (1, OTHER.to_string())
            ]
        );
    }

    #[test]
    fn a_tag_reads_back_whatever_the_name_holds() {
        for name in ["GET /items/{{id}}", "a,b c%d|e", "ümlaut\ttab", "x%2"] {
            let tag = request_tag("shop.buy", name);
            assert!(!tag.contains([' ', ',', '\t']), "{tag}");
            assert_eq!(
                split_tag(&tag),
                ("shop.buy".to_string(), Some(name.to_string()))
            );
        }
        assert_eq!(split_tag("browse"), ("browse".to_string(), None));
    }
}

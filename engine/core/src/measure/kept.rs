//! The slowest requests, and a uniform sample of all of them, kept with their context.
//!
//! Each request name keeps, per interval, its `slowest` requests (by corrected latency) and a
//! `sample` of them: each request draws a random key and the sample is the lowest keys. Both
//! are "the best few of a set", so the few of a union are the best few of the parts' few:
//! threads' shards, and a distributed run's agents, merge exactly, in bounded memory whatever
//! the rate. A request's context is gathered only once it is known to be kept.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// One kept request, with what it takes to find it again (in the server's logs and traces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Corrected latency: from its due instant (its iteration's, for the first request; its
    /// own start for the next ones) to its end, answered or not.
    pub latency_us: u64,
    /// From the send to the end; `None` when nothing was sent (no connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_us: Option<u64>,
    /// Seconds after the run's start: due, sent (`None`: never sent), ended.
    pub due_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_s: Option<f64>,
    pub end_s: f64,
    /// The answer's status (the last hop's, after redirects); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed (an error kind's name), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Path and query as sent (templates filled).
    pub url: String,
    pub user: u64,
    pub iteration: u64,
    /// The feeder's row it used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<Vec<String>>,
    /// The connection it went on (numbered as the run opened them), and whether that
    /// connection was opened for it (its latency includes connecting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
    #[serde(default)]
    pub new_connection: bool,
    /// How long opening that connection took, when it was opened for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_us: Option<u64>,
    /// The W3C trace id it carried (32 hex digits), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The agent that sent it (distributed runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Its uniform random draw: the sample keeps the lowest.
    pub key: u64,
}

impl Kept {
    /// Slower first; equal latencies by key, so every merge picks the same ones.
    fn rank(&self) -> (u64, u64) {
        (self.latency_us, u64::MAX - self.key)
    }
}

/// The kept requests of one request name in one interval (or any span, once added up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Keeper {
    /// How many of the slowest, and how many sampled, are kept.
    pub keep: u32,
    pub sample_size: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slowest: Vec<Kept>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample: Vec<Kept>,
}

impl Keeper {
    pub fn is_empty(&self) -> bool {
        self.slowest.is_empty() && self.sample.is_empty()
    }

    /// Back to empty, keeping its sizes and memory.
    pub fn clear(&mut self) {
        self.slowest.clear();
        self.sample.clear();
    }

    /// Whether a request of `latency_us` that drew `key` would be kept: asked before its
    /// context is gathered, so a request that is not kept costs a comparison or two.
    pub fn wants(&self, latency_us: u64, key: u64) -> bool {
        let slow = self.slowest.len() < self.keep as usize
            || self
                .slowest
                .iter()
                .any(|k| k.rank() < (latency_us, u64::MAX - key));
        let sampled = self.sample.len() < self.sample_size as usize
            || self.sample.iter().any(|k| k.key > key);
        slow || sampled
    }

    /// Keeps `k` among the slowest and in the sample where it belongs.
    pub fn offer(&mut self, k: Kept) {
        let sampled = self.sample.len() < self.sample_size as usize
            || self.sample.iter().any(|s| s.key > k.key);
        if sampled {
            self.offer_sample(k.clone());
        }
        self.offer_slow(k);
    }

    fn offer_slow(&mut self, k: Kept) {
        if self.slowest.len() < self.keep as usize {
            self.slowest.push(k);
            return;
        }
        if let Some((i, least)) = self
            .slowest
            .iter()
            .enumerate()
            .min_by_key(|(_, x)| x.rank())
        {
            if least.rank() < k.rank() {
                self.slowest[i] = k;
            }
        }
    }

    fn offer_sample(&mut self, k: Kept) {
        if self.sample.len() < self.sample_size as usize {
            self.sample.push(k);
            return;
        }
        if let Some((i, most)) = self.sample.iter().enumerate().max_by_key(|(_, x)| x.key) {
            if most.key > k.key {
                self.sample[i] = k;
            }
        }
    }

    /// Adds `o`'s: the slowest of the union are the slowest of both slowest, the sample of
    /// the union the lowest keys of both samples.
    pub fn add(&mut self, o: &Keeper) {
        self.keep = self.keep.max(o.keep);
        self.sample_size = self.sample_size.max(o.sample_size);
        for k in &o.slowest {
            self.offer_slow(k.clone());
        }
        for k in &o.sample {
            self.offer_sample(k.clone());
        }
    }

    /// The slowest, slowest first.
    pub fn sorted_slowest(&self) -> Vec<&Kept> {
        let mut v: Vec<&Kept> = self.slowest.iter().collect();
        v.sort_by_key(|k| std::cmp::Reverse(k.rank()));
        v
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // The time and this thread's own address: distinct per thread and per process.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let here = &t as *const u64 as u64;
    splitmix(t ^ here.rotate_left(32))
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE5_E9B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform 64-bit draw from this thread's generator (SplitMix64: no lock, no syscall).
pub fn draw() -> u64 {
    RNG.with(|r| {
        let s = r.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        r.set(s);
        splitmix(s.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    })
}

/// A W3C trace context for one request: a random trace id and parent span id, sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceContext {
    pub fn new() -> Self {
        // Neither may be all zeros (W3C: invalid).
        let trace_id = ((u128::from(draw()) << 64) | u128::from(draw())).max(1);
        TraceContext {
            trace_id,
            span_id: draw().max(1),
        }
    }

    /// The `traceparent` header's value: `00-<trace id>-<span id>-01`.
    pub fn header(&self) -> String {
        String::from_utf8(self.bytes().to_vec()).expect("hex digits")
    }

    /// The same, written without formatting machinery or allocation (it goes with every
    /// request).
    pub fn bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-................................-................-01";
        for (i, slot) in out[3..35].iter_mut().enumerate() {
            *slot = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for (i, slot) in out[36..52].iter_mut().enumerate() {
            *slot = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// The trace id of a `traceparent` value a request set itself, if it is one.
    pub fn parse(value: &[u8]) -> Option<u128> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.trim().split('-');
        let (version, id) = (parts.next()?, parts.next()?);
        if version.len() != 2 || id.len() != 32 {
            return None;
        }
        u128::from_str_radix(id, 16).ok().filter(|&v| v != 0)
    }

    pub fn hex(trace_id: u128) -> String {
        format!("{trace_id:032x}")
    }
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new()
    }
}

/// Kept requests made up for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::Kept;

    /// A kept request of `latency_us` that drew `key`.
    pub(crate) fn kept(latency_us: u64, key: u64) -> Kept {
        Kept {
            latency_us,
            service_us: None,
            due_s: 0.0,
            sent_s: None,
            end_s: 0.0,
            status: Some(200),
            error: None,
            url: "/".into(),
            user: 0,
            iteration: 0,
            row: None,
            connection: None,
            new_connection: false,
            connect_us: None,
            trace_id: None,
            agent: None,
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::kept;
    use super::*;

    fn keeper(keep: u32, sample_size: u32) -> Keeper {
        Keeper {
            keep,
            sample_size,
            ..Keeper::default()
        }
    }

    fn fill(k: &mut Keeper, items: impl IntoIterator<Item = (u64, u64)>) {
        for (lat, key) in items {
            if k.wants(lat, key) {
                k.offer(kept(lat, key));
            }
        }
    }

    #[test]
    fn the_slowest_and_the_lowest_keys_are_kept_and_parts_merge_to_the_whole() {
        // 10 000 requests in four parts (threads, agents), latencies and keys scrambled.
        let items: Vec<(u64, u64)> = (0..10_000u64)
            .map(|i| (splitmix(i) % 1_000_000, splitmix(i + 77)))
            .collect();
        let mut whole = keeper(5, 3);
        fill(&mut whole, items.iter().copied());
        let mut merged = keeper(0, 0);
        for part in items.chunks(2_500) {
            let mut k = keeper(5, 3);
            fill(&mut k, part.iter().copied());
            merged.add(&k);
        }
        let mut by_latency: Vec<u64> = items.iter().map(|i| i.0).collect();
        by_latency.sort_unstable_by(|a, b| b.cmp(a));
        let slowest: Vec<u64> = whole
            .sorted_slowest()
            .iter()
            .map(|k| k.latency_us)
            .collect();
        assert_eq!(slowest, by_latency[..5]);
        let mut keys: Vec<u64> = items.iter().map(|i| i.1).collect();
        keys.sort_unstable();
        let mut sampled: Vec<u64> = whole.sample.iter().map(|k| k.key).collect();
        sampled.sort_unstable();
        assert_eq!(sampled, keys[..3]);
        let mut m: Vec<u64> = merged.sample.iter().map(|k| k.key).collect();
        m.sort_unstable();
        assert_eq!(m, sampled, "the merged sample is the whole's");
        let ms: Vec<u64> = merged
            .sorted_slowest()
            .iter()
            .map(|k| k.latency_us)
            .collect();
        assert_eq!(ms, slowest, "the merged slowest are the whole's");
        assert_eq!((merged.keep, merged.sample_size), (5, 3));
    }

    #[test]
    fn a_request_is_only_wanted_while_it_would_be_kept() {
        let mut k = keeper(2, 0);
        assert!(k.wants(10, 5));
        fill(&mut k, [(10, 1), (20, 2)]);
        assert!(!k.wants(5, 9), "faster than both kept, and no sample");
        assert!(k.wants(15, 9));
        let nothing = keeper(0, 0);
        assert!(!nothing.wants(u64::MAX, 0), "keeping off keeps nothing");
    }

    #[test]
    fn a_trace_context_is_a_valid_traceparent_and_reads_back() {
        let t = TraceContext::new();
        let h = t.header();
        assert_eq!(h.len(), 55);
        assert_eq!(
            h,
            format!("00-{:032x}-{:016x}-01", t.trace_id, t.span_id),
            "the one W3C format"
        );
        assert!(h.starts_with("00-") && h.ends_with("-01"), "{h}");
        assert_eq!(TraceContext::parse(h.as_bytes()), Some(t.trace_id));
        assert_ne!(TraceContext::new().trace_id, t.trace_id);
        assert_eq!(TraceContext::parse(b"00-zz-1-01"), None);
        let zero = format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16));
        assert_eq!(TraceContext::parse(zero.as_bytes()), None);
    }
}

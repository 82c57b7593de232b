//! HdrHistogram interval logs: LoadPilot's own written (`LogWriter`, `encode`), and those of
//! any tool (jHiccup, wrk2, YCSB, Cassandra, ...) read as the Java HdrHistogram reads them:
//! every histogram encoding (V0, V1, V2; compressed or not) kept in its own layout (lowest
//! discernible value, significant digits; resized as values need), `#[StartTime:` and
//! `#[BaseTime:` honoured, and percentiles and the `.hgrm` distribution by Java's rules.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::error::{Error, Result};

const V0_PLAIN: u32 = 0x1c84_9308;
const V0_COMPRESSED: u32 = 0x1c84_9309;
const V1_PLAIN: u32 = 0x1c84_9301;
const V1_COMPRESSED: u32 = 0x1c84_9302;
const V2_PLAIN: u32 = 0x1c84_9303;
const V2_COMPRESSED: u32 = 0x1c84_9304;

/// A histogram as its writer laid it out.
pub type Hist = Histogram<u64>;

/// The layout of a histogram: how a counts-array index maps to a value.
struct Layout {
    unit_magnitude: u32,
    sub_bucket_half_count_magnitude: u32,
}

impl Layout {
    fn new(lowest: u64, sigfig: u8) -> Self {
        let unit_magnitude = 63 - lowest.max(1).leading_zeros();
        let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
        let sub_bucket_count_magnitude = (largest_single_unit as f64).log2().ceil() as u32;
        Layout {
            unit_magnitude,
            sub_bucket_half_count_magnitude: sub_bucket_count_magnitude.max(1) - 1,
        }
    }

    /// The lowest value the counts-array index `index` stands for.
    fn value_at(&self, index: usize) -> Option<u64> {
        let half_mag = self.sub_bucket_half_count_magnitude;
        let half_count = 1usize << half_mag;
        let mut bucket = (index >> half_mag) as i64 - 1;
        let mut sub = (index & (half_count - 1)) + half_count;
        if bucket < 0 {
            sub -= half_count;
            bucket = 0;
        }
        let shift = bucket as u32 + self.unit_magnitude;
        (shift < 64)
            .then(|| (sub as u64).checked_shl(shift))
            .flatten()
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn inflate(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot inflate: {e}"))?;
    Ok(out)
}

/// Decodes one histogram of any encoding (the base64 text of a log line, or its bytes),
/// in its own layout.
pub fn decode(text: &str) -> std::result::Result<Hist, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    decode_bytes(&raw)
}

fn decode_bytes(raw: &[u8]) -> std::result::Result<Hist, String> {
    let cookie = be_u32(raw, 0).ok_or("too short for a histogram")?;
    match cookie & !0xf0 {
        V2_COMPRESSED | V1_COMPRESSED | V0_COMPRESSED => {
            let len = be_u32(raw, 4).ok_or("too short for a compressed histogram")? as usize;
            let body = raw
                .get(8..8 + len)
                .ok_or("the compressed histogram is cut short")?;
            decode_plain(&inflate(body)?)
        }
        _ => decode_plain(raw),
    }
}

/// The non-zero counts of a plain (uncompressed) encoding, as (the lowest value of the
/// count's bucket in the writer's layout, count), and the writer's layout.
fn plain_counts(b: &[u8]) -> std::result::Result<Counts, String> {
    let short = || "the histogram's header is cut short".to_string();
    let cookie = be_u32(b, 0).ok_or_else(short)?;
    let word = ((cookie & 0xf0) >> 4) as usize;
    let (sigfig, lowest, highest, payload): (u32, u64, u64, &[u8]) = match cookie & !0xf0 {
        V2_PLAIN | V1_PLAIN => {
            let len = be_u32(b, 4).ok_or_else(short)? as usize;
            if be_u32(b, 8).ok_or_else(short)? != 0 {
                return Err("a histogram of doubles (normalizing offset) is not supported".into());
            }
            let payload = b
                .get(40..40 + len)
                .ok_or("the histogram's counts are cut short")?;
            (
                be_u32(b, 12).ok_or_else(short)?,
                be_u64(b, 16).ok_or_else(short)?,
                be_u64(b, 24).ok_or_else(short)?,
                payload,
            )
        }
        V0_PLAIN => (
            be_u32(b, 4).ok_or_else(short)?,
            be_u64(b, 8).ok_or_else(short)?,
            be_u64(b, 16).ok_or_else(short)?,
            b.get(32..).unwrap_or(&[]),
        ),
        _ => return Err(format!("not an HdrHistogram encoding (cookie {cookie:#x})")),
    };
    if sigfig > 5 {
        return Err(format!("{sigfig} significant digits (at most 5)"));
    }
    let sigfig = sigfig as u8;
    let lowest = lowest.max(1);
    let layout = Layout::new(lowest, sigfig);
    let mut counts = Vec::new();
    let mut put = |index: usize, count: u64| -> std::result::Result<(), String> {
        if count == 0 {
            return Ok(());
        }
        let value = layout
            .value_at(index)
            .ok_or_else(|| format!("count at index {index} is out of range"))?;
        counts.push((value, count));
        Ok(())
    };
    if cookie & !0xf0 == V2_PLAIN {
        // ZigZag LEB128: a count, or a run of zero counts (negative).
        let (mut at, mut index) = (0usize, 0usize);
        while at < payload.len() {
            let mut v: u64 = 0;
            let mut shift = 0;
            loop {
                let byte = *payload.get(at).ok_or("a count is cut short")?;
                at += 1;
                if shift == 56 {
                    v |= u64::from(byte) << 56;
                    break;
                }
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
            if n < 0 {
                index += n.unsigned_abs() as usize;
            } else {
                put(index, n as u64)?;
                index += 1;
            }
        }
    } else {
        if !matches!(word, 2 | 4 | 8) {
            return Err(format!("counts of {word} bytes"));
        }
        for (index, chunk) in payload.chunks_exact(word).enumerate() {
            let count = match word {
                2 => u64::from(u16::from_be_bytes([chunk[0], chunk[1]])),
                4 => u64::from(u32::from_be_bytes(chunk.try_into().unwrap())),
                _ => u64::from_be_bytes(chunk.try_into().unwrap()),
            };
            put(index, count)?;
        }
    }
    Ok(Counts {
        lowest,
        highest,
        sigfig,
        counts,
    })
}

/// A decoded histogram before it is laid out: its writer's bounds and its non-zero counts.
pub struct Counts {
    pub lowest: u64,
    pub highest: u64,
    pub sigfig: u8,
    /// (the lowest value of a count's bucket, the count), in ascending order.
    pub counts: Vec<(u64, u64)>,
}

fn decode_plain(b: &[u8]) -> std::result::Result<Hist, String> {
    let c = plain_counts(b)?;
    let mut h = Hist::new_with_bounds(c.lowest, c.highest.max(2 * c.lowest), c.sigfig)
        .map_err(|e| format!("bad layout: {e:?}"))?;
    h.auto(true);
    for (value, count) in c.counts {
        h.record_n(value, count)
            .map_err(|e| format!("cannot record {value}: {e:?}"))?;
    }
    Ok(h)
}

/// The counts of one histogram of any encoding (base64 text), without laying it out.
pub fn decode_counts(text: &str) -> std::result::Result<Counts, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let cookie = be_u32(&raw, 0).ok_or("too short for a histogram")?;
    match cookie & !0xf0 {
        V2_COMPRESSED | V1_COMPRESSED | V0_COMPRESSED => {
            let len = be_u32(&raw, 4).ok_or("too short for a compressed histogram")? as usize;
            let body = raw
                .get(8..8 + len)
                .ok_or("the compressed histogram is cut short")?;
            plain_counts(&inflate(body)?)
        }
        _ => plain_counts(&raw),
    }
}

/// One interval histogram of a log.
pub struct LogInterval {
    pub tag: Option<String>,
    /// Seconds after the log's start time (`#[StartTime:`); may be negative.
    pub offset_s: f64,
    /// Seconds since the Unix epoch, when the log's times say (absolute, or via a base time).
    pub absolute_s: f64,
    pub length_s: f64,
    pub hist: Hist,
}

/// A whole log.
pub struct Log {
    /// `#[StartTime:` (seconds since the epoch), else 0.
    pub start_time_s: f64,
    pub intervals: Vec<LogInterval>,
}

/// The number in `#[Name: 123.456 ...]`.
fn header_seconds(line: &str, name: &str) -> Option<f64> {
    let rest = line.strip_prefix(name)?.trim_start();
    rest.split(|c: char| c.is_whitespace() || c == ']')
        .next()?
        .parse()
        .ok()
}

/// Reads an interval log as Java's `HistogramLogReader` does. A torn line (the writer killed
/// mid-write) is only the last line without its newline, and is skipped; any other line that
/// is not an interval histogram is an error naming it.
pub fn read_log(path: &Path) -> Result<Log> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_log(path, &text)
}

pub fn parse_log(path: &Path, text: &str) -> Result<Log> {
    let bad = |line: usize, why: String| Error::Format {
        path: path.to_path_buf(),
        message: format!("line {line}: {why}"),
    };
    let lines: Vec<&str> = text.split('\n').collect();
    // The text after the last newline: empty when the file ends with one.
    let last = lines.len();
    let mut start_time: Option<f64> = None;
    let mut base_time: Option<f64> = None;
    let mut intervals = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        if let Some(t) = header_seconds(line, "#[StartTime:") {
            start_time = Some(t);
            continue;
        }
        if let Some(t) = header_seconds(line, "#[BaseTime:") {
            base_time = Some(t);
            continue;
        }
        if line.starts_with('#') || line.starts_with("\"StartTimestamp\"") {
            continue;
        }
        let parsed = (|| -> std::result::Result<(Option<String>, f64, f64, Hist), String> {
            let (tag, rest) = match line.strip_prefix("Tag=") {
                Some(r) => {
                    let (t, rest) = r.split_once(',').ok_or("a tag with nothing after it")?;
                    (Some(t.to_string()), rest)
                }
                None => (None, line),
            };
            let mut f = rest.splitn(4, ',');
            let mut number = |what: &str| -> std::result::Result<f64, String> {
                let v = f.next().ok_or(format!("no {what}"))?;
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or(format!("{what} {v:?} is not a number"))
            };
            let start = number("start time")?;
            let length = number("interval length")?;
            let _max = number("interval max")?;
            let hist = decode(f.next().ok_or("no histogram")?)?;
            Ok((tag, start, length, hist))
        })();
        match parsed {
            Ok((tag, start, length_s, hist)) => {
                let start_time_s = start_time.unwrap_or(0.0);
                // Java's rule: without a base time, times more than a year before the start
                // time are offsets from it; otherwise they are absolute.
                let deduced = if start < start_time_s - 365.0 * 24.0 * 3600.0 {
                    start_time_s
                } else {
                    0.0
                };
                let base = *base_time.get_or_insert(deduced);
                let absolute_s = start + base;
                intervals.push(LogInterval {
                    tag,
                    offset_s: absolute_s - start_time_s,
                    absolute_s,
                    length_s,
                    hist,
                });
            }
            Err(_) if n == last => {} // torn: the last line, without its newline
            Err(why) => return Err(bad(n, why)),
        }
    }
    Ok(Log {
        start_time_s: start_time.unwrap_or(0.0),
        intervals,
    })
}

/// The value at percentile `p` (0..100) by Java's rule: the highest value equivalent to the
/// first bucket whose running count reaches `ceil(p'/100 * total)` (at least 1), `p'` being
/// the float just below `p` (so 55% of 1,500 is the 825th value, not the 826th by a rounding
/// error: the same value the percentile rows give); for 0, the lowest value equivalent to it.
pub fn value_at_percentile(h: &Hist, p: f64) -> u64 {
    let total = h.len();
    if total == 0 {
        return 0;
    }
    let p = p.next_down().clamp(0.0, 100.0);
    let wanted = (((p / 100.0) * total as f64).ceil() as u64).max(1);
    let mut running = 0u64;
    for v in h.iter_recorded() {
        running += v.count_at_value();
        if running >= wanted {
            let at = v.value_iterated_to();
            return if p == 0.0 {
                h.lowest_equivalent(at)
            } else {
                h.highest_equivalent(at)
            };
        }
    }
    h.highest_equivalent(h.max())
}

/// `value_at_percentile` of several percentiles (in ascending order) in one pass.
pub fn values_at_percentiles<const N: usize>(h: &Hist, ps: [f64; N]) -> [u64; N] {
    let total = h.len();
    let mut out = [0u64; N];
    if total == 0 {
        return out;
    }
    let wanted = ps.map(|p| {
        let p = p.next_down().clamp(0.0, 100.0);
        (p, (((p / 100.0) * total as f64).ceil() as u64).max(1))
    });
    debug_assert!(wanted.windows(2).all(|w| w[0].1 <= w[1].1), "ascending");
    let mut next = 0;
    let mut running = 0u64;
    for v in h.iter_recorded() {
        running += v.count_at_value();
        while next < N && running >= wanted[next].1 {
            let at = v.value_iterated_to();
            out[next] = if wanted[next].0 == 0.0 {
                h.lowest_equivalent(at)
            } else {
                h.highest_equivalent(at)
            };
            next += 1;
        }
        if next == N {
            return out;
        }
    }
    for o in out.iter_mut().skip(next) {
        *o = h.highest_equivalent(h.max());
    }
    out
}

/// One row of the percentile distribution: the value, the percentile level (0..100) of the
/// tick it answers, and the count up to and including the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileRow {
    pub value: u64,
    pub level: f64,
    pub total: u64,
}

/// The percentile distribution as Java's `PercentileIterator` walks it (what
/// `outputPercentileDistribution` prints): fixed ticks per halving of the distance to 100%,
/// each answered by the first recorded value whose running percentile reaches it, and a last
/// row at 100%.
pub fn percentile_rows(h: &Hist, ticks_per_half_distance: u32) -> Vec<PercentileRow> {
    let total = h.len();
    let mut rows = Vec::new();
    if total == 0 {
        return rows;
    }
    let ticks = ticks_per_half_distance.max(1) as f64;
    let recorded: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| {
            (
                h.highest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            )
        })
        .collect();
    let (mut index, mut fresh, mut running) = (0usize, true, 0u64);
    let mut level = 0.0f64;
    let mut reached_last = false;
    loop {
        // hasNext: values left to reach, then one last step to 100%.
        if running >= total {
            if reached_last {
                break;
            }
            level = 100.0;
            reached_last = true;
        }
        // next: the first value (from the current one) whose running percentile reaches it.
        loop {
            let Some(&(value, count)) = recorded.get(index) else {
                return rows;
            };
            if fresh {
                running += count;
                fresh = false;
            }
            if 100.0 * running as f64 / total as f64 >= level {
                rows.push(PercentileRow {
                    value,
                    level,
                    total: running,
                });
                // Ticks double with every halving of the distance to 100% (Java's arithmetic).
                let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64;
                let reporting_ticks =
                    ticks * 2f64.powi(halvings.saturating_add(1).min(1000) as i32);
                level += 100.0 / reporting_ticks;
                break;
            }
            index += 1;
            fresh = true;
        }
    }
    rows
}

/// Base64 of the compressed V2 encoding: what `.hlog` lines and other HdrHistogram tools use.
pub fn encode(h: &Hist) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Writes an interval log in the format every HdrHistogram tool reads: its header once the
/// run's clock has started, then one tagged, compressed histogram per line.
pub struct LogWriter {
    path: PathBuf,
    what: &'static str,
    out: BufWriter<File>,
}

impl LogWriter {
    pub fn create(path: PathBuf, what: &'static str) -> Result<Self> {
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(LogWriter {
            path,
            what,
            out: BufWriter::new(f),
        })
    }

    /// Writes the header, with the instant the run's clock started.
    pub fn begin(&mut self, start: SystemTime) -> Result<()> {
        let start_s = start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let what = self.what;
        write!(
            self.out,
            "#[LoadPilot {what}, microseconds; one histogram per task per interval, tagged with the task]\n\
             #[Histogram log format version 1.3]\n\
             #[StartTime: {start_s:.3} (seconds since epoch)]\n\
             #[BaseTime: {start_s:.3} (seconds since epoch)]\n\
             #[MaxValueDivisor: 1000.000]\n\
             \"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    pub fn write(&mut self, tag: &str, start_s: f64, length_s: f64, h: &Hist) -> Result<()> {
        writeln!(
            self.out,
            "Tag={tag},{start_s:.3},{length_s:.3},{:.3},{}",
            h.max() as f64 / 1000.0,
            encode(h)
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    /// As `write`, for a histogram already encoded (`encoded`, whose largest value is `max`).
    pub fn write_encoded(
        &mut self,
        tag: &str,
        start_s: f64,
        length_s: f64,
        max: u64,
        encoded: &str,
    ) -> Result<()> {
        writeln!(
            self.out,
            "Tag={tag},{start_s:.3},{length_s:.3},{:.3},{encoded}",
            max as f64 / 1000.0,
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_in_one_pass_are_those_one_at_a_time() {
        let mut h = crate::measure::metrics::new_hist();
        for v in 1..=2000u64 {
            h.record(v * v % 7919 + 1).unwrap();
        }
        let ps = [0.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0];
        let one = super::values_at_percentiles(&h, ps);
        for (p, v) in ps.iter().zip(one) {
            assert_eq!(v, super::value_at_percentile(&h, *p), "p{p}");
        }
    }

    use super::*;
    use hdrhistogram::serialization::Serializer;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/hdrhistogram")
            .join(name)
    }

    /// Adds a log's intervals whose offsets are in `[from, to]` into a histogram of
    /// 3 significant digits from 1 (Java's test does so), as (intervals, count, p99.9, max).
    fn accumulate(log: &Log, from: f64, to: f64) -> (usize, u64, u64, u64) {
        let mut all = Hist::new(3).unwrap();
        all.auto(true);
        let mut n = 0;
        for iv in log
            .intervals
            .iter()
            .filter(|iv| iv.offset_s >= from && iv.offset_s <= to)
        {
            n += 1;
            all.add(&iv.hist).unwrap();
        }
        (n, all.len(), value_at_percentile(&all, 99.9), all.max())
    }

    #[test]
    fn the_upstream_logs_read_as_java_reads_them() {
        // (file, start time, whole log, then ranges), as HistogramLogReaderWriterTest asserts.
        type Case = (&'static str, f64, [(f64, f64, (usize, u64, u64, u64)); 3]);
        let all = (f64::MIN, f64::MAX);
        let cases: [Case; 4] = [
            (
                "jHiccup-2.0.7S.logV2.hlog",
                1441812279.474,
                [
                    (all.0, all.1, (62, 48761, 1745879039, 1796210687)),
                    (5.0, 20.0, (15, 11664, 1536163839, 1544552447)),
                    (40.0, 60.0, (20, 15830, 1779433471, 1796210687)),
                ],
            ),
            (
                "jHiccup-2.0.6.logV1.hlog",
                1438867590.285,
                [
                    (all.0, all.1, (88, 65964, 1829765119, 1888485375)),
                    (5.0, 20.0, (15, 11213, 1019740159, 1032323071)),
                    (50.0, 80.0, (29, 22630, 1871708159, 1888485375)),
                ],
            ),
            (
                "jHiccup-2.0.1.logV0.hlog",
                1438869961.225,
                [
                    (all.0, all.1, (81, 61256, 1510998015, 1569718271)),
                    (20.0, 45.0, (25, 18492, 459007, 623103)),
                    (46.0, 80.0, (34, 25439, 1209008127, 1234173951)),
                ],
            ),
            (
                "ycsb.logV1.hlog",
                1438613579.295,
                [
                    (all.0, all.1, (602, 300056, 1214463, 1546239)),
                    (0.0, 180.0, (180, 90033, 1375231, 1546239)),
                    (180.0, 700.0, (421, 209686, 530, 17775)),
                ],
            ),
        ];
        for (file, start, ranges) in cases {
            let log = read_log(&data(file)).unwrap();
            assert!((log.start_time_s - start).abs() < 1e-6, "{file}");
            for (from, to, expected) in ranges {
                assert_eq!(
                    accumulate(&log, from, to),
                    expected,
                    "{file} [{from}, {to}]"
                );
            }
        }
    }

    #[test]
    fn percentile_rows_follow_javas_ticks_and_stop_at_the_last_value() {
        // 20 values 1..=20: the running count lands exactly on q*N at every tick of 5%.
        let mut h = Hist::new(3).unwrap();
        for v in 1..=20u64 {
            h.record(v).unwrap();
        }
        let rows = percentile_rows(&h, 5);
        let first: Vec<(u64, f64, u64)> = rows[..9]
            .iter()
            .map(|r| (r.value, r.level, r.total))
            .collect();
        // Levels 0, 10, .., 50 (5 ticks per half), then 55, 60, .. (10 per half): each answered
        // by the value whose running percentile reaches it exactly, not the next one.
        assert_eq!(
            first,
            [
                (1, 0.0, 1),
                (2, 10.0, 2),
                (4, 20.0, 4),
                (6, 30.0, 6),
                (8, 40.0, 8),
                (10, 50.0, 10),
                (11, 55.0, 11),
                (12, 60.0, 12),
                (13, 65.0, 13),
            ]
        );
        assert_eq!(
            rows[8].level / 100.0,
            0.65,
            "the tick, not 0.6500000000000001"
        );
        let last = rows.last().unwrap();
        assert_eq!((last.value, last.level, last.total), (20, 100.0, 20));
        // Once the last value is reached: one row at the current tick, then 100%.
        let at_end = rows.iter().filter(|r| r.total == 20).count();
        assert_eq!(at_end, 2, "{rows:?}");
        // percentile agrees with the rows: each row's value is the value at its level.
        for r in &rows {
            assert_eq!(value_at_percentile(&h, r.level), r.value, "{r:?}");
        }
    }

    #[test]
    fn a_bad_last_line_is_an_error_unless_it_is_torn() {
        let good = std::fs::read_to_string(data("jHiccup-2.0.7S.logV2.hlog")).unwrap();
        let p = Path::new("x.hlog");
        let torn = format!("{good}0.1,1.0,2.0,HISTFAAAAEV42pNpmSzMwMCgyA");
        assert_eq!(parse_log(p, &torn).unwrap().intervals.len(), 62);
        let bad = format!("{torn}\n");
        let e = parse_log(p, &bad).err().unwrap().to_string();
        assert!(e.contains(&format!("line {}", bad.lines().count())), "{e}");
    }

    #[test]
    fn times_are_offsets_from_the_start_or_from_a_base_time() {
        let h = base64::engine::general_purpose::STANDARD.encode({
            let mut v = Vec::new();
            let mut one = Hist::new(3).unwrap();
            one.record(5).unwrap();
            hdrhistogram::serialization::V2DeflateSerializer::new()
                .serialize(&one, &mut v)
                .unwrap();
            v
        });
        let p = Path::new("x.hlog");
        // Offsets (more than a year before the start time): from the start time.
        let relative = parse_log(
            p,
            &format!("#[StartTime: 1000000000.0 (s)]\n2.5,1.0,0.0,{h}\n"),
        )
        .unwrap();
        assert_eq!(relative.intervals[0].offset_s, 2.5);
        assert_eq!(relative.intervals[0].absolute_s, 1_000_000_002.5);
        // Absolute times.
        let absolute = parse_log(
            p,
            &format!("#[StartTime: 1000000000.0 (s)]\n1000000003.0,1.0,0.0,{h}\n"),
        )
        .unwrap();
        assert_eq!(absolute.intervals[0].offset_s, 3.0);
        // A base time says what times are counted from.
        let based = parse_log(
            p,
            &format!(
                "#[StartTime: 1000000010.0 (s)]\n#[BaseTime: 1000000000.0 (s)]\n12.0,1.0,0.0,{h}\n"
            ),
        )
        .unwrap();
        assert_eq!(based.intervals[0].offset_s, 2.0);
    }

    #[test]
    fn values_past_an_hour_in_nanoseconds_keep_their_precision() {
        // A 5 s pause in nanoseconds, with microsecond neighbours, in a layout from 1 ns.
        let mut h = Hist::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        h.record(5_000_000_000).unwrap();
        h.record_n(1_000, 99).unwrap();
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2DeflateSerializer::new()
            .serialize(&h, &mut bytes)
            .unwrap();
        let back = decode_bytes(&bytes).unwrap();
        assert_eq!(back.len(), 100);
        assert_eq!(back.max(), h.max());
        assert_eq!(value_at_percentile(&back, 50.0), 1_000);
        assert!(back.max() >= 5_000_000_000 && back.max() < 5_005_000_000);
    }

    #[test]
    fn uncompressed_encodings_read_as_the_compressed_ones() {
        let mut h = Hist::new_with_bounds(1000, 100_000_000_000, 2).unwrap();
        for v in [1_000u64, 12_345, 9_999_999, 50_000_000_000] {
            h.record_n(v, 3).unwrap();
        }
        // V2, not compressed: ZigZag LEB128 counts.
        let mut plain = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&h, &mut plain)
            .unwrap();
        assert_eq!(be_u32(&plain, 0).unwrap() & !0xf0, V2_PLAIN);
        let back = decode_bytes(&plain).unwrap();
        assert_eq!(
            (back.len(), back.max(), back.min()),
            (h.len(), h.max(), h.min())
        );
        assert_eq!(back.lowest_equivalent(12_345), h.lowest_equivalent(12_345));
        // V1, not compressed: the same header, counts as fixed 8-byte words.
        let mut v1 = plain[..40].to_vec();
        v1[0..4].copy_from_slice(&(V1_PLAIN | 0x80).to_be_bytes());
        let counts: Vec<u64> = {
            let mut c = vec![0u64; 0];
            let layout = Layout::new(1000, 2);
            let top = (0..100_000)
                .take_while(|&i| layout.value_at(i).is_some_and(|v| v <= h.max()))
                .count();
            for i in 0..top {
                let v = layout.value_at(i).unwrap();
                c.push(h.count_at(v));
            }
            c
        };
        v1[4..8].copy_from_slice(&((counts.len() * 8) as u32).to_be_bytes());
        for c in &counts {
            v1.extend_from_slice(&c.to_be_bytes());
        }
        let from_v1 = decode_bytes(&v1).unwrap();
        assert_eq!(from_v1.len(), h.len());
        assert_eq!(from_v1.max(), h.max());
        assert_eq!(
            value_at_percentile(&from_v1, 50.0),
            value_at_percentile(&h, 50.0)
        );
    }

    #[test]
    fn a_tagged_log_keeps_its_tags_apart() {
        let log = read_log(&data("tagged-Log.logV2.hlog")).unwrap();
        let count = |tag: Option<&str>| {
            let mut h = Hist::new(3).unwrap();
            h.auto(true);
            let mut n = 0;
            for iv in log.intervals.iter().filter(|iv| iv.tag.as_deref() == tag) {
                n += 1;
                h.add(&iv.hist).unwrap();
            }
            (n, h)
        };
        let (untagged_n, untagged) = count(None);
        let (a_n, a) = count(Some("A"));
        assert_eq!((untagged_n, a_n), (21, 21));
        assert_eq!(untagged.len() + a.len(), 32290);
        assert_eq!(untagged, a);
    }
}

//! The arrival schedule of the open model and the task mix.
//!
//! Arrival `k` (0-based) is due when the profile's cumulative count reaches `u_k`, where `u_k = k`
//! for uniform arrivals and a unit-rate Poisson process for Poisson arrivals ("operational time").
//! Mapping through the inverse of `N(t)` makes 3 rps exactly 333 ms apart and makes a ramp's
//! arrivals follow the ramp with no tick-boundary bursts. A shard `(index, count)` keeps every
//! `count`-th arrival starting at `index`, so shards of one schedule interleave evenly and add up
//! to the whole.

use crate::error::{Error, Result};
use crate::plan::profile::Profile;

/// A small, seedable generator (SplitMix64): reproducible Poisson schedules and random feeder
/// picks without pulling a dependency into the hot path.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    pub fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    Uniform,
    Poisson { seed: u64 },
}

/// One due request of the open model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Index in the global schedule (not in the shard).
    pub index: u64,
    /// Seconds after the run's start.
    pub due: f64,
}

/// Walks the schedule forward; one per run, shared by the workers of that run.
#[derive(Debug)]
pub struct Schedule {
    profile: Profile,
    kind: Arrivals,
    rng: Rng,
    shard_index: u64,
    shard_count: u64,
    next_index: u64,
    u: f64,
    cursor: usize,
    /// Set by `finish_before`: nothing more is taken.
    finished: bool,
    /// Arrivals due before this many seconds are not this schedule's (a slice taken over
    /// part-way through a run).
    from: f64,
    /// Arrivals of lower index are not this schedule's (a takeover that starts from the
    /// first arrival the lost slice was not known to have sent).
    from_index: u64,
}

impl Schedule {
    pub fn new(profile: Profile, kind: Arrivals, shard: (u64, u64)) -> Result<Self> {
        let (shard_index, shard_count) = shard;
        if shard_count == 0 || shard_index >= shard_count {
            return Err(Error::plan(
                "shard",
                format!("index must be < count, got {shard_index}/{shard_count}"),
            ));
        }
        let seed = match kind {
            Arrivals::Poisson { seed } => seed,
            Arrivals::Uniform => 0,
        };
        Ok(Schedule {
            profile,
            kind,
            rng: Rng::new(seed),
            shard_index,
            shard_count,
            next_index: 0,
            u: 0.0,
            cursor: 0,
            finished: false,
            from: 0.0,
            from_index: 0,
        })
    }

    /// The schedule from `from` seconds and arrival `from_index` on: earlier arrivals are
    /// neither taken nor counted.
    pub fn starting_at(mut self, from: f64, from_index: u64) -> Self {
        self.from = from;
        self.from_index = from_index;
        self
    }

    /// Whether arrival `a` is this schedule's own.
    fn owns(&self, a: &Arrival) -> bool {
        a.index % self.shard_count == self.shard_index
            && a.due >= self.from
            && a.index >= self.from_index
    }

    fn advance(&mut self) -> Option<Arrival> {
        if self.finished {
            return None;
        }
        let index = self.next_index;
        self.next_index += 1;
        match self.kind {
            Arrivals::Uniform => self.u = index as f64,
            Arrivals::Poisson { .. } => self.u += -self.rng.next_f64().ln(),
        }
        let due = self.profile.inverse_from(self.u, &mut self.cursor)?;
        Some(Arrival { index, due })
    }
}

/// Remaining arrivals past this count are counted in closed form instead of one by one.
const COUNT_ONE_BY_ONE: f64 = 1e6;

impl Schedule {
    /// Ends the schedule: takes every arrival not yet taken that is due before `t` seconds,
    /// without yielding it, and returns how many of this shard's fall on each task. These are
    /// the arrivals that were due and never sent. A generator far behind (a rate it cannot
    /// reach) may leave billions: those are counted in closed form (for Poisson arrivals, the
    /// expected number).
    pub fn finish_before(&mut self, t: f64, mix: &Mix, n_tasks: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n_tasks];
        let target = self.profile.cumulative(t);
        let left = target - self.u;
        if left > COUNT_ONE_BY_ONE {
            let end = match self.kind {
                Arrivals::Uniform => target.ceil(),
                Arrivals::Poisson { .. } => self.next_index as f64 + left.ceil(),
            };
            let end = end.min(u64::MAX as f64) as u64;
            // Arrivals before `from` are not this schedule's.
            let first = self
                .next_index
                .max(
                    self.profile
                        .cumulative(self.from)
                        .ceil()
                        .min(u64::MAX as f64) as u64,
                )
                .max(self.from_index);
            mix.count_shard(first, end, self.shard_index, self.shard_count, &mut counts);
            self.next_index = end.max(self.next_index);
        } else {
            while let Some(a) = self.advance() {
                if a.due >= t {
                    break;
                }
                if self.owns(&a) {
                    counts[mix.pick(a.index)] += 1;
                }
            }
        }
        self.finished = true;
        counts
    }
}

impl Iterator for Schedule {
    type Item = Arrival;
    fn next(&mut self) -> Option<Arrival> {
        loop {
            let a = self.advance()?;
            if self.owns(&a) {
                return Some(a);
            }
        }
    }
}

/// Smooth weighted round robin (as nginx balances upstreams): the sequence is periodic with
/// period `sum(weights)`, each task appears exactly `weight` times per period, and the picks are
/// spread evenly inside it. So a 5:1 mix is 5:1 in every window, not only on average.
#[derive(Debug, Clone)]
pub struct Mix {
    sequence: Vec<u32>,
}

/// Longest period accepted: the sequence is precomputed once per run.
const MAX_PERIOD: u64 = 1 << 20;

impl Mix {
    pub fn new(weights: &[u32]) -> Result<Self> {
        if weights.is_empty() {
            return Err(Error::plan("tasks", "a plan needs at least one task"));
        }
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                return Err(Error::plan(format!("tasks[{i}].weight"), "must be >= 1"));
            }
        }
        if total > MAX_PERIOD {
            return Err(Error::plan(
                "tasks[].weight",
                format!("weights add up to {total}; keep their sum under {MAX_PERIOD}"),
            ));
        }
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            sequence.push(best as u32);
        }
        Ok(Mix { sequence })
    }

    /// The task of the `k`-th iteration in the global order.
    pub fn pick(&self, k: u64) -> usize {
        self.sequence[(k % self.sequence.len() as u64) as usize] as usize
    }

    /// Adds to `counts[task]` how many global indices `k` in `[from, to)` with
    /// `k % count == index` fall on each task, in time proportional to the mix's period.
    pub fn count_shard(&self, from: u64, to: u64, index: u64, count: u64, counts: &mut [u64]) {
        if to <= from {
            return;
        }
        // The first index of the shard at or after `from`, then every `count`-th.
        let first = from + (index + count - from % count) % count;
        if first >= to {
            return;
        }
        let n = (to - 1 - first) / count + 1;
        let p = self.sequence.len() as u64;
        // Along the shard, k mod p repeats every p / gcd(p, count) steps.
        let cycle = p / gcd(p, count % p);
        let mut per_cycle = vec![0u64; counts.len()];
        for j in 0..cycle.min(n) {
            per_cycle[self.pick(first + j * count)] += 1;
        }
        let full = n / cycle;
        if full > 0 {
            for (c, k) in counts.iter_mut().zip(&per_cycle) {
                *c += full * k;
            }
        }
        for j in full * cycle..n {
            counts[self.pick(first + j * count)] += 1;
        }
    }

    /// The share of iterations that go to `task`.
    pub fn share(&self, task: usize) -> f64 {
        let n = self
            .sequence
            .iter()
            .filter(|&&t| t as usize == task)
            .count();
        n as f64 / self.sequence.len() as f64
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;

    #[test]
    fn counting_a_shard_in_closed_form_matches_counting_one_by_one() {
        let mix = Mix::new(&[5, 2, 1]).unwrap();
        for (from, to, index, count) in [
            (0, 1000, 0, 1),
            (7, 5003, 2, 3),
            (11, 12, 0, 4),
            (5, 9000, 3, 8),
        ] {
            let mut fast = vec![0; 3];
            mix.count_shard(from, to, index, count, &mut fast);
            let mut slow = vec![0; 3];
            for k in (from..to).filter(|k| k % count == index) {
                slow[mix.pick(k)] += 1;
            }
            assert_eq!(fast, slow, "{from}..{to} shard {index}/{count}");
        }
    }

    #[test]
    fn finishing_a_schedule_counts_what_was_due_and_not_taken() {
        let mix = Mix::new(&[5, 1]).unwrap();
        // 600 due in [0, 1): 10 taken, the other 590 left.
        let mut s = Schedule::new(constant(600.0, 2.0), Arrivals::Uniform, (0, 1)).unwrap();
        for _ in 0..10 {
            s.next().unwrap();
        }
        let left = s.finish_before(1.0, &mix, 2);
        assert_eq!(left.iter().sum::<u64>(), 590);
        assert_eq!(s.next(), None, "a finished schedule yields nothing more");
        // A rate no generator reaches: counted in closed form, exactly for uniform arrivals.
        let mut s = Schedule::new(constant(1e12, 3.0), Arrivals::Uniform, (1, 2)).unwrap();
        s.next().unwrap();
        let left = s.finish_before(3.0, &mix, 2);
        assert_eq!(left.iter().sum::<u64>(), 1_500_000_000_000 - 1);
    }

    fn constant(rate: f64, d: f64) -> Profile {
        Profile::new(&[Stage::Constant {
            rate,
            duration_s: d,
        }])
        .unwrap()
    }

    #[test]
    fn a_slice_taken_over_from_an_arrival_keeps_that_arrival_and_the_rest_of_its_own() {
        let whole: Vec<u64> = Schedule::new(constant(30.0, 2.0), Arrivals::Uniform, (1, 3))
            .unwrap()
            .map(|a| a.index)
            .collect();
        let rest = |from_s: f64, from_index: u64| {
            Schedule::new(constant(30.0, 2.0), Arrivals::Uniform, (1, 3))
                .unwrap()
                .starting_at(from_s, from_index)
                .map(|a| a.index)
                .collect::<Vec<u64>>()
        };
        assert_eq!(rest(0.0, 0), whole);
        assert_eq!(rest(0.0, 10), whole[3..]); // 10 is the slice's own fourth
        assert_eq!(rest(0.0, 11), whole[4..]);
        // Whichever of the two bounds lies later holds.
        assert_eq!(rest(1.0, 10), rest(0.0, 30));
        // Counting the arrivals left agrees with taking them.
        let mix = Mix::new(&[1]).unwrap();
        let mut s = Schedule::new(constant(30.0, 2.0), Arrivals::Uniform, (1, 3))
            .unwrap()
            .starting_at(0.0, 11);
        assert_eq!(s.finish_before(1.0, &mix, 1), vec![6]); // 13, 16, ..., 28
        let mut s = Schedule::new(constant(3e7, 1.0), Arrivals::Uniform, (1, 3))
            .unwrap()
            .starting_at(0.0, 30_000_000 - 29);
        assert_eq!(s.finish_before(1.0, &mix, 1), vec![10], "in closed form");
    }

    #[test]
    fn three_rps_is_evenly_spaced_without_bursts() {
        let s = Schedule::new(constant(3.0, 20.0), Arrivals::Uniform, (0, 1)).unwrap();
        let due: Vec<f64> = s.map(|a| a.due).collect();
        assert_eq!(due.len(), 60);
        for w in due.windows(2) {
            assert!((w[1] - w[0] - 1.0 / 3.0).abs() < 1e-9);
        }
    }

    #[test]
    fn ramp_arrivals_follow_the_rate_per_second() {
        let p = Profile::new(&[Stage::Ramp {
            from: 0.0,
            to: 1000.0,
            duration_s: 10.0,
        }])
        .unwrap();
        let s = Schedule::new(p, Arrivals::Uniform, (0, 1)).unwrap();
        let mut per_second = [0u32; 10];
        for a in s {
            per_second[a.due as usize] += 1;
        }
        assert_eq!(per_second.iter().sum::<u32>(), 5000);
        for (i, &n) in per_second.iter().enumerate() {
            let expected = 100.0 * i as f64 + 50.0; // mean rate over second i
            assert!(
                (n as f64 - expected).abs() <= 1.0,
                "second {i}: {n} vs {expected}"
            );
        }
    }

    #[test]
    fn shards_partition_the_schedule_and_interleave() {
        let whole: Vec<Arrival> = Schedule::new(constant(100.0, 3.0), Arrivals::Uniform, (0, 1))
            .unwrap()
            .collect();
        let mut merged: Vec<Arrival> = (0..3)
            .flat_map(|i| Schedule::new(constant(100.0, 3.0), Arrivals::Uniform, (i, 3)).unwrap())
            .collect();
        merged.sort_by_key(|a| a.index);
        assert_eq!(merged, whole);
    }

    #[test]
    fn poisson_is_seeded_and_has_the_right_mean() {
        let run = |seed| -> Vec<f64> {
            Schedule::new(constant(1000.0, 20.0), Arrivals::Poisson { seed }, (0, 1))
                .unwrap()
                .map(|a| a.due)
                .collect()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // 20,000 expected, standard deviation ~141.
        assert!((a.len() as f64 - 20_000.0).abs() < 600.0, "{}", a.len());
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let cv = {
            let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let v = gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64;
            v.sqrt() / m
        };
        assert!(
            (cv - 1.0).abs() < 0.05,
            "exponential gaps have cv 1, got {cv}"
        );
    }

    #[test]
    fn mix_is_exact_in_every_window_of_one_period() {
        let mix = Mix::new(&[5, 1]).unwrap();
        for start in 0..12u64 {
            let ones = (start..start + 6).filter(|&k| mix.pick(k) == 1).count();
            assert_eq!(ones, 1, "window starting at {start}");
        }
        assert!((mix.share(0) - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn mix_is_within_one_of_exact_in_any_window() {
        let weights = [7, 3, 2];
        let mix = Mix::new(&weights).unwrap();
        for len in [1u64, 5, 11, 12, 50, 333] {
            for start in 0..24u64 {
                for (t, &w) in weights.iter().enumerate() {
                    let n = (start..start + len).filter(|&k| mix.pick(k) == t).count() as f64;
                    let exact = len as f64 * w as f64 / 12.0;
                    assert!((n - exact).abs() < 2.0, "task {t} len {len} start {start}");
                }
            }
        }
    }

    #[test]
    fn zero_weight_is_rejected_with_its_place() {
        let err = Mix::new(&[3, 0]).unwrap_err();
        assert!(err.to_string().contains("tasks[1].weight"));
    }
}

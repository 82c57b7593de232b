//! Load profiles: a rate (or a user count) as a piecewise-linear curve of time.
//!
//! Every stage kind — constant, ramp, step, spike — is expanded into linear segments, so the
//! scheduler knows a single shape. The cumulative count `N(t)` (the integral of the rate) is
//! quadratic within a segment and can be inverted in closed form, which is what makes arrivals
//! land at exact instants instead of in bursts at tick boundaries.

use crate::error::{Error, Result};
use crate::plan::Stage;

/// The most arrivals a profile may ask for in all: counts stay exact in a float.
const MAX_TOTAL: f64 = 9.0e15;

/// A linear piece of the curve: `rate(t0 + τ) = from + (to - from) τ / duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub t0: f64,
    pub duration: f64,
    pub from: f64,
    pub to: f64,
    /// Cumulative count at `t0`.
    pub n0: f64,
}

impl Segment {
    fn slope(&self) -> f64 {
        (self.to - self.from) / self.duration
    }
    fn count(&self) -> f64 {
        0.5 * (self.from + self.to) * self.duration
    }
    fn integral_to(&self, tau: f64) -> f64 {
        self.from * tau + 0.5 * self.slope() * tau * tau
    }
    fn rate_at(&self, tau: f64) -> f64 {
        self.from + self.slope() * tau
    }
    /// τ at which the integral from `t0` reaches `m`. `2m / (a + sqrt(a² + 2km))` is the
    /// root of `kτ²/2 + aτ − m = 0` written so that it stays exact when the slope `k` is
    /// zero and does not cancel catastrophically when `a` dominates.
    fn inverse(&self, m: f64) -> f64 {
        if m <= 0.0 {
            return 0.0;
        }
        let a = self.from;
        let k = self.slope();
        let disc = (a * a + 2.0 * k * m).max(0.0);
        let denom = a + disc.sqrt();
        if denom <= 0.0 {
            return self.duration;
        }
        (2.0 * m / denom).min(self.duration)
    }
}

/// A profile: stages laid end to end.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    segments: Vec<Segment>,
    duration: f64,
    total: f64,
}

fn check_value(v: f64, what: &str, at: usize) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::plan(
            format!("stages[{at}].{what}"),
            format!("must be a finite number >= 0, got {v}"),
        ));
    }
    Ok(())
}

/// Every stage as linear pieces `(from, to, duration)`, checked: a step's plateaus, a
/// spike's base, peak and base again.
fn pieces(stages: &[Stage]) -> Result<Vec<(f64, f64, f64)>> {
    let mut pieces: Vec<(f64, f64, f64)> = Vec::new();
    for (i, st) in stages.iter().enumerate() {
        let d = match st {
            Stage::Constant { duration_s, .. }
            | Stage::Ramp { duration_s, .. }
            | Stage::Step { duration_s, .. }
            | Stage::Spike { duration_s, .. } => *duration_s,
        };
        crate::plan::seconds(&format!("stages[{i}].duration_s"), d, false)?;
        match *st {
            Stage::Constant { rate, duration_s } => {
                check_value(rate, "rate", i)?;
                pieces.push((rate, rate, duration_s));
            }
            Stage::Ramp {
                from,
                to,
                duration_s,
            } => {
                check_value(from, "from", i)?;
                check_value(to, "to", i)?;
                pieces.push((from, to, duration_s));
            }
            Stage::Step {
                from,
                to,
                steps,
                duration_s,
            } => {
                check_value(from, "from", i)?;
                check_value(to, "to", i)?;
                if steps == 0 {
                    return Err(Error::plan(format!("stages[{i}].steps"), "must be >= 1"));
                }
                let each = duration_s / steps as f64;
                for s in 0..steps {
                    let r = if steps == 1 {
                        to
                    } else {
                        from + (to - from) * s as f64 / (steps - 1) as f64
                    };
                    pieces.push((r, r, each));
                }
            }
            Stage::Spike {
                base,
                peak,
                peak_s,
                duration_s,
            } => {
                check_value(base, "base", i)?;
                check_value(peak, "peak", i)?;
                if !(peak_s > 0.0 && peak_s < duration_s) {
                    return Err(Error::plan(
                        format!("stages[{i}].peak_s"),
                        format!("must be > 0 and < duration_s ({duration_s}), got {peak_s}"),
                    ));
                }
                let side = (duration_s - peak_s) / 2.0;
                pieces.push((base, base, side));
                pieces.push((peak, peak, peak_s));
                pieces.push((base, base, side));
            }
        }
    }
    Ok(pieces)
}

impl Profile {
    pub fn new(stages: &[Stage]) -> Result<Self> {
        if stages.is_empty() {
            return Err(Error::plan("stages", "a profile needs at least one stage"));
        }
        let pieces = pieces(stages)?;
        let whole: f64 = pieces.iter().map(|p| p.2).sum();
        if whole > crate::plan::MAX_SECONDS {
            return Err(Error::plan(
                "stages",
                format!(
                    "the stages last {whole} seconds; at most {} (a year)",
                    crate::plan::MAX_SECONDS
                ),
            ));
        }
        let mut segments = Vec::with_capacity(pieces.len());
        let (mut t, mut n) = (0.0, 0.0);
        for (from, to, duration) in pieces {
            let seg = Segment {
                t0: t,
                duration,
                from,
                to,
                n0: n,
            };
            t += duration;
            n += seg.count();
            segments.push(seg);
        }
        if n > MAX_TOTAL {
            return Err(Error::plan(
                "stages",
                format!("the profile asks for {n:e} arrivals in all; at most {MAX_TOTAL:e}"),
            ));
        }
        Ok(Profile {
            segments,
            duration: t,
            total: n,
        })
    }

    pub fn duration(&self) -> f64 {
        self.duration
    }

    /// Expected count over the whole profile (the integral of the rate).
    pub fn total(&self) -> f64 {
        self.total
    }

    /// The curve's corners `(seconds, value)`, two per linear piece: what a chart of the
    /// profile draws, and what callers use instead of expanding stages a second time.
    pub fn points(&self) -> Vec<(f64, f64)> {
        self.segments
            .iter()
            .flat_map(|s| [(s.t0, s.from), (s.t0 + s.duration, s.to)])
            .collect()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The highest value anywhere in the profile (a closed model's most users).
    pub fn peak(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.from.max(s.to))
            .fold(0.0, f64::max)
    }

    fn segment_at(&self, t: f64) -> Option<&Segment> {
        if t < 0.0 || t >= self.duration {
            return None;
        }
        let i = self.segments.partition_point(|s| s.t0 + s.duration <= t);
        self.segments.get(i)
    }

    /// The instantaneous value at `t` (0 outside the profile).
    pub fn rate_at(&self, t: f64) -> f64 {
        self.segment_at(t).map_or(0.0, |s| s.rate_at(t - s.t0))
    }

    /// `N(t)`: the integral of the rate from 0 to `t`.
    pub fn cumulative(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        if t >= self.duration {
            return self.total;
        }
        let s = self.segment_at(t).expect("t is inside the profile");
        s.n0 + s.integral_to(t - s.t0)
    }

    /// The first time at or after `t` when the value is above `level`, if any: when a closed
    /// model's virtual user number `level` should be running.
    pub fn next_time_above(&self, level: f64, t: f64) -> Option<f64> {
        for s in &self.segments {
            let end = s.t0 + s.duration;
            if end <= t {
                continue;
            }
            let from_tau = (t - s.t0).max(0.0);
            if s.rate_at(from_tau) > level {
                return Some(s.t0 + from_tau);
            }
            if s.to > level {
                // Rising through `level` inside this segment.
                let tau = (level - s.from) / s.slope();
                let cross = s.t0 + tau;
                // Just past the crossing, so that the value there is strictly above `level`.
                return Some(cross + 1e-9_f64.max(cross * 1e-12));
            }
        }
        None
    }

    /// The time at which `N(t)` reaches `n`, starting the search at segment `*cursor`
    /// (callers walking forward keep the cursor, which makes a whole schedule O(arrivals)).
    /// `None` when `n` is at or past the profile's total.
    pub fn inverse_from(&self, n: f64, cursor: &mut usize) -> Option<f64> {
        if n >= self.total {
            return None;
        }
        while *cursor < self.segments.len() {
            let s = &self.segments[*cursor];
            if n < s.n0 + s.count() {
                return Some(s.t0 + s.inverse(n - s.n0));
            }
            *cursor += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(rate: f64, d: f64) -> Stage {
        Stage::Constant {
            rate,
            duration_s: d,
        }
    }

    #[test]
    fn a_single_step_holds_its_target_value() {
        let p = Profile::new(&[Stage::Step {
            from: 0.0,
            to: 100.0,
            steps: 1,
            duration_s: 10.0,
        }])
        .unwrap();
        assert_eq!(p.total(), 1000.0);
        assert_eq!(p.points(), vec![(0.0, 100.0), (10.0, 100.0)]);
    }

    #[test]
    fn constant_profile_integrates_to_rate_times_duration() {
        let p = Profile::new(&[constant(3.0, 20.0)]).unwrap();
        assert_eq!(p.total(), 60.0);
        assert!((p.cumulative(10.0) - 30.0).abs() < 1e-9);
    }

    #[test]
    fn ramp_integrates_to_triangle_area() {
        let p = Profile::new(&[Stage::Ramp {
            from: 0.0,
            to: 1000.0,
            duration_s: 10.0,
        }])
        .unwrap();
        assert_eq!(p.total(), 5000.0);
        assert!((p.cumulative(5.0) - 1250.0).abs() < 1e-9);
        assert!((p.rate_at(2.5) - 250.0).abs() < 1e-9);
    }

    #[test]
    fn inverse_undoes_cumulative_on_every_segment_kind() {
        let p = Profile::new(&[
            Stage::Ramp {
                from: 0.0,
                to: 100.0,
                duration_s: 3.0,
            },
            constant(100.0, 2.0),
            Stage::Ramp {
                from: 100.0,
                to: 10.0,
                duration_s: 4.0,
            },
            Stage::Step {
                from: 10.0,
                to: 40.0,
                steps: 4,
                duration_s: 8.0,
            },
        ])
        .unwrap();
        let mut cursor = 0;
        let mut last = 0.0;
        for k in 0..(p.total() as usize) {
            let t = p.inverse_from(k as f64, &mut cursor).unwrap();
            assert!(t >= last, "times go forward");
            assert!(
                (p.cumulative(t) - k as f64).abs() < 1e-6,
                "N(t_k) = k at k={k}"
            );
            last = t;
        }
        assert!(p.inverse_from(p.total(), &mut cursor).is_none());
    }

    #[test]
    fn step_makes_equal_plateaus_from_first_to_last_value() {
        let p = Profile::new(&[Stage::Step {
            from: 100.0,
            to: 400.0,
            steps: 4,
            duration_s: 40.0,
        }])
        .unwrap();
        let rates: Vec<f64> = [5.0, 15.0, 25.0, 35.0]
            .iter()
            .map(|&t| p.rate_at(t))
            .collect();
        assert_eq!(rates, vec![100.0, 200.0, 300.0, 400.0]);
    }

    #[test]
    fn spike_is_centred_in_its_stage() {
        let p = Profile::new(&[Stage::Spike {
            base: 10.0,
            peak: 100.0,
            peak_s: 2.0,
            duration_s: 10.0,
        }])
        .unwrap();
        assert_eq!(p.rate_at(3.9), 10.0);
        assert_eq!(p.rate_at(4.5), 100.0);
        assert_eq!(p.rate_at(6.1), 10.0);
        assert_eq!(p.total(), 8.0 * 10.0 + 2.0 * 100.0);
    }

    #[test]
    fn next_time_above_finds_when_a_user_starts() {
        let p = Profile::new(&[
            Stage::Ramp {
                from: 0.0,
                to: 10.0,
                duration_s: 10.0,
            },
            constant(10.0, 5.0),
        ])
        .unwrap();
        let t = p.next_time_above(3.0, 0.0).unwrap();
        assert!((t - 3.0).abs() < 1e-6, "{t}");
        assert_eq!(p.next_time_above(3.0, 12.0), Some(12.0));
        assert_eq!(p.next_time_above(10.0, 0.0), None);
    }

    #[test]
    fn peak_is_the_highest_value_of_any_stage() {
        let p = Profile::new(&[
            Stage::Ramp {
                from: 0.0,
                to: 40.0,
                duration_s: 2.0,
            },
            Stage::Spike {
                base: 10.0,
                peak: 90.0,
                peak_s: 1.0,
                duration_s: 3.0,
            },
        ])
        .unwrap();
        assert_eq!(p.peak(), 90.0);
    }

    #[test]
    fn bad_stages_name_the_field() {
        let err = Profile::new(&[constant(5.0, 1.0), constant(-1.0, 2.0)]).unwrap_err();
        assert!(err.to_string().contains("stages[1].rate"), "{err}");
        let err = Profile::new(&[constant(5.0, 0.0)]).unwrap_err();
        assert!(err.to_string().contains("stages[0].duration_s"), "{err}");
    }
}

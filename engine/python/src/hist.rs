//! `Histogram`: an HdrHistogram of latencies, for analysis in Python. Values are kept in the
//! unit they were recorded in (LoadPilot's own: microseconds; a foreign log's: what its writer
//! used) and every figure is returned in milliseconds. Percentiles and the percentile rows
//! follow Java HdrHistogram's rules.

use loadpilot_core::measure::hlog;
use loadpilot_core::measure::hlog::encode as encode_hist;
use loadpilot_core::measure::metrics::{decode_hist, new_hist, Hist};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Units a histogram's values may be in, with how many make a millisecond.
pub(crate) fn per_ms(unit: &str) -> PyResult<f64> {
    match unit {
        "ns" => Ok(1e6),
        "us" => Ok(1e3),
        "ms" => Ok(1.0),
        other => Err(PyValueError::new_err(format!(
            "unit is 'ns', 'us' or 'ms', not {other:?}"
        ))),
    }
}

fn unit_name(per_ms: f64) -> &'static str {
    if per_ms == 1e6 {
        "ns"
    } else if per_ms == 1.0 {
        "ms"
    } else {
        "us"
    }
}

/// An HdrHistogram of latencies; figures are returned in milliseconds.
#[pyclass(module = "loadpilot._engine", name = "Histogram")]
#[derive(Clone)]
pub(crate) struct PyHistogram {
    pub(crate) h: Hist,
    /// Recorded values per millisecond (1000: microseconds).
    pub(crate) per_ms: f64,
}

impl PyHistogram {
    /// One of LoadPilot's own (microseconds).
    pub(crate) fn ours(h: Hist) -> Self {
        PyHistogram { h, per_ms: 1e3 }
    }

    fn ms(&self, v: u64) -> f64 {
        v as f64 / self.per_ms
    }

    fn recorded(&self, ms: f64) -> PyResult<u64> {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "latency must be >= 0 ms, got {ms}"
            )));
        }
        Ok(((ms * self.per_ms).round() as u64).max(1))
    }
}

#[pymethods]
impl PyHistogram {
    /// An empty histogram of values in `unit` (`ns`, `us` or `ms`), 3 significant digits,
    /// growing to whatever is recorded or added into it.
    #[new]
    #[pyo3(signature = (unit="us"))]
    fn new(unit: &str) -> PyResult<Self> {
        let mut h = new_hist();
        h.auto(true);
        Ok(PyHistogram {
            h,
            per_ms: per_ms(unit)?,
        })
    }

    /// Reads the base64 V2 (compressed) encoding used in LoadPilot's `.hlog` files.
    #[staticmethod]
    fn decode(text: &str) -> PyResult<Self> {
        decode_hist(text)
            .map(PyHistogram::ours)
            .map_err(PyValueError::new_err)
    }

    fn encode(&self) -> String {
        encode_hist(&self.h)
    }

    /// The unit its values were recorded in.
    #[getter]
    fn unit(&self) -> &'static str {
        unit_name(self.per_ms)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.h.len()
    }

    /// The latency (ms) at percentile `p` (0..100), by Java HdrHistogram's rule (the value of
    /// the `.hgrm` row at that percentile).
    fn percentile(&self, p: f64) -> PyResult<Option<f64>> {
        if !(0.0..=100.0).contains(&p) {
            return Err(PyValueError::new_err(format!(
                "percentile must be in 0..100, got {p}"
            )));
        }
        Ok((!self.h.is_empty()).then(|| self.ms(hlog::value_at_percentile(&self.h, p))))
    }

    #[getter]
    fn max(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.ms(self.h.max()))
    }

    #[getter]
    fn min(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.ms(self.h.min()))
    }

    #[getter]
    fn mean(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.mean() / self.per_ms)
    }

    /// Records a latency given in milliseconds.
    fn record(&mut self, ms: f64) -> PyResult<()> {
        let v = self.recorded(ms)?;
        self.h.saturating_record(v);
        Ok(())
    }

    /// Records many latencies given in milliseconds (one call for a whole column).
    fn record_many(&mut self, values: Vec<f64>) -> PyResult<()> {
        let recorded = values
            .iter()
            .map(|ms| self.recorded(*ms))
            .collect::<PyResult<Vec<u64>>>()?;
        for v in recorded {
            self.h.saturating_record(v);
        }
        Ok(())
    }

    /// The recorded buckets as `(values_ms, counts)`, each value the highest latency its
    /// bucket stands for (what `percentile` answers), in increasing order.
    fn buckets(&self) -> (Vec<f64>, Vec<u64>) {
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for v in self.h.iter_recorded() {
            values.push(self.ms(self.h.highest_equivalent(v.value_iterated_to())));
            counts.push(v.count_at_value());
        }
        (values, counts)
    }

    /// The percentile distribution as Java HdrHistogram prints it (`.hgrm`): rows of
    /// `(value_ms, quantile, total_count)`, `ticks` steps per halving of the distance to 100%.
    #[pyo3(signature = (ticks=5))]
    fn quantiles(&self, ticks: u32) -> PyResult<Vec<(f64, f64, u64)>> {
        if ticks == 0 {
            return Err(PyValueError::new_err("ticks must be at least 1"));
        }
        Ok(hlog::percentile_rows(&self.h, ticks)
            .into_iter()
            .map(|r| (self.ms(r.value), r.level / 100.0, r.total))
            .collect())
    }

    /// The layout's `(buckets, sub_buckets)`, as `.hgrm`'s last line gives them.
    #[getter]
    fn layout(&self) -> (u64, u64) {
        let digits = i32::from(self.h.sigfig());
        let sub_buckets = 2u64.pow((2.0 * 10f64.powi(digits)).log2().ceil() as u32);
        (u64::from(self.h.buckets()), sub_buckets)
    }

    /// The standard deviation of the recorded latencies, in milliseconds.
    #[getter]
    fn stdev(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.stdev() / self.per_ms)
    }

    /// Adds another histogram's counts into this one (both in the same unit).
    fn add(&mut self, other: &PyHistogram) -> PyResult<()> {
        if other.per_ms != self.per_ms {
            return Err(PyValueError::new_err(format!(
                "cannot add a histogram in {} to one in {}",
                other.unit(),
                self.unit()
            )));
        }
        self.h.auto(true);
        self.h
            .add(&other.h)
            .map_err(|e| PyValueError::new_err(format!("{e:?}")))
    }

    fn __add__(&self, other: &PyHistogram) -> PyResult<PyHistogram> {
        let mut out = self.clone();
        out.add(other)?;
        Ok(out)
    }

    fn __eq__(&self, other: &PyHistogram) -> bool {
        self.per_ms == other.per_ms && self.h == other.h
    }

    fn __repr__(&self) -> String {
        match self.percentile(99.0).ok().flatten() {
            Some(p99) => format!("Histogram(count={}, p99={p99:.3} ms)", self.h.len()),
            None => "Histogram(count=0)".into(),
        }
    }
}

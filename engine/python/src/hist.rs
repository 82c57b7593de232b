//! `Histogram`: an HdrHistogram of latencies, for analysis in Python.

use loadpilot_core::metrics::{decode_hist, encode_hist, new_hist, Hist};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// An HdrHistogram of latencies recorded in microseconds; figures are returned in milliseconds.
#[pyclass(module = "loadpilot._engine", name = "Histogram")]
#[derive(Clone)]
pub(crate) struct PyHistogram {
    pub(crate) h: Hist,
}

#[pymethods]
impl PyHistogram {
    #[new]
    fn new() -> Self {
        PyHistogram { h: new_hist() }
    }

    /// Reads the base64 V2 (compressed) encoding used in `.hlog` files.
    #[staticmethod]
    fn decode(text: &str) -> PyResult<Self> {
        decode_hist(text)
            .map(|h| PyHistogram { h })
            .map_err(PyValueError::new_err)
    }

    fn encode(&self) -> String {
        encode_hist(&self.h)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.h.len()
    }

    /// The latency (ms) at percentile `p` (0..100).
    fn percentile(&self, p: f64) -> PyResult<Option<f64>> {
        if !(0.0..=100.0).contains(&p) {
            return Err(PyValueError::new_err(format!(
                "percentile must be in 0..100, got {p}"
            )));
        }
        Ok((!self.h.is_empty()).then(|| self.h.value_at_percentile(p) as f64 / 1000.0))
    }

    #[getter]
    fn max(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.max() as f64 / 1000.0)
    }

    #[getter]
    fn min(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.min() as f64 / 1000.0)
    }

    #[getter]
    fn mean(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.mean() / 1000.0)
    }

    /// Records a latency given in milliseconds.
    fn record(&mut self, ms: f64) -> PyResult<()> {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "latency must be >= 0 ms, got {ms}"
            )));
        }
        let us = ((ms * 1000.0).round() as u64).clamp(1, loadpilot_core::metrics::HIGHEST_US);
        self.h.saturating_record(us);
        Ok(())
    }

    /// Records many latencies given in milliseconds (one call for a whole column).
    fn record_many(&mut self, values: Vec<f64>) -> PyResult<()> {
        if let Some(bad) = values.iter().find(|ms| !(ms.is_finite() && **ms >= 0.0)) {
            return Err(PyValueError::new_err(format!(
                "latency must be >= 0 ms, got {bad}"
            )));
        }
        for ms in values {
            let us = ((ms * 1000.0).round() as u64).clamp(1, loadpilot_core::metrics::HIGHEST_US);
            self.h.saturating_record(us);
        }
        Ok(())
    }

    /// The recorded buckets as `(values_ms, counts)`, each value the highest latency its
    /// bucket stands for (what `percentile` answers), in increasing order.
    fn buckets(&self) -> (Vec<f64>, Vec<u64>) {
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for v in self.h.iter_recorded() {
            values.push(v.value_iterated_to() as f64 / 1000.0);
            counts.push(v.count_at_value());
        }
        (values, counts)
    }

    /// The percentile distribution as HdrHistogram prints it (`.hgrm`): rows of
    /// `(value_ms, quantile, total_count)`, `ticks` steps per halving of the distance to 100%.
    #[pyo3(signature = (ticks=5))]
    fn quantiles(&self, ticks: u32) -> PyResult<Vec<(f64, f64, u64)>> {
        if ticks == 0 {
            return Err(PyValueError::new_err("ticks must be at least 1"));
        }
        let mut total = 0u64;
        Ok(self
            .h
            .iter_quantiles(ticks)
            .map(|v| {
                total += v.count_since_last_iteration();
                (
                    v.value_iterated_to() as f64 / 1000.0,
                    v.quantile_iterated_to(),
                    total,
                )
            })
            .collect())
    }

    /// The standard deviation of the recorded latencies, in milliseconds.
    #[getter]
    fn stdev(&self) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.stdev() / 1000.0)
    }

    /// Adds another histogram's counts into this one.
    fn add(&mut self, other: &PyHistogram) -> PyResult<()> {
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
        self.h == other.h
    }

    fn __repr__(&self) -> String {
        match self.percentile(99.0).ok().flatten() {
            Some(p99) => format!("Histogram(count={}, p99={p99:.3} ms)", self.h.len()),
            None => "Histogram(count=0)".into(),
        }
    }
}

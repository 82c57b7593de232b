//! The built-in target server.

use loadpilot_core::testbed::{self, TargetConfig, TargetServer};
use pyo3::prelude::*;

use crate::{runtime, CoreError, PlanError};

/// The built-in target server, running on the engine's runtime in this process.
#[pyclass(module = "loadpilot._engine", name = "TargetServer")]
pub(crate) struct PyTarget {
    server: TargetServer,
}

#[pymethods]
impl PyTarget {
    #[getter]
    fn url(&self) -> String {
        self.server.url()
    }
    #[getter]
    fn port(&self) -> u16 {
        self.server.addr.port()
    }
    /// Requests received so far.
    #[getter]
    fn served(&self) -> u64 {
        self.server.served()
    }
    /// Of them, over HTTP/2.
    #[getter]
    fn served_h2(&self) -> u64 {
        self.server.served_h2()
    }
    /// Connections accepted so far.
    #[getter]
    fn connections(&self) -> u64 {
        self.server.connections()
    }
    /// Requests received so far per path (the first 10,000 paths).
    fn served_by_path(&self) -> std::collections::HashMap<String, u64> {
        self.server.served_by_path()
    }
    /// The `traceparent` headers received so far, as `(path and query, traceparent)`.
    fn traces(&self) -> Vec<(String, String)> {
        self.server.traces()
    }
    fn stop(&self) {
        self.server.stop();
    }
}

#[pyfunction]
pub(crate) fn start_target(config_json: &str) -> PyResult<PyTarget> {
    let cfg: TargetConfig = serde_json::from_str(config_json)
        .map_err(|e| PlanError::new_err(format!("invalid target settings: {e}")))?;
    let rt = runtime()?;
    let server = testbed::start(rt.handle(), cfg).map_err(CoreError)?;
    Ok(PyTarget { server })
}

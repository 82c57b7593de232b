//! What was measured: per-thread histograms and counters (`metrics`), the slowest requests
//! and a sample kept with their context (`kept`), the rows of each interval (`rows`), the
//! names they are kept under (`names`), the summary of a run (`summary`), the run directory
//! (`rundir`), HdrHistogram interval logs (`hlog`), and a distributed run's merge of its
//! agents' intervals (`merge`).

pub mod hlog;
pub mod kept;
pub mod merge;
pub mod metrics;
pub mod names;
pub mod rows;
pub mod rundir;
pub mod summary;

//! LoadPilot's engine, in pure Rust (no Python here: `cargo test` runs without it).
//!
//! - `plan`: what to send — the plan, load profiles, the arrival schedule and task mix,
//!   templates, checks.
//! - `http`: how to send it — a virtual user's client, HTTP/1.1 and HTTP/2, TLS.
//! - `runner`: the run — compiling a plan, the clock and its intervals, the worker loops,
//!   recording each exchange, the Python side, the pacer.
//! - `measure`: what was measured — histograms and counters, rows, summaries, the run
//!   directory, interval logs, and a distributed run's merge.
//! - `outcome`: how a request ended (error kinds), what measurement and HTTP share.
//! - `testbed`: the built-in target server.

pub mod error;
pub mod http;
pub mod measure;
pub mod outcome;
pub mod plan;
pub mod runner;
pub mod testbed;

//! Dev-only harness shared by the server's end-to-end tests, tally-bench
//! and tally-chaos: it starts real `tally` processes and talks to them over
//! HTTP only, the way a client would. Not a dependency of the `tally`
//! binary.
//!
//! * [`Options`] and [`NodeSpec`]: typed node settings rendered as each
//!   node's TOML config.
//! * [`TallyProcess`] / [`TallyCluster`]: 1..N nodes started by a
//!   [`Program`] on [`free_addrs`], waited on until `/readyz` answers 200,
//!   killed, terminated, paused and restarted; logs kept per node.
//! * [`Http`]: a pooled keep-alive JSON client for tests, with
//!   [`eventually`] for bounded polling; [`Connection`]: one keep-alive
//!   connection per simulated client, for load and fault runs.
//! * [`SplitMix`]: the one seeded generator.

pub mod config;
pub mod conn;
pub mod http;
pub mod process;
pub mod rng;

pub use config::{NodeSpec, Options};
pub use conn::{ConnError, Connection};
pub use http::{Http, REQUEST_TIMEOUT, RETRY_WINDOW, Reply, eventually, retry_delay};
pub use process::{EXIT_WAIT_MAX, Program, READY_WAIT_MAX, StartError, TallyCluster, TallyProcess, free_addrs};
pub use rng::SplitMix;

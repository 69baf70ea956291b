//! What a run measured, as written to `results.json` and read by the
//! markdown table and the plots.

use serde::{Deserialize, Serialize};

/// A whole run of `tally-bench`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// UTC date and time the run started, RFC 3339.
    pub started: String,
    /// The command line that produced it.
    pub command: String,
    /// The machine it ran on (cores, memory, kernel, CPU model).
    pub machine: String,
    /// One entry per target × workload (× client count or rate).
    pub runs: Vec<RunResult>,
    /// Targets or workloads not run, and why.
    pub skipped: Vec<Skipped>,
    /// The goals as ratios measured in this run.
    pub goals: Vec<Goal>,
}

/// One measured run of one workload against one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// `tally`, `tally-3`, `redis-always`, `redis-everysec`, `postgres`.
    pub target: String,
    /// `flash-sale`, `uniform`, `mixed`, `batch-16`, `batch-256`,
    /// `batch-1024`, `expiry`, `half-load`.
    pub workload: String,
    /// `closed` (N clients, each waits for its answer) or `open` (a fixed
    /// arrival rate; latency counts from each request's scheduled start).
    pub mode: String,
    /// Concurrent clients (connections).
    pub clients: u32,
    /// Requests per second offered, in open mode.
    pub rate: Option<f64>,
    /// Holds per request (1, or the batch size).
    pub batch: u32,
    /// Seconds measured (after warm-up).
    pub seconds: f64,
    /// Requests answered (any answer) per second.
    pub requests_per_s: f64,
    /// Acknowledged holds per second.
    pub holds_per_s: f64,
    /// Refused holds per second (out of stock).
    pub refused_per_s: f64,
    /// Requests with no answer or an error.
    pub errors: u64,
    /// Request latency, microseconds.
    pub latency: Latency,
    /// Open loop: how late requests started after their scheduled time,
    /// microseconds (included in `latency`). Large values mean the load
    /// generator, sharing the machine, was behind too.
    pub start_lag: Option<Latency>,
    /// Latency CDF: (fraction of requests, microseconds), for plots.
    pub cdf: Vec<(f64, u64)>,
    /// Acknowledged holds in each second of the run.
    pub holds_each_second: Vec<u64>,
    /// Expiry lag, microseconds (the `expiry` workload only): from a
    /// hold's `expires_at` to the expiry reaching a live subscriber.
    pub expiry_lag: Option<Latency>,
    /// What reading back the final state found.
    pub check: Check,
}

/// Latency percentiles, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Correctness of one run, from the final state read back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Check {
    /// Units acknowledged (held or sold) beyond the stock there was; must be
    /// 0.
    pub oversell: u64,
    /// Acknowledged holds or changes missing from the final state; must be
    /// 0.
    pub lost: u64,
    /// Operations whose outcome is unknown (no answer); they widen what
    /// the final state may be, and are counted, not hidden.
    pub unknown: u64,
    /// Holds looked up one by one by id (a sample of the acknowledged).
    pub sampled: u64,
    /// What was wrong, if anything.
    pub problems: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.oversell == 0 && self.lost == 0 && self.problems.is_empty()
    }
}

/// A target or workload that was not run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Skipped {
    pub target: String,
    pub workload: Option<String>,
    pub reason: String,
    /// It should have run and broke (a target that would not start, a
    /// workload that failed), as opposed to a peer not installed or a
    /// workload a target cannot run. A failure makes the run exit 1.
    #[serde(default)]
    pub failed: bool,
}

/// One goal of the issue, as measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    /// What was required, e.g. `>= 2.0x` or `< 5000 us`.
    pub required: String,
    /// What was measured, e.g. `2.4x (48210 / 20100 holds/s)`.
    pub measured: String,
    /// `None` when a side of the comparison did not run.
    pub met: Option<bool>,
}

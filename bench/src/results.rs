//! What a run measured, as written to `results.json` and read by the
//! markdown table and the plots.

use serde::{Deserialize, Serialize};

/// The `http-floor` target's name: `GET /healthz` on one `tally` node with
/// the same clients as the other targets (see `floor.rs`). Its requests hold
/// nothing, so its holds/s and its oversell and lost checks do not apply.
pub const HTTP_FLOOR: &str = "http-floor";

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
    /// The issue's goals as ratios measured in this run.
    pub goals: Vec<Goal>,
    /// Tally's throughput as a share of `http-floor`'s, per workload and
    /// client count that both ran.
    #[serde(default)]
    pub floor_shares: Vec<FloorShare>,
}

/// One measured run of one workload against one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// `tally`, `tally-3`, `http-floor`, `redis-always`, `redis-everysec`,
    /// `postgres`.
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
    /// Holds per request (1, or the batch size; 0 for `http-floor`, whose
    /// requests are `GET /healthz`).
    pub batch: u32,
    /// Seconds measured (after warm-up).
    pub seconds: f64,
    /// Requests answered (any answer) per second. For `http-floor`, each
    /// is one `GET /healthz`.
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
    /// Tally targets: snapshots built inside the measured window, summed
    /// over every node and shard (read from `/metrics` when the window
    /// opens and when it closes). `None` for peers, and in results written
    /// before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_in_window: Option<u64>,
    /// What reading back the final state found.
    pub check: Check,
}

impl RunResult {
    /// Whether the run's requests hold stock: every target's do but
    /// `http-floor`'s, whose holds/s and checks are then not applicable
    /// rather than zero or passed.
    pub fn holds_stock(&self) -> bool {
        self.target != HTTP_FLOOR
    }
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
    /// Why no check applies to the run (`http-floor`: its requests change
    /// no stock), so that it reads as not checked rather than as a pass.
    /// `None` when the checks ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
}

impl Check {
    /// A run with nothing to check, and why.
    pub fn not_applicable(reason: &str) -> Check {
        Check { not_applicable: Some(reason.to_owned()), ..Check::default() }
    }

    /// The checks ran and found nothing wrong.
    pub fn passed(&self) -> bool {
        self.not_applicable.is_none() && !self.failed()
    }

    /// Something was found wrong: oversell, a lost write or another
    /// problem. A check that does not apply has found nothing, so it has
    /// neither passed nor failed.
    pub fn failed(&self) -> bool {
        self.oversell > 0 || self.lost > 0 || !self.problems.is_empty()
    }
}

/// A target's throughput as a share of `http-floor`'s at the same workload
/// and client count, both closed loop, from the same run: how close the
/// target comes to the most requests per second this machine's HTTP path
/// gives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloorShare {
    /// `tally` or `tally-3`.
    pub target: String,
    pub workload: String,
    pub clients: u32,
    /// The target's acknowledged holds per second.
    pub holds_per_s: f64,
    /// Holds per request of the target's run (1, or the batch size).
    pub batch: u32,
    /// The target's requests per second that did the workload's work:
    /// acknowledged holds ÷ holds per request, or for `mixed` every request
    /// answered (its operations are reads, holds, confirms, releases and
    /// adjustments, each one request).
    pub requests_per_s: f64,
    /// `GET /healthz` answered per second by `http-floor`.
    pub floor_requests_per_s: f64,
    /// `requests_per_s` as a percentage of `floor_requests_per_s`; `None`
    /// when the floor answered nothing.
    pub percent: Option<f64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_without_a_snapshot_count_still_load() {
        let old = r#"{"target":"tally","workload":"flash-sale","mode":"open","clients":50,"rate":100.0,"batch":1,
            "seconds":8.0,"requests_per_s":100.0,"holds_per_s":100.0,"refused_per_s":0.0,"errors":0,
            "latency":{"count":1,"mean":1.0,"p50":1,"p90":1,"p99":1,"p999":1,"max":1},"start_lag":null,
            "cdf":[],"holds_each_second":[],"expiry_lag":null,
            "check":{"oversell":0,"lost":0,"unknown":0,"sampled":0,"problems":[]}}"#;
        let run: RunResult = serde_json::from_str(old).unwrap_or_else(|e| panic!("old result: {e}"));
        assert_eq!(run.snapshots_in_window, None);

        let counted = RunResult { snapshots_in_window: Some(3), ..run };
        let json = serde_json::to_string(&counted).unwrap_or_else(|e| panic!("{e}"));
        assert!(json.contains("\"snapshots_in_window\":3"), "{json}");
        let back: RunResult = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.snapshots_in_window, Some(3));
        let none = serde_json::to_string(&RunResult::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!none.contains("snapshots_in_window"), "left out when not counted: {none}");
    }

    #[test]
    fn a_check_that_does_not_apply_neither_passes_nor_fails() {
        let check = Check::not_applicable("nothing held");
        assert!(!check.passed());
        assert!(!check.failed());
        assert!(Check::default().passed());
        let oversold = Check { oversell: 1, ..Check::default() };
        assert!(oversold.failed() && !oversold.passed());
    }
}

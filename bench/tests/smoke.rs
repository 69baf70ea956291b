//! The bench's smoke run, so it never rots: every target and workload for
//! about a second each, against real processes, with the correctness checks
//! that every run makes (oversell, lost acknowledged holds), and Tally's
//! share of the `http-floor` target. Figures from a debug build on a shared
//! machine mean nothing and are not asserted.
//!
//! Redis and PostgreSQL are optional on a developer's machine (the run
//! skips them with a message naming `scripts/install-peers.sh`); CI
//! installs them and sets `BENCH_REQUIRE_PEERS=1`, which makes their
//! absence a failure.

use std::process::Command;

use bench::results::Report;

#[test]
fn smoke_run_measures_every_target_and_checks_it() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["run", "--smoke", "--out"])
        .arg(out.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tally-bench: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tally-bench failed ({}):\n{stdout}\n{stderr}", output.status);

    let json = std::fs::read_to_string(out.path().join("results.json")).unwrap_or_else(|e| panic!("results.json: {e}"));
    let report: Report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("results.json: {e}"));
    let markdown = std::fs::read_to_string(out.path().join("results.md")).unwrap_or_else(|e| panic!("results.md: {e}"));
    assert!(markdown.contains("| target | workload |"), "{markdown}");

    let require_peers = std::env::var("BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let mut targets = vec!["tally", "tally-3"];
    if require_peers {
        targets.extend(["redis-always", "redis-everysec", "postgres"]);
    }
    for skipped in &report.skipped {
        eprintln!("skipped: {} {:?}: {}", skipped.target, skipped.workload, skipped.reason);
    }
    for target in &targets {
        let workloads: &[&str] = if target.starts_with("tally") {
            &["flash-sale", "uniform", "mixed", "batch-16", "batch-256", "batch-1024", "expiry"]
        } else {
            &["flash-sale", "uniform", "mixed", "batch-16", "batch-256", "batch-1024"]
        };
        for workload in workloads {
            let run = report
                .runs
                .iter()
                .find(|r| {
                    r.target == *target && r.workload == *workload && (r.mode == "closed" || *workload == "expiry")
                })
                .unwrap_or_else(|| panic!("no {target} {workload} run:\n{stdout}"));
            assert!(run.holds_per_s > 0.0, "{target} {workload} held nothing: {run:?}");
            assert!(run.latency.count > 0, "{target} {workload} recorded no latency");
            assert!(run.check.passed(), "{target} {workload}: {:?}", run.check);
            assert!(run.check.sampled > 0, "{target} {workload} looked up no hold by id");
        }
        let half = report.runs.iter().find(|r| r.target == *target && r.workload == "flash-sale" && r.mode == "open");
        assert!(half.is_some_and(|r| r.rate.is_some()), "{target}: no half-load run");
        // Tally's snapshots are counted (how many a second's window holds
        // is not asserted); a peer has none to count.
        if target.starts_with("tally") {
            assert!(half.is_some_and(|r| r.snapshots_in_window.is_some()), "{target}: snapshots not counted: {half:?}");
        } else {
            assert!(half.is_some_and(|r| r.snapshots_in_window.is_none()), "{target}: snapshots counted: {half:?}");
        }
    }
    // The floor runs every workload with its own request, checks nothing
    // (and says so), and each tally run has its share of it.
    for workload in ["flash-sale", "uniform", "mixed", "batch-16", "batch-256", "batch-1024", "expiry"] {
        let floor = report
            .runs
            .iter()
            .find(|r| r.target == "http-floor" && r.workload == workload)
            .unwrap_or_else(|| panic!("no http-floor {workload} run:\n{stdout}"));
        assert!(floor.requests_per_s > 0.0 && floor.latency.count > 0, "http-floor {workload}: {floor:?}");
        assert_eq!(floor.errors, 0, "http-floor {workload}: GET /healthz failed");
        assert!(floor.check.not_applicable.is_some() && !floor.check.failed(), "{:?}", floor.check);
    }
    for target in &targets[..2] {
        for workload in ["flash-sale", "uniform", "mixed", "batch-16", "batch-256", "batch-1024"] {
            let share = report
                .floor_shares
                .iter()
                .find(|s| s.target == *target && s.workload == workload)
                .unwrap_or_else(|| panic!("no {target} {workload} share of the floor: {:?}", report.floor_shares));
            assert!(share.percent.is_some_and(|p| p > 0.0), "{share:?}");
        }
    }
    assert!(markdown.contains(" clients: tally = ") && markdown.contains("% of http-floor ("), "{markdown}");

    let expiry = report.runs.iter().find(|r| r.target == "tally" && r.workload == "expiry");
    let lag = expiry.and_then(|r| r.expiry_lag).unwrap_or_else(|| panic!("no expiry lag measured"));
    assert!(lag.count > 0, "no expiry observed: {expiry:?}");

    let plots: Vec<_> = std::fs::read_dir(out.path().join("plots"))
        .unwrap_or_else(|e| panic!("plots: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(plots.iter().any(|p| p == "throughput-vs-clients.svg"), "{plots:?}");
    assert!(plots.iter().any(|p| p == "latency-cdf-flash-sale.svg"), "{plots:?}");
}

//! The short chaos run of the test suite: a fixed seed, every fault kind
//! once, about two minutes of 24 clients against three real nodes, then the
//! whole check; and shorter ones against five nodes, every node holding
//! every shard or each shard on three. Longer runs:
//! `chaos/README.md`.
//!
//! It asserts correctness only (no oversell, no lost acknowledged write,
//! equal digests, no linearizability violation, no hold expired early or
//! left far past its deadline). Recovery times are printed, not asserted:
//! they are figures for the report, and this machine is shared.

use std::time::Duration;

use chaos::run::{RunOptions, run};
use chaos::schedule::{FaultKind, Schedule};
use testkit::Program;

/// The seed of the suite's run. Seeds that found bugs run as well (below).
const SEED: u64 = 20_261_122;

/// One run at a time: each is three nodes and 24 clients on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_and_check(seed: u64, schedule: Schedule, duration: Duration) {
    run_and_check_on((3, 0), seed, schedule, duration).await;
}

/// A run on `nodes` nodes, each shard on `replication_factor` of them (0:
/// every node).
async fn run_and_check_on((nodes, replication_factor): (u8, u32), seed: u64, schedule: Schedule, duration: Duration) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out = dir.path().join("run");
    let program = Program::SelfExec(env!("CARGO_BIN_EXE_tally-chaos").into());
    let mut options = RunOptions::new(program, out.clone(), duration, seed);
    options.nodes = nodes;
    options.replication_factor = replication_factor;
    options.schedule = schedule.clone();
    options.check.linearizability_budget = Duration::from_secs(60);
    let report = run(&options).await.unwrap_or_else(|e| panic!("the run could not be made: {e}"));
    let summary = report.summary();
    println!("{summary}");
    if let Schedule::Each(kinds) = &schedule {
        for kind in kinds {
            assert!(
                report.steps.iter().any(|step| step.kind == *kind),
                "fault {} was never injected:\n{summary}",
                kind.name()
            );
        }
    }
    assert!(report.check.ops > 1_000, "too few operations to mean anything:\n{summary}");
    assert!(report.check.ok > 500, "too few acknowledged operations:\n{summary}");
    assert!(!report.expiry.probes.is_empty(), "no expiry probe ran:\n{summary}");
    if !report.passed() {
        // Keep the evidence: the temp dir would be deleted.
        let keep = std::env::temp_dir().join(format!("tally-chaos-failed-{nodes}-nodes-{seed}"));
        let _ = std::fs::remove_dir_all(&keep);
        let kept = std::fs::rename(&out, &keep).map(|()| keep.display().to_string());
        panic!("the chaos run failed (history and report kept at {kept:?}):\n{summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_once_keeps_every_promise() {
    run_and_check(SEED, Schedule::Each(FaultKind::ALL.to_vec()), Duration::from_secs(110)).await;
}

/// FINDINGS.md #1: a leader whose wall clock jumped ahead stamped log time
/// from it and expired every hold of its shard at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_seed_3_a_clock_jump_expires_nothing_early() {
    let schedule = Schedule::Each(vec![FaultKind::ClockJump, FaultKind::KillLeader, FaultKind::PartitionLeader]);
    run_and_check(3, schedule, Duration::from_secs(30)).await;
}

/// Five nodes (every one a voter of every shard): a sixth added to every
/// shard and removed under load, a node removed and added back empty, the
/// faults aimed at a leader, a node wiped, and a bridge between two of
/// five. Same checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_nodes_added_and_removed_keep_every_promise() {
    let schedule = Schedule::Each(vec![
        FaultKind::AddNode,
        FaultKind::RemoveNode,
        FaultKind::KillLeader,
        FaultKind::PartitionLeader,
        FaultKind::WipeRestart,
        FaultKind::Bridge,
    ]);
    run_and_check_on((5, 0), 11, schedule, Duration::from_secs(60)).await;
}

/// Five nodes, each shard on three (`replication_factor = 3`): nodes that
/// do not host a shard forward its requests. A sixth node added and
/// removed, a node removed, wiped and added back (replicas move by the
/// placement rule each time), leaders killed and cut off, a node wiped, a
/// bridge, a pause. Same checks; convergence compares each shard among its
/// three hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_three_copies_of_each_shard_keep_every_promise() {
    let schedule = Schedule::Each(vec![
        FaultKind::AddNode,
        FaultKind::RemoveNode,
        FaultKind::KillLeader,
        FaultKind::PartitionLeader,
        FaultKind::WipeRestart,
        FaultKind::Bridge,
        FaultKind::Pause,
    ]);
    run_and_check_on((5, 3), 19, schedule, Duration::from_secs(90)).await;
}

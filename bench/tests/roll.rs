//! The rolling restart, small: `tally-bench roll` restarts every node of a
//! 5-node cluster (debug build) in turn while a few flash-sale clients
//! write, and every write must succeed (retried with its Idempotency-Key on
//! another node), nothing may be oversold, and every acknowledged hold must
//! be found afterwards. Latency is reported, never asserted: the machine is
//! shared and slow, so the waits inside are generous guards, not timers.

use std::process::Command;

use bench::roll::RollResult;

#[test]
fn every_node_restarts_in_turn_under_load_with_no_failed_write() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args([
            "roll",
            "--nodes",
            "5",
            "--shards",
            "2",
            "--clients",
            "4",
            "--warmup",
            "0.5",
            "--before",
            "2",
            "--settle",
            "1",
            "--write-window",
            "120",
            "--attempt-timeout",
            "30",
            "--sellout-units",
            "50",
            "--out",
        ])
        .arg(out.path())
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tally-bench: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let json = std::fs::read_to_string(out.path().join("roll.json"))
        .unwrap_or_else(|e| panic!("roll.json: {e}\n{stdout}\n{stderr}"));
    let result: RollResult = serde_json::from_str(&json).unwrap_or_else(|e| panic!("roll.json: {e}"));
    assert_eq!(result.failed_writes, 0, "failed writes: {:?}\n{stdout}\n{stderr}", result.failures);
    assert_eq!(result.check.oversell, 0, "{:?}", result.check);
    assert_eq!(result.check.lost, 0, "{:?}", result.check);
    assert!(result.check.passed(), "{:?}", result.check);
    assert_eq!(result.holds_lost, 0, "{:?}", result.problems);
    assert!(result.problems.is_empty(), "{:?}\n{stdout}\n{stderr}", result.problems);
    // Every node was stopped cleanly and came back, in order.
    let restarted: Vec<u64> = result.restarts.iter().map(|r| r.node).collect();
    assert_eq!(restarted, vec![1, 2, 3, 4, 5], "{stdout}");
    assert!(result.restarts.iter().all(|r| r.exit.contains("exit status: 0")), "{:?}", result.restarts);
    // Writes ran before and during the roll, and every acknowledged hold
    // was looked up and found.
    assert!(result.before.holds > 0 && result.during.holds > 0, "{:?} {:?}", result.before, result.during);
    assert!(result.during.latency.count > 0 && result.during.latency.p99 > 0, "{:?}", result.during);
    assert_eq!(result.sellout_held, 50, "{stdout}");
    assert!(result.holds_acknowledged > 50, "{result:?}");
    assert_eq!(result.holds_looked_up, result.holds_acknowledged);
    assert!(result.passed, "{stdout}\n{stderr}");
    assert!(output.status.success(), "tally-bench roll failed ({}):\n{stdout}\n{stderr}", output.status);
    let markdown = std::fs::read_to_string(out.path().join("roll.md")).unwrap_or_else(|e| panic!("roll.md: {e}"));
    assert!(markdown.contains("| during the roll |"), "{markdown}");
}

//! Tests of the linearizability check: hand-written histories, and
//! histories of a simulated correct Tally, as they are and with one read
//! made wrong.

use std::time::Duration;

use super::sim::{Sim, simulate};
use crate::checker::tests::{Builder, confirm, held, hold, levels, read, refused, run, unknown, violations};
use crate::checker::{CheckOptions, check};
use crate::history::{History, Outcome};

#[test]
fn a_concurrent_history_linearizable_in_only_one_order_passes() {
    // Client 1 invoked first but was refused: only client 2's hold
    // taking the last unit first explains it; the read sees it.
    let history = Builder::new(1)
        .op(1, hold(1), 0, 100, refused("insufficient_stock"))
        .op(2, hold(1), 10, 50, held("r1"))
        .op(3, read(), 20, 120, levels(1, 1))
        .op(2, confirm("r1"), 200, 210, Outcome::Done)
        .op(3, read(), 220, 230, levels(0, 0))
        .finish(0, 0);
    let report = run(&history);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn a_read_after_an_acknowledged_hold_that_misses_it_is_a_violation() {
    let history = Builder::new(5).op(1, hold(2), 0, 10, held("r1")).op(2, read(), 20, 30, levels(5, 0)).finish(5, 2);
    let report = run(&history);
    assert!(!report.passed());
    let found = violations(&report);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("ops #1 fits"), "{}", found[0]);
    assert!(found[0].contains("#0 (client 1"), "names the missed hold: {}", found[0]);
    assert!(report.oversell.is_empty() && report.lost.is_empty() && report.convergence.is_empty());
}

#[test]
fn the_same_read_concurrent_with_the_hold_passes() {
    let history = Builder::new(5).op(1, hold(2), 0, 30, held("r1")).op(2, read(), 20, 40, levels(5, 0)).finish(5, 2);
    let report = run(&history);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn an_unknown_hold_may_or_may_not_have_happened() {
    let happened = Builder::new(5).op(1, hold(2), 0, 100, unknown()).op(2, read(), 200, 210, levels(5, 2)).finish(5, 2);
    let report = run(&happened);
    assert!(report.passed(), "{}", report.summary());

    let not_happened =
        Builder::new(5).op(1, hold(2), 0, 100, unknown()).op(2, read(), 200, 210, levels(5, 0)).finish(5, 0);
    let report = run(&not_happened);
    assert!(report.passed(), "{}", report.summary());

    // It may even take effect after its client gave up and after a read.
    let late = Builder::new(5)
        .op(1, hold(2), 0, 100, unknown())
        .op(2, read(), 200, 210, levels(5, 0))
        .op(2, hold(4), 300, 310, refused("insufficient_stock"))
        .op(2, read(), 400, 410, levels(5, 2))
        .finish(5, 2);
    let report = run(&late);
    assert!(report.passed(), "{}", report.summary());

    // But once seen, it cannot vanish again.
    let vanished = Builder::new(5)
        .op(1, hold(2), 0, 100, unknown())
        .op(2, read(), 200, 210, levels(5, 2))
        .op(2, hold(4), 300, 310, held("r2"))
        .finish(5, 4);
    let report = run(&vanished);
    assert!(!violations(&report).is_empty(), "{}", report.summary());
}

#[test]
fn an_unknown_confirm_may_or_may_not_have_happened() {
    for (on_hand, reserved, final_state) in [(3, 0, "CONFIRMED"), (5, 2, "HELD")] {
        let mut history = Builder::new(5)
            .op(1, hold(2), 0, 10, held("r1"))
            .op(1, confirm("r1"), 20, 100, unknown())
            .op(2, read(), 200, 210, levels(on_hand, reserved))
            .finish(on_hand, reserved);
        history.final_holds = vec![("r1".into(), final_state.into())];
        let report = run(&history);
        assert!(report.passed(), "{}", report.summary());
    }
}

#[test]
fn random_histories_of_a_correct_executor_pass() {
    for seed in 0..40u64 {
        let sim = Sim {
            clients: 1 + u32::try_from(seed % 7).unwrap_or(0),
            ops: 300,
            items: 1 + usize::try_from(seed % 2).unwrap_or(0),
            initial: 6,
            unknown_per_mille: if seed % 3 == 0 { 0 } else { 60 },
            latency_us_max: 200,
            think_us_max: 100,
            effect_tail_per_mille: 1000,
        };
        let history = simulate(&sim, seed);
        let report = check(&history, &CheckOptions { linearizability_budget: Duration::from_secs(20), window_ops: 50 });
        assert!(report.passed(), "seed {seed}:\n{}", report.summary());
        let timed_out: u64 = report.linearizability.iter().map(|v| v.timed_out).sum();
        assert_eq!(timed_out, 0, "seed {seed}:\n{}", report.summary());
    }
}

/// Position of the first read that returned levels.
fn first_read(history: &History) -> usize {
    history
        .ops
        .iter()
        .position(|op| matches!(op.outcome, Outcome::Levels { .. }))
        .unwrap_or_else(|| panic!("no read in the history"))
}

#[test]
fn a_random_history_with_one_read_flipped_fails() {
    for seed in 0..10u64 {
        let sim = Sim {
            clients: 4,
            ops: 300,
            items: 1,
            initial: 6,
            unknown_per_mille: 30,
            latency_us_max: 200,
            think_us_max: 100,
            effect_tail_per_mille: 1000,
        };
        let mut history = simulate(&sim, seed);
        let at = (first_read(&history) + 97) % history.ops.len();
        let at = at + history.ops[at..].iter().position(|op| matches!(op.outcome, Outcome::Levels { .. })).unwrap_or(0);
        let Outcome::Levels { on_hand, reserved } = history.ops[at].outcome else { continue };
        // More stock than any order of these small adjustments explains.
        history.ops[at].outcome = levels(on_hand + 1000, reserved);
        let report = check(&history, &CheckOptions::default());
        assert!(!report.passed(), "seed {seed}: flipped read #{at} went unnoticed");
        let found = violations(&report);
        assert!(found.iter().any(|v| v.contains(&format!("#{at} "))), "seed {seed}: {found:?}");
    }
}

#[test]
fn a_sequential_history_with_one_read_off_by_one_fails() {
    let sim = Sim {
        clients: 1,
        ops: 200,
        items: 1,
        initial: 6,
        unknown_per_mille: 0,
        latency_us_max: 50,
        think_us_max: 10,
        effect_tail_per_mille: 1000,
    };
    let mut history = simulate(&sim, 7);
    let at = first_read(&history) + 50;
    let at = at + history.ops[at..].iter().position(|op| matches!(op.outcome, Outcome::Levels { .. })).unwrap_or(0);
    let Outcome::Levels { on_hand, reserved } = history.ops[at].outcome else { panic!("not a read") };
    history.ops[at].outcome = levels(on_hand, reserved + 1);
    let report = check(&history, &CheckOptions::default());
    assert!(!report.passed());
    let found = violations(&report);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&format!("ops #{at} fits")), "{}", found[0]);
}

#[test]
fn two_thousand_ops_of_twenty_concurrent_clients_check_in_time() {
    // Twenty clients on one item, driving it into stock-out (where every
    // hold's fate hangs on the exact order), 1% unknown outcomes, and
    // ops taking effect late in their interval, as Tally applies a
    // command and then answers.
    let sim = Sim {
        clients: 20,
        ops: 2000,
        items: 1,
        initial: 40,
        unknown_per_mille: 10,
        latency_us_max: 2_000,
        think_us_max: 50,
        effect_tail_per_mille: 200,
    };
    let history = simulate(&sim, 42);
    let report = check(&history, &CheckOptions { linearizability_budget: Duration::from_secs(5), window_ops: 200 });
    assert!(report.passed(), "{}", report.summary());
    let verdict = &report.linearizability[0];
    assert!(verdict.linearizable * 2 > verdict.windows, "most windows decided: {}", report.summary());
}

#[test]
#[ignore = "slow (about a minute in debug): cargo test -p tally-chaos --lib checker -- --ignored"]
fn hundreds_of_correct_histories_pass_whatever_the_windows() {
    // Correct executors across client counts, stock, unknown rates,
    // think times and effect points, checked with windows from tiny to
    // large: any violation is a checker bug.
    let mut bad = Vec::new();
    for seed in 0..400u64 {
        let sim = Sim {
            clients: 1 + u32::try_from(seed % 9).unwrap_or(0),
            ops: 250,
            items: 1 + usize::try_from(seed % 2).unwrap_or(0),
            initial: [3, 6, 20][usize::try_from(seed % 3).unwrap_or(0)],
            unknown_per_mille: [0, 30, 100][usize::try_from((seed / 3) % 3).unwrap_or(0)],
            latency_us_max: 300,
            think_us_max: [0, 50, 300][usize::try_from((seed / 9) % 3).unwrap_or(0)],
            effect_tail_per_mille: [100, 1000][usize::try_from((seed / 27) % 2).unwrap_or(0)],
        };
        let history = simulate(&sim, seed);
        let window_ops = [8, 16, 40, 200][usize::try_from((seed / 54) % 4).unwrap_or(0)];
        let report = check(&history, &CheckOptions { linearizability_budget: Duration::from_secs(3), window_ops });
        if !report.passed() {
            bad.push(format!("seed {seed} w {window_ops}: {}", report.summary()));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
#[ignore = "slow: cargo test -p tally-chaos --lib checker -- --ignored"]
fn a_wrong_read_is_caught_whatever_the_windows() {
    // One client, a read off by one; or six, a read off by a hundred
    // (with unknowns around, a small error may have an explanation).
    let mut missed = Vec::new();
    for seed in 0..200u64 {
        let concurrent = seed % 2 == 1;
        let sim = Sim {
            clients: if concurrent { 6 } else { 1 },
            ops: 200,
            items: 1,
            initial: 6,
            unknown_per_mille: if concurrent { 30 } else { 0 },
            latency_us_max: 300,
            think_us_max: 100,
            effect_tail_per_mille: 1000,
        };
        let mut history = simulate(&sim, seed);
        let reads: Vec<usize> = history
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.outcome, Outcome::Levels { .. }))
            .map(|(i, _)| i)
            .collect();
        let at = reads[usize::try_from(seed).unwrap_or(0) % reads.len()];
        let Outcome::Levels { on_hand, reserved } = history.ops[at].outcome else { continue };
        history.ops[at].outcome =
            if concurrent { levels(on_hand + 100, reserved) } else { levels(on_hand, reserved + 1) };
        let window_ops = [16, 40, 200][usize::try_from(seed % 3).unwrap_or(0)];
        let report = check(&history, &CheckOptions { linearizability_budget: Duration::from_secs(3), window_ops });
        let found = violations(&report);
        if !found.iter().any(|v| v.contains(&format!("#{at} ")) || v.contains(&format!("#{at},"))) {
            missed.push(format!("seed {seed} read #{at} w {window_ops}: {found:?} {}", report.summary()));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

//! Fixtures for the checker's tests (a history builder, the calls and
//! outcomes it takes, and a checker run with a fixed budget), and the tests
//! that span every check.

use std::time::Duration;

use super::{CheckOptions, Report, check};
use crate::history::{Call, History, Item, NodeDigests, NodeLevels, Op, Outcome};

const SKU: &str = "sku-1";
pub(super) const WH: &str = "wh-1";

fn item() -> Item {
    (SKU.to_string(), WH.to_string())
}

pub(super) fn hold(qty: u64) -> Call {
    Call::Hold { sku: SKU.into(), warehouse: WH.into(), qty }
}

pub(super) fn read() -> Call {
    Call::Read { sku: SKU.into(), warehouse: WH.into() }
}

pub(super) fn adjust(delta: i64) -> Call {
    Call::Adjust { sku: SKU.into(), warehouse: WH.into(), delta }
}

pub(super) fn confirm(id: &str) -> Call {
    Call::Confirm { reservation: id.into() }
}

pub(super) fn release(id: &str) -> Call {
    Call::Release { reservation: id.into() }
}

pub(super) fn held(id: &str) -> Outcome {
    Outcome::Held { reservation: id.into(), expires_at_ms: 1_000_000 }
}

pub(super) fn levels(on_hand: u64, reserved: u64) -> Outcome {
    Outcome::Levels { on_hand, reserved }
}

pub(super) fn refused(code: &str) -> Outcome {
    Outcome::Refused { code: code.into() }
}

pub(super) fn unknown() -> Outcome {
    Outcome::Unknown { why: "timeout".into() }
}

/// A history builder: ops get their index in the order they are added.
pub(super) struct Builder {
    history: History,
}

impl Builder {
    pub(super) fn new(initial: u64) -> Builder {
        Builder { history: History { initial: vec![(item(), initial)], ..History::default() } }
    }

    pub(super) fn op(mut self, client: u32, call: Call, invoke_us: u64, complete_us: u64, outcome: Outcome) -> Builder {
        let index = self.history.ops.len() as u64;
        self.history.ops.push(Op { index, client, node: 1, call, invoke_us, complete_us, outcome });
        self
    }

    /// Three nodes agreeing on these final levels and digests.
    pub(super) fn finish(mut self, on_hand: u64, reserved: u64) -> History {
        self.history.final_levels =
            (1..=3).map(|node| NodeLevels { node, items: vec![(item(), on_hand, reserved)] }).collect();
        self.history.digests = (1..=3)
            .map(|node| NodeDigests { node, shards: vec![(0, Some(10), "abc".into()), (1, Some(7), "def".into())] })
            .collect();
        self.history
    }
}

pub(super) fn run(history: &History) -> Report {
    check(history, &CheckOptions { linearizability_budget: Duration::from_secs(20), window_ops: 200 })
}

pub(super) fn violations(report: &Report) -> Vec<String> {
    report.linearizability.iter().flat_map(|v| v.violations.clone()).collect()
}

#[test]
fn a_clean_sequential_history_passes() {
    let history = Builder::new(10)
        .op(1, hold(2), 0, 10, held("r1"))
        .op(1, read(), 20, 30, levels(10, 2))
        .op(1, confirm("r1"), 40, 50, Outcome::Done)
        .op(2, read(), 60, 70, levels(8, 0))
        .op(2, adjust(5), 80, 90, Outcome::Done)
        .op(2, hold(20), 100, 110, refused("insufficient_stock"))
        .op(1, hold(3), 120, 130, held("r2"))
        .op(1, release("r2"), 140, 150, Outcome::Done)
        .op(1, confirm("r2"), 160, 170, refused("reservation_released"))
        .op(2, adjust(-14), 180, 190, refused("below_reserved"))
        .op(2, read(), 200, 210, levels(13, 0))
        .finish(13, 0);
    let report = run(&history);
    assert!(report.passed(), "{}", report.summary());
    assert_eq!(report.ops, 11);
    assert_eq!(report.refused, 3);
    let verdict = &report.linearizability[0];
    assert_eq!(verdict.windows, verdict.linearizable);
    assert_eq!(verdict.timed_out, 0);
}

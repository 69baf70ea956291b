//! A failed window, reported: shrunk to a smallest failing window
//! ([`shrink`]) and described op by op ([`violation_message`]).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::prefix::{Hint, Prefix, invoke_at};
use super::search::{MEMO_STATES_MAX, Search, Verdict};
use super::window::Window;
use crate::checker::index::{HoldInfo, Index, Pos, Res};
use crate::checker::item_name;
use crate::history::{Call, History, Op, Outcome};

/// Least time a violation's shrinking may spend per sub-search (proving a
/// sub-window fails takes an exhaustive search). Violations are rare and at
/// most `VIOLATIONS_PER_ITEM_MAX` per item are shrunk.
const SHRINK_SEARCH_MIN: Duration = Duration::from_millis(100);
/// Operations described in full in one violation message.
const MESSAGE_OPS_MAX: usize = 16;

/// Runs one window's search with a fresh prefix (used when shrinking).
fn search_range(seq: &[Pos], holds: &[HoldInfo], initial: i64, start: usize, end: usize, budget: Duration) -> Verdict {
    let mut prefix = Prefix::new(initial);
    prefix.advance(seq, start);
    let window = Window::build(seq, holds, &prefix, start, end, &Hint::new());
    let when = window.entries.iter().map(|e| e.complete_us).collect();
    Search::run(&window, Instant::now() + budget, when, MEMO_STATES_MAX).0
}

/// Shrinks a failing window `[start, end)` to a smallest failing one:
/// first the end, then the start (failure is monotone in both, since a
/// later end or an earlier start only adds constraints). A sub-search that
/// times out counts as passing, so the result always failed. `budget` is
/// for the whole shrinking.
pub(super) fn shrink(
    seq: &[Pos],
    holds: &[HoldInfo],
    initial: i64,
    start: usize,
    end: usize,
    budget: Duration,
) -> (usize, usize) {
    // Two binary searches over the window's positions.
    let searches = 2 * (usize::BITS - (end - start).leading_zeros()).max(1);
    let each = (budget / searches).max(SHRINK_SEARCH_MIN);
    let fails = |s: usize, e: usize| search_range(seq, holds, initial, s, e, each) == Verdict::Fail;
    let (mut lo, mut hi) = (start + 1, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(start, mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let end = hi;
    let (mut lo, mut hi) = (start, end - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fails(mid, end) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo, end)
}

fn describe_op(op: &Op) -> String {
    let call = match &op.call {
        Call::Hold { qty, .. } => format!("Hold {qty}"),
        Call::Confirm { reservation } => format!("Confirm {reservation}"),
        Call::Release { reservation } => format!("Release {reservation}"),
        Call::Extend { reservation, .. } => format!("Extend {reservation}"),
        Call::Adjust { delta, .. } => format!("Adjust {delta:+}"),
        Call::Read { .. } => "Read".to_string(),
    };
    let outcome = match &op.outcome {
        Outcome::Held { reservation, .. } => format!("held {reservation}"),
        Outcome::Done => "done".to_string(),
        Outcome::Levels { on_hand, reserved } => format!("on hand {on_hand}, reserved {reserved}"),
        Outcome::Refused { code } => format!("refused {code}"),
        Outcome::Unknown { .. } => "unknown".to_string(),
    };
    format!(
        "#{} (client {}, node {}) {call} -> {outcome} [{}..{} us]",
        op.index, op.client, op.node, op.invoke_us, op.complete_us
    )
}

/// The message for a failed window `[start, end)`.
pub(super) fn violation_message(history: &History, index: &Index, item: usize, start: usize, end: usize) -> String {
    let seq = &index.seqs[item];
    let mut prefix = Prefix::new(index.initial[item]);
    prefix.advance(seq, start);
    let ops: Vec<u64> = seq[start..end].iter().map(|p| history.ops[p.op].index).collect();
    let mut text = format!(
        "{}: no order of ops {} fits the model, starting from on hand {}, reserved {}",
        item_name(&index.items[item]),
        ops.iter().map(|i| format!("#{i}")).collect::<Vec<_>>().join(", "),
        prefix.on_hand,
        prefix.reserved
    );
    if !prefix.in_flight.is_empty() {
        let _ = write!(
            text,
            " (+ acknowledged ops in flight: {})",
            prefix
                .in_flight
                .iter()
                .map(|&(_, at)| format!("#{}", history.ops[seq[at].op].index))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let pending: u32 = prefix.pending.values().sum();
    if pending > 0 {
        let _ = write!(text, " (+ {pending} earlier unknown write(s) that may take effect)");
    }
    // The last acknowledged writes before the window: what the start state
    // is made of, most often what a stale read missed.
    let cut_us = invoke_at(seq, start);
    let mut before: Vec<&Pos> =
        seq[..start].iter().filter(|p| p.res == Res::Ack && p.act.changes_state() && p.complete_us < cut_us).collect();
    before.sort_by_key(|p| std::cmp::Reverse(p.complete_us));
    if !before.is_empty() {
        let _ = write!(
            text,
            "; last writes before: {}",
            before.iter().take(3).map(|p| describe_op(&history.ops[p.op])).collect::<Vec<_>>().join("; ")
        );
    }
    let _ = write!(
        text,
        "; ops: {}",
        seq[start..end]
            .iter()
            .take(MESSAGE_OPS_MAX)
            .map(|p| describe_op(&history.ops[p.op]))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if end - start > MESSAGE_OPS_MAX {
        let _ = write!(text, "; ... {} more", end - start - MESSAGE_OPS_MAX);
    }
    text
}

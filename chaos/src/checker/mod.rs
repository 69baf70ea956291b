//! The checker of a chaos run: reads a [`History`] and says whether Tally
//! kept its promises while the faults were on.
//!
//! Five checks, each against the model of one item (SKU × warehouse):
//!
//! 1. **No oversell**: no more units confirmed sold than were ever on hand,
//!    and no read or final level with reserved above on hand.
//! 2. **No lost acknowledged write**: every node's final levels lie in the
//!    range the acknowledged operations (± the unknown ones) allow, and every
//!    acknowledged hold ends in the state its client was told.
//! 3. **Convergence**: every node ends with the same levels and, per shard,
//!    the same applied index and digest.
//! 4. **Linearizability** per item: a Wing–Gong search (as in Porcupine) for
//!    an order of the item's operations that respects real time and that the
//!    model accepts, window by window (see [`check`] for how windows stay
//!    independent and sound).
//! 5. **Availability**: per second, how many writes got an answer; per
//!    fault, how long until the next acknowledged write.
//!
//! A violation is only reported when it is proven: a window the search ran
//! out of time on counts as `timed_out`, never as a failure.
//!
//! This file holds what a caller sees (the options, the report, [`check`])
//! and runs the checks; each check lives in its own file (`oversell`,
//! `lost`, `convergence`, `linearizable`, `availability`), all reading the
//! history as `index` sorts it out per item.

mod availability;
mod convergence;
mod index;
mod linearizable;
mod lost;
mod oversell;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::{History, Item, Outcome};

pub use self::availability::Availability;
use self::availability::availability;
use self::convergence::check_convergence;
pub use self::convergence::digest_disagreements;
use self::index::Index;
use self::linearizable::check_linearizability;
use self::lost::check_lost;
use self::oversell::check_oversell;

/// How much work the linearizability search may do.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Total wall time for the search, split over items by their number of
    /// operations (time one item leaves unused goes to the next).
    pub linearizability_budget: Duration,
    /// Upper bound on the operations of one search window.
    pub window_ops: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { linearizability_budget: Duration::from_secs(30), window_ops: 200 }
    }
}

/// The checker's verdict on one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub ops: u64,
    /// Operations answered `Held`, `Done` or `Levels`.
    pub ok: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Must be empty.
    pub oversell: Vec<String>,
    /// Must be empty.
    pub lost: Vec<String>,
    /// Must be empty.
    pub convergence: Vec<String>,
    pub linearizability: Vec<ItemVerdict>,
    pub availability: Availability,
    /// What the checker could not use or did not get (operations on ids no
    /// `Hold` returned, final state not collected, ...). Informational.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The linearizability verdict on one item.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemVerdict {
    pub item: Item,
    /// Windows searched.
    pub windows: u64,
    /// Windows with an order the model accepts.
    pub linearizable: u64,
    /// One message per failed window, naming the operations (history
    /// indices) of the smallest failing window found inside it.
    pub violations: Vec<String>,
    /// Windows the budget ran out on: neither pass nor fail.
    pub timed_out: u64,
}

impl Report {
    /// No oversell, no lost write, converged, and no proven
    /// linearizability violation (timed-out windows do not fail a run).
    pub fn passed(&self) -> bool {
        self.oversell.is_empty()
            && self.lost.is_empty()
            && self.convergence.is_empty()
            && self.linearizability.iter().all(|v| v.violations.is_empty())
    }

    /// A short human-readable table of the verdict.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "verdict        {verdict}");
        let _ = writeln!(
            out,
            "operations     {} (ok {}, refused {}, unknown {})",
            self.ops, self.ok, self.refused, self.unknown
        );
        for (name, list) in
            [("oversell", &self.oversell), ("lost writes", &self.lost), ("convergence", &self.convergence)]
        {
            match list.first() {
                None => {
                    let _ = writeln!(out, "{name:<14} none");
                }
                Some(first) => {
                    let _ = writeln!(out, "{name:<14} {} issue(s); first: {first}", list.len());
                }
            }
        }
        for v in &self.linearizability {
            let _ = writeln!(
                out,
                "linearizable   ({}, {}): {} window(s), {} linearizable, {} timed out, {} violation(s)",
                v.item.0,
                v.item.1,
                v.windows,
                v.linearizable,
                v.timed_out,
                v.violations.len()
            );
            if let Some(first) = v.violations.first() {
                let _ = writeln!(out, "               first: {first}");
            }
        }
        let (answered, attempted) =
            self.availability.per_second.iter().fold((0u64, 0u64), |(a, t), &(_, ok, all)| (a + ok, t + all));
        let _ = writeln!(out, "writes         {answered} of {attempted} answered");
        for (fault, ms) in &self.availability.recovery_ms {
            match ms {
                Some(ms) => {
                    let _ = writeln!(out, "recovery       {fault}: {ms} ms");
                }
                None => {
                    let _ = writeln!(out, "recovery       {fault}: no acknowledged write after it");
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note           {note}");
        }
        out
    }
}

/// Most messages kept in each of the report's lists; the last says how many
/// more there were.
const MESSAGES_MAX: usize = 50;

/// Checks a run's history. Never hangs: the linearizability search is bound
/// by `options.linearizability_budget`.
///
/// How the linearizability search stays sound and bounded:
///
/// * **Windows.** Each item's operations (sorted by invocation) are cut into
///   windows of at most `options.window_ops`, at quiescent cuts (nothing in
///   flight across the cut) where they come often enough, else where the
///   fewest operations are in flight.
/// * **Canonical starts.** A window is searched from a start computed from
///   the history, not carried over from the window before: every
///   acknowledged effect that completed before the cut applied; operations
///   in flight across the cut free to take their (acknowledged) effect at any
///   point, their answers unchecked; every earlier `Unknown` write free to
///   take effect or not. That start allows everything a real order could
///   have reached, so a window that fails from it is a proven violation, and
///   windows are independent: a timeout in one loses nothing elsewhere.
/// * **Search.** Wing–Gong depth-first search with memoization of (placed
///   set, state), pruned by a necessary condition (each op due soon must
///   still be able to pass its check) and by symmetry (identical writes go in
///   interval order); several short randomized attempts first, then an
///   exhaustive one (see `check_window` in `linearizable/attempts.rs`).
/// * **Timeouts.** A window the search times out on is split in two and the
///   halves searched, down to small windows.
/// * **Coverage.** Answers of operations in flight across a forced cut go
///   unchecked in that tiling, so stretches without quiescent cuts get a
///   second tiling offset by half a window, and answers still unchecked at
///   the end get windows of their own. What stays unchecked is counted in
///   `Report::notes`.
pub fn check(history: &History, options: &CheckOptions) -> Report {
    let index = Index::build(history);
    let mut report = Report { notes: index.notes.clone(), ..Report::default() };
    count_outcomes(history, &mut report);
    check_oversell(history, &index, &mut report);
    check_lost(history, &index, &mut report);
    check_convergence(history, &mut report);
    report.linearizability = check_linearizability(history, &index, options, &mut report.notes);
    report.availability = availability(history);
    cap(&mut report.oversell);
    cap(&mut report.lost);
    cap(&mut report.convergence);
    report
}

fn cap(list: &mut Vec<String>) {
    if list.len() > MESSAGES_MAX {
        let more = list.len() - MESSAGES_MAX;
        list.truncate(MESSAGES_MAX);
        list.push(format!("... and {more} more"));
    }
}

fn count_outcomes(history: &History, report: &mut Report) {
    for op in &history.ops {
        report.ops += 1;
        match op.outcome {
            Outcome::Held { .. } | Outcome::Done | Outcome::Levels { .. } => report.ok += 1,
            Outcome::Refused { .. } => report.refused += 1,
            Outcome::Unknown { .. } => report.unknown += 1,
        }
    }
}

fn item_name(item: &Item) -> String {
    format!("({}, {})", item.0, item.1)
}

//! Check 4, linearizability per item: each item's operations cut into
//! windows ([`plan`]), each window searched from its canonical start
//! ([`prefix`], [`window`]) for an order the model ([`model`]) accepts
//! ([`search`], [`attempts`]), a window that times out split and searched
//! in halves, answers left unchecked given windows of their own, and a
//! failed window reported shrunk ([`violation`]). See
//! [`check`](super::check) for why this is sound and bounded.

mod attempts;
mod model;
mod plan;
mod prefix;
mod search;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod violation;
mod window;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use self::attempts::check_window;
use self::plan::{Plan, plan_windows};
use self::prefix::{Hint, Prefix, invoke_at};
use self::search::Verdict;
use self::violation::{shrink, violation_message};
use super::index::{Index, Res};
use super::{CheckOptions, ItemVerdict, item_name};
use crate::history::History;

/// Most violation messages kept per item.
const VIOLATIONS_PER_ITEM_MAX: usize = 10;

/// Windows smaller than this make the cut arithmetic degenerate.
const WINDOW_OPS_MIN: usize = 8;

pub(super) fn check_linearizability(
    history: &History,
    index: &Index,
    options: &CheckOptions,
    notes: &mut Vec<String>,
) -> Vec<ItemVerdict> {
    let window_ops = options.window_ops.max(WINDOW_OPS_MIN);
    let plans: Vec<Plan> = index.seqs.iter().map(|seq| plan_windows(seq, window_ops)).collect();
    let mut entries_left: usize = plans.iter().map(Plan::size).sum();
    let started = Instant::now();
    let mut verdicts = Vec::with_capacity(index.items.len());
    for (item, plan) in plans.iter().enumerate() {
        let remaining = options.linearizability_budget.saturating_sub(started.elapsed());
        let item_budget = share(remaining, plan.size(), entries_left);
        entries_left -= plan.size();
        let mut checker = ItemChecker::new(history, index, item, plan, item_budget);
        for tiling in [&plan.primary, &plan.secondary] {
            let mut prefix = Prefix::new(index.initial[item]);
            let mut hint = Hint::new();
            for &(start, end) in tiling {
                checker.check_range(&mut prefix, &mut hint, start, end);
            }
        }
        checker.cover_gaps(window_ops);
        let (verdict, note) = checker.finish();
        verdicts.push(verdict);
        notes.extend(note);
    }
    verdicts
}

/// Smallest window a timed-out window is split down to.
const SPLIT_OPS_MIN: usize = 16;

/// The linearizability check of one item, window by window.
struct ItemChecker<'a> {
    history: &'a History,
    index: &'a Index,
    item: usize,
    plan: &'a Plan,
    budget: Duration,
    started: Instant,
    /// Entries of the planned windows not yet searched.
    left: usize,
    verdict: ItemVerdict,
    reported: HashSet<(usize, usize)>,
    failed: usize,
    /// Per position: whether a decided window checked its answer.
    checked: Vec<bool>,
}

impl<'a> ItemChecker<'a> {
    fn new(history: &'a History, index: &'a Index, item: usize, plan: &'a Plan, budget: Duration) -> Self {
        ItemChecker {
            history,
            index,
            item,
            plan,
            budget,
            started: Instant::now(),
            left: plan.size(),
            verdict: ItemVerdict {
                item: index.items[item].clone(),
                windows: 0,
                linearizable: 0,
                violations: Vec::new(),
                timed_out: 0,
            },
            reported: HashSet::new(),
            failed: 0,
            checked: vec![false; index.seqs[item].len()],
        }
    }

    /// Checks the planned window `[start, end)`, with its share of the time
    /// left.
    fn check_range(&mut self, prefix: &mut Prefix, hint: &mut Hint, start: usize, end: usize) {
        let budget = share(self.budget.saturating_sub(self.started.elapsed()), end - start, self.left);
        self.left -= end - start;
        self.check_split(prefix, hint, start, end, Instant::now() + budget);
    }

    /// Searches `[start, end)` until `deadline`. A window the search times
    /// out on is split where the fewest ops are in flight near its middle,
    /// and the halves are searched (each from its own canonical start, so
    /// still sound): backtracking cost grows exponentially with a window's
    /// size, and most of a window that is hard as a whole is easy in parts.
    /// The ops in flight across the new cut lose their check in this tiling.
    fn check_split(&mut self, prefix: &mut Prefix, hint: &mut Hint, start: usize, end: usize, deadline: Instant) {
        let seq = &self.index.seqs[self.item];
        prefix.advance(seq, start);
        let size = end - start;
        let splittable = size >= 2 * SPLIT_OPS_MIN;
        let now = Instant::now();
        let time = deadline.saturating_duration_since(now);
        // A window that may still be split gets a third of its time whole.
        let whole = if splittable { time / 3 } else { time };
        match check_window(seq, &self.index.holds, prefix, (start, end), hint, whole) {
            Verdict::Pass => {
                self.verdict.windows += 1;
                self.verdict.linearizable += 1;
                self.mark_checked(start, end);
            }
            Verdict::Fail => {
                self.verdict.windows += 1;
                self.mark_checked(start, end);
                self.report(start, end, whole);
            }
            Verdict::Timeout if splittable => {
                let cut = self.plan.best_cut(start + size / 3, start + 2 * size / 3);
                let halfway = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
                self.check_split(prefix, hint, start, cut, halfway);
                self.check_split(prefix, hint, cut, end, deadline);
            }
            Verdict::Timeout => {
                self.verdict.windows += 1;
                self.verdict.timed_out += 1;
            }
        }
    }

    /// Answers no decided window checked (in flight across a cut in both
    /// tilings, or in a window that timed out) get windows of their own:
    /// from the op's invocation to past its completion, merged with
    /// neighbours up to twice `window_ops`, with the time the item has left.
    fn cover_gaps(&mut self, window_ops: usize) {
        let seq = &self.index.seqs[self.item];
        let mut covers: Vec<(usize, usize)> = Vec::new();
        for at in 0..seq.len() {
            if self.checked[at] || seq[at].res == Res::Unknown {
                continue;
            }
            if covers.last().is_some_and(|&(_, end)| at < end) {
                continue;
            }
            let past = |p: usize| at + seq[at..].partition_point(|q| q.invoke_us <= seq[p].complete_us);
            let end = past(at);
            if end - at > 2 * window_ops {
                continue;
            }
            match covers.last_mut() {
                Some(last) if at <= last.1 && end - last.0 <= 2 * window_ops => last.1 = last.1.max(end),
                _ => covers.push((at, end)),
            }
        }
        self.left = covers.iter().map(|(s, e)| e - s).sum();
        let mut prefix = Prefix::new(self.index.initial[self.item]);
        let mut hint = Hint::new();
        for (start, end) in covers {
            self.check_range(&mut prefix, &mut hint, start, end);
        }
    }

    /// Marks the answers a decided window checked: those of its ops that
    /// complete before its end (one in flight across the end may go after
    /// it, unchecked).
    fn mark_checked(&mut self, start: usize, end: usize) {
        let seq = &self.index.seqs[self.item];
        let end_us = invoke_at(seq, end);
        for (p, checked) in seq[start..end].iter().zip(&mut self.checked[start..end]) {
            if p.res != Res::Unknown && p.complete_us < end_us {
                *checked = true;
            }
        }
    }

    /// Records a failed window, shrunk to a smallest failing one.
    fn report(&mut self, start: usize, end: usize, budget: Duration) {
        self.failed += 1;
        if self.verdict.violations.len() >= VIOLATIONS_PER_ITEM_MAX {
            return;
        }
        let index = self.index;
        let (s, e) = shrink(&index.seqs[self.item], &index.holds, index.initial[self.item], start, end, budget);
        if self.reported.insert((s, e)) {
            self.verdict.violations.push(violation_message(self.history, index, self.item, s, e));
        }
    }

    /// The verdict, and a note when some answers went unchecked.
    fn finish(mut self) -> (ItemVerdict, Option<String>) {
        if self.failed > self.verdict.violations.len() && self.verdict.violations.len() >= VIOLATIONS_PER_ITEM_MAX {
            self.verdict.violations.push(format!("... {} failed window(s) in all", self.failed));
        }
        let seq = &self.index.seqs[self.item];
        let known = seq.iter().filter(|p| p.res != Res::Unknown).count();
        let checked = self.checked.iter().filter(|&&c| c).count();
        let note = (checked < known).then(|| {
            format!(
                "linearizability of {}: {} of {known} answers unchecked (in timed-out windows, or in flight across \
                 window cuts in every tiling)",
                item_name(&self.verdict.item),
                known - checked
            )
        });
        (self.verdict, note)
    }
}

fn share(remaining: Duration, part: usize, whole: usize) -> Duration {
    if whole == 0 {
        return remaining;
    }
    let nanos = remaining.as_nanos().saturating_mul(part as u128) / whole as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

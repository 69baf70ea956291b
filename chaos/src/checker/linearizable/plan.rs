//! Where one item's windows go ([`plan_windows`]): quiescent cuts where
//! they come often enough, else forced cuts where the fewest ops are in
//! flight, with a second tiling, offset by half a window, of the stretches
//! that needed forced cuts.

use crate::checker::index::{Pos, Res};

/// Where one item's windows go: a tiling of the whole sequence, and a second
/// tiling of the stretches that needed forced cuts, offset by half a window.
pub(super) struct Plan {
    /// A tiling of the whole sequence: [start, end) positions.
    pub(super) primary: Vec<(usize, usize)>,
    /// A second tiling of the stretches that needed forced cuts.
    pub(super) secondary: Vec<(usize, usize)>,
    /// Per position (and one past the end): the known operations before it
    /// still in flight when it is invoked; 0 at a quiescent cut.
    in_flight: Vec<usize>,
}

impl Plan {
    pub(super) fn size(&self) -> usize {
        self.primary.iter().chain(&self.secondary).map(|(s, e)| e - s).sum()
    }

    /// The cut in `[lo, hi]` with the fewest operations in flight (the
    /// latest of equals).
    pub(super) fn best_cut(&self, lo: usize, hi: usize) -> usize {
        (lo..=hi).min_by_key(|&p| (self.in_flight[p], std::cmp::Reverse(p))).unwrap_or(hi)
    }
}

pub(super) fn plan_windows(seq: &[Pos], window_ops: usize) -> Plan {
    let n = seq.len();
    if n == 0 {
        return Plan { primary: Vec::new(), secondary: Vec::new(), in_flight: vec![0] };
    }
    // in_flight[p]: known operations before position p still in flight
    // when p is invoked. Zero means a quiescent cut.
    let mut completions: Vec<u64> = seq.iter().filter(|p| p.res != Res::Unknown).map(|p| p.complete_us).collect();
    completions.sort_unstable();
    let mut in_flight = Vec::with_capacity(n + 1);
    let mut known_before = 0usize;
    for p in seq {
        let done = completions.partition_point(|&c| c < p.invoke_us);
        in_flight.push(known_before - done.min(known_before));
        if p.res != Res::Unknown {
            known_before += 1;
        }
    }
    in_flight.push(0);
    let quiescent: Vec<usize> = (0..=n).filter(|&p| in_flight[p] == 0).collect();
    let mut plan = Plan { primary: Vec::new(), secondary: Vec::new(), in_flight };

    let mut start = 0usize;
    while start < n {
        let after = quiescent.partition_point(|&q| q <= start);
        let Some(&next_quiet) = quiescent.get(after) else { break };
        if next_quiet - start > window_ops {
            // No quiescent cut for too long: force cuts where the fewest
            // operations are in flight, windows of 1/2..2/3 of the bound.
            let mut cuts = vec![start];
            let mut at = start;
            while next_quiet - at > window_ops * 2 / 3 {
                let lo = at + window_ops / 2;
                let hi = (at + window_ops * 2 / 3).min(next_quiet - 1);
                at = plan.best_cut(lo, hi);
                cuts.push(at);
            }
            cuts.push(next_quiet);
            plan.primary.extend(cuts.windows(2).map(|w| (w[0], w[1])));
            let mut offsets = vec![start];
            for w in cuts.windows(2) {
                let middle = w[0] + (w[1] - w[0]) / 2;
                let lo = (middle.saturating_sub(window_ops / 8)).max(w[0] + 1);
                let hi = (middle + window_ops / 8).min(w[1] - 1);
                if lo <= hi {
                    offsets.push(plan.best_cut(lo, hi));
                }
            }
            offsets.push(next_quiet);
            offsets.dedup();
            plan.secondary.extend(offsets.windows(2).map(|w| (w[0], w[1])));
            start = next_quiet;
        } else {
            // Merge quiescent stretches up to the bound.
            let end = quiescent[quiescent.partition_point(|&q| q <= start + window_ops) - 1].max(next_quiet);
            plan.primary.push((start, end));
            start = end;
        }
    }
    plan
}

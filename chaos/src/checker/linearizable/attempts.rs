//! How one window is searched within its budget: a few quick randomized
//! attempts, each bounded in nodes and ordering candidates by a fresh guess
//! of when each op took effect, then the exhaustive search whose failure
//! alone is a violation ([`check_window`]).

use std::time::{Duration, Instant};

use super::model::Mode;
use super::prefix::{Hint, Prefix};
use super::search::{MEMO_STATES_MAX, Search, Verdict};
use super::window::Window;
use crate::checker::index::{HoldInfo, Pos};
use testkit::SplitMix;

/// Quick attempts per window before the exhaustive search.
const QUICK_ATTEMPTS_MAX: u32 = 24;
/// Nodes of the first quick attempt, per entry of the window; doubles every
/// four attempts.
const QUICK_NODES_PER_ENTRY: usize = 8;

/// Searches one window. Backtracking search time is heavy-tailed: an order
/// that is nearly right finds a linearization at once, a wrong early choice
/// can cost an exponential detour. So first a few quick attempts, each
/// bounded in nodes and each ordering candidates by a fresh guess of when
/// every op took effect (its completion minus a random share of its
/// latency, the share widening attempt by attempt; in Tally an op takes
/// effect when applied, just before the answer). Each attempt tries first
/// the start with the unknown writes the windows before needed already
/// applied (`hint`: usually right, and then nothing has to rediscover
/// them), then the canonical start. Last, with the time left, the
/// exhaustive search from the canonical start: only a failure of a search
/// from the canonical start that ran out of candidates (not of time or
/// nodes) is a violation. Updates `hint`.
pub(super) fn check_window(
    seq: &[Pos],
    holds: &[HoldInfo],
    prefix: &Prefix,
    (start, end): (usize, usize),
    hint: &mut Hint,
    budget: Duration,
) -> Verdict {
    let started = Instant::now();
    let deadline = started + budget;
    let quick_until = started + budget / 2;
    let hint_applies = hint.keys().any(|key| prefix.pending.get(key).is_some_and(|&count| count > 0));
    let hinted = hint_applies.then(|| Window::build(seq, holds, prefix, start, end, hint));
    let canonical = Window::build(seq, holds, prefix, start, end, &Hint::new());
    let mut rng = SplitMix::new(u64::try_from(start).unwrap_or(0) ^ 0x5eed);
    for attempt in 0..QUICK_ATTEMPTS_MAX {
        if Instant::now() >= quick_until {
            break;
        }
        let spread_per_mille = [0, 100, 250, 500, 1000][usize::try_from(attempt).unwrap_or(4).min(4)];
        let nodes_max = (QUICK_NODES_PER_ENTRY * canonical.entries.len().max(1)) << (attempt / 4);
        for (window, is_canonical) in hinted.iter().map(|w| (w, false)).chain([(&canonical, true)]) {
            let when = guess_times(window, spread_per_mille, &mut rng);
            match Search::run(window, quick_until, when, nodes_max) {
                (Verdict::Pass, applied) => {
                    if is_canonical {
                        *hint = applied;
                    } else {
                        for (key, count) in applied {
                            *hint.entry(key).or_insert(0) += count;
                        }
                    }
                    return Verdict::Pass;
                }
                (Verdict::Fail, _) if is_canonical => return Verdict::Fail,
                _ => {}
            }
        }
    }
    let when = guess_times(&canonical, 0, &mut rng);
    let (verdict, applied) = Search::run(&canonical, deadline, when, MEMO_STATES_MAX);
    if verdict == Verdict::Pass {
        *hint = applied;
    }
    verdict
}

/// Per entry of `window`: a guess of when it took effect, its completion
/// minus a random share (up to `spread_per_mille`) of its latency. Unknown
/// writes come after everything known.
fn guess_times(window: &Window, spread_per_mille: u64, rng: &mut SplitMix) -> Vec<u64> {
    window
        .entries
        .iter()
        .map(|e| {
            if e.mode == Mode::Unknown {
                return e.invoke_us;
            }
            let latency = e.complete_us.saturating_sub(e.invoke_us);
            let spread = latency.saturating_mul(spread_per_mille) / 1000;
            e.complete_us - if spread == 0 { 0 } else { rng.below(spread + 1) }
        })
        .collect()
}

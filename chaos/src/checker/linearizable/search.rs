//! The search for one window: a Wing–Gong depth-first search for an order
//! of the window's entries that respects real time and that the model
//! accepts, with memoization of (placed set, state) as in Porcupine, greedy
//! placement of ops that change nothing, pruning by a necessary condition,
//! and a bound on nodes and time.

use std::collections::HashSet;
use std::time::Instant;

use super::model::{Mode, St, apply, effect_of, fits, leaves_state};
use super::prefix::Hint;
use super::window::{Window, leaves_state_checked};
use crate::checker::index::{Act, Refusal, Res};

/// Most (linearized set, state) pairs one window's search may remember;
/// past it the window counts as timed out.
pub(super) const MEMO_STATES_MAX: usize = 1 << 20;

/// How many search steps between two looks at the clock.
const STEPS_PER_CLOCK_CHECK: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Pass,
    Fail,
    Timeout,
}

#[derive(Clone, Copy, Debug)]
enum Cand {
    Entry(usize),
    Group(usize),
}

/// One node of the depth-first search.
struct Frame {
    state: St,
    must_left: usize,
    /// Entries this node placed greedily (undone when it is left).
    greedy: Vec<usize>,
    cands: Vec<Cand>,
    next: usize,
    /// The entry the current child placed, to undo.
    child: Option<usize>,
    /// When this node was reached by applying unknown writes: the state
    /// before the first of them (see [`Search::enter`]).
    pre: Option<Box<St>>,
}

enum Enter {
    Pass,
    Seen,
    Timeout,
    Frame(Frame),
}

/// A Wing–Gong depth-first search for an order of a window's entries,
/// with memoization of (placed set, state) as in Porcupine.
pub(super) struct Search<'w> {
    window: &'w Window,
    /// The unknown writes of the order found, once found.
    applied: Hint,
    placed: Vec<u64>,
    /// Per entry: when this attempt guesses it took effect.
    when: Vec<u64>,
    /// Per twin class: its members' guessed times, sorted, and how many
    /// members are placed.
    class_times: Vec<Vec<u64>>,
    class_placed: Vec<usize>,
    /// Most nodes this attempt may visit.
    nodes_max: usize,
    memo: HashSet<Box<[u64]>>,
}

impl<'w> Search<'w> {
    /// Searches with candidates ordered by `when` (per entry), giving up
    /// (as a timeout) past `deadline` or `nodes_max` nodes.
    pub(super) fn run(window: &'w Window, deadline: Instant, when: Vec<u64>, nodes_max: usize) -> (Verdict, Hint) {
        let mut class_times = vec![Vec::new(); window.classes];
        for (i, class) in window.twin_class.iter().enumerate() {
            if let Some(c) = class {
                class_times[*c].push(when[i]);
            }
        }
        for times in &mut class_times {
            times.sort_unstable();
        }
        let mut search = Search {
            window,
            applied: Hint::new(),
            placed: vec![0; window.entries.len().div_ceil(64)],
            when,
            class_placed: vec![0; window.classes],
            class_times,
            nodes_max: nodes_max.min(MEMO_STATES_MAX),
            memo: HashSet::new(),
        };
        let verdict = search.search(deadline);
        (verdict, search.applied)
    }

    fn search(&mut self, deadline: Instant) -> Verdict {
        let window = self.window;
        let mut stack: Vec<Frame> = Vec::new();
        match self.enter(window.state.clone(), window.must_total(), None) {
            Enter::Pass => return Verdict::Pass,
            Enter::Seen => return Verdict::Fail,
            Enter::Timeout => return Verdict::Timeout,
            Enter::Frame(frame) => stack.push(frame),
        }
        let mut steps: u64 = 0;
        while let Some(top) = stack.last_mut() {
            steps += 1;
            if steps.is_multiple_of(STEPS_PER_CLOCK_CHECK) && Instant::now() >= deadline {
                return Verdict::Timeout;
            }
            if let Some(entry) = top.child.take() {
                self.unplace(entry);
            }
            let Some(&cand) = top.cands.get(top.next) else {
                let frame = stack.pop();
                for entry in frame.map(|f| f.greedy).unwrap_or_default() {
                    self.unplace(entry);
                }
                continue;
            };
            top.next += 1;
            let mut state = top.state.clone();
            let mut must_left = top.must_left;
            let pre = match cand {
                Cand::Entry(i) => {
                    let entry = &window.entries[i];
                    // After unknown writes, only an op that needed them may
                    // come next (else it could have gone first).
                    if entry.mode == Mode::Checked
                        && let Some(pre) = &top.pre
                        && apply(&mut St::clone(pre), entry.act, entry.slot, entry.mode)
                    {
                        continue;
                    }
                    if !apply(&mut state, entry.act, entry.slot, entry.mode) {
                        continue;
                    }
                    self.place(i);
                    top.child = Some(i);
                    if entry.must {
                        must_left -= 1;
                    }
                    match entry.mode {
                        Mode::Unknown => Some(top.pre.clone().unwrap_or_else(|| Box::new(top.state.clone()))),
                        Mode::Checked | Mode::Relaxed => None,
                    }
                }
                Cand::Group(g) => {
                    let group = &window.groups[g];
                    if !apply(&mut state, group.act, group.slot, Mode::Unknown) {
                        continue;
                    }
                    state.used[g] += 1;
                    Some(top.pre.clone().unwrap_or_else(|| Box::new(top.state.clone())))
                }
            };
            match self.enter(state, must_left, pre) {
                Enter::Pass => return Verdict::Pass,
                Enter::Timeout => return Verdict::Timeout,
                Enter::Seen => {}
                Enter::Frame(frame) => stack.push(frame),
            }
        }
        Verdict::Fail
    }

    #[inline(always)]
    fn is_placed(&self, i: usize) -> bool {
        self.placed[i / 64] & (1 << (i % 64)) != 0
    }

    fn place(&mut self, i: usize) {
        self.placed[i / 64] |= 1 << (i % 64);
        if let Some(c) = self.window.twin_class[i] {
            self.class_placed[c] += 1;
        }
    }

    fn unplace(&mut self, i: usize) {
        self.placed[i / 64] &= !(1 << (i % 64));
        if let Some(c) = self.window.twin_class[i] {
            self.class_placed[c] -= 1;
        }
    }

    /// The earliest completion of an unplaced known entry: nothing invoked
    /// after it may go next.
    fn horizon_us(&self) -> u64 {
        self.window
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| e.mode != Mode::Unknown && !self.is_placed(*i))
            .map(|(_, e)| e.complete_us)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Enters a search node: places every state-preserving entry that fits
    /// now (placing it now is never worse than later), then looks the node
    /// up, prunes it if some op due soon can no longer pass its check, and
    /// lists what may go next: known writes by this attempt's guess of when
    /// they took effect, then unknown writes.
    ///
    /// Unknown writes are only tried right before an operation that fails
    /// without them (`pre` is the state before them). That loses nothing:
    /// an unknown write is not checked against the levels (see [`apply`]),
    /// and the state of its hold cannot change by moving it past an op that
    /// passes without it, so it can always move later past such an op. That
    /// keeps failing searches from multiplying by every subset of pending
    /// unknown writes.
    fn enter(&mut self, state: St, mut must_left: usize, mut pre: Option<Box<St>>) -> Enter {
        let window = self.window;
        let entries = &window.entries;
        let mut greedy = Vec::new();
        let horizon_us = loop {
            if must_left == 0 {
                self.applied = window.applied(&state, &self.placed);
                return Enter::Pass;
            }
            let horizon_us = self.horizon_us();
            let next = (0..entries.len()).find(|&i| {
                let e = &entries[i];
                !self.is_placed(i)
                    && e.invoke_us <= horizon_us
                    && e.mode == Mode::Checked
                    && leaves_state(e.act, e.res)
                    && fits(&state, e.act, e.slot, e.res)
            });
            let Some(i) = next else { break horizon_us };
            self.place(i);
            greedy.push(i);
            if entries[i].must {
                must_left -= 1;
            }
        };
        if !greedy.is_empty() {
            // They needed the unknown writes before them.
            pre = None;
        }
        let key = self.key(&state, pre.as_deref());
        if !self.memo.insert(key) || !self.checks_reachable(&state, horizon_us) {
            for &i in &greedy {
                self.unplace(i);
            }
            return Enter::Seen;
        }
        if self.memo.len() > self.nodes_max {
            return Enter::Timeout;
        }
        let ready = |i: &usize| {
            !self.is_placed(*i)
                && entries[*i].invoke_us <= horizon_us
                && window.twins_before[*i].iter().all(|&a| self.is_placed(a))
        };
        let mut known: Vec<usize> = (0..entries.len())
            .filter(ready)
            .filter(|&i| entries[i].mode != Mode::Unknown && !leaves_state_checked(&entries[i]))
            .collect();
        // By when they most likely took effect (this attempt's guess). A
        // twin stands for its whole class: it is the one allowed to go,
        // whichever is meant, so it takes the class's next time; within a
        // class the earliest deadline fills it.
        known.sort_by_key(|&i| {
            let when = match window.twin_class[i] {
                Some(c) => self.class_times[c].get(self.class_placed[c]).copied().unwrap_or(u64::MAX),
                None => self.when[i],
            };
            (when, entries[i].complete_us, i)
        });
        // Unknown writes last: one is only worth trying where an op fails
        // without it.
        let mut cands: Vec<Cand> = known.into_iter().map(Cand::Entry).collect();
        cands.extend((0..entries.len()).filter(ready).filter(|&i| entries[i].mode == Mode::Unknown).map(Cand::Entry));
        cands.extend(
            window
                .groups
                .iter()
                .enumerate()
                .filter(|(g, group)| state.used[*g] < group.count)
                .map(|(g, _)| Cand::Group(g)),
        );
        Enter::Frame(Frame { state, must_left, greedy, cands, next: 0, child: None, pre })
    }

    /// Whether every op that must go soon can still pass its check: a read
    /// see its levels, an acknowledged hold or adjustment find the stock it
    /// needs, a refused one find it short. The unplaced ops that must
    /// precede it add their effects, those that may precede it widen the
    /// range. A necessary condition, so pruning on it loses nothing; it
    /// catches a wrong early choice at once instead of deep in the search.
    fn checks_reachable(&self, state: &St, horizon_us: u64) -> bool {
        let window = self.window;
        let entries = &window.entries;
        // What the pending unknown groups may add, the same for every check.
        let mut groups_low = [0i64; 3];
        let mut groups_high = [0i64; 3];
        for (g, group) in window.groups.iter().enumerate() {
            let left = i64::from(group.count.saturating_sub(state.used[g]));
            let (d_on_hand, d_reserved) = effect_of(group.act);
            for (k, d) in [d_on_hand, d_reserved, d_on_hand.saturating_sub(d_reserved)].into_iter().enumerate() {
                let d = d.saturating_mul(left);
                if d < 0 {
                    groups_low[k] = groups_low[k].saturating_add(d);
                } else {
                    groups_high[k] = groups_high[k].saturating_add(d);
                }
            }
        }
        let available = state.on_hand.saturating_sub(state.reserved);
        for c in 0..entries.len() {
            let check = &entries[c];
            if check.invoke_us > horizon_us {
                break;
            }
            // An op in flight across the window's end may go after it.
            if !check.must || check.mode != Mode::Checked || self.is_placed(c) {
                continue;
            }
            let need = match (check.act, check.res) {
                (Act::Read { on_hand, reserved }, Res::Ack) => Need::Levels(on_hand, reserved),
                (Act::Hold { qty, .. }, Res::Ack) => Need::AvailableAtLeast(qty),
                (Act::Adjust { delta }, Res::Ack) => Need::AvailableAtLeast(delta.saturating_neg()),
                (Act::Hold { qty, .. }, Res::Refused(Refusal::Stock)) => Need::AvailableBelow(qty),
                _ => continue,
            };
            // (low, high) of on hand, reserved, available.
            let base = [state.on_hand, state.reserved, available];
            let mut low = [0i64; 3];
            let mut high = [0i64; 3];
            for k in 0..3 {
                low[k] = base[k].saturating_add(groups_low[k]);
                high[k] = base[k].saturating_add(groups_high[k]);
            }
            for (i, (e, effect)) in entries.iter().zip(&window.effects).enumerate() {
                if e.invoke_us > check.complete_us {
                    break;
                }
                let Some(effect) = effect else { continue };
                if i == c || self.is_placed(i) {
                    continue;
                }
                let must = e.mode != Mode::Unknown && e.complete_us < check.invoke_us;
                for k in 0..3 {
                    let d = effect[k];
                    if must || d < 0 {
                        low[k] = low[k].saturating_add(d);
                    }
                    if must || d > 0 {
                        high[k] = high[k].saturating_add(d);
                    }
                }
            }
            let possible = match need {
                Need::Levels(on_hand, reserved) => {
                    low[0] <= on_hand && on_hand <= high[0] && low[1] <= reserved && reserved <= high[1]
                }
                Need::AvailableAtLeast(qty) => high[2] >= qty,
                Need::AvailableBelow(qty) => low[2] < qty,
            };
            if !possible {
                return false;
            }
        }
        true
    }

    fn key(&self, state: &St, pre: Option<&St>) -> Box<[u64]> {
        let per_state = 2 + state.slots.len().div_ceil(32) + state.used.len();
        let mut key = Vec::with_capacity(self.placed.len() + 2 * per_state + 1);
        key.extend_from_slice(&self.placed);
        push_state(&mut key, state);
        if let Some(pre) = pre {
            key.push(u64::MAX);
            push_state(&mut key, pre);
        }
        key.into_boxed_slice()
    }
}

/// What an op's check needs of the levels just before it.
#[derive(Clone, Copy, Debug)]
enum Need {
    Levels(i64, i64),
    AvailableAtLeast(i64),
    AvailableBelow(i64),
}

fn push_state(key: &mut Vec<u64>, state: &St) {
    key.push(u64::from_ne_bytes(state.on_hand.to_ne_bytes()));
    key.push(u64::from_ne_bytes(state.reserved.to_ne_bytes()));
    for chunk in state.slots.chunks(32) {
        key.push(chunk.iter().enumerate().fold(0u64, |word, (i, s)| word | (u64::from(*s) << (2 * i))));
    }
    key.extend(state.used.iter().map(|&u| u64::from(u)));
}

//! A hierarchical timer wheel for hold deadlines: O(1) insert and cancel.
//!
//! Six levels of 64 slots; a slot of level `L` spans `64^L` ms, so the wheel
//! spans 2^36 ms (about 2.2 years) at 1 ms resolution. A timer sits in the
//! lowest level whose window still contains its deadline; when time reaches
//! a higher-level slot its timers cascade down. Each slot is an intrusive
//! doubly linked list through `nodes`, indexed by the caller's id (the
//! reservation's slot), so insert and cancel touch a constant number of words.
//!
//! The wheel runs on log time only (`advance(to_ms)`); it never reads a
//! clock. Which timers expire by a time is exact; the order they come out in
//! is not meaningful, and the caller sorts them (by deadline, then creation)
//! so replicas that rebuilt their wheel from a snapshot expire in the same
//! order as replicas that never restarted.

// Slot arithmetic masks every value to six bits before narrowing it, so the
// casts below cannot truncate anything that matters.
#![allow(clippy::cast_possible_truncation)]

const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const LEVELS: usize = 6;
const SPAN_BITS: u32 = LEVEL_BITS * LEVELS as u32;
const NIL: u32 = u32::MAX;
const UNARMED: u16 = u16::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    deadline_ms: u64,
    prev: u32,
    next: u32,
    /// `level * 64 + slot`, or `UNARMED`.
    slot: u16,
}

const EMPTY_NODE: Node = Node { deadline_ms: 0, prev: NIL, next: NIL, slot: UNARMED };

#[derive(Clone, Debug)]
pub(crate) struct TimerWheel {
    elapsed_ms: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    nodes: Vec<Node>,
    armed: usize,
}

impl TimerWheel {
    pub fn new(now_ms: u64) -> Self {
        Self { elapsed_ms: now_ms, heads: [[NIL; SLOTS]; LEVELS], occupied: [0; LEVELS], nodes: Vec::new(), armed: 0 }
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// Arms timer `id` for `deadline_ms`. A deadline not after the wheel's
    /// time fires at the next `advance`. Re-arming an armed id moves it.
    pub fn insert(&mut self, id: u32, deadline_ms: u64) {
        let index = id as usize;
        if index >= self.nodes.len() {
            self.nodes.resize(index + 1, EMPTY_NODE);
        }
        if self.nodes[index].slot != UNARMED {
            self.cancel(id);
        }
        self.nodes[index].deadline_ms = deadline_ms;
        self.link(id);
        self.armed += 1;
    }

    /// Disarms timer `id`; false if it was not armed.
    pub fn cancel(&mut self, id: u32) -> bool {
        let Some(node) = self.nodes.get(id as usize).copied() else {
            return false;
        };
        if node.slot == UNARMED {
            return false;
        }
        let level = usize::from(node.slot) / SLOTS;
        let slot = usize::from(node.slot) % SLOTS;
        if node.prev == NIL {
            self.heads[level][slot] = node.next;
        } else {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        if self.heads[level][slot] == NIL {
            self.occupied[level] &= !(1 << slot);
        }
        self.nodes[id as usize] = Node { deadline_ms: node.deadline_ms, ..EMPTY_NODE };
        self.armed -= 1;
        true
    }

    /// Moves time to `to_ms` (never back) and appends every timer whose
    /// deadline is at or before it to `expired`, disarmed.
    pub fn advance(&mut self, to_ms: u64, expired: &mut Vec<u32>) {
        while let Some((level, slot, start_ms)) = self.next_slot() {
            if start_ms > to_ms {
                break;
            }
            self.elapsed_ms = self.elapsed_ms.max(start_ms);
            let mut cursor = self.heads[level][slot];
            self.heads[level][slot] = NIL;
            self.occupied[level] &= !(1 << slot);
            while cursor != NIL {
                let index = cursor as usize;
                let next = self.nodes[index].next;
                let deadline_ms = self.nodes[index].deadline_ms;
                self.nodes[index] = Node { deadline_ms, ..EMPTY_NODE };
                if deadline_ms <= self.elapsed_ms {
                    self.armed -= 1;
                    expired.push(cursor);
                } else {
                    // Cascade: the slot covered a span; place the timer anew.
                    debug_assert!(level > 0, "a level-0 slot holds one exact deadline");
                    self.link(cursor);
                }
                cursor = next;
            }
        }
        self.elapsed_ms = self.elapsed_ms.max(to_ms);
    }

    /// A lower bound on the earliest armed deadline: the start of the next
    /// occupied slot. Exact for timers in the current 64 ms window.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.next_slot().map(|(_, _, start_ms)| start_ms)
    }

    fn link(&mut self, id: u32) {
        let deadline_ms = self.nodes[id as usize].deadline_ms;
        let (level, slot) = self.place(deadline_ms);
        let head = self.heads[level][slot];
        let node = &mut self.nodes[id as usize];
        node.prev = NIL;
        node.next = head;
        node.slot = u16::try_from(level * SLOTS + slot).unwrap_or(UNARMED);
        debug_assert_ne!(node.slot, UNARMED);
        if head != NIL {
            self.nodes[head as usize].prev = id;
        }
        self.heads[level][slot] = id;
        self.occupied[level] |= 1 << slot;
    }

    /// The level whose window (relative to the wheel's time) holds the
    /// deadline, and the slot in it.
    fn place(&self, deadline_ms: u64) -> (usize, usize) {
        if deadline_ms <= self.elapsed_ms {
            // Due already: the current level-0 slot, so the next advance takes it.
            return (0, (self.elapsed_ms as usize) % SLOTS);
        }
        let top = LEVELS - 1;
        let top_shift = top as u32 * LEVEL_BITS;
        if deadline_ms - self.elapsed_ms >= (1 << SPAN_BITS) - (1 << top_shift) {
            // Beyond the wheel's span: park it in the top slot furthest from
            // now; when time reaches that slot it is placed again, closer.
            // (Its own slot could be the current one, which would cascade it
            // back into itself forever.)
            let now_slot = ((self.elapsed_ms >> top_shift) as usize) % SLOTS;
            return (top, (now_slot + SLOTS - 1) % SLOTS);
        }
        // Crossing into the next top-level window: the clamp keeps it in the
        // top level, in a slot behind the current one, so it starts later.
        let masked = ((self.elapsed_ms ^ deadline_ms) | (SLOTS as u64 - 1)).min((1 << SPAN_BITS) - 1);
        let significant = 63 - masked.leading_zeros();
        let level = (significant / LEVEL_BITS) as usize;
        let slot = ((deadline_ms >> (level as u32 * LEVEL_BITS)) as usize) % SLOTS;
        (level, slot)
    }

    /// The lowest level with an armed timer, its next occupied slot, and the
    /// time that slot starts. Lower levels always expire before higher ones,
    /// because a timer is placed in the lowest level whose window holds it.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * LEVEL_BITS;
            let now_slot = ((self.elapsed_ms >> shift) as usize) % SLOTS;
            let offset = occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
            let slot = (now_slot + offset) % SLOTS;
            let level_span = 1u64 << (shift + LEVEL_BITS);
            let level_start = self.elapsed_ms & !(level_span - 1);
            let mut start_ms = level_start + ((slot as u64) << shift);
            if slot < now_slot {
                start_ms += level_span;
            }
            return Some((level, slot, start_ms));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn advance(wheel: &mut TimerWheel, to_ms: u64) -> Vec<u32> {
        let mut expired = Vec::new();
        wheel.advance(to_ms, &mut expired);
        expired.sort_unstable();
        expired
    }

    #[test]
    fn timers_fire_exactly_when_time_reaches_their_deadline() {
        let mut wheel = TimerWheel::new(1_000);
        wheel.insert(1, 1_001);
        wheel.insert(2, 1_064);
        wheel.insert(3, 5_000_000);
        assert_eq!(advance(&mut wheel, 1_000), Vec::<u32>::new());
        assert_eq!(advance(&mut wheel, 1_001), vec![1]);
        assert_eq!(advance(&mut wheel, 1_063), Vec::<u32>::new());
        assert_eq!(advance(&mut wheel, 1_064), vec![2]);
        assert_eq!(advance(&mut wheel, 4_999_999), Vec::<u32>::new());
        assert_eq!(advance(&mut wheel, 5_000_000), vec![3]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn a_cancelled_timer_never_fires() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(7, 100);
        wheel.insert(8, 100);
        assert!(wheel.cancel(7));
        assert!(!wheel.cancel(7));
        assert_eq!(advance(&mut wheel, 1_000), vec![8]);
    }

    #[test]
    fn a_deadline_already_past_fires_on_the_next_advance() {
        let mut wheel = TimerWheel::new(500);
        wheel.insert(1, 10);
        assert_eq!(advance(&mut wheel, 500), vec![1]);
    }

    #[test]
    fn next_deadline_is_a_lower_bound_that_tightens() {
        let mut wheel = TimerWheel::new(0);
        assert_eq!(wheel.next_deadline_ms(), None);
        wheel.insert(1, 10_000);
        let bound = wheel.next_deadline_ms().unwrap_or(u64::MAX);
        assert!(bound <= 10_000);
        assert_eq!(advance(&mut wheel, bound), Vec::<u32>::new());
        let mut guard = 0;
        while wheel.next_deadline_ms() != Some(10_000) && guard < LEVELS {
            let next = wheel.next_deadline_ms().unwrap_or(u64::MAX);
            assert!(next <= 10_000);
            let _ = advance(&mut wheel, next);
            guard += 1;
        }
        assert_eq!(wheel.next_deadline_ms(), Some(10_000));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { id: u32, after_ms: u64 },
        Cancel { id: u32 },
        Advance { by_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..64, prop_oneof![0u64..130, 0u64..10_000, 0u64..(1 << 38)])
                .prop_map(|(id, after_ms)| Op::Insert { id, after_ms }),
            (0u32..64).prop_map(|id| Op::Cancel { id }),
            prop_oneof![0u64..70, 0u64..5_000, 0u64..(1 << 37)].prop_map(|by_ms| Op::Advance { by_ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// The wheel expires exactly what a sorted map of deadlines says.
        #[test]
        fn wheel_matches_a_sorted_model(start in 0u64..(1 << 40), ops in proptest::collection::vec(op(), 1..200)) {
            let mut wheel = TimerWheel::new(start);
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            let mut now = start;
            for op in ops {
                match op {
                    Op::Insert { id, after_ms } => {
                        wheel.insert(id, now + after_ms);
                        model.insert(id, now + after_ms);
                    }
                    Op::Cancel { id } => {
                        prop_assert_eq!(wheel.cancel(id), model.remove(&id).is_some());
                    }
                    Op::Advance { by_ms } => {
                        now += by_ms;
                        let got = advance(&mut wheel, now);
                        let want: Vec<u32> = model.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
                        model.retain(|_, d| *d > now);
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                if let (Some(bound), Some(earliest)) = (wheel.next_deadline_ms(), model.values().min()) {
                    prop_assert!(bound <= *earliest, "bound {} after earliest {}", bound, earliest);
                }
            }
        }
    }
}

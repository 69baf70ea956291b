//! A window ready to search: its entries (the window's ops and the
//! acknowledged ops in flight across its start), the groups of earlier
//! unknown writes, the start state, and the twins the search may take in one
//! order only (symmetry breaking).

use std::collections::HashMap;

use super::model::{CONFIRMED, Mode, NONE, RELEASED, St, apply, effect_of, leaves_state};
use super::prefix::{GroupKey, Hint, Prefix, invoke_at};
use crate::checker::index::{Act, HoldInfo, Pos, Res};

/// One operation in a window's search.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// Position in the item's sequence.
    at: usize,
    pub(super) invoke_us: u64,
    pub(super) complete_us: u64,
    pub(super) act: Act,
    pub(super) res: Res,
    pub(super) slot: Option<usize>,
    pub(super) mode: Mode,
    /// Must be placed before the window ends (completes before the cut).
    pub(super) must: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Group {
    pub(super) act: Act,
    pub(super) slot: Option<usize>,
    pub(super) count: u32,
}

/// A window ready to search: positions `[start, end)` of the item's
/// sequence from the canonical state at `start`.
pub(super) struct Window {
    pub(super) entries: Vec<Entry>,
    pub(super) groups: Vec<Group>,
    group_keys: Vec<GroupKey>,
    pub(super) state: St,
    /// Per entry: the identical entries that go before it (see
    /// [`Window::twins`]).
    pub(super) twins_before: Vec<Vec<usize>>,
    /// Per entry: its class of twins, if it has any.
    pub(super) twin_class: Vec<Option<usize>>,
    pub(super) classes: usize,
    /// Per entry: what it adds to (on hand, reserved, available) when it
    /// takes effect; `None` for a checked entry that changes nothing.
    pub(super) effects: Vec<Option<[i64; 3]>>,
}

impl Window {
    /// `hint`: unknown writes to take as having taken effect before the
    /// window (those a linearization of the windows before it needed).
    /// A pass from that start is a pass from the canonical one (apply them
    /// first, then follow); a failure from it proves nothing.
    pub(super) fn build(
        seq: &[Pos],
        holds: &[HoldInfo],
        prefix: &Prefix,
        start: usize,
        end: usize,
        hint: &Hint,
    ) -> Window {
        debug_assert_eq!(prefix.next, start);
        let end_us = invoke_at(seq, end);
        let mut entries: Vec<Entry> = Vec::with_capacity(end - start + prefix.in_flight.len());
        for &(complete_us, at) in &prefix.in_flight {
            let p = seq[at];
            entries.push(Entry {
                at,
                invoke_us: p.invoke_us,
                complete_us,
                act: p.act,
                res: p.res,
                slot: None,
                mode: Mode::Relaxed,
                must: complete_us < end_us,
            });
        }
        for (at, p) in seq.iter().enumerate().take(end).skip(start) {
            let mode = if p.res == Res::Unknown { Mode::Unknown } else { Mode::Checked };
            entries.push(Entry {
                at,
                invoke_us: p.invoke_us,
                complete_us: p.complete_us,
                act: p.act,
                res: p.res,
                slot: None,
                mode,
                must: mode == Mode::Checked && p.complete_us < end_us,
            });
        }
        entries.sort_by_key(|e| (e.invoke_us, e.at));

        let terminal = |hold: usize| matches!(prefix.status.get(&hold), Some(&CONFIRMED | &RELEASED));
        let (group_keys, mut groups): (Vec<GroupKey>, Vec<Group>) = prefix
            .pending
            .iter()
            .filter(|(key, _)| match key {
                GroupKey::Confirm(hold) | GroupKey::Release(hold) => !terminal(*hold),
                GroupKey::Hold(_) | GroupKey::Adjust(_) => true,
            })
            .map(|(key, &count)| (*key, Group { act: key.act(holds), slot: None, count }))
            .unzip();

        let mut slot_of: HashMap<usize, usize> = HashMap::new();
        let mut slots: Vec<u8> = Vec::new();
        let mut slot = |hold: Option<usize>| {
            hold.map(|hold| {
                *slot_of.entry(hold).or_insert_with(|| {
                    slots.push(prefix.status.get(&hold).copied().unwrap_or(NONE));
                    slots.len() - 1
                })
            })
        };
        for entry in &mut entries {
            entry.slot = slot(entry.act.hold());
        }
        for group in &mut groups {
            group.slot = slot(group.act.hold());
        }
        let used = vec![0; groups.len()];
        let mut state = St { on_hand: prefix.on_hand, reserved: prefix.reserved, slots, used };
        // The hinted unknown writes, as if they took effect first.
        let hinted: Vec<usize> = (0..groups.len()).filter(|&g| hint.contains_key(&group_keys[g])).collect();
        for g in hinted {
            let wanted = hint.get(&group_keys[g]).copied().unwrap_or(0).min(groups[g].count);
            for _ in 0..wanted {
                if !apply(&mut state, groups[g].act, groups[g].slot, Mode::Unknown) {
                    break;
                }
                groups[g].count -= 1;
            }
        }
        let (twins_before, twin_class) = Window::twins(&entries, &groups);
        let classes = twin_class.iter().flatten().max().map_or(0, |c| c + 1);
        let effects = entries
            .iter()
            .map(|e| {
                (!leaves_state_checked(e)).then(|| {
                    let (d_on_hand, d_reserved) = effect_of(e.act);
                    [d_on_hand, d_reserved, d_on_hand.saturating_sub(d_reserved)]
                })
            })
            .collect();
        Window { entries, groups, group_keys, state, twins_before, twin_class, classes, effects }
    }

    /// The unknown writes a passing search applied: its groups' uses and
    /// its placed unknown entries.
    pub(super) fn applied(&self, state: &St, placed: &[u64]) -> Hint {
        let mut applied = Hint::new();
        for (g, &used) in state.used.iter().enumerate() {
            if used > 0 {
                *applied.entry(self.group_keys[g]).or_insert(0) += used;
            }
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.mode == Mode::Unknown
                && placed[i / 64] & (1 << (i % 64)) != 0
                && let Some(key) = GroupKey::of(e.act)
            {
                *applied.entry(key).or_insert(0) += 1;
            }
        }
        applied
    }

    /// Symmetry breaking: two state-changing entries with the same effect
    /// and the same check (same adjustment, or holds of the same size whose
    /// ids nothing else in the window names) are twins. If A's interval is
    /// no later than B's at both ends, any order placing B before A stays
    /// valid with the two swapped, so the search only tries A first.
    fn twins(entries: &[Entry], groups: &[Group]) -> (Vec<Vec<usize>>, Vec<Option<usize>>) {
        let mut mentions: HashMap<usize, usize> = HashMap::new();
        for hold in entries.iter().map(|e| e.act.hold()).chain(groups.iter().map(|g| g.act.hold())).flatten() {
            *mentions.entry(hold).or_insert(0) += 1;
        }
        let signature = |e: &Entry| -> Option<(Mode, Act, Res)> {
            if leaves_state_checked(e) {
                return None;
            }
            match e.act {
                Act::Adjust { .. } => Some((e.mode, e.act, e.res)),
                Act::Hold { qty, hold } if hold.is_none_or(|h| mentions.get(&h) == Some(&1)) => {
                    Some((e.mode, Act::Hold { qty, hold: None }, e.res))
                }
                _ => None,
            }
        };
        let mut by_signature: HashMap<(Mode, Act, Res), Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(sig) = signature(e) {
                by_signature.entry(sig).or_default().push(i);
            }
        }
        let mut twins_before = vec![Vec::new(); entries.len()];
        let mut twin_class = vec![None; entries.len()];
        for (class, members) in by_signature.values().filter(|m| m.len() > 1).enumerate() {
            for &b in members {
                twin_class[b] = Some(class);
            }
            for &b in members {
                let (eb, key_b) = (&entries[b], (entries[b].invoke_us, entries[b].complete_us, b));
                twins_before[b] = members
                    .iter()
                    .copied()
                    .filter(|&a| {
                        let ea = &entries[a];
                        a != b
                            && ea.invoke_us <= eb.invoke_us
                            && ea.complete_us <= eb.complete_us
                            && (ea.invoke_us, ea.complete_us, a) < key_b
                    })
                    .collect();
            }
        }
        (twins_before, twin_class)
    }

    pub(super) fn must_total(&self) -> usize {
        self.entries.iter().filter(|e| e.must).count()
    }
}

/// A checked entry that leaves the state as it is goes only by the greedy
/// rule; it is not branched on.
pub(super) fn leaves_state_checked(entry: &Entry) -> bool {
    entry.mode == Mode::Checked && leaves_state(entry.act, entry.res)
}

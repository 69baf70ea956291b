//! Check 2, no lost acknowledged write: every node's final levels lie in
//! the range the acknowledged operations (± the unknown ones) allow, and
//! every acknowledged hold ends in the state its client was told.

use std::collections::HashMap;

use super::index::{Act, HoldInfo, Index, Refusal, Res, to_i64};
use super::{Report, item_name};
use crate::history::{History, Item};

/// What the clients learned about one acknowledged hold.
#[derive(Clone, Debug, Default)]
struct HoldFate {
    confirm_done: bool,
    release_done: bool,
    confirm_unknown: bool,
    release_unknown: bool,
    told_confirmed: bool,
    told_released: bool,
    told_expired: bool,
}

pub(super) fn check_lost(history: &History, index: &Index, report: &mut Report) {
    let learned = Learned::of(index);
    let allowed = Allowed::of(index, &learned);
    check_final_levels(history, index, &allowed, report);
    check_final_holds(history, index, &learned.fates, report);
}

/// What the clients learned: per hold its fate; per item what the
/// acknowledged adjustments added up to, and what the unknown adjustments
/// and holds may have added.
struct Learned {
    fates: Vec<HoldFate>,
    done_delta: Vec<i64>,
    unknown_up: Vec<i64>,
    unknown_down: Vec<i64>,
    unknown_held: Vec<i64>,
}

impl Learned {
    fn of(index: &Index) -> Learned {
        let n = index.items.len();
        let mut fates = vec![HoldFate::default(); index.holds.len()];
        let mut done_delta = vec![0i64; n];
        let mut unknown_up = vec![0i64; n];
        let mut unknown_down = vec![0i64; n];
        let mut unknown_held = vec![0i64; n];
        for meaning in &index.classified {
            let Some((item, act, res)) = *meaning else { continue };
            match (act, res) {
                (Act::Hold { qty, hold: None }, Res::Unknown) => {
                    unknown_held[item] = unknown_held[item].saturating_add(qty)
                }
                (Act::Adjust { delta }, Res::Ack) => done_delta[item] = done_delta[item].saturating_add(delta),
                (Act::Adjust { delta }, Res::Unknown) if delta > 0 => {
                    unknown_up[item] = unknown_up[item].saturating_add(delta);
                }
                (Act::Adjust { delta }, Res::Unknown) => unknown_down[item] = unknown_down[item].saturating_add(delta),
                (Act::Confirm { hold, .. } | Act::Release { hold, .. } | Act::Extend { hold }, _) => {
                    let fate = &mut fates[hold];
                    match (act, res) {
                        (Act::Confirm { .. }, Res::Ack) => {
                            fate.confirm_done = true;
                            fate.told_confirmed = true;
                        }
                        (Act::Release { .. }, Res::Ack) => {
                            fate.release_done = true;
                            fate.told_released = true;
                        }
                        (Act::Confirm { .. }, Res::Unknown) => fate.confirm_unknown = true,
                        (Act::Release { .. }, Res::Unknown) => fate.release_unknown = true,
                        (_, Res::Refused(Refusal::Confirmed)) => fate.told_confirmed = true,
                        (_, Res::Refused(Refusal::Released)) => fate.told_released = true,
                        (_, Res::Refused(Refusal::NotHeld)) => fate.told_expired = true,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Learned { fates, done_delta, unknown_up, unknown_down, unknown_held }
    }
}

/// The range of final levels the acknowledged operations allow, per item.
struct Allowed {
    on_hand_min: Vec<i64>,
    on_hand_max: Vec<i64>,
    reserved_min: Vec<i64>,
    reserved_max: Vec<i64>,
}

impl Allowed {
    fn of(index: &Index, learned: &Learned) -> Allowed {
        let n = index.items.len();
        let Learned { fates, done_delta, unknown_up, unknown_down, unknown_held } = learned;
        let mut on_hand_min: Vec<i64> =
            (0..n).map(|i| index.initial[i].saturating_add(done_delta[i]).saturating_add(unknown_down[i])).collect();
        let mut on_hand_max: Vec<i64> =
            (0..n).map(|i| index.initial[i].saturating_add(done_delta[i]).saturating_add(unknown_up[i])).collect();
        let mut reserved_min = vec![0i64; n];
        let mut reserved_max = unknown_held.clone();
        for (hold, fate) in fates.iter().enumerate() {
            let HoldInfo { item, qty, .. } = index.holds[hold];
            if fate.confirm_done {
                on_hand_min[item] = on_hand_min[item].saturating_sub(qty);
                on_hand_max[item] = on_hand_max[item].saturating_sub(qty);
            } else if !fate.release_done && (fate.confirm_unknown || fate.told_confirmed) {
                on_hand_min[item] = on_hand_min[item].saturating_sub(qty);
            }
            let ended = fate.confirm_done || fate.release_done;
            let maybe_ended = fate.confirm_unknown
                || fate.release_unknown
                || fate.told_confirmed
                || fate.told_released
                || fate.told_expired;
            if !ended {
                reserved_max[item] = reserved_max[item].saturating_add(qty);
                if !maybe_ended {
                    reserved_min[item] = reserved_min[item].saturating_add(qty);
                }
            }
        }
        Allowed { on_hand_min, on_hand_max, reserved_min, reserved_max }
    }
}

/// Every node's final levels lie in the allowed range.
fn check_final_levels(history: &History, index: &Index, allowed: &Allowed, report: &mut Report) {
    let Allowed { on_hand_min, on_hand_max, reserved_min, reserved_max } = allowed;
    if history.final_levels.is_empty() {
        report.notes.push("no final levels collected: final levels not checked".to_string());
    }
    for node in &history.final_levels {
        let levels: HashMap<&Item, (u64, u64)> = node.items.iter().map(|(i, h, r)| (i, (*h, *r))).collect();
        for (item, name) in index.items.iter().enumerate() {
            let Some(&(on_hand, reserved)) = levels.get(name) else {
                report.lost.push(format!("node {}: no final levels for {}", node.node, item_name(name)));
                continue;
            };
            let (on_hand, reserved) = (to_i64(on_hand), to_i64(reserved));
            if on_hand < on_hand_min[item] || on_hand > on_hand_max[item] {
                report.lost.push(format!(
                    "node {}: {} ends with on hand {on_hand}, but the acknowledged operations allow only [{}, {}]",
                    node.node,
                    item_name(name),
                    on_hand_min[item],
                    on_hand_max[item]
                ));
            }
            if reserved < reserved_min[item] || reserved > reserved_max[item] {
                report.lost.push(format!(
                    "node {}: {} ends with reserved {reserved}, but the acknowledged operations allow only [{}, {}]",
                    node.node,
                    item_name(name),
                    reserved_min[item],
                    reserved_max[item]
                ));
            }
        }
    }
}

/// Every acknowledged hold ends as its client was told.
fn check_final_holds(history: &History, index: &Index, fates: &[HoldFate], report: &mut Report) {
    if history.final_holds.is_empty() {
        if !index.holds.is_empty() {
            report.notes.push("no final reservation states collected: holds not checked one by one".to_string());
        }
        return;
    }
    let finals: HashMap<&str, &str> = history.final_holds.iter().map(|(id, s)| (id.as_str(), s.as_str())).collect();
    for (hold, fate) in fates.iter().enumerate() {
        let info = &index.holds[hold];
        let told: Vec<&str> =
            [(fate.told_confirmed, "CONFIRMED"), (fate.told_released, "RELEASED"), (fate.told_expired, "EXPIRED")]
                .iter()
                .filter(|(told, _)| *told)
                .map(|(_, state)| *state)
                .collect();
        let hold_op = history.ops[info.op].index;
        if told.len() > 1 {
            report.lost.push(format!(
                "reservation {} (Hold #{hold_op}): clients were told both {} and {}",
                info.id, told[0], told[1]
            ));
            continue;
        }
        let allowed: Vec<&str> = match told.first() {
            Some(state) => vec![state],
            None => {
                let mut allowed = vec!["HELD"];
                if fate.confirm_unknown {
                    allowed.push("CONFIRMED");
                }
                if fate.release_unknown {
                    allowed.push("RELEASED");
                }
                allowed
            }
        };
        let actual = finals.get(info.id.as_str()).copied().unwrap_or("MISSING");
        if !allowed.contains(&actual) {
            report.lost.push(format!(
                "reservation {} (Hold #{hold_op}, {}): final state {actual}, but its clients were told {}",
                info.id,
                item_name(&index.items[info.item]),
                allowed.join(" or ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::checker::tests::{Builder, confirm, held, hold, run};
    use crate::history::Outcome;

    #[test]
    fn an_acknowledged_hold_missing_from_the_final_levels_is_lost() {
        let history = Builder::new(5).op(1, hold(2), 0, 10, held("r1")).finish(5, 0);
        let report = run(&history);
        assert!(!report.passed());
        assert_eq!(report.lost.len(), 3, "one per node: {:?}", report.lost);
        assert!(report.lost[0].contains("reserved 0"), "{}", report.lost[0]);
    }

    #[test]
    fn an_acknowledged_hold_missing_from_the_final_holds_is_lost() {
        let mut history = Builder::new(5)
            .op(1, hold(2), 0, 10, held("r1"))
            .op(1, hold(1), 20, 30, held("r2"))
            .op(1, confirm("r2"), 40, 50, Outcome::Done)
            .finish(4, 2);
        history.final_holds = vec![("r1".into(), "MISSING".into()), ("r2".into(), "CONFIRMED".into())];
        let report = run(&history);
        assert_eq!(report.lost.len(), 1, "{:?}", report.lost);
        assert!(report.lost[0].contains("r1") && report.lost[0].contains("MISSING"), "{}", report.lost[0]);

        history.final_holds = vec![("r1".into(), "HELD".into()), ("r2".into(), "RELEASED".into())];
        let report = run(&history);
        assert_eq!(report.lost.len(), 1, "{:?}", report.lost);
        assert!(report.lost[0].contains("r2"), "{}", report.lost[0]);

        history.final_holds = vec![("r1".into(), "HELD".into()), ("r2".into(), "CONFIRMED".into())];
        assert!(run(&history).passed());
    }
}

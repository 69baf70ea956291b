//! Check 1, no oversell: no more units confirmed sold than were ever on
//! hand, and no read or final level with reserved above on hand.

use std::collections::HashSet;

use super::index::{Act, Index, Res};
use super::{Report, item_name};
use crate::history::History;

pub(super) fn check_oversell(history: &History, index: &Index, report: &mut Report) {
    let n = index.items.len();
    let mut confirmed = vec![0i64; n];
    let mut added = vec![0i64; n];
    let mut taken = vec![0i64; n];
    let mut counted: HashSet<usize> = HashSet::new();
    for (at, meaning) in index.classified.iter().enumerate() {
        let Some((item, act, res)) = *meaning else { continue };
        match (act, res) {
            (Act::Confirm { hold, qty }, Res::Ack) if counted.insert(hold) => {
                confirmed[item] = confirmed[item].saturating_add(qty);
            }
            (Act::Adjust { delta }, Res::Ack | Res::Unknown) if delta > 0 => {
                added[item] = added[item].saturating_add(delta);
            }
            (Act::Adjust { delta }, Res::Ack) if delta < 0 => taken[item] = taken[item].saturating_sub(delta),
            (Act::Read { on_hand, reserved }, Res::Ack) if reserved > on_hand => {
                report.oversell.push(format!(
                    "{}: read #{} saw reserved {reserved} > on hand {on_hand}",
                    item_name(&index.items[item]),
                    history.ops[at].index
                ));
            }
            _ => {}
        }
    }
    for item in 0..n {
        let most = index.initial[item].saturating_add(added[item]).saturating_sub(taken[item]);
        if confirmed[item] > most {
            report.oversell.push(format!(
                "{}: {} unit(s) confirmed sold but at most {most} were ever on hand (initial {}, +{} added, -{} \
                 taken away)",
                item_name(&index.items[item]),
                confirmed[item],
                index.initial[item],
                added[item],
                taken[item]
            ));
        }
    }
    for node in &history.final_levels {
        for (item, on_hand, reserved) in &node.items {
            if reserved > on_hand {
                report.oversell.push(format!(
                    "node {}: {} ends with reserved {reserved} > on hand {on_hand}",
                    node.node,
                    item_name(item)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::checker::tests::{Builder, confirm, held, hold, run, violations};
    use crate::history::Outcome;

    #[test]
    fn two_holds_acknowledged_for_the_last_unit_are_an_oversell() {
        let history = Builder::new(1)
            .op(1, hold(1), 0, 10, held("r1"))
            .op(2, hold(1), 20, 30, held("r2"))
            .op(1, confirm("r1"), 40, 50, Outcome::Done)
            .op(2, confirm("r2"), 60, 70, Outcome::Done)
            .finish(0, 0);
        let report = run(&history);
        assert!(!report.passed());
        assert_eq!(report.oversell.len(), 1, "{:?}", report.oversell);
        assert!(report.oversell[0].contains("2 unit(s) confirmed"), "{}", report.oversell[0]);
        // The second hold could not have been granted.
        assert!(violations(&report).iter().any(|v| v.contains("#1")), "{:?}", violations(&report));
    }
}

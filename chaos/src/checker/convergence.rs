//! Check 3, convergence: every node ends with the same levels and, per
//! shard, the same applied index and digest.

use std::collections::{BTreeMap, BTreeSet};

use super::{Report, item_name};
use crate::history::{History, Item};

pub(super) fn check_convergence(history: &History, report: &mut Report) {
    if let Some(first) = history.final_levels.first() {
        let reference: BTreeMap<&Item, (u64, u64)> = first.items.iter().map(|(i, h, r)| (i, (*h, *r))).collect();
        for other in &history.final_levels[1..] {
            let theirs: BTreeMap<&Item, (u64, u64)> = other.items.iter().map(|(i, h, r)| (i, (*h, *r))).collect();
            let names: BTreeSet<&Item> = reference.keys().chain(theirs.keys()).copied().collect();
            for name in names {
                let (a, b) = (reference.get(name), theirs.get(name));
                if a != b {
                    report.convergence.push(format!(
                        "{}: node {} has {}, node {} has {}",
                        item_name(name),
                        first.node,
                        levels_text(a),
                        other.node,
                        levels_text(b)
                    ));
                }
            }
        }
    }
    if let Some(first) = history.digests.first() {
        let reference: BTreeMap<u32, (Option<u64>, &str)> =
            first.shards.iter().map(|(s, i, d)| (*s, (*i, d.as_str()))).collect();
        for other in &history.digests[1..] {
            let theirs: BTreeMap<u32, (Option<u64>, &str)> =
                other.shards.iter().map(|(s, i, d)| (*s, (*i, d.as_str()))).collect();
            let shards: BTreeSet<u32> = reference.keys().chain(theirs.keys()).copied().collect();
            for shard in shards {
                let (a, b) = (reference.get(&shard), theirs.get(&shard));
                if a != b {
                    report.convergence.push(format!(
                        "shard {shard}: node {} has {}, node {} has {}",
                        first.node,
                        digest_text(a),
                        other.node,
                        digest_text(b)
                    ));
                }
            }
        }
    }
}

fn levels_text(levels: Option<&(u64, u64)>) -> String {
    match levels {
        Some((on_hand, reserved)) => format!("on hand {on_hand}, reserved {reserved}"),
        None => "no levels".to_string(),
    }
}

fn digest_text(digest: Option<&(Option<u64>, &str)>) -> String {
    match digest {
        Some((Some(index), digest)) => format!("index {index} digest {digest}"),
        Some((None, digest)) => format!("no index, digest {digest}"),
        None => "no digest".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::checker::tests::{Builder, held, hold, run};

    #[test]
    fn diverging_digests_and_levels_break_convergence() {
        let mut history = Builder::new(5).op(1, hold(2), 0, 10, held("r1")).finish(5, 2);
        history.digests[2].shards[1].2 = "fff".into();
        let report = run(&history);
        assert!(!report.passed());
        assert_eq!(report.convergence.len(), 1, "{:?}", report.convergence);
        assert!(report.convergence[0].contains("shard 1"), "{}", report.convergence[0]);

        let mut history = Builder::new(5).op(1, hold(2), 0, 10, held("r1")).finish(5, 2);
        history.final_levels[1].items[0].2 = 3;
        let report = run(&history);
        assert!(!report.convergence.is_empty());
    }
}

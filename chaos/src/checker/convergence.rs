//! Check 3, convergence: every node ends with the same levels and, per
//! shard, every node that hosts it (all of them unless the cluster is
//! placed) the same applied index and digest.

use std::collections::{BTreeMap, BTreeSet};

use super::{Report, item_name};
use crate::history::{History, Item, NodeDigests};

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
    let replicas = match history.replication_factor {
        0 => u32::try_from(history.digests.len()).unwrap_or(u32::MAX),
        placed => placed,
    };
    report.convergence.extend(digest_disagreements(&history.digests, replicas));
}

/// A shard's applied index and digest on one node.
type Applied<'a> = (Option<u64>, &'a str);

/// Per shard, the nodes that report it must be `replicas` many (every node,
/// unless the cluster is placed) and agree on its applied index and
/// digest: each way they do not, worded. Nodes listing no shard at all (a
/// node that did not answer) count as not reporting.
pub fn digest_disagreements(digests: &[NodeDigests], replicas: u32) -> Vec<String> {
    let mut by_shard: BTreeMap<u32, Vec<(u8, Applied<'_>)>> = BTreeMap::new();
    for node in digests {
        for (shard, applied, digest) in &node.shards {
            by_shard.entry(*shard).or_default().push((node.node, (*applied, digest.as_str())));
        }
    }
    let mut problems = Vec::new();
    if by_shard.is_empty() && !digests.is_empty() {
        problems.push("no node reported a digest".to_owned());
    }
    for (shard, hosts) in &by_shard {
        if hosts.len() != replicas as usize {
            let nodes: Vec<String> = hosts.iter().map(|(node, _)| node.to_string()).collect();
            problems.push(format!(
                "shard {shard}: {} nodes report it ({}), {replicas} should",
                hosts.len(),
                nodes.join(", ")
            ));
        }
        let (first, reference) = hosts[0];
        for (other, theirs) in &hosts[1..] {
            if *theirs != reference {
                problems.push(format!(
                    "shard {shard}: node {first} has {}, node {other} has {}",
                    digest_text(Some(&reference)),
                    digest_text(Some(theirs))
                ));
            }
        }
    }
    problems
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
    use crate::history::NodeDigests;

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

    #[test]
    fn a_placed_cluster_compares_each_shard_among_its_hosts() {
        // Three nodes, each of three shards on two of them.
        let mut history = Builder::new(5).op(1, hold(2), 0, 10, held("r1")).finish(5, 2);
        history.replication_factor = 2;
        let hosted = [(1, [0, 2]), (2, [0, 1]), (3, [1, 2])];
        history.digests = hosted
            .iter()
            .map(|(node, shards)| NodeDigests {
                node: *node,
                shards: shards.iter().map(|shard| (*shard, Some(4), format!("d{shard}"))).collect(),
            })
            .collect();
        assert!(run(&history).convergence.is_empty(), "{:?}", run(&history).convergence);
        // A host that disagrees, and a shard with one host too few.
        history.digests[1].shards[0].2 = "fff".into();
        history.digests[2].shards.retain(|(shard, ..)| *shard != 2);
        let problems = run(&history).convergence;
        assert!(problems.iter().any(|p| p.starts_with("shard 0: node 1 has")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("shard 2: 1 nodes report it")), "{problems:?}");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}

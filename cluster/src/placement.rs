//! The replica placement rule (docs/SCALE-OUT.md §3): which `replication_factor`
//! of the cluster's members hold each shard, and which of them should lead it.
//!
//! `plan` is a pure function of the members M, the shard count S, the
//! replication factor R and the shards' current voters: every node computes
//! the same plan from the same inputs (no hash seeds, no map iteration order,
//! members taken as a set). It only proposes; what a shard's voters *are* is
//! its Raft membership. `difference` is what a mover must do to get there.
//!
//! The rule, with N = |M| and R capped at N (N ≤ R: every node holds every
//! shard, the behaviour before placement):
//!
//! 1. **Keep.** Each shard keeps its current voters that are still members
//!    (others, and repeats, are dropped; shards past the end of `current` start
//!    empty, entries past S are ignored). A shard keeping more than R (R was
//!    lowered) drops the voters on the nodes holding the most replicas.
//! 2. **Trim.** A node holding more than ⌈S·R/N⌉ replicas leaves shards until it
//!    holds that many: full shards first, then the shards it scores lowest on.
//! 3. **Fill.** Shards in order 0..S take, up to R voters, the nodes holding the
//!    fewest replicas (counted over all shards), ties broken by the rendezvous
//!    `score(shard, node)`, highest first. From an empty `current` this is the
//!    greedy "fewest so far" pass.
//! 4. **Balance.** While one node holds two replicas more than another: a
//!    replica step 3 added shifts along a chain (node u gives its added replica
//!    of shard s1 to x1, which gives its added replica of s2 to x2, ..., to a
//!    node w holding two fewer than u), which costs no extra move; only when no
//!    such chain exists does a kept replica move from the fullest node to the
//!    emptiest (always possible: a shard of the fullest node lacks the
//!    emptiest), one move more. Steps 2 and 3 alone cannot promise ⌊S·R/N⌋ or
//!    ⌈S·R/N⌉ replicas per node from every current placement: counts 10, 10,
//!    10, 10, 8 are all within the bound, and a hole may have only nodes
//!    already in its shard left to take it.
//! 5. **Leaders.** Shards in order take as preferred leader the voter that leads
//!    the fewest shards so far (ties by the score). Greedy alone can leave a
//!    shard whose voters all lead one more than some other node (it does, even
//!    from scratch), so leadership then shifts along chains the same way (a
//!    node hands a shard it leads to a voter of that shard, which hands one of
//!    its own on, ...) until leader counts differ by at most one, which
//!    balanced replicas always allow.
//!
//! The chains find a balanced assignment of the added replicas whenever one
//! exists (no chain left means no assignment has a smaller sum of squared
//! counts), so starting from the current voters keeps moves few:
//!
//! * adding one node moves at most ⌈S·R/N⌉ replicas (the new node's share);
//! * removing one moves exactly the replicas it held whenever filling its
//!   holes can leave the others balanced, and a few more when it cannot (a
//!   node short of its share may already hold every shard that lost a replica;
//!   balance wins over the fewest moves); none when R ≥ N after the removal,
//!   as every shard held every node and just loses one.
//!
//! The current preferred leaders are not an input (leaders are cheap to move),
//! so a new plan may name other leaders.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
use std::iter::zip;

use crate::raft_types::NodeId;

/// Where each shard's replicas live, and which of them should lead it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index = shard number.
    pub shards: Vec<ShardPlacement>,
}

/// One shard's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlacement {
    /// The shard's voters, sorted ascending, distinct.
    pub voters: Vec<NodeId>,
    /// The voter that should lead the shard.
    pub preferred_leader: NodeId,
}

/// Why no plan could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("placement needs at least one member")]
    NoMembers,
    #[error("placement needs at least one shard")]
    ZeroShards,
    #[error("the replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error("node {0} is listed twice among the members")]
    DuplicateMember(NodeId),
}

/// What one shard's group must change to reach the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMove {
    pub shard: u32,
    /// Nodes to add as voters, ascending.
    pub add: Vec<NodeId>,
    /// Nodes to remove, ascending.
    pub remove: Vec<NodeId>,
}

impl Placement {
    /// Each shard's voters, in the shape `plan` takes as `current`.
    pub fn voter_sets(&self) -> Vec<Vec<NodeId>> {
        self.shards.iter().map(|shard| shard.voters.clone()).collect()
    }
}

/// Nodes each shard lives on among `members` nodes for the setting
/// `replication_factor` (`cluster.replication_factor`): 0, or any number at
/// or above the members, means every one of them.
pub fn replicas(replication_factor: u32, members: usize) -> u32 {
    let members = u32::try_from(members).unwrap_or(u32::MAX);
    if replication_factor == 0 { members } else { replication_factor.min(members) }
}

/// The plan for members M, S shards and replication factor R, starting from
/// `current` (each shard's voters now; `None` or an empty list for a fresh
/// cluster). The order of `members` does not matter.
pub fn plan(
    members: &[NodeId],
    shards: u32,
    replication_factor: u32,
    current: Option<&[Vec<NodeId>]>,
) -> Result<Placement, PlanError> {
    let members = sorted_members(members)?;
    if shards == 0 {
        return Err(PlanError::ZeroShards);
    }
    if replication_factor == 0 {
        return Err(PlanError::ZeroReplicationFactor);
    }
    let width = members.len().min(usize::try_from(replication_factor).unwrap_or(usize::MAX));
    let replicas_per_node_max = (shards as usize * width).div_ceil(members.len());
    let mut assignment = Assignment::keep(&members, shards as usize, current.unwrap_or(&[]));
    assignment.trim_to_width(width);
    assignment.trim_to(replicas_per_node_max);
    let kept = assignment.voters.clone();
    assignment.fill_to(width);
    assignment.balance(&kept);
    debug_assert!(assignment.is_balanced(width), "an unbalanced placement: {:?}", assignment.counts);
    let leaders = assignment.leaders();
    Ok(assignment.into_placement(&leaders))
}

/// Per shard, what the mover must do to go from `current` to `plan`: nodes to
/// add, nodes to remove. Only shards that change are listed; entries of
/// `current` past the plan's shards are ignored.
pub fn difference(current: &[Vec<NodeId>], plan: &Placement) -> Vec<ShardMove> {
    let moves = zip(0u32.., &plan.shards).filter_map(|(shard, target)| {
        let now: BTreeSet<NodeId> = current.get(shard as usize).into_iter().flatten().copied().collect();
        let add: Vec<NodeId> = target.voters.iter().copied().filter(|node| !now.contains(node)).collect();
        let remove: Vec<NodeId> = now.into_iter().filter(|node| !target.voters.contains(node)).collect();
        (!add.is_empty() || !remove.is_empty()).then_some(ShardMove { shard, add, remove })
    });
    moves.collect()
}

/// The rendezvous score of a node for a shard; higher wins a tie. A fixed
/// splitmix64-style mix of shard and node, the same on every platform and
/// Rust version (std's hashers promise neither).
pub fn score(shard: u32, node: NodeId) -> u64 {
    mixed_score(u64::from(shard), node)
}

/// `score` for a shard index as wide as a u64.
fn mixed_score(shard: u64, node: NodeId) -> u64 {
    const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    mix(node ^ mix(shard.wrapping_add(GOLDEN_GAMMA)))
}

/// splitmix64's finaliser: every input bit moves about half the output bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The members sorted ascending; none, or one twice, is an error.
fn sorted_members(members: &[NodeId]) -> Result<Vec<NodeId>, PlanError> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(PlanError::DuplicateMember(pair[0]));
    }
    if sorted.is_empty() {
        return Err(PlanError::NoMembers);
    }
    Ok(sorted)
}

/// A placement being built. Shards are indices (below the u32 shard count),
/// nodes are indices into the sorted members.
struct Assignment<'m> {
    members: &'m [NodeId],
    /// Per shard, its voters.
    voters: Vec<Vec<usize>>,
    /// Per node, how many shards it holds.
    counts: Vec<usize>,
}

impl<'m> Assignment<'m> {
    /// Step 1: each shard's current voters that are still members, once each.
    fn keep(members: &'m [NodeId], shards: usize, current: &[Vec<NodeId>]) -> Self {
        let voters: Vec<Vec<usize>> = (0..shards)
            .map(|shard| {
                let now = current.get(shard).into_iter().flatten();
                let mut kept: Vec<usize> = now.filter_map(|node| members.binary_search(node).ok()).collect();
                kept.sort_unstable();
                kept.dedup();
                kept
            })
            .collect();
        let mut counts = vec![0; members.len()];
        for &node in voters.iter().flatten() {
            counts[node] += 1;
        }
        Assignment { members, voters, counts }
    }

    fn score(&self, shard: usize, node: usize) -> u64 {
        // A shard index is below a u32 shard count: the same value as `score`'s.
        mixed_score(shard as u64, self.members[node])
    }

    fn holds(&self, shard: usize, node: usize) -> bool {
        self.voters[shard].contains(&node)
    }

    fn add(&mut self, shard: usize, node: usize) {
        debug_assert!(!self.holds(shard, node), "node {node} is already a voter of shard {shard}");
        self.voters[shard].push(node);
        self.counts[node] += 1;
    }

    fn remove(&mut self, shard: usize, node: usize) {
        debug_assert!(self.holds(shard, node), "node {node} is not a voter of shard {shard}");
        self.voters[shard].retain(|&voter| voter != node);
        self.counts[node] -= 1;
    }

    /// Step 1, R lowered: a shard with more than `width` voters drops those on
    /// the fullest nodes (ties: the lowest score leaves).
    fn trim_to_width(&mut self, width: usize) {
        for shard in 0..self.voters.len() {
            while self.voters[shard].len() > width {
                let fullest = self.voters[shard]
                    .iter()
                    .copied()
                    .max_by_key(|&node| (self.counts[node], Reverse(self.score(shard, node)), Reverse(node)));
                let Some(node) = fullest else { break };
                self.remove(shard, node);
            }
        }
    }

    /// Step 2: no node keeps more than `cap` replicas. It leaves full shards
    /// first (so one new node can take every hole), then those it scores
    /// lowest on. (Leaving one shard changes no other shard's rank, so one
    /// sort per node does.)
    fn trim_to(&mut self, cap: usize) {
        for node in 0..self.members.len() {
            let Some(excess) = self.counts[node].checked_sub(cap).filter(|&excess| excess > 0) else { continue };
            let mut held: Vec<usize> = (0..self.voters.len()).filter(|&shard| self.holds(shard, node)).collect();
            held.sort_by_key(|&shard| (Reverse(self.voters[shard].len()), self.score(shard, node), shard));
            for shard in held.into_iter().take(excess) {
                self.remove(shard, node);
            }
        }
    }

    /// Step 3: shards in order take the nodes holding the fewest replicas
    /// (ties: the highest score) until each has `width` voters.
    fn fill_to(&mut self, width: usize) {
        for shard in 0..self.voters.len() {
            while self.voters[shard].len() < width {
                let candidates = (0..self.members.len()).filter(|&node| !self.holds(shard, node));
                let emptiest =
                    candidates.min_by_key(|&node| (self.counts[node], Reverse(self.score(shard, node)), node));
                let Some(node) = emptiest else { break };
                self.add(shard, node);
            }
        }
    }

    /// Step 4: until replica counts differ by at most one, shift replicas the
    /// fill added along chains (free: the same number of moves), or, when no
    /// chain exists, move a kept replica from the fullest node to the emptiest
    /// (one move more). Each step lowers the sum of the squared counts, so the
    /// loop ends.
    fn balance(&mut self, kept: &[Vec<usize>]) {
        loop {
            if let Some(chain) = improving_chain(&self.counts, |node| self.added_moves(kept, node)) {
                for (shard, from, to) in chain {
                    self.remove(shard, from);
                    self.add(shard, to);
                }
            } else if !self.move_kept_replica() {
                return;
            }
        }
    }

    /// Where each replica the fill added to `node` (one not in `kept`) could
    /// go instead: (shard, a node not in that shard).
    fn added_moves(&self, kept: &[Vec<usize>], node: usize) -> Vec<(usize, usize)> {
        let mut moves = Vec::new();
        for (shard, voters) in self.voters.iter().enumerate() {
            if voters.contains(&node) && !kept[shard].contains(&node) {
                let free = (0..self.members.len()).filter(|to| !voters.contains(to));
                moves.extend(free.map(|to| (shard, to)));
            }
        }
        moves
    }

    /// One replica from the fullest node to the emptiest, if they differ by
    /// two or more. A shard of the fullest without the emptiest exists: were
    /// the emptiest in every shard the fullest holds, it would hold as many.
    fn move_kept_replica(&mut self) -> bool {
        let nodes = 0..self.members.len();
        let fullest = nodes.clone().max_by_key(|&node| (self.counts[node], Reverse(node)));
        let emptiest = nodes.min_by_key(|&node| (self.counts[node], node));
        let (Some(full), Some(empty)) = (fullest, emptiest) else { return false };
        if self.counts[full] < self.counts[empty] + 2 {
            return false;
        }
        let movable = (0..self.voters.len()).filter(|&shard| self.holds(shard, full) && !self.holds(shard, empty));
        let chosen = movable.max_by_key(|&shard| (self.score(shard, empty), Reverse(shard)));
        let Some(shard) = chosen else {
            debug_assert!(false, "no shard can move from node {full} to node {empty}");
            return false;
        };
        self.remove(shard, full);
        self.add(shard, empty);
        true
    }

    /// Every shard has `width` distinct voters; replica counts differ by at
    /// most one.
    fn is_balanced(&self, width: usize) -> bool {
        let distinct = |voters: &Vec<usize>| voters.iter().collect::<BTreeSet<_>>().len() == voters.len();
        let shaped = self.voters.iter().all(|voters| voters.len() == width && distinct(voters));
        let (low, high) = (self.counts.iter().min(), self.counts.iter().max());
        shaped && matches!((low, high), (Some(low), Some(high)) if high - low <= 1)
    }

    /// Step 5: each shard's preferred leader (a node index): greedily the
    /// voter leading the fewest so far, then shifted along chains of voters
    /// until leader counts differ by at most one.
    fn leaders(&self) -> Vec<usize> {
        let mut led = vec![0; self.members.len()];
        let mut leaders = Vec::with_capacity(self.voters.len());
        for (shard, voters) in self.voters.iter().enumerate() {
            debug_assert!(!voters.is_empty(), "shard {shard} has no voters");
            let least_leading =
                voters.iter().copied().min_by_key(|&node| (led[node], Reverse(self.score(shard, node)), node));
            // Every shard has a voter: R ≥ 1 and M is not empty.
            let leader = least_leading.unwrap_or(0);
            led[leader] += 1;
            leaders.push(leader);
        }
        loop {
            let mut handovers = vec![Vec::new(); self.members.len()];
            for (shard, &leader) in leaders.iter().enumerate() {
                handovers[leader].extend(self.voters[shard].iter().map(|&voter| (shard, voter)));
            }
            let Some(chain) = improving_chain(&led, |node| std::mem::take(&mut handovers[node])) else {
                let (low, high) = (led.iter().min(), led.iter().max());
                debug_assert!(matches!((low, high), (Some(low), Some(high)) if high - low <= 1), "leaders {led:?}");
                return leaders;
            };
            for (shard, from, to) in chain {
                led[from] -= 1;
                led[to] += 1;
                leaders[shard] = to;
            }
        }
    }

    /// The placement, voters as node ids ascending.
    fn into_placement(self, leaders: &[usize]) -> Placement {
        let shards = zip(self.voters, leaders).map(|(mut voters, &leader)| {
            voters.sort_unstable();
            ShardPlacement {
                voters: voters.into_iter().map(|node| self.members[node]).collect(),
                preferred_leader: self.members[leader],
            }
        });
        Placement { shards: shards.collect() }
    }
}

/// A chain along which one unit of load (a replica, a leadership) shifts from
/// a node to one carrying at least two fewer: the first node gives a unit in
/// some shard to the second, which gives one of its own to the third, and so
/// on. `moves(node)` lists the (shard, next node) a unit of `node`'s may go
/// to. Returned as (shard, from, to) steps; None when no chain exists, which
/// (when a balanced assignment exists) means the loads differ by at most one.
fn improving_chain(
    loads: &[usize],
    moves: impl FnMut(usize) -> Vec<(usize, usize)>,
) -> Option<Vec<(usize, usize, usize)>> {
    let lowest = loads.iter().copied().min()?;
    let mut starts: Vec<usize> = (0..loads.len()).filter(|&node| loads[node] >= lowest + 2).collect();
    if starts.is_empty() {
        return None;
    }
    starts.sort_by_key(|&node| (Reverse(loads[node]), node));
    let moves: Vec<Vec<(usize, usize)>> = (0..loads.len()).map(moves).collect();
    for start in starts {
        // Breadth first; `via[node]` is the (shard, node) it was reached from.
        let mut via: Vec<Option<(usize, usize)>> = vec![None; loads.len()];
        let mut seen = vec![false; loads.len()];
        seen[start] = true;
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for &(shard, next) in &moves[node] {
                if seen[next] {
                    continue;
                }
                seen[next] = true;
                via[next] = Some((shard, node));
                if loads[next] + 2 <= loads[start] {
                    let mut chain = Vec::new();
                    let mut at = next;
                    while let Some((shard, from)) = via[at] {
                        chain.push((shard, from, at));
                        at = from;
                    }
                    return Some(chain);
                }
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replicas held by each member, in the order of `members`.
    fn replica_counts(placement: &Placement, members: &[NodeId]) -> Vec<usize> {
        let holds = |node: &NodeId| placement.shards.iter().filter(|shard| shard.voters.contains(node)).count();
        members.iter().map(holds).collect()
    }

    /// Shards each member is preferred leader of, in the order of `members`.
    fn leader_counts(placement: &Placement, members: &[NodeId]) -> Vec<usize> {
        let leads = |node: &NodeId| placement.shards.iter().filter(|shard| shard.preferred_leader == *node).count();
        members.iter().map(leads).collect()
    }

    fn spread(counts: &[usize]) -> usize {
        counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0)
    }

    fn adds(moves: &[ShardMove]) -> usize {
        moves.iter().map(|shard| shard.add.len()).sum()
    }

    fn width(members: &[NodeId], replication_factor: u32) -> usize {
        members.len().min(replication_factor as usize)
    }

    /// Every shard has min(R, |M|) distinct members as voters, sorted, and one
    /// of them as preferred leader.
    fn assert_well_formed(placement: &Placement, members: &[NodeId], shards: u32, replication_factor: u32) {
        assert_eq!(placement.shards.len(), shards as usize);
        for (shard, placed) in placement.shards.iter().enumerate() {
            assert_eq!(placed.voters.len(), width(members, replication_factor), "shard {shard}: {placed:?}");
            assert!(placed.voters.windows(2).all(|pair| pair[0] < pair[1]), "shard {shard}: {placed:?}");
            assert!(placed.voters.iter().all(|node| members.contains(node)), "shard {shard}: {placed:?}");
            assert!(placed.voters.contains(&placed.preferred_leader), "shard {shard}: {placed:?}");
        }
    }

    /// Replica and preferred-leader counts per member differ by at most one.
    fn assert_balanced(placement: &Placement, members: &[NodeId]) {
        let replicas = replica_counts(placement, members);
        assert!(spread(&replicas) <= 1, "replicas per node {replicas:?} over {members:?}");
        let leaders = leader_counts(placement, members);
        assert!(spread(&leaders) <= 1, "preferred leaders per node {leaders:?} over {members:?}");
    }

    /// What `difference` asks, done to `current`.
    fn apply(current: &[Vec<NodeId>], moves: &[ShardMove], shards: usize) -> Vec<Vec<NodeId>> {
        let mut after: Vec<BTreeSet<NodeId>> =
            (0..shards).map(|shard| current.get(shard).into_iter().flatten().copied().collect()).collect();
        for shard_move in moves {
            let voters = &mut after[shard_move.shard as usize];
            voters.extend(shard_move.add.iter().copied());
            voters.retain(|node| !shard_move.remove.contains(node));
        }
        after.into_iter().map(|voters| voters.into_iter().collect()).collect()
    }

    fn members() -> impl Strategy<Value = Vec<NodeId>> {
        proptest::collection::btree_set(1u64..=16, 1..=9).prop_map(|set| set.into_iter().collect())
    }

    /// Shard voter lists drawn from the same ids as the members: some kept,
    /// some gone, repeats, too many, too few, too many shards or too few.
    fn current() -> impl Strategy<Value = Vec<Vec<NodeId>>> {
        proptest::collection::vec(proptest::collection::vec(1u64..=16, 0..=6), 0..=70)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_shard_gets_min_r_distinct_members_and_counts_balance_from_any_current(
            members in members(),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
            current in current(),
        ) {
            let placement = plan(&members, shards, replication_factor, Some(&current))?;
            assert_well_formed(&placement, &members, shards, replication_factor);
            assert_balanced(&placement, &members);
        }

        #[test]
        fn a_fresh_plan_balances_replicas_and_leaders(
            members in members(),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
        ) {
            let placement = plan(&members, shards, replication_factor, None)?;
            assert_eq!(&placement, &plan(&members, shards, replication_factor, Some(&[]))?);
            assert_well_formed(&placement, &members, shards, replication_factor);
            assert_balanced(&placement, &members);
            let replicas = shards as usize * width(&members, replication_factor);
            let per_node = replica_counts(&placement, &members);
            let (low, high) = (replicas / members.len(), replicas.div_ceil(members.len()));
            prop_assert!(per_node.iter().all(|&count| count == low || count == high), "{per_node:?}");
        }

        #[test]
        fn adding_a_node_moves_at_most_its_share(
            all in proptest::collection::btree_set(1u64..=16, 2..=9),
            newcomer in any::<prop::sample::Index>(),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
            earlier in current(),
        ) {
            let all: Vec<NodeId> = all.into_iter().collect();
            let newcomer = all[newcomer.index(all.len())];
            let before: Vec<NodeId> = all.iter().copied().filter(|&node| node != newcomer).collect();
            let current = plan(&before, shards, replication_factor, Some(&earlier))?.voter_sets();
            let placement = plan(&all, shards, replication_factor, Some(&current))?;
            assert_well_formed(&placement, &all, shards, replication_factor);
            assert_balanced(&placement, &all);
            let share = (shards as usize * width(&all, replication_factor)).div_ceil(all.len());
            let moved = adds(&difference(&current, &placement));
            prop_assert!(moved <= share, "{moved} replicas moved, the new node's share is {share}");
        }

        #[test]
        fn removing_a_node_moves_its_replicas_and_more_only_when_balance_needs_it(
            all in proptest::collection::btree_set(1u64..=16, 2..=9),
            leaver in any::<prop::sample::Index>(),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
            earlier in current(),
        ) {
            let all: Vec<NodeId> = all.into_iter().collect();
            let leaver = all[leaver.index(all.len())];
            let after: Vec<NodeId> = all.iter().copied().filter(|&node| node != leaver).collect();
            let current = plan(&all, shards, replication_factor, Some(&earlier))?.voter_sets();
            let placement = plan(&after, shards, replication_factor, Some(&current))?;
            assert_well_formed(&placement, &after, shards, replication_factor);
            assert_balanced(&placement, &after);
            let held = current.iter().filter(|voters| voters.contains(&leaver)).count();
            let moved = adds(&difference(&current, &placement));
            if replication_factor as usize > after.len() {
                // Every shard held every node and simply loses the one leaving.
                prop_assert_eq!(moved, 0);
            } else if holes_alone_can_balance(&current, &after, leaver) {
                prop_assert_eq!(moved, held);
            } else {
                // Some member short of its share already holds every shard
                // that lost a replica: a balanced plan must move more.
                prop_assert!(moved > held, "{moved} moved, {held} held");
            }
        }

        #[test]
        fn the_plan_is_deterministic_and_ignores_member_order(
            members in members(),
            shuffled in members().prop_flat_map(|members| Just(members).prop_shuffle()),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
            current in current(),
        ) {
            let first = plan(&members, shards, replication_factor, Some(&current))?;
            prop_assert_eq!(&first, &plan(&members, shards, replication_factor, Some(&current))?);
            let mut sorted = shuffled.clone();
            sorted.sort_unstable();
            prop_assert_eq!(
                plan(&shuffled, shards, replication_factor, Some(&current))?,
                plan(&sorted, shards, replication_factor, Some(&current))?
            );
        }

        #[test]
        fn difference_applied_to_current_gives_the_plan(
            members in members(),
            shards in 1u32..=64,
            replication_factor in 1u32..=5,
            current in current(),
        ) {
            let placement = plan(&members, shards, replication_factor, Some(&current))?;
            let moves = difference(&current, &placement);
            prop_assert!(moves.iter().all(|shard_move| !shard_move.add.is_empty() || !shard_move.remove.is_empty()));
            prop_assert!(moves.windows(2).all(|pair| pair[0].shard < pair[1].shard));
            prop_assert_eq!(apply(&current, &moves, shards as usize), placement.voter_sets());
        }
    }

    /// Whether balance can be reached after `leaver` leaves by filling only
    /// the holes it leaves: each hole to a member not in its shard, every
    /// member ending with ⌊T/N⌋ or ⌈T/N⌉ replicas. It can when one matching
    /// places every hole within the upper bounds and another meets the lower
    /// bounds (Mendelsohn–Dulmage: then one matching does both).
    fn holes_alone_can_balance(current: &[Vec<NodeId>], after: &[NodeId], leaver: NodeId) -> bool {
        let total: usize = current.iter().map(Vec::len).sum();
        let floor = total / after.len();
        let kept: Vec<usize> =
            after.iter().map(|node| current.iter().filter(|voters| voters.contains(node)).count()).collect();
        if kept.iter().any(|&count| count > floor + 1) {
            return false;
        }
        let holes = current.iter().filter(|voters| voters.contains(&leaver));
        let eligible: Vec<Vec<usize>> =
            holes.map(|voters| (0..after.len()).filter(|&node| !voters.contains(&after[node])).collect()).collect();
        let upper: Vec<usize> = kept.iter().map(|&count| floor + 1 - count).collect();
        let lower: Vec<usize> = kept.iter().map(|&count| floor.saturating_sub(count)).collect();
        matching_size(&eligible, &upper) == eligible.len()
            && matching_size(&eligible, &lower) == lower.iter().sum::<usize>()
    }

    /// The most holes that can go to eligible nodes, node n taking at most
    /// `capacity[n]` (augmenting paths).
    fn matching_size(eligible: &[Vec<usize>], capacity: &[usize]) -> usize {
        let mut assigned = vec![None; eligible.len()];
        let augment_from = |hole: usize, assigned: &mut Vec<Option<usize>>| {
            augment(hole, eligible, capacity, assigned, &mut vec![false; capacity.len()])
        };
        (0..eligible.len()).filter(|&hole| augment_from(hole, &mut assigned)).count()
    }

    fn augment(
        hole: usize,
        eligible: &[Vec<usize>],
        capacity: &[usize],
        assigned: &mut Vec<Option<usize>>,
        seen: &mut [bool],
    ) -> bool {
        for &node in &eligible[hole] {
            if seen[node] {
                continue;
            }
            seen[node] = true;
            let holders: Vec<usize> = (0..assigned.len()).filter(|&other| assigned[other] == Some(node)).collect();
            if holders.len() < capacity[node]
                || holders.into_iter().any(|other| augment(other, eligible, capacity, assigned, seen))
            {
                assigned[hole] = Some(node);
                return true;
            }
        }
        false
    }

    #[test]
    fn the_matching_model_finds_what_a_hand_count_does() {
        // Hole 0 can go to node 1 only, hole 1 to node 0 or 1.
        let eligible = [vec![1], vec![0, 1]];
        assert_eq!(matching_size(&eligible, &[1, 1]), 2);
        assert_eq!(matching_size(&eligible, &[0, 2]), 2);
        assert_eq!(matching_size(&eligible, &[2, 0]), 1);
    }

    #[test]
    fn removing_a_node_can_need_more_moves_than_it_held_to_stay_balanced() -> Result<(), PlanError> {
        // Node 1 leaves; its shards keep 2 and 3, which hold 5 replicas each
        // and need 6: only the other shards can give them one.
        let mut current = vec![vec![1, 2, 3]; 5];
        current.extend(vec![vec![4, 5, 6]; 5]);
        let after = [2, 3, 4, 5, 6];
        let placement = plan(&after, 10, 3, Some(&current))?;
        assert_eq!(replica_counts(&placement, &after), [6, 6, 6, 6, 6]);
        assert!(!holes_alone_can_balance(&current, &after, 1));
        assert_eq!(adds(&difference(&current, &placement)), 7);
        Ok(())
    }

    #[test]
    fn three_nodes_with_three_replicas_put_everyone_on_every_shard() -> Result<(), PlanError> {
        let placement = plan(&[3, 1, 2], 8, 3, None)?;
        assert!(placement.shards.iter().all(|shard| shard.voters == [1, 2, 3]));
        assert_eq!(leader_counts(&placement, &[1, 2, 3]).iter().sum::<usize>(), 8);
        assert!(spread(&leader_counts(&placement, &[1, 2, 3])) <= 1);
        Ok(())
    }

    #[test]
    fn fewer_members_than_the_replication_factor_put_everyone_on_every_shard() -> Result<(), PlanError> {
        let placement = plan(&[7, 9], 5, 3, None)?;
        assert!(placement.shards.iter().all(|shard| shard.voters == [7, 9]));
        Ok(())
    }

    #[test]
    fn five_nodes_sixteen_shards_three_replicas() -> Result<(), PlanError> {
        let members = [1, 2, 3, 4, 5];
        let placement = plan(&members, 16, 3, None)?;
        assert_well_formed(&placement, &members, 16, 3);
        let replicas = replica_counts(&placement, &members);
        assert!(replicas.iter().all(|&count| count == 9 || count == 10), "{replicas:?}");
        assert_eq!(replicas.iter().sum::<usize>(), 48);
        let leaders = leader_counts(&placement, &members);
        assert!(leaders.iter().all(|&count| count == 3 || count == 4), "{leaders:?}");
        Ok(())
    }

    #[test]
    fn a_fourth_node_takes_its_share_and_nothing_else_moves() -> Result<(), PlanError> {
        let before = plan(&[1, 2, 3], 12, 3, None)?.voter_sets();
        let placement = plan(&[1, 2, 3, 4], 12, 3, Some(&before))?;
        let moves = difference(&before, &placement);
        // 36 replicas over 4 nodes: 9 each, all 9 of node 4's come from the others.
        assert_eq!(adds(&moves), 9);
        assert!(moves.iter().all(|shard_move| shard_move.add == [4] && shard_move.remove.len() == 1));
        assert_eq!(replica_counts(&placement, &[1, 2, 3, 4]), [9, 9, 9, 9]);
        Ok(())
    }

    #[test]
    fn a_lowered_replication_factor_only_removes() -> Result<(), PlanError> {
        let before = plan(&[1, 2, 3, 4, 5], 10, 5, None)?.voter_sets();
        let placement = plan(&[1, 2, 3, 4, 5], 10, 3, Some(&before))?;
        let moves = difference(&before, &placement);
        assert_eq!(adds(&moves), 0);
        assert_eq!(moves.iter().map(|shard_move| shard_move.remove.len()).sum::<usize>(), 20);
        assert_balanced(&placement, &[1, 2, 3, 4, 5]);
        Ok(())
    }

    #[test]
    fn a_plan_from_its_own_voters_changes_nothing() -> Result<(), PlanError> {
        let first = plan(&[4, 8, 15, 16, 23, 42], 32, 3, None)?;
        let again = plan(&[4, 8, 15, 16, 23, 42], 32, 3, Some(&first.voter_sets()))?;
        assert!(difference(&first.voter_sets(), &again).is_empty());
        Ok(())
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(plan(&[], 4, 3, None), Err(PlanError::NoMembers));
        assert_eq!(plan(&[1, 2], 0, 3, None), Err(PlanError::ZeroShards));
        assert_eq!(plan(&[1, 2], 4, 0, None), Err(PlanError::ZeroReplicationFactor));
        assert_eq!(plan(&[1, 2, 3, 2], 4, 3, None), Err(PlanError::DuplicateMember(2)));
    }

    #[test]
    fn the_score_is_a_fixed_function() {
        // Pinned so a change of the mix (which would move replicas on an
        // upgrade) is a deliberate one.
        assert_eq!(score(0, 1), SCORE_0_1);
        assert_eq!(score(7, 3), SCORE_7_3);
        assert_ne!(score(0, 1), score(1, 0));
    }

    const SCORE_0_1: u64 = 11_385_487_063_155_714_807;
    const SCORE_7_3: u64 = 10_310_573_881_634_431_810;
}

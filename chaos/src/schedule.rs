//! What faults a run injects and when: every kind the issue names, a seeded
//! plan of steps, and the seeded randomness that picks their targets.
//!
//! A step injects one fault, keeps it for `hold`, then heals it (restart,
//! resume, links back to passing, clock back to true). Steps never overlap,
//! and a quiet gap follows each, so the report can tie every disturbance
//! and every recovery to one fault.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use testkit::SplitMix;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` a random node; restart it on its data after `hold`.
    Kill,
    /// `kill -9` the leader of the hottest shard; restart it after `hold`.
    KillLeader,
    /// SIGSTOP a random node; SIGCONT after `hold`.
    Pause,
    /// Cut a random node from both others.
    PartitionOne,
    /// Cut the hottest shard's leader from both others: a minority leader
    /// and a majority that elects a new one.
    PartitionLeader,
    /// Cut two nodes from each other only; the third sees both (a majority
    /// on each side that overlaps, Jepsen's "bridge").
    Bridge,
    /// The hottest shard's leader stops reaching the others; they still
    /// reach it.
    OneWay,
    /// Every link drops 30% of its frames.
    Drop,
    /// Every link delays each frame by 20 ms plus up to 20 ms (round trips
    /// of 40-80 ms, under the 100 ms heartbeat: FINDINGS.md #3).
    Delay,
    /// `kill -9` a random node, wipe its data directory, restart it empty
    /// after `hold` (a few election timeouts: ARCHITECTURE.md says why).
    WipeRestart,
    /// `kill -9` all three at once, restart them after `hold`.
    KillAll,
    /// Move the hottest shard leader's clock 25 hours ahead (past the
    /// clients' hold TTL) for `hold`.
    ClockJump,
    /// Add the spare node to every shard (learner catch-up, then joint
    /// consensus, one shard at a time); remove it again after `hold`.
    AddNode,
    /// Remove a random node from every shard, stop it and wipe it; after
    /// `hold`, start it empty and add it back.
    RemoveNode,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::PartitionOne,
        FaultKind::PartitionLeader,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::Drop,
        FaultKind::Delay,
        FaultKind::WipeRestart,
        FaultKind::KillAll,
        FaultKind::ClockJump,
        FaultKind::AddNode,
        FaultKind::RemoveNode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::PartitionOne => "partition-one",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::Drop => "drop",
            FaultKind::Delay => "delay",
            FaultKind::WipeRestart => "wipe-restart",
            FaultKind::KillAll => "kill-all",
            FaultKind::ClockJump => "clock-jump",
            FaultKind::AddNode => "add-node",
            FaultKind::RemoveNode => "remove-node",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// How long the fault is kept in a named (`each`) schedule.
    fn default_hold(self) -> Duration {
        match self {
            FaultKind::KillAll => Duration::from_secs(2),
            FaultKind::WipeRestart | FaultKind::AddNode | FaultKind::RemoveNode => Duration::from_secs(3),
            _ => Duration::from_secs(5),
        }
    }
}

/// Which faults a run draws from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Seeded random kinds, holds and gaps, until the run ends.
    Random,
    /// These kinds in a seeded order, each once per round, rounds repeated
    /// until the run ends; fixed holds and gaps.
    Each(Vec<FaultKind>),
}

impl Schedule {
    /// `random`, `all` (every kind), or a comma-separated list of kinds.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        match text {
            "random" => Ok(Schedule::Random),
            "all" => Ok(Schedule::Each(FaultKind::ALL.to_vec())),
            list => list
                .split(',')
                .map(|name| {
                    FaultKind::parse(name.trim()).ok_or_else(|| {
                        let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                        format!("unknown fault `{name}`; one of random, all, {}", names.join(", "))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Schedule::Each),
        }
    }
}

/// One planned fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub kind: FaultKind,
    /// From the start of the clients.
    pub at: Duration,
    pub hold: Duration,
}

/// Quiet time before the first fault.
const WARMUP: Duration = Duration::from_secs(3);
/// Quiet time after each step of a named schedule.
const GAP: Duration = Duration::from_secs(3);
/// Quiet time kept at the end of the run, after the last step healed.
const COOLDOWN: Duration = Duration::from_secs(3);

/// The steps of a run of `duration`.
pub fn plan(schedule: &Schedule, duration: Duration, seed: u64) -> Vec<Step> {
    let mut rng = rng(seed);
    let mut steps = Vec::new();
    let mut at = WARMUP;
    let mut round: Vec<FaultKind> = Vec::new();
    loop {
        let (kind, hold, gap) = match schedule {
            Schedule::Random => {
                let kind = FaultKind::ALL[rng.index(FaultKind::ALL.len())];
                let hold = Duration::from_millis(2_000 + 500 * rng.below(13));
                let hold = if kind == FaultKind::KillAll { hold.min(Duration::from_secs(3)) } else { hold };
                (kind, hold, Duration::from_millis(2_000 + 500 * rng.below(9)))
            }
            Schedule::Each(kinds) => {
                if kinds.is_empty() {
                    return steps;
                }
                if round.is_empty() {
                    round = kinds.clone();
                    rng.shuffle(&mut round);
                    round.reverse();
                }
                let kind = round.pop().unwrap_or(FaultKind::Kill);
                (kind, kind.default_hold(), GAP)
            }
        };
        if at + hold + COOLDOWN > duration {
            return steps;
        }
        steps.push(Step { kind, at, hold });
        at += hold + gap;
    }
}

/// The run's seeded choices (fault kinds, targets): the seed, mixed so a
/// run's schedule does not share its stream with anything else seeded alike.
pub fn rng(seed: u64) -> SplitMix {
    SplitMix::new(seed ^ 0x5DEE_CE66_D1CE_5EED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_schedule_of_every_kind_fits_each_once_in_two_minutes() {
        let steps = plan(&Schedule::parse("all").unwrap_or(Schedule::Random), Duration::from_secs(110), 42);
        let mut kinds: Vec<_> = steps.iter().map(|s| s.kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds, FaultKind::ALL.to_vec(), "{steps:?}");
        for pair in steps.windows(2) {
            assert!(pair[0].at + pair[0].hold < pair[1].at, "steps overlap: {pair:?}");
        }
        assert!(steps.last().is_some_and(|s| s.at + s.hold + COOLDOWN <= Duration::from_secs(110)));
    }

    #[test]
    fn plans_are_seeded() {
        let a = plan(&Schedule::Random, Duration::from_secs(600), 7);
        assert_eq!(a, plan(&Schedule::Random, Duration::from_secs(600), 7));
        assert_ne!(a, plan(&Schedule::Random, Duration::from_secs(600), 8));
        assert!(a.len() > 20);
    }

    #[test]
    fn schedules_parse_names_and_refuse_unknown_ones() {
        assert_eq!(Schedule::parse("random"), Ok(Schedule::Random));
        assert_eq!(Schedule::parse("kill,clock-jump"), Ok(Schedule::Each(vec![FaultKind::Kill, FaultKind::ClockJump])));
        assert!(Schedule::parse("kill,nope").is_err_and(|e| e.contains("nope")));
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Some(kind));
        }
    }
}

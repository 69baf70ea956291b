//! The WAL against a model: random appends, truncations, purges, votes and
//! restarts, with segments small enough to roll and be deleted often.

use engine::wal::{LogState, Wal};
use engine::{LogEntry, LogId, Vote, WalConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append { count: u64, new_term: bool },
    Truncate { back: usize },
    Purge { ahead: u64 },
    SaveVote { term: u64 },
    SaveCommitted { back: usize },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..6, proptest::bool::weighted(0.2)).prop_map(|(count, new_term)| Op::Append { count, new_term }),
        1 => (0usize..8).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..12).prop_map(|ahead| Op::Purge { ahead }),
        1 => (0u64..50).prop_map(|term| Op::SaveVote { term }),
        1 => (0usize..6).prop_map(|back| Op::SaveCommitted { back }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
struct Model {
    live: Vec<LogId>,
    purged: Option<LogId>,
    /// The last id the log has seen (live or purge point): appends follow it.
    last: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

fn config() -> WalConfig {
    WalConfig { segment_bytes_max: 600, ..WalConfig::default() }
}

fn check(wal: &Wal, model: &Model) -> Result<(), TestCaseError> {
    let last = model.live.last().copied().or(model.purged);
    prop_assert_eq!(wal.log_state(), LogState { purged: model.purged, last });
    let read: Vec<LogId> = wal
        .reader()
        .read_range(0, u64::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .iter()
        .map(|e| e.log_id)
        .collect();
    prop_assert_eq!(&read, &model.live);
    prop_assert_eq!(wal.vote(), model.vote);
    prop_assert_eq!(wal.committed(), model.committed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_wal_matches_its_model_across_restarts(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut wal = Wal::open(dir.path(), config()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut model = Model::default();
        let mut term = 1;
        for op in ops {
            match op {
                Op::Append { count, new_term } => {
                    if new_term {
                        term += 1;
                    }
                    term = term.max(model.last.map_or(0, |l| l.term));
                    let first = model.last.map_or(1, |l| l.index + 1);
                    let entries: Vec<LogEntry> =
                        (first..first + count).map(|index| LogEntry::blank(LogId::new(term, index))).collect();
                    wal.append(&entries).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.live.extend(entries.iter().map(|e| e.log_id));
                    model.last = model.live.last().copied();
                }
                Op::Truncate { back } => {
                    let keep = model.live.len().saturating_sub(back);
                    let keep_id = if keep == 0 { model.purged } else { Some(model.live[keep - 1]) };
                    wal.truncate_after(keep_id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.live.truncate(keep);
                    model.last = model.live.last().copied().or(model.purged);
                }
                Op::Purge { ahead } => {
                    let base = model.purged.map_or(0, |p| p.index);
                    let upto_index = base + 1 + ahead;
                    let upto = model
                        .live
                        .iter()
                        .find(|id| id.index == upto_index)
                        .copied()
                        .unwrap_or(LogId::new(term, upto_index));
                    if model.last.is_some_and(|l| upto.index <= l.index) && !model.live.contains(&upto) {
                        // A purge names a log id the log has (or one past its end).
                        continue;
                    }
                    wal.purge(upto).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.live.retain(|id| id.index > upto.index);
                    model.purged = Some(upto);
                    if model.last.is_none_or(|l| l.index < upto.index) {
                        model.last = Some(upto);
                        term = term.max(upto.term);
                    }
                }
                Op::SaveVote { term: vote_term } => {
                    let vote = Vote { term: vote_term, voted_for: Some(vote_term % 3), committed: vote_term % 2 == 0 };
                    wal.save_vote(vote).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.vote = Some(vote);
                }
                Op::SaveCommitted { back } => {
                    let committed = model.live.iter().rev().nth(back).copied();
                    wal.save_committed(committed).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.committed = committed;
                }
                Op::Reopen => {
                    wal.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    drop(wal);
                    wal = Wal::open(dir.path(), config()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            check(&wal, &model)?;
        }
        wal.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
        drop(wal);
        let wal = Wal::open(dir.path(), config()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(&wal, &model)?;
    }
}

//! Check 5, availability: per second, how many writes got an answer; per
//! fault, how long until the next acknowledged write. Informational: it
//! never fails a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Call, History, Outcome};

/// How the cluster answered writes while the faults were on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Availability {
    /// (second of the run, writes answered, writes attempted), every second
    /// from 0 to the last write's. A write is a hold, confirm, release or
    /// adjust, counted in the second it was invoked. "Answered" means
    /// `Held`, `Done` or `Refused`: a refusal is the service working
    /// (out of stock is an answer), only `Unknown` is a failure.
    pub per_second: Vec<(u64, u64, u64)>,
    /// (fault, ms from the fault to the completion of the first write
    /// invoked at or after it that was acknowledged `Held`/`Done`; `None`
    /// when no such write came).
    pub recovery_ms: Vec<(String, Option<u64>)>,
}

fn is_write(call: &Call) -> bool {
    matches!(call, Call::Hold { .. } | Call::Confirm { .. } | Call::Release { .. } | Call::Adjust { .. })
}

pub(super) fn availability(history: &History) -> Availability {
    let mut per_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // (complete, invoke) of acknowledged writes, for recovery times.
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for op in history.ops.iter().filter(|op| is_write(&op.call)) {
        let slot = per_second.entry(op.invoke_us / 1_000_000).or_default();
        slot.1 += 1;
        match op.outcome {
            Outcome::Held { .. } | Outcome::Done => {
                slot.0 += 1;
                acked.push((op.complete_us.max(op.invoke_us), op.invoke_us));
            }
            Outcome::Refused { .. } | Outcome::Levels { .. } => slot.0 += 1,
            Outcome::Unknown { .. } => {}
        }
    }
    let last = per_second.keys().next_back().copied();
    let per_second = match last {
        None => Vec::new(),
        Some(last) => (0..=last)
            .map(|second| {
                let (ok, all) = per_second.get(&second).copied().unwrap_or_default();
                (second, ok, all)
            })
            .collect(),
    };
    acked.sort_unstable();
    let recovery_ms = history
        .faults
        .iter()
        .map(|fault| {
            // Writes invoked after the fault: one in flight across it says
            // little about whether the cluster recovered.
            let first = acked.iter().find(|(_, invoke)| *invoke >= fault.at_us);
            (fault.what.clone(), first.map(|(complete, _)| (complete - fault.at_us) / 1_000))
        })
        .collect();
    Availability { per_second, recovery_ms }
}

#[cfg(test)]
mod tests {
    use crate::checker::tests::{Builder, held, hold, refused, run, unknown};
    use crate::history::FaultEvent;

    #[test]
    fn availability_counts_answers_and_recovery() {
        let mut history = Builder::new(5)
            .op(1, hold(1), 0, 10, held("r1"))
            .op(1, hold(1), 1_000_000, 1_500_000, unknown())
            .op(1, hold(1), 2_100_000, 2_200_000, refused("insufficient_stock"))
            .op(1, hold(1), 2_300_000, 2_400_000, held("r2"))
            .finish(5, 2);
        history.faults = vec![FaultEvent { at_us: 900_000, what: "kill node 1".into(), heals: false }];
        let report = run(&history);
        assert_eq!(report.availability.per_second, vec![(0, 1, 1), (1, 0, 1), (2, 2, 2)]);
        assert_eq!(report.availability.recovery_ms, vec![("kill node 1".to_string(), Some(1_500))]);
        assert!(report.summary().contains("kill node 1: 1500 ms"));
    }
}

//! A reservation across shards (DESIGN §4): hold on every shard, all or
//! nothing, without a distributed transaction.
//!
//! Every part is a `Hold` of the same reservation id with the same absolute
//! deadline, submitted to its shard concurrently. If every part holds, the
//! reservation is held (and, with `confirm`, each part is then confirmed).
//! If any part is refused or gets no outcome, every part that is or may be
//! held is released, and the answer lists what each part's hold said.
//!
//! The saga runs as its own task on the node's runtime: the caller awaits
//! its answer but does not own it, so a caller that gives up (an HTTP
//! request that timed out, a client that disconnected) does not cut the
//! compensations short. What a crash of this node cuts short is bounded by
//! the deadline: a held part nobody releases expires on its own.

use engine::cmd::{Confirm, Release};
use engine::ids::ReservationId;
use engine::{Command, Outcome};

use crate::error::SubmitError;
use crate::node::Node;

/// One shard's part of a reservation: a `Hold` command for `shard`.
#[derive(Clone, Debug)]
pub struct SagaPart {
    pub shard: u32,
    pub hold: Command,
}

/// How a reservation across shards ended.
#[derive(Debug)]
pub enum SagaOutcome {
    /// Every part held. The outcome of each part's hold, in part order, and
    /// with `confirm` the outcome of each part's confirm.
    Held { holds: Vec<Outcome>, confirms: Option<Vec<Result<Outcome, SubmitError>>> },
    /// Some part was refused, got no outcome or answered another reservation
    /// (its key's), and every part that held (or may have) was released.
    /// Each part's hold, in part order.
    Undone { holds: Vec<Result<Outcome, SubmitError>> },
}

impl Node {
    /// Holds every part of reservation `id`, or none (see the module doc).
    /// Runs to completion, compensations included, even if the returned
    /// future is dropped.
    pub async fn reserve_across_shards(
        &self,
        id: ReservationId,
        parts: Vec<SagaPart>,
        confirm: bool,
    ) -> Result<SagaOutcome, SubmitError> {
        debug_assert!(parts.iter().all(|part| matches!(&part.hold, Command::Hold(hold) if hold.id == id)));
        let node = self.clone();
        let saga = tokio::spawn(async move { node.run_saga(id, parts, confirm).await });
        saga.await.map_err(|error| SubmitError::Unknown {
            shard: u32::from(id.home_shard()),
            reason: format!("the saga task ended early: {error}"),
        })
    }

    async fn run_saga(&self, id: ReservationId, parts: Vec<SagaPart>, confirm: bool) -> SagaOutcome {
        let submits = parts.iter().map(|part| self.submit_to(part.shard, part.hold.clone()));
        let holds = futures_util::future::join_all(submits).await;
        // A part's shard that knows the hold's idempotency key answers the
        // reservation the key made, whatever its id: one of another id (a
        // request of another shape with the same key) is not this
        // reservation's part, so it does not count as held.
        let all_held =
            holds.iter().all(|hold| matches!(hold, Ok(Outcome::Held { reservation, .. }) if reservation.id == id));
        if !all_held {
            // A part "may be held" unless its shard refused it: a part with no
            // outcome is released too (a release of nothing is refused, harmless).
            let to_release: Vec<u32> = parts
                .iter()
                .zip(&holds)
                .filter(|(_, hold)| !matches!(hold, Ok(outcome) if outcome.is_refused()))
                .map(|(part, _)| part.shard)
                .collect();
            self.release_parts(id, &to_release).await;
            return SagaOutcome::Undone { holds };
        }
        let holds: Vec<Outcome> = holds.into_iter().flatten().collect();
        debug_assert_eq!(holds.len(), parts.len());
        let confirms = if confirm {
            let submits =
                parts.iter().map(|part| self.submit_to(part.shard, Command::Confirm(Confirm { principal: None, id })));
            Some(futures_util::future::join_all(submits).await)
        } else {
            None
        };
        SagaOutcome::Held { holds, confirms }
    }

    async fn release_parts(&self, id: ReservationId, shards: &[u32]) {
        let releases =
            shards.iter().map(|&shard| self.submit_to(shard, Command::Release(Release { principal: None, id })));
        for (shard, answer) in shards.iter().zip(futures_util::future::join_all(releases).await) {
            if let Err(error) = answer {
                // The part expires at its deadline anyway.
                tracing::warn!(%id, shard, %error, "could not release a saga part; it will expire");
            }
        }
    }
}

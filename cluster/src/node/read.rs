//! Reads: `query` runs an engine `Query` on a shard, linearizably (through
//! a read index the leader confirms) or stale (this node's copy at once),
//! and answers a plain value; on a node that does not host the shard it
//! asks one that does (`route`); the node-local views of every shard for
//! operators (live holds, digests, backup views) are queries too.
//!
//! The closure reads `read` and `read_stale` remain for tests, which check
//! whatever they like of a state, in `fault-injection` builds only: a
//! closure cannot cross the network, so production callers ask queries
//! (docs/SCALE-OUT.md §7), and a release build has nothing else.

use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::ShardState;
use engine::actor::Read;
use engine::read::{Answer, FromAnswer, Query};
use engine::state::ShardStats;
use openraft::ReadPolicy;

use super::retry::Retry;
use super::route::{Asked, Route, ShardRoute};
use super::start::shard_dir;
use super::{BackupView, Group, Node, Stale};
use crate::error::ReadError;
use crate::health::FailureCause;
use crate::wire::{Request, Response};

/// How a query is served (DESIGN §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The answer reflects every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// This node's copy at once; it may be behind the leader.
    Stale,
}

impl Node {
    /// Runs `query` on `shard` with the asked consistency: on this node's
    /// copy when it hosts the shard, else on a node that does (`route`).
    pub async fn query(&self, shard: u32, query: Query, consistency: Consistency) -> Result<Answer, ReadError> {
        match self.inner.route(shard) {
            None => Err(ReadError::Invalid(format!("shard {shard} does not exist"))),
            Some(Route::Local(_)) => self.query_here(shard, query, consistency).await,
            Some(Route::Remote(route)) => self.query_remote(shard, route, query, consistency).await,
        }
    }

    /// Runs `query` on this node's copy of `shard`. A query that finds the
    /// shard's state corrupt (an arena lookup out of bounds) stops the
    /// shard on this node, as a failed check after a snapshot would, and
    /// answers `ShardStopped`: never a guessed answer.
    pub(super) async fn query_here(
        &self,
        shard: u32,
        query: Query,
        consistency: Consistency,
    ) -> Result<Answer, ReadError> {
        let run = move |state: &ShardState| state.query(&query);
        let answer = match consistency {
            Consistency::Linearizable => self.linearizable(shard, run).await?,
            Consistency::Stale => self.stale(shard, run).await?.value,
        };
        answer.map_err(|corrupt| {
            let detail = format!("a read found the state broken: {corrupt}");
            self.stop_shard(shard, detail.clone());
            ReadError::ShardStopped { shard, cause: FailureCause::InvariantBroken, detail }
        })
    }

    /// Asks a node that hosts `shard` to run `query` (`Request::Query`):
    /// the leader last heard of, else each peer in turn, each answer's
    /// guess of the leader tried next, within the retry window. The node
    /// that answers reads as this one would (a read index for a
    /// linearizable query), so the consistency is the same.
    async fn query_remote(
        &self,
        shard: u32,
        route: &ShardRoute,
        query: Query,
        consistency: Consistency,
    ) -> Result<Answer, ReadError> {
        let inner = &self.inner;
        let linearizable = consistency == Consistency::Linearizable;
        let request = Request::Query { group: shard, linearizable, query };
        let take = |answer| match answer {
            Response::Answered(answer) => Ok(*answer),
            other => Err(other),
        };
        match inner.ask_serving(route, &request, take).await {
            Asked::Answered { value, .. } => Ok(value),
            Asked::Refused { node, reason } => {
                Err(ReadError::Invalid(format!("node {node} refused the query: {reason}")))
            }
            Asked::ShuttingDown => Err(ReadError::ShuttingDown),
            Asked::Unavailable { .. } => {
                Err(ReadError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms })
            }
        }
    }

    /// Reads `shard` linearizably with a closure: the answer reflects every
    /// write acknowledged before the read began. For tests, which read
    /// whatever they check of a state; production code asks `query`, whose
    /// question and answer are values that can cross the network (so this
    /// exists only in `fault-injection` builds, the tests').
    #[cfg(feature = "fault-injection")]
    pub async fn read<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        self.linearizable(shard, read).await
    }

    /// Reads this node's copy of `shard` at once with a closure. It may be
    /// behind the leader. For tests, as `read` is.
    #[cfg(feature = "fault-injection")]
    pub async fn read_stale<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<Stale<R>, ReadError> {
        self.stale(shard, read).await
    }

    /// Runs `read` on `shard` once this node has applied the leader's read
    /// index.
    async fn linearizable<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        let inner = &self.inner;
        let group = inner.group(shard).ok_or_else(|| ReadError::Invalid(format!("shard {shard} does not exist")))?;
        if let Some(failure) = group.health.failure() {
            return Err(ReadError::stopped(failure));
        }
        let index = self.read_index(&group).await?;
        let timeout = inner.rpc_timeout();
        // Wait until this node has applied what the leader committed.
        if let Some(index) = index
            && group.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "linearizable read").await.is_err()
        {
            return Err(ReadError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms });
        }
        let answer = group.actor.send(Read::new(read)).await.map_err(|_| ReadError::ShuttingDown)?;
        Ok(answer.0)
    }

    /// Runs `read` on this node's copy of `shard` at once.
    async fn stale<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<Stale<R>, ReadError> {
        let group =
            self.inner.group(shard).ok_or_else(|| ReadError::Invalid(format!("shard {shard} does not exist")))?;
        // A stopped copy is no longer kept up (or not to be trusted).
        if let Some(failure) = group.health.failure() {
            return Err(ReadError::stopped(failure));
        }
        let answer = group
            .actor
            .send(Read::new(move |state| {
                let applied_index = state.last_applied().map(|id| id.index);
                (read(state), applied_index)
            }))
            .await
            .map_err(|_| ReadError::ShuttingDown)?;
        let (value, applied_index) = answer.0;
        Ok(Stale { value, applied_index })
    }

    async fn read_index(&self, group: &Group) -> Result<Option<u64>, ReadError> {
        let inner = &self.inner;
        let shard = group.shard;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        loop {
            if inner.shut_down.load(Ordering::Acquire) {
                return Err(ReadError::ShuttingDown);
            }
            if let Some(failure) = group.health.failure() {
                return Err(ReadError::stopped(failure));
            }
            match group.raft.current_leader().await {
                Some(leader) if leader == inner.id => {
                    let confirm = group.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                    if let Ok(Ok(read)) = tokio::time::timeout(inner.rpc_timeout(), confirm).await {
                        return Ok(Some(read.index()));
                    }
                }
                Some(leader) => {
                    let request = Request::ReadIndex { group: shard };
                    if let Ok(Response::ReadIndex { index }) =
                        inner.transport.call(leader, &request, inner.rpc_timeout()).await
                    {
                        return Ok(index);
                    }
                }
                None => {}
            }
            if !retry.pause().await {
                return Err(ReadError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms });
            }
        }
    }

    /// Live holds summed over every shard: this node's copy of the shards
    /// it serves, a host's (a stale read) of the others. Every replica
    /// applies the same holds, so this is the cluster's count as far as the
    /// copies read have applied, not a share of it. A shard actor answers
    /// between applies, so this may wait behind them: `None` when some
    /// shard does not answer within `timeout`.
    pub async fn live_holds(&self, timeout: Duration) -> Option<u64> {
        let reads = (0..self.inner.config.shards).map(|shard| async move {
            let answer = self.query(shard, Query::Stats, Consistency::Stale).await?;
            ShardStats::from_answer(answer).map_err(|error| ReadError::Invalid(error.to_string()))
        });
        let answers = tokio::time::timeout(timeout, futures_util::future::join_all(reads)).await.ok()?;
        answers.into_iter().map(|answer| answer.ok().map(|stats| stats.live_holds)).sum()
    }

    /// State digest of each shard this node hosts, as it has applied it:
    /// the shard, the applied index and the digest (replicas that applied
    /// the same log agree).
    pub async fn digests(&self) -> Result<Vec<(u32, Option<u64>, u128)>, ReadError> {
        let mut digests = Vec::with_capacity(self.inner.hosted_groups().len());
        for group in &self.inner.hosted_groups() {
            let (applied, digest) = local(group, Query::Digest).await?;
            digests.push((group.shard, applied, digest));
        }
        Ok(digests)
    }

    /// Per shard: what an online backup copies (`BackupView`). Asks each
    /// actor for its applied id, a message that costs the shard nothing
    /// more than a read.
    pub async fn backup_views(&self) -> Result<Vec<BackupView>, ReadError> {
        let mut views = Vec::with_capacity(self.inner.hosted_groups().len());
        for group in &self.inner.hosted_groups() {
            let applied = local(group, Query::Applied).await?;
            views.push(BackupView {
                shard: group.shard,
                snapshot_dir: shard_dir(&self.inner.config.data_dir, group.shard).join("snapshots"),
                applied,
                segments: group.log.wal_reader().segment_files(),
            });
        }
        Ok(views)
    }
}

/// Runs `query` on this node's copy of `group` at once, stopped or not: the
/// node-local views read every shard as this node has applied it. Their
/// queries (stats, digest, applied id) name nothing in the arenas, so they
/// find no corruption; an answer of another kind would be a bug.
async fn local<T: FromAnswer>(group: &Group, query: Query) -> Result<T, ReadError> {
    let shard = group.shard;
    let answer = group.actor.send(Read::new(move |state| state.query(&query))).await;
    let answer = answer.map_err(|_| ReadError::ShuttingDown)?.0.map_err(|corrupt| ReadError::ShardStopped {
        shard,
        cause: FailureCause::InvariantBroken,
        detail: format!("a read found the state broken: {corrupt}"),
    })?;
    T::from_answer(answer).map_err(|mismatch| ReadError::Invalid(format!("shard {shard}: {mismatch}")))
}

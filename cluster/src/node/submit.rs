//! Submitting commands: the shard a command belongs to, the route to its
//! leader (the local proposer, the forwarder to another node, or through a
//! node that hosts the shard when this one does not: `route`), bounded
//! retry through elections under one request id, and the request ids
//! themselves.

use std::sync::atomic::Ordering;

use engine::ids::RequestId;
use engine::{Command, Outcome, shard_of};

use super::retry::Retry;
use super::route::{Route, ShardRoute};
use super::{Group, Node};
use crate::error::{ProposeError, SubmitError};
use crate::forwarder::ForwardError;
use crate::health::ShardFailure;
use crate::raft_types::NodeId;

impl Node {
    /// The shard a command belongs to: its SKU's shard, or the home shard in
    /// its reservation id.
    pub fn shard_for(&self, command: &Command) -> Result<u32, SubmitError> {
        let shards = self.inner.config.shards;
        let shard = match command {
            Command::Confirm(c) => u32::from(c.id.home_shard()),
            Command::ConfirmPart(c) => u32::from(c.id.home_shard()),
            Command::Release(c) => u32::from(c.id.home_shard()),
            Command::Extend(c) => u32::from(c.id.home_shard()),
            other => match other.routing_sku() {
                Some(sku) => shard_of(sku, shards),
                None => return Err(SubmitError::Invalid("this command names no shard; use submit_to".into())),
            },
        };
        if shard >= shards {
            return Err(SubmitError::Invalid(format!("shard {shard} does not exist (shards: {shards})")));
        }
        Ok(shard)
    }

    /// Submits a command to its shard and waits for its outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, SubmitError> {
        let shard = self.shard_for(&command)?;
        self.submit_to(shard, command).await
    }

    /// Submits a command to `shard` (e.g. `SetLimits`, which names no SKU).
    pub async fn submit_to(&self, shard: u32, command: Command) -> Result<Outcome, SubmitError> {
        let request_id = self.next_request_id();
        self.submit_with_id(shard, command, request_id).await
    }

    /// Submits with a caller-chosen request id: a retry of the same id is
    /// answered with the first outcome and applied once (within the shard's
    /// dedup window).
    pub async fn submit_with_id(
        &self,
        shard: u32,
        command: Command,
        request_id: RequestId,
    ) -> Result<Outcome, SubmitError> {
        let mut outcomes = self.submit_many_with_ids(shard, vec![command], vec![request_id]).await?;
        // A real check: the lists below are checked where they are split,
        // and a second outcome would belong to someone else.
        match (outcomes.pop(), outcomes.is_empty()) {
            (Some(outcome), true) => Ok(outcome),
            (answered, _) => Err(SubmitError::Unknown {
                shard,
                reason: format!("{} outcomes for one command", outcomes.len() + usize::from(answered.is_some())),
            }),
        }
    }

    /// Submits a list of commands to `shard` as one proposal (one entry,
    /// one fsync, one replication round) and answers their outcomes in
    /// order. Each command is applied on its own (a refusal of one does not
    /// undo the others), once, under its own request id.
    pub async fn submit_many_to(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<Outcome>, SubmitError> {
        let request_ids = commands.iter().map(|_| self.next_request_id()).collect();
        self.submit_many_with_ids(shard, commands, request_ids).await
    }

    /// `submit_many_to` with caller-chosen request ids, retried as
    /// `submit_with_id` is.
    pub async fn submit_many_with_ids(
        &self,
        shard: u32,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        if commands.len() != request_ids.len() {
            return Err(SubmitError::Invalid("one request id per command".into()));
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self.inner.route(shard) {
            None => Err(no_shard(shard)),
            Some(Route::Local(group)) => self.submit_local(&group, commands, request_ids).await,
            Some(Route::Remote(route)) => self.submit_remote(shard, route, commands, request_ids).await,
        }
    }

    /// Submits through this node's own group: proposed here when this node
    /// leads, else forwarded to the leader its Raft core knows.
    async fn submit_local(
        &self,
        group: &Group,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let inner = &self.inner;
        let shard = group.shard;
        let forwarder = &inner.routes.get(shard as usize).ok_or_else(|| no_shard(shard))?.forwarder;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        // Whether some attempt may have reached a log; then running out of
        // retries means "unknown", not "not applied".
        let mut maybe_applied: Option<String> = None;
        loop {
            if inner.shut_down.load(Ordering::Acquire) {
                return Err(SubmitError::ShuttingDown);
            }
            if let Some(failure) = group.health.failure() {
                return Err(stopped_submit(maybe_applied, failure));
            }
            let leader = group.raft.current_leader().await;
            let attempt = match leader {
                Some(leader) if leader == inner.id => {
                    // A leader cut off from its majority cannot commit and may
                    // not notice at once: the wait is bounded by the window.
                    let proposal = group.proposer.propose_many(commands.clone(), request_ids.clone());
                    let answer = tokio::time::timeout(retry.remaining(), proposal)
                        .await
                        .unwrap_or_else(|_| Err(ProposeError::Unknown("not committed within the retry window".into())));
                    match answer {
                        Ok(outcome) => return Ok(outcome),
                        Err(ProposeError::Overloaded) => {
                            return Err(SubmitError::Overloaded { shard, retry_after_ms: 100 });
                        }
                        Err(ProposeError::Closed) => return Err(SubmitError::ShuttingDown),
                        Err(ProposeError::NotLeader(_) | ProposeError::Stopped) => None,
                        Err(ProposeError::Unknown(reason)) => Some(reason),
                    }
                }
                Some(leader) => match forwarder.forward_many(leader, commands.clone(), request_ids.clone()).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(error) => retry_after_forward(shard, error)?,
                },
                None => None,
            };
            if let Some(reason) = attempt {
                maybe_applied = Some(reason);
            }
            // The shard may have stopped under this attempt: say so now,
            // not after the retry window.
            if let Some(failure) = group.health.failure() {
                return Err(stopped_submit(maybe_applied, failure));
            }
            if !retry.pause().await {
                return Err(gave_up(shard, maybe_applied, inner.config.election_timeout_max_ms));
            }
        }
    }

    /// Submits through a node that hosts the shard (`route`): the leader
    /// last heard of, else each peer in turn, each answer's guess of the
    /// leader tried next. The same request ids on every attempt, so a
    /// command whose first attempt committed is applied once.
    async fn submit_remote(
        &self,
        shard: u32,
        route: &ShardRoute,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let inner = &self.inner;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        let mut maybe_applied: Option<String> = None;
        loop {
            if inner.shut_down.load(Ordering::Acquire) {
                return Err(SubmitError::ShuttingDown);
            }
            if let Some(target) = route.target(&inner.route_peers()) {
                match route.forwarder.forward_many(target, commands.clone(), request_ids.clone()).await {
                    Ok(outcomes) => {
                        route.learn(target);
                        return Ok(outcomes);
                    }
                    Err(error) => {
                        route.forward_failed(target, &error);
                        maybe_applied = retry_after_forward(shard, error)?.or(maybe_applied);
                    }
                }
            }
            if !retry.pause().await {
                return Err(gave_up(shard, maybe_applied, inner.config.election_timeout_max_ms));
            }
        }
    }

    fn next_request_id(&self) -> RequestId {
        let seq = self.inner.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.inner.request_prefix);
        bytes[8..].copy_from_slice(&seq.to_le_bytes());
        RequestId(bytes)
    }
}

/// The first half of every request id this node makes: its node id and a
/// per-boot nonce (`next_request_id` adds a counter).
pub(super) fn request_prefix(id: NodeId) -> [u8; 8] {
    let mut request_prefix = [0u8; 8];
    request_prefix[..4].copy_from_slice(&u32::try_from(id).unwrap_or(u32::MAX).to_le_bytes());
    // Distinct per boot, so ids from before a restart never repeat.
    let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    request_prefix[4..].copy_from_slice(&(xor_fold(boot) ^ std::process::id()).to_le_bytes());
    request_prefix
}

fn xor_fold(value: u128) -> u32 {
    let mut folded = 0u32;
    for chunk in value.to_le_bytes().chunks(4) {
        let mut word = [0u8; 4];
        word.copy_from_slice(chunk);
        folded ^= u32::from_le_bytes(word);
    }
    folded
}

/// What a failed forward means for a submit, through this node's group or
/// from outside it alike: stop with this error (the leader is overloaded,
/// this node is shutting down), or try again, with the reason when the
/// commands may have been proposed.
fn retry_after_forward(shard: u32, error: ForwardError) -> Result<Option<String>, SubmitError> {
    match error {
        ForwardError::Overloaded => Err(SubmitError::Overloaded { shard, retry_after_ms: 100 }),
        ForwardError::Closed => Err(SubmitError::ShuttingDown),
        ForwardError::NotLeader(_) => Ok(None),
        ForwardError::Unknown(reason) => Ok(Some(reason)),
    }
}

fn no_shard(shard: u32) -> SubmitError {
    SubmitError::Invalid(format!("shard {shard} does not exist"))
}

/// What a submit answers when its retry window ran out: unknown if an
/// attempt may have reached a log, else unavailable (nothing applied).
fn gave_up(shard: u32, maybe_applied: Option<String>, retry_after_ms: u64) -> SubmitError {
    match maybe_applied {
        Some(reason) => SubmitError::Unknown { shard, reason },
        None => SubmitError::Unavailable { shard, retry_after_ms },
    }
}

/// What a submit answers once its shard stopped: unknown if an attempt may
/// have reached the log before the stop (it may still commit through the
/// other nodes, or after a restart), else "stopped", which applied nothing.
fn stopped_submit(maybe_applied: Option<String>, failure: ShardFailure) -> SubmitError {
    match maybe_applied {
        Some(reason) => SubmitError::Unknown { shard: failure.shard, reason: format!("{reason}; then {failure}") },
        None => SubmitError::stopped(failure),
    }
}

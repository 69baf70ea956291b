//! A shard's forwarder on a node that does not lead it: gathers commands
//! bound for the leader into one `Submit` RPC, the way the proposer gathers
//! them into one log entry.
//!
//! Commands wait only while `entries_in_flight_max` forwards are already on
//! the wire; then everything queued (whole callers' lists, up to about
//! `batch_size_max` commands) goes as one frame. One frame per batch instead of one per command is what lets a node
//! that receives a shard's traffic without leading it keep up.

use std::sync::Arc;
use std::time::Duration;

use engine::ids::RequestId;
use engine::{Command, Outcome};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::raft_types::NodeId;
use crate::transport::Transport;
use crate::wire::{Request, Response};

/// Why a forwarded command got no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForwardError {
    /// The target does not lead the shard (or does not host it); nothing
    /// was proposed. Its guess of the leader.
    NotLeader(Option<NodeId>),
    /// The leader's queue is full; nothing was proposed.
    Overloaded,
    /// The leader may have proposed it; retry with the same request id.
    Unknown(String),
    Closed,
}

/// Commands of one caller, forwarded in the same `Submit` with one reply
/// for all of them (a single command is a list of one).
struct Pending {
    leader: NodeId,
    commands: Vec<Command>,
    request_ids: Vec<RequestId>,
    reply: oneshot::Sender<Result<Vec<Outcome>, ForwardError>>,
}

#[derive(Clone)]
pub(crate) struct Forwarder {
    queue: mpsc::Sender<Pending>,
}

pub(crate) struct ForwarderSettings {
    pub shard: u32,
    pub batch_size_max: usize,
    pub in_flight_max: usize,
    pub queue_max: usize,
    pub timeout: Duration,
}

impl Forwarder {
    pub fn start(transport: Transport, settings: ForwarderSettings) -> (Forwarder, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(settings.queue_max.max(1));
        let in_flight = Arc::new(Semaphore::new(settings.in_flight_max.max(1)));
        let task = tokio::spawn(run(transport, receiver, in_flight, settings));
        (Forwarder { queue }, task)
    }

    /// Forwards a list of commands; the leader proposes them as one entry
    /// (or with others' commands, never split).
    pub async fn forward_many(
        &self,
        leader: NodeId,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, ForwardError> {
        debug_assert_eq!(commands.len(), request_ids.len());
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Pending { leader, commands, request_ids, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(ForwardError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ForwardError::Closed),
        }
        answer.await.unwrap_or(Err(ForwardError::Closed))
    }
}

async fn run(
    transport: Transport,
    mut receiver: mpsc::Receiver<Pending>,
    in_flight: Arc<Semaphore>,
    settings: ForwarderSettings,
) {
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut commands = first.commands.len();
        let mut batch = vec![first];
        while commands < settings.batch_size_max {
            match receiver.try_recv() {
                Ok(next) => {
                    commands += next.commands.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Leadership can move while commands queue: one RPC per target.
        batch.sort_by_key(|pending| pending.leader);
        let mut groups: Vec<Vec<Pending>> = Vec::new();
        for pending in batch {
            match groups.last_mut() {
                Some(group) if group[0].leader == pending.leader => group.push(pending),
                _ => groups.push(vec![pending]),
            }
        }
        let permit = Arc::new(permit);
        for group in groups {
            let transport = transport.clone();
            let permit = Arc::clone(&permit);
            let shard = settings.shard;
            let timeout = settings.timeout;
            tokio::spawn(async move {
                send(&transport, shard, group, timeout).await;
                drop(permit);
            });
        }
    }
}

async fn send(transport: &Transport, shard: u32, group: Vec<Pending>, timeout: Duration) {
    let leader = group[0].leader;
    let mut commands = Vec::new();
    let mut request_ids = Vec::new();
    let mut replies = Vec::with_capacity(group.len());
    for Pending { commands: theirs, request_ids: their_ids, reply, .. } in group {
        replies.push((reply, theirs.len()));
        commands.extend(theirs);
        request_ids.extend(their_ids);
    }
    let count = commands.len();
    let request = Request::Submit { group: shard, commands, request_ids };
    let failure = match transport.call(leader, &request, timeout).await {
        Ok(Response::Submitted(outcomes)) if outcomes.len() == count => {
            let mut outcomes = outcomes.into_iter();
            for (reply, count) in replies {
                let _ = reply.send(Ok(outcomes.by_ref().take(count).collect()));
            }
            return;
        }
        Ok(Response::NotLeader { leader } | Response::NotHosted { leader }) => ForwardError::NotLeader(leader),
        Ok(Response::Overloaded) => ForwardError::Overloaded,
        Ok(Response::Unknown(reason)) => ForwardError::Unknown(reason),
        Ok(other) => ForwardError::Unknown(format!("leader {leader} answered {other:?}")),
        // The request may have reached the leader.
        Err(error) => ForwardError::Unknown(format!("forward to {leader}: {error}")),
    };
    for (reply, _) in replies {
        let _ = reply.send(Err(failure.clone()));
    }
}

//! The shard actor: the single owner of a shard's state.
//!
//! Every change and every read of a shard goes through its actor's mailbox,
//! one message at a time, so item state needs no locks. Actors run on a small
//! pool of actix arbiters (one thread each, as many as there are cores), many
//! shards to an arbiter. The mailbox is actix's bounded one: a caller that
//! outpaces the shard waits at `send`, memory does not grow.

use std::io;
use std::thread::JoinHandle;

use actix::dev::MessageResponse;
use actix::prelude::*;
use rkyv::util::AlignedVec;

use crate::error::{ApplyError, SnapshotError};
use crate::event::{EventKind, EventRecord};
use crate::raft_log::{EntryPayload, LogEntry};
use crate::snapshot::SnapshotMeta;
use crate::state::{Applied, ShardState};

/// Owns one shard's state.
#[derive(Debug)]
pub struct ShardActor {
    state: ShardState,
}

impl ShardActor {
    pub fn new(state: ShardState) -> Self {
        Self { state }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;
}

/// Apply committed entries in order. With `describe_events` the answer also
/// names events (`ShardState::describe_in`), for publishing and the ledger.
#[derive(Debug, Message)]
#[rtype(result = "Result<AppliedEntries, ApplyError>")]
pub struct Apply {
    pub entries: Vec<LogEntry>,
    pub describe_events: Describe,
}

/// Which events an `Apply` names: naming copies strings, so only what a
/// listener takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Describe {
    None,
    /// Stock movements only (`StockChanged`, `HoldExtended`): the ledger's.
    Movements,
    All,
}

impl Describe {
    fn wants(self, kind: &EventKind) -> bool {
        match self {
            Describe::None => false,
            Describe::Movements => matches!(kind, EventKind::StockChanged { .. } | EventKind::HoldExtended { .. }),
            Describe::All => true,
        }
    }
}

#[derive(Debug, Default, MessageResponse)]
pub struct AppliedEntries {
    /// One per entry, in order.
    pub applied: Vec<Applied>,
    pub records: Vec<EventRecord>,
    /// Log time of the next hold deadline after these entries, so the
    /// leader can plan its expiry tick without a second message.
    pub next_deadline_ms: Option<u64>,
    /// The shard's log time after these entries.
    pub log_time_ms: u64,
}

impl Handler<Apply> for ShardActor {
    type Result = Result<AppliedEntries, ApplyError>;

    fn handle(&mut self, message: Apply, _: &mut Context<Self>) -> Self::Result {
        // All or nothing: the order of the whole batch is checked first, so
        // an error never leaves some entries applied without their answers.
        // (The rule is `ShardState::apply_into`'s: indexes strictly rise.)
        let mut last = self.state.last_applied().map(|last| last.index);
        for entry in &message.entries {
            if last.is_some_and(|index| entry.log_id.index <= index) {
                let last_applied = self.state.last_applied().map(|last| last.index);
                return Err(ApplyError::OutOfOrder { last_applied, got: entry.log_id.index });
            }
            last = Some(entry.log_id.index);
        }
        let mut answer = AppliedEntries {
            applied: Vec::with_capacity(message.entries.len()),
            records: Vec::new(),
            next_deadline_ms: None,
            log_time_ms: 0,
        };
        for entry in &message.entries {
            let mut applied = Applied::default();
            self.state.apply_into(entry, &mut applied)?;
            if message.describe_events != Describe::None {
                let batch = match &entry.payload {
                    EntryPayload::Batch(batch) => Some(&**batch),
                    EntryPayload::Blank | EntryPayload::Membership(_) => None,
                };
                for event in applied.events.iter().filter(|event| message.describe_events.wants(&event.kind)) {
                    answer.records.push(self.state.describe_in(event, batch, &applied.outcomes)?);
                }
            }
            answer.applied.push(applied);
        }
        answer.next_deadline_ms = self.state.next_deadline_ms();
        answer.log_time_ms = self.state.now_ms();
        Ok(answer)
    }
}

/// Run a read against the state. The closure must be quick: the shard
/// applies nothing while it runs.
pub struct Read<R: Send + 'static>(pub Box<dyn FnOnce(&ShardState) -> R + Send>);

impl<R: Send + 'static> Read<R> {
    pub fn new(read: impl FnOnce(&ShardState) -> R + Send + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl<R: Send + 'static> std::fmt::Debug for Read<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Read")
    }
}

impl<R: Send + 'static> Message for Read<R> {
    type Result = ReadAnswer<R>;
}

/// The answer of a `Read`.
#[derive(Debug)]
pub struct ReadAnswer<R>(pub R);

impl<R: Send + 'static> MessageResponse<ShardActor, Read<R>> for ReadAnswer<R> {
    fn handle(self, _: &mut Context<ShardActor>, tx: Option<actix::dev::OneshotSender<ReadAnswer<R>>>) {
        if let Some(tx) = tx {
            let _ = tx.send(self);
        }
    }
}

impl<R: Send + 'static> Handler<Read<R>> for ShardActor {
    type Result = ReadAnswer<R>;

    fn handle(&mut self, message: Read<R>, _: &mut Context<Self>) -> ReadAnswer<R> {
        ReadAnswer((message.0)(&self.state))
    }
}

/// Serialise the state for a snapshot. The bytes are written to disk
/// elsewhere, so the shard is busy only for the serialisation.
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotBytes, SnapshotError>")]
pub struct TakeSnapshot;

#[derive(Debug, MessageResponse)]
pub struct SnapshotBytes {
    pub meta: SnapshotMeta,
    pub state: AlignedVec,
}

impl Handler<TakeSnapshot> for ShardActor {
    type Result = Result<SnapshotBytes, SnapshotError>;

    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        Ok(SnapshotBytes { meta: SnapshotMeta::of(&self.state), state: self.state.to_snapshot_bytes()? })
    }
}

/// Replace the state with one loaded from a snapshot.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Install(pub Box<ShardState>);

impl Handler<Install> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: Install, _: &mut Context<Self>) {
        self.state = *message.0;
    }
}

/// Test hook: breaks the state as a bug would: a rule
/// (`ShardState::break_invariant_for_tests`) or an arena reference
/// (`ShardState::corrupt_arena_for_tests`).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum BreakInvariant {
    ReservedAboveOnHand,
    SkuOutsideArena,
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<BreakInvariant> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: BreakInvariant, _: &mut Context<Self>) {
        match message {
            BreakInvariant::ReservedAboveOnHand => self.state.break_invariant_for_tests(),
            BreakInvariant::SkuOutsideArena => self.state.corrupt_arena_for_tests(),
        }
    }
}

/// The shard actors of a process, on their arbiters.
#[derive(Debug)]
pub struct ShardPool {
    shards: Vec<Addr<ShardActor>>,
    /// The arbiter (thread) each shard's actor runs on, by shard.
    arbiters: Vec<ArbiterHandle>,
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl ShardPool {
    /// Starts one actor per state, spread round-robin over `arbiters`
    /// threads (at least one; use `default_arbiters()` for one per core).
    pub fn start(states: Vec<ShardState>, arbiters: usize) -> io::Result<ShardPool> {
        let arbiters = arbiters.clamp(1, states.len().max(1));
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new().name("tally-shards".into()).spawn(move || {
            let runner = System::new();
            let started = runner.block_on(async move {
                let mut threads = Vec::with_capacity(arbiters);
                for _ in 0..arbiters {
                    threads.push(Arbiter::try_new()?);
                }
                let mut shards = Vec::with_capacity(states.len());
                let mut handles = Vec::with_capacity(states.len());
                for (shard, state) in states.into_iter().enumerate() {
                    let arbiter = threads[shard % arbiters].handle();
                    shards.push(ShardActor::start_in_arbiter(&arbiter, move |_| ShardActor::new(state)));
                    handles.push(arbiter);
                }
                io::Result::Ok((shards, handles, threads))
            });
            match started {
                Ok((shards, handles, threads)) => {
                    let _ = sender.send(Ok((shards, handles, System::current())));
                    let _ = runner.run();
                    for thread in threads {
                        thread.stop();
                        let _ = thread.join();
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error));
                }
            }
        })?;
        let (shards, arbiters, system) =
            receiver.recv().map_err(|_| io::Error::other("shard pool thread died while starting"))??;
        Ok(ShardPool { shards, arbiters, system, thread: Some(thread) })
    }

    /// One arbiter per core.
    pub fn default_arbiters() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    pub fn shard(&self, shard: u32) -> Option<&Addr<ShardActor>> {
        self.shards.get(shard as usize)
    }

    /// The thread `shard`'s actor runs on. Work spawned there (the shard's
    /// proposer and Raft group, DESIGN §10) shares the actor's thread, so
    /// hand-offs with the actor are same-thread wake-ups.
    pub fn arbiter(&self, shard: u32) -> Option<&ArbiterHandle> {
        self.arbiters.get(shard as usize)
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Stops every actor and waits for the threads to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ShardPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

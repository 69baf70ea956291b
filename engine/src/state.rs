//! A shard's state and `apply`: the deterministic heart of Tally.
//!
//! `ShardState` is split in two. `Persisted` is the state proper: plain
//! vectors in log order, which snapshots serialise byte for byte and the
//! digest hashes. `Indexes` are derived from it (hash tables, the timer wheel)
//! and rebuilt when a snapshot loads. Nothing in `apply` reads a clock, a
//! random number or a hash map's iteration order: time is the entry's
//! `ts_ms`, ids come from the log, and the hash tables are only probed.
//!
//! A batch may tag its commands with request ids; `apply` then runs each
//! command at most once per id while the id is in the dedup window (see
//! `dedup.rs`), answering a retry with the first outcome.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::bundle::Bundles;
use crate::cmd::{self, Command};
use crate::config::Limits;
use crate::customer::CustomerLimits;
use crate::dedup::{DedupIndex, DedupRecord, DedupWindow};
use crate::error::{ApplyError, Corrupt, InputError, SnapshotError};
use crate::event::{Cause, Event, EventId, EventKind, LevelChange, NO_COMMAND};
use crate::ids::{IdempotencyKey, Principal, QUANTITY_MAX, RequestId, ReservationId};
use crate::item::{Item, ItemId, Movement, MovementReason, Status, Who};
use crate::outcome::{Bound, Outcome, Refusal, ReservationSummary};
use crate::placement::shard_of;
use crate::raft_log::{EntryPayload, LogEntry, LogId, StoredMembership};
use crate::reservation::{HeldLine, Lines, Reservation, ReservationState};
use crate::states::StateLevels;
use crate::wheel::TimerWheel;

/// Bumped when `Persisted` changes shape; a snapshot of another format is
/// refused rather than misread. 2: the dedup window. 3: write outcomes (in
/// the dedup window) carry the reservation's lines. 4: confirm, release and
/// extend outcomes (in the dedup window) carry the reservation's
/// idempotency key. 5: per-customer limits and usage, and the customer a
/// reservation counted against them. 6: issue 17's commerce features: SKU
/// product records and item tombstones (`product.rs`), bundle definitions
/// (`bundle.rs`), SKUs' warehouse priority lists, quantity states of an
/// item (safety stock, damaged, quality control, incoming) and backorders,
/// their bounds in `Limits`, and hold outcomes (in the dedup window) carry
/// their allocations.
pub(crate) const STATE_FORMAT: u32 = 6;

/// Principal id recorded once the principal table is full.
pub(crate) const PRINCIPAL_OTHER: u16 = u16::MAX;

/// The state proper. Field order is the snapshot's byte order.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub format: u32,
    pub shard: u32,
    pub shard_count: u32,
    pub limits: Limits,
    pub last_applied: Option<LogId>,
    pub membership: Option<StoredMembership>,
    /// Log time: the largest `ts_ms` applied.
    pub now_ms: u64,
    /// Holds ever made; the next hold's `seq`.
    pub holds_made: u64,
    pub items: Vec<Item>,
    /// SKU bytes of all items, appended as items are created.
    pub sku_arena: Vec<u8>,
    pub warehouses: Vec<String>,
    pub principals: Vec<String>,
    /// A slab: `None` marks a free slot, listed in `free_slots`.
    pub reservations: Vec<Option<Reservation>>,
    pub free_slots: Vec<u32>,
    /// Terminal reservations, oldest end first, waiting to be forgotten.
    pub terminal: VecDeque<u32>,
    /// Request ids of applied commands with their outcomes, oldest first.
    pub dedup: DedupWindow,
    /// Per-customer limits of SKUs, and what customers have of them.
    pub customers: CustomerLimits,
    /// Bundle definitions of this shard's SKUs (`bundle.rs`).
    pub bundles: Bundles,
    /// SKU product records and tombstones of deleted items.
    pub catalog: crate::product::Catalog,
    /// SKUs' warehouse priority lists (`SetWarehousePriority`), most
    /// preferred first; a SKU without one is absent. Ordered: a snapshot's
    /// bytes depend on content only.
    pub warehouse_priority: std::collections::BTreeMap<String, Vec<String>>,
}

/// Derived lookups, rebuilt from `Persisted` on load.
#[derive(Debug)]
pub(crate) struct Indexes {
    hasher: DefaultHashBuilder,
    /// Item ids, hashed by (SKU bytes, warehouse id).
    items: HashTable<u32>,
    /// Tombstoned item ids, hashed the same way: a re-created item takes
    /// its tombstone's slot back (`create_item`).
    tombstones: HashTable<u32>,
    warehouses: HashMap<String, u16>,
    principals: HashMap<String, u16>,
    /// Reservation slots, hashed by reservation id. Slots (4 bytes) rather
    /// than id → slot pairs (20), so the table stays small and cache-warm.
    reservations: HashTable<u32>,
    /// Reservation slots, hashed by idempotency key.
    keys: HashTable<u32>,
    pub wheel: TimerWheel,
    pub live_holds: u32,
    /// Request id → record in `Persisted::dedup`.
    dedup: DedupIndex,
}

/// The result of applying one entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub log_id: LogId,
    /// One per command, in order.
    pub outcomes: Vec<Outcome>,
    pub events: Vec<Event>,
}

/// Collects an entry's events and numbers them.
#[derive(Debug)]
pub(crate) struct Emitter {
    shard: u32,
    index: u64,
    pub at_ms: u64,
    /// Position of the command being applied (`NO_COMMAND` outside one).
    command: u32,
    events: Vec<Event>,
}

impl Emitter {
    pub fn emit(&mut self, kind: EventKind) {
        let position = u32::try_from(self.events.len()).unwrap_or(u32::MAX);
        let id = EventId { shard: self.shard, index: self.index, position };
        self.events.push(Event { id, at_ms: self.at_ms, command: self.command, kind });
    }
}

/// Levels of an item before a change, to tell what the change did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Before {
    on_hand: u64,
    reserved: u64,
    unsellable: u64,
    status: Status,
}

/// How a change to an item should be recorded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Change {
    pub cause: Cause,
    /// Why and by whom, if `on_hand` moved (a movement in the history).
    pub movement: Option<(MovementReason, Who)>,
    /// The item was created by this change: its version becomes 1 and its
    /// first status is not a crossing.
    pub created: bool,
}

/// Counts that operators and the proposer need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ShardStats {
    pub items: u64,
    pub live_holds: u64,
    pub terminal_retained: u64,
    /// Request ids in the dedup window.
    pub request_ids_remembered: u64,
    pub now_ms: u64,
    pub last_applied: Option<LogId>,
}

/// The digest of a state from its snapshot bytes (`ShardState::to_snapshot_bytes`):
/// what `ShardState::digest` computes, for a caller that already has the
/// bytes and should not serialise twice.
pub fn digest_of_snapshot_bytes(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// A shard's items and reservations. Owned by one actor; never shared.
#[derive(Debug)]
pub struct ShardState {
    pub(crate) persisted: Persisted,
    pub(crate) indexes: Indexes,
    expired_scratch: Vec<u32>,
    /// Expired holds as (deadline, creation, slot), reused.
    expiry_order_scratch: Vec<(u64, u64, u32)>,
    /// Reused by holds to sum and allocate their lines.
    pub(crate) hold_scratch: crate::cmd::HoldScratch,
    /// Items that have units available and units backordered: filled by
    /// `fill_backorders` before the change that made them so is answered.
    backorders_due: Vec<ItemId>,
}

impl ShardState {
    /// An empty shard. In a cluster every replica must start from the same
    /// limits (use the defaults and change them with `SetLimits`).
    pub fn new(shard: u32, shard_count: u32, limits: Limits) -> Self {
        debug_assert!(shard < shard_count);
        let p = Persisted {
            format: STATE_FORMAT,
            shard,
            shard_count,
            limits,
            last_applied: None,
            membership: None,
            now_ms: 0,
            holds_made: 0,
            items: Vec::new(),
            sku_arena: Vec::new(),
            warehouses: Vec::new(),
            principals: Vec::new(),
            reservations: Vec::new(),
            free_slots: Vec::new(),
            terminal: VecDeque::new(),
            dedup: DedupWindow::default(),
            customers: CustomerLimits::default(),
            bundles: Bundles::default(),
            catalog: crate::product::Catalog::default(),
            warehouse_priority: std::collections::BTreeMap::new(),
        };
        Self::from_persisted(p)
    }

    fn from_persisted(p: Persisted) -> Self {
        let mut ix = Indexes {
            hasher: DefaultHashBuilder::default(),
            items: HashTable::with_capacity(p.items.len()),
            tombstones: HashTable::with_capacity(p.catalog.tombstones.len()),
            warehouses: HashMap::with_capacity(p.warehouses.len()),
            principals: HashMap::with_capacity(p.principals.len()),
            reservations: HashTable::new(),
            keys: HashTable::new(),
            wheel: TimerWheel::new(p.now_ms),
            live_holds: 0,
            dedup: DedupIndex::rebuild(&p.dedup),
        };
        // Every item's SKU is inside the arena (`check_references` ran
        // first, or the state is new).
        for (id, item) in p.items.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let hash = item_key_hash(&ix.hasher, &p.sku_arena, item);
            // A tombstone keeps its slot, out of the name index.
            if p.catalog.tombstones.contains(&id) {
                ix.tombstones.insert_unique(hash, id, |&other| {
                    item_key_hash(&ix.hasher, &p.sku_arena, &p.items[other as usize])
                });
                continue;
            }
            ix.items
                .insert_unique(hash, id, |&other| item_key_hash(&ix.hasher, &p.sku_arena, &p.items[other as usize]));
        }
        for (id, name) in p.warehouses.iter().enumerate() {
            ix.warehouses.insert(name.clone(), u16::try_from(id).unwrap_or(u16::MAX));
        }
        for (id, name) in p.principals.iter().enumerate() {
            ix.principals.insert(name.clone(), u16::try_from(id).unwrap_or(PRINCIPAL_OTHER));
        }
        for (slot, reservation) in p.reservations.iter().enumerate() {
            let Some(reservation) = reservation else {
                continue;
            };
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            let hash = ix.hasher.hash_one(reservation.id);
            ix.reservations.insert_unique(hash, slot, |&other| id_hash(&ix.hasher, &p.reservations, other));
            if let Some(key) = &reservation.idempotency_key {
                let hash = ix.hasher.hash_one(key.as_str());
                ix.keys.insert_unique(hash, slot, |&other| key_hash(&ix.hasher, &p.reservations, other));
            }
            if reservation.state == ReservationState::Held {
                ix.wheel.insert(slot, reservation.deadline_ms);
                ix.live_holds += 1;
            }
        }
        Self {
            persisted: p,
            indexes: ix,
            expired_scratch: Vec::new(),
            expiry_order_scratch: Vec::new(),
            hold_scratch: crate::cmd::HoldScratch::default(),
            backorders_due: Vec::new(),
        }
    }

    pub fn shard(&self) -> u32 {
        self.persisted.shard
    }

    pub fn shard_count(&self) -> u32 {
        self.persisted.shard_count
    }

    pub fn limits(&self) -> &Limits {
        &self.persisted.limits
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.persisted.last_applied
    }

    pub fn membership(&self) -> Option<&StoredMembership> {
        self.persisted.membership.as_ref()
    }

    /// Replaces the stored membership's configuration bytes, keeping the
    /// log id it took effect at. Only a restore does this (the restored
    /// node becomes the one member of every group); nothing in `apply`.
    pub fn replace_membership_config(&mut self, config: Vec<u8>) {
        if let Some(membership) = self.persisted.membership.as_mut() {
            membership.config = config;
        }
    }

    /// Log time: the largest entry timestamp applied.
    pub fn now_ms(&self) -> u64 {
        self.persisted.now_ms
    }

    /// A lower bound on the next hold deadline, for the proposer's `Tick`.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.indexes.wheel.next_deadline_ms()
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            items: self.persisted.items.len().saturating_sub(self.persisted.catalog.tombstones.len()) as u64,
            live_holds: u64::from(self.indexes.live_holds),
            terminal_retained: self.persisted.terminal.len() as u64,
            request_ids_remembered: self.persisted.dedup.len() as u64,
            now_ms: self.persisted.now_ms,
            last_applied: self.persisted.last_applied,
        }
    }

    /// Applies one committed entry: moves log time to the entry's `ts_ms`,
    /// expires every hold due by then, forgets what has outlived its
    /// retention, then applies each command in order, once per request id.
    pub fn apply(&mut self, entry: &LogEntry) -> Result<Applied, ApplyError> {
        let mut applied = Applied { outcomes: Vec::with_capacity(entry.command_count()), ..Applied::default() };
        self.apply_into(entry, &mut applied)?;
        Ok(applied)
    }

    /// `apply`, reusing the buffers of `applied`.
    pub fn apply_into(&mut self, entry: &LogEntry, applied: &mut Applied) -> Result<(), ApplyError> {
        // An entry at or below the last applied index would apply twice: the
        // one ordering error that corrupts state. Raft commits entries in
        // order, so in service the next index is always `last + 1`; a gap is
        // not refused here because openraft's storage conformance suite
        // applies entries with gaps on purpose.
        if let Some(last) = self.persisted.last_applied
            && entry.log_id.index <= last.index
        {
            return Err(ApplyError::OutOfOrder { last_applied: Some(last.index), got: entry.log_id.index });
        }
        applied.log_id = entry.log_id;
        applied.outcomes.clear();
        applied.events.clear();
        let mut emitter = Emitter {
            shard: self.persisted.shard,
            index: entry.log_id.index,
            at_ms: self.persisted.now_ms,
            command: NO_COMMAND,
            events: std::mem::take(&mut applied.events),
        };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(config) => {
                self.persisted.membership = Some(StoredMembership { log_id: entry.log_id, config: config.clone() });
            }
            EntryPayload::Batch(batch) => {
                // Log time never goes back, even if a new leader's clock does.
                self.persisted.now_ms = self.persisted.now_ms.max(batch.ts_ms);
                emitter.at_ms = self.persisted.now_ms;
                self.expire_due(&mut emitter);
                self.forget_terminal();
                self.forget_request_ids();
                // Ids that are not one per command are ignored as a whole
                // (see `Batch`): deterministic, and no command is lost.
                let request_ids = batch.effective_request_ids();
                for (position, command) in batch.commands.iter().enumerate() {
                    emitter.command = u32::try_from(position).unwrap_or(NO_COMMAND);
                    let outcome = match request_ids.get(position) {
                        Some(&request_id) => self.apply_once(request_id, command, &mut emitter)?,
                        None => cmd::apply(self, command, &mut emitter)?,
                    };
                    applied.outcomes.push(outcome);
                }
            }
        }
        self.persisted.last_applied = Some(entry.log_id);
        applied.events = emitter.events;
        Ok(())
    }

    /// Expires every held reservation whose deadline is at or before now, in
    /// (deadline, creation) order so every replica emits the same events.
    fn expire_due(&mut self, emitter: &mut Emitter) {
        let mut slots = std::mem::take(&mut self.expired_scratch);
        slots.clear();
        self.indexes.wheel.advance(self.persisted.now_ms, &mut slots);
        if slots.is_empty() {
            self.expired_scratch = slots;
            return;
        }
        // Sort on keys read once, not on every comparison.
        let mut expired = std::mem::take(&mut self.expiry_order_scratch);
        expired.clear();
        expired.extend(slots.iter().map(|&slot| {
            self.reservation_at(slot).map_or((u64::MAX, u64::MAX, slot), |r| (r.deadline_ms, r.seq, slot))
        }));
        expired.sort_unstable();
        self.expired_scratch = slots;
        for &(_, _, slot) in &expired {
            let Some(reservation) = self.reservation_at(slot) else {
                continue;
            };
            debug_assert_eq!(reservation.state, ReservationState::Held);
            debug_assert!(reservation.deadline_ms <= self.persisted.now_ms);
            emitter.emit(EventKind::ReservationExpired {
                reservation: reservation.id,
                deadline_ms: reservation.deadline_ms,
            });
            self.end_reservation(slot, ReservationState::Expired, None, emitter);
        }
        self.expiry_order_scratch = expired;
    }

    /// Applies a command tagged with a request id: if the id is in the dedup
    /// window the command ran before (in this batch or an earlier one), so it
    /// changes nothing and answers the first outcome; otherwise it applies
    /// and its outcome, refusals included, is remembered.
    fn apply_once(
        &mut self,
        request_id: RequestId,
        command: &Command,
        emitter: &mut Emitter,
    ) -> Result<Outcome, Corrupt> {
        let vacant = match self.indexes.dedup.find(&self.persisted.dedup, &request_id) {
            Ok(first) => return Ok(first.clone()),
            Err(vacant) => vacant,
        };
        let outcome = cmd::apply(self, command, emitter)?;
        let record = DedupRecord { request_id, at_ms: self.persisted.now_ms, outcome: outcome.clone() };
        self.indexes.dedup.push(&mut self.persisted.dedup, vacant, record, self.persisted.limits.dedup_window_max);
        Ok(outcome)
    }

    /// Forgets request ids past the window's bounds, oldest first.
    fn forget_request_ids(&mut self) {
        let limits = &self.persisted.limits;
        self.indexes.dedup.forget(
            &mut self.persisted.dedup,
            self.persisted.now_ms,
            limits.dedup_window_max,
            limits.dedup_retention_ms,
        );
    }

    /// Forgets terminal reservations past their retention, oldest first.
    fn forget_terminal(&mut self) {
        let retention_ms = self.persisted.limits.terminal_retention_ms;
        let retained_max = self.persisted.limits.terminal_retained_max as usize;
        while let Some(&slot) = self.persisted.terminal.front() {
            let ended_at_ms = self.reservation_at(slot).map_or(0, |r| r.ended_at_ms);
            let expired = ended_at_ms.saturating_add(retention_ms) <= self.persisted.now_ms;
            if !expired && self.persisted.terminal.len() <= retained_max {
                break;
            }
            self.persisted.terminal.pop_front();
            self.free_reservation(slot);
        }
    }

    // ----- items -----

    pub(crate) fn find_item(&self, sku: &str, warehouse: &str) -> Option<ItemId> {
        self.find_item_in(sku, *self.indexes.warehouses.get(warehouse)?)
    }

    fn find_item_in(&self, sku: &str, warehouse: u16) -> Option<ItemId> {
        let hash = item_hash(&self.indexes.hasher, sku.as_bytes(), warehouse);
        self.indexes
            .items
            .find(hash, |&id| {
                // A corrupt item (SKU outside the arena) is never the one
                // looked for; the full check after each snapshot stops the
                // shard on it.
                let item = &self.persisted.items[id as usize];
                item.warehouse == warehouse && sku_bytes(&self.persisted.sku_arena, item) == Some(sku.as_bytes())
            })
            .map(|&id| ItemId(id))
    }

    /// Every item of a SKU on this shard, in the order its warehouses were
    /// first seen: the order of a vector, so the same on every replica. One
    /// probe per warehouse the shard knows (at most
    /// `warehouses_per_shard_max`).
    pub(crate) fn items_of_sku<'a>(&'a self, sku: &'a str) -> impl Iterator<Item = ItemId> + 'a {
        (0..self.persisted.warehouses.len())
            .filter_map(move |warehouse| self.find_item_in(sku, u16::try_from(warehouse).unwrap_or(u16::MAX)))
    }

    /// Creates an empty item (version 0 until its first change is finished).
    /// Refuses, changing nothing, when a bound is reached.
    pub(crate) fn create_item(&mut self, sku: &str, warehouse: &str) -> Result<ItemId, Refusal> {
        if self.persisted.bundles.get(sku).is_some() {
            return Err(Refusal::SkuIsBundle);
        }
        if let Some(id) = self.revive_tombstone(sku, warehouse) {
            return Ok(id);
        }
        let limits = self.persisted.limits;
        if self.persisted.items.len() >= limits.items_per_shard_max as usize {
            return Err(Refusal::ShardFull { bound: Bound::ItemsPerShard, max: u64::from(limits.items_per_shard_max) });
        }
        let warehouse_id = match self.indexes.warehouses.get(warehouse) {
            Some(&id) => id,
            None => {
                if self.persisted.warehouses.len() >= usize::from(limits.warehouses_per_shard_max) {
                    return Err(Refusal::ShardFull {
                        bound: Bound::WarehousesPerShard,
                        max: u64::from(limits.warehouses_per_shard_max),
                    });
                }
                let id = u16::try_from(self.persisted.warehouses.len()).unwrap_or(u16::MAX);
                self.persisted.warehouses.push(warehouse.to_owned());
                self.indexes.warehouses.insert(warehouse.to_owned(), id);
                id
            }
        };
        let id = u32::try_from(self.persisted.items.len()).unwrap_or(u32::MAX);
        let sku_offset = u32::try_from(self.persisted.sku_arena.len()).unwrap_or(u32::MAX);
        self.persisted.sku_arena.extend_from_slice(sku.as_bytes());
        self.persisted.items.push(Item {
            on_hand: 0,
            reserved: 0,
            low_stock_threshold: 0,
            version: 0,
            updated_at_ms: self.persisted.now_ms,
            sku_offset,
            sku_len: u8::try_from(sku.len()).unwrap_or(u8::MAX),
            history_head: 0,
            warehouse: warehouse_id,
            attrs: None,
            history: Vec::new(),
            states: None,
        });
        let hash = item_hash(&self.indexes.hasher, sku.as_bytes(), warehouse_id);
        let (p, ix) = (&self.persisted, &mut self.indexes);
        ix.items.insert_unique(hash, id, |&other| item_key_hash(&ix.hasher, &p.sku_arena, &p.items[other as usize]));
        Ok(ItemId(id))
    }

    /// Items in the name index: every item but the tombstones.
    pub(crate) fn indexed_items(&self) -> usize {
        self.indexes.items.len()
    }

    /// Tombstones in the tombstone index.
    pub(crate) fn indexed_tombstones(&self) -> usize {
        self.indexes.tombstones.len()
    }

    /// Moves an item from the name index to the tombstone index (a delete).
    pub(crate) fn unindex_item(&mut self, id: ItemId) {
        let item = &self.persisted.items[id.0 as usize];
        let hash = item_key_hash(&self.indexes.hasher, &self.persisted.sku_arena, item);
        if let Ok(entry) = self.indexes.items.find_entry(hash, |&other| other == id.0) {
            entry.remove();
        }
        debug_assert!(self.indexes.items.find(hash, |&other| other == id.0).is_none());
        let (p, ix) = (&self.persisted, &mut self.indexes);
        ix.tombstones
            .insert_unique(hash, id.0, |&other| item_key_hash(&ix.hasher, &p.sku_arena, &p.items[other as usize]));
    }

    /// The tombstone of this SKU × warehouse, if there is one.
    pub(crate) fn find_tombstone(&self, sku: &str, warehouse: &str) -> Option<ItemId> {
        let warehouse = *self.indexes.warehouses.get(warehouse)?;
        let hash = item_hash(&self.indexes.hasher, sku.as_bytes(), warehouse);
        self.indexes
            .tombstones
            .find(hash, |&id| {
                let item = &self.persisted.items[id as usize];
                item.warehouse == warehouse && sku_bytes(&self.persisted.sku_arena, item) == Some(sku.as_bytes())
            })
            .map(|&id| ItemId(id))
    }

    /// Re-creates a deleted SKU × warehouse in its tombstone's slot, as an
    /// empty item at version 0 (its first change makes it 1). The slot's
    /// names are the same, so reservations that ended while it was the old
    /// item still read right; it costs no new slot and no arena bytes, so
    /// delete and re-create churn does not grow the shard.
    fn revive_tombstone(&mut self, sku: &str, warehouse: &str) -> Option<ItemId> {
        let id = self.find_tombstone(sku, warehouse)?;
        let item = &self.persisted.items[id.0 as usize];
        let hash = item_key_hash(&self.indexes.hasher, &self.persisted.sku_arena, item);
        if let Ok(entry) = self.indexes.tombstones.find_entry(hash, |&other| other == id.0) {
            entry.remove();
        }
        self.persisted.catalog.tombstones.remove(&id.0);
        let now_ms = self.persisted.now_ms;
        let item = &mut self.persisted.items[id.0 as usize];
        debug_assert!(item.on_hand == 0 && item.reserved == 0 && item.history.is_empty());
        item.on_hand = 0;
        item.reserved = 0;
        item.low_stock_threshold = 0;
        item.version = 0;
        item.updated_at_ms = now_ms;
        item.history_head = 0;
        item.attrs = None;
        item.history = Vec::new();
        let (p, ix) = (&self.persisted, &mut self.indexes);
        ix.items.insert_unique(hash, id.0, |&other| item_key_hash(&ix.hasher, &p.sku_arena, &p.items[other as usize]));
        Some(id)
    }

    pub(crate) fn item(&self, id: ItemId) -> &Item {
        &self.persisted.items[id.0 as usize]
    }

    pub(crate) fn item_mut(&mut self, id: ItemId) -> &mut Item {
        &mut self.persisted.items[id.0 as usize]
    }

    /// The item's SKU, from the shard's arena. An error, never an empty
    /// name, if the state is corrupt.
    pub(crate) fn item_sku(&self, id: ItemId) -> Result<&str, Corrupt> {
        let item = self.item(id);
        let bytes = sku_bytes(&self.persisted.sku_arena, item).ok_or_else(|| {
            Corrupt(format!(
                "item {}: SKU at {}+{} is outside the {}-byte arena",
                id.0,
                item.sku_offset,
                item.sku_len,
                self.persisted.sku_arena.len()
            ))
        })?;
        std::str::from_utf8(bytes).map_err(|_| Corrupt(format!("item {}: SKU is not UTF-8", id.0)))
    }

    /// The item's warehouse name, from the shard's table. An error, never an
    /// empty name, if the state is corrupt.
    pub(crate) fn item_warehouse(&self, id: ItemId) -> Result<&str, Corrupt> {
        let warehouse = self.item(id).warehouse;
        self.persisted.warehouses.get(usize::from(warehouse)).map(String::as_str).ok_or_else(|| {
            Corrupt(format!(
                "item {}: warehouse {warehouse} is past the {}-name table",
                id.0,
                self.persisted.warehouses.len()
            ))
        })
    }

    pub(crate) fn before(&self, id: ItemId) -> Before {
        let item = self.item(id);
        Before {
            on_hand: item.on_hand,
            reserved: item.reserved,
            unsellable: item.levels().unsellable(),
            status: item.status(),
        }
    }

    /// Finishes a change made to an item's fields: bumps the version, stamps
    /// the time, records the movement, emits stock and crossing events, and
    /// asserts the item's invariants.
    pub(crate) fn finish_change(&mut self, id: ItemId, before: Before, change: Change, emitter: &mut Emitter) {
        let history_len_max = usize::from(self.persisted.limits.history_len_max);
        let item = &mut self.persisted.items[id.0 as usize];
        debug_assert!(item.reserved <= item.on_hand, "reserved {} > on_hand {}", item.reserved, item.on_hand);
        debug_assert!(
            item.committed() <= item.on_hand,
            "reserved + unsellable {} > on_hand {}",
            item.committed(),
            item.on_hand
        );
        debug_assert!(item.on_hand <= QUANTITY_MAX && item.low_stock_threshold <= QUANTITY_MAX);
        debug_assert!(item.levels().max_level() <= QUANTITY_MAX, "a state level over the maximum");
        debug_assert!(item.states.as_deref().is_none_or(|levels| !levels.is_empty()), "empty levels kept boxed");
        item.version += 1;
        item.updated_at_ms = emitter.at_ms;
        if item.on_hand != before.on_hand {
            debug_assert!(change.movement.is_some(), "on_hand moved without a movement");
            if let Some((reason, who)) = change.movement {
                let delta = signed_delta(before.on_hand, item.on_hand);
                item.record(
                    Movement { at_ms: emitter.at_ms, delta, on_hand_after: item.on_hand, who, reason },
                    history_len_max,
                );
            }
        }
        let (on_hand, reserved, status) = (item.on_hand, item.reserved, item.status());
        let available = item.available();
        let low_stock_threshold = item.low_stock_threshold;
        // A move between states is a movement even when neither level
        // changes (available to damaged): the ledger records it.
        let moved = matches!(change.cause, Cause::Move { .. });
        let unsellable = item.levels().unsellable();
        if on_hand != before.on_hand || reserved != before.reserved || unsellable != before.unsellable || moved {
            emitter.emit(EventKind::StockChanged {
                item: id,
                cause: change.cause,
                levels: LevelChange {
                    on_hand_before: before.on_hand,
                    on_hand_after: on_hand,
                    reserved_before: before.reserved,
                    reserved_after: reserved,
                    unsellable_before: before.unsellable,
                    unsellable_after: unsellable,
                },
            });
        }
        if item.levels().backordered > 0 && available > 0 && !self.backorders_due.contains(&id) {
            self.backorders_due.push(id);
        }
        if !change.created && status != before.status {
            emitter.emit(EventKind::ThresholdCrossed {
                item: id,
                from: before.status,
                to: status,
                available,
                low_stock_threshold,
            });
        }
    }

    /// The `Who` of a movement made by `principal`, interning the name.
    pub(crate) fn who(&mut self, principal: Option<&Principal>) -> Who {
        let Some(principal) = principal else {
            return Who::System;
        };
        if let Some(&id) = self.indexes.principals.get(principal.as_str()) {
            return Who::Principal(id);
        }
        // The last id is reserved for "other", so the table never reaches it.
        let principals_max =
            usize::from(self.persisted.limits.principals_per_shard_max).min(usize::from(PRINCIPAL_OTHER));
        if self.persisted.principals.len() >= principals_max {
            return Who::Principal(PRINCIPAL_OTHER);
        }
        let id = u16::try_from(self.persisted.principals.len()).unwrap_or(PRINCIPAL_OTHER);
        self.persisted.principals.push(principal.as_str().to_owned());
        self.indexes.principals.insert(principal.as_str().to_owned(), id);
        Who::Principal(id)
    }

    /// A principal's name; `"other"` for the id movements get once the
    /// table is full. An error for any other id past the table.
    pub(crate) fn principal_name(&self, id: u16) -> Result<&str, Corrupt> {
        if id == PRINCIPAL_OTHER {
            return Ok("other");
        }
        self.persisted.principals.get(usize::from(id)).map(String::as_str).ok_or_else(|| {
            Corrupt(format!("principal {id} is past the {}-name table", self.persisted.principals.len()))
        })
    }

    /// The input error if any SKU of the command belongs to another shard.
    pub(crate) fn wrong_shard(&self, command: &Command) -> Option<InputError> {
        let check = |sku: &str| {
            let owner = shard_of(sku, self.persisted.shard_count);
            (owner != self.persisted.shard).then_some(InputError::WrongShard { owner, shard: self.persisted.shard })
        };
        match command {
            Command::Hold(hold) => hold.lines.iter().find_map(|line| check(line.sku.as_str())),
            other => other.routing_sku().and_then(check),
        }
    }

    // ----- reservations -----

    pub(crate) fn find_reservation(&self, id: &ReservationId) -> Option<u32> {
        let hash = self.indexes.hasher.hash_one(id);
        self.indexes.reservations.find(hash, |&slot| self.reservation_at(slot).is_some_and(|r| r.id == *id)).copied()
    }

    pub(crate) fn find_by_key(&self, key: &IdempotencyKey) -> Option<u32> {
        let hash = self.indexes.hasher.hash_one(key.as_str());
        self.indexes
            .keys
            .find(hash, |&slot| {
                self.reservation_at(slot).and_then(|r| r.idempotency_key.as_ref()).is_some_and(|k| k == key)
            })
            .copied()
    }

    pub(crate) fn reservation_at(&self, slot: u32) -> Option<&Reservation> {
        self.persisted.reservations.get(slot as usize).and_then(Option::as_ref)
    }

    fn reservation_at_mut(&mut self, slot: u32) -> Option<&mut Reservation> {
        self.persisted.reservations.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub(crate) fn live_holds(&self) -> u32 {
        self.indexes.live_holds
    }

    pub(crate) fn next_hold_seq(&mut self) -> u64 {
        let seq = self.persisted.holds_made;
        self.persisted.holds_made += 1;
        seq
    }

    /// Stores a new held reservation and arms its timer. Returns its slot and
    /// summary (taken before the move, so the caller need not read it back).
    pub(crate) fn insert_reservation(&mut self, reservation: Reservation) -> (u32, ReservationSummary) {
        debug_assert_eq!(reservation.state, ReservationState::Held);
        debug_assert!(self.find_reservation(&reservation.id).is_none());
        let slot = match self.persisted.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.persisted.reservations.push(None);
                u32::try_from(self.persisted.reservations.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.indexes.wheel.insert(slot, reservation.deadline_ms);
        self.indexes.live_holds += 1;
        let id_hash_value = self.indexes.hasher.hash_one(reservation.id);
        let key_hash_value = reservation.idempotency_key.as_ref().map(|key| self.indexes.hasher.hash_one(key.as_str()));
        let summary = summary_of(&reservation);
        self.persisted.reservations[slot as usize] = Some(reservation);
        let (p, ix) = (&self.persisted, &mut self.indexes);
        ix.reservations.insert_unique(id_hash_value, slot, |&other| id_hash(&ix.hasher, &p.reservations, other));
        if let Some(hash) = key_hash_value {
            ix.keys.insert_unique(hash, slot, |&other| key_hash(&ix.hasher, &p.reservations, other));
        }
        (slot, summary)
    }

    /// Moves a held reservation's deadline.
    pub(crate) fn move_deadline(&mut self, slot: u32, deadline_ms: u64) {
        if let Some(reservation) = self.reservation_at_mut(slot) {
            debug_assert_eq!(reservation.state, ReservationState::Held);
            reservation.deadline_ms = deadline_ms;
            self.indexes.wheel.insert(slot, deadline_ms);
        }
    }

    /// Ends a held reservation: sells (confirm) or gives back (release,
    /// expiry) every line, and keeps the reservation for retries until the
    /// retention runs out. Returns its summary as it ended.
    /// Ends a held reservation. `sold` (a confirm only): the units each
    /// held line sells, at most what it holds; the rest goes back to the
    /// shelf, and the reservation keeps the lines as sold. `None`: a
    /// confirm sells every held unit.
    pub(crate) fn end_reservation(
        &mut self,
        slot: u32,
        state: ReservationState,
        sold: Option<&[u64]>,
        emitter: &mut Emitter,
    ) -> Option<ReservationSummary> {
        let reservation = self.reservation_at(slot)?;
        debug_assert_eq!(reservation.state, ReservationState::Held, "ending a terminal reservation");
        debug_assert!(sold.is_none() || state == ReservationState::Confirmed, "only a confirm sells");
        let id = reservation.id;
        let lines = reservation.lines.clone();
        let customer = reservation.customer.clone();
        debug_assert!(sold.is_none_or(|sold| sold.len() == lines.as_slice().len()), "one sold figure per line");
        let sold_of = |at: usize, held: u64| sold.and_then(|sold| sold.get(at).copied()).unwrap_or(held);
        // Units sold per SKU, for the customer limits.
        let mut sold_skus: Vec<(String, u64)> = Vec::new();
        for (at, line) in lines.as_slice().iter().enumerate() {
            let units = sold_of(at, line.quantity);
            debug_assert!(units <= line.quantity, "selling more than held");
            let units = units.min(line.quantity);
            if state == ReservationState::Confirmed && customer.is_some() {
                let sku = self.item_sku(line.item).ok()?.to_owned();
                match sold_skus.iter_mut().find(|(name, _)| *name == sku) {
                    Some((_, sum)) => *sum += units,
                    None => sold_skus.push((sku, units)),
                }
            }
            let before = self.before(line.item);
            let item = self.item_mut(line.item);
            debug_assert!(item.reserved >= line.from_stock(), "hold larger than reserved");
            debug_assert!(line.backordered == 0 || state != ReservationState::Confirmed, "confirming a backorder");
            item.reserved -= line.from_stock();
            if line.backordered > 0 {
                // Released or expired: the backorder gives its room back.
                let mut levels = item.levels();
                debug_assert!(levels.backordered >= line.backordered, "backorder larger than backordered");
                levels.backordered -= line.backordered;
                item.set_levels(levels);
            }
            let change = match state {
                ReservationState::Confirmed => {
                    item.on_hand -= units;
                    Change {
                        cause: Cause::Confirm(id),
                        movement: Some((MovementReason::Confirmed, Who::Reservation(id))),
                        created: false,
                    }
                }
                ReservationState::Released => Change { cause: Cause::Release(id), movement: None, created: false },
                ReservationState::Expired | ReservationState::Held => {
                    Change { cause: Cause::Expire(id), movement: None, created: false }
                }
            };
            self.finish_change(line.item, before, change, emitter);
        }
        // The reservation's own event follows its lines' stock changes.
        match state {
            ReservationState::Confirmed => emitter.emit(EventKind::ReservationConfirmed { reservation: id }),
            ReservationState::Released => emitter.emit(EventKind::ReservationReleased { reservation: id }),
            // Expiry emits its own event first, with the deadline.
            ReservationState::Expired | ReservationState::Held => {}
        }
        self.indexes.wheel.cancel(slot);
        self.indexes.live_holds -= 1;
        let now_ms = self.persisted.now_ms;
        if let Some(customer) = customer {
            self.persisted.customers.end(&customer, &sold_skus, now_ms);
        }
        let reservation = self.reservation_at_mut(slot)?;
        if let Some(sold) = sold {
            let kept: Vec<HeldLine> = lines
                .as_slice()
                .iter()
                .zip(sold)
                .filter(|(_, units)| **units > 0)
                .map(|(line, units)| HeldLine { item: line.item, quantity: *units, backordered: 0 })
                .collect();
            reservation.lines = match kept.as_slice() {
                [one] => Lines::One(*one),
                _ => Lines::Many(kept),
            };
        }
        reservation.end(state, now_ms);
        let summary = summary_of(reservation);
        self.persisted.terminal.push_back(slot);
        self.forget_terminal();
        // Units it gave back fill other holds' backorders.
        self.fill_backorders(emitter);
        Some(summary)
    }

    /// Fills backorders from stock that became available: for each item
    /// that has both, the live holds with units backordered on it, oldest
    /// hold first (creation order, the same on every replica), each take
    /// what is available up to their backorder. Each fill reserves the
    /// units (a `StockChanged` event caused by the hold, so the ledger
    /// records it as one) and emits `BackorderFilled`. O(reservations) per
    /// item with backorders and new stock; nothing otherwise.
    pub(crate) fn fill_backorders(&mut self, emitter: &mut Emitter) {
        while let Some(id) = self.backorders_due.pop() {
            let mut waiting: Vec<(u64, u32)> = self
                .persisted
                .reservations
                .iter()
                .enumerate()
                .filter_map(|(slot, reservation)| {
                    let reservation = reservation.as_ref()?;
                    let waits = reservation.state == ReservationState::Held
                        && reservation.lines.as_slice().iter().any(|line| line.item == id && line.backordered > 0);
                    waits.then(|| (reservation.seq, u32::try_from(slot).unwrap_or(u32::MAX)))
                })
                .collect();
            // Sequence numbers are unique, so the order is total.
            waiting.sort_unstable();
            for (_, slot) in waiting {
                let available = self.item(id).available();
                if available == 0 {
                    break;
                }
                let Some(reservation) = self.reservation_at_mut(slot) else { continue };
                let reservation_id = reservation.id;
                let Some(line) = reservation.lines.as_mut_slice().iter_mut().find(|line| line.item == id) else {
                    continue;
                };
                let units = line.backordered.min(available);
                line.backordered -= units;
                let backordered = line.backordered;
                let before = self.before(id);
                let item = self.item_mut(id);
                item.reserved += units;
                let mut levels = item.levels();
                debug_assert!(levels.backordered >= units, "filling more than backordered");
                levels.backordered -= units;
                item.set_levels(levels);
                let change = Change { cause: Cause::Hold(reservation_id), movement: None, created: false };
                self.finish_change(id, before, change, emitter);
                emitter.emit(EventKind::BackorderFilled { reservation: reservation_id, item: id, units, backordered });
            }
            debug_assert!(
                self.item(id).levels().backordered == 0 || self.item(id).available() == 0,
                "item {} has units available and backordered after filling",
                id.0
            );
        }
    }

    fn free_reservation(&mut self, slot: u32) {
        let Some(reservation) = self.persisted.reservations.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        debug_assert!(reservation.state.is_terminal(), "forgetting a live hold");
        let hash = self.indexes.hasher.hash_one(reservation.id);
        if let Ok(entry) = self.indexes.reservations.find_entry(hash, |&other| other == slot) {
            entry.remove();
        }
        if let Some(key) = &reservation.idempotency_key {
            let hash = self.indexes.hasher.hash_one(key.as_str());
            if let Ok(entry) = self.indexes.keys.find_entry(hash, |&other| other == slot) {
                entry.remove();
            }
        }
        self.persisted.free_slots.push(slot);
    }

    /// A reservation's lines as stored (item and units).
    pub(crate) fn reservation_held_lines(&self, slot: u32) -> Option<Vec<HeldLine>> {
        self.reservation_at(slot).map(|reservation| reservation.lines.as_slice().to_vec())
    }

    pub(crate) fn summary(&self, slot: u32) -> Option<ReservationSummary> {
        self.reservation_at(slot).map(summary_of)
    }

    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.persisted.limits = limits;
        self.forget_terminal();
        self.forget_request_ids();
    }

    // ----- snapshots, digest, invariants -----

    /// The state as snapshot bytes (rkyv). Deterministic: equal states give
    /// equal bytes.
    pub fn to_snapshot_bytes(&self) -> Result<AlignedVec, SnapshotError> {
        rkyv::to_bytes::<rkyv::rancor::Error>(&self.persisted).map_err(|error| SnapshotError::Encode(error.to_string()))
    }

    /// Rebuilds a shard from snapshot bytes, validating the archive and every
    /// cross-reference so a bad snapshot is an error, never a panic later.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let p = rkyv::from_bytes::<Persisted, rkyv::rancor::Error>(&aligned).map_err(|error| error.to_string())?;
        if p.format != STATE_FORMAT {
            return Err(format!("state format {} is not the supported {}", p.format, STATE_FORMAT));
        }
        check_references(&p)?;
        let state = Self::from_persisted(p);
        state.check_rules()?;
        Ok(state)
    }

    /// A 128-bit digest of the whole state. Two replicas with equal digests
    /// hold byte-identical state.
    pub fn digest(&self) -> u128 {
        match self.to_snapshot_bytes() {
            Ok(bytes) => digest_of_snapshot_bytes(&bytes),
            Err(_) => 0,
        }
    }

    /// Test hook: breaks a rule of the state as a bug would (the first
    /// item's `reserved` goes above its `on_hand`), so the checks that must
    /// catch it can be tested. Does nothing to a shard with no item.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn break_invariant_for_tests(&mut self) {
        if let Some(item) = self.persisted.items.first_mut() {
            item.reserved = item.on_hand.saturating_add(1);
        }
    }

    /// Test hook: points the first item's SKU outside the arena, as a bug
    /// (or a bit flip) would, so the lookups that must refuse it can be
    /// tested. Does nothing to a shard with no item.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn corrupt_arena_for_tests(&mut self) {
        let arena_len = u32::try_from(self.persisted.sku_arena.len()).unwrap_or(u32::MAX);
        if let Some(item) = self.persisted.items.first_mut() {
            item.sku_offset = arena_len;
        }
    }

    /// Checks every invariant of DESIGN.md over the whole shard: every
    /// reference inside the state (arena offsets, warehouse and principal
    /// ids, reservation lines, free slots), then every rule between its
    /// parts. O(state): for loading snapshots and after building each one
    /// (off the shard thread), and for tests; not for the hot path, which
    /// asserts the same rules where it changes state.
    pub fn check_invariants(&self) -> Result<(), String> {
        check_references(&self.persisted)?;
        self.check_rules()
    }

    /// The rules between the state's parts, once its references are known
    /// to be good (`check_references`).
    fn check_rules(&self) -> Result<(), String> {
        let (reserved, backordered, live) = self.check_reservations()?;
        self.check_catalog()?;
        for (id, item) in self.persisted.items.iter().enumerate() {
            check_item(id, item, reserved[id], backordered[id])?;
        }
        self.check_customer_usage()?;
        self.check_bundles()?;
        self.check_warehouse_priority()?;
        if live != self.indexes.live_holds || live as usize != self.indexes.wheel.len() {
            return Err(format!(
                "{live} live holds, {} counted, {} timers",
                self.indexes.live_holds,
                self.indexes.wheel.len()
            ));
        }
        if self.indexes.reservations.len() + self.persisted.free_slots.len() != self.persisted.reservations.len() {
            return Err("reservation slab, index and free list disagree".into());
        }
        let limits = &self.persisted.limits;
        self.indexes.dedup.check(
            &self.persisted.dedup,
            self.persisted.now_ms,
            limits.dedup_window_max,
            limits.dedup_retention_ms,
        )
    }
}

impl ShardState {
    /// Checks every reservation's own rules and sums, per item, the units
    /// live holds take from stock and the units they wait for; with the
    /// count of live holds.
    fn check_reservations(&self) -> Result<(Vec<u64>, Vec<u64>, u32), String> {
        let mut reserved = vec![0u64; self.persisted.items.len()];
        let mut backordered = vec![0u64; self.persisted.items.len()];
        let mut live = 0u32;
        let terminal: hashbrown::HashSet<u32> = self.persisted.terminal.iter().copied().collect();
        for (slot, reservation) in self.persisted.reservations.iter().enumerate() {
            let Some(reservation) = reservation else { continue };
            let slot = u32::try_from(slot).map_err(|_| "reservation slab over u32".to_string())?;
            if reservation.state == ReservationState::Held {
                live += 1;
                if reservation.deadline_ms <= self.persisted.now_ms {
                    return Err(format!("hold {} outlived its deadline", reservation.id));
                }
                for line in reservation.lines.as_slice() {
                    // A loaded snapshot's quantities are not bounded yet: a
                    // sum past u64 is damage, not a panic.
                    let sum = reserved
                        .get_mut(line.item.0 as usize)
                        .ok_or_else(|| format!("hold {} names unknown item {}", reservation.id, line.item.0))?;
                    let from_stock = line
                        .quantity
                        .checked_sub(line.backordered)
                        .ok_or_else(|| format!("hold {}: more backordered than held", reservation.id))?;
                    *sum = sum
                        .checked_add(from_stock)
                        .ok_or_else(|| format!("item {}: live holds sum past u64", line.item.0))?;
                    let waiting = &mut backordered[line.item.0 as usize];
                    *waiting = waiting
                        .checked_add(line.backordered)
                        .ok_or_else(|| format!("item {}: backorders sum past u64", line.item.0))?;
                }
            } else if reservation.state == ReservationState::Confirmed
                && reservation.lines.as_slice().iter().any(|line| line.backordered > 0)
            {
                return Err(format!("confirmed reservation {} sold units it never had", reservation.id));
            } else if !terminal.contains(&slot) {
                return Err(format!("terminal reservation {} is not queued to be forgotten", reservation.id));
            }
            if self.find_reservation(&reservation.id) != Some(slot) {
                return Err(format!("reservation {} is not indexed", reservation.id));
            }
        }
        Ok((reserved, backordered, live))
    }
}

/// One item's own rules, given what live holds take from it (`reserved`)
/// and wait for (`backordered`).
fn check_item(id: usize, item: &Item, reserved: u64, backordered: u64) -> Result<(), String> {
    if item.reserved > item.on_hand {
        return Err(format!("item {id}: reserved {} > on_hand {}", item.reserved, item.on_hand));
    }
    let levels = item.levels();
    if levels.max_level() > QUANTITY_MAX {
        return Err(format!("item {id}: a state level over the maximum: {levels:?}"));
    }
    if item.reserved + levels.unsellable() > item.on_hand {
        return Err(format!(
            "item {id}: reserved {} + unsellable {} > on_hand {}",
            item.reserved,
            levels.unsellable(),
            item.on_hand
        ));
    }
    if item.states.as_deref().is_some_and(StateLevels::is_empty) {
        return Err(format!("item {id}: empty state levels kept"));
    }
    if levels.backordered != backordered {
        return Err(format!("item {id}: backordered {} but live holds wait for {}", levels.backordered, backordered));
    }
    if levels.backordered > 0 && item.available() > 0 {
        return Err(format!("item {id}: {} available while {} backordered", item.available(), levels.backordered));
    }
    if item.on_hand > QUANTITY_MAX {
        return Err(format!("item {id}: on_hand {} over the maximum", item.on_hand));
    }
    // `finish_change` asserts this of every item it touches: a
    // snapshot must not load an item its next change would fail on.
    if item.low_stock_threshold > QUANTITY_MAX {
        return Err(format!("item {id}: threshold {} over the maximum", item.low_stock_threshold));
    }
    if item.reserved != reserved {
        return Err(format!("item {id}: reserved {} but live holds sum to {}", item.reserved, reserved));
    }
    if item.version == 0 {
        return Err(format!("item {id}: version 0"));
    }
    // `finish_change` adds one to it; no item lives 2^64 changes.
    if item.version == u64::MAX {
        return Err(format!("item {id}: version {} has no next", item.version));
    }
    Ok(())
}

impl ShardState {
    /// Every SKU's warehouse priority list is not empty, names no
    /// warehouse twice, and names only warehouses that stock the SKU (a delete
    /// takes its warehouse out of the list). So it is no longer than the
    /// shard's warehouses, whatever the limits became since it was set.
    fn check_warehouse_priority(&self) -> Result<(), String> {
        let max = u16::MAX;
        for (sku, list) in &self.persisted.warehouse_priority {
            if list.is_empty() {
                return Err(format!("SKU {sku}: an empty warehouse priority is kept"));
            }
            crate::cmd::check_priority_list(list.iter().map(String::as_str), max)
                .map_err(|refusal| format!("SKU {sku}: warehouse priority: {refusal:?}"))?;
            if let Some(name) = list.iter().find(|name| self.find_item(sku, name).is_none()) {
                return Err(format!("SKU {sku}: warehouse priority names {name}, which does not stock it"));
            }
        }
        Ok(())
    }

    /// A SKU's warehouse priority list, most preferred first (empty: none).
    pub fn warehouse_priority(&self, sku: &str) -> &[String] {
        self.persisted.warehouse_priority.get(sku).map_or(&[], Vec::as_slice)
    }

    /// Every (SKU, customer) pair holds exactly the units its live holds
    /// counted, within the bound, and every pair still counts something.
    fn check_customer_usage(&self) -> Result<(), String> {
        let customers = &self.persisted.customers;
        let mut held: std::collections::BTreeMap<(&str, &str), u64> = std::collections::BTreeMap::new();
        for reservation in self.persisted.reservations.iter().flatten() {
            if reservation.state != ReservationState::Held {
                continue;
            }
            let Some(hold) = &reservation.customer else { continue };
            for (sku, units) in &hold.skus {
                let sum = held.entry((sku.as_str(), hold.customer.as_str())).or_default();
                *sum = sum
                    .checked_add(*units)
                    .ok_or_else(|| format!("customer {} of {sku}: holds past u64", hold.customer))?;
            }
        }
        for ((sku, customer), usage) in &customers.usage {
            let counted = held.remove(&(sku.as_str(), customer.as_str())).unwrap_or(0);
            if usage.held != counted {
                return Err(format!(
                    "customer {customer} of {sku}: usage holds {} but live holds counted {counted}",
                    usage.held
                ));
            }
            if usage.held == 0 && usage.sold.is_empty() {
                return Err(format!("customer {customer} of {sku}: an empty usage is kept"));
            }
            if usage.sold.len() > crate::customer::SALES_KEPT_MAX {
                return Err(format!("customer {customer} of {sku}: {} dated sales kept", usage.sold.len()));
            }
        }
        if let Some(((sku, customer), units)) = held.into_iter().next() {
            return Err(format!("customer {customer} of {sku}: live holds counted {units} with no usage"));
        }
        if customers.usage.len() > self.persisted.limits.customer_usage_per_shard_max as usize {
            return Err(format!("{} customer usages, over the bound", customers.usage.len()));
        }
        Ok(())
    }

    /// Every bundle is a valid definition of a SKU with no items here.
    /// (Its size may exceed limits lowered since it was defined.)
    fn check_bundles(&self) -> Result<(), String> {
        for (sku, components) in &self.persisted.bundles.by_sku {
            let name = crate::ids::Sku::new(sku.clone()).map_err(|e| format!("bundle {sku:?}: {e}"))?;
            crate::bundle::validate(&name, components, u32::MAX).map_err(|e| format!("bundle {sku}: {e}"))?;
            if self.items_of_sku(sku).next().is_some() {
                return Err(format!("bundle {sku} has items"));
            }
        }
        Ok(())
    }

    /// A SKU's bundle definition, if it is a bundle.
    pub fn bundle(&self, sku: &str) -> Option<Vec<crate::bundle::Component>> {
        self.persisted.bundles.get(sku).map(<[_]>::to_vec)
    }

    /// The shard's bundle definitions, by SKU, from `after` (exclusive),
    /// at most `limit`.
    pub fn bundles(&self, after: Option<&str>, limit: usize) -> Vec<(String, Vec<crate::bundle::Component>)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.persisted
            .bundles
            .by_sku
            .range::<str, _>((from, Unbounded))
            .take(limit)
            .map(|(sku, components)| (sku.clone(), components.clone()))
            .collect()
    }

    /// A SKU's per-customer limit.
    pub fn customer_limit(&self, sku: &str) -> Option<crate::customer::CustomerLimit> {
        self.persisted.customers.limit(sku).copied()
    }

    /// What a customer has of a SKU now, and its limit.
    pub fn customer_usage(&self, sku: &str, customer: &str) -> crate::customer::CustomerUsage {
        self.persisted.customers.usage_of(sku, customer, self.persisted.now_ms)
    }

    /// Customers tracked for a SKU's limit.
    pub fn customers_tracked(&self, sku: &str) -> u64 {
        self.persisted.customers.customers_of(sku) as u64
    }
}

fn summary_of(reservation: &Reservation) -> ReservationSummary {
    ReservationSummary {
        id: reservation.id,
        state: reservation.state,
        created_at_ms: reservation.created_at_ms,
        deadline_ms: reservation.deadline_ms,
        ended_at_ms: reservation.state.is_terminal().then_some(reservation.ended_at_ms),
    }
}

/// The item's SKU bytes in the arena; `None` if its offset and length fall
/// outside it (a corrupt state).
fn sku_bytes<'a>(arena: &'a [u8], item: &Item) -> Option<&'a [u8]> {
    let start = item.sku_offset as usize;
    arena.get(start..start.checked_add(usize::from(item.sku_len))?)
}

fn item_hash(hasher: &DefaultHashBuilder, sku: &[u8], warehouse: u16) -> u64 {
    hasher.hash_one((sku, warehouse))
}

/// Where an item goes in the item table. Items enter the table only once
/// their SKU is known to be in the arena; were one corrupt later, its hash
/// would only misplace it (lookups compare the real bytes, and the full
/// check after each snapshot stops the shard on it), never match.
fn item_key_hash(hasher: &DefaultHashBuilder, arena: &[u8], item: &Item) -> u64 {
    match sku_bytes(arena, item) {
        Some(sku) => item_hash(hasher, sku, item.warehouse),
        None => hasher.hash_one((item.sku_offset, item.sku_len, item.warehouse)),
    }
}

fn id_hash(hasher: &DefaultHashBuilder, reservations: &[Option<Reservation>], slot: u32) -> u64 {
    let id =
        reservations.get(slot as usize).and_then(Option::as_ref).map_or(ReservationId::from_bytes([0; 16]), |r| r.id);
    hasher.hash_one(id)
}

fn key_hash(hasher: &DefaultHashBuilder, reservations: &[Option<Reservation>], slot: u32) -> u64 {
    let key = reservations
        .get(slot as usize)
        .and_then(Option::as_ref)
        .and_then(|r| r.idempotency_key.as_ref())
        .map_or("", IdempotencyKey::as_str);
    hasher.hash_one(key)
}

fn signed_delta(before: u64, after: u64) -> i64 {
    // Both are at most QUANTITY_MAX (10^15), so the difference fits an i64.
    if after >= before {
        i64::try_from(after - before).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(before - after).unwrap_or(i64::MAX)
    }
}

/// Every index a snapshot holds points inside its own vectors.
fn check_references(p: &Persisted) -> Result<(), String> {
    if p.shard_count == 0 || p.shard >= p.shard_count {
        return Err(format!("shard {} of {}", p.shard, p.shard_count));
    }
    p.limits.validate()?;
    for (id, item) in p.items.iter().enumerate() {
        let end = item.sku_offset as usize + usize::from(item.sku_len);
        let sku = p.sku_arena.get(item.sku_offset as usize..end).ok_or(format!("item {id}: SKU outside arena"))?;
        let sku = std::str::from_utf8(sku).map_err(|_| format!("item {id}: SKU not UTF-8"))?;
        crate::ids::check_ident(crate::error::Field::Sku, sku, crate::ids::SKU_LEN_MAX)
            .map_err(|error| format!("item {id}: {error}"))?;
        if usize::from(item.warehouse) >= p.warehouses.len() {
            return Err(format!("item {id}: unknown warehouse"));
        }
        if let Some(Who::Principal(principal)) = item.history.iter().map(|m| m.who).find(
            |who| matches!(who, Who::Principal(id) if *id != PRINCIPAL_OTHER && usize::from(*id) >= p.principals.len()),
        ) {
            return Err(format!("item {id}: unknown principal {principal}"));
        }
    }
    let mut seen_free = vec![false; p.reservations.len()];
    for &slot in &p.free_slots {
        let index = slot as usize;
        if p.reservations.get(index).is_none_or(Option::is_some) || seen_free[index] {
            return Err(format!("free slot {slot} is not an empty slot"));
        }
        seen_free[index] = true;
    }
    let mut ids = hashbrown::HashSet::new();
    for (slot, reservation) in p.reservations.iter().enumerate() {
        match reservation {
            None if !seen_free[slot] => return Err(format!("empty slot {slot} is not free")),
            None => {}
            Some(reservation) => {
                if !ids.insert(reservation.id) {
                    return Err(format!("reservation {} appears twice", reservation.id));
                }
                if reservation.lines.as_slice().iter().any(|line| line.item.0 as usize >= p.items.len()) {
                    return Err(format!("reservation {}: unknown item", reservation.id));
                }
            }
        }
    }
    if let Some(&id) = p.catalog.tombstones.iter().find(|&&id| id as usize >= p.items.len()) {
        return Err(format!("tombstone {id} names no item"));
    }
    for &slot in &p.terminal {
        if !p.reservations.get(slot as usize).and_then(Option::as_ref).is_some_and(|r| r.state.is_terminal()) {
            return Err(format!("terminal queue names slot {slot}, which is not terminal"));
        }
    }
    Ok(())
}

//! Reads of a shard's state. They change nothing, so they may run on any
//! replica; whether the answer is linearizable is the cluster's business
//! (read index), not the engine's.
//!
//! Every read is bounded: pages have a limit and a scan budget, histories a
//! length, so no request walks a million items.
//!
//! Reads that name items, warehouses or principals look them up in the
//! shard's arenas; a lookup that finds the state corrupt is an error
//! (`Corrupt`), never an empty name: the caller stops the shard.

use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::Command;
use crate::error::Corrupt;
use crate::event::{Event, EventKind, EventRecord, RecordLine};
use crate::ids::{IdempotencyKey, ReservationId};
use crate::item::{ItemId, Status, Who};
use crate::outcome::{ItemView, LineView, MovementView, Outcome, Refusal, ReservationView};
use crate::raft_log::Batch;
use crate::reservation::HeldLine;
use crate::state::ShardState;

/// Which items a listing wants, and where to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ItemFilter {
    pub status: Option<Status>,
    pub warehouse: Option<String>,
    /// Resume from this item position (from the previous page's cursor).
    pub cursor: u32,
    /// Most items to return (at least 1).
    pub limit: u32,
    /// Most items to look at before returning a (possibly short) page.
    pub scan_max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ItemPage {
    pub items: Vec<ItemView>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next_cursor: Option<u32>,
}

/// Every warehouse of one SKU, with totals.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SkuView {
    /// By warehouse name.
    pub items: Vec<ItemView>,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
}

/// One line of an availability question.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AvailabilityLine {
    pub sku: String,
    pub warehouse: String,
    pub quantity: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LineAvailability {
    pub available: u64,
    pub exists: bool,
    /// Whether the item has enough for every line that names it, summed.
    pub enough: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AvailabilityView {
    pub lines: Vec<LineAvailability>,
    pub all_available: bool,
}

impl ShardState {
    pub(crate) fn item_view(&self, id: ItemId) -> Result<ItemView, Corrupt> {
        let item = self.item(id);
        let attrs = item.attrs.as_deref();
        Ok(ItemView {
            sku: self.item_sku(id)?.to_owned(),
            warehouse: self.item_warehouse(id)?.to_owned(),
            on_hand: item.on_hand,
            reserved: item.reserved,
            available: item.available(),
            low_stock_threshold: item.low_stock_threshold,
            status: item.status(),
            version: item.version,
            updated_at_ms: item.updated_at_ms,
            name: attrs.and_then(|a| a.name.as_ref()).map(|name| name.as_str().to_owned()),
            unit_price_minor: attrs.and_then(|a| a.unit_price_minor),
            states: item.levels(),
        })
    }

    pub fn get_item(&self, sku: &str, warehouse: &str) -> Result<Option<ItemView>, Corrupt> {
        self.find_item(sku, warehouse).map(|id| self.item_view(id)).transpose()
    }

    /// All warehouses of a SKU. Empty if the SKU is unknown.
    pub fn sku_items(&self, sku: &str) -> Result<SkuView, Corrupt> {
        let mut items: Vec<ItemView> = self.items_of_sku(sku).map(|id| self.item_view(id)).collect::<Result<_, _>>()?;
        items.sort_by(|a, b| a.warehouse.cmp(&b.warehouse));
        Ok(SkuView {
            on_hand: items.iter().map(|i| i.on_hand).sum(),
            reserved: items.iter().map(|i| i.reserved).sum(),
            available: items.iter().map(|i| i.available).sum(),
            items,
        })
    }

    /// A page of items in creation order, filtered by status and warehouse.
    pub fn list_items(&self, filter: &ItemFilter) -> Result<ItemPage, Corrupt> {
        let warehouse = match &filter.warehouse {
            Some(name) => match self.persisted.warehouses.iter().position(|w| w == name) {
                Some(id) => Some(id),
                None => {
                    return Ok(ItemPage { items: Vec::new(), next_cursor: None });
                }
            },
            None => None,
        };
        let total = self.persisted.items.len();
        let start = (filter.cursor as usize).min(total);
        let end = start.saturating_add(filter.scan_max.max(1) as usize).min(total);
        // At least one item per page, so paging always moves forward.
        let limit = filter.limit.max(1) as usize;
        let mut items = Vec::with_capacity(limit.min(end - start));
        let mut position = start;
        while position < end && items.len() < limit {
            let item = &self.persisted.items[position];
            let wanted = !self.is_tombstone(ItemId(u32::try_from(position).unwrap_or(u32::MAX)))
                && warehouse.is_none_or(|w| usize::from(item.warehouse) == w)
                && filter.status.is_none_or(|status| item.status() == status);
            if wanted {
                items.push(self.item_view(ItemId(u32::try_from(position).unwrap_or(u32::MAX)))?);
            }
            position += 1;
        }
        let next_cursor = (position < total).then(|| u32::try_from(position).unwrap_or(u32::MAX));
        Ok(ItemPage { items, next_cursor })
    }

    /// The item's most recent movements, newest first; `None` if no such item.
    pub fn history(&self, sku: &str, warehouse: &str, limit: usize) -> Result<Option<Vec<MovementView>>, Corrupt> {
        let Some(id) = self.find_item(sku, warehouse) else {
            return Ok(None);
        };
        let movements = self.item(id).movements().take(limit);
        let views = movements
            .map(|m| {
                Ok(MovementView {
                    at_ms: m.at_ms,
                    reason: m.reason,
                    delta: m.delta,
                    on_hand_before: m.on_hand_before(),
                    on_hand_after: m.on_hand_after,
                    who: match m.who {
                        Who::System => "system".to_owned(),
                        Who::Principal(principal) => self.principal_name(principal)?.to_owned(),
                        Who::Reservation(reservation) => reservation.to_string(),
                    },
                })
            })
            .collect::<Result<_, Corrupt>>()?;
        Ok(Some(views))
    }

    pub fn reservation(&self, id: &ReservationId) -> Result<Option<ReservationView>, Corrupt> {
        self.find_reservation(id).map_or(Ok(None), |slot| self.reservation_view(slot))
    }

    pub fn reservation_by_key(&self, key: &IdempotencyKey) -> Result<Option<ReservationView>, Corrupt> {
        self.find_by_key(key).map_or(Ok(None), |slot| self.reservation_view(slot))
    }

    fn reservation_view(&self, slot: u32) -> Result<Option<ReservationView>, Corrupt> {
        let (Some(reservation), Some(summary)) = (self.reservation_at(slot), self.summary(slot)) else {
            return Ok(None);
        };
        Ok(Some(ReservationView {
            summary,
            lines: self.line_views(reservation.lines.as_slice())?,
            idempotency_key: reservation.idempotency_key.as_ref().map(|key| key.as_str().to_owned()),
        }))
    }

    /// The lines of the reservation in `slot`, as stored.
    pub(crate) fn reservation_lines(&self, slot: u32) -> Result<Option<Vec<LineView>>, Corrupt> {
        self.reservation_at(slot).map(|reservation| self.line_views(reservation.lines.as_slice())).transpose()
    }

    /// The idempotency key of the reservation in `slot`, if it has one.
    pub(crate) fn reservation_key(&self, slot: u32) -> Option<IdempotencyKey> {
        self.reservation_at(slot).and_then(|reservation| reservation.idempotency_key.clone())
    }

    /// Held lines as callers see them, in the order given.
    pub(crate) fn line_views(&self, lines: &[HeldLine]) -> Result<Vec<LineView>, Corrupt> {
        lines
            .iter()
            .map(|line| {
                Ok(LineView {
                    sku: self.item_sku(line.item)?.to_owned(),
                    warehouse: self.item_warehouse(line.item)?.to_owned(),
                    quantity: line.quantity,
                    backordered: line.backordered,
                })
            })
            .collect()
    }

    /// Whether each line could be held now, summing lines that name the same
    /// item, as a hold would.
    pub fn availability(&self, lines: &[AvailabilityLine]) -> AvailabilityView {
        let found: Vec<Option<ItemId>> = lines.iter().map(|l| self.find_item(&l.sku, &l.warehouse)).collect();
        let lines: Vec<LineAvailability> = lines
            .iter()
            .zip(&found)
            .map(|(line, &id)| {
                let available = id.map_or(0, |id| self.item(id).available());
                let asked: u64 = lines
                    .iter()
                    .filter(|other| other.sku == line.sku && other.warehouse == line.warehouse)
                    .fold(0u64, |sum, other| sum.saturating_add(other.quantity));
                LineAvailability { available, exists: id.is_some(), enough: id.is_some() && asked <= available }
            })
            .collect();
        let all_available = lines.iter().all(|line| line.enough);
        AvailabilityView { lines, all_available }
    }

    /// An event with its item named, for publishing. An expiry names no
    /// item (empty names); an event whose item is not in the shard, or
    /// whose names are corrupt, is an error.
    pub fn describe(&self, event: &Event) -> Result<EventRecord, Corrupt> {
        self.describe_in(event, None, &[])
    }

    /// `describe`, with the entry's batch and outcomes the event came from:
    /// the command's principal, note and reference, and a refused hold's
    /// short lines. Reservation events name the reservation's lines and key
    /// as the state holds them after the entry (none once it is forgotten:
    /// a shard that retains no ended reservations).
    pub fn describe_in(
        &self,
        event: &Event,
        batch: Option<&Batch>,
        outcomes: &[Outcome],
    ) -> Result<EventRecord, Corrupt> {
        let item = match event.kind {
            EventKind::StockChanged { item, .. }
            | EventKind::ThresholdCrossed { item, .. }
            | EventKind::HoldExtended { item, .. }
            | EventKind::BackorderFilled { item, .. } => Some(item),
            EventKind::ReservationExpired { .. }
            | EventKind::ReservationHeld { .. }
            | EventKind::ReservationRefused { .. }
            | EventKind::ReservationConfirmed { .. }
            | EventKind::ReservationReleased { .. } => None,
        };
        let (sku, warehouse) = match item {
            Some(id) if (id.0 as usize) < self.persisted.items.len() => {
                (self.item_sku(id)?.to_owned(), self.item_warehouse(id)?.to_owned())
            }
            Some(id) => {
                return Err(Corrupt(format!("event {:?} names item {}, past the shard's items", event.id, id.0)));
            }
            None => (String::new(), String::new()),
        };
        let command = batch.and_then(|batch| batch.commands.get(event.command as usize));
        let (principal, note, reference) = command.map(Command::provenance).unwrap_or_default();
        let mut record = EventRecord {
            id: event.id,
            at_ms: event.at_ms,
            sku,
            warehouse,
            kind: event.kind,
            principal: principal.map(|p| p.as_str().to_owned()),
            note: note.map(|n| n.as_str().to_owned()),
            reference: reference.map(|r| r.as_str().to_owned()),
            idempotency_key: None,
            lines: Vec::new(),
        };
        let Some(reservation) = event.kind.reservation() else {
            return Ok(record);
        };
        if let EventKind::ReservationRefused { .. } = event.kind {
            let Some(Command::Hold(hold)) = command else {
                return Ok(record);
            };
            record.idempotency_key = hold.idempotency_key.as_ref().map(|key| key.as_str().to_owned());
            if let Some(Outcome::Refused(Refusal::InsufficientStock { lines })) = outcomes.get(event.command as usize) {
                for short in lines {
                    let Some(line) = hold.lines.get(short.line as usize) else {
                        continue;
                    };
                    record.lines.push(RecordLine {
                        sku: line.sku.as_str().to_owned(),
                        warehouse: line.warehouse.as_ref().map(|w| w.as_str().to_owned()).unwrap_or_default(),
                        quantity: short.requested,
                        available: Some(short.available),
                    });
                }
            }
            return Ok(record);
        }
        if let Some(slot) = self.find_reservation(&reservation) {
            record.idempotency_key = self.reservation_key(slot).map(IdempotencyKey::into_string);
            let describes_lines =
                !matches!(event.kind, EventKind::StockChanged { .. } | EventKind::HoldExtended { .. });
            if describes_lines && let Some(lines) = self.reservation_lines(slot)? {
                record.lines = lines
                    .into_iter()
                    .map(|line| RecordLine {
                        sku: line.sku,
                        warehouse: line.warehouse,
                        quantity: line.quantity,
                        available: None,
                    })
                    .collect();
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::raft_log::{LogEntry, LogId};
    use crate::testing::{Fixture, hold, rid};

    #[test]
    fn a_sku_lists_every_warehouse_with_totals() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "paris", 4, 0);
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 7, 0);
        f.hold(1, &[("SKU-1", "berlin", 3)]);
        let view = f.state.sku_items("SKU-1").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = view.items.iter().map(|i| i.warehouse.as_str()).collect();
        assert_eq!(names, vec!["berlin", "paris"]);
        assert_eq!((view.on_hand, view.reserved, view.available), (14, 3, 11));
        assert!(f.state.sku_items("SKU-404").unwrap_or_else(|e| panic!("{e}")).items.is_empty());
    }

    #[test]
    fn listing_filters_by_status_and_warehouse_and_pages() {
        let mut f = Fixture::new();
        for n in 0..10 {
            f.stock(&format!("SKU-{n}"), if n % 2 == 0 { "berlin" } else { "paris" }, n, 3);
        }
        let filter =
            ItemFilter { status: Some(Status::LowStock), limit: 100, scan_max: 1_000, ..ItemFilter::default() };
        let low: Vec<u64> =
            f.state.list_items(&filter).unwrap_or_else(|e| panic!("{e}")).items.iter().map(|i| i.on_hand).collect();
        assert_eq!(low, vec![1, 2, 3]);
        let berlin =
            ItemFilter { warehouse: Some("berlin".into()), limit: 2, scan_max: 1_000, ..ItemFilter::default() };
        let page = f.state.list_items(&berlin).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.items.len(), 2);
        let next = ItemFilter { cursor: page.next_cursor.unwrap_or(0), ..berlin.clone() };
        let rest = f.state.list_items(&ItemFilter { limit: 100, ..next }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rest.items.len(), 3);
        assert_eq!(rest.next_cursor, None);
        let unknown = ItemFilter { warehouse: Some("oslo".into()), limit: 10, scan_max: 10, ..ItemFilter::default() };
        assert!(f.state.list_items(&unknown).unwrap_or_else(|e| panic!("{e}")).items.is_empty());
    }

    #[test]
    fn listing_stops_at_its_scan_budget() {
        let mut f = Fixture::new();
        for n in 0..10 {
            f.stock(&format!("SKU-{n}"), "berlin", 100, 0);
        }
        let filter = ItemFilter { status: Some(Status::OutOfStock), limit: 5, scan_max: 4, ..ItemFilter::default() };
        let page = f.state.list_items(&filter).unwrap_or_else(|e| panic!("{e}"));
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor, Some(4));
    }

    #[test]
    fn availability_sums_duplicate_lines() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let line = |sku: &str, quantity| AvailabilityLine { sku: sku.into(), warehouse: "berlin".into(), quantity };
        let view = f.state.availability(&[line("SKU-1", 3), line("SKU-1", 3), line("SKU-9", 1)]);
        assert!(!view.all_available);
        assert_eq!(view.lines[0], LineAvailability { available: 5, exists: true, enough: false });
        assert_eq!(view.lines[2], LineAvailability { available: 0, exists: false, enough: false });
        assert!(f.state.availability(&[line("SKU-1", 5)]).all_available);
    }

    #[test]
    fn a_reservation_reads_back_with_its_lines_and_key() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let key = IdempotencyKey::new("cart-1").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, key.clone()));
        let view = f.state.reservation(&rid(1)).ok().flatten().unwrap_or_else(|| panic!("missing"));
        assert_eq!(
            view.lines,
            vec![LineView { sku: "SKU-1".into(), warehouse: "berlin".into(), quantity: 2, backordered: 0 }]
        );
        assert_eq!(view.idempotency_key.as_deref(), Some("cart-1"));
        let by_key = key.and_then(|key| f.state.reservation_by_key(&key).ok().flatten());
        assert_eq!(by_key, Some(view));
        assert!(f.state.reservation(&rid(2)).ok().flatten().is_none());
    }

    #[test]
    fn a_corrupt_arena_reference_is_an_error_never_an_empty_name() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.stock("SKU-2", "berlin", 5, 0);
        f.one(hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, None));
        assert!(f.state.list_items(&ItemFilter { limit: 10, scan_max: 10, ..ItemFilter::default() }).is_ok());

        f.state.corrupt_arena_for_tests();
        let all = ItemFilter { limit: 10, scan_max: 10, ..ItemFilter::default() };
        let error = f.state.list_items(&all).err().unwrap_or_else(|| panic!("a corrupt SKU was listed"));
        assert!(error.0.contains("outside the"), "{error}");
        assert!(f.state.reservation(&rid(1)).is_err(), "the hold's line names the corrupt item");
        // The other item reads as before.
        assert_eq!(f.state.get_item("SKU-2", "berlin").ok().flatten().map(|item| item.on_hand), Some(5));
        // A corrupt item is never taken for the one asked for.
        assert_eq!(f.state.get_item("SKU-1", "berlin"), Ok(None));
        // And the full check names it.
        assert!(f.state.check_invariants().is_err_and(|reason| reason.contains("SKU outside arena")));
    }

    #[test]
    fn an_unknown_warehouse_or_principal_id_is_an_error() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.state.persisted.items[0].warehouse = 7;
        let all = ItemFilter { limit: 10, scan_max: 10, ..ItemFilter::default() };
        assert!(f.state.list_items(&all).is_err_and(|error| error.0.contains("warehouse 7")));

        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        if let Some(movement) = f.state.persisted.items[0].history.first_mut() {
            movement.who = Who::Principal(9);
        }
        assert!(f.state.history("SKU-1", "berlin", 10).is_err_and(|error| error.0.contains("principal 9")));
    }

    #[test]
    fn applying_a_command_that_meets_a_corrupt_name_fails_the_entry_and_changes_nothing_of_it() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.one(hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, None));
        f.state.corrupt_arena_for_tests();
        let confirm = Command::Confirm(crate::cmd::Confirm { principal: None, id: rid(1) });
        let entry = LogEntry::batch(LogId::new(1, f.index + 1), f.now_ms, vec![confirm]);
        let answer = f.state.apply(&entry);
        assert!(matches!(answer, Err(crate::error::ApplyError::Corrupt(_))), "{answer:?}");
        let item = &f.state.persisted.items[0];
        assert_eq!((item.on_hand, item.reserved), (5, 2), "the confirm read its lines before it changed anything");
    }

    #[test]
    fn events_are_described_with_their_item() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let applied = f.run(vec![hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, None)]);
        let record = f.state.describe(&applied.events[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((record.sku.as_str(), record.warehouse.as_str()), ("SKU-1", "berlin"));
        assert_eq!(record.id.index, f.index);
    }
}

//! Each query answers what the closure it replaced computed (the closures
//! are copied here from the server and cluster as they were), and every
//! query and answer survives the wire format.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::cmd::{AdjustReason, AttrUpdate, Command, SetBundle, SetCustomerLimit, SetProduct, SetWarehousePriority};
use crate::ids::{CustomerId, ItemName};
use crate::item::Status;
use crate::testing::{Fixture, adjust, hold, key, qty, rid, sku, wh};

fn component(name: &str, units: u64) -> Component {
    Component { sku: sku(name), quantity: qty(units) }
}

/// Two SKUs in two warehouses, one held, a bundle of both, a limit per
/// customer with a customer's hold, a product and a warehouse priority.
fn fixture() -> Fixture {
    let mut f = Fixture::new();
    f.stock("SKU-1", "berlin", 10, 2);
    f.stock("SKU-1", "paris", 4, 0);
    f.stock("SKU-2", "berlin", 1, 3);
    f.one(adjust("SKU-1", "berlin", -1, AdjustReason::Damage));
    f.one(hold(rid(1), &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 1)], 60_000, Some(key("order-1"))));
    let set = |name: &str, components: Vec<Component>| {
        Command::SetBundle(SetBundle { sku: sku(name), components: Some(components) })
    };
    f.one(set("KIT-1", vec![component("SKU-1", 2), component("SKU-2", 1)]));
    f.one(set("KIT-2", vec![component("SKU-1", 1)]));
    f.one(Command::SetCustomerLimit(SetCustomerLimit {
        sku: sku("SKU-1"),
        limit: Some(CustomerLimit { units: 5, window_ms: None }),
    }));
    let mut held = hold(rid(2), &[("SKU-1", "paris", 2)], 60_000, None);
    if let Command::Hold(hold) = &mut held {
        hold.customer = CustomerId::new("c-1").ok();
    }
    assert!(!f.one(held).is_refused());
    let mut product = SetProduct::keep_all(sku("SKU-1"));
    product.name = ItemName::new("Widget").map_or(AttrUpdate::Keep, AttrUpdate::Set);
    f.one(Command::SetProduct(product));
    f.one(Command::SetWarehousePriority(SetWarehousePriority {
        sku: sku("SKU-1"),
        warehouses: Some(vec![wh("paris"), wh("berlin")]),
    }));
    f
}

fn ask<T: FromAnswer>(f: &Fixture, query: Query) -> T {
    let answer = f.state.query(&query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
    T::from_answer(answer).unwrap_or_else(|e| panic!("{query:?}: {e}"))
}

#[test]
fn limits_are_the_limits_in_force() {
    let f = fixture();
    let limits: Limits = ask(&f, Query::Limits);
    assert_eq!(limits, *f.state.limits());
}

#[test]
fn an_item_reads_as_get_item() {
    let f = fixture();
    let item: Option<ItemView> = ask(&f, Query::Item { sku: "SKU-1".into(), warehouse: "berlin".into() });
    assert_eq!(item, f.state.get_item("SKU-1", "berlin").ok().flatten());
    assert_eq!(item.map(|item| (item.on_hand, item.reserved)), Some((9, 3)));
    let missing: Option<ItemView> = ask(&f, Query::Item { sku: "SKU-1".into(), warehouse: "oslo".into() });
    assert_eq!(missing, None);
}

#[test]
fn a_sku_reads_items_limit_usage_product_and_priority_in_one_view() {
    let f = fixture();
    let answer: SkuAnswer = ask(&f, Query::Sku { sku: "SKU-1".into(), customer: Some("c-1".into()) });
    // The closure `GET /v1/items/{sku}` ran.
    let s = &f.state;
    let old = (
        s.sku_items("SKU-1").ok(),
        s.customer_limit("SKU-1"),
        Some(s.customer_usage("SKU-1", "c-1")),
        s.product("SKU-1"),
        s.warehouse_priority("SKU-1").to_vec(),
    );
    let new = (Some(answer.view), answer.limit, answer.usage, answer.product, answer.warehouse_priority);
    assert_eq!(new, old);
    assert_eq!(new.2.map(|usage| usage.held), Some(2));
    assert_eq!(new.4, vec!["paris".to_owned(), "berlin".to_owned()]);
    assert!(new.3.is_some_and(|product| product.name.as_deref() == Some("Widget")));

    let anonymous: SkuAnswer = ask(&f, Query::Sku { sku: "SKU-1".into(), customer: None });
    assert_eq!(anonymous.usage, None);
    let unknown: SkuAnswer = ask(&f, Query::Sku { sku: "SKU-9".into(), customer: None });
    assert!(unknown.view.items.is_empty() && unknown.product.is_none());
}

#[test]
fn skus_read_every_warehouse_of_each_in_the_order_asked() {
    let f = fixture();
    let views: Vec<SkuView> = ask(&f, Query::Skus(vec!["SKU-2".into(), "SKU-9".into(), "SKU-1".into()]));
    // The closure of a bundle's availability: each SKU's available units by warehouse.
    let levels = |sku: &str| -> BTreeMap<String, u64> {
        let view = f.state.sku_items(sku).unwrap_or_else(|e| panic!("{e}"));
        view.items.into_iter().map(|item| (item.warehouse, item.available)).collect()
    };
    let new: Vec<BTreeMap<String, u64>> = views
        .into_iter()
        .map(|view| view.items.into_iter().map(|item| (item.warehouse, item.available)).collect())
        .collect();
    assert_eq!(new, vec![levels("SKU-2"), levels("SKU-9"), levels("SKU-1")]);
    assert_eq!(new[2].get("berlin"), Some(&6));
}

#[test]
fn a_page_of_items_reads_as_list_items() {
    let f = fixture();
    for filter in [
        ItemFilter { limit: 2, scan_max: 10, ..ItemFilter::default() },
        ItemFilter { cursor: 1, limit: 10, scan_max: 10, ..ItemFilter::default() },
        ItemFilter { status: Some(Status::LowStock), limit: 10, scan_max: 10, ..ItemFilter::default() },
        ItemFilter { warehouse: Some("paris".into()), limit: 10, scan_max: 10, ..ItemFilter::default() },
    ] {
        let page: ItemPage = ask(&f, Query::Items(filter.clone()));
        assert_eq!(Ok(page), f.state.list_items(&filter), "{filter:?}");
    }
}

#[test]
fn a_history_reads_as_history() {
    let f = fixture();
    let movements: Option<Vec<MovementView>> =
        ask(&f, Query::History { sku: "SKU-1".into(), warehouse: "berlin".into(), limit: 2 });
    assert_eq!(Ok(movements.clone()), f.state.history("SKU-1", "berlin", 2));
    assert_eq!(movements.map(|m| m.len()), Some(2));
    let missing: Option<Vec<MovementView>> =
        ask(&f, Query::History { sku: "SKU-1".into(), warehouse: "oslo".into(), limit: 2 });
    assert_eq!(missing, None);
}

#[test]
fn a_reservation_reads_by_id_and_by_key() {
    let f = fixture();
    let by_id: Option<ReservationView> = ask(&f, Query::Reservation(rid(1)));
    assert_eq!(Ok(by_id.clone()), f.state.reservation(&rid(1)));
    assert!(by_id.is_some());
    let by_key: Option<ReservationView> = ask(&f, Query::ReservationByKey(key("order-1")));
    // The order lookup's closure kept only the id.
    let old = f.state.reservation_by_key(&key("order-1")).map(|view| view.map(|view| view.summary.id));
    assert_eq!(Ok(by_key.map(|view| view.summary.id)), old);
    assert_eq!(old, Ok(Some(rid(1))));
    let missing: Option<ReservationView> = ask(&f, Query::Reservation(rid(3)));
    assert_eq!(missing, None);
}

/// The closure `POST /v1/availability` ran on each shard, as it was.
fn old_availability(s: &ShardState, lines: &[AvailabilityAsk]) -> Result<Vec<(u64, bool, bool)>, Corrupt> {
    let exact: Vec<AvailabilityLine> = lines
        .iter()
        .filter_map(|line| {
            line.warehouse.as_ref().map(|warehouse| AvailabilityLine {
                sku: line.sku.clone(),
                warehouse: warehouse.clone(),
                quantity: line.quantity,
            })
        })
        .collect();
    let mut exact_answers = s.availability(&exact).lines.into_iter();
    lines
        .iter()
        .map(|line| {
            if line.warehouse.is_some() {
                let answer =
                    exact_answers.next().unwrap_or(LineAvailability { available: 0, exists: false, enough: false });
                Ok((answer.available, answer.exists, answer.enough))
            } else {
                let view = s.sku_items(&line.sku)?;
                let asked: u64 = lines
                    .iter()
                    .filter(|other| other.sku == line.sku && other.warehouse.is_none())
                    .fold(0u64, |sum, other| sum.saturating_add(other.quantity));
                let exists = !view.items.is_empty();
                Ok((view.available, exists, exists && asked <= view.available))
            }
        })
        .collect()
}

#[test]
fn availability_answers_lines_with_and_without_a_warehouse() {
    let f = fixture();
    let line = |sku: &str, warehouse: Option<&str>, quantity| AvailabilityAsk {
        sku: sku.into(),
        warehouse: warehouse.map(str::to_owned),
        quantity,
    };
    let lines = vec![
        line("SKU-1", Some("berlin"), 4),
        line("SKU-1", None, 5),
        line("SKU-1", Some("berlin"), 3),
        line("SKU-1", None, 4),
        line("SKU-2", None, 1),
        line("SKU-9", Some("berlin"), 1),
        line("SKU-9", None, 1),
    ];
    let answers: Vec<LineAvailability> = ask(&f, Query::Availability(lines.clone()));
    let new: Vec<(u64, bool, bool)> = answers.iter().map(|a| (a.available, a.exists, a.enough)).collect();
    assert_eq!(Ok(new.clone()), old_availability(&f.state, &lines));
    // berlin has 6 available: 4 + 3 asked is too many; all warehouses have 8: 5 + 4 too.
    assert_eq!(new[0], (6, true, false));
    assert_eq!(new[1], (8, true, false));
    assert_eq!(new[4], (0, true, false));
    assert_eq!(new[5], (0, false, false));
    assert_eq!(new[6], (0, false, false));
}

#[test]
fn bundle_definitions_read_per_sku_in_the_order_asked() {
    let f = fixture();
    let skus: Vec<String> = vec!["SKU-1".into(), "KIT-2".into(), "KIT-1".into()];
    let definitions: Vec<Option<Vec<Component>>> = ask(&f, Query::BundlesOf(skus.clone()));
    // The closures of `bundles_among` (which are bundles) and `bundle_lines_of` (their components).
    let among: Vec<String> = skus.iter().filter(|sku| f.state.bundle(sku).is_some()).cloned().collect();
    let new_among: Vec<String> =
        skus.iter().zip(&definitions).filter(|(_, d)| d.is_some()).map(|(sku, _)| sku.clone()).collect();
    assert_eq!(new_among, among);
    let lines: Vec<(usize, Vec<Component>)> =
        skus.iter().enumerate().filter_map(|(at, sku)| Some((at, f.state.bundle(sku)?))).collect();
    let new_lines: Vec<(usize, Vec<Component>)> =
        definitions.into_iter().enumerate().filter_map(|(at, d)| Some((at, d?))).collect();
    assert_eq!(new_lines, lines);
    assert_eq!(new_among, vec!["KIT-2".to_owned(), "KIT-1".to_owned()]);
}

#[test]
fn bundles_list_from_a_cursor_and_by_component() {
    let f = fixture();
    let all: Vec<(String, Vec<Component>)> = ask(&f, Query::Bundles { after: None, limit: 10 });
    assert_eq!(all, f.state.bundles(None, 10));
    let rest: Vec<(String, Vec<Component>)> = ask(&f, Query::Bundles { after: Some("KIT-1".into()), limit: 1 });
    assert_eq!(rest, f.state.bundles(Some("KIT-1"), 1));
    assert_eq!(rest.len(), 1);

    let containing = |sku: &str| -> Vec<String> { ask(&f, Query::BundlesContaining(sku.into())) };
    // The closure of `bundles_containing`.
    let old = |wanted: &str| -> Vec<String> {
        f.state
            .bundles(None, usize::MAX)
            .into_iter()
            .filter(|(_, components)| components.iter().any(|c| c.sku.as_str() == wanted))
            .map(|(bundle, _)| bundle)
            .collect()
    };
    assert_eq!(containing("SKU-1"), old("SKU-1"));
    assert_eq!(containing("SKU-1"), vec!["KIT-1".to_owned(), "KIT-2".to_owned()]);
    assert_eq!(containing("SKU-2"), vec!["KIT-1".to_owned()]);
    assert!(containing("SKU-9").is_empty());
}

#[test]
fn stats_digest_and_applied_read_as_the_node_read_them() {
    let f = fixture();
    let stats: ShardStats = ask(&f, Query::Stats);
    assert_eq!(stats, f.state.stats());
    assert_eq!(stats.live_holds, 2);
    let digest: (Option<u64>, u128) = ask(&f, Query::Digest);
    assert_eq!(digest, (f.state.last_applied().map(|id| id.index), f.state.digest()));
    let applied: Option<LogId> = ask(&f, Query::Applied);
    assert_eq!(applied, f.state.last_applied());
    assert_eq!(applied.map(|id| id.index), Some(f.index));
}

#[test]
fn an_answer_of_another_kind_is_a_mismatch() {
    let f = fixture();
    let answer = f.state.query(&Query::Stats).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Limits::from_answer(answer), Err(Mismatch { wanted: "Limits", got: "Stats" }));
}

#[test]
fn a_query_that_meets_a_corrupt_name_is_an_error() {
    let mut f = fixture();
    f.state.corrupt_arena_for_tests();
    assert!(f.state.query(&Query::Reservation(rid(1))).is_err());
    assert!(f.state.query(&Query::Items(ItemFilter { limit: 10, scan_max: 10, ..ItemFilter::default() })).is_err());
}

fn query_round_trip(query: &Query) -> Query {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(query).unwrap_or_else(|e| panic!("encode: {e}"));
    rkyv::from_bytes::<Query, rkyv::rancor::Error>(&bytes).unwrap_or_else(|e| panic!("decode: {e}"))
}

fn answer_round_trip(answer: &Answer) -> Answer {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(answer).unwrap_or_else(|e| panic!("encode: {e}"));
    rkyv::from_bytes::<Answer, rkyv::rancor::Error>(&bytes).unwrap_or_else(|e| panic!("decode: {e}"))
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("SKU-1"), Just("SKU-2"), Just("KIT-1"), Just("SKU-9"), Just("")].prop_map(str::to_owned)
}

fn warehouse() -> impl Strategy<Value = String> {
    prop_oneof![Just("berlin"), Just("paris"), Just("oslo")].prop_map(str::to_owned)
}

fn query() -> impl Strategy<Value = Query> {
    let filter = (proptest::option::of(0..3u8), proptest::option::of(warehouse()), 0..8u32, 0..5u32, 0..5u32).prop_map(
        |(status, warehouse, cursor, limit, scan_max)| ItemFilter {
            status: status.map(|n| [Status::InStock, Status::LowStock, Status::OutOfStock][usize::from(n)]),
            warehouse,
            cursor,
            limit,
            scan_max,
        },
    );
    let ask = (name(), proptest::option::of(warehouse()), 0..12u64)
        .prop_map(|(sku, warehouse, quantity)| AvailabilityAsk { sku, warehouse, quantity });
    prop_oneof![
        Just(Query::Limits),
        (name(), warehouse()).prop_map(|(sku, warehouse)| Query::Item { sku, warehouse }),
        (name(), proptest::option::of(prop_oneof![Just("c-1".to_owned()), Just("c-2".to_owned())]))
            .prop_map(|(sku, customer)| Query::Sku { sku, customer }),
        proptest::collection::vec(name(), 0..4).prop_map(Query::Skus),
        filter.prop_map(Query::Items),
        (name(), warehouse(), 0..4u32).prop_map(|(sku, warehouse, limit)| Query::History { sku, warehouse, limit }),
        (1..4u64).prop_map(|n| Query::Reservation(rid(n))),
        prop_oneof![Just("order-1"), Just("order-2")].prop_map(|text| Query::ReservationByKey(key(text))),
        proptest::collection::vec(ask, 0..5).prop_map(Query::Availability),
        proptest::collection::vec(name(), 0..4).prop_map(Query::BundlesOf),
        (proptest::option::of(name()), 0..3u32).prop_map(|(after, limit)| Query::Bundles { after, limit }),
        name().prop_map(Query::BundlesContaining),
        Just(Query::Stats),
        Just(Query::Digest),
        Just(Query::Applied),
    ]
}

proptest! {
    /// Every query and its answer decode from the wire format as they were.
    #[test]
    fn queries_and_answers_survive_the_wire_format(queries in proptest::collection::vec(query(), 1..8)) {
        let f = fixture();
        for query in &queries {
            prop_assert_eq!(&query_round_trip(query), query);
            let answer = f.state.query(query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
            prop_assert_eq!(answer_round_trip(&answer), answer);
        }
    }
}

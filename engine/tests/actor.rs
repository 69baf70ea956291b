//! Shard actors on their arbiters: applies and reads go through the mailbox,
//! one at a time, and every shard keeps its own state.

use engine::actor::{Apply, Describe, Install, Read, ShardPool, TakeSnapshot};
use engine::event::EventKind;
use engine::outcome::Outcome;
use engine::testing::{hold, rid, sku_on, upsert};
use engine::{Limits, LogEntry, LogId, ShardState};

const SHARDS: u32 = 4;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    actix_rt::Runtime::new().unwrap_or_else(|e| panic!("{e}")).block_on(future)
}

fn pool() -> ShardPool {
    let states = (0..SHARDS).map(|shard| ShardState::new(shard, SHARDS, Limits::default())).collect();
    ShardPool::start(states, 2).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn each_shard_actor_applies_its_own_entries_and_answers_reads() {
    let pool = pool();
    block_on(async {
        for shard in 0..SHARDS {
            let sku = sku_on(shard, SHARDS, "SKU");
            let addr = pool.shard(shard).unwrap_or_else(|| panic!("no shard {shard}"));
            let entries = vec![
                LogEntry::batch(LogId::new(1, 1), 1_000, vec![upsert(&sku, "berlin", 5, 1)]),
                LogEntry::batch(LogId::new(1, 2), 1_010, vec![hold(rid(1), &[(&sku, "berlin", 5)], 60_000, None)]),
            ];
            let answer = addr.send(Apply { entries, describe_events: Describe::All }).await;
            let answer = answer.unwrap_or_else(|e| panic!("mailbox: {e}")).unwrap_or_else(|e| panic!("apply: {e}"));
            assert_eq!(answer.applied.len(), 2);
            assert!(matches!(answer.applied[1].outcomes[0], Outcome::Held { .. }));
            let crossing = answer.records.iter().find(|r| matches!(r.kind, EventKind::ThresholdCrossed { .. }));
            assert_eq!(crossing.map(|r| (r.sku.as_str(), r.warehouse.as_str())), Some((sku.as_str(), "berlin")));

            let read_sku = sku.clone();
            let item = addr
                .send(Read::new(move |state: &ShardState| state.get_item(&read_sku, "berlin").ok().flatten()))
                .await;
            let item = item.unwrap_or_else(|e| panic!("{e}")).0.unwrap_or_else(|| panic!("item missing"));
            assert_eq!((item.on_hand, item.reserved), (5, 5));
        }
    });
    pool.stop();
}

#[test]
fn a_command_for_another_shard_is_refused_by_the_actor() {
    let pool = pool();
    block_on(async {
        let foreign = sku_on(1, SHARDS, "SKU");
        let addr = pool.shard(0).unwrap_or_else(|| panic!("no shard"));
        let entries = vec![LogEntry::batch(LogId::new(1, 1), 1, vec![upsert(&foreign, "berlin", 5, 1)])];
        let answer = addr.send(Apply { entries, describe_events: Describe::None }).await;
        let answer = answer.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        let code = answer.applied[0].outcomes[0].refusal().map(|r| r.code());
        assert_eq!(code, Some("wrong_shard"));
    });
}

#[test]
fn out_of_order_entries_are_refused_and_change_nothing() {
    let pool = pool();
    block_on(async {
        let sku = sku_on(2, SHARDS, "SKU");
        let addr = pool.shard(2).unwrap_or_else(|| panic!("no shard"));
        let first = vec![LogEntry::batch(LogId::new(1, 1), 1, vec![upsert(&sku, "berlin", 5, 1)])];
        let _ = addr.send(Apply { entries: first, describe_events: Describe::None }).await;
        // A batch whose second entry replays the first applies none of them.
        let replay = vec![
            LogEntry::batch(LogId::new(1, 2), 2, vec![upsert(&sku, "berlin", 9, 1)]),
            LogEntry::batch(LogId::new(1, 1), 2, vec![upsert(&sku, "berlin", 9, 1)]),
        ];
        let answer = addr
            .send(Apply { entries: replay, describe_events: Describe::None })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.is_err());
        let on_hand = addr
            .send(Read::new(move |s: &ShardState| s.get_item(&sku, "berlin").ok().flatten().map(|i| i.on_hand)))
            .await;
        assert_eq!(on_hand.unwrap_or_else(|e| panic!("{e}")).0, Some(5));
    });
}

#[test]
fn a_snapshot_taken_through_the_actor_installs_into_another() {
    let pool = pool();
    block_on(async {
        let sku = sku_on(3, SHARDS, "SKU");
        let source = pool.shard(3).unwrap_or_else(|| panic!("no shard"));
        let entries = vec![LogEntry::batch(LogId::new(2, 1), 1, vec![upsert(&sku, "berlin", 42, 1)])];
        let _ = source.send(Apply { entries, describe_events: Describe::None }).await;
        let snapshot =
            source.send(TakeSnapshot).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.meta.last_applied, Some(LogId::new(2, 1)));
        let state = ShardState::from_snapshot_bytes(&snapshot.state).unwrap_or_else(|e| panic!("{e}"));

        let replica = pool.shard(3).unwrap_or_else(|| panic!("no shard"));
        replica.send(Install(Box::new(state))).await.unwrap_or_else(|e| panic!("{e}"));
        let digest = replica.send(Read::new(|s: &ShardState| (s.digest(), s.last_applied()))).await;
        let (_, last) = digest.unwrap_or_else(|e| panic!("{e}")).0;
        assert_eq!(last, Some(LogId::new(2, 1)));
    });
}

//! The harness against real processes: three nodes start through their
//! proxies, a partitioned node loses its leadership of nothing it should
//! keep, a killed node restarts and serves again, and healing restores
//! every link.

use std::time::Duration;

use chaos::cluster::{ChaosCluster, Settings, get_status};
use testkit::Program;

fn settings() -> Settings {
    Settings { nodes: 3, shards: 2, seed: 7, cluster_extra: Vec::new(), placed: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starts_through_its_proxies_and_survives_a_kill_and_a_partition() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let program = Program::SelfExec(env!("CARGO_BIN_EXE_tally-chaos").into());
    let mut cluster =
        ChaosCluster::start(program, dir.path(), &settings()).await.unwrap_or_else(|e| panic!("start: {e}"));
    for id in 1..=3 {
        assert_eq!(get_status(cluster.http(id), "/readyz").await, Some(200), "node {id}");
    }
    // Peer traffic goes through the proxies (`cluster.dial`), on every link.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for from in 1..=3u8 {
        for to in (1..=3u8).filter(|to| *to != from) {
            let stats = cluster.link_stats(from, to).unwrap_or_else(|| panic!("no proxy {from}->{to}"));
            assert!(stats.forwarded[0] > 0, "nothing went {from}->{to} through its proxy: {stats:?}");
        }
    }

    // Node 3 cut off from both others: 1 and 2 still form a majority and
    // stay ready (a leader for every shard among them).
    cluster.partition(&[&[1, 2], &[3]]);
    let dropped_before = cluster.link_stats(1, 3).map_or(0, |s| s.dropped[0]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dropped_after = cluster.link_stats(1, 3).map_or(0, |s| s.dropped[0]);
    assert!(dropped_after > dropped_before, "the partition dropped nothing on 1->3");
    cluster.wait_ready(1).await.unwrap_or_else(|e| panic!("majority side: {e}"));
    cluster.heal();
    cluster.wait_ready(3).await.unwrap_or_else(|e| panic!("after healing: {e}"));

    // kill -9 and restart on the same data.
    cluster.kill(2).await.unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(!cluster.is_running(2));
    cluster.wait_ready(1).await.unwrap_or_else(|e| panic!("with node 2 down: {e}"));
    cluster.restart(2, false).await.unwrap_or_else(|e| panic!("restart: {e}"));
    cluster.wait_ready(2).await.unwrap_or_else(|e| panic!("node 2 after restart: {e}"));

    // SIGSTOP / SIGCONT.
    cluster.pause(1).await.unwrap_or_else(|e| panic!("pause: {e}"));
    assert_eq!(get_status(cluster.http(1), "/healthz").await, None, "a paused node answers nothing");
    cluster.resume(1).await.unwrap_or_else(|e| panic!("resume: {e}"));
    cluster.wait_ready(1).await.unwrap_or_else(|e| panic!("node 1 after resume: {e}"));

    cluster.stop().await;
}

/// Clients through every node while node 1 is cut off for a while: every
/// operation is recorded with its times, writes succeed on the majority
/// side, and no read ever shows more reserved than on hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_record_every_operation_through_a_partition() {
    use std::sync::Arc;
    use std::time::Instant;

    use chaos::client::{self, ClientPlan, Recorder};
    use chaos::history::Outcome;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let program = Program::SelfExec(env!("CARGO_BIN_EXE_tally-chaos").into());
    let cluster = ChaosCluster::start(program, dir.path(), &settings()).await.unwrap_or_else(|e| panic!("start: {e}"));
    let items: Arc<Vec<(String, String)>> =
        Arc::new(vec![("hot-a".into(), "w1".into()), ("hot-b".into(), "w1".into())]);
    for (sku, warehouse) in items.iter() {
        let status = put_item(cluster.http(2), sku, warehouse, 50).await;
        assert!(status == Some(200) || status == Some(201), "PUT {sku}: {status:?}");
    }

    let started = Instant::now();
    let recorder = Arc::new(Recorder::new(started));
    let until = started + Duration::from_secs(6);
    let nodes: Vec<_> = (1..=3).map(|id| cluster.http(id)).collect();
    let clients: Vec<_> = (0..8u32)
        .map(|index| {
            let plan = ClientPlan {
                index,
                nodes: nodes.clone(),
                items: Arc::clone(&items),
                seed: u64::from(index) + 1,
                timeout: Duration::from_secs(2),
                think_ms: (0, 5),
            };
            tokio::spawn(client::run(plan, Arc::clone(&recorder), until))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.partition(&[&[1], &[2, 3]]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.heal();
    for task in clients {
        task.await.unwrap_or_else(|e| panic!("client: {e}"));
    }
    let ops = recorder.take();
    assert!(ops.len() > 50, "only {} operations", ops.len());
    assert!(ops.windows(2).all(|w| w[0].index < w[1].index), "indexes are unique and ordered");
    assert!(ops.iter().all(|op| op.invoke_us <= op.complete_us));
    let held = ops.iter().filter(|op| matches!(op.outcome, Outcome::Held { .. })).count();
    assert!(held > 0, "no hold succeeded: {:?}", ops.iter().take(5).collect::<Vec<_>>());
    for op in &ops {
        if let Outcome::Levels { on_hand, reserved } = op.outcome {
            assert!(reserved <= on_hand, "op {}: reserved {reserved} above on hand {on_hand}", op.index);
        }
    }
    cluster.stop().await;
}

/// `PUT /v1/items/{sku}/{warehouse}` with `on_hand`; the status.
async fn put_item(addr: std::net::SocketAddr, sku: &str, warehouse: &str, on_hand: u64) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("{{\"on_hand\":{on_hand}}}");
    let request = format!(
        "PUT /v1/items/{sku}/{warehouse} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

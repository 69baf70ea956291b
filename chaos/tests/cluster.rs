//! The harness against real processes: three nodes start through their
//! proxies, a partitioned node loses its leadership of nothing it should
//! keep, a killed node restarts and serves again, and healing restores
//! every link.

use std::time::Duration;

use chaos::cluster::{ChaosCluster, Program, Settings, get_status};

fn settings() -> Settings {
    Settings { shards: 2, seed: 7, cluster_extra: String::new() }
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

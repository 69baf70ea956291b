//! The HTTP port's bounds against the real binary (issue 15 item 3):
//! slowloris connections closed after the header-read timeout while real
//! clients are served, the connection cap, the keep-alive timeout, graceful
//! shutdown, failed authentication limited per client address, per-key
//! quotas, and batches that pay one token per hold.
//!
//! Waits are bounded and generous; nothing here measures speed. The only
//! times asserted are lower bounds the server must keep whatever the load
//! (a connection is never closed before its timeout).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Half-open connections the slowloris test holds, if the process may
/// open that many files (it says so when it may not).
const SLOWLORIS_CONNECTIONS: usize = 5000;
/// File descriptors left for everything else of the test process.
const FDS_SPARE: usize = 200;
/// Longest wait for anything the server should do on its own.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// A request line and one header, never finished: what a slowloris sends.
const PARTIAL_HEAD: &[u8] = b"GET /v1/items HTTP/1.1\r\nHost: tally\r\n";

// ---------------------------------------------------------------------------
// Helpers

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn keys_setting(keys: &[(&str, &str, &str, &str)]) -> String {
    let entries: Vec<String> = keys
        .iter()
        .map(|(name, role, key, extra)| {
            format!("{{ name = \"{name}\", role = \"{role}\", sha256 = \"{}\"{extra} }}", sha256_hex(key))
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

/// The soft limit on open files of this process (the server it spawns
/// inherits it), from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" { Some(usize::MAX) } else { soft.parse().ok() }
}

/// A TCP connection from `from` (any 127.x.y.z works on Linux loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
    socket.bind(SocketAddr::from((from, 0))).unwrap_or_else(|e| panic!("binding {from:?}: {e}"));
    socket.connect(to).await.unwrap_or_else(|e| panic!("connecting to {to} from {from:?}: {e}"))
}

/// One HTTP/1.1 request on `stream`, which stays open; the status and body,
/// or `None` if the server closed the connection without an answer.
async fn exchange(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: tally\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    // A write the server cut short may still have an answer to read.
    let _ = stream.write_all(request.as_bytes()).await;
    tokio::time::timeout(WAIT_MAX, read_response(stream)).await.unwrap_or_else(|_| panic!("{method} {path}: no answer"))
}

/// Reads one response with a `Content-Length` body (every answer of the
/// API has one); `None` on EOF or reset before a whole response.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut received: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0);
    while received.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, String::from_utf8_lossy(&received[head_end..head_end + length]).to_string()))
}

/// Waits until the server closes `stream`: EOF or a reset, with no byte of
/// an answer. How long it took.
async fn closed_by_server(mut stream: TcpStream, since: Instant) -> Result<Duration, String> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(WAIT_MAX, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(since.elapsed()),
        Ok(Ok(n)) => Err(format!("answered {:?} instead of closing", String::from_utf8_lossy(&buf[..n]))),
        Err(_) => Err(format!("still open after {WAIT_MAX:?}")),
    }
}

/// The value of one sample of `/metrics`, e.g.
/// `tally_http_connections_closed_total{reason="header_timeout"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_text(http: &Http, headers: &[(&str, &str)]) -> String {
    let (status, _, body) = http.request(Method::GET, "/metrics", headers, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_str().unwrap_or_else(|| panic!("metrics are text: {body}")).to_owned()
}

// ---------------------------------------------------------------------------
// Slowloris

/// 5000 connections that send half a request head and stop (and a few that
/// send nothing) while real clients keep working; every one of them is
/// closed by the server, none before the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout_while_real_clients_are_served() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    const SILENT: usize = 16;
    let limit = open_files_limit().unwrap_or(1024);
    // The test holds one descriptor per connection, the server one more.
    let count = SLOWLORIS_CONNECTIONS.min(limit.saturating_sub(FDS_SPARE));
    if count < SLOWLORIS_CONNECTIONS {
        eprintln!(
            "slowloris: the open-files limit is {limit}: holding {count} half-open connections, not {SLOWLORIS_CONNECTIONS}"
        );
    }
    assert!(count >= 100, "an open-files limit of {limit} leaves too few connections for this test");
    let node = TallyProcess::start(
        options().shards(2).set("server", "header_read_timeout_ms", &HEADER_TIMEOUT.as_millis().to_string()).set(
            "server",
            "connections_max",
            &(count + SILENT + 100).to_string(),
        ),
    )
    .await;
    let http = node.client();
    let addr = node.http_addr;
    assert!(http.put(&item_path("slow-sku", "w1"), json!({ "on_hand": 1_000_000 })).await.0.is_success());

    // Real clients, all along: every request answers.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let real = {
        let http = http.clone();
        tokio::spawn(async move {
            let mut served = 0u32;
            loop {
                let hold = json!({ "lines": [{ "sku": "slow-sku", "warehouse": "w1", "quantity": 1 }] });
                let (status, _, body) = http.post("/v1/reservations", hold).await;
                assert_eq!(status, StatusCode::CREATED, "a real client's hold during the attack: {body}");
                let (status, _, body) = http.get(&item_path("slow-sku", "w1")).await;
                assert_eq!(status, StatusCode::OK, "a real client's read during the attack: {body}");
                served += 1;
                if *done_rx.borrow_and_update() && served >= 20 {
                    return served;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut open: Vec<(TcpStream, Instant)> = Vec::with_capacity(count + SILENT);
    for index in 0..count + SILENT {
        let since = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connection {index}: {e}"));
        if index < count {
            stream.write_all(PARTIAL_HEAD).await.unwrap_or_else(|e| panic!("connection {index}: writing: {e}"));
        }
        open.push((stream, since));
    }
    let opened_in = open.first().map(|(_, since)| since.elapsed());
    eprintln!("slowloris: {} connections open in {opened_in:?}", open.len());
    let _ = done_tx.send(true);
    let served = real.await.unwrap_or_else(|e| panic!("the real client failed: {e}"));
    eprintln!("slowloris: {served} real rounds (a hold and a read) served meanwhile");

    let closes = open.into_iter().map(|(stream, since)| closed_by_server(stream, since));
    let closes = futures_util::future::join_all(closes).await;
    let mut failures: Vec<String> = Vec::new();
    for (index, close) in closes.iter().enumerate() {
        match close {
            Ok(after) if *after >= HEADER_TIMEOUT => {}
            Ok(after) => failures.push(format!("connection {index} closed after {after:?}, before the timeout")),
            Err(why) => failures.push(format!("connection {index}: {why}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} connections: {:?}",
        failures.len(),
        closes.len(),
        &failures[..failures.len().min(10)]
    );

    let metrics = metrics_text(&http, &[]).await;
    let closed = sample(&metrics, "tally_http_connections_closed_total{reason=\"header_timeout\"}").unwrap_or(0.0);
    assert!(closed >= (count + SILENT) as f64, "header timeouts counted: {closed}");
    let (status, _, body) = http.get(&item_path("slow-sku", "w1")).await;
    assert_eq!(status, StatusCode::OK, "served after the attack: {body}");
}

// ---------------------------------------------------------------------------
// Connection cap, keep-alive, shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_while_the_open_ones_work() {
    const CAP: usize = 8;
    let node = TallyProcess::start(options().shards(1).set("server", "connections_max", &CAP.to_string())).await;
    let addr = node.http_addr;
    let mut open = Vec::new();
    for index in 0..CAP {
        let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let answer = exchange(&mut stream, "GET", "/healthz", &[], "").await;
        assert_eq!(answer.map(|(status, _)| status), Some(200), "connection {index} under the cap");
        open.push(stream);
    }
    for attempt in 0..3 {
        let mut over = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let answer = exchange(&mut over, "GET", "/healthz", &[], "").await;
        assert_eq!(answer, None, "attempt {attempt} over the cap is closed without an answer");
    }
    for (index, stream) in open.iter_mut().enumerate() {
        let answer = exchange(stream, "GET", "/healthz", &[], "").await;
        assert_eq!(answer.map(|(status, _)| status), Some(200), "open connection {index} still works");
    }
    let metrics = exchange(&mut open[0], "GET", "/metrics", &[], "").await.unwrap_or_else(|| panic!("no metrics"));
    let refused = sample(&metrics.1, "tally_http_connections_refused_total").unwrap_or(0.0);
    assert!(refused >= 3.0, "refusals counted: {refused}");
    assert_eq!(sample(&metrics.1, "tally_http_connections_open"), Some(CAP as f64));
    // One closes; a new one is served once the server has seen it go.
    drop(open.pop());
    let served = eventually("a slot to free up", WAIT_MAX, async || {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        exchange(&mut stream, "GET", "/healthz", &[], "").await.map(|(status, _)| status)
    })
    .await;
    assert_eq!(served, 200);
    // A head over server.header_bytes_max (64 KiB by default) is 431.
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let big = "x".repeat(70_000);
    let answer = exchange(&mut stream, "GET", "/healthz", &[("X-Big", &big)], "").await;
    // hyper answers 431 and closes with the rest unread; the reset that
    // follows may overtake the answer, so a close without one is fine too.
    let status = answer.map(|(status, _)| status);
    assert!(matches!(status, Some(431) | None), "a head over the limit is not served: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_its_timeout_but_a_stream_is_not() {
    const IDLE: Duration = Duration::from_secs(1);
    let node = TallyProcess::start(
        options().shards(1).set("server", "keep_alive_timeout_ms", &IDLE.as_millis().to_string()).set(
            "events",
            "keepalive_seconds",
            "1",
        ),
    )
    .await;
    let addr = node.http_addr;
    let mut idle = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    // The server's idle spell starts after it has the request: after this.
    let asked = Instant::now();
    let answer = exchange(&mut idle, "GET", "/healthz", &[], "").await;
    assert_eq!(answer.map(|(status, _)| status), Some(200));

    // An event stream is an answer in flight: no idle deadline while it lasts.
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: tally\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));

    let after = closed_by_server(idle, asked).await.unwrap_or_else(|e| panic!("idle connection: {e}"));
    assert!(after >= IDLE, "closed {after:?} after its request, before the keep-alive timeout");
    // Three keep-alive periods later the stream still delivers.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let until = Instant::now() + 3 * IDLE;
    while Instant::now() < until {
        match tokio::time::timeout(WAIT_MAX, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("the event stream was closed: {}", String::from_utf8_lossy(&seen)),
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the event stream went silent"),
        }
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    let metrics = node.http().get("/metrics").await.2;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        sample(text, "tally_http_connections_closed_total{reason=\"idle_timeout\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_idle_connections_and_exits_cleanly() {
    let mut node = TallyProcess::start(options().shards(1)).await;
    let addr = node.http_addr;
    let mut idle = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exchange(&mut idle, "GET", "/healthz", &[], "").await.map(|(s, _)| s), Some(200));
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: tally\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(WAIT_MAX, stream.read(&mut first)).await.ok().and_then(Result::ok).unwrap_or(0);
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&first[..n]));

    let status = node.terminate().await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    assert!(closed_by_server(idle, Instant::now()).await.is_ok(), "the idle connection was closed");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT_MAX, stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the event stream ended");
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens any more");
}

// ---------------------------------------------------------------------------
// Failed authentication, quotas, batches

const ADMIN_KEY: &str = "bounds-admin-key";
const SMALL_KEY: &str = "bounds-small-key";
const BIG_KEY: &str = "bounds-big-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_client_address() {
    const BURST: usize = 5;
    let node = TallyProcess::start(
        options()
            .shards(1)
            .set("auth", "keys", &keys_setting(&[("ops", "admin", ADMIN_KEY, "")]))
            .set("auth", "failure_rate_per_second", "1")
            .set("auth", "failure_rate_burst", &BURST.to_string()),
    )
    .await;
    let addr = node.http_addr;
    let good = format!("Bearer {ADMIN_KEY}");
    let bad = "Bearer guess-0001";
    let mut guesser = connect_from([127, 0, 0, 2], addr).await;
    for attempt in 0..BURST {
        let answer = exchange(&mut guesser, "GET", "/v1/cluster", &[("Authorization", bad)], "").await;
        assert_eq!(answer.map(|(status, _)| status), Some(401), "guess {attempt} within the burst");
    }
    // The bucket refills one a second: a slow machine may get a guess more.
    let mut limited = None;
    for _ in 0..BURST {
        let answer = exchange(&mut guesser, "GET", "/v1/cluster", &[("Authorization", bad)], "").await;
        let (status, body) = answer.unwrap_or_else(|| panic!("no answer"));
        if status != 401 {
            limited = Some((status, body));
            break;
        }
    }
    let (status, body) = limited.unwrap_or_else(|| panic!("guesses past the burst were never refused"));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("\"code\":\"rate_limited\""), "{body}");
    // Refused whatever it sends: a right key does not tell itself apart.
    let right = exchange(&mut guesser, "GET", "/v1/cluster", &[("Authorization", &good)], "").await;
    assert_eq!(right.map(|(status, _)| status), Some(429), "the address is refused, right key or not");
    // Another address is not.
    let mut other = connect_from([127, 0, 0, 3], addr).await;
    let answer = exchange(&mut other, "GET", "/v1/cluster", &[("Authorization", &good)], "").await;
    assert_eq!(answer.map(|(status, _)| status), Some(200), "another address keeps working");
    let answer = exchange(&mut other, "GET", "/healthz", &[], "").await;
    assert_eq!(answer.map(|(status, _)| status), Some(200));
    // Once its bucket refills (one a second), the address may try again.
    let status = eventually("the guesser's bucket to refill", WAIT_MAX, async || {
        let mut stream = connect_from([127, 0, 0, 2], addr).await;
        let answer = exchange(&mut stream, "GET", "/v1/cluster", &[("Authorization", &good)], "").await;
        answer.map(|(status, _)| status).filter(|status| *status != 429)
    })
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_quota_of_its_own_limits_it_and_a_batch_pays_one_token_per_hold() {
    let keys = keys_setting(&[
        ("ops", "admin", ADMIN_KEY, ""),
        ("small", "reserve", SMALL_KEY, ", rate_per_second = 1, rate_burst = 10"),
        ("big", "reserve", BIG_KEY, ""),
    ]);
    let node =
        TallyProcess::start(options().shards(1).set("auth", "keys", &keys).set("auth", "rate_per_second", "1000").set(
            "auth",
            "rate_burst",
            "1000",
        ))
        .await;
    let http = node.http();
    let (ops, small, big) = (format!("Bearer {ADMIN_KEY}"), format!("Bearer {SMALL_KEY}"), format!("Bearer {BIG_KEY}"));
    let created = http
        .request(
            Method::PUT,
            &item_path("quota-sku", "w1"),
            &[("authorization", &ops)],
            Some(&json!({ "on_hand": 1000 })),
        )
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let batch = |holds: usize| {
        let one = json!({ "lines": [{ "sku": "quota-sku", "warehouse": "w1", "quantity": 1 }] });
        json!({ "requests": vec![one; holds] })
    };
    let reserved = async || {
        let item = http.request(Method::GET, &item_path("quota-sku", "w1"), &[("authorization", &ops)], None).await;
        u64_of(&item.2, "reserved")
    };

    // Ten tokens: a batch of 8 holds takes 8 of them.
    let first =
        http.request(Method::POST, "/v1/reservations/batch", &[("authorization", &small)], Some(&batch(8))).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.2);
    assert_eq!(first.2["held"], 8);
    // Two left: another batch of 8 is refused whole, with nothing held.
    let second =
        http.request(Method::POST, "/v1/reservations/batch", &[("authorization", &small)], Some(&batch(8))).await;
    assert_problem(&second, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(second.1.get("retry-after").is_some(), "{:?}", second.1);
    assert_eq!(reserved().await, 8, "the refused batch held nothing");
    // The small key is out; the big one, on the default quota, is not.
    for _ in 0..30 {
        let reply = http.request(Method::GET, "/v1/cluster", &[("authorization", &big)], None).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    }
    let big_batch =
        http.request(Method::POST, "/v1/reservations/batch", &[("authorization", &big)], Some(&batch(64))).await;
    assert_eq!((big_batch.0, &big_batch.2["held"]), (StatusCode::OK, &json!(64)), "{}", big_batch.2);
    assert_eq!(reserved().await, 72);
}

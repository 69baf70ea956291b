//! The `expiry` workload's observer: a live subscriber to Tally's
//! `/v1/events` that notes when each `reservation.expired` event arrives.
//!
//! Expiry lag is measured from outside, end to end: from a hold's deadline
//! (`deadline_ms` of its expiry event, the `expires_at` it was given) to the
//! moment its expiry reaches a live subscriber, on this machine's clock,
//! which the nodes share. It so includes the proposer's expiry tick, the
//! commit of the `Expire` entry, and delivery over SSE: what a storefront
//! watching the stream sees. An expiry applied before the deadline
//! (`at_ms < deadline_ms`) or delivered before it is an early expiry, which
//! must never happen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// What the subscriber saw of one reservation's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Unix ms the event reached the subscriber.
    pub received_ms: u64,
    /// Log time the expiry was applied at.
    pub at_ms: u64,
    /// The deadline it expired for.
    pub deadline_ms: u64,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    at_ms: u64,
    reservation: Option<String>,
    deadline_ms: Option<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running subscriber. `seen` fills as expiries arrive.
pub struct Subscriber {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<HashMap<String, Seen>, String>>,
    /// Count of expiries seen so far, updated live.
    pub count: watch::Receiver<usize>,
}

impl Subscriber {
    /// Connects to `/v1/events` on `addr` and waits until the stream is open.
    pub async fn start(addr: SocketAddr) -> Result<Subscriber, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::get("/v1/events")
            .header("host", addr.to_string())
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("/v1/events answered {}", response.status()));
        }
        let (stop, mut stopped) = watch::channel(false);
        let (count_tx, count) = watch::channel(0usize);
        let (lines_tx, mut lines) = mpsc::unbounded_channel::<(u64, String)>();
        let mut body = response.into_body();
        // The reader only splits the stream into `data:` payloads, stamped
        // on arrival; parsing happens beside it.
        tokio::spawn(async move {
            let mut pending = Vec::<u8>::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Ok(data) = frame.into_data() else { continue };
                let received = now_ms();
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(payload) = line.strip_prefix(b"data:") {
                        let text = String::from_utf8_lossy(payload).trim().to_owned();
                        if lines_tx.send((received, text)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let task = tokio::spawn(async move {
            let mut seen = HashMap::new();
            loop {
                tokio::select! {
                    line = lines.recv() => {
                        let Some((received_ms, text)) = line else {
                            return Err("the event stream ended".to_owned());
                        };
                        let Ok(event) = serde_json::from_str::<Event>(&text) else { continue };
                        if event.kind != "reservation.expired" {
                            continue;
                        }
                        if let (Some(id), Some(deadline_ms)) = (event.reservation, event.deadline_ms) {
                            seen.insert(id, Seen { received_ms, at_ms: event.at_ms, deadline_ms });
                            let _ = count_tx.send(seen.len());
                        }
                    }
                    _ = stopped.changed() => return Ok(seen),
                }
            }
        });
        Ok(Subscriber { stop, task, count })
    }

    /// Stops and returns what was seen.
    pub async fn finish(self) -> Result<HashMap<String, Seen>, String> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| format!("subscriber: {e}"))?
    }
}

//! One keep-alive JSON client for a node's HTTP API.
//!
//! Every call answers `(status, headers, body)`; the body is parsed as JSON
//! (an empty body is `Null`, anything else that is not JSON is a `String`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest wait for one request's answer (a guard against a hung server).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Http::retry`] keeps retrying 503 answers.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// What every request answers: status, headers and the body as JSON.
pub type Reply = (StatusCode, HeaderMap, Value);

/// A keep-alive HTTP/1 client bound to one node's address. Clones share the
/// connection pool; [`Http::new`] makes a client with a pool of its own.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    timeout: Duration,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http::with_timeout(addr, REQUEST_TIMEOUT)
    }

    /// A client whose requests give up after `timeout` (`Err` from
    /// [`Http::try_request`]).
    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        Http { client, addr, timeout }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request. `Err` says why no answer came (refused, reset, timed
    /// out); any status, 5xx included, is an `Ok` answer.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let uri = format!("http://{}{path}", self.addr);
        let what = format!("{method} {uri}");
        let mut builder = Request::builder().method(method).uri(&uri);
        let bytes = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(json).map_err(|e| format!("{what}: encoding the body: {e}"))?)
            }
            None => Bytes::new(),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(bytes)).map_err(|e| format!("{what}: building the request: {e}"))?;
        let exchange = async {
            // Debug, not Display: the legacy client's Display hides the cause
            // (reset, refused) that tells a crash from a bug.
            let response = self.client.request(request).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| format!("reading the body: {e:?}"))?.to_bytes();
            Ok::<Reply, String>((parts.status, parts.headers, parse_body(&bytes)))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    /// One request; panics if no answer comes.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        self.try_request(method, path, headers, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Repeats the request while it answers 503 (a transient cluster state,
    /// e.g. an election), for at most [`RETRY_WINDOW`], sleeping as
    /// `Retry-After` asks (capped at one second). Answers the last reply, so
    /// a 503 that outlasts the window reaches the test's assertion. Only
    /// retry writes that are safe to repeat (PUT, or a POST with an
    /// `Idempotency-Key`).
    pub async fn retry(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        let deadline = Instant::now() + RETRY_WINDOW;
        loop {
            let reply = self.request(method.clone(), path, headers, body).await;
            if reply.0 != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= deadline {
                return reply;
            }
            tokio::time::sleep(retry_delay(&reply.1)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, &[], Some(&body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, &[], Some(&body)).await
    }

    /// A POST with extra headers, e.g. `[("Idempotency-Key", "k1")]`.
    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::POST, path, headers, Some(&body)).await
    }

    /// A POST with no body, for actions such as `/v1/reservations/{id}/confirm`.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request(Method::POST, path, &[], None).await
    }

    /// A DELETE; `body` is sent as JSON unless it is `Null`.
    pub async fn delete(&self, path: &str, body: Value) -> Reply {
        let body = (!body.is_null()).then_some(&body);
        self.request(Method::DELETE, path, &[], body).await
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// How long to wait before retrying a 503: `Retry-After` (default 200 ms), clamped
/// to 50 ms ..= 1 s.
pub fn retry_delay(headers: &HeaderMap) -> Duration {
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(200), Duration::from_secs);
    asked.clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// How often [`eventually`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it answers `Some`, for at most `window`; then panics
/// with `what`. A failure guard, not a timer: `window` should be generous.
pub async fn eventually<T>(what: &str, window: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + window;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {window:?}: {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

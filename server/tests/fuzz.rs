//! Fuzz target of the HTTP API (issue 15): `http_bodies`, every request
//! body the server deserialises, through the real router in process
//! (`tower::ServiceExt::oneshot` on `app::router`, on a started one-node
//! cluster), so the extractors, validation, handlers and the engine all run.
//! It runs a few seconds in the suite from its committed corpus
//! (`tests/fuzz_corpus/http_bodies/`); see the `fuzz` crate for the harness
//! and `TALLY_FUZZ_SECS` for longer runs.
//!
//! Bodies of: item upsert (`PUT /v1/items/{sku}/{warehouse}`), adjustments,
//! transfers, availability, reservations (one, and batches), extend (by id
//! and by order), the debug clock; confirm and release, which take no body,
//! get one anyway. Most inputs are mutated as JSON trees (`fuzz::json`:
//! values at and past each bound, wrong types, unknown, missing and renamed
//! fields, arrays past their limits), some as bytes, some with a damaged
//! path segment or header, some sent to another route.
//!
//! The property: every answer is a 2xx, or a 4xx problem whose `code` is one
//! the OpenAPI document (`docs/openapi.json`) lists for that operation and
//! status; never a 5xx, never a panic.
//!
//! An input is a small HTTP text: `METHOD PATH`, header lines, a blank line,
//! the body. `{id}` and `{order}` in a path stand for a reservation made at
//! start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fuzz::{Rng, Seed, Target};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use server::app::{AppState, router};
use server::config::{Config, Overrides};
use tower::ServiceExt;

#[global_allocator]
static ALLOCATOR: fuzz::Allocator = fuzz::Allocator::new(std::alloc::System, usize::MAX);
/// A node under test needs tens of MB; nothing here should ask for GBs.
const HEAP_HEADROOM_BYTES: usize = 1 << 30;

const PACKAGE: &str = "tally-server";
const ORDER: &str = "fuzz-order-1";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus/http_bodies")
}

/// One request as the corpus writes it.
#[derive(Clone, Debug)]
struct HttpInput {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpInput {
    fn new(method: &str, path: &str, body: &Value) -> HttpInput {
        HttpInput {
            method: method.into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> HttpInput {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut text = format!("{} {}\n", self.method, self.path);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push('\n');
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    fn parse(bytes: &[u8]) -> Option<HttpInput> {
        let split = bytes.windows(2).position(|pair| pair == b"\n\n")?;
        let head = std::str::from_utf8(&bytes[..split]).ok()?;
        let mut lines = head.lines();
        let (method, path) = lines.next()?.split_once(' ')?;
        let headers = lines
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Some(HttpInput { method: method.into(), path: path.into(), headers, body: bytes[split + 2..].to_vec() })
    }
}

// ----- the corpus -----

fn line(sku: &str, warehouse: Option<&str>, quantity: u64) -> Value {
    match warehouse {
        Some(warehouse) => json!({"sku": sku, "warehouse": warehouse, "quantity": quantity}),
        None => json!({"sku": sku, "quantity": quantity}),
    }
}

fn seeds() -> Vec<(String, HttpInput)> {
    let hold = json!({"lines": [line("FUZZ-1", Some("berlin"), 1), line("FUZZ-2", None, 2)], "ttl_seconds": 60});
    let inputs = vec![
        (
            "item-put",
            HttpInput::new("PUT", "/v1/items/FUZZ-1/berlin", &json!({"on_hand": 50, "low_stock_threshold": 5})),
        ),
        (
            "item-put-attributes",
            HttpInput::new(
                "PUT",
                "/v1/items/FUZZ-2/paris",
                &json!({"on_hand": 9, "name": "Runner 42", "unit_price_minor": 1999}),
            )
            .header("if-match", "\"1\""),
        ),
        (
            "item-put-clear",
            HttpInput::new("PUT", "/v1/items/FUZZ-2/paris", &json!({"name": null, "unit_price_minor": null})),
        ),
        (
            "adjust",
            HttpInput::new("POST", "/v1/items/FUZZ-1/berlin/adjustments", &json!({"delta": -2, "reason": "sale"})),
        ),
        (
            "adjust-receive",
            HttpInput::new("POST", "/v1/items/FUZZ-1/berlin/adjustments", &json!({"delta": 5, "reason": "receive"})),
        ),
        (
            "transfer",
            HttpInput::new(
                "POST",
                "/v1/transfers",
                &json!({"sku": "FUZZ-1", "from": "berlin", "to": "paris", "quantity": 1}),
            ),
        ),
        (
            "availability",
            HttpInput::new(
                "POST",
                "/v1/availability",
                &json!({"lines": [line("FUZZ-1", Some("berlin"), 1), line("FUZZ-2", None, 3)], "consistency": "stale"}),
            ),
        ),
        ("reservation", HttpInput::new("POST", "/v1/reservations", &hold).header("idempotency-key", "fuzz-key-1")),
        (
            "reservation-order",
            HttpInput::new(
                "POST",
                "/v1/reservations",
                &json!({"lines": [line("FUZZ-1", Some("berlin"), 1)], "order_id": "fuzz-order-2", "commit": true}),
            ),
        ),
        (
            "reservation-batch",
            HttpInput::new(
                "POST",
                "/v1/reservations/batch",
                &json!({"requests": [
                    {"lines": [line("FUZZ-1", Some("berlin"), 1)], "idempotency_key": "fuzz-batch-1"},
                    {"lines": [line("FUZZ-2", None, 1)], "ttl_seconds": 30, "order_id": "fuzz-order-3"},
                ]}),
            ),
        ),
        ("reservation-extend", HttpInput::new("POST", "/v1/reservations/{id}/extend", &json!({"ttl_seconds": 120}))),
        ("order-extend", HttpInput::new("POST", "/v1/orders/{order}/extend", &json!({"ttl_seconds": 90}))),
        ("reservation-confirm", HttpInput::new("POST", "/v1/reservations/{id}/confirm", &json!({}))),
        ("reservation-release", HttpInput::new("POST", "/v1/reservations/{id}/release", &json!({}))),
        ("debug-clock", HttpInput::new("POST", "/v1/debug/clock", &json!({"offset_ms": 0}))),
    ];
    inputs.into_iter().map(|(name, input)| (name.to_string(), input)).collect()
}

#[test]
fn corpus_is_current() {
    let expected: Vec<Seed> =
        seeds().iter().map(|(name, input)| Seed { name: format!("{name}.http"), bytes: input.to_bytes() }).collect();
    if fuzz::writing_corpus() {
        fuzz::write_corpus(corpus_dir(), &expected);
        return;
    }
    let mut expected = expected;
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    let committed = fuzz::corpus(corpus_dir());
    let names = |seeds: &[Seed]| seeds.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&committed), names(&expected), "regenerate with TALLY_FUZZ_WRITE_CORPUS=1");
    for (committed, expected) in committed.iter().zip(&expected) {
        assert!(
            committed.bytes == expected.bytes,
            "corpus http_bodies/{} is stale: regenerate with TALLY_FUZZ_WRITE_CORPUS=1 cargo test -p {PACKAGE} \
             --test fuzz corpus",
            committed.name
        );
    }
}

// ----- mutations -----

const ODD_SEGMENTS: [&str; 10] = ["%00", "%FF", "a%2Fb", "..", "%20", "\u{e9}", "x", "SKU 1", "-", "~"];
const CONTENT_TYPES: [&str; 5] =
    ["text/plain", "application/json; charset=utf-8", "application/problem+json", "APPLICATION/JSON", ""];

fn mutate_http(seeds: &[Seed], parsed: &[(HttpInput, Option<Value>)], rng: &mut Rng) -> Vec<u8> {
    let Some((input, body)) = rng.pick(parsed) else { return Vec::new() };
    let mut input = input.clone();
    let donors: Vec<Value> = parsed.iter().filter_map(|(_, body)| body.clone()).collect();
    match rng.below(20) {
        0 | 1 => {
            // A path segment damaged.
            let mut segments: Vec<String> = input.path.split('/').map(str::to_string).collect();
            let at = 1 + rng.below(segments.len().saturating_sub(1).max(1));
            if let Some(segment) = segments.get_mut(at) {
                *segment = match rng.below(3) {
                    0 => "y".repeat([129, 200, 300][rng.below(3)]),
                    _ => ODD_SEGMENTS[rng.below(ODD_SEGMENTS.len())].to_string(),
                };
            }
            input.path = segments.join("/");
        }
        2 => {
            // A header damaged: the content type, or a key.
            input.headers.retain(|(name, _)| name != "content-type");
            if rng.chance(3, 4) {
                input.headers.push(("content-type".into(), CONTENT_TYPES[rng.below(CONTENT_TYPES.len())].into()));
            }
            if rng.chance(1, 2) {
                let key = ["", " ", "k".repeat(129).as_str(), "key\u{7f}", "ok-key"][rng.below(5)].to_string();
                input.headers.push(("idempotency-key".into(), key));
            }
        }
        3 => {
            // This body to another route.
            if let Some((other, _)) = rng.pick(parsed) {
                input.method.clone_from(&other.method);
                input.path.clone_from(&other.path);
            }
        }
        _ => {}
    }
    input.body = match body {
        Some(body) if rng.chance(9, 10) => fuzz::json::mutate_body(body, &donors, seeds, rng),
        _ => fuzz::Mutator { seeds, header_len: 4 }.mutate(rng),
    };
    input.to_bytes()
}

// ----- the server and the property -----

/// Error codes the OpenAPI document lists per (path template, method, status).
struct Documented {
    paths: Vec<(Vec<String>, Value)>,
}

impl Documented {
    fn load() -> Documented {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let document: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("openapi: {e}"));
        let paths = document["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(template, item)| (template.split('/').map(str::to_string).collect(), item.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Documented { paths }
    }

    /// The operation a concrete path and method route to, with its template.
    fn operation(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let segments: Vec<&str> = path.split('?').next().unwrap_or_default().split('/').collect();
        // Literal segments win over parameters, as in the router.
        let mut candidates: Vec<&(Vec<String>, Value)> = self
            .paths
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
            })
            .collect();
        candidates.sort_by_key(|(template, _)| template.iter().filter(|t| t.starts_with('{')).count());
        let (template, item) = candidates.first()?;
        let operation = item.get(method.to_ascii_lowercase())?;
        Some((template.join("/"), operation))
    }

    /// The codes in backticks in the description of `status` of `operation`.
    fn codes(operation: &Value, status: u16) -> Vec<String> {
        let description = operation["responses"][status.to_string()]["description"].as_str().unwrap_or_default();
        description.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }
}

struct Server {
    runtime: tokio::runtime::Runtime,
    state: Arc<AppState>,
    reservation_id: String,
    _dir: tempfile::TempDir,
}

async fn send(state: &Arc<AppState>, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = router(Arc::clone(state)).oneshot(request).await.unwrap_or_else(|never| match never {});
    let status = response.status();
    let body = response.into_body().collect().await.map(|body| body.to_bytes().to_vec()).unwrap_or_default();
    (status, body)
}

async fn send_json(state: &Arc<AppState>, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let (status, body) = send(state, request).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A one-node cluster with two shards in a scratch directory, stock on two
/// SKUs, and one reservation (by order) for the `{id}` and `{order}` paths.
fn start_server() -> Server {
    let dir = fuzz::scratch_dir();
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        shards: Some(2),
        node_id: Some(1),
        peer_listen: Some(testkit::free_addrs(1)[0].to_string()),
        ..Overrides::default()
    };
    let env = [("TALLY_SERVER__DEBUG_CLOCK".to_string(), "true".to_string())];
    let config = Config::load(None, env, &overrides).unwrap_or_else(|e| panic!("config: {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (state, reservation_id) = runtime.block_on(async {
        let running = server::app::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let state = Arc::clone(&running.state);
        // Serve nothing over TCP: requests go straight to the router.
        drop(running);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while state.node.status().shards.iter().any(|shard| shard.leader.is_none()) {
            assert!(tokio::time::Instant::now() < deadline, "no leaders");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (path, on_hand) in [("/v1/items/FUZZ-1/berlin", 1_000), ("/v1/items/FUZZ-2/paris", 1_000)] {
            let (status, body) = send_json(&state, "PUT", path, &json!({"on_hand": on_hand})).await;
            assert!(status.is_success(), "stock {path}: {status} {body}");
        }
        let hold = json!({"lines": [line("FUZZ-1", Some("berlin"), 1)], "order_id": ORDER, "ttl_seconds": 3600});
        let (status, body) = send_json(&state, "POST", "/v1/reservations", &hold).await;
        assert!(status.is_success(), "reservation: {status} {body}");
        let id = body["id"].as_str().unwrap_or_else(|| panic!("reservation without an id: {body}")).to_string();
        (state, id)
    });
    Server { runtime, state, reservation_id, _dir: dir }
}

/// Accepted: the answer was a 2xx.
fn check_http(server: &Server, documented: &Documented, input: &[u8]) -> bool {
    let Some(input) = HttpInput::parse(input) else { return false };
    let path = input.path.replace("{id}", &server.reservation_id).replace("{order}", ORDER);
    let mut builder = Request::builder().method(input.method.as_str()).uri(&path);
    for (name, value) in &input.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    // A path or header that is not valid HTTP never reaches the server.
    let Ok(request) = builder.body(Body::from(input.body.clone())) else { return false };
    let (status, body) = server.runtime.block_on(send(&server.state, request));
    let shown = || format!("{} {path}: {status} {}", input.method, String::from_utf8_lossy(&body));
    assert!(!status.is_server_error(), "a server error: {}", shown());
    if status.is_success() {
        return true;
    }
    assert!(status.is_client_error(), "neither 2xx nor 4xx: {}", shown());
    let problem: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| panic!("a 4xx that is not JSON: {}", shown()));
    let code = problem["code"].as_str().unwrap_or_else(|| panic!("a problem without a code: {}", shown()));
    match documented.operation(&input.method, &path) {
        Some((template, operation)) => {
            let codes = Documented::codes(operation, status.as_u16());
            assert!(
                codes.iter().any(|listed| listed == code),
                "{} {template} answered {status} `{code}`, which docs/openapi.json does not list ({codes:?}): {}",
                input.method,
                shown()
            );
        }
        None => assert!(
            ["not_found", "method_not_allowed", "invalid_path"].contains(&code),
            "an unrouted request answered `{code}`: {}",
            shown()
        ),
    }
    false
}

#[test]
fn http_bodies() {
    fuzz::cap_allocations(&ALLOCATOR, HEAP_HEADROOM_BYTES);
    let target = Target::new("http_bodies", PACKAGE, corpus_dir(), 3_000);
    let parsed: Vec<(HttpInput, Option<Value>)> = target
        .seeds
        .iter()
        .filter_map(|seed| HttpInput::parse(&seed.bytes))
        .map(|input| {
            let body = serde_json::from_slice(&input.body).ok();
            (input, body)
        })
        .collect();
    let server = start_server();
    let documented = Documented::load();
    target.run(|seeds, rng| mutate_http(seeds, &parsed, rng), |input| check_http(&server, &documented, input));
    let Server { runtime, state, .. } = server;
    runtime.block_on(state.node.shutdown());
}

// ----- regressions: what the fuzz target found, each with its input -----

/// `http_bodies`, seed 0x7db29315e0507b92 input 1928, after the corpus's
/// `reservation.http` (key `fuzz-key-1`, lines on both shards) had run: the
/// same key on a request with one line on one shard. The shard knew the key
/// and replayed its part of the first reservation, which the server then
/// answered under the id it had computed for this one (a debug assertion;
/// in release, a 200 naming a reservation that does not exist). Either way
/// round, a key reused by a request of another shape is refused.
#[test]
fn a_key_reused_by_a_request_of_another_shape_is_refused() {
    let server = start_server();
    let post = |key: &str, body: &str| {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/reservations")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let (status, body) = server.runtime.block_on(send(&server.state, request));
        (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
    };
    let both_shards = r#"{"lines":[{"quantity":1,"sku":"FUZZ-1","warehouse":"berlin"},{"quantity":2,"sku":"FUZZ-2"}],"ttl_seconds":60}"#;
    let one_shard = r#"{"lines":[{"quantity":2,"sku":"FUZZ-2"}],"ttl_seconds":60}"#;
    let available = || {
        let request =
            Request::builder().uri("/v1/items/FUZZ-1/berlin").body(Body::empty()).unwrap_or_else(|e| panic!("{e}"));
        let (_, body) = server.runtime.block_on(send(&server.state, request));
        serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["available"].as_u64()
    };

    // Across shards first, then one shard (the input the fuzzer found).
    let (status, first) = post("fuzz-key-1", both_shards);
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = post("fuzz-key-1", both_shards);
    assert_eq!((status, &again["id"]), (StatusCode::CREATED, &first["id"]), "the same request replays: {again}");
    let (status, reused) = post("fuzz-key-1", one_shard);
    assert_eq!((status, reused["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_key_reused")), "{reused}");

    // One shard first, then across shards: the saga's other part is undone.
    let (status, first) = post("fuzz-key-2", one_shard);
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let before = available();
    let (status, reused) = post("fuzz-key-2", both_shards);
    assert_eq!((status, reused["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_key_reused")), "{reused}");
    assert_eq!(available(), before, "the part held on the other shard was not released");
    let Server { runtime, state, .. } = server;
    runtime.block_on(state.node.shutdown());
}

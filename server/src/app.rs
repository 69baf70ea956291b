//! The running server: the cluster node, the shared state handlers see, the
//! router with its layers, and start-up and graceful shutdown.
//!
//! Layers, outermost first: CORS, observe (metrics, request timeout, a
//! request id in the logs), then per route group `authenticate` (keys,
//! roles, rate limits). Health and readiness need no key, nor do the admin
//! page and widget scripts (`routes/ui.rs`); everything under `/v1`,
//! `/metrics` and `/openapi.json` does when keys are configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cluster::Node;
use engine::read::{FromAnswer, Query};
use engine::{Command, Outcome};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::alerts::Alerts;
use crate::auth::{Auth, authenticate};
use crate::config::Config;
use crate::events::EventHub;
use crate::http;
use crate::metrics::Metrics;
use crate::problem::{ApiResult, Problem, ProblemCode};
use crate::routes::{admin, bulk, bundles, items, ledger, ops, products, reservations, states, stream, ui};

/// What every handler can reach.
pub struct AppState {
    pub node: Node,
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    pub hub: Arc<EventHub>,
    pub alerts: Arc<Alerts>,
    pub metrics: Arc<Metrics>,
    /// Recent and running item imports (`routes/bulk.rs`).
    pub imports: bulk::Imports,
    /// The last or ongoing online backup (`routes/admin.rs`).
    pub backups: crate::routes::admin::BackupJobs,
}

impl AppState {
    /// Submits a command to its shard; counts the outcome; a refusal is
    /// its problem.
    pub async fn submit(&self, command: Command) -> ApiResult<Outcome> {
        let outcome = self.node.submit(command).await?;
        self.count(&outcome);
        match outcome {
            Outcome::Refused(refusal) => Err(Problem::refusal(&refusal)),
            other => Ok(other),
        }
    }

    /// Submits a command to `shard`; counts the outcome, which it answers
    /// as is (refusals too).
    pub async fn submit_to(&self, shard: u32, command: Command) -> Result<Outcome, cluster::SubmitError> {
        let outcome = self.node.submit_to(shard, command).await?;
        self.count(&outcome);
        Ok(outcome)
    }

    /// Submits commands to `shard` as one proposal; counts each outcome.
    pub async fn submit_many_to(
        &self,
        shard: u32,
        commands: Vec<Command>,
    ) -> Result<Vec<Outcome>, cluster::SubmitError> {
        let outcomes = self.node.submit_many_to(shard, commands).await?;
        outcomes.iter().for_each(|outcome| self.count(outcome));
        Ok(outcomes)
    }

    /// Counts one engine outcome in `tally_outcomes_total`: every write
    /// path goes through `submit`, `submit_to`, `submit_many_to`, or (the
    /// saga's parts) calls this itself.
    pub fn count(&self, outcome: &Outcome) {
        self.metrics.observe_outcome(outcome.refusal().map_or("ok", engine::Refusal::code));
    }

    /// An outcome a handler did not expect for its command: a refusal maps
    /// as usual; anything else is a bug, said plainly.
    pub fn unexpected(&self, outcome: &Outcome) -> Problem {
        if let Some(refusal) = outcome.refusal() {
            return Problem::refusal(refusal);
        }
        tracing::error!(?outcome, "a command answered an outcome of another kind");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected outcome; this is a bug")
    }
}

/// The API router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let config = &state.config;
    let api = Router::new()
        .route("/v1/items", get(items::list_items))
        .route("/v1/items:import", post(bulk::import))
        .route("/v1/items:export", get(bulk::export))
        .route("/v1/imports", get(bulk::list_imports))
        .route("/v1/imports/{id}", get(bulk::get_import))
        .route("/v1/items/{sku}", get(items::get_sku).put(items::put_sku).delete(products::delete_sku))
        .route("/v1/items/{sku}/{warehouse}", put(items::put_item).get(items::get_item).delete(products::delete_item))
        .route("/v1/items/{sku}/{warehouse}/adjustments", post(items::adjust))
        .route("/v1/items/{sku}/{warehouse}/moves", post(states::move_quantity))
        .route("/v1/items/{sku}/{warehouse}/history", get(items::history))
        .route("/v1/bundles", get(bundles::list_bundles))
        .route("/v1/bundles/{sku}", get(bundles::get_bundle).put(bundles::put_bundle).delete(bundles::delete_bundle))
        .route("/v1/transfers", post(items::transfer))
        .route("/v1/availability", post(items::availability))
        .route("/v1/reservations", post(reservations::create))
        .route("/v1/reservations/batch", post(reservations::batch))
        .route("/v1/reservations/{id}", get(reservations::get).delete(reservations::release))
        .route("/v1/reservations/{id}/confirm", post(reservations::confirm))
        .route("/v1/reservations/{id}/release", post(reservations::release))
        .route("/v1/reservations/{id}/extend", post(reservations::extend))
        .route("/v1/orders/{order_id}", get(reservations::get_order))
        .route("/v1/orders/{order_id}/confirm", post(reservations::order_confirm))
        .route("/v1/orders/{order_id}/release", post(reservations::order_release))
        .route("/v1/orders/{order_id}/extend", post(reservations::order_extend))
        .route("/v1/events", get(stream::events))
        .route("/v1/alerts", get(stream::alerts))
        .route("/v1/ledger", get(ledger::ledger))
        .route("/v1/cluster", get(ops::cluster))
        .route("/v1/cluster/digests", get(ops::digests))
        .route("/v1/debug/clock", post(ops::set_clock))
        .route("/v1/admin/backup", post(admin::start_backup).get(admin::backup_status))
        .route("/v1/admin/learners", post(admin::add_learner))
        .route("/v1/admin/voters", put(admin::change_voters))
        .route("/v1/admin/nodes", post(admin::add_node).get(admin::nodes))
        .route("/v1/admin/nodes/{id}", delete(admin::remove_node))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state.auth), authenticate));
    let open = Router::new().route("/healthz", get(ops::healthz)).route("/readyz", get(ops::readyz));
    // The admin page and the widget are pages, not API: no key to load them,
    // not in the OpenAPI document (routes/ui.rs).
    let mut app = api
        .merge(open)
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.server.body_bytes_max))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(Arc::clone(&state));
    if !config.server.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            config.server.cors_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::IF_MATCH,
                    axum::http::header::IF_NONE_MATCH,
                    axum::http::HeaderName::from_static("idempotency-key"),
                    axum::http::HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([axum::http::header::ETAG, axum::http::header::RETRY_AFTER]),
        );
    }
    app
}

async fn not_found() -> Problem {
    Problem::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}

/// Times each request, bounds it by `request_timeout_ms`, and counts it by
/// route, status and problem code.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    // An import streams millions of rows: it has its own, longer bound.
    let timeout_ms = if route == "/v1/items:import" {
        state.config.import.timeout_ms
    } else {
        state.config.server.request_timeout_ms
    };
    let timeout = Duration::from_millis(timeout_ms);
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long")
            .retry_after_ms(1000)
            .into_response(),
    };
    let status = response.status();
    let code = response.extensions().get::<ProblemCode>().map_or("ok", |code| code.0);
    state.metrics.observe_request(&route, method.as_str(), status.as_u16(), code, started.elapsed());
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), code, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), code, "request");
    }
    response
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] cluster::StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Tls(#[from] http::TlsError),
}

/// A started server: its state and the address it listens on.
pub struct Running {
    pub state: Arc<AppState>,
    pub addr: std::net::SocketAddr,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Starts the node and binds the API. Call inside a tokio runtime.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    // Bad TLS files stop the start before anything else does.
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.server.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    let mut cluster = config.cluster.clone();
    cluster.ledger.clone_from(&config.ledger);
    let node = Node::start(cluster).await?;
    let hub = EventHub::start(&config.events, node.events());
    let alerts = Alerts::start(&config.alerts, node.events());
    let auth = Arc::new(Auth::new(&config.auth));
    if auth.is_open() {
        tracing::warn!(%addr, "no API keys configured: serving open, on loopback only");
    }
    let state = Arc::new(AppState {
        node,
        config: Arc::new(config),
        auth,
        hub,
        alerts,
        metrics: Arc::new(Metrics::new()),
        imports: bulk::Imports::default(),
        backups: Default::default(),
    });
    tokio::spawn(propose_limits(Arc::clone(&state)));
    Ok(Running { state, addr, listener, tls })
}

impl Running {
    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (up to `shutdown_grace_ms`), and shuts the node down.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Running { state, addr, listener, tls } = self;
        let app = router(Arc::clone(&state));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let bounds = http::Bounds::of(&state.config.server);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let metrics = Arc::clone(&state.metrics.connections);
        let server = tokio::spawn(http::serve(listener, app, bounds, metrics, tls, stop_rx));
        tracing::info!(%addr, scheme, node = state.node.id(), shards = state.node.shard_count(), "tally is serving");
        // Wait for the signal, then for the server to drain, at most the grace.
        shutdown.await;
        let _ = stop_tx.send(true);
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        state.hub.close();
        let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
        let result = match tokio::time::timeout(grace, server).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(join)) => Err(ServeError::Http(std::io::Error::other(join))),
            Err(_) => {
                tracing::warn!("grace period over; closing the remaining connections");
                Ok(())
            }
        };
        state.alerts.flush(Duration::from_secs(2)).await;
        state.node.shutdown().await;
        tracing::info!("stopped");
        result
    }
}

/// Engine limits are replicated state: the config proposes them through the
/// log (`SetLimits`) to every shard whose limits differ, once it has a leader.
async fn propose_limits(state: Arc<AppState>) {
    let wanted = state.config.engine;
    for shard in 0..state.node.shard_count() {
        for _attempt in 0..50 {
            let current = state.node.query(shard, Query::Limits, cluster::Consistency::Linearizable).await;
            match current.map(engine::Limits::from_answer) {
                Ok(Ok(current)) if current == wanted => break,
                Ok(Ok(_)) => {
                    let command = Command::SetLimits(engine::cmd::SetLimits { limits: wanted });
                    match state.submit_to(shard, command).await {
                        Ok(Outcome::LimitsSet) => break,
                        Ok(other) => {
                            tracing::error!(shard, ?other, "the configured engine limits were refused");
                            break;
                        }
                        Err(error) => tracing::debug!(shard, %error, "proposing limits; will retry"),
                    }
                }
                Ok(Err(mismatch)) => tracing::error!(shard, %mismatch, "reading limits; will retry"),
                Err(error) => tracing::debug!(shard, %error, "reading limits; will retry"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

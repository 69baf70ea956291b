//! The server's settings: one TOML file, every key overridable by a
//! `TALLY_*` environment variable and the most used ones by flags.
//!
//! Layers, later wins: built-in defaults, the file, the environment, flags.
//! An environment variable names a key by its path in the file, sections
//! joined with `__`: `TALLY_SERVER__LISTEN=0.0.0.0:8080`,
//! `TALLY_CLUSTER__SHARDS=16`. Its value is read as TOML (a number, a bool,
//! an array) and, failing that, as a string.
//!
//! Every limit the server keeps is named here (STYLE.md: a bound on
//! everything), with the cluster's under `[cluster]` and the replicated
//! engine limits under `[engine]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cluster::{ClusterConfig, Member};
use engine::Limits;
use serde::{Deserialize, Serialize};

/// Everything `tally serve` reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub import: ImportConfig,
    pub auth: AuthConfig,
    pub events: EventsConfig,
    pub alerts: AlertsConfig,
    pub cluster: ClusterConfig,
    /// The movement ledger (`GET /v1/ledger`, `tally ledger export`).
    pub ledger: cluster::ledger::LedgerConfig,
    /// Proposed to every shard at start (they are replicated state).
    pub engine: Limits,
    pub backup: BackupConfig,
}

/// `[backup]`: online backups and the continuous log archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where `POST /v1/admin/backup` may write: a backup's directory must
    /// be inside it (refused with 403 `backup_outside_root` otherwise).
    /// `None`: any absolute path the process may write.
    pub root: Option<PathBuf>,
    /// The continuous log archive: sealed WAL segments are copied here
    /// (with fsync) before a purge deletes them. `None`: no archive.
    pub archive_dir: Option<PathBuf>,
    /// Pause after a failed archive copy before it is tried again; the
    /// segment is kept meanwhile.
    pub archive_retry_ms: u64,
    /// Files one backup may hold (snapshots and segments, all shards).
    pub files_max: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { root: None, archive_dir: None, archive_retry_ms: 1_000, files_max: 100_000 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the HTTP API listens.
    pub listen: String,
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `server=debug,info`.
    pub log_level: String,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// A request that takes longer answers 503 `timeout`.
    pub request_timeout_ms: u64,
    /// On SIGTERM or ctrl-c, how long in-flight requests may still run.
    pub shutdown_grace_ms: u64,
    /// Origins allowed by CORS; empty means no CORS headers.
    pub cors_origins: Vec<String>,
    /// Allows `POST /v1/debug/clock` (admin) to move this node's clock.
    /// For chaos runs only; never set it in production.
    pub debug_clock: bool,
    /// A connection must send a whole request head within this long of
    /// being accepted, or of the head's first byte; slower ones (slowloris)
    /// are closed. With TLS it bounds the handshake too.
    pub header_read_timeout_ms: u64,
    /// How long a keep-alive connection may stay silent between requests.
    pub keep_alive_timeout_ms: u64,
    /// Largest request head (request line and headers); larger ones are
    /// answered 431. Also the most a connection buffers while reading, so
    /// heads use at most `connections_max` × this much memory.
    pub header_bytes_max: usize,
    /// Connections open at once; one more is accepted and closed at once
    /// (counted in `tally_http_connections_refused_total`).
    pub connections_max: usize,
    /// With `tls_key`: serve HTTPS with this PEM certificate chain (leaf
    /// first). Without both, plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            body_bytes_max: 1 << 20,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            cors_origins: Vec::new(),
            debug_clock: false,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            header_bytes_max: 65_536,
            connections_max: 10_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Bounds and defaults of the HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TTL of a hold when the request gives none.
    pub ttl_seconds_default: u64,
    /// Longest TTL a request may ask for. It is also the engine's
    /// replicated bound (`Limits::hold_ttl_max_ms`, kept in ms of log
    /// time), which is set from it: hold TTLs are seconds in every setting
    /// and every request.
    pub ttl_seconds_max: u64,
    /// Requests in one `POST /v1/reservations/batch`.
    pub batch_requests_max: usize,
    /// Lines in one availability question.
    pub availability_lines_max: usize,
    /// Largest page of `GET /v1/items`.
    pub list_limit_max: u32,
    /// Items a listing looks at per shard before answering a short page.
    pub list_scan_max: u32,
    /// Movements `history` returns at most.
    pub history_limit_max: usize,
    /// How a reservation line with no warehouse is filled from the SKU's
    /// warehouses, inside the hold's one atomic step, when the request does
    /// not say (`allocation` in the request body).
    pub allocation: AllocationStrategy,
    /// Longest `warehouse_priority` list, of a reservation request or of a
    /// SKU (`PUT /v1/items/{sku}`); the engine bounds it by
    /// `warehouses_per_shard_max` too.
    pub warehouse_priority_max: usize,
    /// Longest `note` of an adjustment or `reason` of a transfer, in bytes
    /// (at most the engine's `NOTE_LEN_MAX`, 1024): recorded in the ledger.
    pub note_bytes_max: usize,
}

/// `api.allocation`: how lines without a warehouse are allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStrategy {
    /// Most available warehouse first, ties by warehouse name; a line that
    /// no warehouse fills alone is split across them in that order.
    #[default]
    MostAvailable,
    /// The SKU's warehouse priority list first (`PUT /v1/items/{sku}`),
    /// then the rest most available first; split as above.
    Priority,
}

impl AllocationStrategy {
    pub fn engine(self) -> engine::cmd::Allocation {
        match self {
            AllocationStrategy::MostAvailable => engine::cmd::Allocation::MostAvailable,
            AllocationStrategy::Priority => engine::cmd::Allocation::Rule(engine::cmd::AllocationRule {
                order: engine::cmd::AllocationOrder::Priority,
                warehouse_priority: Vec::new(),
                split: true,
            }),
        }
    }

    pub fn order(self) -> engine::cmd::AllocationOrder {
        match self {
            AllocationStrategy::MostAvailable => engine::cmd::AllocationOrder::MostAvailable,
            AllocationStrategy::Priority => engine::cmd::AllocationOrder::Priority,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            ttl_seconds_default: 600,
            ttl_seconds_max: 86_400,
            batch_requests_max: 1024,
            availability_lines_max: 1000,
            list_limit_max: 1000,
            list_scan_max: 100_000,
            history_limit_max: 255,
            allocation: AllocationStrategy::MostAvailable,
            warehouse_priority_max: 32,
            note_bytes_max: 256,
        }
    }
}

/// Bulk import and export of items (`routes/bulk.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// Rows of one shard sent as one proposal.
    pub rows_per_batch: usize,
    /// Proposals of one import in flight at once; the body is read no
    /// faster than they commit.
    pub batches_in_flight_max: usize,
    /// Longest row (one line), bytes; longer ones fail as `line_too_long`.
    pub line_bytes_max: usize,
    /// Largest import body, bytes (413 `body_too_large` when passed; the
    /// rows before it are applied).
    pub bytes_max: u64,
    /// Row errors an import's report lists (all are counted).
    pub errors_reported_max: usize,
    /// How long an import may run (instead of `server.request_timeout_ms`).
    pub timeout_ms: u64,
    /// How long a batch is retried while its shard has no leader or is
    /// busy, before its rows fail as `unavailable`.
    pub retry_ms: u64,
    /// Imports `GET /v1/imports` remembers.
    pub recent_max: usize,
    /// Items an export reads per page.
    pub export_page_items: u32,
}

/// Most rows one import proposal carries.
pub const IMPORT_ROWS_PER_BATCH_LIMIT: usize = 4096;

impl Default for ImportConfig {
    fn default() -> Self {
        Self {
            rows_per_batch: 512,
            batches_in_flight_max: 8,
            line_bytes_max: 8192,
            bytes_max: 4 << 30,
            errors_reported_max: 1000,
            timeout_ms: 3_600_000,
            retry_ms: 30_000,
            recent_max: 16,
            export_page_items: 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads of items, reservations, events and the cluster.
    Read,
    /// Read, availability and reservations.
    Reserve,
    /// Everything.
    Admin,
}

/// Longest API key name, in bytes.
pub const API_KEY_NAME_LEN_MAX: usize = 64;

/// Largest `api.ttl_seconds_max`: the engine's bound on any hold, in seconds.
pub const TTL_SECONDS_LIMIT: u64 = engine::config::HOLD_TTL_MS_LIMIT / 1000;
/// Most connections `server.connections_max` may allow.
pub const CONNECTIONS_MAX_LIMIT: usize = 1_000_000;
/// Bounds of `server.header_bytes_max` (hyper's read buffer takes no less
/// than 8 KiB).
pub const HEADER_BYTES_MIN: usize = 8192;
pub const HEADER_BYTES_LIMIT: usize = 1 << 20;

/// One API key, stored as the SHA-256 of the key (`tally hash-key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who the key belongs to; recorded in histories and logs. 1 to 64
    /// bytes, no control characters. Idempotency keys and order ids are
    /// scoped to it: keys that share a name (a rotation) share them.
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    /// This key's quota: requests (holds, for a batch) per second, instead
    /// of `auth.rate_per_second`; 0 for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// This key's burst, instead of `auth.rate_burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// With no keys, the server runs open (every request is admin) and
    /// refuses to listen on anything but loopback.
    pub keys: Vec<ApiKey>,
    /// With keys, whether requests without one may still read (role `read`),
    /// e.g. for a storefront widget.
    pub anonymous_read: bool,
    /// Requests per second per key (token bucket); 0 turns limiting off. A
    /// batch costs one per hold it asks for. A key's own `rate_per_second`
    /// and `rate_burst` override these.
    pub rate_per_second: u32,
    /// Bucket size: the burst a key may send at once.
    pub rate_burst: u32,
    /// Failed authentications per second per client IP (token bucket); an
    /// address whose bucket is empty gets 429 on every keyed route until it
    /// refills. 0 turns it off.
    pub failure_rate_per_second: u32,
    /// Failed authentications an address may make at once.
    pub failure_rate_burst: u32,
    /// Client addresses tracked for failures; past it, new addresses share
    /// one bucket.
    pub failure_ips_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            anonymous_read: false,
            rate_per_second: 0,
            rate_burst: 1000,
            failure_rate_per_second: 1,
            failure_rate_burst: 20,
            failure_ips_max: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events kept for `Last-Event-ID` resume and `GET /v1/alerts`.
    pub retained_max: usize,
    /// Alerts (threshold crossings) kept for `GET /v1/alerts`.
    pub alerts_retained_max: usize,
    /// Live `/v1/events` connections at once; more get 503.
    pub subscribers_max: usize,
    /// Seconds between SSE keep-alive comments.
    pub keepalive_seconds: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { retained_max: 100_000, alerts_retained_max: 10_000, subscribers_max: 1_000, keepalive_seconds: 15 }
    }
}

/// Where threshold crossings go besides the live stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Appends one JSON line per alert; empty for none.
    pub file: Option<PathBuf>,
    /// Alerts waiting for the file; beyond it the oldest are dropped (and
    /// counted), so a stuck disk never holds memory or slows writes.
    pub file_queue_max: usize,
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { file: None, file_queue_max: 10_000, webhooks: Vec::new() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// Key of the `X-Tally-Signature: sha256=<hex HMAC of the body>` header;
    /// never shown (`tally check-config` prints `<redacted>`).
    pub secret: cluster::Secret,
    /// Alerts waiting for delivery; beyond it the oldest are dropped (and
    /// counted), so a dead webhook never holds memory or slows writes.
    pub queue_max: usize,
    /// Attempts per alert before it is dropped (and counted).
    pub attempts_max: u32,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`.
    pub backoff_first_ms: u64,
    pub backoff_max_ms: u64,
    /// Timeout of one delivery attempt.
    pub timeout_ms: u64,
    /// Event types this sink is sent (`threshold_crossed`, `stock_changed`,
    /// `reservation.held`, `reservation.refused`, `reservation.confirmed`,
    /// `reservation.released`, `reservation.expired`,
    /// `reservation.backorder_filled`). Threshold crossings
    /// only by default.
    pub event_types: Vec<String>,
    /// Only events whose SKU (a reservation event: any of its lines' SKUs)
    /// starts with one of these; empty for every SKU.
    pub sku_prefixes: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: cluster::Secret::default(),
            queue_max: 10_000,
            attempts_max: 8,
            backoff_first_ms: 100,
            backoff_max_ms: 30_000,
            timeout_ms: 5_000,
            event_types: vec!["threshold_crossed".into()],
            sku_prefixes: Vec::new(),
        }
    }
}

/// The event types a webhook may subscribe to (`events::kind_name`).
pub const SINK_EVENT_TYPES: [&str; 8] = [
    "threshold_crossed",
    "stock_changed",
    "reservation.held",
    "reservation.refused",
    "reservation.confirmed",
    "reservation.released",
    "reservation.expired",
    "reservation.backorder_filled",
];

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("bad settings: {0}")]
    Invalid(String),
}

/// Flags of `tally serve` that override the file and environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub shards: Option<u32>,
    pub node_id: Option<u64>,
    pub peer_listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

impl Config {
    /// Defaults, then `file`, then `TALLY_*` variables from `env`, then
    /// `overrides`; checked as a whole.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        let mut shards_given = table.get("cluster").and_then(|c| c.get("shards")).is_some();
        for (name, value) in env {
            let Some(path) = name.strip_prefix("TALLY_") else { continue };
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(ConfigError::Invalid(format!("{name}: empty key in the name")));
            }
            if keys == ["cluster", "shards"] {
                shards_given = true;
            }
            set_path(&mut table, &keys, parse_env_value(&value))
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        if table.get("engine").and_then(|engine| engine.get("hold_ttl_max_ms")).is_some() {
            return Err(ConfigError::Invalid(
                "engine.hold_ttl_max_ms is gone: hold TTLs are seconds everywhere; set api.ttl_seconds_max".into(),
            ));
        }
        let mut config: Config = table.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if !shards_given {
            config.cluster.shards = default_shards();
        }
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = &overrides.listen {
            self.server.listen.clone_from(listen);
        }
        if let Some(dir) = &overrides.data_dir {
            self.cluster.data_dir.clone_from(dir);
        }
        if let Some(shards) = overrides.shards {
            self.cluster.shards = shards;
        }
        if let Some(node_id) = overrides.node_id {
            self.cluster.node_id = node_id;
        }
        if let Some(listen) = &overrides.peer_listen {
            self.cluster.listen.clone_from(listen);
        }
        if let Some(format) = overrides.log_format {
            self.server.log_format = format;
        }
        if let Some(level) = &overrides.log_level {
            self.server.log_level.clone_from(level);
        }
        self.engine.hold_ttl_max_ms = self.api.ttl_seconds_max.saturating_mul(1000);
        self.cluster.archive_dir.clone_from(&self.backup.archive_dir);
        self.cluster.archive_retry_ms = self.backup.archive_retry_ms;
        self.cluster.query_bounds = self.query_bounds();
        // A lone node that names no members is a one-member cluster.
        if self.cluster.members.is_empty() {
            self.cluster.members = vec![Member { id: self.cluster.node_id, addr: self.cluster.listen.clone() }];
        }
    }

    /// What a query from a peer may ask for at most: the largest query this
    /// node's own routes build (a listing asks one more than its page to
    /// know whether another follows).
    fn query_bounds(&self) -> engine::read::QueryBounds {
        let lines = u32::try_from(self.api.availability_lines_max).unwrap_or(u32::MAX);
        let history = u32::try_from(self.api.history_limit_max).unwrap_or(u32::MAX);
        engine::read::QueryBounds {
            names_max: lines.max(self.engine.lines_per_hold_max).max(self.engine.bundle_components_max),
            limit_max: self.api.list_limit_max.saturating_add(1).max(history).max(self.import.export_page_items),
            scan_max: self.api.list_scan_max.max(self.import.export_page_items),
        }
    }

    /// Checks the settings together; says which one is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_auth()?;
        self.validate_api()?;
        self.validate_io()?;
        self.ledger.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(|e| ConfigError::Invalid(format!("cluster: {e}")))?;
        self.engine.validate().map_err(|e| ConfigError::Invalid(format!("engine: {e}")))?;
        Ok(())
    }

    /// `[server]`: where it listens, and its connection bounds.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        let listen: SocketAddr = match self.server.listen.parse() {
            Ok(addr) => addr,
            Err(e) => return invalid(format!("server.listen {:?}: {e}", self.server.listen)),
        };
        if self.auth.keys.is_empty() && !listen.ip().is_loopback() {
            return invalid(format!(
                "server.listen is {listen}, not loopback, and auth.keys is empty: \
                 add API keys (tally hash-key) or listen on 127.0.0.1"
            ));
        }
        let server = &self.server;
        if server.header_read_timeout_ms == 0 || server.keep_alive_timeout_ms == 0 {
            return invalid("server.header_read_timeout_ms and keep_alive_timeout_ms must be at least 1".into());
        }
        if !(HEADER_BYTES_MIN..=HEADER_BYTES_LIMIT).contains(&server.header_bytes_max) {
            return invalid(format!("server.header_bytes_max must be in {HEADER_BYTES_MIN}..={HEADER_BYTES_LIMIT}"));
        }
        if server.connections_max == 0 || server.connections_max > CONNECTIONS_MAX_LIMIT {
            return invalid(format!("server.connections_max must be in 1..={CONNECTIONS_MAX_LIMIT}"));
        }
        if server.tls_cert.is_some() != server.tls_key.is_some() {
            return invalid("server.tls_cert and server.tls_key go together: set both or neither".into());
        }
        if self.server.body_bytes_max < 1024 || self.server.request_timeout_ms == 0 {
            return invalid("server.body_bytes_max must be at least 1024 and request_timeout_ms at least 1".into());
        }
        Ok(())
    }

    /// `[auth]`: keys and their rate buckets.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        for key in &self.auth.keys {
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return invalid(format!("auth.keys {:?}: sha256 must be 64 lowercase hex digits", key.name));
            }
            if key.name.is_empty() || key.name.len() > API_KEY_NAME_LEN_MAX || key.name.chars().any(char::is_control) {
                return invalid(format!(
                    "auth.keys {:?}: name must be 1 to {API_KEY_NAME_LEN_MAX} bytes without control characters",
                    key.name
                ));
            }
        }
        if self.auth.rate_per_second > 0 && self.auth.rate_burst == 0 {
            return invalid("auth.rate_burst must be at least 1 when rate_per_second is set".into());
        }
        for key in &self.auth.keys {
            if key.rate_burst == Some(0) {
                return invalid(format!("auth.keys {:?}: rate_burst must be at least 1", key.name));
            }
            let same_name = self.auth.keys.iter().find(|other| other.name == key.name);
            if same_name
                .is_some_and(|first| (first.rate_per_second, first.rate_burst) != (key.rate_per_second, key.rate_burst))
            {
                return invalid(format!(
                    "auth.keys {:?}: keys that share a name share one bucket; give them the same rate_per_second and rate_burst",
                    key.name
                ));
            }
        }
        if self.auth.failure_rate_per_second > 0
            && (self.auth.failure_rate_burst == 0 || self.auth.failure_ips_max == 0)
        {
            return invalid(
                "auth.failure_rate_burst and failure_ips_max must be at least 1 when failure_rate_per_second is set"
                    .into(),
            );
        }
        Ok(())
    }

    /// `[api]`: request bounds, in their own terms and against the engine's.
    fn validate_api(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        let api = &self.api;
        if api.ttl_seconds_default == 0 || api.ttl_seconds_default > api.ttl_seconds_max {
            return invalid("api.ttl_seconds_default must be in 1..=ttl_seconds_max".into());
        }
        if api.ttl_seconds_max > TTL_SECONDS_LIMIT {
            return invalid(format!("api.ttl_seconds_max must be at most {TTL_SECONDS_LIMIT}"));
        }
        if api.batch_requests_max == 0
            || api.availability_lines_max == 0
            || api.list_limit_max == 0
            || api.list_scan_max == 0
            || api.history_limit_max == 0
        {
            return invalid("api limits must be at least 1".into());
        }
        if api.warehouse_priority_max == 0
            || api.warehouse_priority_max > usize::from(self.engine.warehouses_per_shard_max)
        {
            return invalid(format!(
                "api.warehouse_priority_max must be in 1..={} (engine.warehouses_per_shard_max)",
                self.engine.warehouses_per_shard_max
            ));
        }
        if api.note_bytes_max == 0 || api.note_bytes_max > engine::ids::NOTE_LEN_MAX {
            return invalid(format!("api.note_bytes_max must be in 1..={}", engine::ids::NOTE_LEN_MAX));
        }
        Ok(())
    }

    /// `[backup]`, `[import]`, `[events]` and `[alerts]`.
    fn validate_io(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        if self.backup.archive_retry_ms == 0 || self.backup.files_max == 0 {
            return invalid("backup.archive_retry_ms and backup.files_max must be at least 1".into());
        }
        for (name, path) in [("backup.root", &self.backup.root), ("backup.archive_dir", &self.backup.archive_dir)] {
            if path.as_ref().is_some_and(|path| !path.is_absolute()) {
                return invalid(format!("{name} must be an absolute path"));
            }
        }
        let import = &self.import;
        if import.rows_per_batch == 0 || import.rows_per_batch > IMPORT_ROWS_PER_BATCH_LIMIT {
            return invalid(format!("import.rows_per_batch must be in 1..={IMPORT_ROWS_PER_BATCH_LIMIT}"));
        }
        if import.batches_in_flight_max == 0
            || import.line_bytes_max < 64
            || import.bytes_max == 0
            || import.timeout_ms == 0
            || import.recent_max == 0
            || import.export_page_items == 0
        {
            return invalid(
                "import limits must be at least 1 (line_bytes_max at least 64; errors_reported_max and retry_ms may be 0)"
                    .into(),
            );
        }
        if self.events.retained_max == 0 || self.events.subscribers_max == 0 || self.events.keepalive_seconds == 0 {
            return invalid("events limits must be at least 1".into());
        }
        if self.alerts.file_queue_max == 0 {
            return invalid("alerts.file_queue_max must be at least 1".into());
        }
        for hook in &self.alerts.webhooks {
            if !hook.url.starts_with("http://") {
                return invalid(format!("alerts.webhooks url {:?}: only http:// is supported", hook.url));
            }
            if hook.secret.is_empty() || hook.queue_max == 0 || hook.attempts_max == 0 || hook.timeout_ms == 0 {
                return invalid("alerts.webhooks: secret, queue_max, attempts_max and timeout_ms are required".into());
            }
            if let Some(unknown) = hook.event_types.iter().find(|t| !SINK_EVENT_TYPES.contains(&t.as_str())) {
                return invalid(format!(
                    "alerts.webhooks event_types: {unknown:?} is not one of {}",
                    SINK_EVENT_TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// One shard per core: the shard actors are the CPU-bound part.
fn default_shards() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

fn parse_env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = keys.split_last() else { return Err("no key".into()) };
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("{key} is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load(Some(&path), env, &Overrides::default())
    }

    #[test]
    fn defaults_are_a_loopback_single_node() {
        let config = Config::load(None, Vec::new(), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.server.listen, "127.0.0.1:8080");
        assert_eq!(config.cluster.members.len(), 1);
        assert_eq!(config.cluster.data_dir, PathBuf::from("data"));
        assert!(config.cluster.shards >= 1);
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let config = load(
            "[server]\nlisten = \"127.0.0.1:9000\"\n[cluster]\nshards = 3\n",
            &[("TALLY_CLUSTER__SHARDS", "5"), ("TALLY_SERVER__LOG_FORMAT", "json"), ("OTHER", "x")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cluster.shards, 5);
        assert_eq!(config.server.log_format, LogFormat::Json);
        assert_eq!(config.server.listen, "127.0.0.1:9000");
        let flags = Overrides { shards: Some(7), ..Overrides::default() };
        let config = Config::load(None, vec![("TALLY_CLUSTER__SHARDS".into(), "5".into())], &flags)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cluster.shards, 7);
    }

    /// Sizes were renamed to say their unit (`frame_size_max` is now
    /// `frame_bytes_max`, and so on); a config with the old names loads.
    #[test]
    fn sizes_load_under_their_old_names_too() {
        let text = "[cluster]\nframe_size_max = 1048576\nsnapshot_size_max = 8388608\nsnapshot_chunk_size = 65536\n\
            [cluster.wal]\nsegment_size_max = 4194304\nrecord_size_max = 1048576\n";
        let config = load(text, &[]).unwrap_or_else(|e| panic!("{e}"));
        let cluster = &config.cluster;
        assert_eq!(
            (cluster.frame_bytes_max, cluster.snapshot_bytes_max, cluster.snapshot_chunk_bytes),
            (1_048_576, 8_388_608, 65_536)
        );
        assert_eq!((cluster.wal.segment_bytes_max, cluster.wal.record_bytes_max), (4_194_304, 1_048_576));
        let renamed = load("[cluster]\nframe_bytes_max = 8388608\n", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(renamed.cluster.frame_bytes_max, 8_388_608);
    }

    /// Hold TTLs are seconds in every setting: the engine's replicated
    /// bound follows `api.ttl_seconds_max`, and the old ms key is refused
    /// by name rather than read in the wrong unit.
    #[test]
    fn the_engine_ttl_bound_follows_the_api_in_seconds() {
        let config =
            load("[api]\nttl_seconds_default = 60\nttl_seconds_max = 3600\n", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.engine.hold_ttl_max_ms, 3_600_000);
        assert_eq!(load("", &[]).unwrap_or_else(|e| panic!("{e}")).engine.hold_ttl_max_ms, 86_400_000);
        let old = load("[engine]\nhold_ttl_max_ms = 1000\n", &[]).err();
        assert!(old.is_some_and(|e| e.to_string().contains("api.ttl_seconds_max")));
        let over = format!("[api]\nttl_seconds_max = {}\n", TTL_SECONDS_LIMIT + 1);
        assert!(load(&over, &[]).is_err());
        assert!(load(&format!("[api]\nttl_seconds_max = {TTL_SECONDS_LIMIT}\n"), &[]).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(load("[server]\nlisen = \"x\"\n", &[]).is_err());
        assert!(load("[api]\nttl_seconds_default = 0\n", &[]).is_err());
        assert!(load("", &[("TALLY_SERVER__NOPE", "1")]).is_err());
    }

    #[test]
    fn allocation_settings_are_read_and_the_priority_bound_is_checked() {
        let config = load("[api]\nallocation = \"priority\"\nwarehouse_priority_max = 4\n", &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((config.api.allocation, config.api.warehouse_priority_max), (AllocationStrategy::Priority, 4));
        assert!(load("[api]\nwarehouse_priority_max = 0\n", &[]).is_err());
        let over = "[api]\nwarehouse_priority_max = 9\n[engine]\nwarehouses_per_shard_max = 8\n";
        assert!(load(over, &[]).is_err(), "at most the engine's warehouses per shard");
        assert!(load("[api]\nallocation = \"nearest\"\n", &[]).is_err());
    }

    #[test]
    fn an_open_server_refuses_to_listen_beyond_loopback() {
        let error = load("[server]\nlisten = \"0.0.0.0:8080\"\n", &[]).err();
        assert!(error.is_some_and(|e| e.to_string().contains("auth.keys")));
        let hash = "a".repeat(64);
        let keyed = format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"
        );
        assert!(load(&keyed, &[]).is_ok());
    }

    #[test]
    fn key_names_are_bounded_and_hold_no_control_character() {
        let hash = "a".repeat(64);
        let named = |name: &str| format!("[[auth.keys]]\nname = \"{name}\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n");
        assert!(load(&named("shop front"), &[]).is_ok());
        assert!(load(&named(&"n".repeat(API_KEY_NAME_LEN_MAX)), &[]).is_ok());
        for bad in [String::new(), "n".repeat(API_KEY_NAME_LEN_MAX + 1), "a\\u001fb".into(), "a\\u0000b".into()] {
            assert!(load(&named(&bad), &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cluster_listening_beyond_loopback_needs_a_secret() {
        let open = "[cluster]\nlisten = \"0.0.0.0:7001\"\n";
        let error = load(open, &[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("cluster.secret") && error.contains("TALLY_CLUSTER__SECRET"), "{error}");
        assert!(load(open, &[("TALLY_CLUSTER__SECRET", "0123456789abcdef0123")]).is_ok());
        let short = load(open, &[("TALLY_CLUSTER__SECRET", "short")]).err().map(|e| e.to_string());
        assert!(short.is_some_and(|e| e.contains("at least 16 bytes")));
        // The default single node, on loopback, needs none.
        assert!(Config::load(None, Vec::new(), &Overrides::default()).is_ok_and(|c| c.cluster.secret.is_none()));
    }

    #[test]
    fn webhook_secrets_are_never_printed() {
        const SECRET: &str = "webhook-signing-key-do-not-print";
        let file = format!("[[alerts.webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{SECRET}\"\n");
        let config = load(&file, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alerts.webhooks[0].secret.expose(), SECRET.as_bytes());
        let printed = toml::to_string_pretty(&config).unwrap_or_else(|e| panic!("{e}"));
        assert!(printed.contains("secret = \"<redacted>\""), "{printed}");
        assert!(!printed.contains(SECRET) && !format!("{config:?}").contains(SECRET), "a webhook secret was shown");
    }

    #[test]
    fn the_cluster_secret_is_never_printed() {
        const SECRET: &str = "do-not-print-me-0123456789";
        let config = load("", &[("TALLY_CLUSTER__SECRET", SECRET)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cluster.secret.as_ref().map(cluster::Secret::expose), Some(SECRET.as_bytes()));
        // What `tally check-config` prints, and what any log of the config shows.
        let printed = toml::to_string_pretty(&config).unwrap_or_else(|e| panic!("{e}"));
        assert!(printed.contains("secret = \"<redacted>\""), "{printed}");
        let debugged = format!("{config:?} {:?}", config.cluster);
        for shown in [&printed, &debugged] {
            assert!(!shown.contains(SECRET), "the secret was shown");
        }
    }

    fn shipped(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config").join(name)
    }

    #[test]
    fn every_shipped_config_loads() {
        for name in
            ["single.toml", "example.toml", "cluster-3/node1.toml", "cluster-3/node2.toml", "cluster-3/node3.toml"]
        {
            let loaded = Config::load(Some(&shipped(name)), Vec::new(), &Overrides::default());
            assert!(loaded.is_ok(), "{name}: {:?}", loaded.err());
        }
    }

    #[test]
    fn the_example_states_every_default() {
        let example = Config::load(Some(&shipped("example.toml")), Vec::new(), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::load(None, Vec::new(), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(example, defaults);
    }
}

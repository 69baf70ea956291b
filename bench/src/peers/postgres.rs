//! PostgreSQL as a peer: a cluster made by `initdb` in a folder of the run and
//! a `postgres` child listening on a loopback port of its own, with
//! `synchronous_commit = on` so an acknowledged statement is fsynced.
//!
//! The model is two tables: `items(sku, warehouse, on_hand, reserved)` with a
//! check that `0 <= reserved <= on_hand`, and `holds(id, sku, warehouse, qty,
//! state, expires_at)`. Every operation is one statement (its own transaction)
//! whose `WHERE` clause is the check, so the row lock taken by the `UPDATE`
//! makes check-and-change atomic. A batch of holds is one transaction of
//! pipelined statements: one round trip and one commit.
//!
//! Holds never expire here: `expires_at` is stored but nothing acts on it (a
//! real deployment needs a sweeper job); the bench keeps TTLs longer than a
//! workload instead.
//!
//! PostgreSQL refuses to run as root. When we are root (containers, CI), the
//! cluster's folder is given to the `postgres` user that Debian's package
//! creates, and `initdb` and `postgres` run as that user.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState, StartError};

/// How long `start` waits for the new server to accept a connection.
const STARTUP_WAIT_MS: u64 = 20_000;
/// How often `start` tries to connect while the server comes up.
const STARTUP_POLL_MS: u64 = 25;
/// How long `stop` waits for a fast shutdown before killing the server.
const SHUTDOWN_WAIT_MS: u64 = 30_000;
/// Start attempts, each on a fresh port (another process may take the free
/// port between our probe and the server's bind).
const START_ATTEMPTS_MAX: u32 = 3;
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Enough for 300 bench clients plus the loader and checkers.
const CONNECTIONS_MAX: u32 = 400;
/// Rows per `INSERT` when loading, and keys per query when reading back.
const ROWS_PER_STATEMENT_MAX: usize = 10_000;
/// Longest hold TTL sent (ten years); more would overflow an `interval`.
const HOLD_TTL_MS_MAX: u64 = 10 * 365 * 24 * 3_600 * 1_000;
/// Where Debian installs each major version's server programs.
const DEBIAN_POSTGRESQL_DIR: &str = "/usr/lib/postgresql";

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS items (
    sku text NOT NULL,
    warehouse text NOT NULL,
    on_hand bigint NOT NULL,
    reserved bigint NOT NULL,
    PRIMARY KEY (sku, warehouse),
    CHECK (reserved >= 0 AND on_hand >= reserved)
);
CREATE TABLE IF NOT EXISTS holds (
    id text PRIMARY KEY,
    sku text NOT NULL,
    warehouse text NOT NULL,
    qty bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('held', 'confirmed', 'released')),
    expires_at timestamptz NOT NULL
);
";

/// $1 sku, $2 warehouse, $3 qty, $4 id, $5 ttl_ms. One row affected when
/// held; none when refused (not enough available, no such item, or the id
/// already used: a retried hold never reserves twice).
const HOLD_SQL: &str = "
WITH reserved AS (
    UPDATE items SET reserved = reserved + $3
    WHERE sku = $1 AND warehouse = $2 AND on_hand - reserved >= $3
      AND NOT EXISTS (SELECT 1 FROM holds WHERE id = $4)
    RETURNING sku, warehouse
)
INSERT INTO holds (id, sku, warehouse, qty, state, expires_at)
SELECT $4, sku, warehouse, $3, 'held', now() + $5::bigint * interval '1 millisecond' FROM reserved
";

/// $1 id. One row affected when the held hold was confirmed.
const CONFIRM_SQL: &str = "
WITH hold AS (
    UPDATE holds SET state = 'confirmed' WHERE id = $1 AND state = 'held'
    RETURNING sku, warehouse, qty
)
UPDATE items SET on_hand = items.on_hand - hold.qty, reserved = items.reserved - hold.qty
FROM hold WHERE items.sku = hold.sku AND items.warehouse = hold.warehouse
";

/// $1 id. One row affected when the held hold was released.
const RELEASE_SQL: &str = "
WITH hold AS (
    UPDATE holds SET state = 'released' WHERE id = $1 AND state = 'held'
    RETURNING sku, warehouse, qty
)
UPDATE items SET reserved = items.reserved - hold.qty
FROM hold WHERE items.sku = hold.sku AND items.warehouse = hold.warehouse
";

/// $1 sku, $2 warehouse, $3 delta. One row affected when applied.
const ADJUST_SQL: &str = "
UPDATE items SET on_hand = on_hand + $3
WHERE sku = $1 AND warehouse = $2 AND on_hand + $3 >= reserved AND on_hand + $3 >= 0
";

const READ_SQL: &str = "SELECT on_hand, reserved FROM items WHERE sku = $1 AND warehouse = $2";

/// $1 skus, $2 warehouses: one row per key, in order, NULLs when missing.
const READ_MANY_SQL: &str = "
SELECT items.on_hand, items.reserved
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS wanted(sku, warehouse, n)
LEFT JOIN items ON items.sku = wanted.sku AND items.warehouse = wanted.warehouse
ORDER BY wanted.n
";

/// $1 ids: one row per id, in order, NULL when missing.
const HOLD_STATES_SQL: &str = "
SELECT holds.state
FROM unnest($1::text[]) WITH ORDINALITY AS wanted(id, n)
LEFT JOIN holds ON holds.id = wanted.id
ORDER BY wanted.n
";

const LOAD_SQL: &str = "
INSERT INTO items (sku, warehouse, on_hand, reserved)
SELECT sku, warehouse, on_hand, 0 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(sku, warehouse, on_hand)
";

/// A running PostgreSQL server, owned: it is shut down by `stop` and killed
/// if dropped. Its cluster stays in the folder it was started in.
pub struct PostgresPeer {
    child: Child,
    port: u16,
    version: String,
    config: Config,
}

impl PostgresPeer {
    /// Makes a cluster in `dir/data` (unless one is there) and starts it on
    /// 127.0.0.1 and a free port, output in `dir/postgres.log`. Returns once
    /// a connection succeeds and the tables exist, or fails after a bounded
    /// wait.
    pub async fn start(dir: &Path) -> Result<PostgresPeer, StartError> {
        let bin = find_server_bin().ok_or_else(|| {
            StartError::Missing("PostgreSQL server not found; run scripts/install-peers.sh".to_owned())
        })?;
        let owner = server_owner()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| StartError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let dir =
            dir.canonicalize().map_err(|e| StartError::Failed(format!("cannot resolve {}: {e}", dir.display())))?;
        if let Some(owner) = owner {
            give_folder(&dir, owner).map_err(StartError::Failed)?;
        }
        let data = dir.join("data");
        if !data.join("PG_VERSION").is_file() {
            init_cluster(&bin, &dir, &data, owner).await.map_err(StartError::Failed)?;
        }
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            match Self::start_once(&bin, &dir, &data, owner).await {
                Ok(peer) => return Ok(peer),
                Err(e) => last_error = e,
            }
        }
        Err(StartError::Failed(format!("postgres did not start: {last_error}")))
    }

    async fn start_once(bin: &Path, dir: &Path, data: &Path, owner: Option<Owner>) -> Result<PostgresPeer, String> {
        let port = free_loopback_port()?;
        let log_path = dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        let settings = [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            // TCP only: no socket file, whose path length is limited.
            "unix_socket_directories=".to_owned(),
            "fsync=on".to_owned(),
            "synchronous_commit=on".to_owned(),
            "full_page_writes=on".to_owned(),
            format!("max_connections={CONNECTIONS_MAX}"),
            "shared_buffers=256MB".to_owned(),
        ];
        let mut command = Command::new(bin.join("postgres"));
        command.arg("-D").arg(data);
        for setting in &settings {
            command.arg("-c").arg(setting);
        }
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        if let Some(owner) = owner {
            command.uid(owner.uid).gid(owner.gid);
        }
        let mut child = command.spawn().map_err(|e| format!("cannot run postgres: {e}"))?;

        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        let deadline = Instant::now() + Duration::from_millis(STARTUP_WAIT_MS);
        let client = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}: {}", log_tail(&log_path)));
            }
            if let Ok(client) = open_client(&config).await {
                break client;
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(format!("no connection within {STARTUP_WAIT_MS} ms: {}", log_tail(&log_path)));
            }
            tokio::time::sleep(Duration::from_millis(STARTUP_POLL_MS)).await;
        };
        // Another server may have taken the port after our probe.
        let data_directory: String = client
            .query_one("SHOW data_directory", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("SHOW data_directory: {}", error_text(&e)))?;
        if Path::new(&data_directory) != data {
            return Err(format!("port {port} answered by the server of {data_directory}"));
        }
        client.batch_execute(SCHEMA_SQL).await.map_err(|e| format!("creating tables: {}", error_text(&e)))?;
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("SHOW server_version: {}", error_text(&e)))?;
        // "15.13 (Debian 15.13-0+deb12u1)" → "15.13".
        let version = version.split_whitespace().next().unwrap_or("?").to_owned();
        Ok(PostgresPeer { child, port, version, config })
    }

    /// One line for reports, e.g. "PostgreSQL 15.13, synchronous_commit on, port 40123".
    pub fn describe(&self) -> String {
        format!("PostgreSQL {}, synchronous_commit on, port {}", self.version, self.port)
    }

    /// Empties both tables and creates `items` with nothing reserved, in one
    /// transaction of multi-row inserts; then vacuums, analyzes and
    /// checkpoints so the workload does not pay for the load.
    pub async fn load(&self, items: &[ItemSpec]) -> Result<(), String> {
        let mut client = open_client(&self.config).await.map_err(|e| format!("connect: {}", error_text(&e)))?;
        let transaction = client.transaction().await.map_err(|e| format!("BEGIN: {}", error_text(&e)))?;
        transaction
            .batch_execute("TRUNCATE items, holds")
            .await
            .map_err(|e| format!("TRUNCATE: {}", error_text(&e)))?;
        let insert = transaction.prepare(LOAD_SQL).await.map_err(|e| format!("prepare: {}", error_text(&e)))?;
        for chunk in items.chunks(ROWS_PER_STATEMENT_MAX) {
            let skus: Vec<&str> = chunk.iter().map(|item| item.sku.as_str()).collect();
            let warehouses: Vec<&str> = chunk.iter().map(|item| item.warehouse.as_str()).collect();
            let on_hands = chunk
                .iter()
                .map(|item| i64::try_from(item.on_hand))
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|_| "on_hand beyond a bigint".to_owned())?;
            transaction
                .execute(&insert, &[&skus, &warehouses, &on_hands])
                .await
                .map_err(|e| format!("loading items: {}", error_text(&e)))?;
        }
        transaction.commit().await.map_err(|e| format!("COMMIT: {}", error_text(&e)))?;
        // One statement each: VACUUM may not run inside a transaction.
        for statement in ["VACUUM ANALYZE items", "VACUUM ANALYZE holds", "CHECKPOINT"] {
            client.batch_execute(statement).await.map_err(|e| format!("{statement}: {}", error_text(&e)))?;
        }
        Ok(())
    }

    /// Opens one connection with every statement prepared.
    pub async fn connect(&self) -> Result<PostgresConn, String> {
        let mut conn = PostgresConn { config: self.config.clone(), session: None };
        conn.session().await?;
        Ok(conn)
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are cut off,
    /// a checkpoint is written) and waits for it to exit, killing it after a
    /// bounded wait.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // std and tokio can only send SIGKILL; `kill` sends any signal.
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let waited = tokio::time::timeout(Duration::from_millis(SHUTDOWN_WAIT_MS), self.child.wait()).await;
        if !matches!(waited, Ok(Ok(_))) {
            let _ = self.child.kill().await;
        }
    }
}

/// The user and group ids a process runs as.
#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// Who runs the server: `None` for ourselves, the `postgres` user when we
/// are root (PostgreSQL refuses to run as root).
fn server_owner() -> Result<Option<Owner>, StartError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\tsaved\tfs"
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if effective_uid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    // "postgres:x:uid:gid:..."
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .and_then(|fields| Some(Owner { uid: fields.get(2)?.parse().ok()?, gid: fields.get(3)?.parse().ok()? }))
        .map(Some)
        .ok_or_else(|| {
            StartError::Failed(
                "running as root, and there is no postgres user to run PostgreSQL as; run scripts/install-peers.sh"
                    .to_owned(),
            )
        })
}

/// Gives `dir` to `owner` and lets everyone pass through (not list) the
/// folders above it, so the server can reach its cluster.
fn give_folder(dir: &Path, owner: Owner) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid))
        .map_err(|e| format!("cannot give {} to the postgres user: {e}", dir.display()))?;
    for ancestor in dir.ancestors().skip(1) {
        let metadata =
            std::fs::metadata(ancestor).map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        let mode = metadata.mode();
        if metadata.uid() != owner.uid && mode & 0o001 == 0 {
            std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode((mode & 0o7777) | 0o001))
                .map_err(|e| format!("cannot open {} to the postgres user: {e}", ancestor.display()))?;
        }
    }
    Ok(())
}

/// Runs `initdb`: trust authentication (loopback only), superuser
/// `postgres`, C locale. `--no-sync` skips flushing the fresh cluster, which
/// only matters if the machine loses power before the run.
async fn init_cluster(bin: &Path, dir: &Path, data: &Path, owner: Option<Owner>) -> Result<(), String> {
    let mut command = Command::new(bin.join("initdb"));
    command
        .arg("-D")
        .arg(data)
        .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(owner) = owner {
        command.uid(owner.uid).gid(owner.gid);
    }
    let output = command.output().await.map_err(|e| format!("cannot run initdb: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("initdb failed ({}): {}", output.status, stderr.trim()))
}

/// The server programs' folder: the newest under `/usr/lib/postgresql`, else
/// the folder of `initdb` on `PATH`.
fn find_server_bin() -> Option<PathBuf> {
    let has_server = |bin: &Path| bin.join("initdb").is_file() && bin.join("postgres").is_file();
    let mut newest: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir(DEBIAN_POSTGRESQL_DIR) {
        for entry in entries.flatten() {
            let Some(major) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_server(&bin) && newest.as_ref().is_none_or(|(best, _)| major > *best) {
                newest = Some((major, bin));
            }
        }
    }
    newest.map(|(_, bin)| bin).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find(|dir| has_server(dir))
    })
}

/// A connection whose driver runs on its own task.
async fn open_client(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The error reaches the client too, as its next call failing.
        let _ = connection.await;
    });
    Ok(client)
}

/// An error with its cause: tokio-postgres shows a server error as just "db error".
fn error_text(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// A loopback port nobody listens on right now.
fn free_loopback_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    const LINES_MAX: usize = 5;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES_MAX)..].join(" | ")
}

/// Awaits every future, polling them in order so each sends its request
/// before the next: tokio-postgres then pipelines them on the connection in
/// that order. Outputs are in the same order.
async fn join_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_ready = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => all_ready = false,
                }
            }
        }
        if all_ready { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// One client's connection, reopened on the next call after it breaks.
pub struct PostgresConn {
    config: Config,
    session: Option<Session>,
}

/// An open connection and its prepared statements.
struct Session {
    client: Client,
    hold: Statement,
    confirm: Statement,
    release: Statement,
    adjust: Statement,
    read: Statement,
    read_many: Statement,
    hold_states: Statement,
    begin: Statement,
    commit: Statement,
}

impl Session {
    async fn open(config: &Config) -> Result<Session, String> {
        let client = open_client(config).await.map_err(|e| format!("connect: {}", error_text(&e)))?;
        let prepared = {
            let texts = [
                HOLD_SQL,
                CONFIRM_SQL,
                RELEASE_SQL,
                ADJUST_SQL,
                READ_SQL,
                READ_MANY_SQL,
                HOLD_STATES_SQL,
                "BEGIN",
                "COMMIT",
            ];
            let mut prepared = Vec::with_capacity(texts.len());
            for text in texts {
                prepared.push(client.prepare(text).await.map_err(|e| format!("prepare: {}", error_text(&e)))?);
            }
            prepared
        };
        let [hold, confirm, release, adjust, read, read_many, hold_states, begin, commit] =
            <[Statement; 9]>::try_from(prepared).map_err(|_| "prepared the wrong number of statements".to_owned())?;
        Ok(Session { client, hold, confirm, release, adjust, read, read_many, hold_states, begin, commit })
    }
}

/// Parameters of one hold statement, converted to SQL types.
struct HoldParams {
    qty: i64,
    ttl_ms: i64,
}

impl HoldParams {
    /// `None` when `qty` is beyond a bigint: no stock could satisfy it.
    fn new(hold: &HoldRequest) -> Option<HoldParams> {
        let qty = i64::try_from(hold.qty).ok()?;
        let ttl_ms = i64::try_from(hold.ttl_ms.min(HOLD_TTL_MS_MAX)).ok()?;
        Some(HoldParams { qty, ttl_ms })
    }
}

impl PostgresConn {
    /// The open session, or a new one.
    async fn session(&mut self) -> Result<&Session, String> {
        if self.session.as_ref().is_some_and(|session| session.client.is_closed()) {
            self.session = None;
        }
        if self.session.is_none() {
            self.session = Some(Session::open(&self.config).await?);
        }
        self.session.as_ref().ok_or_else(|| "no connection".to_owned())
    }

    /// Describes `error`, dropping the session if the connection broke.
    fn note_error(&mut self, error: &tokio_postgres::Error) -> String {
        if self.session.as_ref().is_some_and(|session| session.client.is_closed()) {
            self.session = None;
        }
        error_text(error)
    }

    /// Runs a confirm, release or adjustment: one row changed means done.
    async fn change(&mut self, pick: fn(&Session) -> &Statement, params: &[&(dyn ToSql + Sync)]) -> ChangeResult {
        let session = match self.session().await {
            Ok(session) => session,
            Err(e) => return ChangeResult::Unknown(e),
        };
        match session.client.execute(pick(session), params).await {
            Ok(1) => ChangeResult::Done,
            Ok(0) => ChangeResult::Refused,
            Ok(rows) => ChangeResult::Unknown(format!("{rows} rows changed")),
            Err(e) => ChangeResult::Unknown(self.note_error(&e)),
        }
    }
}

impl Conn for PostgresConn {
    async fn hold(&mut self, hold: &HoldRequest) -> HoldResult {
        let Some(params) = HoldParams::new(hold) else { return HoldResult::Refused };
        let session = match self.session().await {
            Ok(session) => session,
            Err(e) => return HoldResult::Unknown(e),
        };
        let sql_params: [&(dyn ToSql + Sync); 5] = [&hold.sku, &hold.warehouse, &params.qty, &hold.id, &params.ttl_ms];
        match session.client.execute(&session.hold, &sql_params).await {
            Ok(1) => HoldResult::Held(hold.id.clone()),
            Ok(0) => HoldResult::Refused,
            Ok(rows) => HoldResult::Unknown(format!("{rows} rows inserted")),
            Err(e) => HoldResult::Unknown(self.note_error(&e)),
        }
    }

    async fn hold_batch(&mut self, holds: &[HoldRequest]) -> Vec<HoldResult> {
        if holds.is_empty() {
            return Vec::new();
        }
        let session = match self.session().await {
            Ok(session) => session,
            Err(e) => return vec![HoldResult::Unknown(e); holds.len()],
        };
        let params: Vec<Option<HoldParams>> = holds.iter().map(HoldParams::new).collect();
        // Items are locked in one order in every batch, so that concurrent
        // batches never wait on each other in a cycle (a deadlock would cost
        // a second and abort a whole batch).
        let mut order: Vec<usize> = (0..holds.len()).filter(|&i| params[i].is_some()).collect();
        order.sort_by(|&a, &b| (&holds[a].sku, &holds[a].warehouse).cmp(&(&holds[b].sku, &holds[b].warehouse)));
        let sql_params: Vec<[&(dyn ToSql + Sync); 5]> = order
            .iter()
            .filter_map(|&i| {
                let (hold, params) = (&holds[i], params[i].as_ref()?);
                Some([&hold.sku as &(dyn ToSql + Sync), &hold.warehouse, &params.qty, &hold.id, &params.ttl_ms])
            })
            .collect();

        // BEGIN, the holds and COMMIT go out together: one round trip, one fsync.
        let mut requests = Vec::with_capacity(sql_params.len() + 2);
        requests.push(session.client.execute(&session.begin, &[]));
        for hold_params in &sql_params {
            requests.push(session.client.execute(&session.hold, hold_params));
        }
        requests.push(session.client.execute(&session.commit, &[]));
        let replies = join_in_order(requests).await;

        // After any error the transaction was rolled back (or its fate is
        // unknown, if the connection broke): no hold of the batch stands.
        if let Some(error) = replies.iter().find_map(|reply| reply.as_ref().err()) {
            let text = self.note_error(error);
            return vec![HoldResult::Unknown(text); holds.len()];
        }
        let mut results = vec![HoldResult::Refused; holds.len()];
        let hold_replies = replies.iter().skip(1).take(order.len());
        for (&i, reply) in order.iter().zip(hold_replies) {
            results[i] = match reply {
                Ok(1) => HoldResult::Held(holds[i].id.clone()),
                Ok(0) => HoldResult::Refused,
                Ok(rows) => HoldResult::Unknown(format!("{rows} rows inserted")),
                Err(e) => HoldResult::Unknown(error_text(e)),
            };
        }
        results
    }

    async fn confirm(&mut self, id: &str) -> ChangeResult {
        self.change(|session| &session.confirm, &[&id]).await
    }

    async fn release(&mut self, id: &str) -> ChangeResult {
        self.change(|session| &session.release, &[&id]).await
    }

    async fn adjust(&mut self, sku: &str, warehouse: &str, delta: i64) -> ChangeResult {
        self.change(|session| &session.adjust, &[&sku, &warehouse, &delta]).await
    }

    async fn read(&mut self, sku: &str, warehouse: &str) -> Result<ItemState, String> {
        let session = self.session().await?;
        let row = match session.client.query_opt(&session.read, &[&sku, &warehouse]).await {
            Ok(row) => row.ok_or_else(|| format!("no item {sku} in {warehouse}"))?,
            Err(e) => return Err(self.note_error(&e)),
        };
        let on_hand: i64 = row.try_get(0).map_err(|e| error_text(&e))?;
        let reserved: i64 = row.try_get(1).map_err(|e| error_text(&e))?;
        item_state(on_hand, reserved)
    }

    async fn read_many(&mut self, items: &[(String, String)]) -> Result<Vec<ItemState>, String> {
        let mut states = Vec::with_capacity(items.len());
        for chunk in items.chunks(ROWS_PER_STATEMENT_MAX) {
            let skus: Vec<&str> = chunk.iter().map(|(sku, _)| sku.as_str()).collect();
            let warehouses: Vec<&str> = chunk.iter().map(|(_, warehouse)| warehouse.as_str()).collect();
            let session = self.session().await?;
            let rows = match session.client.query(&session.read_many, &[&skus, &warehouses]).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.note_error(&e)),
            };
            if rows.len() != chunk.len() {
                return Err(format!("{} rows for {} items", rows.len(), chunk.len()));
            }
            for ((sku, warehouse), row) in chunk.iter().zip(rows) {
                let on_hand: Option<i64> = row.try_get(0).map_err(|e| error_text(&e))?;
                let reserved: Option<i64> = row.try_get(1).map_err(|e| error_text(&e))?;
                match (on_hand, reserved) {
                    (Some(on_hand), Some(reserved)) => states.push(item_state(on_hand, reserved)?),
                    _ => return Err(format!("no item {sku} in {warehouse}")),
                }
            }
        }
        Ok(states)
    }

    async fn hold_states(&mut self, ids: &[String]) -> Result<Vec<HoldState>, String> {
        let mut states = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT_MAX) {
            let session = self.session().await?;
            let rows = match session.client.query(&session.hold_states, &[&chunk]).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.note_error(&e)),
            };
            if rows.len() != chunk.len() {
                return Err(format!("{} rows for {} holds", rows.len(), chunk.len()));
            }
            for (id, row) in chunk.iter().zip(rows) {
                let state: Option<String> = row.try_get(0).map_err(|e| error_text(&e))?;
                states.push(match state.as_deref() {
                    None => HoldState::Missing,
                    Some("held") => HoldState::Held,
                    Some("confirmed") => HoldState::Confirmed,
                    Some("released") => HoldState::Released,
                    Some(other) => return Err(format!("hold {id} has unknown state {other:?}")),
                });
            }
        }
        Ok(states)
    }
}

/// Levels from the table's bigints (which its check keeps non-negative).
fn item_state(on_hand: i64, reserved: i64) -> Result<ItemState, String> {
    match (u64::try_from(on_hand), u64::try_from(reserved)) {
        (Ok(on_hand), Ok(reserved)) => Ok(ItemState { on_hand, reserved }),
        _ => Err(format!("negative levels: on_hand {on_hand}, reserved {reserved}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::tests_support::{hold, item, key};

    /// Child processes of `pid` (the server's checkpointer, WAL writer, backends…).
    fn children(pid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|child| {
                let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
                // "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            })
            .collect()
    }

    async fn start(dir: &Path) -> Option<PostgresPeer> {
        match PostgresPeer::start(dir).await {
            Ok(peer) => Some(peer),
            Err(StartError::Missing(why)) => {
                eprintln!("skipped: {why}");
                None
            }
            Err(e) => panic!("postgres did not start: {e}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn holds_confirms_releases_and_adjusts_keep_the_levels_right() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let started = Instant::now();
        let Some(peer) = start(&dir.path().join("postgres")).await else { return };
        eprintln!("{} started in {:?}", peer.describe(), started.elapsed());
        assert!(peer.describe().starts_with("PostgreSQL "), "{}", peer.describe());
        peer.load(&[item("a", 5), item("b", 10)]).await.unwrap_or_else(|e| panic!("load: {e}"));
        let mut conn = peer.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));

        // Holds succeed until the stock is exhausted, then are refused.
        assert_eq!(conn.hold(&hold("h1", "a", 2)).await, HoldResult::Held("h1".to_owned()));
        assert_eq!(conn.hold(&hold("h2", "a", 3)).await, HoldResult::Held("h2".to_owned()));
        assert_eq!(conn.hold(&hold("h3", "a", 1)).await, HoldResult::Refused);
        assert_eq!(conn.hold(&hold("h1", "b", 1)).await, HoldResult::Refused, "a used id never reserves again");
        assert_eq!(conn.hold(&hold("h9", "nope", 1)).await, HoldResult::Refused);
        assert_eq!(conn.hold(&hold("h8", "a", u64::MAX)).await, HoldResult::Refused);
        assert_eq!(conn.read("a", "w1").await, Ok(ItemState { on_hand: 5, reserved: 5 }));

        // Confirm sells, release frees; neither applies twice.
        assert_eq!(conn.confirm("h1").await, ChangeResult::Done);
        assert_eq!(conn.read("a", "w1").await, Ok(ItemState { on_hand: 3, reserved: 3 }));
        assert_eq!(conn.confirm("h1").await, ChangeResult::Refused);
        assert_eq!(conn.release("h1").await, ChangeResult::Refused);
        assert_eq!(conn.release("h2").await, ChangeResult::Done);
        assert_eq!(conn.read("a", "w1").await, Ok(ItemState { on_hand: 3, reserved: 0 }));
        assert_eq!(conn.confirm("h2").await, ChangeResult::Refused);
        assert_eq!(conn.confirm("never").await, ChangeResult::Refused);

        // Adjustments may not take on_hand below reserved.
        assert_eq!(conn.hold(&hold("h5", "b", 4)).await, HoldResult::Held("h5".to_owned()));
        assert_eq!(conn.adjust("b", "w1", -7).await, ChangeResult::Refused);
        assert_eq!(conn.adjust("b", "w1", -6).await, ChangeResult::Done);
        assert_eq!(conn.adjust("b", "w1", 7).await, ChangeResult::Done);
        assert_eq!(conn.adjust("nope", "w1", 7).await, ChangeResult::Refused);
        assert_eq!(conn.read("b", "w1").await, Ok(ItemState { on_hand: 11, reserved: 4 }));
        assert!(conn.read("nope", "w1").await.is_err());

        // A batch answers each hold in its own order, whatever order it runs in.
        let batch = [hold("b1", "b", 7), hold("b2", "a", 2), hold("b3", "a", 2), hold("b4", "b", 1)];
        assert_eq!(
            conn.hold_batch(&batch).await,
            vec![
                HoldResult::Held("b1".to_owned()),
                HoldResult::Held("b2".to_owned()),
                HoldResult::Refused,
                HoldResult::Refused,
            ]
        );
        assert_eq!(conn.hold_batch(&[]).await, Vec::new());

        // Read-backs agree with what was acknowledged, on another connection too.
        let mut other = peer.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));
        let levels = other.read_many(&[key("a"), key("b")]).await.unwrap_or_else(|e| panic!("read_many: {e}"));
        assert_eq!(levels, vec![ItemState { on_hand: 3, reserved: 2 }, ItemState { on_hand: 11, reserved: 11 }]);
        assert!(other.read_many(&[key("nope")]).await.is_err());
        let ids: Vec<String> = ["h1", "h2", "h3", "h5", "b1", "b3"].map(str::to_owned).to_vec();
        let states = other.hold_states(&ids).await.unwrap_or_else(|e| panic!("hold_states: {e}"));
        use HoldState::*;
        assert_eq!(states, vec![Confirmed, Released, Missing, Held, Held, Missing]);

        // A connection the server cut is reopened on the next call (or the
        // one after, if the cut was not noticed yet: that one is unknown).
        let admin = open_client(&peer.config).await.unwrap_or_else(|e| panic!("connect: {e}"));
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap_or_else(|e| panic!("terminate: {}", error_text(&e)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cut = [hold("c1", "b", 1), hold("c2", "a", 1)];
        let mut batch = conn.hold_batch(&cut).await;
        if batch.iter().all(|r| matches!(r, HoldResult::Unknown(_))) {
            batch = conn.hold_batch(&cut).await;
        }
        assert_eq!(batch, vec![HoldResult::Refused, HoldResult::Held("c2".to_owned())]);
        assert_eq!(conn.read("a", "w1").await, Ok(ItemState { on_hand: 3, reserved: 3 }));

        // Loading again starts afresh.
        peer.load(&[item("a", 1)]).await.unwrap_or_else(|e| panic!("reload: {e}"));
        assert_eq!(conn.hold_states(&ids[..1]).await, Ok(vec![Missing]));
        assert_eq!(conn.read_many(&[key("a")]).await, Ok(vec![ItemState { on_hand: 1, reserved: 0 }]));

        let pid = peer.child.id().unwrap_or_else(|| panic!("no pid"));
        let workers = children(pid);
        assert!(!workers.is_empty(), "postgres runs helper processes");
        let stopping = Instant::now();
        peer.stop().await;
        eprintln!("stopped in {:?}", stopping.elapsed());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "postgres {pid} still running");
        for worker in workers {
            assert!(!Path::new(&format!("/proc/{worker}")).exists(), "postgres child {worker} still running");
        }
        // A call after the server is gone answers, rather than panicking or hanging.
        assert!(matches!(conn.hold(&hold("z1", "a", 1)).await, HoldResult::Unknown(_)));
        let batch = conn.hold_batch(&[hold("z2", "a", 1), hold("z3", "a", 1)]).await;
        assert!(batch.iter().all(|r| matches!(r, HoldResult::Unknown(_))), "{batch:?}");
        assert!(matches!(conn.confirm("b1").await, ChangeResult::Unknown(_)));
    }
}

//! Redis as a peer: a `redis-server` child on a loopback port of its own, its
//! append-only file in a folder of the run, and one Lua script per operation
//! so each check-and-change is atomic.
//!
//! The model: an item is the hash `item:<sku>:<warehouse>` with `on_hand` and
//! `reserved`; a hold is the hash `hold:<id>` with `sku`, `warehouse`, `item`
//! (the item's key), `qty`, `state` (`held`, `confirmed`, `released`) and
//! `expires_at` (Unix ms). SKUs and warehouses are taken to contain no `:`,
//! which keeps the item keys distinct.
//!
//! Redis has no timers that could run a script, so holds never expire here:
//! `expires_at` is stored but nothing acts on it. A real deployment needs a
//! sweeper that releases expired holds; the bench keeps TTLs longer than a
//! workload instead.
//!
//! Durability: with `appendfsync always` Redis writes and fsyncs the AOF
//! before it sends the replies of an event-loop turn, so an acknowledged
//! script is on disk; `everysec` may lose the last second.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, RedisResult, Script};
use tokio::process::{Child, Command};

use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState, StartError};

/// How long `start` waits for a new server to answer `PING`.
const STARTUP_WAIT_MS: u64 = 10_000;
/// How long `stop` waits for the server to exit before killing it.
const SHUTDOWN_WAIT_MS: u64 = 10_000;
/// How often `start` retries `PING` while the server comes up.
const STARTUP_POLL_MS: u64 = 25;
/// Start attempts, each on a fresh port (another process may take the free
/// port between our probe and the server's bind).
const START_ATTEMPTS_MAX: u32 = 3;
/// Commands per pipeline when loading or reading back.
const PIPELINE_CHUNK_MAX: usize = 10_000;
/// A reply slower than this is reported as unknown rather than awaited forever.
const RESPONSE_TIMEOUT_MS: u64 = 30_000;
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Bound on the hold-id → item-key cache of one connection (see
/// `RedisConn::item_keys`): the oldest entries make way, and a confirm or
/// release of a hold no longer cached looks its item up first.
const ITEM_KEY_CACHE_MAX: usize = 8_192;

/// Places a hold. KEYS: item, hold. ARGV: qty, sku, warehouse, expires_at.
/// Returns 1 when held, 0 when refused (no such item, not enough available,
/// or the hold id already used: a retried hold never reserves twice).
const HOLD_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local levels = redis.call('HMGET', KEYS[1], 'on_hand', 'reserved')
if not levels[1] then return 0 end
if tonumber(levels[1]) - tonumber(levels[2]) < tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
redis.call('HSET', KEYS[2], 'sku', ARGV[2], 'warehouse', ARGV[3], 'item', KEYS[1],
  'qty', ARGV[1], 'state', 'held', 'expires_at', ARGV[4])
return 1
";

/// Confirms a held hold. KEYS: hold, item. Returns 1 when done, 0 when the
/// hold is missing or not held, -1 when KEYS[2] is not the hold's item.
const CONFIRM_LUA: &str = r"
local hold = redis.call('HMGET', KEYS[1], 'state', 'item', 'qty')
if not hold[1] then return 0 end
if hold[2] ~= KEYS[2] then return -1 end
if hold[1] ~= 'held' then return 0 end
redis.call('HINCRBY', KEYS[2], 'on_hand', '-' .. hold[3])
redis.call('HINCRBY', KEYS[2], 'reserved', '-' .. hold[3])
redis.call('HSET', KEYS[1], 'state', 'confirmed')
return 1
";

/// Releases a held hold. KEYS and replies as for confirm.
const RELEASE_LUA: &str = r"
local hold = redis.call('HMGET', KEYS[1], 'state', 'item', 'qty')
if not hold[1] then return 0 end
if hold[2] ~= KEYS[2] then return -1 end
if hold[1] ~= 'held' then return 0 end
redis.call('HINCRBY', KEYS[2], 'reserved', '-' .. hold[3])
redis.call('HSET', KEYS[1], 'state', 'released')
return 1
";

/// Adds a signed delta to on_hand. KEYS: item. ARGV: delta. Returns 1 when
/// done, 0 when the item is missing or on_hand would fall below reserved or 0.
const ADJUST_LUA: &str = r"
local levels = redis.call('HMGET', KEYS[1], 'on_hand', 'reserved')
if not levels[1] then return 0 end
local on_hand = tonumber(levels[1]) + tonumber(ARGV[1])
if on_hand < 0 or on_hand < tonumber(levels[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'on_hand', ARGV[1])
return 1
";

/// Script reply: the change was made.
const REPLY_DONE: i64 = 1;
/// Script reply: the caller passed the wrong item key for the hold.
const REPLY_WRONG_ITEM: i64 = -1;

/// How often the AOF is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before every reply: an acknowledged change is on disk.
    Always,
    /// Once a second: a crash may lose the last second of acknowledged changes.
    EverySec,
}

impl Fsync {
    fn config_value(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
        }
    }
}

/// A running `redis-server`, owned: it is shut down by `stop` and killed if
/// dropped. Its data stays in the folder it was started in.
pub struct RedisPeer {
    child: Child,
    port: u16,
    fsync: Fsync,
    version: String,
    client: Client,
}

impl RedisPeer {
    /// Starts `redis-server` on 127.0.0.1 and a free port with its data in
    /// `dir` (created if missing): AOF on with `appendfsync` as given, RDB
    /// snapshots off, output in `dir/redis.log`. Returns once it answers
    /// `PING`, or fails after a bounded wait.
    pub async fn start(fsync: Fsync, dir: &Path) -> Result<RedisPeer, StartError> {
        let program = find_program("redis-server")
            .ok_or_else(|| StartError::Missing("redis-server not found; run scripts/install-peers.sh".to_owned()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| StartError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            match Self::start_once(&program, fsync, dir).await {
                Ok(peer) => return Ok(peer),
                Err(e) => last_error = e,
            }
        }
        Err(StartError::Failed(format!("redis-server did not start: {last_error}")))
    }

    async fn start_once(program: &Path, fsync: Fsync, dir: &Path) -> Result<RedisPeer, String> {
        let port = free_loopback_port()?;
        let log_path = dir.join("redis.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        let port_arg = port.to_string();
        let mut child = Command::new(program)
            .args(["--port", &port_arg, "--bind", "127.0.0.1", "--protected-mode", "no", "--daemonize", "no"])
            .args(["--dir", "."])
            .args(["--appendonly", "yes", "--appendfsync", fsync.config_value()])
            .args(["--save", ""])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;

        let client = Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_millis(STARTUP_WAIT_MS);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}: {}", log_tail(&log_path)));
            }
            if let Ok(mut conn) = connect_client(&client).await {
                let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    let info: String = redis::cmd("INFO")
                        .arg("server")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| format!("INFO failed: {e}"))?;
                    let field = |name: &str| {
                        info.lines().find_map(|line| line.strip_prefix(name)).map(str::trim).unwrap_or("?").to_owned()
                    };
                    // Another server may have taken the port after our probe.
                    if child.id().map(|pid| pid.to_string()) != Some(field("process_id:")) {
                        return Err(format!("port {port} answered by another redis-server"));
                    }
                    let version = field("redis_version:");
                    return Ok(RedisPeer { child, port, fsync, version, client });
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(format!("no answer to PING within {STARTUP_WAIT_MS} ms: {}", log_tail(&log_path)));
            }
            tokio::time::sleep(Duration::from_millis(STARTUP_POLL_MS)).await;
        }
    }

    /// One line for reports, e.g. "Redis 7.0.15, appendfsync always, port 40123".
    pub fn describe(&self) -> String {
        format!("Redis {}, appendfsync {}, port {}", self.version, self.fsync.config_value(), self.port)
    }

    /// Wipes the database and creates `items` with nothing reserved, in
    /// pipelines of `PIPELINE_CHUNK_MAX` commands. Each pipeline is one
    /// `MULTI`/`EXEC` so it costs one AOF fsync, not one per read buffer.
    pub async fn load(&self, items: &[ItemSpec]) -> Result<(), String> {
        let mut conn = connect_client(&self.client).await.map_err(|e| format!("connect: {e}"))?;
        redis::cmd("FLUSHALL").arg("SYNC").query_async::<()>(&mut conn).await.map_err(|e| format!("FLUSHALL: {e}"))?;
        for chunk in items.chunks(PIPELINE_CHUNK_MAX) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for item in chunk {
                pipe.cmd("HSET")
                    .arg(item_key(&item.sku, &item.warehouse))
                    .arg("on_hand")
                    .arg(item.on_hand)
                    .arg("reserved")
                    .arg(0)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| format!("loading items: {e}"))?;
        }
        Ok(())
    }

    /// Opens one connection with the scripts loaded.
    pub async fn connect(&self) -> Result<RedisConn, String> {
        let mut conn = RedisConn {
            client: self.client.clone(),
            connection: None,
            scripts: Scripts::new(),
            item_keys: HashMap::new(),
            item_keys_order: VecDeque::new(),
        };
        conn.connection().await?;
        Ok(conn)
    }

    /// Shuts the server down (`SHUTDOWN NOSAVE`; the AOF is already on disk)
    /// and waits for it to exit, killing it after a bounded wait.
    pub async fn stop(mut self) {
        if let Ok(mut conn) = connect_client(&self.client).await {
            // The server closes the connection instead of replying.
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async::<()>(&mut conn).await;
        }
        let waited = tokio::time::timeout(Duration::from_millis(SHUTDOWN_WAIT_MS), self.child.wait()).await;
        if !matches!(waited, Ok(Ok(_))) {
            let _ = self.child.kill().await;
        }
    }
}

/// The four scripts, whose SHA1s are sent with `EVALSHA`.
struct Scripts {
    hold: Script,
    confirm: Script,
    release: Script,
    adjust: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            hold: Script::new(HOLD_LUA),
            confirm: Script::new(CONFIRM_LUA),
            release: Script::new(RELEASE_LUA),
            adjust: Script::new(ADJUST_LUA),
        }
    }

    fn all(&self) -> [&Script; 4] {
        [&self.hold, &self.confirm, &self.release, &self.adjust]
    }

    fn get(&self, kind: ScriptKind) -> &Script {
        match kind {
            ScriptKind::Hold => &self.hold,
            ScriptKind::Confirm => &self.confirm,
            ScriptKind::Release => &self.release,
            ScriptKind::Adjust => &self.adjust,
        }
    }
}

/// Which script to run.
#[derive(Clone, Copy)]
enum ScriptKind {
    Hold,
    Confirm,
    Release,
    Adjust,
}

/// One client's connection: a single TCP connection, reopened on the next
/// call after it fails.
pub struct RedisConn {
    client: Client,
    connection: Option<MultiplexedConnection>,
    scripts: Scripts,
    /// The item key of each hold this connection placed and has not yet
    /// confirmed or released. Confirm and release scripts must be given the
    /// item's key in KEYS (so Redis knows every key a script touches), but the
    /// caller names only the hold; this saves reading the hold first. The
    /// scripts check the key, so a stale entry costs a retry, never a wrong
    /// change.
    item_keys: HashMap<String, String>,
    /// Ids in `item_keys` (and some since removed), oldest first, to evict by.
    item_keys_order: VecDeque<String>,
}

impl RedisConn {
    /// The open connection, or a new one with the scripts loaded.
    async fn connection(&mut self) -> Result<MultiplexedConnection, String> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let mut connection = connect_client(&self.client).await.map_err(|e| format!("connect: {e}"))?;
        load_scripts(&self.scripts, &mut connection).await.map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Loads the scripts again after the server answered NOSCRIPT.
    async fn reload_scripts(&mut self) -> Result<(), String> {
        let mut connection = self.connection().await?;
        match load_scripts(&self.scripts, &mut connection).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.note_error(&e)),
        }
    }

    /// Drops the connection after an error that may have broken it.
    fn note_error(&mut self, error: &RedisError) -> String {
        if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() || error.is_unrecoverable_error()
        {
            self.connection = None;
        }
        error.to_string()
    }

    /// Runs one script (reloading the scripts if the server lost them).
    async fn run(&mut self, script: ScriptKind, keys: &[&str], args: &[&[u8]]) -> Result<i64, String> {
        let mut connection = self.connection().await?;
        let script = self.scripts.get(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        match invocation.invoke_async(&mut connection).await {
            Ok(reply) => Ok(reply),
            Err(e) => Err(self.note_error(&e)),
        }
    }

    /// The item key of hold `id`: from the cache, else read from the hold
    /// (`None` when there is no such hold).
    async fn hold_item_key(&mut self, id: &str, refresh: bool) -> Result<Option<String>, String> {
        if !refresh && let Some(key) = self.item_keys.get(id) {
            return Ok(Some(key.clone()));
        }
        let mut connection = self.connection().await?;
        let key: RedisResult<Option<String>> =
            redis::cmd("HGET").arg(hold_key(id)).arg("item").query_async(&mut connection).await;
        key.map_err(|e| self.note_error(&e))
    }

    /// Confirms or releases hold `id` with `script`.
    async fn finish_hold(&mut self, script: ScriptKind, id: &str) -> ChangeResult {
        let hold = hold_key(id);
        // Once with the cached item key, and once more with the hold's own if
        // the script says the cached one was wrong.
        for refresh in [false, true] {
            let item = match self.hold_item_key(id, refresh).await {
                Ok(Some(item)) => item,
                Ok(None) => return ChangeResult::Refused,
                Err(e) => return ChangeResult::Unknown(e),
            };
            match self.run(script, &[&hold, &item], &[]).await {
                Ok(REPLY_DONE) => {
                    self.item_keys.remove(id);
                    return ChangeResult::Done;
                }
                Ok(REPLY_WRONG_ITEM) => continue,
                Ok(_) => {
                    self.item_keys.remove(id);
                    return ChangeResult::Refused;
                }
                Err(e) => return ChangeResult::Unknown(e),
            }
        }
        ChangeResult::Unknown(format!("hold {id} names an item that does not match its key"))
    }

    fn remember_item_key(&mut self, id: &str, item: String) {
        if self.item_keys_order.len() >= ITEM_KEY_CACHE_MAX
            && let Some(oldest) = self.item_keys_order.pop_front()
        {
            self.item_keys.remove(&oldest);
        }
        self.item_keys_order.push_back(id.to_owned());
        self.item_keys.insert(id.to_owned(), item);
        debug_assert!(self.item_keys.len() <= self.item_keys_order.len());
    }

    /// Sends `holds` as one pipeline of `EVALSHA`; one reply each, `Err` for
    /// a failed command (the pipeline as a whole failing is the outer `Err`).
    async fn hold_pipeline(&mut self, holds: &[&HoldRequest]) -> Result<Vec<RedisResult<i64>>, String> {
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for hold in holds {
            pipe.add_command(hold_command(&self.scripts.hold, hold));
        }
        match pipe.query_async(&mut connection).await {
            Ok(replies) => Ok(replies),
            Err(e) => Err(self.note_error(&e)),
        }
    }
}

impl Conn for RedisConn {
    async fn hold(&mut self, hold: &HoldRequest) -> HoldResult {
        let item = item_key(&hold.sku, &hold.warehouse);
        let args = hold_args(hold);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match self.run(ScriptKind::Hold, &[&item, &hold_key(&hold.id)], &args).await {
            Ok(REPLY_DONE) => {
                self.remember_item_key(&hold.id, item);
                HoldResult::Held(hold.id.clone())
            }
            Ok(_) => HoldResult::Refused,
            Err(e) => HoldResult::Unknown(e),
        }
    }

    async fn hold_batch(&mut self, holds: &[HoldRequest]) -> Vec<HoldResult> {
        if holds.is_empty() {
            return Vec::new();
        }
        let all: Vec<&HoldRequest> = holds.iter().collect();
        let replies = match self.hold_pipeline(&all).await {
            Ok(replies) => replies,
            Err(e) => return vec![HoldResult::Unknown(e); holds.len()],
        };
        // A command that met NOSCRIPT did not run: load the scripts and send
        // those again.
        let unloaded: Vec<usize> =
            replies.iter().enumerate().filter(|(_, r)| is_no_script(r)).map(|(i, _)| i).collect();
        let mut replies: Vec<Result<i64, String>> = replies.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        if !unloaded.is_empty() {
            let again: Vec<&HoldRequest> = unloaded.iter().map(|&i| &holds[i]).collect();
            match self.reload_scripts().await {
                Ok(()) => match self.hold_pipeline(&again).await {
                    Ok(again) => {
                        for (&i, reply) in unloaded.iter().zip(again) {
                            replies[i] = reply.map_err(|e| e.to_string());
                        }
                    }
                    Err(e) => unloaded.iter().for_each(|&i| replies[i] = Err(e.clone())),
                },
                Err(e) => unloaded.iter().for_each(|&i| replies[i] = Err(e.clone())),
            }
        }
        let mut results = Vec::with_capacity(holds.len());
        for (hold, reply) in holds.iter().zip(replies) {
            results.push(match reply {
                Ok(REPLY_DONE) => {
                    self.remember_item_key(&hold.id, item_key(&hold.sku, &hold.warehouse));
                    HoldResult::Held(hold.id.clone())
                }
                Ok(_) => HoldResult::Refused,
                Err(e) => HoldResult::Unknown(e),
            });
        }
        // A reply missing from the pipeline's answer is unknown too.
        results.resize(holds.len(), HoldResult::Unknown("no reply in pipeline".to_owned()));
        results
    }

    async fn confirm(&mut self, id: &str) -> ChangeResult {
        self.finish_hold(ScriptKind::Confirm, id).await
    }

    async fn release(&mut self, id: &str) -> ChangeResult {
        self.finish_hold(ScriptKind::Release, id).await
    }

    async fn adjust(&mut self, sku: &str, warehouse: &str, delta: i64) -> ChangeResult {
        let item = item_key(sku, warehouse);
        let delta = delta.to_string();
        match self.run(ScriptKind::Adjust, &[&item], &[delta.as_bytes()]).await {
            Ok(REPLY_DONE) => ChangeResult::Done,
            Ok(_) => ChangeResult::Refused,
            Err(e) => ChangeResult::Unknown(e),
        }
    }

    async fn read(&mut self, sku: &str, warehouse: &str) -> Result<ItemState, String> {
        let mut states = self.read_many(&[(sku.to_owned(), warehouse.to_owned())]).await?;
        states.pop().ok_or_else(|| "no reply".to_owned())
    }

    async fn read_many(&mut self, items: &[(String, String)]) -> Result<Vec<ItemState>, String> {
        let mut states = Vec::with_capacity(items.len());
        for chunk in items.chunks(PIPELINE_CHUNK_MAX) {
            let mut connection = self.connection().await?;
            let mut pipe = redis::pipe();
            for (sku, warehouse) in chunk {
                pipe.cmd("HMGET").arg(item_key(sku, warehouse)).arg("on_hand").arg("reserved");
            }
            let levels: Vec<(Option<u64>, Option<u64>)> =
                pipe.query_async(&mut connection).await.map_err(|e| self.note_error(&e))?;
            if levels.len() != chunk.len() {
                return Err(format!("{} replies to {} reads", levels.len(), chunk.len()));
            }
            for ((sku, warehouse), level) in chunk.iter().zip(levels) {
                match level {
                    (Some(on_hand), Some(reserved)) => states.push(ItemState { on_hand, reserved }),
                    _ => return Err(format!("no item {sku} in {warehouse}")),
                }
            }
        }
        Ok(states)
    }

    async fn hold_states(&mut self, ids: &[String]) -> Result<Vec<HoldState>, String> {
        let mut states = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PIPELINE_CHUNK_MAX) {
            let mut connection = self.connection().await?;
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGET").arg(hold_key(id)).arg("state");
            }
            let replies: Vec<Option<String>> =
                pipe.query_async(&mut connection).await.map_err(|e| self.note_error(&e))?;
            if replies.len() != chunk.len() {
                return Err(format!("{} replies to {} reads", replies.len(), chunk.len()));
            }
            for (id, state) in chunk.iter().zip(replies) {
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

fn item_key(sku: &str, warehouse: &str) -> String {
    format!("item:{sku}:{warehouse}")
}

fn hold_key(id: &str) -> String {
    format!("hold:{id}")
}

/// ARGV of the hold script: qty, sku, warehouse, expires_at (Unix ms).
fn hold_args(hold: &HoldRequest) -> [Vec<u8>; 4] {
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let expires_at_ms = now_ms.saturating_add(hold.ttl_ms);
    [
        hold.qty.to_string().into_bytes(),
        hold.sku.as_bytes().to_vec(),
        hold.warehouse.as_bytes().to_vec(),
        expires_at_ms.to_string().into_bytes(),
    ]
}

/// `EVALSHA` of the hold script, for a pipeline.
fn hold_command(script: &Script, hold: &HoldRequest) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(2).arg(item_key(&hold.sku, &hold.warehouse)).arg(hold_key(&hold.id));
    for arg in hold_args(hold) {
        cmd.arg(arg);
    }
    cmd
}

fn is_no_script(reply: &RedisResult<i64>) -> bool {
    matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

async fn load_scripts(scripts: &Scripts, connection: &mut MultiplexedConnection) -> RedisResult<()> {
    for script in scripts.all() {
        script.load_async(connection).await?;
    }
    Ok(())
}

async fn connect_client(client: &Client) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
        .set_response_timeout(Some(Duration::from_millis(RESPONSE_TIMEOUT_MS)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// A loopback port nobody listens on right now.
fn free_loopback_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// `name` in a folder of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    const LINES_MAX: usize = 5;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES_MAX)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::tests_support::{hold, item, key};

    /// Child processes of `pid` (Redis forks for AOF rewrites).
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

    async fn start(fsync: Fsync, dir: &Path) -> Option<RedisPeer> {
        match RedisPeer::start(fsync, dir).await {
            Ok(peer) => Some(peer),
            Err(StartError::Missing(why)) => {
                eprintln!("skipped: {why}");
                None
            }
            Err(e) => panic!("redis did not start: {e}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn holds_confirms_releases_and_adjusts_keep_the_levels_right() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let started = Instant::now();
        let Some(peer) = start(Fsync::Always, dir.path()).await else { return };
        eprintln!("{} started in {:?}", peer.describe(), started.elapsed());
        assert!(peer.describe().starts_with("Redis "), "{}", peer.describe());
        peer.load(&[item("a", 5), item("b", 10)]).await.unwrap_or_else(|e| panic!("load: {e}"));
        let mut conn = peer.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));

        // Holds succeed until the stock is exhausted, then are refused.
        assert_eq!(conn.hold(&hold("h1", "a", 2)).await, HoldResult::Held("h1".to_owned()));
        assert_eq!(conn.hold(&hold("h2", "a", 3)).await, HoldResult::Held("h2".to_owned()));
        assert_eq!(conn.hold(&hold("h3", "a", 1)).await, HoldResult::Refused);
        assert_eq!(conn.hold(&hold("h1", "b", 1)).await, HoldResult::Refused, "a used id never reserves again");
        assert_eq!(conn.hold(&hold("h9", "nope", 1)).await, HoldResult::Refused);
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

        // A hold placed on another connection is confirmed through a lookup.
        let mut other = peer.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(other.hold(&hold("h4", "b", 4)).await, HoldResult::Held("h4".to_owned()));
        assert_eq!(conn.confirm("h4").await, ChangeResult::Done);
        assert_eq!(conn.read("b", "w1").await, Ok(ItemState { on_hand: 6, reserved: 0 }));

        // Adjustments may not take on_hand below reserved.
        assert_eq!(conn.hold(&hold("h5", "b", 4)).await, HoldResult::Held("h5".to_owned()));
        assert_eq!(conn.adjust("b", "w1", -3).await, ChangeResult::Refused);
        assert_eq!(conn.adjust("b", "w1", -2).await, ChangeResult::Done);
        assert_eq!(conn.adjust("b", "w1", 7).await, ChangeResult::Done);
        assert_eq!(conn.adjust("nope", "w1", 7).await, ChangeResult::Refused);
        assert_eq!(conn.read("b", "w1").await, Ok(ItemState { on_hand: 11, reserved: 4 }));

        // A batch answers each hold in order.
        let batch = [hold("b1", "a", 2), hold("b2", "a", 2), hold("b3", "b", 7), hold("b4", "b", 1)];
        assert_eq!(
            conn.hold_batch(&batch).await,
            vec![
                HoldResult::Held("b1".to_owned()),
                HoldResult::Refused,
                HoldResult::Held("b3".to_owned()),
                HoldResult::Refused,
            ]
        );
        assert_eq!(conn.hold_batch(&[]).await, Vec::new());

        // Read-backs agree with what was acknowledged.
        let levels = conn.read_many(&[key("a"), key("b")]).await.unwrap_or_else(|e| panic!("read_many: {e}"));
        assert_eq!(levels, vec![ItemState { on_hand: 3, reserved: 2 }, ItemState { on_hand: 11, reserved: 11 }]);
        assert!(conn.read_many(&[key("nope")]).await.is_err());
        let ids: Vec<String> = ["h1", "h2", "h3", "h5", "b1", "b2"].map(str::to_owned).to_vec();
        let states = conn.hold_states(&ids).await.unwrap_or_else(|e| panic!("hold_states: {e}"));
        use HoldState::*;
        assert_eq!(states, vec![Confirmed, Released, Missing, Held, Held, Missing]);

        // A lost script is loaded again.
        let mut raw = connect_client(&peer.client).await.unwrap_or_else(|e| panic!("connect: {e}"));
        redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut raw).await.unwrap_or_else(|e| panic!("flush: {e}"));
        assert_eq!(conn.hold_batch(&[hold("c1", "b", 1)]).await, vec![HoldResult::Refused]);
        assert_eq!(conn.release("b1").await, ChangeResult::Done);
        assert_eq!(conn.hold_batch(&[hold("c2", "a", 2)]).await, vec![HoldResult::Held("c2".to_owned())]);

        let pid = peer.child.id().unwrap_or_else(|| panic!("no pid"));
        let forks = children(pid);
        let stopping = Instant::now();
        peer.stop().await;
        eprintln!("stopped in {:?}", stopping.elapsed());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "redis-server {pid} still running");
        for fork in forks {
            assert!(!Path::new(&format!("/proc/{fork}")).exists(), "redis child {fork} still running");
        }
        assert!(dir.path().join("appendonlydir").is_dir(), "AOF folder in the run's folder");
    }

    #[test]
    fn the_item_key_cache_keeps_the_newest_holds_only() {
        let client = Client::open("redis://127.0.0.1:1/").unwrap_or_else(|e| panic!("client: {e}"));
        let mut conn = RedisConn {
            client,
            connection: None,
            scripts: Scripts::new(),
            item_keys: HashMap::new(),
            item_keys_order: VecDeque::new(),
        };
        for n in 0..ITEM_KEY_CACHE_MAX + 10 {
            conn.remember_item_key(&format!("h{n}"), item_key("a", "w1"));
        }
        assert_eq!(conn.item_keys.len(), ITEM_KEY_CACHE_MAX);
        assert_eq!(conn.item_keys_order.len(), ITEM_KEY_CACHE_MAX);
        assert!(!conn.item_keys.contains_key("h9"));
        assert!(conn.item_keys.contains_key("h10"));
        assert!(conn.item_keys.contains_key(&format!("h{}", ITEM_KEY_CACHE_MAX + 9)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_server_killed_midway_gives_unknown_then_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let Some(mut peer) = start(Fsync::EverySec, dir.path()).await else { return };
        assert!(peer.describe().contains("appendfsync everysec"), "{}", peer.describe());
        peer.load(&[item("a", 5)]).await.unwrap_or_else(|e| panic!("load: {e}"));
        let mut conn = peer.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(conn.hold(&hold("h1", "a", 1)).await, HoldResult::Held("h1".to_owned()));
        peer.child.kill().await.unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(matches!(conn.hold(&hold("h2", "a", 1)).await, HoldResult::Unknown(_)));
        assert!(matches!(conn.confirm("h1").await, ChangeResult::Unknown(_)));
        let batch = conn.hold_batch(&[hold("h3", "a", 1), hold("h4", "a", 1)]).await;
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| matches!(r, HoldResult::Unknown(_))), "{batch:?}");
        assert!(conn.read_many(&[key("a")]).await.is_err());
        peer.stop().await;
    }
}

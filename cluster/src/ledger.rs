//! The movement ledger: every change of an item's stock, as this replica
//! applied it, on disk.
//!
//! Built from applied entries, so identical on every replica (but for
//! `gap` entries, below): the state machine hands each burst's events,
//! named (`ShardState::describe_in`: principal, note, reference), to the
//! node's one ledger thread through a bounded channel (`queue_batches_max`:
//! a full queue holds up applying, so nothing is dropped). The thread keeps
//! only movements (stock changes and extended holds), appends them as JSON
//! lines to the shard's open segment (`<dir>/shard-<n>/<first index>-<first
//! position>-<first log time>.jsonl`), rolls segments at `segment_bytes_max`, and deletes the
//! oldest past `retention_days` or `retention_bytes_max`.
//!
//! The thread does not wake for every burst: it takes what is queued every
//! `flush_interval_ms`, or sooner when the queue is half full, and writes
//! each shard's movements in one `write`. A page read (`Ledger::page`)
//! first has the thread take and write everything queued, so a read sees
//! every burst handed over before it began.
//!
//! Nothing is fsynced: the ledger is derived from the log. On start each
//! shard's ledger knows the last log index it covered (the newest entry in
//! its segments, and `covered`, written every second and at shutdown);
//! openraft applies the log again from the snapshot, and the ledger skips
//! what it has. When the first entry applied after a start (or after a
//! snapshot installed from the leader) lies past the next one expected, the
//! entries in between are gone from this replica's log: the ledger writes
//! one `gap` entry naming them rather than pretend it is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::event::{Cause, EventKind, EventRecord, LevelChange};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// `[ledger]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Record movements at all. Off: no ledger thread, no files, and
    /// `/v1/ledger` answers 404 `ledger_disabled`.
    pub enabled: bool,
    /// Segments whose newest entry is older are deleted.
    pub retention_days: u64,
    /// Per shard: the oldest segments are deleted beyond it.
    pub retention_bytes_max: u64,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes_max: u64,
    /// Applied bursts waiting for the ledger thread; a full queue holds up
    /// applying (back-pressure, never a loss).
    pub queue_batches_max: usize,
    /// How long the thread lets applied bursts queue before it writes them
    /// (sooner when the queue is half full, or a page is read): one wake-up
    /// and one write per shard for many bursts, not one per burst.
    pub flush_interval_ms: u64,
    /// Largest page of `GET /v1/ledger` (and of each request of `tally
    /// ledger export`).
    pub page_limit_max: usize,
    /// Entries one page reads at most per shard before it answers a short
    /// page with a cursor to go on from, so a rare filter never scans the
    /// whole retained ledger in one request.
    pub page_scan_max: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_days: 30,
            retention_bytes_max: 1 << 30,
            segment_bytes_max: 64 << 20,
            queue_batches_max: 1024,
            flush_interval_ms: 100,
            page_limit_max: 1000,
            page_scan_max: 100_000,
        }
    }
}

impl LedgerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_days == 0
            || self.retention_bytes_max == 0
            || self.segment_bytes_max < 4096
            || self.queue_batches_max == 0
            || self.flush_interval_ms == 0
            || self.page_limit_max == 0
            || self.page_scan_max == 0
        {
            return Err("ledger: every bound must be at least 1 (segment_bytes_max at least 4096)".into());
        }
        Ok(())
    }
}

/// One movement, as stored (one JSON line) and as read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub shard: u32,
    pub index: u64,
    pub position: u32,
    /// Log time of the entry.
    pub at_ms: u64,
    /// `upsert`, `adjust`, `transfer_in`, `transfer_out`, `hold`, `confirm`,
    /// `release`, `expire`, `extend`, `move`, or `gap`.
    pub kind: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub warehouse: String,
    #[serde(default)]
    pub on_hand_before: u64,
    #[serde(default)]
    pub on_hand_after: u64,
    #[serde(default)]
    pub reserved_before: u64,
    #[serde(default)]
    pub reserved_after: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// An adjustment's reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The caller's document reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// The reservation's idempotency key as the engine stores it (the HTTP
    /// layer shows the order id in it, never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For a `gap`: the last log index missing (`index` is the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_to_index: Option<u64>,
    /// For a `move`: the quantity state the units left, the one they went
    /// to, and how many (`available`, `safety_stock`, `damaged`,
    /// `quality_control`, `incoming`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<u64>,
}

impl LedgerEntry {
    /// The merged order of every shard's ledger: log time, then shard, index,
    /// position. Each shard's log time never goes back, so each shard's
    /// segments are already in this order.
    pub fn key(&self) -> LedgerKey {
        LedgerKey { at_ms: self.at_ms, shard: self.shard, index: self.index, position: self.position }
    }

    pub fn on_hand_delta(&self) -> i128 {
        i128::from(self.on_hand_after) - i128::from(self.on_hand_before)
    }

    pub fn reserved_delta(&self) -> i128 {
        i128::from(self.reserved_after) - i128::from(self.reserved_before)
    }

    /// The movement's signed quantity: the change of `on_hand`, or of
    /// `reserved` for a hold, release or expiry (which leave `on_hand`).
    pub fn quantity(&self) -> i128 {
        match self.on_hand_delta() {
            0 => self.reserved_delta(),
            delta => delta,
        }
    }

    /// The entry for a movement event, or `None` for events that move no
    /// stock.
    pub fn from_record(record: &EventRecord) -> Option<LedgerEntry> {
        let mut moved = None;
        let (kind, reason, levels, reservation) = match record.kind {
            EventKind::StockChanged { cause, levels, .. } => {
                let (kind, reason) = match cause {
                    Cause::Upsert => ("upsert", None),
                    Cause::Adjust(reason) => ("adjust", Some(reason.as_str().to_owned())),
                    Cause::TransferIn => ("transfer_in", None),
                    Cause::TransferOut => ("transfer_out", None),
                    Cause::Hold(_) => ("hold", None),
                    Cause::Confirm(_) => ("confirm", None),
                    Cause::Release(_) => ("release", None),
                    Cause::Expire(_) => ("expire", None),
                    Cause::Delete => ("delete", None),
                    Cause::Move { from, to, quantity } => {
                        moved = Some((from.as_str().to_owned(), to.as_str().to_owned(), quantity));
                        ("move", None)
                    }
                };
                (kind, reason, levels, cause.reservation())
            }
            EventKind::HoldExtended { reservation, levels, .. } => ("extend", None, levels, Some(reservation)),
            EventKind::ThresholdCrossed { .. }
            | EventKind::ReservationExpired { .. }
            | EventKind::ReservationHeld { .. }
            | EventKind::ReservationRefused { .. }
            | EventKind::ReservationConfirmed { .. }
            | EventKind::ReservationReleased { .. }
            // A fill's reserved units are its `hold` stock change.
            | EventKind::BackorderFilled { .. } => return None,
        };
        let LevelChange { on_hand_before, on_hand_after, reserved_before, reserved_after, .. } = levels;
        Some(LedgerEntry {
            shard: record.id.shard,
            index: record.id.index,
            position: record.id.position,
            at_ms: record.at_ms,
            kind: kind.to_owned(),
            sku: record.sku.clone(),
            warehouse: record.warehouse.clone(),
            on_hand_before,
            on_hand_after,
            reserved_before,
            reserved_after,
            principal: record.principal.clone(),
            reason,
            note: record.note.clone(),
            document: record.reference.clone(),
            reservation_id: reservation.map(|id| id.to_string()),
            idempotency_key: if reservation.is_some() { record.idempotency_key.clone() } else { None },
            gap_to_index: None,
            from_state: moved.as_ref().map(|(from, _, _)| from.clone()),
            to_state: moved.as_ref().map(|(_, to, _)| to.clone()),
            moved: moved.map(|(_, _, quantity)| quantity),
        })
    }
}

/// A position in the merged order (`LedgerEntry::key`). Travels between
/// nodes as a page's cursor (`Request::LedgerScan`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct LedgerKey {
    pub at_ms: u64,
    pub shard: u32,
    pub index: u64,
    pub position: u32,
}

/// What `Ledger::page` keeps. Travels between nodes with a page's part
/// (`Request::LedgerScan`).
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LedgerFilter {
    pub sku: Option<String>,
    pub warehouse: Option<String>,
    pub kind: Option<String>,
    /// Log time, inclusive.
    pub since_ms: Option<u64>,
    /// Log time, exclusive.
    pub until_ms: Option<u64>,
}

impl LedgerFilter {
    fn keeps(&self, entry: &LedgerEntry) -> bool {
        // A gap names no item: it is shown to every item's reader, since
        // any of them may have moved inside it.
        let gap = entry.kind == "gap";
        self.sku.as_ref().is_none_or(|sku| gap || entry.sku == *sku)
            && self.warehouse.as_ref().is_none_or(|warehouse| gap || entry.warehouse == *warehouse)
            && self.kind.as_ref().is_none_or(|kind| entry.kind == *kind)
            && self.since_ms.is_none_or(|since| entry.at_ms >= since)
            && self.until_ms.is_none_or(|until| entry.at_ms < until)
    }
}

/// One page, in the merged order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    /// Where the next page starts; `None` when this one reached the end.
    pub next: Option<LedgerKey>,
}

/// What the state machine sends the ledger thread: one applied burst.
#[derive(Debug)]
pub struct AppliedBurst {
    pub shard: u32,
    pub first_index: u64,
    pub last_index: u64,
    pub records: Vec<Arc<EventRecord>>,
}

/// The state machine's end of the ledger's queue; its clones share one.
#[derive(Clone, Debug)]
pub struct LedgerSender {
    inner: Arc<SenderInner>,
}

#[derive(Debug)]
struct SenderInner {
    /// `None` only while dropping.
    queue: Option<mpsc::Sender<AppliedBurst>>,
    gate: Arc<FlushGate>,
}

impl Drop for SenderInner {
    /// The last sender gone: close the queue, then wake the thread so it
    /// writes the rest and stops now, not at its next interval.
    fn drop(&mut self) {
        drop(self.queue.take());
        self.gate.wake.notify_one();
    }
}

impl LedgerSender {
    /// Hands a burst over, waiting while the queue is full. `false` once
    /// the ledger thread has stopped. Wakes the thread once the queue is
    /// half full, so applying rarely waits on a full one.
    pub async fn send(&self, burst: AppliedBurst) -> bool {
        let Some(queue) = &self.inner.queue else { return false };
        if queue.send(burst).await.is_err() {
            return false;
        }
        if queue.capacity() * 2 <= queue.max_capacity() {
            self.inner.gate.wake.notify_one();
        }
        true
    }
}

/// How a reader has the ledger thread write what is queued, and waits for it.
#[derive(Debug, Default)]
struct FlushGate {
    /// Wakes the thread: a flush asked for, or the queue half full.
    wake: tokio::sync::Notify,
    /// Flushes asked for, and done: the thread finished flush `done` once
    /// it wrote everything queued when it was asked.
    asked: AtomicU64,
    done: Mutex<u64>,
    written: Condvar,
    stopped: AtomicBool,
}

impl FlushGate {
    /// Asks the thread to write everything queued now, and waits until it
    /// has (at most `FLUSH_WAIT_MAX`: a read goes on with what is on disk
    /// rather than hang on a stuck thread).
    fn flush(&self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let ask = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        let deadline = Instant::now() + FLUSH_WAIT_MAX;
        let mut done = self.done.lock();
        while *done < ask && !self.stopped.load(Ordering::Acquire) {
            if self.written.wait_until(&mut done, deadline).timed_out() {
                tracing::warn!("ledger: the thread did not write within {FLUSH_WAIT_MAX:?}; reading what is on disk");
                return;
            }
        }
    }

    /// The thread wrote everything queued when flush `asked` was asked.
    fn written(&self, asked: u64) {
        let mut done = self.done.lock();
        *done = (*done).max(asked);
        self.written.notify_all();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _done = self.done.lock();
        self.written.notify_all();
    }
}

/// How long a page read waits for the thread to write what is queued.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(2);

/// A node's ledger: its files, the thread writing them, and reads.
pub struct Ledger {
    dir: PathBuf,
    config: LedgerConfig,
    shards: u32,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Serialises reads with segment deletion: a page never opens a segment
    /// the thread is deleting.
    files: Arc<Mutex<()>>,
    gate: Arc<FlushGate>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.dir).field("shards", &self.shards).finish()
    }
}

impl Ledger {
    /// Opens (or creates) the ledger under `dir` and starts its thread.
    pub fn start(dir: &Path, shards: u32, config: LedgerConfig) -> io::Result<(Arc<Ledger>, LedgerSender)> {
        let mut writers = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            writers.push(ShardWriter::open(&dir.join(format!("shard-{shard}")), shard, &config)?);
        }
        let (queue, receiver) = mpsc::channel(config.queue_batches_max);
        let files = Arc::new(Mutex::new(()));
        let gate = Arc::new(FlushGate::default());
        let thread = Thread { receiver, files: Arc::clone(&files), gate: Arc::clone(&gate), config: config.clone() };
        let writer = std::thread::Builder::new().name("tally-ledger".into()).spawn(move || thread.run(writers))?;
        let ledger = Arc::new(Ledger {
            dir: dir.to_owned(),
            config,
            shards,
            writer: Mutex::new(Some(writer)),
            files,
            gate: Arc::clone(&gate),
        });
        Ok((ledger, LedgerSender { inner: Arc::new(SenderInner { queue: Some(queue), gate }) }))
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Waits for the thread to write what it was sent and stop; it stops
    /// once every sender is gone.
    pub fn join(&self) {
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    /// Up to `limit` entries after `after` that `filter` keeps, every shard
    /// merged. Blocking file reads: call it off the async runtime.
    pub fn page(&self, filter: &LedgerFilter, after: Option<LedgerKey>, limit: usize) -> io::Result<LedgerPage> {
        let limit = self.limit(limit);
        self.gate.flush();
        let _files = self.files.lock();
        let scans = (0..self.shards).map(|shard| self.scan_locked(shard, filter, after, limit));
        Ok(merge_page(scans.collect::<io::Result<Vec<_>>>()?, limit))
    }

    /// One shard's part of a page (`merge_page` joins the parts), for a node
    /// that pages a shard it does not host (`Node::ledger_page`). Blocking.
    pub fn scan(&self, shard: u32, filter: &LedgerFilter, after: Option<LedgerKey>, limit: usize) -> io::Result<Scan> {
        let limit = self.limit(limit);
        self.gate.flush();
        let _files = self.files.lock();
        self.scan_locked(shard, filter, after, limit)
    }

    /// A page's size within `page_limit_max`.
    pub fn limit(&self, limit: usize) -> usize {
        limit.clamp(1, self.config.page_limit_max)
    }

    fn scan_locked(
        &self,
        shard: u32,
        filter: &LedgerFilter,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> io::Result<Scan> {
        scan_shard(&self.dir.join(format!("shard-{shard}")), filter, after, limit, self.config.page_scan_max)
    }
}

/// A page of `limit` from every shard's part, in the merged order.
pub fn merge_page(scans: Vec<Scan>, limit: usize) -> LedgerPage {
    let mut found = Vec::new();
    // The earliest position one shard stopped at without reaching its end:
    // the page may go no further, or it would skip that shard's rest.
    let mut horizon: Option<LedgerKey> = None;
    for scan in scans {
        found.extend(scan.entries);
        if let Some(stopped) = scan.stopped_at {
            horizon = Some(horizon.map_or(stopped, |h| h.min(stopped)));
        }
    }
    found.sort_by_key(LedgerEntry::key);
    if let Some(horizon) = horizon {
        found.retain(|entry| entry.key() <= horizon);
    }
    found.truncate(limit);
    let next = if found.len() == limit {
        found.last().map(LedgerEntry::key)
    } else {
        // A short page: the end, unless a shard stopped early.
        horizon
    };
    LedgerPage { entries: found, next }
}

/// One shard's part of a page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub entries: Vec<LedgerEntry>,
    /// Set when the scan stopped before the shard's end (limit or scan bound).
    pub stopped_at: Option<LedgerKey>,
}

fn scan_shard(
    dir: &Path,
    filter: &LedgerFilter,
    after: Option<LedgerKey>,
    limit: usize,
    scan_max: usize,
) -> io::Result<Scan> {
    let segments = list_segments(dir)?;
    let lower_ms = after.map(|a| a.at_ms).max(filter.since_ms).unwrap_or(0);
    let mut entries = Vec::new();
    let mut scanned = 0usize;
    for (position, segment) in segments.iter().enumerate() {
        // Every entry of this segment is at or before the next one's first.
        if segments.get(position + 1).is_some_and(|next| next.first_at_ms < lower_ms) {
            continue;
        }
        if filter.until_ms.is_some_and(|until| segment.first_at_ms >= until) {
            break;
        }
        let file = match File::open(&segment.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for line in BufReader::new(file).lines() {
            let line = line?;
            // A line being written (or torn by a crash) does not parse: the
            // newest line only, skipped.
            let Ok(entry) = serde_json::from_str::<LedgerEntry>(&line) else {
                continue;
            };
            scanned += 1;
            let key = entry.key();
            if after.is_some_and(|after| key <= after) {
                continue;
            }
            if filter.until_ms.is_some_and(|until| entry.at_ms >= until) {
                return Ok(Scan { entries, stopped_at: None });
            }
            if filter.keeps(&entry) {
                entries.push(entry);
                if entries.len() == limit {
                    return Ok(Scan { entries, stopped_at: Some(key) });
                }
            }
            if scanned >= scan_max {
                return Ok(Scan { entries, stopped_at: Some(key) });
            }
        }
    }
    Ok(Scan { entries, stopped_at: None })
}

#[derive(Clone, Debug)]
struct Segment {
    path: PathBuf,
    first_index: u64,
    first_position: u32,
    first_at_ms: u64,
}

/// The shard's segments, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(error) => return Err(error),
    };
    for dirent in read {
        let path = dirent?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".jsonl") else { continue };
        let mut parts = stem.splitn(3, '-');
        let (Some(index), Some(position), Some(at)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(first_index), Ok(first_position), Ok(first_at_ms)) =
            (index.parse::<u64>(), position.parse::<u32>(), at.parse::<u64>())
        else {
            continue;
        };
        segments.push(Segment { path, first_index, first_position, first_at_ms });
    }
    segments.sort_by_key(|s| (s.first_index, s.first_position));
    Ok(segments)
}

/// One shard's files, owned by the ledger thread.
struct ShardWriter {
    dir: PathBuf,
    shard: u32,
    /// The open segment and its size.
    open: Option<(File, u64)>,
    /// The last log index the ledger covers (0: none).
    covered: u64,
    /// Whether `covered` moved since it was last written.
    covered_dirty: bool,
    /// The next applied index this run of the node expects; `None` until
    /// the first burst after start.
    expected: Option<u64>,
    /// Text waiting to be written.
    pending: Vec<u8>,
    /// Log time of the newest entry written: a gap is stamped no earlier,
    /// so the shard's entries stay in log-time order.
    last_at_ms: u64,
}

impl ShardWriter {
    fn open(dir: &Path, shard: u32, config: &LedgerConfig) -> io::Result<ShardWriter> {
        fs::create_dir_all(dir)?;
        let mut covered =
            fs::read_to_string(dir.join("covered")).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
        let mut open = None;
        let mut last_at_ms = 0;
        if let Some(last) = list_segments(dir)?.pop() {
            // Cut a torn last line (a crash mid-write) and learn the newest index.
            let text = fs::read(&last.path)?;
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if let Some(line) = text[..keep].split(|&b| b == b'\n').rev().find(|l| !l.is_empty())
                && let Ok(entry) = serde_json::from_slice::<LedgerEntry>(line)
            {
                covered = covered.max(entry.gap_to_index.unwrap_or(entry.index));
                last_at_ms = entry.at_ms;
            }
            let file = OpenOptions::new().write(true).open(&last.path)?;
            file.set_len(keep as u64)?;
            let mut file = OpenOptions::new().append(true).open(&last.path)?;
            file.flush()?;
            if (keep as u64) < config.segment_bytes_max {
                open = Some((file, keep as u64));
            }
        }
        Ok(ShardWriter {
            dir: dir.to_owned(),
            shard,
            open,
            covered,
            covered_dirty: false,
            expected: None,
            pending: Vec::new(),
            last_at_ms,
        })
    }

    /// Takes one applied burst: skips what the ledger already has, marks a
    /// hole, queues the movements.
    fn take(&mut self, burst: &AppliedBurst, segment_bytes_max: u64) {
        debug_assert_eq!(burst.shard, self.shard);
        let expected = self.expected.unwrap_or(self.covered + 1);
        if burst.first_index > expected && burst.first_index > self.covered + 1 {
            let at_ms = burst.records.first().map_or(self.last_at_ms, |r| r.at_ms.max(self.last_at_ms));
            let gap = LedgerEntry {
                shard: self.shard,
                index: self.covered + 1,
                position: 0,
                at_ms,
                kind: "gap".into(),
                gap_to_index: Some(burst.first_index - 1),
                ..LedgerEntry::default()
            };
            self.push(&gap, segment_bytes_max);
            self.covered = burst.first_index - 1;
        }
        self.expected = Some(burst.last_index + 1);
        for record in &burst.records {
            if record.id.index <= self.covered {
                continue;
            }
            if let Some(entry) = LedgerEntry::from_record(record) {
                self.push(&entry, segment_bytes_max);
            }
        }
        if burst.last_index > self.covered {
            self.covered = burst.last_index;
            self.covered_dirty = true;
        }
    }

    fn push(&mut self, entry: &LedgerEntry, segment_bytes_max: u64) {
        let full = self.open.as_ref().is_none_or(|(_, size)| size + self.pending.len() as u64 >= segment_bytes_max);
        if full {
            self.flush();
            // The segment's name carries its first entry's index and log time.
            let path = self.dir.join(format!("{:020}-{:010}-{:015}.jsonl", entry.index, entry.position, entry.at_ms));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => self.open = Some((file, 0)),
                Err(error) => {
                    tracing::error!(shard = self.shard, %error, "ledger: cannot open a segment; movements are lost until it can");
                    self.open = None;
                    return;
                }
            }
        }
        // Straight into the pending bytes. Serialising plain strings and
        // numbers into memory cannot fail; should it, the torn line is
        // dropped, as a torn last line is on reading.
        let line_start = self.pending.len();
        if serde_json::to_writer(&mut self.pending, entry).is_err() {
            self.pending.truncate(line_start);
            return;
        }
        self.pending.push(b'\n');
        self.last_at_ms = self.last_at_ms.max(entry.at_ms);
    }

    /// Writes what is pending to the open segment (no fsync: see the module docs).
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some((file, size)) = &mut self.open {
            match file.write_all(&self.pending) {
                Ok(()) => *size += self.pending.len() as u64,
                Err(error) => tracing::error!(shard = self.shard, %error, "ledger: segment write failed"),
            }
        }
        self.pending.clear();
    }

    fn write_covered(&mut self) {
        if !self.covered_dirty {
            return;
        }
        self.covered_dirty = false;
        let temp = self.dir.join("covered.tmp");
        let written =
            fs::write(&temp, self.covered.to_string()).and_then(|()| fs::rename(&temp, self.dir.join("covered")));
        if let Err(error) = written {
            tracing::warn!(shard = self.shard, %error, "ledger: cannot record the covered index");
        }
    }

    /// Deletes the oldest segments (never the open one) past the age or size.
    fn retain(&mut self, config: &LedgerConfig, now_ms: u64) -> io::Result<()> {
        let segments = list_segments(&self.dir)?;
        let mut sizes: Vec<u64> = Vec::with_capacity(segments.len());
        for segment in &segments {
            sizes.push(fs::metadata(&segment.path).map_or(0, |m| m.len()));
        }
        let mut total: u64 = sizes.iter().sum();
        let oldest_kept_ms = now_ms.saturating_sub(config.retention_days.saturating_mul(86_400_000));
        for (position, segment) in segments.iter().enumerate() {
            let Some(next) = segments.get(position + 1) else { break };
            // Every entry of this segment is at or before the next one's first.
            let too_old = next.first_at_ms < oldest_kept_ms;
            let too_big = total > config.retention_bytes_max;
            if !too_old && !too_big {
                break;
            }
            fs::remove_file(&segment.path)?;
            total -= sizes[position];
        }
        Ok(())
    }
}

/// The ledger thread's inputs.
struct Thread {
    receiver: mpsc::Receiver<AppliedBurst>,
    files: Arc<Mutex<()>>,
    gate: Arc<FlushGate>,
    config: LedgerConfig,
}

impl Thread {
    fn run(mut self, mut writers: Vec<ShardWriter>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "ledger: no runtime for its thread; the ledger records nothing");
                self.gate.stop();
                return;
            }
        };
        const HOUSEKEEPING: Duration = Duration::from_secs(1);
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut last_housekeeping = Instant::now();
        runtime.block_on(async {
            loop {
                // Woken by a reader, by a half-full queue, or by the interval.
                let _ = tokio::time::timeout(interval, self.gate.wake.notified()).await;
                // Read before taking: everything queued before this flush
                // was asked is taken below.
                let asked = self.gate.asked.load(Ordering::Acquire);
                let done = self.take_queued(&mut writers);
                for writer in &mut writers {
                    writer.flush();
                }
                self.gate.written(asked);
                if done || last_housekeeping.elapsed() >= HOUSEKEEPING {
                    last_housekeeping = Instant::now();
                    self.housekeeping(&mut writers);
                }
                if done {
                    self.gate.stop();
                    return;
                }
            }
        });
    }

    /// Takes every queued burst; true once every sender is gone and the
    /// queue is empty.
    fn take_queued(&mut self, writers: &mut [ShardWriter]) -> bool {
        loop {
            match self.receiver.try_recv() {
                Ok(burst) => take(writers, &burst, &self.config),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn housekeeping(&self, writers: &mut [ShardWriter]) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let _files = self.files.lock();
        for writer in writers {
            writer.flush();
            writer.write_covered();
            if let Err(error) = writer.retain(&self.config, now_ms) {
                tracing::warn!(shard = writer.shard, %error, "ledger: retention failed");
            }
        }
    }
}

fn take(writers: &mut [ShardWriter], burst: &AppliedBurst, config: &LedgerConfig) {
    match writers.get_mut(burst.shard as usize) {
        Some(writer) => writer.take(burst, config.segment_bytes_max),
        None => tracing::error!(shard = burst.shard, "ledger: a burst of a shard this node does not have"),
    }
}

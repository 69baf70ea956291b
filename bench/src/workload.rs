//! The workloads, the clients that run them, what each client remembers of
//! its acknowledged operations (its ledger), and the check of the final
//! state against the ledgers.
//!
//! | workload     | items                          | each request                                   |
//! |--------------|--------------------------------|------------------------------------------------|
//! | `flash-sale` | one hot SKU, then a second one with `sellout_units` | hold 1 unit of the hot SKU; then every client races for the last units until refused: exactly `sellout_units` holds must succeed |
//! | `uniform`    | `skus` SKUs                    | hold 1 unit of a SKU drawn uniformly           |
//! | `mixed`      | `skus` SKUs                    | 50% read, 25% hold, 10% confirm and 10% release of one of the client's own live holds (a hold when it has none), 5% adjustment (+5, a receipt) |
//! | `batch-N`    | `skus` SKUs                    | N holds of uniformly drawn SKUs in one request |
//! | `expiry`     | one SKU                        | hold 1 unit for 1 s and leave it to expire (Tally only; see `expiry`) |

use std::collections::HashMap;
use std::sync::Arc;

use testkit::SplitMix;

use crate::load::{Step, Stepper};
use crate::results::Check;
use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState};

/// Holds looked up one by one after a run.
const SAMPLE_MAX: usize = 1000;
/// Warehouse of every item of the bench.
pub const WAREHOUSE: &str = "w1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    FlashSale,
    Uniform,
    Mixed,
    Batch(u32),
    Expiry,
}

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::FlashSale => "flash-sale".into(),
            Workload::Uniform => "uniform".into(),
            Workload::Mixed => "mixed".into(),
            Workload::Batch(size) => format!("batch-{size}"),
            Workload::Expiry => "expiry".into(),
        }
    }

    /// Parses one name of `--workloads`; `batch` means the three sizes.
    pub fn parse(name: &str) -> Result<Vec<Workload>, String> {
        Ok(match name {
            "flash-sale" => vec![Workload::FlashSale],
            "uniform" => vec![Workload::Uniform],
            "mixed" => vec![Workload::Mixed],
            "batch" => vec![Workload::Batch(16), Workload::Batch(256), Workload::Batch(1024)],
            "expiry" => vec![Workload::Expiry],
            other => match other.strip_prefix("batch-").map(str::parse::<u32>) {
                Some(Ok(size)) if size > 0 => vec![Workload::Batch(size)],
                _ => return Err(format!("unknown workload {other:?}")),
            },
        })
    }

    /// Holds per request.
    pub fn batch(self) -> u32 {
        match self {
            Workload::Batch(size) => size,
            _ => 1,
        }
    }
}

/// Sizes of the workloads.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// SKUs of `uniform`, `mixed` and `batch`.
    pub skus: usize,
    /// Stock of each of those SKUs, and of the hot SKU of `flash-sale`:
    /// enough that the timed phase never runs out.
    pub stock: u64,
    /// Units of the last SKU of `flash-sale`, raced for until sold out.
    pub sellout_units: u64,
    /// Time to live of holds, long enough that none expires in a run
    /// (except in `expiry`).
    pub ttl_ms: u64,
    /// Time to live of the holds of `expiry`.
    pub expiry_ttl_ms: u64,
}

/// The items a workload starts with. In `flash-sale`, item 0 is the hot SKU
/// and item 1 the one sold out at the end.
pub fn items(workload: Workload, shape: &Shape) -> Vec<ItemSpec> {
    let item = |sku: String, on_hand: u64| ItemSpec { sku, warehouse: WAREHOUSE.into(), on_hand };
    match workload {
        Workload::FlashSale => vec![item("hot".into(), shape.stock), item("last".into(), shape.sellout_units)],
        Workload::Expiry => vec![item("expiring".into(), shape.stock)],
        Workload::Uniform | Workload::Mixed | Workload::Batch(_) => {
            (0..shape.skus).map(|i| item(format!("sku-{i:06}"), shape.stock)).collect()
        }
    }
}

/// Where an acknowledged hold stands, as its client knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Held,
    Confirmed,
    Released,
    /// A confirm whose answer never came: held or confirmed.
    ConfirmUnknown,
    /// A release whose answer never came: held or released.
    ReleaseUnknown,
    /// Seen expiring (`expiry`): as released for the levels.
    Expired,
}

#[derive(Clone, Debug)]
pub struct Acked {
    pub id: String,
    pub item: usize,
    pub qty: u64,
    pub known: Known,
}

/// What one client was told, to check the final state against.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub holds: Vec<Acked>,
    /// Indices into `holds` still held, for confirms and releases.
    live: Vec<usize>,
    /// Holds with no answer: (item, qty).
    pub unknown_holds: Vec<(usize, u64)>,
    /// Acknowledged adjustments: (item, delta).
    pub adjusted: Vec<(usize, i64)>,
    /// Adjustments with no answer: (item, delta).
    pub unknown_adjusts: Vec<(usize, i64)>,
    /// Confirms or releases of a live acknowledged hold that were refused:
    /// the hold had vanished.
    pub refused_ends: Vec<String>,
    /// Reads that showed more reserved than on hand.
    pub negative_reads: u64,
    /// Reads that failed.
    pub failed_reads: u64,
}

impl Ledger {
    fn record_hold(&mut self, result: HoldResult, item: usize, qty: u64, step: &mut Step) {
        match result {
            HoldResult::Held(id) => {
                self.live.push(self.holds.len());
                self.holds.push(Acked { id, item, qty, known: Known::Held });
                step.held += 1;
            }
            HoldResult::Refused => step.refused += 1,
            HoldResult::Unknown(_) => {
                self.unknown_holds.push((item, qty));
                step.errors += 1;
            }
        }
    }

    /// Takes one of the live holds, at random.
    fn take_live(&mut self, rng: &mut SplitMix) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let at = rng.index(self.live.len());
        Some(self.live.swap_remove(at))
    }

    pub fn unknown_count(&self) -> u64 {
        let ends = self.holds.iter().filter(|h| matches!(h.known, Known::ConfirmUnknown | Known::ReleaseUnknown));
        (self.unknown_holds.len() + self.unknown_adjusts.len() + ends.count()) as u64
    }
}

/// One client: its connection, what it does, and what it was told.
pub struct Client<C: Conn> {
    pub conn: C,
    workload: Workload,
    items: Arc<Vec<ItemSpec>>,
    rng: SplitMix,
    prefix: String,
    seq: u64,
    ttl_ms: u64,
    /// `flash-sale`: the item every hold is for (the hot SKU, then the last).
    pub fixed_item: usize,
    pub ledger: Ledger,
}

impl<C: Conn> Client<C> {
    pub fn new(conn: C, workload: Workload, items: Arc<Vec<ItemSpec>>, shape: &Shape, index: usize) -> Client<C> {
        let ttl_ms = if workload == Workload::Expiry { shape.expiry_ttl_ms } else { shape.ttl_ms };
        Client {
            conn,
            workload,
            items,
            rng: SplitMix::new(index as u64 + 1),
            prefix: format!("c{index}-"),
            seq: 0,
            ttl_ms,
            fixed_item: 0,
            ledger: Ledger::default(),
        }
    }

    fn request(&mut self, item: usize) -> HoldRequest {
        self.seq += 1;
        let spec = &self.items[item];
        HoldRequest {
            sku: spec.sku.clone(),
            warehouse: spec.warehouse.clone(),
            qty: 1,
            id: format!("{}{}", self.prefix, self.seq),
            ttl_ms: self.ttl_ms,
        }
    }

    async fn hold_one(&mut self, item: usize) -> Step {
        let request = self.request(item);
        let result = self.conn.hold(&request).await;
        let mut step = Step::default();
        self.ledger.record_hold(result, item, request.qty, &mut step);
        step
    }

    async fn batch(&mut self, size: u32) -> Step {
        let picks: Vec<usize> = (0..size).map(|_| self.rng.index(self.items.len())).collect();
        let requests: Vec<HoldRequest> = picks.iter().map(|&item| self.request(item)).collect();
        let results = self.conn.hold_batch(&requests).await;
        let mut step = Step::default();
        for ((result, item), request) in results.into_iter().zip(picks).zip(&requests) {
            self.ledger.record_hold(result, item, request.qty, &mut step);
        }
        step
    }

    async fn end(&mut self, confirm: bool) -> Step {
        let Some(index) = self.ledger.take_live(&mut self.rng) else {
            let item = self.rng.index(self.items.len());
            return self.hold_one(item).await;
        };
        let id = self.ledger.holds[index].id.clone();
        let result = if confirm { self.conn.confirm(&id).await } else { self.conn.release(&id).await };
        let hold = &mut self.ledger.holds[index];
        let mut step = Step::default();
        match result {
            ChangeResult::Done => hold.known = if confirm { Known::Confirmed } else { Known::Released },
            ChangeResult::Refused => self.ledger.refused_ends.push(id),
            ChangeResult::Unknown(_) => {
                hold.known = if confirm { Known::ConfirmUnknown } else { Known::ReleaseUnknown };
                step.errors += 1;
            }
        }
        step
    }

    async fn read(&mut self) -> Step {
        let item = self.rng.index(self.items.len());
        let spec = &self.items[item];
        let (sku, warehouse) = (spec.sku.clone(), spec.warehouse.clone());
        let mut step = Step::default();
        match self.conn.read(&sku, &warehouse).await {
            Ok(state) if state.reserved > state.on_hand => self.ledger.negative_reads += 1,
            Ok(_) => {}
            Err(_) => {
                self.ledger.failed_reads += 1;
                step.errors += 1;
            }
        }
        step
    }

    async fn adjust(&mut self) -> Step {
        let item = self.rng.index(self.items.len());
        let spec = &self.items[item];
        let (sku, warehouse) = (spec.sku.clone(), spec.warehouse.clone());
        let mut step = Step::default();
        match self.conn.adjust(&sku, &warehouse, 5).await {
            ChangeResult::Done => self.ledger.adjusted.push((item, 5)),
            // A receipt is never refused; count it as a vanished write.
            ChangeResult::Refused => self.ledger.refused_ends.push(format!("adjustment of {sku}/{warehouse}")),
            ChangeResult::Unknown(_) => {
                self.ledger.unknown_adjusts.push((item, 5));
                step.errors += 1;
            }
        }
        step
    }
}

impl<C: Conn> Stepper for Client<C> {
    async fn step(&mut self) -> Step {
        match self.workload {
            Workload::FlashSale | Workload::Expiry => self.hold_one(self.fixed_item).await,
            Workload::Uniform => {
                let item = self.rng.index(self.items.len());
                self.hold_one(item).await
            }
            Workload::Batch(size) => self.batch(size).await,
            Workload::Mixed => match self.rng.index(100) {
                0..50 => self.read().await,
                50..75 => {
                    let item = self.rng.index(self.items.len());
                    self.hold_one(item).await
                }
                75..85 => self.end(true).await,
                85..95 => self.end(false).await,
                _ => self.adjust().await,
            },
        }
    }
}

/// `flash-sale`'s last phase: the client holds 1 unit of `item` until
/// refused (or until `errors_max` requests in a row fail). Returns the
/// holds acknowledged.
pub async fn race_until_sold_out<C: Conn>(client: &mut Client<C>, item: usize, errors_max: u32) -> u64 {
    client.fixed_item = item;
    let mut held = 0;
    let mut errors = 0;
    loop {
        let step = client.hold_one(item).await;
        held += step.held;
        if step.refused > 0 {
            return held;
        }
        if step.errors > 0 {
            errors += 1;
            if errors >= errors_max {
                return held;
            }
        } else {
            errors = 0;
        }
    }
}

/// Sums per item of what the ledgers say.
#[derive(Clone, Copy, Debug, Default)]
struct Expected {
    /// Acknowledged holds still held.
    live: u64,
    /// Acknowledged holds confirmed (sold).
    confirmed: u64,
    /// Holds with no answer.
    unknown_holds: u64,
    /// Acknowledged holds whose confirm had no answer.
    unknown_confirms: u64,
    /// Acknowledged holds whose release had no answer.
    unknown_releases: u64,
    adjusted: i64,
    unknown_adjust_up: u64,
    unknown_adjust_down: u64,
}

/// Reads the final state back and checks it against the ledgers: no
/// oversell (acknowledged units never exceed the stock there was), no lost
/// acknowledged write (every acknowledged hold, confirm, release and
/// adjustment is in the final levels, and a sample of holds is found by id
/// in the state the client was told).
pub async fn check<C: Conn>(control: &mut C, items: &[ItemSpec], ledgers: &[&Ledger]) -> Check {
    let mut check = Check::default();
    let mut expected = vec![Expected::default(); items.len()];
    for ledger in ledgers {
        check.unknown += ledger.unknown_count();
        for hold in &ledger.holds {
            let sums = &mut expected[hold.item];
            match hold.known {
                Known::Held => sums.live += hold.qty,
                Known::Confirmed => sums.confirmed += hold.qty,
                Known::Released | Known::Expired => {}
                Known::ConfirmUnknown => sums.unknown_confirms += hold.qty,
                Known::ReleaseUnknown => sums.unknown_releases += hold.qty,
            }
        }
        for &(item, qty) in &ledger.unknown_holds {
            expected[item].unknown_holds += qty;
        }
        for &(item, delta) in &ledger.adjusted {
            expected[item].adjusted += delta;
        }
        for &(item, delta) in &ledger.unknown_adjusts {
            if delta >= 0 {
                expected[item].unknown_adjust_up += delta.unsigned_abs();
            } else {
                expected[item].unknown_adjust_down += delta.unsigned_abs();
            }
        }
        if ledger.negative_reads > 0 {
            check.oversell += ledger.negative_reads;
            check.problems.push(format!("{} reads showed more reserved than on hand", ledger.negative_reads));
        }
        for what in &ledger.refused_ends {
            check.lost += 1;
            if check.problems.len() < 20 {
                check.problems.push(format!("{what}: acknowledged, then refused as if gone"));
            }
        }
    }

    let keys: Vec<(String, String)> = items.iter().map(|i| (i.sku.clone(), i.warehouse.clone())).collect();
    let finals = match control.read_many(&keys).await {
        Ok(finals) => finals,
        Err(error) => {
            check.problems.push(format!("cannot read the final state: {error}"));
            return check;
        }
    };
    for ((spec, sums), state) in items.iter().zip(&expected).zip(&finals) {
        check_item(&mut check, spec, sums, *state);
    }
    sample_holds(&mut check, control, ledgers).await;
    check
}

fn check_item(check: &mut Check, spec: &ItemSpec, sums: &Expected, state: ItemState) {
    let name = format!("{}/{}", spec.sku, spec.warehouse);
    let problem = |check: &mut Check, text: String| {
        if check.problems.len() < 20 {
            check.problems.push(format!("{name}: {text}"));
        }
    };
    // Oversell: units acknowledged as held or sold beyond the stock there
    // could have been.
    let stock_max = i128::from(spec.on_hand) + i128::from(sums.adjusted) + i128::from(sums.unknown_adjust_up);
    let acknowledged = i128::from(sums.live + sums.confirmed);
    if acknowledged > stock_max {
        let over = u64::try_from(acknowledged - stock_max).unwrap_or(u64::MAX);
        check.oversell += over;
        problem(check, format!("{over} units acknowledged beyond the stock"));
    }
    if state.reserved > state.on_hand {
        check.oversell += state.reserved - state.on_hand;
        problem(check, format!("reserved {} above on hand {}", state.reserved, state.on_hand));
    }
    // Reserved: every acknowledged live hold, give or take the unknowns.
    let reserved_min = sums.live;
    let reserved_max = sums.live + sums.unknown_holds + sums.unknown_confirms + sums.unknown_releases;
    if state.reserved < reserved_min {
        check.lost += reserved_min - state.reserved;
        problem(check, format!("reserved {} below the {} units acknowledged as held", state.reserved, reserved_min));
    } else if state.reserved > reserved_max {
        problem(check, format!("reserved {} above the {} units that may be held", state.reserved, reserved_max));
    }
    // On hand: the start, plus acknowledged adjustments, less confirmed
    // sales, give or take the unknowns.
    let base = i128::from(spec.on_hand) + i128::from(sums.adjusted) - i128::from(sums.confirmed);
    let on_hand_max = base + i128::from(sums.unknown_adjust_up);
    let on_hand_min = base - i128::from(sums.unknown_adjust_down) - i128::from(sums.unknown_confirms);
    let on_hand = i128::from(state.on_hand);
    if on_hand > on_hand_max {
        check.lost += u64::try_from(on_hand - on_hand_max).unwrap_or(u64::MAX);
        problem(check, format!("on hand {on_hand} above {on_hand_max}: acknowledged sales missing"));
    } else if on_hand < on_hand_min {
        check.lost += u64::try_from(on_hand_min - on_hand).unwrap_or(u64::MAX);
        problem(check, format!("on hand {on_hand} below {on_hand_min}: acknowledged receipts missing"));
    }
}

/// Looks up a spread sample of acknowledged holds by id.
async fn sample_holds<C: Conn>(check: &mut Check, control: &mut C, ledgers: &[&Ledger]) {
    let total: usize = ledgers.iter().map(|l| l.holds.len()).sum();
    if total == 0 {
        return;
    }
    let every = total.div_ceil(SAMPLE_MAX).max(1);
    let sample: Vec<&Acked> = ledgers.iter().flat_map(|l| l.holds.iter()).step_by(every).collect();
    let ids: Vec<String> = sample.iter().map(|h| h.id.clone()).collect();
    let states = match control.hold_states(&ids).await {
        Ok(states) => states,
        Err(error) => {
            check.problems.push(format!("cannot read holds back: {error}"));
            return;
        }
    };
    check.sampled = sample.len() as u64;
    for (hold, state) in sample.iter().zip(states) {
        let fits = match (hold.known, state) {
            (_, HoldState::Missing) => {
                check.lost += 1;
                if check.problems.len() < 20 {
                    check.problems.push(format!("hold {} acknowledged, then missing", hold.id));
                }
                continue;
            }
            (Known::Held, HoldState::Held | HoldState::Expired) => true,
            (Known::Confirmed, HoldState::Confirmed) | (Known::Released, HoldState::Released) => true,
            (Known::Expired, HoldState::Expired) => true,
            (Known::ConfirmUnknown, HoldState::Held | HoldState::Confirmed | HoldState::Expired) => true,
            (Known::ReleaseUnknown, HoldState::Held | HoldState::Released | HoldState::Expired) => true,
            _ => false,
        };
        if !fits {
            check.lost += 1;
            if check.problems.len() < 20 {
                check.problems.push(format!("hold {}: told {:?}, found {state:?}", hold.id, hold.known));
            }
        }
    }
}

/// `flash-sale`'s exactness: with `units` on the last SKU and every
/// client racing until refused, exactly `units` holds succeed (fewer only
/// by as many as had no answer).
pub fn check_sellout(check: &mut Check, units: u64, held: u64, unknown: u64) {
    if held > units {
        check.oversell += held - units;
        check.problems.push(format!("sell-out: {held} holds acknowledged for {units} units"));
    } else if held + unknown < units {
        check.problems.push(format!("sell-out: only {held} of {units} units held before refusals"));
    }
}

/// Counts of a finished run's ledgers, by item, for reports.
pub fn held_by_item(ledgers: &[&Ledger]) -> HashMap<usize, u64> {
    let mut held = HashMap::new();
    for ledger in ledgers {
        for hold in &ledger.holds {
            *held.entry(hold.item).or_default() += hold.qty;
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(on_hand: u64) -> ItemSpec {
        ItemSpec { sku: "a".into(), warehouse: WAREHOUSE.into(), on_hand }
    }

    #[test]
    fn a_state_that_matches_the_ledger_passes() {
        let mut check = Check::default();
        let sums = Expected { live: 3, confirmed: 2, adjusted: 5, ..Expected::default() };
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 13, reserved: 3 });
        assert!(check.passed(), "{check:?}");
    }

    #[test]
    fn missing_reserved_units_are_lost_writes() {
        let mut check = Check::default();
        let sums = Expected { live: 3, ..Expected::default() };
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 10, reserved: 1 });
        assert_eq!(check.lost, 2);
        assert!(!check.passed());
    }

    #[test]
    fn unknown_holds_widen_the_range_but_not_the_floor() {
        let mut check = Check::default();
        let sums = Expected { live: 3, unknown_holds: 2, ..Expected::default() };
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 10, reserved: 5 });
        assert!(check.passed(), "{check:?}");
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 10, reserved: 2 });
        assert_eq!(check.lost, 1);
    }

    #[test]
    fn acknowledged_units_beyond_stock_are_oversell() {
        let mut check = Check::default();
        let sums = Expected { live: 8, confirmed: 4, ..Expected::default() };
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 6, reserved: 8 });
        assert!(check.oversell >= 2, "{check:?}");
    }

    #[test]
    fn a_missing_confirm_shows_in_on_hand() {
        let mut check = Check::default();
        let sums = Expected { confirmed: 4, ..Expected::default() };
        check_item(&mut check, &spec(10), &sums, ItemState { on_hand: 10, reserved: 0 });
        assert_eq!(check.lost, 4);
    }

    #[test]
    fn sellout_must_be_exact() {
        let mut check = Check::default();
        check_sellout(&mut check, 100, 100, 0);
        assert!(check.passed());
        check_sellout(&mut check, 100, 101, 0);
        assert_eq!(check.oversell, 1);
        let mut check = Check::default();
        check_sellout(&mut check, 100, 98, 0);
        assert!(!check.passed());
        let mut check = Check::default();
        check_sellout(&mut check, 100, 98, 2);
        assert!(check.passed());
    }

    #[test]
    fn workload_names_round_trip() {
        for name in ["flash-sale", "uniform", "mixed", "expiry", "batch-16"] {
            let parsed = Workload::parse(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed[0].name(), name);
        }
        assert_eq!(Workload::parse("batch").map(|w| w.len()), Ok(3));
        assert!(Workload::parse("nope").is_err());
        assert!(Workload::parse("batch-0").is_err());
    }
}

//! The fuzz harness of Tally's test suites, on stable Rust.
//!
//! cargo-fuzz needs nightly; this is the part of it the suites need. A
//! target is a corpus of committed seed inputs (`<crate>/tests/fuzz_corpus/
//! <target>/`) and a check that must hold for every input. `Target::run`
//! feeds the check every seed as it is, then seeded mutations of them
//! (`Mutator`: bit flips, interesting integers over length fields,
//! truncation, insertion, deletion, splices of two seeds; `json::mutate`
//! for JSON bodies), until its time or iteration budget runs out. There is
//! no coverage feedback: input `i` of a run depends only on the seed and
//! `i` (and on this code and the corpus), so any one input replays alone.
//! A target that drives a live node carries the node's state from input to
//! input: there, replaying the whole run (the seed alone) is the surer way.
//!
//! A failure is a panic in the check, or (for targets that watch threads) a
//! panic on another thread while the input ran (a task or thread of a node
//! under test), or, in a binary that caps its allocations
//! (`cap_allocations`), an allocation past the cap, which aborts the
//! process. Each run first prints its seed to stderr, outside the test
//! harness's capture, so every failure reproduces.
//!
//! Environment:
//! * `TALLY_FUZZ_SECS`: run each target this long, with no iteration bound
//!   (and a random seed unless `TALLY_FUZZ_SEED` is set). Default:
//!   `DEFAULT_SECS` and a bounded count per target, the same seed every run.
//! * `TALLY_FUZZ_SEED`: the seed (decimal or `0x` hex).
//! * `TALLY_FUZZ_ITERATIONS`: the iteration bound.
//! * `TALLY_FUZZ_ITERATION`: replay that one input of the seed's run.

pub mod json;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::SplitMix;

/// A global allocator with a cap: `static ALLOCATOR: fuzz::Allocator =
/// fuzz::Allocator::new(std::alloc::System, usize::MAX);` in a fuzz test
/// binary, then `cap_allocations`.
pub type Allocator = cap::Cap<std::alloc::System>;

/// Default wall-clock budget of one target in the test suite.
pub const DEFAULT_SECS: f64 = 2.0;
/// Longest input the mutator makes, in bytes: inputs stay small and fast.
pub const INPUT_LEN_MAX: usize = 64 * 1024;

/// Caps the process's heap at what it holds now plus `headroom_bytes`, once
/// per process: a decoder that trusts a length field and asks for gigabytes
/// then aborts the run (with "memory allocation of N bytes failed") instead
/// of passing slowly.
pub fn cap_allocations(allocator: &'static Allocator, headroom_bytes: usize) {
    static CAPPED: OnceLock<()> = OnceLock::new();
    CAPPED.get_or_init(|| {
        let limit = allocator.allocated().saturating_add(headroom_bytes);
        // Fails only if the heap is already past the limit, which it cannot be.
        _ = allocator.set_limit(limit);
    });
}

/// The fuzzers' view of the one seeded generator (`testkit::SplitMix`,
/// splitmix64): small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        // The modulo bias is irrelevant for fuzzing; the result is < bound.
        usize::try_from(self.next_u64() % bound as u64).unwrap_or(0)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: usize, denominator: usize) -> bool {
        self.below(denominator) < numerator
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
}

/// One committed corpus input.
#[derive(Clone, Debug)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Reads every file of `dir`, in name order. A missing or empty corpus is a
/// broken checkout, not a pass.
pub fn corpus(dir: impl AsRef<Path>) -> Vec<Seed> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
    let mut seeds: Vec<Seed> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .map(|path| Seed {
            name: path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", path.display())),
        })
        .collect();
    assert!(!seeds.is_empty(), "fuzz corpus {} is empty", dir.display());
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    seeds
}

/// Replaces the files of `dir` with `seeds` (for the tests that regenerate
/// a corpus when asked to).
pub fn write_corpus(dir: impl AsRef<Path>, seeds: &[Seed]) {
    let dir = dir.as_ref();
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("clear {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for seed in seeds {
        let path = dir.join(&seed.name);
        std::fs::write(&path, &seed.bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Whether the corpus tests should rewrite the committed corpus
/// (`TALLY_FUZZ_WRITE_CORPUS=1`) rather than check it.
pub fn writing_corpus() -> bool {
    std::env::var("TALLY_FUZZ_WRITE_CORPUS").is_ok_and(|value| value == "1")
}

/// How long a target runs and from which seed.
#[derive(Clone, Debug)]
pub struct Budget {
    pub seed: u64,
    pub time_max: Duration,
    pub iterations_max: u64,
    /// Replay only this input.
    pub only: Option<u64>,
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text}: {e}")))
}

impl Budget {
    /// The suite's budget (`DEFAULT_SECS`, at most `iterations_default`
    /// inputs, a fixed seed per target) unless the environment says
    /// otherwise (see the crate docs).
    pub fn from_env(target: &str, iterations_default: u64) -> Budget {
        let secs = std::env::var("TALLY_FUZZ_SECS")
            .ok()
            .map(|text| text.trim().parse::<f64>().unwrap_or_else(|e| panic!("TALLY_FUZZ_SECS={text}: {e}")));
        let seed = env_u64("TALLY_FUZZ_SEED").unwrap_or_else(|| match secs {
            // A long local run explores: a new seed each time.
            Some(_) => Rng::new(fresh_entropy()).next_u64(),
            None => name_hash(target),
        });
        Budget {
            seed,
            time_max: Duration::from_secs_f64(secs.unwrap_or(DEFAULT_SECS).max(0.0)),
            iterations_max: env_u64("TALLY_FUZZ_ITERATIONS").unwrap_or(if secs.is_some() {
                u64::MAX
            } else {
                iterations_default
            }),
            only: env_u64("TALLY_FUZZ_ITERATION"),
        }
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3))
}

fn fresh_entropy() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()).rotate_left(32)
}

/// A fresh temporary directory for one input's files, in memory
/// (`/dev/shm`) where the machine has it: the WAL and snapshot code fsync,
/// which costs nothing there.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir =
        if shm.is_dir() { tempfile::Builder::new().prefix("tally-fuzz-").tempdir_in(shm) } else { tempfile::tempdir() };
    dir.unwrap_or_else(|e| panic!("scratch dir: {e}"))
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub iterations: u64,
    /// Inputs the check reported as accepted (decoded, loaded, answered):
    /// how many got past the first refusal.
    pub accepted: u64,
    pub elapsed: Duration,
}

static PANICS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on a thread while it runs a target's checks: its panics are the
    /// target's own, caught and reported by its `run`.
    static RUNNING_CHECKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Counts every panic in the process outside the targets' own checks (a
/// node's tasks, its threads), keeping the default report.
fn count_panics() {
    static HOOKED: OnceLock<()> = OnceLock::new();
    HOOKED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !RUNNING_CHECKS.get() {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Writes to the real stderr, past the test harness's capture.
pub fn say(line: &str) {
    _ = writeln!(std::io::stderr(), "{line}");
}

/// A fuzz target: its name (as in `cargo test ... <name>`), its crate (for
/// the reproduction line) and its corpus.
pub struct Target {
    pub name: &'static str,
    pub package: &'static str,
    pub seeds: Vec<Seed>,
    pub budget: Budget,
    /// Whether a panic on another thread fails the input: for targets that
    /// drive a node (its tasks and threads), not for pure decoders, which
    /// would otherwise take the blame for a node in the same binary.
    pub watches_threads: bool,
}

impl Target {
    /// A target over the corpus in `dir`, with the suite's budget of at most
    /// `iterations_default` inputs unless the environment says otherwise.
    pub fn new(name: &'static str, package: &'static str, dir: impl AsRef<Path>, iterations_default: u64) -> Target {
        Target {
            name,
            package,
            seeds: corpus(dir),
            budget: Budget::from_env(name, iterations_default),
            watches_threads: false,
        }
    }

    /// Fails an input on a panic on any other thread of the process too.
    pub fn watching_threads(mut self) -> Target {
        self.watches_threads = true;
        self
    }

    /// Runs `check` on every seed unchanged, then on `mutate`d inputs, until
    /// the budget is spent. `check` fails by panicking (a panic on another
    /// thread meanwhile fails the input too) and answers whether the input
    /// was accepted, which the summary counts.
    pub fn run(
        &self,
        mut mutate: impl FnMut(&[Seed], &mut Rng) -> Vec<u8>,
        mut check: impl FnMut(&[u8]) -> bool,
    ) -> Summary {
        count_panics();
        let budget = &self.budget;
        say(&format!(
            "fuzz {}: seed {:#x}, up to {:.1}s or {} inputs, {} corpus inputs (TALLY_FUZZ_SEED / TALLY_FUZZ_SECS)",
            self.name,
            budget.seed,
            budget.time_max.as_secs_f64(),
            budget.iterations_max,
            self.seeds.len()
        ));
        let started = Instant::now();
        let mut iteration = budget.only.unwrap_or(0);
        let mut done = 0u64;
        let mut accepted = 0u64;
        loop {
            let input = self.input(iteration, &mut mutate);
            let panics_before = PANICS.load(Ordering::SeqCst);
            RUNNING_CHECKS.set(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
            RUNNING_CHECKS.set(false);
            let panicked_elsewhere = self.watches_threads && PANICS.load(Ordering::SeqCst) != panics_before;
            match outcome {
                Ok(accepted_now) if !panicked_elsewhere => accepted += u64::from(accepted_now),
                Ok(_) => self.fail(iteration, &input, None),
                Err(payload) => self.fail(iteration, &input, Some(payload)),
            }
            done += 1;
            iteration += 1;
            if budget.only.is_some() || done >= budget.iterations_max || started.elapsed() >= budget.time_max {
                break;
            }
        }
        let summary = Summary { iterations: done, accepted, elapsed: started.elapsed() };
        say(&format!(
            "fuzz {}: {done} inputs ({accepted} accepted) in {:.2}s, no failure",
            self.name,
            summary.elapsed.as_secs_f64()
        ));
        summary
    }

    /// Input `iteration` of this seed's run: the seeds as they are first,
    /// then mutations.
    fn input(&self, iteration: u64, mutate: &mut impl FnMut(&[Seed], &mut Rng) -> Vec<u8>) -> Vec<u8> {
        if let Some(seed) = usize::try_from(iteration).ok().and_then(|index| self.seeds.get(index)) {
            return seed.bytes.clone();
        }
        let mut rng = Rng::new(self.budget.seed ^ iteration.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        rng.next_u64();
        mutate(&self.seeds, &mut rng)
    }

    fn fail(&self, iteration: u64, input: &[u8], payload: Option<Box<dyn std::any::Any + Send>>) -> ! {
        let saved = save_crash(self.name, self.budget.seed, iteration, input);
        let message = payload
            .as_ref()
            .and_then(|p| {
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            })
            .unwrap_or_else(|| "a panic elsewhere in the process while this input ran".into());
        let shown = &input[..input.len().min(256)];
        panic!(
            "fuzz {} failed on input {iteration} (seed {:#x}): {message}\n\
             input ({} bytes, first {} shown): {}\n\
             saved to {}\n\
             reproduce: TALLY_FUZZ_SEED={:#x} TALLY_FUZZ_ITERATION={iteration} cargo test -p {} --test fuzz {}",
            self.name,
            self.budget.seed,
            input.len(),
            shown.len(),
            hex(shown),
            saved.display(),
            self.budget.seed,
            self.package,
            self.name,
        );
    }
}

fn save_crash(name: &str, seed: u64, iteration: u64, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("tally-fuzz-crashes");
    let path = dir.join(format!("{name}-{seed:016x}-{iteration}.bin"));
    if std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)).is_err() {
        return PathBuf::from("(not saved)");
    }
    path
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Integers that break length and count fields: zero, one, the edges of
/// each width, and sizes a little past a small buffer.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    8,
    16,
    64,
    0x7F,
    0x80,
    0xFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Seeded byte-level mutations of corpus inputs.
pub struct Mutator<'a> {
    pub seeds: &'a [Seed],
    /// Mutations land in the first `header_len` bytes this often (out of
    /// 4), where a format keeps its lengths and kinds.
    pub header_len: usize,
}

impl<'a> Mutator<'a> {
    pub fn new(seeds: &'a [Seed]) -> Mutator<'a> {
        Mutator { seeds, header_len: 32 }
    }

    /// A corpus input with one to four stacked mutations.
    pub fn mutate(&self, rng: &mut Rng) -> Vec<u8> {
        let mut bytes = rng.pick(self.seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
        self.mutate_bytes(&mut bytes, rng);
        bytes
    }

    /// One to four stacked mutations of `bytes`, in place.
    pub fn mutate_bytes(&self, bytes: &mut Vec<u8>, rng: &mut Rng) {
        for _ in 0..=rng.below(4) {
            self.mutate_once(bytes, rng);
        }
        bytes.truncate(INPUT_LEN_MAX);
    }

    /// One to four stacked mutations that keep every byte where it was
    /// (flips, set bytes, interesting integers, copied runs): inside an
    /// archive of relative offsets, the ones that keep its structure.
    pub fn overwrite_bytes(&self, bytes: &mut [u8], rng: &mut Rng) {
        let mut owned = bytes.to_vec();
        for _ in 0..=rng.below(4) {
            let op = [0, 1, 2, 9][rng.below(4)];
            self.apply(op, &mut owned, rng);
        }
        debug_assert_eq!(owned.len(), bytes.len());
        bytes.copy_from_slice(&owned);
    }

    fn offset(&self, bytes: &[u8], width: usize, rng: &mut Rng) -> Option<usize> {
        let room = bytes.len().checked_sub(width)? + 1;
        if rng.chance(1, 4) { Some(rng.below(room.min(self.header_len.max(1)))) } else { Some(rng.below(room)) }
    }

    fn mutate_once(&self, bytes: &mut Vec<u8>, rng: &mut Rng) {
        let op = rng.below(10);
        self.apply(op, bytes, rng);
    }

    fn apply(&self, op: usize, bytes: &mut Vec<u8>, rng: &mut Rng) {
        match op {
            0 => {
                if let Some(at) = self.offset(bytes, 1, rng) {
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(at) = self.offset(bytes, 1, rng) {
                    bytes[at] = rng.byte();
                }
            }
            2 | 3 => {
                // An interesting integer over a 1, 2, 4 or 8-byte field,
                // little-endian (both formats here are), sometimes off by one.
                let width = [1, 2, 4, 8][rng.below(4)];
                let mut value = INTERESTING[rng.below(INTERESTING.len())];
                if rng.chance(1, 4) {
                    value = if rng.chance(1, 2) { value.wrapping_add(1) } else { value.wrapping_sub(1) };
                }
                if rng.chance(1, 8) {
                    value = bytes.len() as u64;
                }
                if let Some(mut at) = self.offset(bytes, width, rng) {
                    // Half the time on the field grid of an archive that
                    // starts after the header (rkyv aligns its integers).
                    if at >= self.header_len && rng.chance(1, 2) {
                        at -= (at - self.header_len) % width;
                    }
                    bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            4 => {
                let keep = rng.below(bytes.len() + 1);
                bytes.truncate(keep);
            }
            5 => {
                let at = rng.below(bytes.len() + 1);
                let count = 1 + rng.below(16);
                let fill: Vec<u8> = (0..count).map(|_| rng.byte()).collect();
                bytes.splice(at..at, fill);
            }
            6 => {
                if !bytes.is_empty() {
                    let start = rng.below(bytes.len());
                    let end = (start + 1 + rng.below(32)).min(bytes.len());
                    bytes.drain(start..end);
                }
            }
            7 => {
                // Duplicate a run in place: repeated records, grown vectors.
                if !bytes.is_empty() {
                    let start = rng.below(bytes.len());
                    let end = (start + 1 + rng.below(64)).min(bytes.len());
                    let run = bytes[start..end].to_vec();
                    let at = rng.below(bytes.len() + 1);
                    bytes.splice(at..at, run);
                }
            }
            8 => {
                // Splice: this input's head onto another seed's tail.
                if let Some(other) = rng.pick(self.seeds) {
                    let cut = rng.below(bytes.len() + 1);
                    let from = rng.below(other.bytes.len() + 1);
                    bytes.truncate(cut);
                    bytes.extend_from_slice(&other.bytes[from..]);
                }
            }
            _ => {
                // Copy a run over another place in the same input.
                if bytes.len() > 1 {
                    let len = 1 + rng.below(bytes.len().min(16));
                    let from = rng.below(bytes.len() - len + 1);
                    let to = rng.below(bytes.len() - len + 1);
                    let run = bytes[from..from + len].to_vec();
                    bytes[to..to + len].copy_from_slice(&run);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<Seed> {
        vec![Seed { name: "a".into(), bytes: (0..100).collect() }, Seed { name: "b".into(), bytes: vec![9; 40] }]
    }

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let seeds = seeds();
        let mutator = Mutator::new(&seeds);
        let run = |seed: u64| (0..50u64).map(|i| mutator.mutate(&mut Rng::new(seed + i))).collect::<Vec<_>>();
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn mutations_stay_within_the_input_bound() {
        let seeds = vec![Seed { name: "big".into(), bytes: vec![1; INPUT_LEN_MAX] }];
        let mutator = Mutator::new(&seeds);
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            assert!(mutator.mutate(&mut rng).len() <= INPUT_LEN_MAX);
        }
    }

    #[test]
    fn below_stays_below_its_bound() {
        let mut rng = Rng::new(3);
        assert_eq!(rng.below(0), 0);
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}

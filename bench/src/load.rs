//! The load generator: clients that each own one connection and repeat a
//! workload's step, closed-loop (each waits for its answer, then goes on) or
//! open-loop (requests start on a fixed schedule, and latency is counted
//! from each request's scheduled start, so a slow answer that delays the
//! next request counts against the target: no coordinated omission).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::results::Latency;

/// Highest latency recorded exactly; above it a request counts as this.
const LATENCY_MAX_US: u64 = 60_000_000;

/// How requests are issued.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Every client sends its next request when the last is answered.
    Closed,
    /// Requests start at `rate` per second in all, spread evenly over the
    /// clients (client `k` takes arrivals `k`, `k + clients`, …).
    Open { rate: f64 },
}

/// How long a measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Run but not recorded: connections open, caches warm.
    pub warmup: Duration,
    /// Recorded.
    pub measure: Duration,
}

/// What one step of a client did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub held: u64,
    pub refused: u64,
    /// No answer or an error.
    pub errors: u64,
}

/// What a client measured.
pub struct Measured {
    pub latency: Histogram<u64>,
    /// Open loop: how late each request started after its scheduled time
    /// (no free connection, or this process not scheduled in time). Part of
    /// `latency`; a large value means the load generator, not only the
    /// target, was behind.
    pub start_lag: Histogram<u64>,
    pub requests: u64,
    pub held: u64,
    pub refused: u64,
    pub errors: u64,
    /// Acknowledged holds in each second of the measured window.
    pub held_each_second: Vec<u64>,
}

impl Measured {
    pub fn new(seconds: usize) -> Measured {
        Measured {
            latency: new_histogram(),
            start_lag: new_histogram(),
            requests: 0,
            held: 0,
            refused: 0,
            errors: 0,
            held_each_second: vec![0; seconds],
        }
    }

    /// Adds another client's measurements.
    pub fn merge(&mut self, other: &Measured) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.start_lag.add(&other.start_lag);
        self.requests += other.requests;
        self.held += other.held;
        self.refused += other.refused;
        self.errors += other.errors;
        for (mine, theirs) in self.held_each_second.iter_mut().zip(&other.held_each_second) {
            *mine += theirs;
        }
    }
}

#[expect(clippy::expect_used, reason = "the bounds are constants hdrhistogram accepts (low 1, high > 2, 3 digits)")]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, microseconds.
pub fn latency_of(histogram: &Histogram<u64>) -> Latency {
    if histogram.is_empty() {
        return Latency::default();
    }
    Latency {
        count: histogram.len(),
        mean: histogram.mean(),
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

/// Points of the latency CDF, (fraction, microseconds), dense in the tail.
pub fn cdf_of(histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut fraction = 0.0_f64;
    // 0, 0.1, …, 0.9, then each further decade of nines in ten steps.
    for decade in 0..5 {
        let remaining = 10f64.powi(-decade);
        for step in 0..10 {
            fraction = 1.0 - remaining + remaining * 0.9 * f64::from(step) / 9.0;
            points.push((fraction, histogram.value_at_quantile(fraction)));
        }
    }
    if fraction < 1.0 {
        points.push((1.0, histogram.max()));
    }
    points.dedup_by(|a, b| a.0 <= b.0);
    points
}

/// One client of a workload: what it does per request.
pub trait Stepper {
    fn step(&mut self) -> impl std::future::Future<Output = Step> + Send;
}

/// How long past the window a closed-loop client that has measured no
/// request yet may start one.
const OVERRUN_MAX: Duration = Duration::from_secs(60);

/// Records one finished request.
fn record(measured: &mut Measured, done: Step, scheduled: Instant, finished: Instant, measure_from: Instant) {
    if scheduled < measure_from {
        return;
    }
    let micros = u64::try_from(finished.duration_since(scheduled).as_micros()).unwrap_or(u64::MAX);
    measured.latency.saturating_record(micros.clamp(1, LATENCY_MAX_US));
    measured.requests += 1;
    measured.held += done.held;
    measured.refused += done.refused;
    measured.errors += done.errors;
    let second = usize::try_from(finished.duration_since(measure_from).as_secs()).unwrap_or(usize::MAX);
    if let Some(slot) = measured.held_each_second.get_mut(second) {
        *slot += done.held;
    }
}

fn seconds_of(timing: Timing) -> usize {
    usize::try_from(timing.measure.as_secs().max(1)).unwrap_or(1)
}

/// Runs every client until the run ends, each on its own task, and returns
/// what each measured (after warm-up) with the client, in order.
pub async fn run_clients<S>(clients: Vec<S>, mode: Mode, timing: Timing) -> Vec<(Measured, S)>
where
    S: Stepper + Send + 'static,
{
    match mode {
        Mode::Closed => run_closed(clients, timing).await,
        Mode::Open { rate } => run_open(clients, rate, timing).await,
    }
}

async fn run_closed<S>(clients: Vec<S>, timing: Timing) -> Vec<(Measured, S)>
where
    S: Stepper + Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let end = measure_from + timing.measure;
    let last_start = end + OVERRUN_MAX;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut measured = Measured::new(seconds_of(timing));
                loop {
                    let scheduled = Instant::now();
                    // A client whose requests are slower than the whole
                    // window (a 1024-hold batch on a loaded machine, in the
                    // smoke run's one second) still measures one, so a run
                    // never reports "nothing" for being slow.
                    if scheduled >= last_start || (scheduled >= end && measured.requests > 0) {
                        break;
                    }
                    let done = client.step().await;
                    record(&mut measured, done, scheduled, Instant::now(), measure_from);
                }
                (measured, client)
            })
        })
        .collect();
    join_all(tasks).await
}

/// Open loop: a dispatcher thread releases arrivals at `rate` per second on
/// their exact schedule (a thread's sleep is precise to tens of µs, where
/// tokio's timer rounds up to the next millisecond, which would add up to
/// a millisecond to every measured latency), into one queue that every
/// client takes the next arrival from when it is free, as a pool of
/// connections would. Latency counts from the arrival's scheduled time.
async fn run_open<S>(clients: Vec<S>, rate: f64, timing: Timing) -> Vec<(Measured, S)>
where
    S: Stepper + Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let end = measure_from + timing.measure;
    let (arrivals, queue) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(queue));
    let dispatcher = std::thread::spawn(move || {
        let mut index: u64 = 0;
        loop {
            let at = start + Duration::from_secs_f64(index as f64 / rate);
            if at >= end {
                return;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if arrivals.send(at).is_err() {
                return;
            }
            index += 1;
        }
    });
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let queue = std::sync::Arc::clone(&queue);
            tokio::spawn(async move {
                let mut measured = Measured::new(seconds_of(timing));
                loop {
                    let next = queue.lock().await.recv().await;
                    let Some(scheduled) = next else { break };
                    if scheduled >= measure_from {
                        let lag = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
                        measured.start_lag.saturating_record(lag.clamp(1, LATENCY_MAX_US));
                    }
                    let done = client.step().await;
                    record(&mut measured, done, scheduled, Instant::now(), measure_from);
                }
                (measured, client)
            })
        })
        .collect();
    let results = join_all(tasks).await;
    // The dispatcher ends at the end of the schedule; its queue is closed.
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    results
}

async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            // A client task that panicked is a bench bug: surface it.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper(Duration, Step);

    impl Stepper for Sleeper {
        async fn step(&mut self) -> Step {
            tokio::time::sleep(self.0).await;
            self.1
        }
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_the_max() {
        let mut histogram = new_histogram();
        for value in 1..=10_000u64 {
            histogram.saturating_record(value);
        }
        let cdf = cdf_of(&histogram);
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{cdf:?}");
        assert_eq!(cdf.last().map(|p| p.1), Some(histogram.max()));
        let latency = latency_of(&histogram);
        assert!(latency.p50 >= 4_990 && latency.p50 <= 5_010, "{latency:?}");
        assert!(latency.p99 >= 9_890 && latency.p99 <= 9_910, "{latency:?}");
    }

    #[tokio::test]
    async fn open_loop_counts_latency_from_the_schedule() {
        // Each step takes 20 ms but arrivals come every 5 ms: the queue
        // grows, and latency (from the scheduled start) must grow with it,
        // well past the 20 ms of service time.
        let timing = Timing { warmup: Duration::ZERO, measure: Duration::from_millis(400) };
        let client = Sleeper(Duration::from_millis(20), Step { held: 1, ..Step::default() });
        let mut results = run_clients(vec![client], Mode::Open { rate: 200.0 }, timing).await;
        let (measured, _) = results.remove(0);
        assert!(measured.requests >= 5, "{}", measured.requests);
        assert!(measured.latency.max() >= 60_000, "max {} us", measured.latency.max());
    }

    #[tokio::test]
    async fn closed_loop_records_every_step_after_warmup() {
        let timing = Timing { warmup: Duration::from_millis(50), measure: Duration::from_millis(200) };
        let client = Sleeper(Duration::from_millis(5), Step { held: 1, refused: 1, errors: 0 });
        let mut results = run_clients(vec![client], Mode::Closed, timing).await;
        let (measured, _) = results.remove(0);
        assert!(measured.requests >= 10, "{}", measured.requests);
        assert_eq!(measured.held, measured.requests);
        assert_eq!(measured.refused, measured.requests);
        assert_eq!(measured.held_each_second.iter().sum::<u64>(), measured.held);
    }
}

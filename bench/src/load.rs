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

/// Runs `client` until the run ends, recording what it did after warm-up.
/// `index` is the client's number of `clients` (open mode spreads the
/// schedule by it); `start` is shared by all clients.
pub async fn drive<S: Stepper>(
    client: &mut S,
    mode: Mode,
    timing: Timing,
    start: Instant,
    index: usize,
    clients: usize,
) -> Measured {
    let measure_from = start + timing.warmup;
    let end = measure_from + timing.measure;
    let seconds = usize::try_from(timing.measure.as_secs().max(1)).unwrap_or(1);
    let mut measured = Measured::new(seconds);
    let mut arrival: u64 = index as u64;
    loop {
        let scheduled = match mode {
            Mode::Closed => Instant::now(),
            Mode::Open { rate } => {
                let at = start + Duration::from_secs_f64(arrival as f64 / rate);
                arrival += clients as u64;
                if at > Instant::now() {
                    tokio::time::sleep_until(at.into()).await;
                }
                at
            }
        };
        if scheduled >= end {
            break;
        }
        let done = client.step().await;
        let finished = Instant::now();
        if scheduled >= measure_from {
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
        if finished >= end {
            break;
        }
    }
    measured
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
        let mut client = Sleeper(Duration::from_millis(20), Step { held: 1, ..Step::default() });
        let measured = drive(&mut client, Mode::Open { rate: 200.0 }, timing, Instant::now(), 0, 1).await;
        assert!(measured.requests >= 5, "{}", measured.requests);
        assert!(measured.latency.max() >= 60_000, "max {} us", measured.latency.max());
    }

    #[tokio::test]
    async fn closed_loop_records_every_step_after_warmup() {
        let timing = Timing { warmup: Duration::from_millis(50), measure: Duration::from_millis(200) };
        let mut client = Sleeper(Duration::from_millis(5), Step { held: 1, refused: 1, errors: 0 });
        let measured = drive(&mut client, Mode::Closed, timing, Instant::now(), 0, 1).await;
        assert!(measured.requests >= 10, "{}", measured.requests);
        assert_eq!(measured.held, measured.requests);
        assert_eq!(measured.refused, measured.requests);
        assert_eq!(measured.held_each_second.iter().sum::<u64>(), measured.held);
    }
}

//! SVG plots of a run, drawn from the same [`Report`] that becomes
//! `results.json`: throughput against client count for the flash-sale sweep,
//! a latency CDF per workload, and acknowledged holds in each second per
//! workload.
//!
//! Plots are a view of the report, never a check of it: a plot with no usable
//! data is skipped, and non-finite or non-positive values that a scale cannot
//! show are dropped or floored rather than turned into a panic. Only closed-loop
//! runs are plotted; open-loop runs are in the markdown table.
//!
//! `http-floor` (`GET /healthz`) is drawn on the latency CDFs, where its
//! requests' latency is the floor under every target's. It is left off the
//! two holds/s plots: it holds nothing, so it would be a line at zero that
//! reads as a target that failed, and its requests/s on a holds/s axis would
//! compare unlike units (a `batch-256` request is 256 holds).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::results::{HTTP_FLOOR, Report, RunResult};

/// Width and height of every plot, pixels.
const CHART_SIZE_PX: (u32, u32) = (1024, 640);
/// The client count whose runs stand for a workload in the per-workload plots;
/// when a target has no run at this count its largest count is used.
const CLIENTS_PREFERRED: u32 = 50;
/// Points drawn per line at most, so a long run or a fine CDF keeps the SVG
/// small; more are thinned out.
const SERIES_POINTS_MAX: usize = 2000;
/// Largest CDF fraction plotted: 1.0 would sit at infinity on the percentile
/// axis, so fractions are clamped to this (99.999 %, x = 5).
const CDF_FRACTION_MAX: f64 = 0.99999;
/// Smallest latency shown on the log scale, milliseconds (1 µs); a zero
/// latency is drawn here.
const LATENCY_MS_MIN: f64 = 0.001;
/// The sweep workload whose client counts make the throughput plot.
const WORKLOAD_SWEEP: &str = "flash-sale";
const MODE_CLOSED: &str = "closed";
/// Space above the highest throughput, as a factor, so the legend in the top
/// corner does not cover the lines.
const Y_HEADROOM: f64 = 1.3;

/// Percentile ticks of the CDF plot: position on the `-log10(1 - fraction)`
/// axis and label.
const CDF_TICKS: [(f64, &str); 7] = [
    (0.0, "0%"),
    (std::f64::consts::LOG10_2, "50%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (5.0, "99.999%"),
];

/// Known targets in legend order, each with a colour of its own (Tableau 10)
/// so a target looks the same in every plot and every run.
const TARGET_COLOURS: [(&str, RGBColor); 6] = [
    ("tally", RGBColor(0x1f, 0x77, 0xb4)),
    ("tally-3", RGBColor(0x2c, 0xa0, 0x2c)),
    // Grey: a reference line, not a competitor.
    (HTTP_FLOOR, RGBColor(0x7f, 0x7f, 0x7f)),
    ("redis-always", RGBColor(0xd6, 0x27, 0x28)),
    ("redis-everysec", RGBColor(0xff, 0x7f, 0x0e)),
    ("postgres", RGBColor(0x94, 0x67, 0xbd)),
];
/// Colours for targets not in [`TARGET_COLOURS`], picked by a hash of the name;
/// none of them is a known target's.
const OTHER_COLOURS: [RGBColor; 4] =
    [RGBColor(0x8c, 0x56, 0x4b), RGBColor(0xe3, 0x77, 0xc2), RGBColor(0xbc, 0xbd, 0x22), RGBColor(0x17, 0xbe, 0xcf)];

type DrawResult = Result<(), DrawingAreaErrorKind<io::Error>>;

/// Writes the run's plots as SVG files into `dir` and returns their paths.
///
/// Files: `throughput-vs-clients.svg`, `latency-cdf-<workload>.svg` and
/// `holds-per-second-<workload>.svg`; each only when it has data. `dir` is
/// created if a plot is written and it does not exist.
pub fn write_plots(report: &Report, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();

    if let Some(series) = throughput_series(report) {
        let path = dir.join("throughput-vs-clients.svg");
        write_svg(&path, |root| draw_throughput(root, &series))?;
        written.push(path);
    }

    for (workload, runs) in representative_runs(report) {
        let name = file_stem(workload);

        let cdfs: Vec<CdfSeries<'_>> = runs.iter().filter_map(|(target, run)| cdf_series(target, run)).collect();
        if !cdfs.is_empty() {
            let path = unique_path(dir, &format!("latency-cdf-{name}"), &written);
            write_svg(&path, |root| draw_cdf(root, workload, &cdfs))?;
            written.push(path);
        }

        // Not the floor: it holds nothing (see the module docs).
        let per_second: Vec<SecondsSeries<'_>> = runs
            .iter()
            .filter(|(_, run)| run.holds_stock())
            .filter_map(|(target, run)| seconds_series(target, run))
            .collect();
        if !per_second.is_empty() {
            let path = unique_path(dir, &format!("holds-per-second-{name}"), &written);
            write_svg(&path, |root| draw_holds_per_second(root, workload, &per_second))?;
            written.push(path);
        }
    }

    Ok(written)
}

/// Orders targets as in [`TARGET_COLOURS`], then any others by name, so
/// legends list them the same way in every plot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TargetKey<'a> {
    rank: usize,
    name: &'a str,
}

impl<'a> TargetKey<'a> {
    fn new(name: &'a str) -> Self {
        let rank = TARGET_COLOURS.iter().position(|(known, _)| *known == name).unwrap_or(TARGET_COLOURS.len());
        Self { rank, name }
    }

    fn colour(&self) -> RGBColor {
        if let Some((_, colour)) = TARGET_COLOURS.get(self.rank) {
            return *colour;
        }
        // FNV-1a: stable across runs and platforms, unlike the std hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let len = OTHER_COLOURS.len() as u64;
        usize::try_from(hash % len).ok().and_then(|i| OTHER_COLOURS.get(i)).copied().unwrap_or(BLACK)
    }
}

fn is_closed(run: &RunResult) -> bool {
    run.mode.eq_ignore_ascii_case(MODE_CLOSED)
}

/// For each workload with closed-loop runs, the run standing for each target:
/// the one at [`CLIENTS_PREFERRED`] clients, else the one with the most
/// clients (the first such run in the report on a tie).
fn representative_runs(report: &Report) -> BTreeMap<&str, BTreeMap<TargetKey<'_>, &RunResult>> {
    let mut chosen: BTreeMap<&str, BTreeMap<TargetKey<'_>, &RunResult>> = BTreeMap::new();
    for run in report.runs.iter().filter(|run| is_closed(run)) {
        let per_target = chosen.entry(run.workload.as_str()).or_default();
        let preference = |r: &RunResult| (r.clients == CLIENTS_PREFERRED, r.clients);
        per_target
            .entry(TargetKey::new(&run.target))
            .and_modify(|best| {
                if preference(run) > preference(best) {
                    *best = run;
                }
            })
            .or_insert(run);
    }
    chosen
}

/// A file name stem safe on any file system: ASCII letters, digits, `-` and
/// `_`; anything else becomes `-`.
fn file_stem(workload: &str) -> String {
    let stem: String = workload
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    if stem.is_empty() { "unnamed".to_owned() } else { stem }
}

/// `dir/<stem>.svg`, or with a numeric suffix when two workloads map to the
/// same stem, so neither plot overwrites the other.
fn unique_path(dir: &Path, stem: &str, written: &[PathBuf]) -> PathBuf {
    let mut path = dir.join(format!("{stem}.svg"));
    let mut suffix = 2u32;
    while written.contains(&path) {
        path = dir.join(format!("{stem}-{suffix}.svg"));
        suffix = suffix.saturating_add(1);
    }
    path
}

/// Renders into memory and writes the file only when drawing succeeded, so a
/// failed plot leaves no half-written SVG and file errors are not lost in a
/// backend's `Drop`.
fn write_svg(path: &Path, draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult) -> io::Result<()> {
    let to_io = |e: DrawingAreaErrorKind<io::Error>| io::Error::other(format!("plotting {}: {e}", path.display()));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE_PX).into_drawing_area();
        root.fill(&WHITE).map_err(to_io)?;
        draw(&root).map_err(to_io)?;
        root.present().map_err(to_io)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, svg)
}

/// Keeps at most [`SERIES_POINTS_MAX`] points, evenly spaced by index, always
/// with the last one.
fn thin<T: Copy>(points: Vec<T>) -> Vec<T> {
    if points.len() <= SERIES_POINTS_MAX {
        return points;
    }
    let stride = points.len().div_ceil(SERIES_POINTS_MAX);
    let last = points.last().copied();
    let mut kept: Vec<T> = points.into_iter().step_by(stride).collect();
    if let Some(last) = last {
        kept.push(last);
    }
    kept
}

/// `1234.0` → `1.23k`, for axis labels of counts and rates.
fn format_count(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim_decimals(value / 1e6))
    } else if magnitude >= 1e3 {
        format!("{}k", trim_decimals(value / 1e3))
    } else {
        trim_decimals(value)
    }
}

/// At most three significant decimals, without trailing zeros.
fn trim_decimals(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

/// Ticks for a log axis over `[lo, hi]`: 1, 2, 5 times each power of ten
/// inside it, or only the powers of ten when that would be too many.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10();
    let mantissas: &[f64] = if decades <= 3.5 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let mut ticks = Vec::new();
    let mut power = 10f64.powf(lo.log10().floor());
    // Bounded by the axis range: at most a few hundred decades for an f64.
    while power <= hi && ticks.len() < 64 {
        for m in mantissas {
            let tick = power * m;
            if tick >= lo * (1.0 - 1e-9) && tick <= hi * (1.0 + 1e-9) {
                ticks.push(tick);
            }
        }
        power *= 10.0;
    }
    ticks
}

/// Widens `[min, max]` (both positive) to whole decades so a log axis always
/// has a power-of-ten tick at each end.
fn log_bounds(min: f64, max: f64) -> (f64, f64) {
    let lo = 10f64.powf(min.log10().floor());
    let mut hi = 10f64.powf(max.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

fn legend_line(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

// ---------------------------------------------------------------------------
// Throughput against clients.

struct ThroughputSeries<'a> {
    target: TargetKey<'a>,
    /// (clients, holds per second), ascending by clients.
    points: Vec<(f64, f64)>,
}

/// The flash-sale sweep per target, or `None` when no target has two client
/// counts to draw a line between. Repeated runs at one count are averaged.
fn throughput_series(report: &Report) -> Option<Vec<ThroughputSeries<'_>>> {
    let mut sums: BTreeMap<TargetKey<'_>, BTreeMap<u32, (f64, u32)>> = BTreeMap::new();
    for run in &report.runs {
        // Not the floor: it holds nothing (see the module docs).
        if !is_closed(run) || run.workload != WORKLOAD_SWEEP || !run.holds_stock() {
            continue;
        }
        if run.clients == 0 || !run.holds_per_s.is_finite() || run.holds_per_s < 0.0 {
            continue;
        }
        let (sum, count) = sums.entry(TargetKey::new(&run.target)).or_default().entry(run.clients).or_default();
        *sum += run.holds_per_s;
        *count = count.saturating_add(1);
    }
    let series: Vec<ThroughputSeries<'_>> = sums
        .into_iter()
        .map(|(target, by_clients)| ThroughputSeries {
            target,
            points: by_clients
                .into_iter()
                .map(|(clients, (sum, count))| (f64::from(clients), sum / f64::from(count.max(1))))
                .collect(),
        })
        .collect();
    series.iter().any(|s| s.points.len() >= 2).then_some(series)
}

fn draw_throughput(root: &DrawingArea<SVGBackend<'_>, Shift>, series: &[ThroughputSeries<'_>]) -> DrawResult {
    let mut clients: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    clients.sort_by(f64::total_cmp);
    clients.dedup();
    let clients_min = clients.first().copied().unwrap_or(1.0);
    let clients_max = clients.last().copied().unwrap_or(1.0);
    // Clients are at least 1, so the log axis never sees zero.
    let x_range = (clients_min / 1.5)..(clients_max * 1.5);

    let holds_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let y_max = if holds_max > 0.0 { holds_max * Y_HEADROOM } else { 1.0 };

    let mut chart = ChartBuilder::on(root)
        .caption("flash-sale: acknowledged holds per second vs concurrent clients (closed loop)", ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range.log_scale().with_key_points(clients), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients (log scale)")
        .y_desc("acknowledged holds/s")
        .x_label_formatter(&|x| format_count(*x))
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;

    for s in series {
        let colour = s.target.colour();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)).point_size(4))?
            .label(s.target.name)
            .legend(legend_line(colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Latency CDF.

struct CdfSeries<'a> {
    target: &'a TargetKey<'a>,
    clients: u32,
    /// (`-log10(1 - fraction)`, milliseconds), ascending.
    points: Vec<(f64, f64)>,
}

fn cdf_series<'a>(target: &'a TargetKey<'a>, run: &RunResult) -> Option<CdfSeries<'a>> {
    let mut raw: Vec<(f64, u64)> = run.cdf.iter().copied().filter(|(fraction, _)| fraction.is_finite()).collect();
    raw.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    // Thin by distance along the percentile axis rather than by index, so
    // the tail (where the points that matter are) keeps its detail.
    let x_step_min = CDF_TICKS[CDF_TICKS.len() - 1].0 / SERIES_POINTS_MAX as f64;
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(raw.len().min(SERIES_POINTS_MAX + 1));
    let last_index = raw.len().saturating_sub(1);
    for (i, (fraction, latency_us)) in raw.into_iter().enumerate() {
        let x = -(1.0 - fraction.clamp(0.0, CDF_FRACTION_MAX)).log10();
        // u64 → f64 rounds only above 2^53 µs, far beyond any latency.
        let latency_ms = (latency_us as f64 / 1000.0).max(LATENCY_MS_MIN);
        let far_enough = points.last().is_none_or(|(last_x, _)| x - last_x >= x_step_min);
        if far_enough || i == last_index {
            points.push((x, latency_ms));
        }
    }
    (!points.is_empty()).then_some(CdfSeries { target, clients: run.clients, points })
}

fn draw_cdf(root: &DrawingArea<SVGBackend<'_>, Shift>, workload: &str, series: &[CdfSeries<'_>]) -> DrawResult {
    let x_data_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    // Always show up to 99 %, and end on a whole tick.
    let x_max = x_data_max.max(2.0).ceil().min(CDF_TICKS[CDF_TICKS.len() - 1].0);

    let latencies = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ms_min = latencies.clone().fold(f64::INFINITY, f64::min);
    let ms_max = latencies.fold(LATENCY_MS_MIN, f64::max);
    let (y_lo, y_hi) = log_bounds(ms_min.min(ms_max), ms_max);

    let clients: Vec<u32> = series.iter().map(|s| s.clients).collect();
    let clients_note = if clients.windows(2).all(|w| w[0] == w[1]) {
        format!("{} clients", clients.first().copied().unwrap_or(0))
    } else {
        "clients per target in legend".to_owned()
    };

    let mut chart = ChartBuilder::on(root)
        .caption(format!("{workload}: request latency by percentile (closed loop, {clients_note})"), ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            PercentileAxis::new(x_max),
            (y_lo..y_hi).log_scale().with_key_points(log_ticks(y_lo, y_hi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile of requests")
        .y_desc("request latency (ms, log scale)")
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&|y| trim_decimals(*y))
        .draw()?;

    for s in series {
        let colour = s.target.colour();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))?
            .label(format!("{} ({} clients)", s.target.name, s.clients))
            .legend(legend_line(colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The percentile axis: linear in `-log10(1 - fraction)`, with ticks only at
/// the [`CDF_TICKS`] up to its end, labelled as percentiles.
///
/// A type of its own because plotters offers custom ticks on an `f64` axis
/// only without label formatting.
struct PercentileAxis {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl PercentileAxis {
    fn new(x_max: f64) -> Self {
        let ticks = CDF_TICKS.iter().map(|(x, _)| *x).filter(|x| *x <= x_max + 1e-9).collect();
        Self { linear: (0.0..x_max).into(), ticks }
    }
}

impl Ranged for PercentileAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold grid lines only: light lines between percentiles mean nothing.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

fn percentile_label(x: &f64) -> String {
    CDF_TICKS
        .iter()
        .find(|(tick, _)| (tick - x).abs() < 1e-6)
        .map_or_else(|| format!("{}%", trim_decimals(100.0 * (1.0 - 10f64.powf(-x)))), |(_, label)| (*label).to_owned())
}

// ---------------------------------------------------------------------------
// Holds in each second.

struct SecondsSeries<'a> {
    target: &'a TargetKey<'a>,
    clients: u32,
    /// (second since measuring started, holds acknowledged in it).
    points: Vec<(f64, f64)>,
}

fn seconds_series<'a>(target: &'a TargetKey<'a>, run: &RunResult) -> Option<SecondsSeries<'a>> {
    // u64 → f64 is exact for any count of holds in one second.
    let points: Vec<(f64, f64)> =
        run.holds_each_second.iter().enumerate().map(|(second, holds)| (second as f64, *holds as f64)).collect();
    (!points.is_empty()).then(|| SecondsSeries { target, clients: run.clients, points: thin(points) })
}

fn draw_holds_per_second(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    workload: &str,
    series: &[SecondsSeries<'_>],
) -> DrawResult {
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let holds_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let y_max = if holds_max > 0.0 { holds_max * Y_HEADROOM } else { 1.0 };

    let mut chart = ChartBuilder::on(root)
        .caption(format!("{workload}: acknowledged holds in each second (closed loop)"), ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since measurement started")
        .y_desc("acknowledged holds/s")
        .x_label_formatter(&|x| trim_decimals(*x))
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;

    for s in series {
        let colour = s.target.colour();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))?
            .label(format!("{} ({} clients)", s.target.name, s.clients))
            .legend(legend_line(colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Latency;

    fn run(target: &str, workload: &str, clients: u32, holds_per_s: f64) -> RunResult {
        let base_us = match target {
            "tally" => 200,
            "redis-always" => 900,
            _ => 3000,
        };
        RunResult {
            target: target.to_owned(),
            workload: workload.to_owned(),
            mode: "closed".to_owned(),
            clients,
            batch: 1,
            seconds: 3.0,
            requests_per_s: holds_per_s,
            holds_per_s,
            latency: Latency { count: 1000, mean: 300.0, p50: base_us, p90: base_us * 2, ..Latency::default() },
            cdf: vec![
                (0.0, 0),
                (0.5, base_us),
                (0.9, base_us * 2),
                (0.99, base_us * 5),
                (0.999, base_us * 20),
                (1.0, base_us * 50),
            ],
            holds_each_second: vec![u64::from(clients) * 10, u64::from(clients) * 10 + 7, 0],
            ..RunResult::default()
        }
    }

    fn sweep_report() -> Report {
        let targets = ["tally", "redis-always", "postgres"];
        let mut runs = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            for clients in [1, 10, 50] {
                runs.push(run(target, "flash-sale", clients, f64::from(clients) * 100.0 / (i as f64 + 1.0)));
            }
            runs.push(run(target, "uniform", 200, 5000.0));
        }
        Report { runs, ..Report::default() }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    #[test]
    fn sweep_report_writes_every_plot_with_every_target() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let written = write_plots(&sweep_report(), dir.path()).unwrap_or_else(|e| panic!("write_plots: {e}"));

        let names: Vec<String> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        for expected in [
            "throughput-vs-clients.svg",
            "latency-cdf-flash-sale.svg",
            "holds-per-second-flash-sale.svg",
            "latency-cdf-uniform.svg",
            "holds-per-second-uniform.svg",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        assert_eq!(names.len(), 5, "{names:?}");

        for path in &written {
            assert!(path.starts_with(dir.path()));
            let svg = read(path);
            assert!(svg.starts_with("<svg"), "{} does not start with <svg", path.display());
            for target in ["tally", "redis-always", "postgres"] {
                assert!(svg.contains(target), "{} lacks {target}", path.display());
            }
        }
        // The per-workload plots stand on the 50-client runs.
        assert!(read(&dir.path().join("latency-cdf-flash-sale.svg")).contains("tally (50 clients)"));
    }

    #[test]
    fn empty_report_writes_no_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let written = write_plots(&Report::default(), dir.path()).unwrap_or_else(|e| panic!("write_plots: {e}"));
        assert!(written.is_empty());
        let entries = std::fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("read_dir: {e}")).count();
        assert_eq!(entries, 0);
    }

    #[test]
    fn single_client_count_skips_throughput_plot() {
        let report = Report {
            runs: vec![run("tally", "flash-sale", 50, 1000.0), run("postgres", "flash-sale", 50, 400.0)],
            ..Report::default()
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let written = write_plots(&report, dir.path()).unwrap_or_else(|e| panic!("write_plots: {e}"));
        assert!(!dir.path().join("throughput-vs-clients.svg").exists());
        assert_eq!(written.len(), 2);
    }

    #[test]
    fn largest_client_count_stands_in_when_none_at_fifty() {
        let report = Report {
            runs: vec![
                run("tally", "mixed", 10, 1.0),
                run("tally", "mixed", 200, 2.0),
                run("tally", "mixed", 100, 3.0),
            ],
            ..Report::default()
        };
        let chosen = representative_runs(&report);
        let clients: Vec<u32> = chosen["mixed"].values().map(|r| r.clients).collect();
        assert_eq!(clients, vec![200]);
    }

    #[test]
    fn degenerate_values_do_not_panic_and_open_runs_are_not_plotted() {
        let mut zeros = run("tally", "expiry", 50, 0.0);
        zeros.cdf = vec![(f64::NAN, 5), (0.5, 0), (f64::INFINITY, 10), (1.0, 0)];
        zeros.holds_each_second = vec![0, 0];
        let mut nan = run("tally-3", "flash-sale", 1, f64::NAN);
        nan.cdf.clear();
        nan.holds_each_second.clear();
        let mut open = run("postgres", "half-load", 50, 10.0);
        open.mode = "open".to_owned();
        let weird = run("some/../odd name", "a/b c", 50, 10.0);
        let report = Report { runs: vec![zeros, nan, open, weird], ..Report::default() };

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let written = write_plots(&report, dir.path()).unwrap_or_else(|e| panic!("write_plots: {e}"));
        let names: Vec<String> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"latency-cdf-expiry.svg".to_owned()), "{names:?}");
        assert!(names.contains(&"holds-per-second-a-b-c.svg".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("half-load") || n.contains("throughput")), "{names:?}");
        for path in &written {
            assert_eq!(path.parent(), Some(dir.path()));
            assert!(read(path).starts_with("<svg"));
        }
    }

    #[test]
    fn target_colours_are_stable_and_distinct() {
        let known: Vec<RGBColor> = TARGET_COLOURS.iter().map(|(name, _)| TargetKey::new(name).colour()).collect();
        for (i, a) in known.iter().enumerate() {
            for b in &known[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(TargetKey::new("mystery").colour(), TargetKey::new("mystery").colour());
        assert!(OTHER_COLOURS.iter().all(|other| !known.contains(other)), "an unknown target would look known");
    }

    #[test]
    fn the_floor_is_on_latency_plots_only() {
        let mut report = sweep_report();
        for clients in [1, 10, 50] {
            let mut floor = run(HTTP_FLOOR, "flash-sale", clients, 0.0);
            floor.requests_per_s = f64::from(clients) * 1000.0;
            floor.batch = 0;
            report.runs.push(floor);
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        write_plots(&report, dir.path()).unwrap_or_else(|e| panic!("write_plots: {e}"));
        assert!(read(&dir.path().join("latency-cdf-flash-sale.svg")).contains("http-floor (50 clients)"));
        for holds in ["throughput-vs-clients.svg", "holds-per-second-flash-sale.svg"] {
            let svg = read(&dir.path().join(holds));
            assert!(svg.contains("tally") && !svg.contains(HTTP_FLOOR), "{holds} shows the floor");
        }
    }

    #[test]
    fn log_ticks_cover_a_range_inside_one_decade() {
        let (lo, hi) = log_bounds(2.0, 8.0);
        assert_eq!((lo, hi), (1.0, 10.0));
        assert_eq!(log_ticks(lo, hi), vec![1.0, 2.0, 5.0, 10.0]);
    }
}

//! The run's markdown table, its goals as measured ratios, Tally's
//! throughput as a share of the HTTP floor, and the machine it ran on.

use std::fmt::Write as _;

use crate::results::{FloorShare, Goal, HTTP_FLOOR, Report, RunResult};

/// The targets whose throughput is given as a share of `http-floor`'s.
const FLOOR_COMPARED: [&str; 2] = ["tally", "tally-3"];
/// The workload whose requests are not all holds (reads, holds, confirms,
/// releases, adjustments): its share of the floor counts every request.
const WORKLOAD_MIXED: &str = "mixed";
const MODE_CLOSED: &str = "closed";
/// Snapshots the half-load run must take inside its measured window for
/// its p99 to count (issue 14: the tail stays flat while they run).
const HALF_LOAD_SNAPSHOTS_MIN: u64 = 2;

/// The goals, from this run's results. A goal whose sides did not
/// both run is listed with `met: None`.
pub fn goals(report: &Report, clients: u32) -> Vec<Goal> {
    let closed = |target: &str, workload: &str| {
        report
            .runs
            .iter()
            .find(|r| r.target == target && r.workload == workload && r.mode == "closed" && r.clients == clients)
    };
    let hot = |target: &str| closed(target, "flash-sale").map(|r| r.holds_per_s);
    let ratio = |name: &str, ours: &str, theirs: &str, at_least: f64| {
        let (a, b) = (hot(ours), hot(theirs));
        let measured = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x ({a:.0} / {b:.0} holds/s)", a / b),
            _ => "not measured (a side did not run)".into(),
        };
        let met = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b >= at_least),
            _ => None,
        };
        Goal {
            name: format!("{name}: flash-sale, 1 hold per request, {clients} clients"),
            required: format!(">= {at_least}x"),
            measured,
            met,
        }
    };
    let mut goals = vec![
        ratio("tally vs redis-always", "tally", "redis-always", 2.0),
        ratio("tally vs postgres", "tally", "postgres", 20.0),
        ratio("tally-3 vs redis-always", "tally-3", "redis-always", 1.0),
    ];
    let batch = report
        .runs
        .iter()
        .filter(|r| r.target == "tally" && r.workload.starts_with("batch-"))
        .max_by(|a, b| a.holds_per_s.total_cmp(&b.holds_per_s));
    goals.push(Goal {
        name: "tally batch endpoint, single node".into(),
        required: ">= 1000000 holds/s".into(),
        measured: batch.map_or("not measured".into(), |r| format!("{:.0} holds/s ({})", r.holds_per_s, r.workload)),
        met: batch.map(|r| r.holds_per_s >= 1_000_000.0),
    });
    let half = report.runs.iter().find(|r| r.target == "tally" && r.workload == "flash-sale" && r.mode == "open");
    goals.push(Goal {
        name: "tally p99 at half of peak (open loop, flash-sale, snapshots in the window)".into(),
        required: format!("< 5 ms, with >= {HALF_LOAD_SNAPSHOTS_MIN} snapshots in the window"),
        measured: half.map_or("not measured".into(), half_load_measured),
        met: half.map(|r| r.latency.p99 < 5_000 && r.snapshots_in_window.is_some_and(|n| n >= HALF_LOAD_SNAPSHOTS_MIN)),
    });
    let expiry = report.runs.iter().find(|r| r.target == "tally" && r.workload == "expiry");
    let lag = expiry.and_then(|r| r.expiry_lag);
    goals.push(Goal {
        name: "tally expiry lag p99 (deadline to a live subscriber)".into(),
        required: "< 250 ms".into(),
        measured: lag.map_or("not measured".into(), |l| format!("{:.1} ms", l.p99 as f64 / 1000.0)),
        met: lag.map(|l| l.p99 < 250_000),
    });
    goals
}

/// The half-load goal's figure: `p99 3.20 ms with 4 snapshots in the
/// window, at 15000 req/s`. A run that did not count its snapshots (results
/// from before they were) says so, and cannot meet the goal.
fn half_load_measured(run: &RunResult) -> String {
    let p99_ms = run.latency.p99 as f64 / 1000.0;
    let rate = run.rate.unwrap_or(0.0);
    match run.snapshots_in_window {
        Some(1) => format!("p99 {p99_ms:.2} ms with 1 snapshot in the window, at {rate:.0} req/s"),
        Some(n) => format!("p99 {p99_ms:.2} ms with {n} snapshots in the window, at {rate:.0} req/s"),
        None => format!("p99 {p99_ms:.2} ms (snapshots in the window not counted), at {rate:.0} req/s"),
    }
}

/// `tally`'s and `tally-3`'s throughput as a percentage of `http-floor`'s,
/// for each workload and client count where both ran closed loop in this
/// run. Both sides count requests, since the floor's are `GET /healthz`:
/// Tally's that did the workload's work are its acknowledged holds ÷ holds
/// per request (a `batch-256` request is one request), or for `mixed` every
/// request answered. Open-loop runs are left out: their rate is the one
/// offered, not a capacity.
pub fn floor_shares(report: &Report) -> Vec<FloorShare> {
    let floor_of = |workload: &str, clients: u32| {
        report
            .runs
            .iter()
            .find(|r| r.target == HTTP_FLOOR && r.workload == workload && r.clients == clients && r.mode == MODE_CLOSED)
    };
    report
        .runs
        .iter()
        .filter(|r| FLOOR_COMPARED.contains(&r.target.as_str()) && r.mode == MODE_CLOSED)
        .filter_map(|run| {
            let floor = floor_of(&run.workload, run.clients)?;
            let requests_per_s = if run.workload == WORKLOAD_MIXED {
                run.requests_per_s
            } else {
                run.holds_per_s / f64::from(run.batch.max(1))
            };
            Some(FloorShare {
                target: run.target.clone(),
                workload: run.workload.clone(),
                clients: run.clients,
                holds_per_s: run.holds_per_s,
                batch: run.batch.max(1),
                requests_per_s,
                floor_requests_per_s: floor.requests_per_s,
                percent: (floor.requests_per_s > 0.0).then(|| 100.0 * requests_per_s / floor.requests_per_s),
            })
        })
        .collect()
}

/// One line of the floor section: `flash-sale, 50 clients: tally = 37.2% of
/// http-floor (…)`, with the figures it was computed from.
fn floor_line(share: &FloorShare) -> String {
    let percent = share.percent.map_or("n/a".to_owned(), |p| format!("{p:.1}%"));
    let ours = if share.workload == WORKLOAD_MIXED {
        format!("{:.0} req/s", share.requests_per_s)
    } else if share.batch > 1 {
        format!("{:.0} holds/s ÷ {} = {:.0} req/s", share.holds_per_s, share.batch, share.requests_per_s)
    } else {
        format!("{:.0} holds/s", share.holds_per_s)
    };
    let clients = if share.clients == 1 { "1 client".to_owned() } else { format!("{} clients", share.clients) };
    format!(
        "{}, {clients}: {} = {percent} of {HTTP_FLOOR} ({ours}; {HTTP_FLOOR} {:.0} req/s)",
        share.workload, share.target, share.floor_requests_per_s
    )
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The run as markdown: the results table, the goals, what was skipped.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# tally-bench results\n");
    let _ = writeln!(out, "- Started: {}", report.started);
    let _ = writeln!(out, "- Command: `{}`", report.command);
    let _ = writeln!(out, "- Machine: {}\n", report.machine);
    let _ = writeln!(
        out,
        "| target | workload | mode | clients | holds/s | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | oversell | lost |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &report.runs {
        let _ = writeln!(out, "{}", row(run));
    }
    floor_section(&mut out, report);
    expiry_section(&mut out, report);
    goals_section(&mut out, report);
    start_lag_section(&mut out, report);
    problems_section(&mut out, report);
    out
}

/// Each target's share of the HTTP floor.
fn floor_section(out: &mut String, report: &Report) {
    if !report.floor_shares.is_empty() {
        let _ = writeln!(out, "\n## Against the HTTP floor\n");
        let _ = writeln!(
            out,
            "`{HTTP_FLOOR}` is `GET /healthz` on one `tally` node, started as for `tally`, with the same \
             clients and timing: the most requests per second this machine's HTTP path gives. It holds \
             nothing, so its holds/s, oversell and lost are n/a. Tally's side counts the requests that did \
             the workload's work: acknowledged holds ÷ holds per request, or every request for `mixed`.\n"
        );
        for share in &report.floor_shares {
            let _ = writeln!(out, "- {}", floor_line(share));
        }
    }
}

/// How late expiries reached a live subscriber.
fn expiry_section(out: &mut String, report: &Report) {
    let lags: Vec<&RunResult> = report.runs.iter().filter(|r| r.expiry_lag.is_some()).collect();
    if !lags.is_empty() {
        let _ = writeln!(out, "\n## Expiry lag (deadline to a live subscriber)\n");
        let _ = writeln!(out, "| target | expiries | p50 ms | p99 ms | p99.9 ms | max ms |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for run in lags {
            if let Some(lag) = run.expiry_lag {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    run.target,
                    lag.count,
                    ms(lag.p50),
                    ms(lag.p99),
                    ms(lag.p999),
                    ms(lag.max)
                );
            }
        }
    }
}

/// Each goal, required against measured.
fn goals_section(out: &mut String, report: &Report) {
    if !report.goals.is_empty() {
        let _ = writeln!(out, "\n## Goals\n");
        let _ = writeln!(out, "| goal | required | measured | met |");
        let _ = writeln!(out, "|---|---|---|---|");
        for goal in &report.goals {
            let met = match goal.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(out, "| {} | {} | {} | {met} |", goal.name, goal.required, goal.measured);
        }
    }
}

/// How late the open-loop generator started its requests.
fn start_lag_section(out: &mut String, report: &Report) {
    let open: Vec<&RunResult> = report.runs.iter().filter(|r| r.start_lag.is_some()).collect();
    if !open.is_empty() {
        let _ = writeln!(out, "\n## Open loop: start lag of the load generator\n");
        let _ = writeln!(
            out,
            "How late requests started after their scheduled time (no free connection, or the bench not \
             scheduled in time on the shared cores). It is part of the latency above.\n"
        );
        let _ = writeln!(out, "| target | workload | rate/s | p50 ms | p99 ms | p99.9 ms | snapshots in window |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for run in open {
            if let Some(lag) = run.start_lag {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} | {} | {} |",
                    run.target,
                    run.workload,
                    run.rate.unwrap_or(0.0),
                    ms(lag.p50),
                    ms(lag.p99),
                    ms(lag.p999),
                    run.snapshots_in_window.map_or("n/a".to_owned(), |n| n.to_string())
                );
            }
        }
    }
}

/// Correctness problems, and the runs that were skipped.
fn problems_section(out: &mut String, report: &Report) {
    let problems: Vec<&RunResult> = report.runs.iter().filter(|r| r.check.failed()).collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "\n## Correctness problems\n");
        for run in problems {
            let _ = writeln!(out, "- {} {}: {}", run.target, run.workload, run.check.problems.join("; "));
        }
    }
    if !report.skipped.is_empty() {
        let _ = writeln!(out, "\n## Skipped\n");
        for skipped in &report.skipped {
            let _ = writeln!(
                out,
                "- {}{} {}: {}",
                if skipped.failed { "**FAILED** " } else { "" },
                skipped.target,
                skipped.workload.as_deref().unwrap_or("(all workloads)"),
                skipped.reason
            );
        }
    }
}

fn row(run: &RunResult) -> String {
    let mode = match run.rate {
        Some(rate) => format!("open {rate:.0}/s"),
        None => run.mode.clone(),
    };
    // The floor holds nothing: its holds/s and checks are not applicable.
    let (holds_per_s, oversell, lost) = if run.holds_stock() {
        (format!("{:.0}", run.holds_per_s), run.check.oversell.to_string(), run.check.lost.to_string())
    } else {
        ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned())
    };
    format!(
        "| {} | {} | {mode} | {} | {holds_per_s} | {:.0} | {} | {} | {} | {} | {} | {oversell} | {lost} |",
        run.target,
        run.workload,
        run.clients,
        run.requests_per_s,
        ms(run.latency.p50),
        ms(run.latency.p99),
        ms(run.latency.p999),
        ms(run.latency.max),
        run.errors,
    )
}

/// Cores, memory, kernel and CPU model of this machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({model}), {memory_gib:.1} GiB, Linux {}", kernel.trim())
}

/// Now as RFC 3339 UTC, seconds.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Latency;

    fn run(target: &str, workload: &str, holds: f64) -> RunResult {
        RunResult {
            target: target.into(),
            workload: workload.into(),
            mode: "closed".into(),
            clients: 50,
            holds_per_s: holds,
            latency: Latency { p99: 1500, ..Latency::default() },
            ..RunResult::default()
        }
    }

    #[test]
    fn goals_are_ratios_of_the_same_run() {
        let report = Report {
            runs: vec![run("tally", "flash-sale", 100.0), run("redis-always", "flash-sale", 40.0)],
            ..Report::default()
        };
        let goals = goals(&report, 50);
        assert_eq!(goals[0].met, Some(true), "{:?}", goals[0]);
        assert!(goals[0].measured.starts_with("2.50x"), "{:?}", goals[0]);
        assert_eq!(goals[1].met, None, "postgres did not run");
        assert_eq!(goals[2].met, None, "tally-3 did not run");
        let text = markdown(&Report { goals, ..report });
        assert!(text.contains("| tally | flash-sale | closed | 50 | 100 |"), "{text}");
    }

    fn floor(workload: &str, requests: f64) -> RunResult {
        RunResult {
            requests_per_s: requests,
            check: crate::results::Check::not_applicable(crate::floor::NOT_CHECKED),
            ..run(HTTP_FLOOR, workload, 0.0)
        }
    }

    #[test]
    fn floor_share_compares_requests_of_the_same_workload_and_clients() {
        let mut batch = run("tally", "batch-256", 25_600.0);
        batch.batch = 256;
        let mut mixed = run("tally", "mixed", 100.0);
        mixed.requests_per_s = 400.0;
        let mut half_load = run("tally", "flash-sale", 150.0);
        half_load.mode = "open".into();
        let mut other_clients = run("tally-3", "flash-sale", 80.0);
        other_clients.clients = 10;
        let mut one = run("tally", "flash-sale", 90.0);
        one.clients = 1;
        let mut floor_one = floor("flash-sale", 600.0);
        floor_one.clients = 1;
        let report = Report {
            runs: vec![
                run("tally", "flash-sale", 300.0),
                half_load,
                batch,
                mixed,
                run("tally-3", "flash-sale", 200.0),
                other_clients,
                one,
                run("tally", "uniform", 50.0),
                floor("flash-sale", 1000.0),
                floor_one,
                floor("batch-256", 800.0),
                floor("mixed", 1000.0),
                floor("uniform", 0.0),
            ],
            ..Report::default()
        };
        let shares = floor_shares(&report);
        let percent = |target: &str, workload: &str| {
            shares.iter().find(|s| s.target == target && s.workload == workload).and_then(|s| s.percent)
        };
        assert_eq!(shares.len(), 6, "the open-loop run and tally-3 at 10 clients have no floor: {shares:?}");
        assert_eq!(percent("tally", "flash-sale"), Some(30.0));
        assert_eq!(percent("tally", "batch-256"), Some(12.5), "25600 holds/s ÷ 256 = 100 req/s of 800");
        assert_eq!(percent("tally", "mixed"), Some(40.0), "mixed counts every request");
        assert_eq!(percent("tally-3", "flash-sale"), Some(20.0));
        assert_eq!(percent("tally", "uniform"), None, "a floor that answered nothing is no base");

        let text = markdown(&Report { floor_shares: shares, ..report });
        for line in [
            "- flash-sale, 50 clients: tally = 30.0% of http-floor (300 holds/s; http-floor 1000 req/s)",
            "- batch-256, 50 clients: tally = 12.5% of http-floor (25600 holds/s ÷ 256 = 100 req/s; http-floor 800 req/s)",
            "- mixed, 50 clients: tally = 40.0% of http-floor (400 req/s; http-floor 1000 req/s)",
            "- flash-sale, 50 clients: tally-3 = 20.0% of http-floor (200 holds/s; http-floor 1000 req/s)",
            "- uniform, 50 clients: tally = n/a of http-floor (50 holds/s; http-floor 0 req/s)",
            "- flash-sale, 1 client: tally = 15.0% of http-floor (90 holds/s; http-floor 600 req/s)",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn floor_rows_say_holds_and_checks_do_not_apply() {
        let report = Report { runs: vec![floor("flash-sale", 1000.0)], ..Report::default() };
        let text = markdown(&report);
        assert!(text.contains("| http-floor | flash-sale | closed | 50 | n/a | 1000 |"), "{text}");
        assert!(text.contains("| n/a | n/a |\n"), "oversell and lost are n/a, not 0: {text}");
        assert!(!text.contains("Correctness problems"), "{text}");
        assert!(!text.contains("Against the HTTP floor"), "no tally run to compare: {text}");
    }

    fn half_load(p99_us: u64, snapshots: Option<u64>) -> RunResult {
        let mut run = run("tally", "flash-sale", 100.0);
        run.mode = "open".into();
        run.rate = Some(15_000.0);
        run.latency.p99 = p99_us;
        run.start_lag = Some(Latency::default());
        run.snapshots_in_window = snapshots;
        run
    }

    fn half_load_goal(run: RunResult) -> Goal {
        let report = Report { runs: vec![run], ..Report::default() };
        goals(&report, 50)
            .into_iter()
            .find(|g| g.name.starts_with("tally p99 at half of peak"))
            .unwrap_or_else(|| panic!("no half-load goal"))
    }

    #[test]
    fn the_half_load_goal_says_how_many_snapshots_the_window_held() {
        let goal = half_load_goal(half_load(3_210, Some(4)));
        assert_eq!(goal.measured, "p99 3.21 ms with 4 snapshots in the window, at 15000 req/s");
        assert_eq!(goal.required, "< 5 ms, with >= 2 snapshots in the window");
        assert_eq!(goal.met, Some(true));

        let text = markdown(&Report { runs: vec![half_load(3_210, Some(4))], goals: vec![goal], ..Report::default() });
        assert!(text.contains("| p99 3.21 ms with 4 snapshots in the window, at 15000 req/s | yes |"), "{text}");
        assert!(text.contains("| tally | flash-sale | 15000 | 0.00 | 0.00 | 0.00 | 4 |"), "{text}");
    }

    #[test]
    fn the_half_load_goal_needs_two_snapshots_and_a_low_tail() {
        let one = half_load_goal(half_load(1_000, Some(1)));
        assert_eq!(one.measured, "p99 1.00 ms with 1 snapshot in the window, at 15000 req/s");
        assert_eq!(one.met, Some(false), "one snapshot is not enough");
        assert_eq!(half_load_goal(half_load(5_000, Some(3))).met, Some(false), "5 ms is not under 5 ms");
        let old = half_load_goal(half_load(1_000, None));
        assert_eq!(old.measured, "p99 1.00 ms (snapshots in the window not counted), at 15000 req/s");
        assert_eq!(old.met, Some(false), "uncounted snapshots cannot show the goal met");
        let text = markdown(&Report { runs: vec![half_load(1_000, None)], ..Report::default() });
        assert!(text.contains("| 0.00 | n/a |"), "{text}");
    }

    #[test]
    fn dates_are_civil() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}

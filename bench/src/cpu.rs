//! Equal CPU shares for the nodes of a scaling run: one cgroup per node with
//! a CFS quota, so that N nodes together have N times one node's CPU
//! whatever the machine has, and a figure at N nodes says what N nodes of
//! that size would do.
//!
//! Linux only, and it needs write access to a cgroup `cpu` controller
//! (root): cgroup v1 (`/sys/fs/cgroup/cpu/`, `cpu.cfs_quota_us`) or v2
//! (`/sys/fs/cgroup/`, `cpu.max`). A run that cannot cap says why and does
//! not measure. CPU time used is read from `/proc/<pid>/stat`.

use std::fs;
use std::path::{Path, PathBuf};

/// The period every quota is a share of, in microseconds: short, so that a
/// node that spent its share waits milliseconds, not tens of them, and the
/// cap shows in throughput rather than in stalls (the kernel's least quota
/// is 1 ms, a share of 0.1 CPU).
const PERIOD_US: u64 = 10_000;
/// The largest share asked of one group, in CPUs.
const CPUS_MAX: f64 = 1024.0;
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// One node's cgroup. Dropping it moves the processes back to the root
/// group and removes the group.
pub struct CpuCap {
    dir: PathBuf,
    root: PathBuf,
}

impl CpuCap {
    /// A group named `name` capped at `cpus` CPUs (0.25: a quarter of one).
    pub fn new(name: &str, cpus: f64) -> Result<CpuCap, String> {
        if !(cpus > 0.0 && cpus <= CPUS_MAX) {
            return Err(format!("a CPU share must be above 0 and at most {CPUS_MAX}, not {cpus}"));
        }
        // In range: positive and at most CPUS_MAX periods, far below u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quota_us = ((cpus * PERIOD_US as f64).round() as u64).max(1_000);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        if v1.join("cpu.cfs_quota_us").exists() || v1.join("cgroup.procs").exists() {
            let dir = v1.join(name);
            make_dir(&dir)?;
            write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            Ok(CpuCap { dir, root: v1.to_path_buf() })
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            // Children of the root get the cpu controller only once the
            // root hands it down.
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(name);
            make_dir(&dir)?;
            write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?;
            Ok(CpuCap { dir, root: v2.to_path_buf() })
        } else {
            Err(format!("{UNAVAILABLE}: no cgroup cpu controller at /sys/fs/cgroup (v1 cpu/ or v2 cpu.max)"))
        }
    }

    /// Moves process `pid` (every thread of it) into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// How every error of a cap begins, so that a caller can tell a machine
/// without caps from a failed run.
pub const UNAVAILABLE: &str = "CPU caps unavailable";

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(format!("{UNAVAILABLE}: create {} (it needs root): {error}", dir.display())),
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|error| format!("{UNAVAILABLE}: write {value} to {}: {error}", path.display()))
}

/// CPU seconds process `pid` has used so far (user and system).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_one_none() {
        let used = cpu_seconds(std::process::id());
        assert!(used.is_some_and(|s| s >= 0.0), "{used:?}");
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn a_share_must_be_positive() {
        assert!(CpuCap::new("tally-bench-test-zero", 0.0).is_err());
        assert!(CpuCap::new("tally-bench-test-nan", f64::NAN).is_err());
    }
}

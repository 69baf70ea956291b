//! The service definitions in `deploy/` are checked as their tools would
//! check them, and their configs load as the nodes would load them:
//!
//! * `deploy/systemd/tally.service` passes `systemd-analyze verify` with no
//!   warning (an unknown or misspelt directive is only a warning there), and
//!   its example config loads with the secret from the environment;
//! * `deploy/kubernetes/tally.yaml` passes `kubernetes-validate --strict`
//!   (the Kubernetes schemas, unknown fields refused), and the ConfigMap's
//!   `tally.toml` loads for each pod, through the very shell command the
//!   StatefulSet runs, with the Secret's values as the pod gets them.
//!
//! `scripts/install-peers.sh` installs the validators; without them a test
//! says so and passes, unless `DEPLOY_CHECKS_REQUIRED=1` (as `.ci/run` sets).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `command`; `None` if its program is not installed (and that is allowed).
fn run_tool(what: &str, command: &mut Command) -> Option<Output> {
    match command.output() {
        Ok(output) if output.status.code() == Some(127) || tool_missing(&output) => skip(what),
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => skip(what),
        Err(error) => panic!("running {what}: {error}"),
    }
}

fn tool_missing(output: &Output) -> bool {
    String::from_utf8_lossy(&output.stderr).contains("No module named kubernetes_validate")
}

fn skip(what: &str) -> Option<Output> {
    if std::env::var("DEPLOY_CHECKS_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{what} is not installed (scripts/install-peers.sh installs it) and DEPLOY_CHECKS_REQUIRED=1");
    }
    eprintln!("SKIPPED: {what} is not installed; scripts/install-peers.sh installs it");
    None
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tally check-config --config <path>` with `env`; panics unless it loads.
fn check_config(path: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(TALLY)
        .args(["check-config", "--config"])
        .arg(path)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("tally check-config: {e}"));
    assert!(output.status.success(), "{} does not load: {}", path.display(), text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // verify checks that ExecStart's program exists: point it at this build.
    let unit = read(&deploy("systemd/tally.service")).replace("/usr/local/bin/tally", TALLY);
    let path = dir.path().join("tally.service");
    std::fs::write(&path, unit).unwrap_or_else(|e| panic!("{e}"));
    let Some(output) =
        run_tool("systemd-analyze", Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path))
    else {
        return;
    };
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed: {stderr}");
    let about_the_unit: Vec<&str> = stderr.lines().filter(|line| line.contains("tally.service")).collect();
    assert!(about_the_unit.is_empty(), "systemd-analyze warns about the unit: {about_the_unit:?}");
}

#[test]
fn a_misspelt_directive_is_caught_by_the_unit_check() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let unit = read(&deploy("systemd/tally.service"))
        .replace("/usr/local/bin/tally", TALLY)
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let path = dir.path().join("tally.service");
    std::fs::write(&path, unit).unwrap_or_else(|e| panic!("{e}"));
    let Some(output) =
        run_tool("systemd-analyze", Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path))
    else {
        return;
    };
    assert!(text(&output.stderr).contains("NoNewPrivilege"), "the check above would not see a misspelling");
}

#[test]
fn the_systemd_example_config_loads_with_the_secret_from_the_environment() {
    let secret = "0123456789abcdef0123456789abcdef";
    let printed = check_config(&deploy("systemd/tally.toml"), &[("TALLY_CLUSTER__SECRET", secret)]);
    assert!(printed.contains("data_dir = \"/var/lib/tally/data\""), "{printed}");
    assert!(!printed.contains(secret), "the secret was printed");
}

#[test]
fn the_kubernetes_manifest_passes_strict_validation() {
    let path = deploy("kubernetes/tally.yaml");
    let Some(output) = run_tool(
        "kubernetes-validate",
        Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).arg(&path),
    ) else {
        return;
    };
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate: {all}");
    for kind in ["secret/tally", "configmap/tally", "service/tally-peers", "service/tally", "statefulset/tally"] {
        assert!(all.contains(&format!("passed for resource {kind} ")), "{kind} was not validated: {all}");
    }
}

/// The lines of a YAML block scalar `key: |` (first occurrence), dedented.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|line| line.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() >= indent)
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a one-line `key: '...'` or `key: "..."` in the manifest.
fn quoted_value(yaml: &str, key: &str) -> String {
    let line = yaml
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the manifest"));
    let value = line.trim_start()[key.len() + 2..].trim();
    value[1..value.len() - 1].to_owned()
}

#[test]
fn each_pod_loads_the_configmap_config_through_the_statefulset_command() {
    let yaml = read(&deploy("kubernetes/tally.yaml"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, block_scalar(&yaml, "tally.toml")).unwrap_or_else(|e| panic!("{e}"));
    let secret = quoted_value(&yaml, "cluster-secret");
    let keys = quoted_value(&yaml, "api-keys");
    // The container's shell command, as Kubernetes hands it to /bin/sh
    // (`$$` is Kubernetes' escape for `$`), with check-config for serve.
    let script = yaml
        .lines()
        .find(|line| line.contains("TALLY_CLUSTER__NODE_ID="))
        .unwrap_or_else(|| panic!("no node id command"))
        .trim_start()
        .trim_start_matches("- ")
        .replace("$$", "$")
        .replace(
            "/usr/local/bin/tally serve --config /etc/tally/tally.toml",
            "\"$TALLY\" check-config --config \"$CONFIG\"",
        );
    for (ordinal, node_id) in [(0, 1), (1, 2), (2, 3)] {
        let pod = format!("tally-{ordinal}");
        let output = Command::new("/bin/sh")
            .args(["-c", &script])
            .env_clear()
            .env("POD_NAME", &pod)
            .env("TALLY", TALLY)
            .env("CONFIG", &config)
            .env("TALLY_CLUSTER__SECRET", &secret)
            .env("TALLY_AUTH__KEYS", &keys)
            .output()
            .unwrap_or_else(|e| panic!("/bin/sh: {e}"));
        let printed = text(&output.stdout);
        assert!(output.status.success(), "{pod}: {}", text(&output.stderr));
        assert!(printed.contains(&format!("node_id = {node_id}\n")), "{pod} is not node {node_id}: {printed}");
        assert!(printed.contains("name = \"ops\""), "{pod} did not get the API keys: {printed}");
        assert!(printed.contains("addr = \"tally-2.tally-peers:7000\""), "{printed}");
        assert!(!printed.contains(&secret), "{pod} printed the secret");
    }
}

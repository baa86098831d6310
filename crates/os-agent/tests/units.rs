//! The systemd units: checked by the real `systemd-analyze verify` (with
//! the binary path pointed at the built agent) and for the ordering the
//! boot depends on.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("units")
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// All values of `key=` in the unit, split on whitespace.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in [
        "os-agent-config.service",
        "os-agent-health.service",
        "os-agent-install.service",
    ] {
        let text = unit(name).replace("/usr/bin/os-agent", common::bin());
        let p = dir.path().join(name);
        fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env(
            "SYSTEMD_UNIT_PATH",
            format!("{}:/usr/lib/systemd/system:", dir.path().display()),
        )
        .output()
        .expect("running systemd-analyze (package systemd)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn config_unit_runs_early_and_before_its_consumers() {
    let u = unit("os-agent-config.service");
    assert_eq!(values(&u, "Type"), ["oneshot"]);
    assert_eq!(
        values(&u, "ExecStart"),
        ["/usr/bin/os-agent", "boot-config"]
    );
    assert_eq!(values(&u, "DefaultDependencies"), ["no"]);
    assert!(values(&u, "After").contains(&"local-fs.target".to_string()));
    let before = values(&u, "Before");
    for b in [
        "systemd-user-sessions.service",
        "ssh.service",
        "getty-pre.target",
        "k3s.service",
        "k3s-agent.service",
        "network-pre.target",
    ] {
        assert!(before.contains(&b.to_string()), "Before= lacks {b}");
    }
}

#[test]
fn health_unit_is_simple_and_not_after_multi_user() {
    let u = unit("os-agent-health.service");
    assert_eq!(values(&u, "Type"), ["simple"]);
    assert_eq!(values(&u, "ExecStart"), ["/usr/bin/os-agent", "health"]);
    assert_eq!(values(&u, "WantedBy"), ["multi-user.target"]);
    assert!(!values(&u, "After").contains(&"multi-user.target".to_string()));
}

#[test]
fn install_unit_runs_on_the_live_system_only() {
    let u = unit("os-agent-install.service");
    assert_eq!(values(&u, "Type"), ["oneshot"]);
    assert_eq!(
        values(&u, "ExecStart"),
        ["/usr/bin/os-agent", "install", "--unattended"]
    );
    assert_eq!(values(&u, "ConditionKernelCommandLine"), ["bi.slot=live"]);
    assert!(values(&u, "After").contains(&"os-agent-config.service".to_string()));
    for key in ["After", "Wants", "Requires"] {
        assert!(
            !values(&u, key).iter().any(|v| v.contains("network")),
            "{key}=: the install needs no network"
        );
    }
    assert_eq!(values(&u, "WantedBy"), ["multi-user.target"]);
}

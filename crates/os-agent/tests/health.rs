//! `os-agent health` with this machine's real systemctl: whatever state
//! systemd is in here, the command must print exactly one report line in
//! the documented format on the console and stdout, exit 0 only for "ok",
//! and never commit a slot when the boot is not healthy.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// A Debian root running `slot` at boot `boot_count`, an ESP whose GRUB
/// environment has slot a as the default, and an empty console log.
struct Machine {
    root: tempfile::TempDir,
    esp: tempfile::TempDir,
    console: PathBuf,
}

impl Machine {
    fn new(slot: &str, boot_count: u32) -> Machine {
        let root = debian_root(slot);
        let esp = tempfile::tempdir().unwrap();
        grub_env(esp.path(), "a", "");
        write(
            root.path(),
            "/var/lib/os-agent/state.json",
            &format!("{{\"apiVersion\":\"os-agent/v1alpha1\",\"bootCount\":{boot_count}}}\n"),
        );
        let console = root.path().join("console.log");
        fs::write(&console, "").unwrap();
        Machine { root, esp, console }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// `os-agent health` waiting up to `timeout` seconds for systemd.
    fn health(&self, timeout: &str) -> Output {
        agent(&[
            "health",
            "--root",
            self.root().to_str().unwrap(),
            "--esp",
            self.esp.path().to_str().unwrap(),
            "--console",
            self.console.to_str().unwrap(),
            "--timeout",
            timeout,
            "--k3s-timeout",
            "5",
        ])
    }

    /// `os-agent status FLAGS…`.
    fn status(&self, flags: &[&str]) -> Output {
        let mut args = vec!["status"];
        args.extend_from_slice(flags);
        args.extend([
            "--root",
            self.root().to_str().unwrap(),
            "--esp",
            self.esp.path().to_str().unwrap(),
        ]);
        agent(&args)
    }
}

#[test]
fn reports_one_line_and_commits_only_when_healthy() {
    let m = Machine::new("b", 2);
    let (r, esp, console) = (m.root(), &m.esp, &m.console);
    let o = m.health("20");
    let out = stdout(&o);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("os-agent: boot "))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = lines[0];
    let prefix_ok =
        "os-agent: boot ok slot=b version=1.2.3 k3s=v1.31.2+k3s1 boot_count=2 failed_units=0";
    let prefix_bad =
        "os-agent: boot degraded slot=b version=1.2.3 k3s=v1.31.2+k3s1 boot_count=2 failed_units=";
    let env = editenv(&esp.path().join("grubenv"), &["list"]);
    if line == prefix_ok {
        assert_eq!(o.status.code(), Some(0));
        assert!(env.contains("default_slot=b"), "{env}");
    } else {
        assert!(line.starts_with(prefix_bad), "{line}");
        assert!(
            line.ends_with(')'),
            "a degraded line names its reasons: {line}"
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            env.contains("default_slot=a"),
            "no commit when degraded: {env}"
        );
    }
    let console_text = fs::read_to_string(console).unwrap();
    assert!(
        console_text.lines().any(|l| l == line),
        "console: {console_text}"
    );
    // A failed trial (b; the default is a) is rolled back: recorded, and
    // announced (no reboot with --root).
    let rollback =
        "os-agent: trial of slot b (version 1.2.3) failed its health check: rebooting into slot a";
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(r.join("var/lib/os-agent/state.json")).unwrap())
            .unwrap();
    if line == prefix_ok {
        assert!(!console_text.contains(rollback), "{console_text}");
        assert!(state.get("lastRollback").is_none(), "{state}");
    } else {
        assert!(console_text.contains(rollback), "{console_text}");
        let rb = &state["lastRollback"];
        assert_eq!(
            (&rb["slot"], &rb["to"]),
            (&"b".into(), &"a".into()),
            "{state}"
        );
        assert_eq!(rb["version"], "1.2.3");
        assert_eq!(rb["bootCount"], 2);
        assert!(
            line.ends_with(rb["reason"].as_str().unwrap()),
            "{line} / {state}"
        );
        let o = m.status(&[]);
        assert!(
            stdout(&o).contains(
                "last rollback: slot b (version 1.2.3) at boot 2, back to slot a: failed_units="
            ),
            "{}",
            stdout(&o)
        );
    }
}

/// Slot a runs after GRUB booted a trial of b (the primary copy says so;
/// the backup still arms b), and os-init had to keep persist in RAM: the
/// failed trial is recorded and cleared in both copies, and the boot is
/// degraded whatever systemd says, without a reboot (a is the default).
#[test]
fn records_a_trial_that_never_reached_health_and_reports_degraded_persist() {
    let m = Machine::new("a", 5);
    let esp = &m.esp;
    editenv(&esp.path().join("grubenv"), &["set", "trial_booted=b"]);
    editenv(&esp.path().join("grubenv.bak"), &["set", "trial_slot=b"]);
    write(
        m.root(),
        "/run/os/persist.status",
        "state=degraded\nreason=/dev/vda4 has no ext4 superblock\n",
    );
    let o = m.health("5");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let text = fs::read_to_string(&m.console).unwrap();
    assert!(
        text.contains(
            "os-agent: trial of slot b failed before its health check (no_health_verdict: it did not load, crashed or hung): running slot a"
        ),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("os-agent: boot "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("os-agent: boot degraded slot=a") && line.contains("persist=degraded"),
        "{line}"
    );
    assert!(!text.contains("rebooting"), "{text}");
    for n in ["grubenv", "grubenv.bak"] {
        let list = editenv(&esp.path().join(n), &["list"]);
        for want in ["default_slot=a", "trial_slot=", "trial_booted="] {
            assert!(list.lines().any(|l| l == want), "{n}: {list}");
        }
    }
    let o = m.status(&["--json"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["persist"], "degraded", "{s}");
    assert_eq!(s["lastRollback"]["slot"], "b", "{s}");
    assert_eq!(s["lastRollback"]["to"], "a", "{s}");
    assert!(s["lastRollback"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("no_health_verdict"));
}

//! `os-agent health`: waits for the boot to finish, checks it, commits a
//! healthy trial slot, and reports one line on the console. A trial slot
//! that fails the check is rolled back: the failure is recorded in the
//! agent's state and the machine reboots, into the default slot (GRUB
//! cleared the trial before booting it).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use boot_contract::boot_env::SLOTS;

use crate::bootenv::{self, Commit, Esp, Settled};
use crate::error::{Context, Result};
use crate::fsutil::Root;
use crate::{k3s, state, system};

pub const SYSTEMCTL: &str = "systemctl";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for `systemctl is-system-running --wait`.
    pub system_timeout: Duration,
    /// How long to wait for the k3s unit to become active.
    pub k3s_timeout: Duration,
    /// Where the report line goes besides stdout.
    pub console: PathBuf,
    /// Where the ESP is mounted; None finds it by its GPT name.
    pub esp: Option<PathBuf>,
    /// Reboot out of a failed trial (tests turn it off).
    pub reboot: bool,
}

/// The facts the report line is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub slot: String,
    pub version: String,
    pub k3s: String,
    pub boot_count: u64,
    /// Units that failed or did not become active.
    pub bad_units: Vec<String>,
    /// Other reasons the boot is not healthy, as `key=value` words:
    /// `system=STATE` when systemd's state is not `running` (`starting`
    /// at the deadline, `degraded`, `maintenance`, `offline`),
    /// `failed_units=unknown` when systemd could not list them.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn healthy(&self) -> bool {
        self.bad_units.is_empty() && self.notes.is_empty()
    }

    /// The console line, fields in a fixed order:
    /// `os-agent: boot ok slot=a version=1.0 k3s=none boot_count=2 failed_units=0`
    /// or `os-agent: boot degraded ... failed_units=1 (x.service)`.
    pub fn line(&self) -> String {
        let clean = |s: &str| -> String {
            let s: String = s
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            if s.is_empty() {
                "unknown".into()
            } else {
                s
            }
        };
        let mut line = format!(
            "os-agent: boot {} slot={} version={} k3s={} boot_count={} failed_units={}",
            if self.healthy() { "ok" } else { "degraded" },
            clean(&self.slot),
            clean(&self.version),
            clean(&self.k3s),
            self.boot_count,
            self.bad_units.len()
        );
        if !self.healthy() {
            let mut why: Vec<String> = self.bad_units.iter().map(|u| clean(u)).collect();
            why.extend(self.notes.iter().map(|n| clean(n)));
            line.push_str(&format!(" ({})", why.join(" ")));
        }
        line
    }
}

/// Unit names from `systemctl --failed --plain --no-legend` output.
pub fn parse_failed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let first = l.split_whitespace().next()?;
            // Without --plain systemd prefixes a bullet; skip it if present.
            let name = if first == "●" || first == "*" {
                l.split_whitespace().nth(1)?
            } else {
                first
            };
            Some(name.to_string())
        })
        .collect()
}

/// Runs a command with a deadline; None when it did not finish in time
/// (it is killed). Returns stdout and whether it exited 0.
fn run_bounded(cmd: &mut Command, deadline: Instant) -> Result<Option<(String, bool)>> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {desc}"))?;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {desc}"))?
        {
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                use std::io::Read;
                let _ = s.read_to_string(&mut out);
            }
            return Ok(Some((out, status.success())));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        sleep(Duration::from_millis(250));
    }
}

/// `systemctl is-system-running --wait`, bounded: the state it reports, or
/// `starting` when the deadline passed first.
fn wait_system(timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let res = run_bounded(
        Command::new(SYSTEMCTL).args(["is-system-running", "--wait"]),
        deadline,
    )?;
    Ok(match res {
        Some((out, _)) => out.trim().to_string(),
        None => "starting".into(),
    })
}

/// The failed units; None when systemctl could not tell.
fn failed_units() -> Result<Option<Vec<String>>> {
    let out = Command::new(SYSTEMCTL)
        .args(["--failed", "--plain", "--no-legend"])
        .output()
        .context("running systemctl --failed --plain --no-legend")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(parse_failed(&String::from_utf8_lossy(&out.stdout))))
}

/// Polls `systemctl is-active UNIT` until active or the deadline.
fn wait_active(unit: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let res = run_bounded(
            Command::new(SYSTEMCTL).args(["is-active", unit]),
            Instant::now() + left.max(Duration::from_secs(5)),
        )?;
        if let Some((out, _)) = res {
            if out.trim() == "active" {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(Duration::from_secs(2));
    }
}

/// What an unhealthy boot of `running` leads to, given the default slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// A trial: reboot into the default slot `to`.
    RollBack { to: String },
    /// The default slot itself, a live boot, or no known default: report
    /// only (rebooting would boot the same slot again).
    Stay,
}

pub fn on_failure(running: Option<&str>, default: Option<&str>) -> OnFailure {
    match (running, default) {
        (Some(r), Some(d)) if SLOTS.contains(&r) && SLOTS.contains(&d) && r != d => {
            OnFailure::RollBack { to: d.to_string() }
        }
        _ => OnFailure::Stay,
    }
}

/// Writes `line` to the console (best effort) and stdout.
pub fn announce(console: &std::path::Path, line: &str) {
    println!("{line}");
    let res = OpenOptions::new()
        .append(true)
        .open(console)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        eprintln!("os-agent: writing to {}: {e}", console.display());
    }
}

/// The ESP for writing: `--esp`, or found (and mounted) by its name.
fn esp_rw(root: &Root, opts: &Options) -> Result<Esp> {
    match &opts.esp {
        Some(d) => Ok(Esp::at(d)),
        None => Esp::locate(root, true),
    }
}

/// Before waiting for the boot: settles the trial GRUB consumed (see
/// [`bootenv::settle`]). A trial of another slot that never reached its
/// health check is recorded as the latest rollback and reported.
fn settle_trial(root: &Root, opts: &Options, running: Option<&str>) -> Result<()> {
    let Some(running) = running.filter(|s| SLOTS.contains(s)) else {
        return Ok(());
    };
    let settled = esp_rw(root, opts).and_then(|esp| bootenv::settle(esp.dir(), running));
    let failed = match settled {
        Ok(Settled::TrialFailed { slot }) => slot,
        Ok(_) => return Ok(()),
        Err(e) => {
            announce(
                &opts.console,
                &format!("os-agent: the boot environment could not be settled: {e}"),
            );
            return Ok(());
        }
    };
    let mut st = state::load(root)?;
    let version = st
        .records
        .slots
        .get(&failed)
        .and_then(|r| r.version.clone());
    st.last_rollback = Some(state::Rollback {
        slot: failed.clone(),
        version: version.unwrap_or_else(|| "unknown".into()),
        to: running.to_string(),
        boot_count: st.boot_count,
        reason: NO_VERDICT.into(),
    });
    let n = st.boot_count;
    st.records.trial_failed(&failed, NO_VERDICT, n);
    state::save(root, &st)?;
    announce(
        &opts.console,
        &format!(
            "os-agent: trial of slot {failed} failed before its health check ({NO_VERDICT}): running slot {running}"
        ),
    );
    Ok(())
}

/// The reason recorded for a trial that never reached its health check.
pub const NO_VERDICT: &str = "no_health_verdict: it did not load, crashed or hung";

/// `persist=degraded` when os-init could not use the persistent partition
/// this boot (see [`boot_contract::persist::STATUS_FILE`]).
fn persist_note(root: &Root) -> Option<String> {
    let st = crate::system::persist_status(root);
    (st.state.as_deref() == Some(boot_contract::persist::STATE_DEGRADED))
        .then(|| "persist=degraded".to_string())
}

/// The whole `health` command. Returns whether the boot is healthy.
pub fn run(root: &Root, opts: &Options) -> Result<bool> {
    settle_trial(root, opts, system::running_slot(root)?.as_deref())?;
    let system_state = wait_system(opts.system_timeout)?;
    let mut notes = Vec::new();
    if system_state != "running" {
        notes.push(format!("system={system_state}"));
    }
    notes.extend(persist_note(root));
    let mut bad_units = failed_units()?.unwrap_or_else(|| {
        notes.push("failed_units=unknown".into());
        Vec::new()
    });
    if let Some(unit) = k3s::enabled_unit(root) {
        if !bad_units.iter().any(|u| u == unit) && !wait_active(unit, opts.k3s_timeout)? {
            bad_units.push(unit.to_string());
        }
    }
    let info = system::image_info(root).unwrap_or_default();
    let slot = system::running_slot(root)?;
    let verdict = Verdict {
        slot: slot.clone().unwrap_or_else(|| "unknown".into()),
        version: info.version.unwrap_or_else(|| "unknown".into()),
        k3s: info.k3s_version.unwrap_or_else(|| "none".into()),
        boot_count: state::load(root).map(|s| s.boot_count).unwrap_or(0),
        bad_units,
        notes,
    };
    let healthy = verdict.healthy();
    // Commit before reporting "ok": the line is the promise that this slot
    // is now the one that boots.
    let mut commit_err = None;
    if healthy {
        if let Some(slot) = slot.as_deref().filter(|s| SLOTS.contains(s)) {
            match commit_running(root, opts.esp.as_ref(), slot) {
                Ok(Commit::Committed { from }) => announce(
                    &opts.console,
                    &format!(
                        "os-agent: committed slot {slot} as default (was {})",
                        from.as_deref().unwrap_or("unset")
                    ),
                ),
                Ok(Commit::AlreadyDefault) => {}
                Err(e) => commit_err = Some(e),
            }
            if commit_err.is_none() {
                crate::upgrade::record::note_trial_committed(root, slot);
            }
        }
    }
    if let Some(e) = commit_err {
        let line = format!("os-agent: boot degraded: commit failed: {e}");
        announce(&opts.console, &line);
        return Err(e);
    }
    announce(&opts.console, &verdict.line());
    if !healthy {
        roll_back_a_trial(root, opts, &verdict)?;
    }
    Ok(healthy)
}

/// After a failed check: when this boot is a trial, records the rollback
/// and reboots into the default slot. Anything unclear (no slot, an
/// unreadable boot environment) means no reboot.
fn roll_back_a_trial(root: &Root, opts: &Options, verdict: &Verdict) -> Result<()> {
    if !SLOTS.contains(&verdict.slot.as_str()) {
        return Ok(());
    }
    let env = match &opts.esp {
        Some(d) => bootenv::read(d),
        None => Esp::locate(root, false).and_then(|e| bootenv::read(e.dir())),
    };
    let default = match env {
        Ok(env) => env.default_slot().map(str::to_string),
        Err(e) => {
            announce(
                &opts.console,
                &format!("os-agent: not rolling back: the boot environment is unreadable: {e}"),
            );
            return Ok(());
        }
    };
    let OnFailure::RollBack { to } = on_failure(Some(&verdict.slot), default.as_deref()) else {
        return Ok(());
    };
    let line = verdict.line();
    let reason = line
        .split_once("boot_count=")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(_, r)| r.to_string())
        .unwrap_or_default();
    let mut st = state::load(root)?;
    st.last_rollback = Some(state::Rollback {
        slot: verdict.slot.clone(),
        version: verdict.version.clone(),
        to: to.clone(),
        boot_count: verdict.boot_count,
        reason: reason.clone(),
    });
    st.records
        .trial_failed(&verdict.slot, &reason, verdict.boot_count);
    state::save(root, &st)?;
    // GRUB cleared trial_slot in the copy it loaded; the other copy must
    // not arm the failed slot again either.
    if let Err(e) = esp_rw(root, opts).and_then(|esp| bootenv::end_trial(esp.dir(), &verdict.slot))
    {
        announce(
            &opts.console,
            &format!("os-agent: clearing the trial in the boot environment: {e}"),
        );
    }
    announce(
        &opts.console,
        &format!(
            "os-agent: trial of slot {} (version {}) failed its health check: rebooting into slot {to}",
            verdict.slot, verdict.version
        ),
    );
    if opts.reboot {
        crate::install::reboot()?;
    }
    Ok(())
}

/// Commits `slot` on the ESP (`esp`, or found and mounted for the call).
pub fn commit_running(root: &Root, esp: Option<&PathBuf>, slot: &str) -> Result<Commit> {
    let esp = match esp {
        Some(d) => Esp::at(d),
        None => Esp::locate(root, true)?,
    };
    bootenv::commit(esp.dir(), slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_trial_is_rolled_back() {
        let back = |to: &str| OnFailure::RollBack { to: to.into() };
        assert_eq!(on_failure(Some("b"), Some("a")), back("a"));
        assert_eq!(on_failure(Some("a"), Some("b")), back("b"));
        // The default slot failing: rebooting would boot it again.
        assert_eq!(on_failure(Some("a"), Some("a")), OnFailure::Stay);
        assert_eq!(on_failure(Some("live"), Some("a")), OnFailure::Stay);
        assert_eq!(on_failure(Some("b"), None), OnFailure::Stay);
        assert_eq!(on_failure(Some("b"), Some("c")), OnFailure::Stay);
        assert_eq!(on_failure(None, Some("a")), OnFailure::Stay);
    }

    fn v(bad: &[&str], state: Option<&str>) -> Verdict {
        let notes = state
            .map(|s| vec![format!("system={s}")])
            .unwrap_or_default();
        Verdict {
            slot: "a".into(),
            version: "1.0.0".into(),
            k3s: "v1.31.2+k3s1".into(),
            boot_count: 2,
            bad_units: bad.iter().map(|s| s.to_string()).collect(),
            notes,
        }
    }

    #[test]
    fn console_lines() {
        assert_eq!(
            v(&[], None).line(),
            "os-agent: boot ok slot=a version=1.0.0 k3s=v1.31.2+k3s1 boot_count=2 failed_units=0"
        );
        assert_eq!(
            v(&["x.service", "k3s.service"], Some("degraded")).line(),
            "os-agent: boot degraded slot=a version=1.0.0 k3s=v1.31.2+k3s1 boot_count=2 failed_units=2 (x.service k3s.service system=degraded)"
        );
        assert_eq!(
            v(&[], Some("starting")).line(),
            "os-agent: boot degraded slot=a version=1.0.0 k3s=v1.31.2+k3s1 boot_count=2 failed_units=0 (system=starting)"
        );
        let mut odd = v(&[], None);
        odd.version = "1 beta".into();
        assert!(odd.line().contains("version=1_beta "));
    }

    #[test]
    fn failed_list() {
        let out =
            "foo.service loaded failed failed Foo\nbar.mount   loaded failed failed Bar mount\n";
        assert_eq!(parse_failed(out), vec!["foo.service", "bar.mount"]);
        assert_eq!(
            parse_failed("● baz.service loaded failed failed Baz\n"),
            vec!["baz.service"]
        );
        assert!(parse_failed("").is_empty());
    }
}

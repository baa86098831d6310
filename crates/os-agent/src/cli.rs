//! The command line: a small hand-written parser (the agent stays lean)
//! and the dispatch to the commands.

use std::path::PathBuf;
use std::time::Duration;

use boot_contract::boot_env::{CMDLINE_SLOT, LIVE_SLOT, SLOTS};

use crate::bail;
use crate::bootenv::Commit;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::fsutil::Root;
use crate::{apply, health, install, status, system};

pub const USAGE: &str = "\
Usage: os-agent COMMAND [OPTIONS]

Commands:
  boot-config  Apply the configuration files (run at every boot)
  health       Wait for the boot to finish, commit a healthy trial slot,
               report one line on the console
  status       Show the running slot, boot state, image and boot count
  mark-good    Make the running slot the default boot slot
  install      Write the image from the live ISO to a disk (live system)
  upgrade REF  Write the upgrade REF (HOST/REPO:TAG, HOST/REPO@DIGEST or
               oci-layout:DIR[:TAG]) to the passive slot and arm a trial
  rollback     Make the other slot the default (or give up a trial)
  reset        Empty the persistent partition at the next boot

Options:
  --root DIR          Work on the tree at DIR instead of / (all commands)
  --esp DIR           The ESP is mounted at DIR (default: find the partition
                      named ESP, mount it if needed); install: the new
                      disk's ESP is mounted at DIR (for a regular-file
                      target)
  --json              status: print the versioned JSON document;
                      upgrade: JSON lines of progress and the result
  --timeout SECS      health: wait at most this long for the system to
                      finish booting (default 600)
  --k3s-timeout SECS  health: wait at most this long for k3s (default 600)
  --console PATH      health, install: also write the report line here
                      (default /dev/console; install: with --unattended)
  --device DEV|auto   install: the target disk (or an existing regular
                      file); auto: the one fixed disk that is large enough,
                      unused and not the live medium (default: the
                      configuration's install.device)
  --config FILE       install: put FILE on the new disk's ESP as
                      build-image/config.yaml (checked first)
  --reboot            install, upgrade, rollback, reset: reboot when done
  --insecure-registry HOST
                      upgrade: plain HTTP to HOST or HOST:PORT (repeatable)
  --allow-downgrade   upgrade: write an older version (or the same again)
  --retry-failed      upgrade: try a digest whose trial failed before
  --wait-trial SECS   upgrade: on a trial boot, wait this long for health
                      to commit it instead of refusing at once (default 0)
  --force             install: also over a disk holding an installed
                      system's data on persist (it is lost)
  --keep-config       reset: keep the device's config and SSH host keys
  --source DIR        install: the live ISO (default /run/os/live)
  --unattended        install: do nothing without an install section in
                      the configuration; report on the console
  -h, --help          Print this help
  -V, --version       Print the version
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    BootConfig,
    Health,
    Status,
    MarkGood,
    Install,
    Upgrade,
    Rollback,
    Reset,
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub cmd: Cmd,
    pub root: PathBuf,
    pub esp: Option<PathBuf>,
    pub json: bool,
    pub timeout: Duration,
    pub k3s_timeout: Duration,
    pub console: Option<PathBuf>,
    /// install: `--device`.
    pub device: Option<String>,
    /// install: `--config`.
    pub config: Option<PathBuf>,
    pub reboot: bool,
    /// install: `--force`.
    pub force: bool,
    pub source: PathBuf,
    pub unattended: bool,
    /// upgrade: the reference.
    pub reference: Option<String>,
    pub insecure_registries: Vec<String>,
    pub allow_downgrade: bool,
    pub retry_failed: bool,
    pub keep_config: bool,
    pub wait_trial: Duration,
}

fn secs(opt: &str, v: &str) -> Result<Duration> {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| Error::msg(format!("{opt}: expected a number of seconds, got {v:?}")))
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Args> {
    let mut args = Args {
        cmd: Cmd::Help,
        root: PathBuf::from("/"),
        esp: None,
        json: false,
        timeout: health::DEFAULT_TIMEOUT,
        k3s_timeout: health::DEFAULT_TIMEOUT,
        console: None,
        device: None,
        config: None,
        reboot: false,
        force: false,
        source: PathBuf::from(boot_contract::live::MOUNT),
        unattended: false,
        reference: None,
        insecure_registries: Vec::new(),
        allow_downgrade: false,
        retry_failed: false,
        keep_config: false,
        wait_trial: Duration::ZERO,
    };
    let mut cmd: Option<(Cmd, &str)> = None;
    let mut seen: Vec<&str> = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |n: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{n}: needs a value"),
            }
        };
        match name {
            "-h" | "--help" => {
                return Ok(Args {
                    cmd: Cmd::Help,
                    ..args
                })
            }
            "-V" | "--version" => {
                return Ok(Args {
                    cmd: Cmd::Version,
                    ..args
                })
            }
            "--root" => args.root = PathBuf::from(value(name)?),
            "--esp" => args.esp = Some(PathBuf::from(value(name)?)),
            "--json" if inline.is_some() => bail!("--json takes no value"),
            "--json" => args.json = true,
            "--timeout" => args.timeout = secs(name, &value(name)?)?,
            "--k3s-timeout" => args.k3s_timeout = secs(name, &value(name)?)?,
            "--wait-trial" => args.wait_trial = secs(name, &value(name)?)?,
            "--console" => args.console = Some(PathBuf::from(value(name)?)),
            "--device" => args.device = Some(value(name)?),
            "--config" => args.config = Some(PathBuf::from(value(name)?)),
            "--source" => args.source = PathBuf::from(value(name)?),
            "--reboot" | "--unattended" | "--force" | "--allow-downgrade" | "--retry-failed"
            | "--keep-config"
                if inline.is_some() =>
            {
                bail!("{name} takes no value")
            }
            "--reboot" => args.reboot = true,
            "--force" => args.force = true,
            "--unattended" => args.unattended = true,
            "--allow-downgrade" => args.allow_downgrade = true,
            "--retry-failed" => args.retry_failed = true,
            "--keep-config" => args.keep_config = true,
            "--insecure-registry" => args.insecure_registries.push(value(name)?),
            _ if name.starts_with('-') => bail!("unknown option {name}; see os-agent --help"),
            _ => {
                if let Some((Cmd::Upgrade, _)) = &cmd {
                    if args.reference.is_none() {
                        args.reference = Some(a.clone());
                        continue;
                    }
                }
                if let Some((_, prev)) = &cmd {
                    bail!(
                        "unexpected argument {a:?} after the command {prev}; see os-agent --help"
                    );
                }
                let c = match a.as_str() {
                    "boot-config" => Cmd::BootConfig,
                    "health" => Cmd::Health,
                    "status" => Cmd::Status,
                    "mark-good" => Cmd::MarkGood,
                    "install" => Cmd::Install,
                    "upgrade" => Cmd::Upgrade,
                    "rollback" => Cmd::Rollback,
                    "reset" => Cmd::Reset,
                    other => bail!("unknown command {other:?}; see os-agent --help"),
                };
                cmd = Some((c, a.as_str()));
                continue;
            }
        }
        seen.push(name);
    }
    let Some((cmd, _)) = cmd else {
        bail!("no command given; see os-agent --help");
    };
    let allowed: &[&str] = match cmd {
        Cmd::BootConfig => &["--root", "--esp"],
        Cmd::Health => &["--root", "--esp", "--timeout", "--k3s-timeout", "--console"],
        Cmd::Status => &["--root", "--esp", "--json"],
        Cmd::MarkGood => &["--root", "--esp"],
        Cmd::Install => &[
            "--root",
            "--esp",
            "--console",
            "--device",
            "--config",
            "--reboot",
            "--force",
            "--source",
            "--unattended",
        ],
        Cmd::Upgrade => &[
            "--root",
            "--esp",
            "--json",
            "--reboot",
            "--insecure-registry",
            "--allow-downgrade",
            "--retry-failed",
            "--wait-trial",
        ],
        Cmd::Rollback => &["--root", "--esp", "--reboot"],
        Cmd::Reset => &["--root", "--reboot", "--keep-config"],
        Cmd::Help | Cmd::Version => &[],
    };
    if cmd == Cmd::Upgrade && args.reference.is_none() {
        bail!("upgrade: give the upgrade to apply: HOST/REPO:TAG, HOST/REPO@sha256:DIGEST or oci-layout:DIR");
    }
    if let Some(bad) = seen.iter().find(|o| !allowed.contains(o)) {
        bail!("{bad} is not an option of this command; see os-agent --help");
    }
    Ok(Args { cmd, ..args })
}

/// Runs the command; returns the process exit code (errors are returned
/// for the caller to print).
pub fn run(args: &Args) -> Result<i32> {
    let root = Root::new(&args.root);
    match args.cmd {
        Cmd::Help => print!("{USAGE}"),
        Cmd::Version => println!("os-agent {}", env!("CARGO_PKG_VERSION")),
        Cmd::BootConfig => {
            let r = apply::boot_config(&root, args.esp.as_deref())?;
            let files: Vec<String> = r
                .files_read
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            println!(
                "os-agent: config applied boot_count={} files=[{}] hostname={} users=[{}] write_files={} k3s={} ssh_host_keys={} ssh_passwords={}",
                r.boot_count,
                files.join(" "),
                r.hostname.as_deref().unwrap_or("-"),
                r.users.join(" "),
                r.files_written,
                r.k3s_role.map(|x| x.as_str()).unwrap_or("off"),
                r.ssh_host_keys.as_str(),
                r.ssh_passwords.as_str()
            );
        }
        Cmd::Health => {
            let opts = health::Options {
                system_timeout: args.timeout,
                k3s_timeout: args.k3s_timeout,
                console: args
                    .console
                    .clone()
                    .unwrap_or_else(|| root.join("/dev/console")),
                esp: args.esp.clone(),
                reboot: root.is_host(),
            };
            if !health::run(&root, &opts)? {
                return Ok(2);
            }
        }
        Cmd::Status => {
            let s = status::gather(&root, args.esp.as_ref())?;
            if args.json {
                println!("{}", s.to_json());
            } else {
                print!("{}", s.to_text());
            }
        }
        Cmd::MarkGood => {
            let slot = match system::running_slot(&root)? {
                Some(s) if SLOTS.contains(&s.as_str()) => s,
                Some(s) if s == LIVE_SLOT => {
                    bail!("this is a live boot ({CMDLINE_SLOT}={LIVE_SLOT}): there is no slot to commit")
                }
                Some(s) => bail!("{CMDLINE_SLOT}={s} on the kernel command line: expected a or b"),
                None => bail!(
                    "no {CMDLINE_SLOT}= on the kernel command line: not booted from an A/B disk"
                ),
            };
            match health::commit_running(&root, args.esp.as_ref(), &slot)? {
                Commit::Committed { from } => println!(
                    "os-agent: slot {slot} is now the default (was {})",
                    from.as_deref().unwrap_or("unset")
                ),
                Commit::AlreadyDefault => println!("os-agent: slot {slot} is already the default"),
            }
            crate::upgrade::record::note_trial_committed(&root, &slot);
        }
        Cmd::Install => return run_install(args, &root),
        Cmd::Upgrade => {
            let o = crate::upgrade::Options {
                reference: args.reference.clone().unwrap_or_default(),
                esp: args.esp.clone(),
                reboot: args.reboot,
                json: args.json,
                insecure: args.insecure_registries.clone(),
                allow_downgrade: args.allow_downgrade,
                retry_failed: args.retry_failed,
                wait_trial: args.wait_trial,
            };
            return crate::upgrade::run(&root, &o);
        }
        Cmd::Rollback => {
            let o = crate::rollback::Options {
                esp: args.esp.clone(),
                reboot: args.reboot,
            };
            return crate::rollback::run(&root, &o);
        }
        Cmd::Reset => {
            let o = crate::reset::Options {
                keep_config: args.keep_config,
                reboot: args.reboot,
            };
            return crate::reset::run(&root, &o);
        }
    }
    Ok(0)
}

/// What `install` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    pub device: String,
    pub reboot: bool,
    /// Install over a disk holding an installed system's data.
    pub overwrite: bool,
}

/// The device, reboot and overwrite flags of `install`: the command
/// line's, else the configuration's `install` section. None:
/// `--unattended` and nothing to install.
pub fn install_plan(args: &Args, cfg: Option<&Config>) -> Result<Option<InstallPlan>> {
    let section = cfg.and_then(|c| c.install.as_ref());
    if args.unattended && section.is_none() && args.device.is_none() {
        return Ok(None);
    }
    let from_config = section.and_then(|i| i.device.clone());
    let use_config = args.device.is_none() || args.unattended;
    let reboot = args.reboot || (use_config && section.and_then(|i| i.reboot) == Some(true));
    let overwrite = args.force || (use_config && section.and_then(|i| i.overwrite) == Some(true));
    match args.device.clone().or(from_config) {
        Some(device) => Ok(Some(InstallPlan {
            device,
            reboot,
            overwrite,
        })),
        None => bail!("no --device and no install.device in the configuration"),
    }
}

/// Kernel command line parameter of the ISO menu's install entry:
/// `bi.install=DEVICE` (or `auto`) asks an unattended install to that
/// device, with a reboot, even without an `install` section.
pub const CMDLINE_INSTALL: &str = "bi.install";

/// The `install` section that `bi.install=` on `cmdline` stands for.
pub fn cmdline_install(cmdline: &str) -> Option<config::Install> {
    system::cmdline_param(cmdline, CMDLINE_INSTALL)
        .filter(|d| !d.is_empty())
        .map(|d| config::Install {
            device: Some(d.to_string()),
            reboot: Some(true),
            overwrite: None,
        })
}

fn run_install(args: &Args, root: &Root) -> Result<i32> {
    let cfg = if args.device.is_none() || args.unattended {
        // The live system's own configuration: an ESP found by name could
        // be another disk's.
        let mut cfg = config::load(root, None)?.0;
        if args.unattended {
            let cmdline =
                crate::fsutil::read_optional(&root.join(system::CMDLINE))?.unwrap_or_default();
            if let Some(i) = cmdline_install(&cmdline) {
                cfg.install = Some(i);
            }
        }
        Some(cfg)
    } else {
        None
    };
    let Some(plan) = install_plan(args, cfg.as_ref())? else {
        println!("os-agent: no install section in the configuration, nothing to install");
        return Ok(0);
    };
    let console = args
        .console
        .clone()
        .or_else(|| args.unattended.then(|| root.join("/dev/console")));
    let report = |line: &str| match &console {
        Some(c) => health::announce(c, line),
        None => println!("{line}"),
    };
    let opts = install::Options {
        source: args.source.clone(),
        config: args.config.clone(),
        esp: args.esp.clone(),
        overwrite: plan.overwrite,
        ..install::Options::new(install::Device::parse(&plan.device))
    };
    match install::install(&opts) {
        Ok(done) => {
            report(&format!(
                "os-agent: installed {} {} to {} (disk GUID {}, ESP partition {})",
                done.id,
                done.version,
                done.device.display(),
                done.disk_guid,
                done.esp.guid
            ));
            match &done.boot_entry {
                Ok(entry) => report(&format!("os-agent: firmware boot entry: {entry}")),
                Err(e) => report(&format!(
                    "os-agent: warning: no firmware boot entry for the new disk: {e}; the \
                     firmware may start the installer again, which refuses to install over \
                     this disk once it holds data"
                )),
            }
        }
        Err(e) => {
            if console.is_some() {
                report(&format!("os-agent: install failed: {e}"));
            }
            return Err(e);
        }
    }
    if plan.reboot {
        report("os-agent: rebooting");
        install::reboot()?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_menu_entry_asks_for_an_install_with_reboot() {
        let i = cmdline_install("BOOT_IMAGE=/boot/vmlinuz bi.slot=live bi.install=auto").unwrap();
        assert_eq!(i.device.as_deref(), Some("auto"));
        assert_eq!(i.reboot, Some(true));
        assert!(cmdline_install("bi.slot=live bi.installx=auto").is_none());
        assert!(cmdline_install("bi.install=").is_none());
    }

    fn p(a: &[&str]) -> Result<Args> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_commands_and_options() {
        let a = p(&["status", "--json", "--root", "/tmp/r", "--esp=/tmp/e"]).unwrap();
        assert_eq!(a.cmd, Cmd::Status);
        assert!(a.json);
        assert_eq!(a.root, PathBuf::from("/tmp/r"));
        assert_eq!(a.esp, Some(PathBuf::from("/tmp/e")));
        let a = p(&["--root=/x", "health", "--timeout", "30", "--k3s-timeout=5"]).unwrap();
        assert_eq!(
            (a.cmd, a.timeout, a.k3s_timeout),
            (Cmd::Health, Duration::from_secs(30), Duration::from_secs(5))
        );
        assert_eq!(p(&["boot-config"]).unwrap().root, PathBuf::from("/"));
        assert_eq!(p(&["--help"]).unwrap().cmd, Cmd::Help);
        assert_eq!(p(&["status", "-V"]).unwrap().cmd, Cmd::Version);
    }

    #[test]
    fn rejects_bad_arguments() {
        for (a, want) in [
            (&["frobnicate"][..], "unknown command"),
            (&[][..], "no command"),
            (&["status", "--bogus"][..], "unknown option --bogus"),
            (&["boot-config", "--json"][..], "--json is not an option"),
            (&["health", "--timeout", "ten"][..], "--timeout"),
            (&["status", "--root"][..], "--root: needs a value"),
            (
                &["status", "mark-good"][..],
                "unexpected argument \"mark-good\" after the command status",
            ),
            (&["status", "--json=yes"][..], "--json takes no value"),
        ] {
            let e = p(a).unwrap_err().to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn parses_install() {
        let a = p(&[
            "install",
            "--device",
            "/dev/sda",
            "--config=/tmp/c.yaml",
            "--reboot",
            "--source",
            "/mnt/iso",
        ])
        .unwrap();
        assert_eq!(a.cmd, Cmd::Install);
        assert_eq!(a.device.as_deref(), Some("/dev/sda"));
        assert_eq!(a.config, Some(PathBuf::from("/tmp/c.yaml")));
        assert!(a.reboot && !a.unattended);
        assert_eq!(a.source, PathBuf::from("/mnt/iso"));
        let a = p(&["install", "--unattended", "--console", "/dev/ttyS0"]).unwrap();
        assert!(a.unattended && !a.reboot && a.device.is_none());
        assert_eq!(a.source, PathBuf::from("/run/os/live"));
        assert_eq!(a.console, Some(PathBuf::from("/dev/ttyS0")));
        assert_eq!(
            p(&["boot-config", "--esp", "/e"]).unwrap().esp,
            Some("/e".into())
        );
        for (a, want) in [
            (&["install", "--reboot=yes"][..], "--reboot takes no value"),
            (
                &["install", "--unattended=1"][..],
                "--unattended takes no value",
            ),
            (&["install", "--device"][..], "--device: needs a value"),
            (
                &["status", "--device", "auto"][..],
                "--device is not an option",
            ),
            (&["health", "--reboot"][..], "--reboot is not an option"),
            (&["install", "--json"][..], "--json is not an option"),
            (&["install", "--force=1"][..], "--force takes no value"),
            (&["status", "--force"][..], "--force is not an option"),
        ] {
            let e = p(a).unwrap_err().to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn install_device_and_reboot_from_flags_or_config() {
        let cfg = |t: &str| crate::config::parse(t, std::path::Path::new("c.yaml")).unwrap();
        let plan = |a: &[&str], c: Option<&Config>| {
            install_plan(&p(a).unwrap(), c).map(|o| o.map(|p| (p.device, p.reboot, p.overwrite)))
        };
        let with = cfg("install: {device: auto, reboot: true}\n");
        let without = cfg("hostname: x\n");
        assert_eq!(
            plan(&["install"], Some(&with)).unwrap(),
            Some(("auto".into(), true, false))
        );
        assert_eq!(
            plan(&["install", "--device", "/dev/vdb"], Some(&with)).unwrap(),
            Some(("/dev/vdb".into(), false, false)),
            "an explicit --device does not take reboot from the configuration"
        );
        assert_eq!(
            plan(&["install", "--device", "/dev/vdb", "--reboot"], None).unwrap(),
            Some(("/dev/vdb".into(), true, false))
        );
        assert_eq!(
            plan(&["install", "--unattended"], Some(&with)).unwrap(),
            Some(("auto".into(), true, false))
        );
        // Over an installed system only when asked.
        let over = cfg("install: {device: auto, reboot: true, overwrite: true}\n");
        assert_eq!(
            plan(&["install", "--unattended"], Some(&over)).unwrap(),
            Some(("auto".into(), true, true))
        );
        assert_eq!(
            plan(&["install", "--device", "/dev/vdb", "--force"], None).unwrap(),
            Some(("/dev/vdb".into(), false, true))
        );
        assert_eq!(
            plan(&["install", "--device", "/dev/vdb"], Some(&over)).unwrap(),
            Some(("/dev/vdb".into(), false, false)),
            "an explicit --device does not take overwrite from the configuration"
        );
        assert_eq!(
            plan(&["install", "--unattended"], Some(&without)).unwrap(),
            None
        );
        let e = plan(&["install"], Some(&without)).unwrap_err().to_string();
        assert_eq!(e, "no --device and no install.device in the configuration");
        let e = plan(
            &["install", "--unattended"],
            Some(&cfg("install: {reboot: true}\n")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no install.device"), "{e}");
    }

    #[test]
    fn parses_upgrade_rollback_reset() {
        let a = p(&[
            "upgrade",
            "--json",
            "10.0.2.2:5000/os:v2",
            "--insecure-registry",
            "10.0.2.2:5000",
            "--insecure-registry=reg.lan",
            "--allow-downgrade",
            "--wait-trial",
            "600",
        ])
        .unwrap();
        assert_eq!(a.cmd, Cmd::Upgrade);
        assert_eq!(a.reference.as_deref(), Some("10.0.2.2:5000/os:v2"));
        assert_eq!(a.insecure_registries, ["10.0.2.2:5000", "reg.lan"]);
        assert!(a.json && a.allow_downgrade && !a.retry_failed && !a.reboot);
        assert_eq!(a.wait_trial, Duration::from_secs(600));
        let a = p(&["reset", "--keep-config", "--reboot"]).unwrap();
        assert!(a.cmd == Cmd::Reset && a.keep_config && a.reboot);
        assert_eq!(p(&["rollback"]).unwrap().cmd, Cmd::Rollback);
        for (a, want) in [
            (&["upgrade"][..], "give the upgrade to apply"),
            (&["upgrade", "a", "b"][..], "unexpected argument \"b\""),
            (
                &["rollback", "--keep-config"][..],
                "--keep-config is not an option",
            ),
            (&["reset", "--json"][..], "--json is not an option"),
            (
                &["status", "--allow-downgrade"][..],
                "--allow-downgrade is not an option",
            ),
        ] {
            let e = p(a).unwrap_err().to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn usage_fits_80_columns() {
        assert!(USAGE.lines().all(|l| l.len() <= 80));
    }
}

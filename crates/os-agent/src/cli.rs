//! The command line: a small hand-written parser (the agent stays lean)
//! and the dispatch to the commands.

use std::path::PathBuf;
use std::time::Duration;

use boot_contract::boot_env::{CMDLINE_SLOT, LIVE_SLOT, SLOTS};

use crate::bail;
use crate::bootenv::Commit;
use crate::error::{Error, Result};
use crate::fsutil::Root;
use crate::{apply, health, status, system};

pub const USAGE: &str = "\
Usage: os-agent COMMAND [OPTIONS]

Commands:
  boot-config  Apply the configuration files (run at every boot)
  health       Wait for the boot to finish, commit a healthy trial slot,
               report one line on the console
  status       Show the running slot, boot state, image and boot count
  mark-good    Make the running slot the default boot slot

Options:
  --root DIR          Work on the tree at DIR instead of / (all commands)
  --esp DIR           The ESP is mounted at DIR (health, status, mark-good;
                      default: find the partition named ESP, mount it if
                      needed)
  --json              status: print the versioned JSON document
  --timeout SECS      health: wait at most this long for the system to
                      finish booting (default 600)
  --k3s-timeout SECS  health: wait at most this long for k3s (default 600)
  --console PATH      health: also write the report line here
                      (default /dev/console)
  -h, --help          Print this help
  -V, --version       Print the version
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    BootConfig,
    Health,
    Status,
    MarkGood,
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
            "--console" => args.console = Some(PathBuf::from(value(name)?)),
            _ if name.starts_with('-') => bail!("unknown option {name}; see os-agent --help"),
            _ => {
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
        Cmd::BootConfig => &["--root"],
        Cmd::Health => &["--root", "--esp", "--timeout", "--k3s-timeout", "--console"],
        Cmd::Status => &["--root", "--esp", "--json"],
        Cmd::MarkGood => &["--root", "--esp"],
        Cmd::Help | Cmd::Version => &[],
    };
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
            let r = apply::boot_config(&root)?;
            let files: Vec<String> = r
                .files_read
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            println!(
                "os-agent: config applied boot_count={} files=[{}] hostname={} users=[{}] write_files={} k3s={} ssh_host_keys={}",
                r.boot_count,
                files.join(" "),
                r.hostname.as_deref().unwrap_or("-"),
                r.users.join(" "),
                r.files_written,
                r.k3s_role.map(|x| x.as_str()).unwrap_or("off"),
                if r.ssh_host_keys_generated { "generated" } else { "kept" }
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
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn usage_fits_80_columns() {
        assert!(USAGE.lines().all(|l| l.len() <= 80));
    }
}

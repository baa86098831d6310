//! `os-agent boot-config`: applies the configuration at every boot.
//!
//! Order: count the boot, create missing SSH host keys, load and check
//! every configuration file (nothing is applied when one is invalid), then
//! hostname, users, files, k3s. Each step leaves files as they are when
//! they already hold what the configuration asks, so running it twice
//! changes nothing the second time.

use std::path::PathBuf;
use std::process::Command;

use crate::config::{self, Config, Encoding, Role};
use crate::error::{Context, Error, Result};
use crate::fsutil::{create_dirs, read_optional, write_atomic, Owner, Root};
use crate::users::{self, Accounts};
use crate::{bail, k3s, state, system};

pub const SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// What a run did, for the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub boot_count: u64,
    pub files_read: Vec<PathBuf>,
    pub ssh_host_keys_generated: bool,
    pub hostname: Option<String>,
    pub users: Vec<String>,
    pub files_written: usize,
    pub k3s_role: Option<Role>,
}

/// The whole `boot-config` command. `esp` is the mounted ESP (`--esp`);
/// None looks for it on an A/B boot of the running system (a live boot
/// has none of its own).
pub fn boot_config(root: &Root, esp: Option<&std::path::Path>) -> Result<Report> {
    let slot = system::running_slot(root)?;
    // A broken image.json must not stop the boot from being counted.
    let version = system::image_info(root).ok().and_then(|i| i.version);
    let st = state::record_boot(root, slot.as_deref(), version.as_deref())?;
    let mut report = Report {
        boot_count: st.boot_count,
        ssh_host_keys_generated: ssh_host_keys(root)?,
        ..Report::default()
    };
    let found = match (esp, slot.as_deref()) {
        (None, Some(s)) if boot_contract::boot_env::SLOTS.contains(&s) => {
            crate::bootenv::Esp::find_optional(root)?
        }
        _ => None,
    };
    let loaded = config::load(root, esp.or(found.as_ref().map(|e| e.dir())));
    drop(found); // unmounts an ESP mounted for this
    let (cfg, files) = loaded?;
    report.files_read = files;
    apply(root, &cfg, &mut report)?;
    Ok(report)
}

/// Applies a merged configuration to `root`.
pub fn apply(root: &Root, cfg: &Config, report: &mut Report) -> Result<()> {
    if let Some(h) = &cfg.hostname {
        hostname(root, h)?;
        report.hostname = Some(h.clone());
    }
    let needs_accounts = !cfg.users.is_empty() || cfg.write_files.iter().any(|f| f.owner.is_some());
    let accounts = if needs_accounts {
        let mut acc = Accounts::load(root)?;
        let mut created = Vec::new();
        for (i, u) in cfg.users.iter().enumerate() {
            created.push((acc.ensure_user(u, &format!("users[{i}]"))?, i));
        }
        acc.save()?;
        for (a, i) in &created {
            users::ensure_home(root, a, &cfg.users[*i].ssh_authorized_keys)?;
            report.users.push(a.name.clone());
        }
        users::sudoers(root, &cfg.users)?;
        Some(acc)
    } else {
        None
    };
    for (i, f) in cfg.write_files.iter().enumerate() {
        let field = format!("write_files[{i}] ({})", f.path);
        let data = match f.encoding {
            Encoding::Plain => f.content.clone().into_bytes(),
            Encoding::B64 => crate::b64::decode(&f.content)
                .map_err(|e| Error::msg(format!("{field}.content: not valid base64: {e}")))?,
        };
        let mode = match &f.permissions {
            Some(p) => config::parse_mode(p)
                .ok_or_else(|| Error::msg(format!("{field}.permissions: {p:?} is not octal")))?,
            None => 0o644,
        };
        let (uid, gid) = match (&f.owner, &accounts) {
            (Some(o), Some(acc)) => users::resolve_owner(acc, o, &format!("{field}.owner"))?,
            _ => (0, 0),
        };
        let path = root.join(&f.path);
        let parent = path
            .parent()
            .expect("checked: the path names a file below /");
        create_dirs(parent)?;
        if path.is_dir() {
            bail!("{field}: {} is a directory", path.display());
        }
        write_atomic(&path, &data, Some(Owner { uid, gid, mode }))?;
        report.files_written += 1;
    }
    report.k3s_role = k3s::apply(root, cfg.k3s.as_ref())?;
    Ok(())
}

/// /etc/hostname, a `127.0.1.1` line in /etc/hosts, and the kernel's
/// host name when working on the running system.
pub fn hostname(root: &Root, name: &str) -> Result<()> {
    write_atomic(
        &root.join("/etc/hostname"),
        format!("{name}\n").as_bytes(),
        None,
    )?;
    let hosts_path = root.join("/etc/hosts");
    let old = read_optional(&hosts_path)?.unwrap_or_else(|| {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into()
    });
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("127.0.1.1"))
        .collect();
    let own = format!("127.0.1.1\t{name}");
    lines.push(&own);
    let mut hosts = lines.join("\n");
    hosts.push('\n');
    write_atomic(&hosts_path, hosts.as_bytes(), None)?;
    if root.is_host() {
        rustix::system::sethostname(name.as_bytes())
            .with_context(|| format!("setting the host name to {name}"))?;
    }
    Ok(())
}

/// Runs `ssh-keygen -A` when the image has ssh-keygen and the ed25519 host
/// key is missing (/etc/ssh is persistent, so this happens once).
pub fn ssh_host_keys(root: &Root) -> Result<bool> {
    let keygen = root.join(SSH_KEYGEN);
    if root.join(SSH_HOST_KEY).exists() || !keygen.exists() {
        return Ok(false);
    }
    create_dirs(&root.join("/etc/ssh"))?;
    let mut cmd = Command::new(&keygen);
    cmd.arg("-A");
    if !root.is_host() {
        cmd.arg("-f").arg(root.dir());
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} -A", keygen.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "{} -A failed ({}): {}",
            keygen.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    if !root.join(SSH_HOST_KEY).exists() {
        bail!("{} -A did not create {SSH_HOST_KEY}", keygen.display());
    }
    Ok(true)
}

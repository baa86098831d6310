//! `os-agent boot-config`: applies the configuration at every boot.
//!
//! Order: count the boot, create missing SSH host keys, load and check
//! every configuration file (nothing is applied when one is invalid), then
//! hostname, users, files, k3s. Each step leaves files as they are when
//! they already hold what the configuration asks, so running it twice
//! changes nothing the second time.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use crate::config::{self, Config, Encoding, Role};
use crate::error::{Context, Error, Result};
use crate::fsutil::{create_dirs, read_optional, write_atomic, Owner, Root};
use crate::users::{self, Accounts};
use crate::{bail, k3s, state, system};

/// Where the device's SSH host keys are kept (persistent).
pub const HOST_KEYS_DIR: &str = "/var/lib/os-agent/ssh";
/// The host key whose presence marks a complete set.
pub const HOST_KEY_MARK: &str = "ssh_host_ed25519_key";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// The SSH server; without it there is no password policy to write.
pub const SSHD: &str = "/usr/sbin/sshd";
/// The drop-in that sets sshd's password policy. sshd keeps the first
/// value it reads for a keyword, and Debian's and Ubuntu's sshd_config
/// include `sshd_config.d/*.conf` (in name order) before their own
/// settings: this file's `00-` name puts it before other drop-ins.
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/00-os-agent.conf";

/// What a run did, for the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub boot_count: u64,
    pub files_read: Vec<PathBuf>,
    pub ssh_host_keys: HostKeys,
    pub hostname: Option<String>,
    pub users: Vec<String>,
    pub files_written: usize,
    pub k3s_role: Option<Role>,
    pub ssh_passwords: SshPasswords,
}

/// What [`ssh_passwords`] left in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshPasswords {
    /// The image has no sshd.
    #[default]
    None,
    Off,
    On,
}

impl SshPasswords {
    pub fn as_str(self) -> &'static str {
        match self {
            SshPasswords::None => "none",
            SshPasswords::Off => "off",
            SshPasswords::On => "on",
        }
    }
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
        ssh_host_keys: ssh_host_keys(root)?,
        // Off until a valid configuration allows passwords: a refused
        // configuration must not leave the image's default (Debian: on).
        ssh_passwords: ssh_passwords(root, false)?,
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
            Encoding::B64 => node_config::b64::decode(&f.content)
                .with_context(|| format!("{field}.content: not valid base64"))?,
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
    report.ssh_passwords = ssh_passwords(root, cfg.ssh_passwords_allowed())?;
    Ok(())
}

/// The text of [`SSHD_DROP_IN`]: keys only, or passwords too.
pub fn sshd_drop_in(passwords: bool) -> String {
    let head = "# Written by os-agent boot-config at every boot from the node configuration\n\
                # (`ssh.password_authentication`, docs/config.md); edit that, not this file.\n";
    if passwords {
        format!("{head}PasswordAuthentication yes\n")
    } else {
        format!("{head}PasswordAuthentication no\nKbdInteractiveAuthentication no\n")
    }
}

/// Writes sshd's password policy when the image has sshd. An image whose
/// sshd_config does not include `sshd_config.d` would never read it: that
/// is said on stderr (the boot goes on; the image's own file decides).
pub fn ssh_passwords(root: &Root, allow: bool) -> Result<SshPasswords> {
    if !root.join(SSHD).exists() {
        return Ok(SshPasswords::None);
    }
    let path = root.join(SSHD_DROP_IN);
    create_dirs(path.parent().expect("a path below /etc/ssh"))?;
    write_atomic(
        &path,
        sshd_drop_in(allow).as_bytes(),
        Some(Owner::root(0o644)),
    )?;
    let main = read_optional(&root.join("/etc/ssh/sshd_config"))?.unwrap_or_default();
    let included = main.lines().any(|l| {
        let mut words = l.split_whitespace();
        words
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("include"))
            && words.any(|w| w.contains("sshd_config.d/"))
    });
    if !included {
        eprintln!(
            "os-agent: warning: /etc/ssh/sshd_config does not include sshd_config.d; {SSHD_DROP_IN} (password logins {}) is not read",
            if allow { "on" } else { "off" }
        );
    }
    Ok(if allow {
        SshPasswords::On
    } else {
        SshPasswords::Off
    })
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

/// What [`ssh_host_keys`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostKeys {
    /// The image has no ssh-keygen (no SSH server).
    #[default]
    None,
    /// The device's keys, kept on the persistent partition, put in place.
    Kept,
    /// New keys made (first boot), and kept for the next boots.
    Generated,
}

impl HostKeys {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeys::None => "none",
            HostKeys::Kept => "kept",
            HostKeys::Generated => "generated",
        }
    }
}

/// The SSH host keys: the device's own, kept in [`HOST_KEYS_DIR`] on the
/// persistent partition and copied into /etc/ssh at every boot (the rest
/// of /etc/ssh, sshd_config included, is the running image's, so an
/// upgrade's SSH configuration applies). On the first boot `ssh-keygen -A`
/// makes them and they are saved there, the ed25519 key last: it marks a
/// complete set.
pub fn ssh_host_keys(root: &Root) -> Result<HostKeys> {
    let keygen = root.join(SSH_KEYGEN);
    if !keygen.exists() {
        return Ok(HostKeys::None);
    }
    let etc_ssh = root.join("/etc/ssh");
    let kept = root.join(HOST_KEYS_DIR);
    create_dirs(&etc_ssh)?;
    let saved = host_key_files(&kept)?;
    if saved.iter().any(|n| n == HOST_KEY_MARK) {
        for name in &saved {
            copy_key(&kept.join(name), &etc_ssh.join(name))?;
        }
        return Ok(HostKeys::Kept);
    }
    // Keys an image carries are not the device's own: start from none.
    for name in host_key_files(&etc_ssh)? {
        let p = etc_ssh.join(&name);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
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
    let mut made = host_key_files(&etc_ssh)?;
    if !made.iter().any(|n| n == HOST_KEY_MARK) {
        bail!(
            "{} -A did not create /etc/ssh/{HOST_KEY_MARK}",
            keygen.display()
        );
    }
    create_dirs(&kept)?;
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", kept.display()))?;
    made.sort_by_key(|n| n == HOST_KEY_MARK);
    for name in &made {
        copy_key(&etc_ssh.join(name), &kept.join(name))?;
    }
    Ok(HostKeys::Generated)
}

/// The `ssh_host_*_key` and `ssh_host_*_key.pub` files in `dir`.
fn host_key_files(dir: &std::path::Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_key =
            name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub"));
        if is_key && e.file_type().is_ok_and(|t| t.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Copies a host key file: root's, 0600 for a private key, 0644 for a
/// public one.
fn copy_key(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let public = to.extension().is_some_and(|e| e == "pub");
    write_atomic(
        to,
        &data,
        Some(Owner::root(if public { 0o644 } else { 0o600 })),
    )
}

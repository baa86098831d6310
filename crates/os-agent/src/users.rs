//! Users and groups, edited in /etc/passwd, /etc/shadow, /etc/group and
//! /etc/gshadow directly (no useradd in the image is needed, and it works
//! on a directory tree in tests).
//!
//! /etc is rebuilt from the image at every boot, so users are re-created
//! at every boot. UIDs are allocated deterministically (the lowest free
//! one from 1000, in configuration order, over the image's files), so a
//! user keeps the same UID across boots and the persistent home matches.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bail;
use crate::config::{User, SUDOERS};
use crate::error::{Context, Error, Result};
use crate::fsutil::{read_optional, write_atomic, Owner, Root};

pub const FIRST_UID: u32 = 1000;
pub const LAST_UID: u32 = 59999;
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// The password field of a user created without `passwd`: no password
/// matches it, but it does not lock the account for SSH keys.
pub const NO_PASSWORD: &str = "*";

/// One colon-separated database, lines kept as found.
#[derive(Debug, Clone)]
struct Db {
    path: PathBuf,
    lines: Vec<String>,
    changed: bool,
}

impl Db {
    fn load(path: PathBuf, required: bool) -> Result<Option<Self>> {
        match read_optional(&path)? {
            Some(text) => Ok(Some(Db {
                path,
                lines: text.lines().map(str::to_string).collect(),
                changed: false,
            })),
            None if required => bail!("reading {}: the file does not exist", path.display()),
            None => Ok(None),
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split(':').next() == Some(name) && !l.starts_with('#'))
    }

    fn field(&self, idx: usize, n: usize) -> &str {
        self.lines[idx].split(':').nth(n).unwrap_or("")
    }

    fn set_field(&mut self, idx: usize, n: usize, value: &str) {
        let mut f: Vec<String> = self.lines[idx].split(':').map(str::to_string).collect();
        if f.len() <= n {
            f.resize(n + 1, String::new());
        }
        if f[n] != value {
            f[n] = value.to_string();
            self.lines[idx] = f.join(":");
            self.changed = true;
        }
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
        self.changed = true;
    }

    /// Numeric ids in field `n` (uid or gid).
    fn ids(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        self.lines
            .iter()
            .filter_map(move |l| l.split(':').nth(n)?.parse().ok())
    }

    /// Adds `member` to the comma list in field `n` of `idx`.
    fn add_member(&mut self, idx: usize, n: usize, member: &str) {
        let cur = self.field(idx, n).to_string();
        if cur.split(',').any(|m| m == member) {
            return;
        }
        let new = if cur.is_empty() {
            member.to_string()
        } else {
            format!("{cur},{member}")
        };
        self.set_field(idx, n, &new);
    }

    fn save(&self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let mut text = self.lines.join("\n");
        text.push('\n');
        write_atomic(&self.path, text.as_bytes(), None)
    }
}

/// The account databases of a root.
pub struct Accounts {
    passwd: Db,
    shadow: Db,
    group: Db,
    gshadow: Option<Db>,
}

/// What a configured user resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl Accounts {
    pub fn load(root: &Root) -> Result<Self> {
        Ok(Accounts {
            passwd: Db::load(root.join("/etc/passwd"), true)?.expect("required"),
            shadow: Db::load(root.join("/etc/shadow"), true)?.expect("required"),
            group: Db::load(root.join("/etc/group"), true)?.expect("required"),
            gshadow: Db::load(root.join("/etc/gshadow"), false)?,
        })
    }

    pub fn save(&self) -> Result<()> {
        self.passwd.save()?;
        self.shadow.save()?;
        self.group.save()?;
        if let Some(g) = &self.gshadow {
            g.save()?;
        }
        Ok(())
    }

    /// The uid of user `name`.
    pub fn uid(&self, name: &str) -> Option<u32> {
        let i = self.passwd.find(name)?;
        self.passwd.field(i, 2).parse().ok()
    }

    /// The gid of group `name`.
    pub fn gid(&self, name: &str) -> Option<u32> {
        let i = self.group.find(name)?;
        self.group.field(i, 2).parse().ok()
    }

    fn free_id(&self, also_gid: bool) -> Result<u32> {
        let uids: Vec<u32> = self.passwd.ids(2).collect();
        let gids: Vec<u32> = self.group.ids(2).collect();
        (FIRST_UID..=LAST_UID)
            .find(|id| !(uids.contains(id) || (also_gid && gids.contains(id))))
            .ok_or_else(|| {
                Error::msg(format!(
                    "{}: no free uid between {FIRST_UID} and {LAST_UID}",
                    self.passwd.path.display()
                ))
            })
    }

    /// Creates or updates user `u` (`field` names it in errors, e.g.
    /// `users[0]`).
    pub fn ensure_user(&mut self, u: &User, field: &str) -> Result<Account> {
        let account = match self.passwd.find(&u.name) {
            Some(i) => {
                if let Some(shell) = &u.shell {
                    self.passwd.set_field(i, 6, shell);
                }
                let num = |n: usize| -> Result<u32> {
                    self.passwd.field(i, n).parse().map_err(|_| {
                        Error::msg(format!(
                            "{}: the entry of user {} has no numeric {}",
                            self.passwd.path.display(),
                            u.name,
                            if n == 2 { "uid" } else { "gid" }
                        ))
                    })
                };
                Account {
                    name: u.name.clone(),
                    uid: num(2)?,
                    gid: num(3)?,
                    home: self.passwd.field(i, 5).to_string(),
                }
            }
            None => {
                let gid = match self.gid(&u.name) {
                    Some(g) => g,
                    None => {
                        let id = self.free_id(true)?;
                        self.group.push(format!("{}:x:{id}:", u.name));
                        if let Some(gs) = &mut self.gshadow {
                            if gs.find(&u.name).is_none() {
                                gs.push(format!("{}:!::", u.name));
                            }
                        }
                        id
                    }
                };
                // The user's uid equals its private group's gid when that
                // is a free regular id (always so for a group made here).
                let uid = if (FIRST_UID..=LAST_UID).contains(&gid)
                    && !self.passwd.ids(2).any(|x| x == gid)
                {
                    gid
                } else {
                    self.free_id(false)?
                };
                let home = format!("/home/{}", u.name);
                let shell = u.shell.as_deref().unwrap_or(DEFAULT_SHELL);
                self.passwd
                    .push(format!("{}:x:{uid}:{gid}::{home}:{shell}", u.name));
                Account {
                    name: u.name.clone(),
                    uid,
                    gid,
                    home,
                }
            }
        };
        // Password: the configured hash, else keep what an existing user
        // has, else no password.
        match (self.shadow.find(&u.name), &u.passwd) {
            (Some(i), Some(hash)) => {
                self.shadow.set_field(i, 1, hash);
                // A password in /etc/passwd itself ("*" in base-passwd's
                // master files) would be used instead of the shadow one.
                if let Some(j) = self.passwd.find(&u.name) {
                    self.passwd.set_field(j, 1, "x");
                }
            }
            (Some(_), None) => {}
            (None, pw) => {
                let pw = pw.as_deref().unwrap_or(NO_PASSWORD);
                self.shadow.push(format!("{}:{pw}:::::::", u.name));
            }
        }
        for (k, g) in u.groups.iter().enumerate() {
            let Some(i) = self.group.find(g) else {
                bail!(
                    "{field}.groups[{k}] (user {}): group {g} does not exist in {}",
                    u.name,
                    self.group.path.display()
                );
            };
            self.group.add_member(i, 3, &u.name);
            if let Some(gs) = &mut self.gshadow {
                if let Some(j) = gs.find(g) {
                    gs.add_member(j, 3, &u.name);
                }
            }
        }
        Ok(account)
    }
}

/// Creates `dir` owned by the account with `mode` when missing; refuses a
/// symlink (a user-owned home could point it anywhere).
fn ensure_private_dir(dir: &Path, a: &Account, mode: u32) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "{} (user {}): is a symlink; refusing to follow it",
                dir.display(),
                a.name
            )
        }
        Ok(m) if !m.is_dir() => {
            bail!(
                "{} (user {}): exists and is not a directory",
                dir.display(),
                a.name
            )
        }
        Ok(_) => Ok(()),
        Err(_) => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
            std::os::unix::fs::lchown(dir, Some(a.uid), Some(a.gid))
                .with_context(|| format!("changing the owner of {}", dir.display()))
        }
    }
}

/// Creates the home directory when missing (0700, no skeleton files) and
/// writes `~/.ssh/authorized_keys` (0600) when keys are configured.
pub fn ensure_home(root: &Root, a: &Account, keys: &[String]) -> Result<()> {
    if a.home.is_empty() || !a.home.starts_with('/') || a.home == "/" {
        if keys.is_empty() {
            return Ok(());
        }
        bail!(
            "user {}: home directory {:?} is not usable for ssh_authorized_keys",
            a.name,
            a.home
        );
    }
    let home = root.join(&a.home);
    ensure_private_dir(&home, a, 0o700)?;
    if keys.is_empty() {
        return Ok(());
    }
    let ssh = home.join(".ssh");
    ensure_private_dir(&ssh, a, 0o700)?;
    let m = fs::symlink_metadata(&ssh).with_context(|| format!("reading {}", ssh.display()))?;
    if m.uid() != a.uid || m.mode() & 0o022 != 0 {
        // sshd's StrictModes ignores keys in a directory others can write.
        std::os::unix::fs::lchown(&ssh, Some(a.uid), Some(a.gid))
            .with_context(|| format!("changing the owner of {}", ssh.display()))?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", ssh.display()))?;
    }
    let mut text = keys.join("\n");
    text.push('\n');
    let path = ssh.join("authorized_keys");
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} (user {}): is a symlink; refusing to follow it",
            path.display(),
            a.name
        );
    }
    write_atomic(
        &path,
        text.as_bytes(),
        Some(Owner {
            uid: a.uid,
            gid: a.gid,
            mode: 0o600,
        }),
    )
}

/// Writes the users' `sudo` rules to [`SUDOERS`] (removes it when there
/// are none). A rule for an image without sudo is an error: it would
/// silently grant nothing.
pub fn sudoers(root: &Root, users: &[User]) -> Result<()> {
    let path = root.join(SUDOERS);
    let mut text = String::new();
    for (i, u) in users.iter().enumerate() {
        let Some(rule) = &u.sudo else { continue };
        if !root.join(SUDO).exists() {
            bail!(
                "users[{i}].sudo (user {}): the image has no {SUDO}; add the sudo package to the flavor",
                u.name
            );
        }
        text.push_str(&format!("{} {}\n", u.name, rule.trim()));
    }
    if text.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let text = format!("# Written by os-agent from the node config's users[].sudo.\n{text}");
    crate::fsutil::create_dirs(path.parent().expect("absolute"))?;
    write_atomic(&path, text.as_bytes(), Some(Owner::root(0o440)))
}

pub const SUDO: &str = "/usr/bin/sudo";

/// Resolves `owner` ("user:group", "user", names or numbers) in the
/// databases; a missing group part means the user's primary group.
pub fn resolve_owner(acc: &Accounts, owner: &str, field: &str) -> Result<(u32, u32)> {
    let (u, g) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => acc.uid(u).ok_or_else(|| {
            Error::msg(format!("{field}: user {u} does not exist in /etc/passwd"))
        })?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => acc.gid(g).ok_or_else(|| {
                Error::msg(format!("{field}: group {g} does not exist in /etc/group"))
            })?,
        },
        None => {
            let i = acc.passwd.find(u).ok_or_else(|| {
                Error::msg(format!("{field}: user {u} does not exist in /etc/passwd"))
            })?;
            acc.passwd.field(i, 3).parse().map_err(|_| {
                Error::msg(format!(
                    "{field}: user {u} has no numeric gid in /etc/passwd"
                ))
            })?
        }
    };
    Ok((uid, gid))
}

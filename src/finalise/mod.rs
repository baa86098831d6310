//! Declarative finalisation: the effects of maintainer scripts a booted
//! node needs, computed over the tree (nothing from the image runs on the
//! build host, so any target architecture works). docs/finalisation.md
//! lists each step and what it replaces.

pub mod hwdb;
pub mod k3s;
pub mod ldcache;
pub mod pam;
pub mod systemd;

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use crate::tree::edit::Editor;

/// Facts about the image that finalisation writes into it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub flavor: String,
    pub release: String,
    pub arch: String,
    pub version: String,
    pub k3s_version: Option<String>,
}

/// What finalisation did, for the build log.
#[derive(Debug, Default)]
pub struct Report {
    pub steps: Vec<String>,
    pub enabled_units: BTreeSet<String>,
}

/// The preset that decides which units are enabled on a build-image node,
/// ahead of the distribution's own presets.
pub const PRESET: &str = "\
# build-image: the services a node runs. Units not listed here or in the
# distribution's presets stay disabled.
enable os-agent-config.service
enable os-agent-health.service
enable os-agent-install.service
enable k3s.service
enable k3s-agent.service
enable ssh.service
enable systemd-networkd.service
enable systemd-resolved.service
enable systemd-timesyncd.service
enable getty@.service tty1
enable remote-fs.target
enable systemd-pstore.service
disable ssh.socket
disable systemd-networkd-wait-online.service
disable console-getty.service
disable debug-shell.service
disable *
";

const NETWORK: &str = "\
# build-image: DHCP on every wired interface.
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=yes
";

const SYSUSERS: &str = "\
# build-image: users whose packages create them in maintainer scripts.
u sshd - \"sshd privilege separation\" /run/sshd /usr/sbin/nologin
";

pub fn finalise(ed: &mut Editor<'_>, info: &ImageInfo) -> Result<Report> {
    let mut r = Report::default();
    accounts(ed, &mut r)?;
    dpkg_files(ed, &mut r)?;
    configs(ed, &mut r)?;
    shells(ed, &mut r)?;
    sudoers(ed, &mut r)?;
    ca_certificates(ed, &mut r)?;
    timezone(ed, &mut r)?;
    identity(ed, info, &mut r)?;
    network(ed, &mut r)?;
    watchdog(ed, &mut r)?;
    hwdb(ed, &mut r)?;
    ld_so_cache(ed, info, &mut r)?;
    ed.write(
        "usr/lib/systemd/system-preset/10-build-image.preset",
        PRESET.as_bytes(),
        0o644,
    )?;
    let enabled = systemd::apply_presets(ed).context("enabling systemd units")?;
    r.steps.push(format!(
        "enabled {} systemd units from presets",
        enabled.units.len()
    ));
    r.enabled_units = enabled.units;
    Ok(r)
}

/// base-passwd's postinst copies the master files; shadow's creates the
/// shadow files; base-files' puts root's dotfiles in place.
fn accounts(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    for (file, master) in [("passwd", "passwd.master"), ("group", "group.master")] {
        if !ed.exists(&format!("etc/{file}")) {
            if let Some(m) = ed.read(&format!("usr/share/base-passwd/{master}"))? {
                ed.write(&format!("etc/{file}"), &m, 0o644)?;
                r.steps.push(format!("/etc/{file} from base-passwd"));
            }
        }
    }
    let shadow_gid = ed
        .read_string("etc/group")?
        .and_then(|g| {
            g.lines()
                .find(|l| l.starts_with("shadow:"))
                .and_then(|l| l.split(':').nth(2).and_then(|n| n.parse::<u32>().ok()))
        })
        .unwrap_or(0);
    for (src, dst, line) in [
        (
            "etc/passwd",
            "etc/shadow",
            (|name: &str| format!("{name}:*:19000:0:99999:7:::\n")) as fn(&str) -> String,
        ),
        ("etc/group", "etc/gshadow", |name: &str| {
            format!("{name}:*::\n")
        }),
    ] {
        if ed.exists(dst) {
            continue;
        }
        let Some(text) = ed.read_string(src)? else {
            continue;
        };
        let out: String = text
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|n| !n.is_empty())
            .map(line)
            .collect();
        ed.write(dst, out.as_bytes(), 0o640)?;
        ed.chown(dst, 0, shadow_gid)?;
        // As pwconv/grpconv leave them: "x" sends every lookup of a
        // password to the shadow file (base-passwd's masters say "*",
        // which no password set in /etc/shadow would ever match).
        let shadowed: String = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() > 2 && !l.starts_with('#') {
                    f[1] = "x";
                }
                format!("{}\n", f.join(":"))
            })
            .collect();
        ed.write(src, shadowed.as_bytes(), 0o644)?;
        r.steps.push(format!("/{dst} with every account locked"));
    }
    for (dot, file) in [("dot.profile", ".profile"), ("dot.bashrc", ".bashrc")] {
        let dst = format!("root/{file}");
        if !ed.exists(&dst) {
            if let Some(b) = ed.read(&format!("usr/share/base-files/{dot}"))? {
                ed.mkdir("root", 0o700)?;
                ed.write(&dst, &b, 0o644)?;
            }
        }
    }
    Ok(())
}

/// Configuration files postinsts generate from shipped templates.
fn configs(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    for (dst, src, what) in [
        // openssh-server's postinst (ucf).
        (
            "etc/ssh/sshd_config",
            "usr/share/openssh/sshd_config",
            "sshd_config",
        ),
        // base-files' postinst.
        (
            "etc/nsswitch.conf",
            "usr/share/base-files/nsswitch.conf",
            "nsswitch.conf",
        ),
        ("etc/profile", "usr/share/base-files/profile", "profile"),
        ("etc/motd", "usr/share/base-files/motd", "motd"),
    ] {
        if !ed.exists(dst) {
            if let Some(b) = ed.read(src)? {
                ed.write(dst, &b, 0o644)?;
                r.steps.push(format!("/{dst} ({what}) from /{src}"));
            }
        }
    }
    if !ed.exists("etc/hosts") {
        ed.write(
            "etc/hosts",
            b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
            0o644,
        )?;
    }
    let n = pam::write_common(ed)?;
    if n > 0 {
        r.steps
            .push(format!("{n} /etc/pam.d/common-* files (pam-auth-update)"));
    }
    Ok(())
}

/// dpkg's own files that its postinst would create.
fn dpkg_files(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    if !ed.exists("var/lib/dpkg/status") {
        return Ok(());
    }
    for f in ["available", "diversions", "statoverride"] {
        let p = format!("var/lib/dpkg/{f}");
        if !ed.exists(&p) {
            ed.write(&p, b"", 0o644)?;
        }
    }
    r.steps.push("dpkg database files".into());
    Ok(())
}

/// sudo's postinst: the package ships /etc/sudoers 0644 and then makes it
/// root's and 0440, as sudo expects it.
fn sudoers(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    if ed.exists("etc/sudoers") {
        ed.chmod("etc/sudoers", 0o440)?;
        ed.chown("etc/sudoers", 0, 0)?;
        r.steps.push("/etc/sudoers root's, 0440".into());
    }
    Ok(())
}

/// debianutils' postinst (update-shells) writes /etc/shells.
fn shells(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    let Some(base) = ed.read_string("usr/share/debianutils/shells")? else {
        return Ok(());
    };
    let mut text = base;
    for name in ed.list("usr/share/debianutils/shells.d") {
        if let Some(more) = ed.read_string(&format!("usr/share/debianutils/shells.d/{name}"))? {
            text.push_str(&more);
        }
    }
    // update-shells also lists the /usr/bin twin of each /bin shell on a
    // merged-/usr system.
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut push = |s: String| {
            if seen.insert(s.clone()) {
                out.push_str(&s);
                out.push('\n');
            }
        };
        push(l.to_string());
        if let Some(rest) = l.strip_prefix("/bin/") {
            push(format!("/usr/bin/{rest}"));
        }
    }
    let text = format!("# /etc/shells: valid login shells\n{out}");
    ed.write("etc/shells", text.as_bytes(), 0o644)?;
    r.steps.push("/etc/shells".into());
    Ok(())
}

/// ca-certificates' postinst (update-ca-certificates): the bundle of every
/// shipped certificate. Hash links are left out: OpenSSL, GnuTLS and curl
/// read the bundle.
fn ca_certificates(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    let root = "usr/share/ca-certificates";
    if !ed.exists(root) || ed.exists("etc/ssl/certs/ca-certificates.crt") {
        return Ok(());
    }
    let mut names = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{rel}")
        };
        for n in ed.list(&dir) {
            let child = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            if n.ends_with(".crt") {
                names.push(child);
            } else {
                stack.push(child);
            }
        }
    }
    names.sort();
    let mut bundle = Vec::new();
    let mut conf =
        String::from("# Generated by build-image: every shipped certificate is trusted.\n");
    for n in &names {
        if let Some(pem) = ed.read(&format!("{root}/{n}"))? {
            bundle.extend_from_slice(&pem);
            if !pem.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            conf.push_str(n);
            conf.push('\n');
        }
    }
    ed.mkdir("etc/ssl/certs", 0o755)?;
    ed.write("etc/ssl/certs/ca-certificates.crt", &bundle, 0o644)?;
    ed.write("etc/ca-certificates.conf", conf.as_bytes(), 0o644)?;
    r.steps
        .push(format!("CA bundle of {} certificates", names.len()));
    Ok(())
}

/// tzdata's postinst: UTC.
fn timezone(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    if ed.exists("usr/share/zoneinfo/Etc/UTC") && !ed.exists("etc/localtime") {
        ed.symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC")?;
        ed.write("etc/timezone", b"Etc/UTC\n", 0o644)?;
        r.steps.push("time zone UTC".into());
    }
    Ok(())
}

/// machine-id, hostname, os-release, the image description.
fn identity(ed: &mut Editor<'_>, info: &ImageInfo, r: &mut Report) -> Result<()> {
    // Empty: systemd (and os-init from the persistent partition) fill it
    // in on the device, so no two nodes share one.
    ed.write("etc/machine-id", b"", 0o444)?;
    if ed.exists("var/lib/dbus") || ed.exists("usr/bin/dbus-daemon") {
        ed.mkdir("var/lib/dbus", 0o755)?;
        ed.symlink("var/lib/dbus/machine-id", "/etc/machine-id")?;
    }
    if !ed.exists("etc/hostname") {
        ed.write(
            "etc/hostname",
            format!("{}\n", info.flavor).as_bytes(),
            0o644,
        )?;
    }
    ed.write(
        "etc/fstab",
        b"# The root, its overlay and the persistent partition are mounted by os-init.\n",
        0o644,
    )?;
    if !ed.exists("etc/mtab") {
        ed.symlink("etc/mtab", "../proc/self/mounts")?;
    }
    let base = match ed.read_following("etc/os-release")? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => ed.read_string("usr/lib/os-release")?.unwrap_or_default(),
    };
    let mut text: String = base
        .lines()
        .filter(|l| {
            !["IMAGE_ID=", "IMAGE_VERSION=", "BUILD_IMAGE_VERSION="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "IMAGE_ID=build-image-{}\nIMAGE_VERSION={}\nBUILD_IMAGE_VERSION={}\n",
        info.flavor,
        info.version,
        env!("CARGO_PKG_VERSION")
    ));
    ed.write("usr/lib/os-release", text.as_bytes(), 0o644)?;
    ed.symlink("etc/os-release", "../usr/lib/os-release")?;
    let image = serde_json::json!({
        "apiVersion": crate::API_VERSION,
        "flavor": info.flavor,
        "release": info.release,
        "arch": info.arch,
        "version": info.version,
        "buildImageVersion": env!("CARGO_PKG_VERSION"),
        "k3sVersion": info.k3s_version,
    });
    let mut json = serde_json::to_vec_pretty(&image)?;
    json.push(b'\n');
    ed.write("usr/lib/build-image/image.json", &json, 0o644)?;
    // openssh-server from Debian 13 on declares its user itself
    // (openssh-server.conf); a second declaration only earns a conflict
    // warning from systemd-sysusers at every boot.
    if ed.exists("usr/sbin/sshd") && !sysusers_declares(ed, "sshd")? {
        ed.write(
            "usr/lib/sysusers.d/build-image.conf",
            SYSUSERS.as_bytes(),
            0o644,
        )?;
    }
    r.steps.push(format!(
        "identity: empty machine-id, os-release IMAGE_ID=build-image-{} IMAGE_VERSION={}",
        info.flavor, info.version
    ));
    Ok(())
}

/// Whether a `sysusers.d` file of the image declares the user `name`.
fn sysusers_declares(ed: &Editor<'_>, name: &str) -> Result<bool> {
    for dir in ["usr/lib/sysusers.d", "etc/sysusers.d"] {
        for file in ed.list(dir).into_iter().filter(|f| f.ends_with(".conf")) {
            let Some(text) = ed.read_string(&format!("{dir}/{file}"))? else {
                continue;
            };
            let declares = text.lines().any(|l| {
                let mut words = l.split_whitespace();
                matches!(words.next(), Some("u" | "u!")) && words.next() == Some(name)
            });
            if declares {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// systemd-networkd with DHCP, systemd-resolved's stub as resolv.conf.
fn network(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    if ed.exists("usr/lib/systemd/systemd-networkd") || ed.exists("lib/systemd/systemd-networkd") {
        ed.write(
            "etc/systemd/network/80-build-image-dhcp.network",
            NETWORK.as_bytes(),
            0o644,
        )?;
        r.steps
            .push("DHCP on wired interfaces (systemd-networkd)".into());
    }
    if ed.exists("usr/lib/systemd/systemd-resolved") || ed.exists("lib/systemd/systemd-resolved") {
        ed.symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")?;
    }
    Ok(())
}

/// udev's postinst (`systemd-hwdb update`): the compiled hardware
/// database, so systemd-hwdb-update.service has nothing to do at boot.
fn hwdb(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    if let Some(w) = hwdb::write(ed)? {
        r.steps.push(format!(
            "udev hardware database /{}: {} entries from {} files",
            hwdb::BIN,
            w.entries,
            w.files
        ));
    }
    Ok(())
}

/// libc-bin's trigger (`ldconfig`): the loader's cache, so
/// ldconfig.service has nothing to do at boot.
fn ld_so_cache(ed: &mut Editor<'_>, info: &ImageInfo, r: &mut Report) -> Result<()> {
    let generator = format!("build-image {}", env!("CARGO_PKG_VERSION"));
    match ldcache::write(ed, &info.arch, &generator).context("writing /etc/ld.so.cache")? {
        ldcache::Outcome::Written { entries, dirs } => r.steps.push(format!(
            "loader cache /{}: {entries} libraries from {dirs} directories",
            ldcache::CACHE
        )),
        ldcache::Outcome::LeftToBoot(why) => r.steps.push(format!(
            "no loader cache: {why}; ldconfig.service builds it at boot"
        )),
        ldcache::Outcome::NoLoader => {}
    }
    Ok(())
}

/// systemd pings the hardware watchdog while it runs, so a hung kernel or
/// PID 1 resets the machine (os-init arms the device before systemd for a
/// trial boot; systemd takes it over).
fn watchdog(ed: &mut Editor<'_>, r: &mut Report) -> Result<()> {
    use boot_contract::watchdog::{RUNTIME_SEC, SYSTEMD_DROPIN};
    if !(ed.exists("usr/lib/systemd/systemd") || ed.exists("lib/systemd/systemd")) {
        return Ok(());
    }
    let conf = format!(
        "# build-image: use the hardware watchdog where the machine has one.\n\
         [Manager]\n\
         RuntimeWatchdogSec={RUNTIME_SEC}s\n\
         RebootWatchdogSec=10min\n"
    );
    ed.write(SYSTEMD_DROPIN, conf.as_bytes(), 0o644)?;
    r.steps.push(format!(
        "systemd pings the hardware watchdog every {RUNTIME_SEC} s ({SYSTEMD_DROPIN})"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::edit::Scratch;

    fn info() -> ImageInfo {
        ImageInfo {
            flavor: "debian".into(),
            release: "trixie".into(),
            arch: "amd64".into(),
            version: "1".into(),
            k3s_version: None,
        }
    }

    /// The sshd user is declared once: by build-image for an openssh that
    /// makes it in its postinst (Debian 12), not again where the package
    /// ships a sysusers.d file for it (Debian 13).
    #[test]
    fn sshd_user_is_declared_once() {
        for (ships, ours) in [(false, true), (true, false)] {
            let mut scratch = Scratch::new();
            let mut ed = scratch.editor();
            ed.write("usr/sbin/sshd", b"", 0o755).unwrap();
            if ships {
                ed.write(
                    "usr/lib/sysusers.d/openssh-server.conf",
                    b"u sshd -:nogroup \"sshd user\" /run/sshd\n",
                    0o644,
                )
                .unwrap();
            }
            let mut r = Report::default();
            identity(&mut ed, &info(), &mut r).unwrap();
            assert_eq!(
                ed.exists("usr/lib/sysusers.d/build-image.conf"),
                ours,
                "package ships one: {ships}"
            );
            assert!(sysusers_declares(&ed, "sshd").unwrap());
            assert!(!sysusers_declares(&ed, "ssh").unwrap());
        }
    }
}

//! Large fixtures generated once per target dir: a Debian minbase rootfs
//! tar of a release made with mmdebstrap, and an OCI layout of it (one gzip
//! layer); Debian packages of the host's release or of another one.
//!
//! Parallel test binaries coordinate through a lock file (created with
//! `create_new`, holding the owner's pid; a lock whose owner died is taken
//! over), and results are renamed into place atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::layer::{Compression, Layer};
use super::oci::{host_arch, Image, ImageDigests, OciLayout};
use super::{file_named, require_tool};

/// `target/test-fixtures/`
pub fn fixtures_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap().join("test-fixtures");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Held while a fixture is being made; released when dropped.
pub struct Lock(PathBuf);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes `path.lock`, waiting (up to `max`) while a live process holds it.
pub fn lock(path: &Path, max: Duration) -> Lock {
    let lock_path = path.with_extension("lock");
    let start = Instant::now();
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
        {
            Ok(mut f) => {
                write!(f, "{}", std::process::id()).unwrap();
                return Lock(lock_path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                match owner {
                    Some(pid) if !pid_alive(pid) => {
                        let _ = fs::remove_file(&lock_path);
                        continue;
                    }
                    // Being written right now: give the owner a moment.
                    None if start.elapsed() > Duration::from_secs(5) => {
                        let _ = fs::remove_file(&lock_path);
                        continue;
                    }
                    _ => {}
                }
                assert!(
                    start.elapsed() < max,
                    "timed out waiting for {}",
                    lock_path.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot create {}: {e}", lock_path.display()),
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// The release of the default flavor (`--flavor debian`): `trixie`.
pub fn default_release() -> String {
    build_image::flavor::Flavor::load("debian").unwrap().release
}

/// The default release's minbase, [`debian_minbase_of`].
pub fn debian_minbase() -> PathBuf {
    debian_minbase_of(&default_release())
}

/// The default release's OCI layout, [`debian_layout_of`].
pub fn debian_layout() -> (OciLayout, ImageDigests) {
    debian_layout_of(&default_release())
}

/// A Debian minbase rootfs tar (uncompressed) of `release`, made once
/// with `mmdebstrap --variant=minbase` from deb.debian.org and cached in
/// `target/test-fixtures/debian-RELEASE-minbase.tar`.
pub fn debian_minbase_of(release: &str) -> PathBuf {
    let out = fixtures_dir().join(format!("debian-{release}-minbase.tar"));
    if out.exists() {
        return out;
    }
    let _lock = lock(&out, Duration::from_secs(900));
    if out.exists() {
        return out;
    }
    require_tool("mmdebstrap", "mmdebstrap");
    let tmp = out.with_extension("tar.partial");
    let mode = if is_root() {
        "--mode=root"
    } else {
        "--mode=unshare"
    };
    let mut last = String::new();
    for _attempt in 0..3 {
        let _ = fs::remove_file(&tmp);
        let res = Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--variant=minbase",
                mode,
                "--aptopt=Acquire::Retries \"5\"",
                "--format=tar",
                release,
            ])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        if res.status.success() {
            fs::rename(&tmp, &out).unwrap();
            return out;
        }
        last = String::from_utf8_lossy(&res.stderr).to_string();
    }
    let lines: Vec<&str> = last.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    panic!("mmdebstrap {release} failed 3 times; the tail of its last stderr:\n{tail}");
}

/// An OCI layout in `target/test-fixtures/debian-RELEASE-minbase-oci`
/// holding the minbase tar of `release` as one gzip layer, tagged with the
/// release's name, for the host arch.
pub fn debian_layout_of(release: &str) -> (OciLayout, ImageDigests) {
    let tar = debian_minbase_of(release);
    let dir = fixtures_dir().join(format!("debian-{release}-minbase-oci"));
    let meta = dir.with_extension("json");
    let _lock = lock(&dir, Duration::from_secs(900));
    if dir.join("index.json").exists() && meta.exists() {
        let layout = OciLayout::create(&dir);
        let d: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
        let digests = ImageDigests {
            manifest: d["manifest"].as_str().unwrap().into(),
            manifest_size: d["manifest_size"].as_u64().unwrap(),
            manifest_json: fs::read(layout.blob_path(d["manifest"].as_str().unwrap())).unwrap(),
            manifest_media_type: d["manifest_media_type"].as_str().unwrap().into(),
            config: d["config"].as_str().unwrap().into(),
            config_json: fs::read(layout.blob_path(d["config"].as_str().unwrap())).unwrap(),
            layers: serde_json::from_value(d["layers"].clone()).unwrap(),
            platform: d["platform"].as_str().unwrap().into(),
        };
        return (layout, digests);
    }
    let _ = fs::remove_dir_all(&dir);
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let layer = Layer::from_tar(fs::read(&tar).unwrap(), Compression::Gzip);
    let layout = OciLayout::create(&partial);
    let digests = layout.add_image(release, &Image::new(host_arch(), vec![layer]));
    fs::rename(&partial, &dir).unwrap();
    let d = serde_json::json!({
        "manifest": digests.manifest,
        "manifest_size": digests.manifest_size,
        "manifest_media_type": digests.manifest_media_type,
        "config": digests.config,
        "layers": digests.layers,
        "platform": digests.platform,
    });
    fs::write(&meta, serde_json::to_vec(&d).unwrap()).unwrap();
    (OciLayout::create(&dir), digests)
}

/// The current Debian bookworm kernel package for `arch` (`amd64`,
/// `arm64`): whatever `linux-image-ARCH` depends on today, downloaded once
/// (see [`debian_package_deb`]).
pub fn debian_kernel_deb(arch: &str) -> PathBuf {
    let hint = format!(
        "run apt-get update; for a foreign architecture, dpkg --add-architecture {arch} first"
    );
    debian_package_deb(&kernel_package(&[], arch, &hint), arch)
}

/// A Debian bookworm package (`grub-efi-amd64-signed`, …) downloaded once
/// with `apt-get download` into `target/test-fixtures/debs-ARCH/`.
pub fn debian_package_deb(package: &str, arch: &str) -> PathBuf {
    let dir = fixtures_dir().join(format!("debs-{arch}"));
    download_deb(&dir, package, arch, "", |attempt| {
        if attempt > 0 {
            // A fresh machine has no package lists yet, and old ones name
            // versions the archive has dropped: update them before the
            // next try.
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Vec::new()
    })
}

/// Debian's architecture name for the machine the tests run on.
pub fn host_debian_arch() -> String {
    require_tool("dpkg", "dpkg");
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg --print-architecture failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// apt options that read bookworm's package lists for `arch` from a private
/// state directory, `target/test-fixtures/apt-ARCH/`, so packages of another
/// architecture resolve without `dpkg --add-architecture` or any change to
/// /etc/apt. The lists are fetched on first use, and again when `refresh`
/// is set or they are older than a day (a point release removes the
/// previous kernel from the archive).
pub fn foreign_apt_options(arch: &str, refresh: bool) -> Vec<String> {
    private_apt_options(
        &fixtures_dir().join(format!("apt-{arch}")),
        "deb http://deb.debian.org/debian bookworm main\n\
         deb http://deb.debian.org/debian bookworm-updates main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n",
        arch,
        refresh,
        &format!("the {arch} package lists"),
    )
}

/// Like [`debian_package_deb`], for any architecture: a package of the
/// host's architecture comes through the host's apt, one of another
/// architecture through [`foreign_apt_options`]. Cached in the same
/// `target/test-fixtures/debs-ARCH/`.
pub fn debian_package_deb_for(package: &str, arch: &str) -> PathBuf {
    if arch == host_debian_arch() {
        return debian_package_deb(package, arch);
    }
    let dir = fixtures_dir().join(format!("debs-{arch}"));
    download_deb(&dir, package, arch, "", |attempt| {
        // A failure may come from stale lists: fetch them again before the
        // next try.
        foreign_apt_options(arch, attempt > 0)
    })
}

/// Like [`debian_kernel_deb`], for any architecture: the package
/// `linux-image-ARCH` depends on today, resolved from the lists of
/// [`foreign_apt_options`] when `arch` is not the host's.
pub fn debian_kernel_deb_for(arch: &str) -> PathBuf {
    if arch == host_debian_arch() {
        return debian_kernel_deb(arch);
    }
    let hint = format!("from the lists in target/test-fixtures/apt-{arch}");
    let pkg = kernel_package(&foreign_apt_options(arch, false), arch, &hint);
    debian_package_deb_for(&pkg, arch)
}

/// apt options that read the package lists of Debian `release` (e.g.
/// "trixie") for `arch` from a private state directory,
/// `target/test-fixtures/apt-RELEASE-ARCH/`, fetched on first use and again
/// when older than a day or when `refresh` is set. /etc/apt is not touched.
pub fn release_apt_options(release: &str, arch: &str, refresh: bool) -> Vec<String> {
    private_apt_options(
        &fixtures_dir().join(format!("apt-{release}-{arch}")),
        &format!("deb http://deb.debian.org/debian {release} main\n"),
        arch,
        refresh,
        &format!("Debian {release} ({arch})"),
    )
}

/// A package of Debian `release` (e.g. `grub-pc-bin` of trixie) downloaded
/// once with `apt-get download` through [`release_apt_options`], cached in
/// `target/test-fixtures/debs-RELEASE-ARCH/`.
pub fn debian_release_deb(release: &str, package: &str, arch: &str) -> PathBuf {
    let dir = fixtures_dir().join(format!("debs-{release}-{arch}"));
    download_deb(
        &dir,
        package,
        arch,
        &format!(" from Debian {release}"),
        |attempt| {
            // A failure may come from stale lists (a point release
            // replaced the package): fetch them again before the next try.
            release_apt_options(release, arch, attempt > 0)
        },
    )
}

/// The package `linux-image-ARCH` depends on today, as `apt-cache` with
/// apt options `opts` resolves it; `hint` says where an unresolved one was
/// looked up or how to fix that.
fn kernel_package(opts: &[String], arch: &str, hint: &str) -> String {
    let depends = Command::new("apt-cache")
        .args(opts)
        .args(["depends", &format!("linux-image-{arch}:{arch}")])
        .output()
        .expect("apt-cache not found");
    let text = String::from_utf8_lossy(&depends.stdout);
    let pkg = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| {
            panic!(
                "apt-cache cannot resolve linux-image-{arch} ({hint}):\n{text}{}",
                String::from_utf8_lossy(&depends.stderr)
            )
        })
        .trim();
    // apt-cache may print the package as NAME:ARCH.
    pkg.split(':').next().unwrap().to_string()
}

/// `package:arch` as a .deb in `dir`: the one already there, or one
/// downloaded with `apt-get download` (run with `apt_options(attempt)`,
/// up to three attempts) into a partial directory and renamed into place.
/// `from` ends the error message (e.g. " from Debian trixie").
fn download_deb(
    dir: &Path,
    package: &str,
    arch: &str,
    from: &str,
    apt_options: impl Fn(u32) -> Vec<String>,
) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let prefix = format!("{package}_");
    let find = |dir: &Path| file_named(dir, &prefix, ".deb");
    if let Some(p) = find(dir) {
        return p;
    }
    let _lock = lock(&dir.join(package), Duration::from_secs(600));
    if let Some(p) = find(dir) {
        return p;
    }
    require_tool("apt-get", "apt");
    let partial = dir.join(format!("{package}.partial"));
    let mut last = String::new();
    for attempt in 0..3 {
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).unwrap();
        let out = Command::new("apt-get")
            .args(apt_options(attempt))
            .args(["download", "-q", &format!("{package}:{arch}")])
            .current_dir(&partial)
            .output()
            .unwrap();
        if out.status.success() {
            if let Some(p) = find(&partial) {
                let dest = dir.join(p.file_name().unwrap());
                fs::rename(&p, &dest).unwrap();
                let _ = fs::remove_dir_all(&partial);
                return dest;
            }
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!("apt-get download {package}:{arch}{from} failed 3 times:\n{last}");
}

/// apt options that read the package lists of `sources` (a sources.list)
/// for `arch` from the private state directory `dir`, fetched on first use
/// and again when older than a day or when `refresh` is set. /etc/apt is
/// not touched. `what` names the lists in the error message.
fn private_apt_options(
    dir: &Path,
    sources: &str,
    arch: &str,
    refresh: bool,
    what: &str,
) -> Vec<String> {
    let lists = dir.join("lists");
    let sources_list = dir.join("sources.list");
    let opts: Vec<String> = [
        format!("APT::Architecture={arch}"),
        format!("APT::Architectures={arch}"),
        format!("Dir::Etc::sourcelist={}", sources_list.display()),
        "Dir::Etc::sourceparts=-".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache::archives={}", dir.join("archives").display()),
        "Acquire::Retries=3".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    let stamp = dir.join("updated");
    let fresh = |stamp: &Path| {
        fs::metadata(stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600))
    };
    if !refresh && fresh(&stamp) {
        return opts;
    }
    fs::create_dir_all(dir).unwrap();
    let _lock = lock(dir, Duration::from_secs(600));
    if !refresh && fresh(&stamp) {
        return opts;
    }
    require_tool("apt-get", "apt");
    for d in [lists.join("partial"), dir.join("archives/partial")] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(&sources_list, sources).unwrap();
    let _ = fs::remove_file(&stamp);
    let mut last = String::new();
    for _ in 0..3 {
        let out = Command::new("apt-get")
            .args(&opts)
            .args(["update", "-q"])
            .output()
            .unwrap();
        if out.status.success() {
            fs::write(&stamp, b"").unwrap();
            return opts;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!(
        "apt-get update of {what} in {} failed 3 times:\n{last}",
        dir.display()
    );
}

/// skopeo 1.18 and cosign 2.5 from Debian trixie, run on this machine
/// without installing them: bookworm's skopeo 1.9 cannot verify sigstore
/// signatures (Debian patched it out), and trixie's skopeo needs trixie's
/// glibc. The debs (skopeo, cosign, libc6 and skopeo's libraries) are
/// downloaded with a private apt sources list and state (nothing under
/// /etc/apt or /var/lib/apt changes) into
/// `target/test-fixtures/trixie-tools/` and extracted there; `skopeo` is a
/// wrapper running trixie's skopeo through trixie's dynamic loader (cosign
/// needs only glibc 2.34 and runs as it is).
pub struct TrixieTools {
    pub skopeo: PathBuf,
    pub cosign: PathBuf,
}

/// The tools, fetched once; `Err` with apt's output if the fetch failed
/// (no network to deb.debian.org): callers skip loudly, naming it.
pub fn trixie_tools() -> Result<TrixieTools, String> {
    let dir = fixtures_dir().join("trixie-tools");
    let tools = TrixieTools {
        skopeo: dir.join("skopeo"),
        cosign: dir.join("cosign"),
    };
    let ready = |t: &TrixieTools| t.skopeo.is_file() && t.cosign.exists();
    if ready(&tools) {
        return Ok(tools);
    }
    let _lock = lock(&dir, Duration::from_secs(600));
    if ready(&tools) {
        return Ok(tools);
    }
    require_tool("apt-get", "apt");
    require_tool("dpkg-deb", "dpkg");
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let apt = partial.join("apt");
    for d in ["lists/partial", "archives/partial", "etc"] {
        fs::create_dir_all(apt.join(d)).unwrap();
    }
    fs::write(
        apt.join("etc/sources.list"),
        "deb http://deb.debian.org/debian trixie main\n",
    )
    .unwrap();
    let deb_arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let mut opts = vec![
        format!(
            "-oDir::Etc::sourcelist={}",
            apt.join("etc/sources.list").display()
        ),
        "-oDir::Etc::sourceparts=-".to_string(),
        format!("-oDir::State::lists={}", apt.join("lists").display()),
        format!("-oDir::Cache::archives={}", apt.join("archives").display()),
        format!("-oAPT::Architecture={deb_arch}"),
        "-oAcquire::Retries=3".to_string(),
    ];
    if is_root() {
        // The private directories belong to root, not to apt's _apt user.
        opts.push("-oAPT::Sandbox::User=root".into());
    }
    let run = |args: &[&str], cwd: &Path| -> Result<(), String> {
        let out = Command::new("apt-get")
            .args(&opts)
            .args(args)
            .current_dir(cwd)
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&["-qq", "update"], &partial)?;
    run(
        &[
            "-qq",
            "download",
            "skopeo",
            "cosign",
            "libc6",
            "libgpgme11t64",
            "libassuan9",
            "libgpg-error0",
            "libsqlite3-0",
        ],
        &apt.join("archives"),
    )?;
    let root = partial.join("root");
    fs::create_dir_all(&root).unwrap();
    for e in fs::read_dir(apt.join("archives")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "deb") {
            let st = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&p)
                .arg(&root)
                .status()
                .unwrap();
            assert!(st.success(), "dpkg-deb -x {} failed", p.display());
        }
    }
    let (triplet, loader) = match deb_arch.as_str() {
        "arm64" => ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
        _ => ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    };
    let final_root = dir.join("root");
    let libs = final_root.join("usr/lib").join(triplet);
    let wrapper = format!(
        "#!/bin/sh\nexec {} --library-path {} {} \"$@\"\n",
        libs.join(loader).display(),
        libs.display(),
        final_root.join("usr/bin/skopeo").display()
    );
    fs::write(partial.join("skopeo"), wrapper).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(partial.join("skopeo"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(final_root.join("usr/bin/cosign"), partial.join("cosign")).unwrap();
    let _ = fs::remove_dir_all(partial.join("apt"));
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir).unwrap();
    let out = Command::new(&tools.skopeo)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.contains("skopeo version 1."),
        "trixie's skopeo does not run: {version}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(tools)
}

/// The current kernel package of Debian `release` (e.g. "trixie") for
/// `arch`: whatever `linux-image-ARCH` depends on in the lists of
/// [`release_apt_options`], downloaded once (see [`debian_release_deb`]).
pub fn debian_release_kernel_deb(release: &str, arch: &str) -> PathBuf {
    let mut text = String::new();
    for refresh in [false, true] {
        let opts = release_apt_options(release, arch, refresh);
        let depends = Command::new("apt-cache")
            .args(&opts)
            .args(["depends", &format!("linux-image-{arch}:{arch}")])
            .output()
            .expect("apt-cache not found");
        text = String::from_utf8_lossy(&depends.stdout).into_owned();
        let pkg = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            // apt-cache may print the package as NAME:ARCH.
            .map(|p| p.trim().split(':').next().unwrap().to_string());
        if let Some(pkg) = pkg {
            return debian_release_deb(release, &pkg, arch);
        }
    }
    panic!("apt-cache cannot resolve linux-image-{arch} of Debian {release}:\n{text}");
}

//! The main job end to end: `build-image` builds a real image — a Debian
//! base pushed to a local registry, the real Debian kernel and packages
//! from the archive, os-agent and os-init from `cargo xtask components`,
//! k3s from a stand-in image (the real rancher/k3s image cannot be fetched
//! here) — and the disk boots under QEMU: UEFI (OVMF) and BIOS (SeaBIOS),
//! with systemd up, no failed units, a virtio NIC driver autoloaded by
//! udev, and the persistent partition created and kept across reboots.
//! Hostile inputs fail with clear errors and leave no output behind.
//!
//! The default flavor (Debian's current stable release) goes through every
//! path; `debian-12` through its builds and one boot per firmware (OVMF,
//! SeaBIOS, AAVMF), at the end of the file.
//!
//! The Raspberry Pi card is in `card` (tests/build_image/card.rs). Its
//! raspi3b boots use one host thread for about a quarter of an hour, so
//! it runs beside the other tests here rather than in a binary of its
//! own, which would leave the other core idle meanwhile.

#[path = "build_image/card.rs"]
mod card;
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use boot_contract::grubenv::GrubEnv;
use common::abdisk::{arm_trial_of_b, read_fat_file};
use common::fixtures::{debian_layout_of, debian_minbase_of, fixtures_dir};
use common::images::{self, components, k3s_standin_layout, DEFAULT_FLAVOR, K3S_TAG, NO_SUCH_KEY};
use common::qemu::{boot_line, fresh_vars, tail, Vm, AAVMF_VARS, OVMF_VARS, OVMF_VARS_MS};
use common::registry::Registry;
use common::ssh::{free_port, text as ssh_text, Key, Ssh};
use common::{assert_bmap_copy_equals, require_tool, sparse_copy, TestEnv};

/// One build at a time in this binary: they share the blob cache.
static BUILD: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shared_cache() -> PathBuf {
    fixtures_dir().join("build-cache")
}

fn config_file(dir: &Path) -> PathBuf {
    let p = dir.join("node.yaml");
    fs::write(&p, images::node_config()).unwrap();
    p
}

/// [`config_file`] with `key` as admin's key and as root's, and admin
/// allowed to use sudo without a password.
fn config_with_key(dir: &Path, key: &Key) -> PathBuf {
    let p = config_file(dir);
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace(NO_SUCH_KEY, &key.public)
        .replace(
            "    groups: [sudo]\n",
            "    groups: [sudo]\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n",
        );
    let text = text.replacen(
        "users:\n",
        &format!(
            "users:\n  - name: root\n    ssh_authorized_keys: [\"{}\"]\n",
            key.public
        ),
        1,
    );
    fs::write(&p, text).unwrap();
    p
}

/// The PC every image test boots: 1.5 GiB, two CPUs.
fn pc() -> Vm {
    Vm::x86_64(1536).args(["-smp", "2"])
}

/// The agent's boot line from `console`, checked to start with `prefix`
/// and to report no failed units; `what` names the boot in messages.
fn boot_ok(console: &str, what: &str, prefix: &str) -> String {
    let line = boot_line(console)
        .unwrap_or_else(|| panic!("{what}: no boot line:\n{}", tail(console, 80)));
    assert!(
        line.starts_with(prefix),
        "{what}: {line}\n{}",
        tail(console, 60)
    );
    assert!(line.contains("failed_units=0"), "{what}: {line}");
    line
}

/// The arm64 machine every image test boots.
fn arm() -> Vm {
    Vm::aarch64(1536).args(["-smp", "2"])
}

fn list_squashfs(path: &Path) -> String {
    require_tool("unsquashfs", "squashfs-tools");
    let o = Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds an image of `flavor` for `arch` from `base` with the k3s
/// stand-in and the test config, `--json`; returns the output directory
/// and the result.
fn build(
    env: &TestEnv,
    flavor: &str,
    arch: &str,
    base: &str,
    version: &str,
) -> (PathBuf, serde_json::Value) {
    let config = config_file(env.tmp.path());
    build_with(env, flavor, arch, base, version, &config, "dist", &[])
}

/// [`build`] with another config, into `env.tmp/out_name`, with `extra`
/// arguments.
#[allow(clippy::too_many_arguments)]
fn build_with(
    env: &TestEnv,
    flavor: &str,
    arch: &str,
    base: &str,
    version: &str,
    config: &Path,
    out_name: &str,
    extra: &[&str],
) -> (PathBuf, serde_json::Value) {
    let reg = Registry::start();
    let k3s = k3s_standin_layout(arch, env.tmp.path());
    reg.push(&k3s, K3S_TAG, "rancher/k3s");
    let comps = components();
    let out = env.tmp.path().join(out_name);
    let comps = format!("oci-layout:{}", comps.display());
    let k3s_image = reg.image("rancher/k3s", K3S_TAG);
    let cache = shared_cache();
    let mut args: Vec<&str> = vec!["--cache-dir", cache.to_str().unwrap(), "--json"];
    // The default flavor is what a build without --flavor makes.
    if flavor != DEFAULT_FLAVOR {
        args.extend(["--flavor", flavor]);
    }
    args.extend([
        "--arch",
        arch,
        "--base",
        base,
        "--k3s-image",
        &k3s_image,
        "--components",
        &comps,
        "--config",
        config.to_str().unwrap(),
        "--image-version",
        version,
        "--output",
        out.to_str().unwrap(),
    ]);
    args.extend(extra);
    let o = env.run_raw(&args);
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (out, serde_json::from_slice(&o.stdout).unwrap())
}

/// A copy of `disk` 1 GiB bigger (a disk the image was dd'd to), and a
/// copy of the firmware's variable store, in `work`.
fn vm_disk(disk: &Path, vars_template: &str, work: &Path) -> (PathBuf, PathBuf) {
    fs::create_dir_all(work).unwrap();
    let vm = work.join("disk.raw");
    sparse_copy(disk, &vm);
    let f = fs::OpenOptions::new().write(true).open(&vm).unwrap();
    f.set_len(fs::metadata(disk).unwrap().len() + (1 << 30))
        .unwrap();
    let vars = work.join("VARS.fd");
    fresh_vars(vars_template, &vars);
    (vm, vars)
}

/// The amd64 disk image: built from a registry base, checked with the
/// reference tools, booted with OVMF and then SeaBIOS (persist survives),
/// then a failed trial of slot b is rolled back to slot a.
#[test]
fn debian_amd64_builds_and_boots_uefi_and_bios_with_persistence() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let release = images::flavor(DEFAULT_FLAVOR).release;
    let reg = Registry::start();
    let (base, digests) = debian_layout_of(&release);
    reg.push(&base, &release, "library/debian");
    let env = TestEnv::new();
    let config = config_file(env.tmp.path());
    let (out, result) = build_with(
        &env,
        DEFAULT_FLAVOR,
        "amd64",
        &reg.image("library/debian", &release),
        "1.0.0-test",
        &config,
        "dist",
        // Boots of slot b fail their health check (tests/fixtures/k3s-standin.rs).
        &["--cmdline", "standin.fail_slot=b"],
    );
    assert_eq!(result["kind"], "BuildResult");
    assert_eq!(result["release"], release.as_str());
    assert_eq!(result["k3sVersion"], "v1.31.4+k3s1");
    let arts = result["artifacts"].as_array().unwrap();
    for a in arts {
        let p = Path::new(a["path"].as_str().unwrap());
        if a["format"] == "upgrade" {
            // A directory, named by its manifest's digest.
            let l = build_image::upgrade::read_layout(p).unwrap();
            assert_eq!(l.manifest_digest.as_str(), a["digest"].as_str().unwrap());
            continue;
        }
        assert_eq!(
            format!("sha256:{}", common::sha256_file(p)),
            a["digest"].as_str().unwrap()
        );
        assert_eq!(fs::metadata(p).unwrap().len(), a["size"].as_u64().unwrap());
    }
    let disk = images::output(&out, DEFAULT_FLAVOR, "amd64", "raw");
    let rootfs = images::output(&out, DEFAULT_FLAVOR, "amd64", "squashfs");
    assert!(disk.is_file() && rootfs.is_file());
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "temporary files left in the output: {names:?}"
    );

    // The lock pins the base, the components and k3s by digest.
    let lock: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("build-image.lock")).unwrap()).unwrap();
    assert_eq!(lock["base"]["manifestDigest"], digests.manifest.as_str());
    assert!(lock["k3s"]["manifestDigest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(lock["components"]["manifestDigest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    // ... and the Release of each source, fetched over HTTPS, with its date.
    let repos = lock["repositories"].as_array().unwrap();
    let suites: Vec<&str> = repos.iter().map(|r| r["suite"].as_str().unwrap()).collect();
    assert_eq!(
        suites,
        [
            release.clone(),
            format!("{release}-updates"),
            format!("{release}-security")
        ]
    );
    for r in repos {
        assert!(
            r["url"]
                .as_str()
                .unwrap()
                .starts_with("https://deb.debian.org/"),
            "{r}"
        );
        assert!(r["date"].as_str().unwrap().ends_with(" UTC"), "{r}");
    }
    let pkgs = lock["packages"].as_array().unwrap();
    assert!(pkgs.iter().any(|p| p["name"] == "systemd"));
    assert!(pkgs
        .iter()
        .any(|p| p["name"].as_str().unwrap().starts_with("linux-image-")));

    // The root filesystem, read with the reference tool.
    let listing = list_squashfs(&rootfs);
    for want in [
        "/usr/bin/os-agent",
        "/usr/local/bin/k3s",
        "/etc/os-agent/config.yaml",
        "/etc/systemd/system/multi-user.target.wants/os-agent-health.service",
        "/etc/systemd/system/multi-user.target.wants/os-agent-install.service",
        "/etc/systemd/system/multi-user.target.wants/k3s.service",
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/modules.alias.bin",
        "/usr/lib/build-image/image.json",
        // Compiled at build time: systemd-hwdb-update.service stays idle.
        "/usr/lib/udev/hwdb.bin",
    ] {
        assert!(listing.contains(want), "{want} missing from the root");
    }

    // The disk: a clean GPT, no persist yet (os-init makes it).
    require_tool("sgdisk", "gdisk");
    assert_gpt_clean(&disk);
    let p = Command::new("sgdisk")
        .arg("-p")
        .arg(&disk)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&p.stdout).into_owned();
    for name in ["bios_grub", "ESP", "root_a", "root_b"] {
        assert!(table.contains(name), "{name} missing:\n{table}");
    }
    assert!(!table.contains("persist"), "{table}");

    // Boot 1, UEFI: as if dd'd to a bigger disk.
    let (vm_disk, vars) = vm_disk(&disk, OVMF_VARS, &env.tmp.path().join("boot"));
    // udev may load the NIC's driver after the boot is reported (systemd
    // does not wait for coldplug to settle): wait for both.
    let c1 = pc().ovmf(&vars).virtio_disk(&vm_disk).nic().run_until_all(
        &["os-agent: boot ", "renamed from eth0"],
        Duration::from_secs(600),
    );
    let line = boot_ok(
        &c1,
        "UEFI",
        "os-agent: boot ok slot=a version=1.0.0-test k3s=v1.31.4+k3s1",
    );
    assert!(line.contains("boot_count=1"), "{line}");
    assert!(c1.contains("os-init: created persist"), "{}", tail(&c1, 80));
    assert!(c1.contains("ssh_host_keys=generated"), "{}", tail(&c1, 80));
    assert!(
        c1.contains("os-init: freed the initramfs: "),
        "{}",
        tail(&c1, 80)
    );
    // virtio_net is not in the initramfs: udev loaded it from the alias.
    assert!(
        c1.contains("virtio_net virtio0 ") && c1.contains("renamed from eth0"),
        "no sign that udev loaded the NIC driver:\n{}",
        tail(&c1, 80)
    );
    assert!(
        c1.contains("k3s stand-in: server running"),
        "{}",
        tail(&c1, 80)
    );
    assert!(!c1.contains("FAILED"), "{}", tail(&c1, 80));

    // Boot 2, BIOS: the same disk through GRUB's core.img; the boot count
    // on the persistent partition says it survived.
    let c2 = pc()
        .no_sse42()
        .virtio_disk(&vm_disk)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(600));
    let line = boot_ok(&c2, "BIOS", "os-agent: boot ok slot=a");
    assert!(line.contains("boot_count=2"), "{line}\n{}", tail(&c2, 60));
    // The device's SSH host keys came back from the persistent partition.
    assert!(c2.contains("ssh_host_keys=kept"), "{}", tail(&c2, 60));
    assert!(
        c2.contains("crc32c-intel.ko: not for this machine"),
        "{}",
        tail(&c2, 60)
    );
    assert_gpt_clean(&vm_disk);

    // Boot 3: a trial of slot b (the same image, as an upgrade would write
    // it) that fails its health check: the agent records it and reboots,
    // and QEMU (-no-reboot) exits.
    arm_trial_of_b(
        &vm_disk,
        esp_offset(&vm_disk),
        partition_offset(&vm_disk, "root_b"),
        &rootfs,
    );
    let (status, c3) = pc()
        .ovmf(&vars)
        .virtio_disk(&vm_disk)
        .nic()
        .run(Duration::from_secs(600));
    assert!(c3.contains("os-init: root root_b is"), "{}", tail(&c3, 80));
    let line = boot_line(&c3).unwrap_or_else(|| panic!("no boot line:\n{}", tail(&c3, 80)));
    assert!(
        line.starts_with("os-agent: boot degraded slot=b")
            && line.contains("k3s-standin-fault.service"),
        "{line}"
    );
    assert!(
        c3.contains(
            "os-agent: trial of slot b (version 1.0.0-test) failed its health check: rebooting into slot a"
        ),
        "{}",
        tail(&c3, 80)
    );
    assert!(status.is_some(), "no reboot:\n{}", tail(&c3, 40));

    // Boot 4: GRUB cleared the trial, so slot a, still the default.
    let c4 = pc()
        .ovmf(&vars)
        .virtio_disk(&vm_disk)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(600));
    let line = boot_ok(&c4, "after the rollback", "os-agent: boot ok slot=a");
    assert!(line.contains("boot_count=4"), "{line}");
    let env = esp_env(&vm_disk);
    assert_eq!(env.get("trial_slot"), Some(""), "{env:?}");
    assert_eq!(env.get("default_slot"), Some("a"), "{env:?}");
}

/// The ESP's offset in `disk`, from its GPT.
fn esp_offset(disk: &Path) -> u64 {
    partition_offset(disk, "ESP")
}

/// The byte offset of the partition named `name` in `disk` (sgdisk).
fn partition_offset(disk: &Path, name: &str) -> u64 {
    let p = Command::new("sgdisk").arg("-p").arg(disk).output().unwrap();
    let table = String::from_utf8_lossy(&p.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("no partition {name}:\n{table}"));
    let first: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    first * 512
}

/// The primary GRUB environment block of the disk's ESP.
fn esp_env(disk: &Path) -> GrubEnv {
    GrubEnv::parse(&read_fat_file(disk, esp_offset(disk), "/grubenv")).unwrap()
}

fn write_flavor(dir: &Path, text: &str) -> PathBuf {
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    for e in fs::read_dir(root().join("flavors/keys")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), keys.join(e.file_name())).unwrap();
    }
    let p = dir.join("test.yaml");
    fs::write(&p, text).unwrap();
    p
}

/// The text of the default flavor's file (`flavors/debian-13.yaml`).
fn debian_flavor() -> String {
    let id = images::flavor(DEFAULT_FLAVOR).id;
    fs::read_to_string(root().join(format!("flavors/{id}.yaml"))).unwrap()
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn assert_no_output(out: &Path) {
    let left: Vec<String> = fs::read_dir(out)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        out.display()
    );
}

#[test]
fn a_flavor_file_with_errors_is_refused_by_line_and_field() {
    let env = TestEnv::new();
    let text = debian_flavor().replace("init: systemd\n", "init: systemd\nbootlaoder: grub\n");
    let flavor = write_flavor(env.tmp.path(), &text);
    let out = env.tmp.path().join("dist");
    let o = env.run(&[
        "--flavor",
        flavor.to_str().unwrap(),
        "--without",
        "k3s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("test.yaml"), "{err}");
    assert!(err.contains("bootlaoder"), "{err}");
    assert!(err.contains("line"), "{err}");
    assert_no_output(&out);
}

#[test]
fn a_repository_whose_signature_does_not_verify_is_refused() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    // The main archive checked against the security archive's key only.
    let release = images::flavor(DEFAULT_FLAVOR).release;
    let main_keys = format!(
        "      - keys/debian-archive-{release}-stable.gpg\n      - keys/debian-archive-{release}-automatic.gpg\n"
    );
    let text = debian_flavor();
    assert!(text.contains(&main_keys), "{text}");
    let text = text.replace(
        &main_keys,
        &format!("      - keys/debian-archive-{release}-security-automatic.gpg\n"),
    );
    let flavor = write_flavor(env.tmp.path(), &text);
    let out = env.tmp.path().join("dist");
    let comps = format!("oci-layout:{}", components().display());
    let o = env.run_raw(&[
        "--cache-dir",
        shared_cache().to_str().unwrap(),
        "--flavor",
        flavor.to_str().unwrap(),
        "--base",
        "archive",
        "--components",
        &comps,
        "--without",
        "k3s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("InRelease"), "{err}");
    assert!(err.to_lowercase().contains("signature"), "{err}");
    assert_no_output(&out);
}

/// A rebuild into an output directory whose lock file recorded a newer
/// Release of the archive than the one served now (here: one dated 2100)
/// is refused before anything is installed, naming the InRelease, fetched
/// over HTTPS, and the lock file; the lock file stays as it was.
#[test]
fn a_release_older_than_the_lock_file_records_is_refused() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let out = env.tmp.path().join("dist");
    fs::create_dir_all(&out).unwrap();
    let lock = out.join("build-image.lock");
    let release = images::flavor(DEFAULT_FLAVOR).release;
    let text = serde_json::json!({
        "apiVersion": "build-image/v1alpha1",
        "kind": "BuildLock",
        "repositories": [{
            "url": "https://deb.debian.org/debian",
            "suite": release,
            "codename": release,
            "date": "Fri, 01 Jan 2100 00:00:00 UTC",
        }],
    })
    .to_string();
    fs::write(&lock, &text).unwrap();
    let comps = format!("oci-layout:{}", components().display());
    let o = env.run_raw(&[
        "--cache-dir",
        shared_cache().to_str().unwrap(),
        "--base",
        "archive",
        "--components",
        &comps,
        "--without",
        "k3s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "https://deb.debian.org/debian/dists/{release}/InRelease"
        )),
        "{err}"
    );
    assert!(
        err.contains("older than the one seen before (2100-01-01 00:00:00 UTC, recorded in")
            && err.contains(&lock.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&lock).unwrap(), text);
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["build-image.lock"],
        "left behind in {}",
        out.display()
    );
}

/// Secure Boot (OVMF enforcing, with Microsoft's keys as PCs ship) checks
/// what docs/security.md says and no more: shim, GRUB and the kernel carry
/// the distribution's signatures, so the image boots, and boots even with
/// its grub.cfg and initrd changed after the build (neither is signed); a
/// kernel with one byte changed is refused before it runs.
#[test]
fn secure_boot_checks_shim_grub_and_kernel_but_not_grub_cfg_or_initrd() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let config = config_file(env.tmp.path());
    let (out, _) = build_with(
        &env,
        DEFAULT_FLAVOR,
        "amd64",
        "archive",
        "1.0.0-sb",
        &config,
        "sb",
        &["--format", "disk"],
    );
    let work = env.tmp.path().join("sb-boot");
    let (disk, vars) = vm_disk(
        &images::output(&out, DEFAULT_FLAVOR, "amd64", "raw"),
        OVMF_VARS_MS,
        &work,
    );
    let image = format!("{}@@{}", disk.display(), esp_offset(&disk));
    let mtools = |tool: &str, args: &[&str]| {
        Command::new(tool)
            .arg("-i")
            .arg(&image)
            .args(args)
            .output()
            .unwrap()
    };
    let edit = |name: &str, change: &dyn Fn(Vec<u8>) -> Vec<u8>| -> bool {
        let local = work.join("edit");
        let o = mtools(
            "mcopy",
            &["-o", &format!("::{name}"), local.to_str().unwrap()],
        );
        if !o.status.success() {
            return false;
        }
        fs::write(&local, change(fs::read(&local).unwrap())).unwrap();
        let o = mtools(
            "mcopy",
            &["-o", local.to_str().unwrap(), &format!("::{name}")],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        true
    };

    // The unsigned parts, changed: a word on the kernel command line (in
    // every grub.cfg GRUB might read), 4 KiB of zeros after the initrd.
    let mark = |cfg: Vec<u8>| {
        let text = String::from_utf8(cfg).unwrap();
        assert!(text.contains("bi.slot=$slot "), "{text}");
        text.replace("bi.slot=$slot ", "bi.slot=$slot sbtest=unsigned-grub-cfg ")
            .into_bytes()
    };
    assert!(edit("/EFI/debian/grub.cfg", &mark));
    for other in ["/EFI/BOOT/grub.cfg", "/EFI/ubuntu/grub.cfg"] {
        edit(other, &mark);
    }
    assert!(edit("/a/initrd", &|mut b| {
        b.extend_from_slice(&[0; 4096]);
        b
    }));
    let c = pc()
        .ovmf_secure_boot(&vars)
        .virtio_disk(&disk)
        .run_until("os-agent: boot ", Duration::from_secs(900));
    assert!(c.contains("Secure boot enabled"), "{}", tail(&c, 80));
    assert!(
        c.lines()
            .any(|l| l.contains("Kernel command line:") && l.contains("sbtest=unsigned-grub-cfg")),
        "{}",
        tail(&c, 80)
    );
    boot_ok(
        &c,
        "Secure Boot",
        "os-agent: boot ok slot=a version=1.0.0-sb",
    );

    // One byte of the kernel changed: its signature no longer matches.
    assert!(edit("/a/vmlinuz", &|mut k| {
        let i = k.len() / 2;
        k[i] ^= 0x01;
        k
    }));
    let (_, c) = pc()
        .ovmf_secure_boot(&vars)
        .virtio_disk(&disk)
        .run(Duration::from_secs(300));
    assert!(
        !c.contains("Kernel command line:") && !c.contains("os-init"),
        "a changed kernel ran under Secure Boot:\n{}",
        tail(&c, 60)
    );
    assert!(c.contains("bad shim signature"), "{}", tail(&c, 60));
}

/// arm64 on this x86_64 machine without emulation at build time: the base
/// bootstrapped from the Debian archive, booted under AAVMF; the ISO too.
#[test]
fn debian_arm64_builds_from_the_archive_and_boots_under_aavmf() {
    let (env, out) = arm64_builds_from_the_archive_and_boots(DEFAULT_FLAVOR, "1.0.0-arm");

    // The arm64 ISO: UEFI only, booted live from a (virtio-scsi) CD.
    let iso = images::output(&out, DEFAULT_FLAVOR, "arm64", "iso");
    let o = Command::new("xorriso")
        .arg("-indev")
        .arg(&iso)
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("El Torito boot img :   1  UEFI") && !report.contains("BIOS"),
        "{report}"
    );
    let vars = env.tmp.path().join("iso-vars.fd");
    fresh_vars(AAVMF_VARS, &vars);
    let c = arm()
        .aavmf(&vars)
        .scsi_cd(&iso)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(900));
    boot_ok(&c, "ISO", "os-agent: boot ok slot=live version=1.0.0-arm");
    assert!(
        c.contains("os-init: live medium DEBIAN_ARM64_1_0_0_ARM is /dev/sr0"),
        "{}",
        tail(&c, 60)
    );
}

/// The arm64 build of `flavor` from the archive, its disk booted under
/// AAVMF to `boot ok slot=a` with persist created and the k3s stand-in
/// up. Returns the environment and the output directory.
fn arm64_builds_from_the_archive_and_boots(flavor: &str, version: &str) -> (TestEnv, PathBuf) {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let (out, result) = build(&env, flavor, "arm64", "archive", version);
    assert_eq!(result["arch"], "arm64");
    let disk = images::output(&out, flavor, "arm64", "raw");
    let p = Command::new("sgdisk")
        .arg("-p")
        .arg(&disk)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&p.stdout).into_owned();
    assert!(
        !table.contains("bios_grub") && table.contains("root_a"),
        "{table}"
    );
    let listing = list_squashfs(&images::output(&out, flavor, "arm64", "squashfs"));
    assert!(listing.contains("/usr/lib/grub/arm64-efi-signed") || listing.contains("grubaa64"));
    assert!(images::output(&out, flavor, "arm64", "iso").is_file());

    let (vm_disk, vars) = vm_disk(&disk, AAVMF_VARS, &env.tmp.path().join("boot"));
    let c = arm()
        .aavmf(&vars)
        .virtio_pci_disk(&vm_disk)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(900));
    boot_ok(
        &c,
        "AAVMF",
        &format!("os-agent: boot ok slot=a version={version} k3s=v1.31.4+k3s1"),
    );
    assert!(c.contains("os-init: created persist"), "{}", tail(&c, 80));
    assert!(
        c.contains("k3s stand-in: server running"),
        "{}",
        tail(&c, 80)
    );
    (env, out)
}

#[test]
fn a_package_whose_hash_does_not_match_its_index_is_refused() {
    use common::aptrepo::{real_debs, serve, Repo};
    let env = TestEnv::new();
    let repo = Repo::new(&real_debs());
    repo.publish("bookworm", "Sat, 11 Jul 2099 10:16:37 UTC", |_, s| s, |b| b);
    // The signed index has the real hash; the pool now serves other bytes.
    let pool = repo.dir.path().join("pool/main");
    let hello = fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hello_")
        })
        .unwrap();
    let mut bytes = fs::read(&hello).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&hello, &bytes).unwrap();
    let url = serve(repo.dir.path().to_path_buf());
    let dir = env.tmp.path().join("flavor");
    fs::create_dir_all(dir.join("keys")).unwrap();
    fs::write(dir.join("keys/test.asc"), repo.gpg.public_key()).unwrap();
    let arch = &repo.arch;
    let flavor = dir.join("test.yaml");
    fs::write(
        &flavor,
        format!(
            "name: test\ndescription: Test\nrelease: bookworm\npackage-format: deb\ninit: systemd\n\
             architectures: [{arch}]\nbase:\n  image: docker.io/library/debian:bookworm\n\
             repositories:\n  - name: test\n    url:\n      {arch}: {url}\n    suites: [bookworm]\n\
             \x20   components: [main]\n    keyrings: [keys/test.asc]\n\
             packages:\n  common: [hello]\n  kernel:\n    {arch}: [sl]\n  bootloader:\n    {arch}: [libncurses6]\n"
        ),
    )
    .unwrap();
    // The repository serves bookworm's packages (the host's): a bookworm
    // base, as the flavor's release says.
    let base = debian_minbase_of("bookworm");
    let out = env.tmp.path().join("dist");
    let comps = format!("oci-layout:{}", components().display());
    let build = |flavor: &Path| {
        env.run(&[
            "--json",
            "--flavor",
            flavor.to_str().unwrap(),
            "--arch",
            arch,
            "--base",
            &format!("rootfs-tar:{}", base.display()),
            "--components",
            &comps,
            "--without",
            "k3s",
            "-o",
            out.to_str().unwrap(),
        ])
    };

    // A package the repository does not have: refused while the inputs
    // are resolved, before any package is downloaded.
    let missing = dir.join("missing.yaml");
    fs::write(
        &missing,
        fs::read_to_string(&flavor)
            .unwrap()
            .replace("common: [hello]", "common: [hello, no-such-package]"),
    )
    .unwrap();
    let o = build(&missing);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("package no-such-package not found in") && err.contains("missing.yaml"),
        "{err}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["kind"], "Error");
    assert_eq!(doc["exitCode"], 1);
    assert!(doc["message"].as_str().unwrap().contains("no-such-package"));
    let cached_debs = walk_files(&env.cache)
        .iter()
        .filter(|p| fs::read(p).is_ok_and(|b| b.starts_with(b"!<arch>")))
        .count();
    assert_eq!(cached_debs, 0, "a .deb was downloaded before the check");
    assert_no_output(&out);

    let o = build(&flavor);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("package hello"), "{err}");
    assert!(err.contains("sha256"), "{err}");
    assert!(err.contains("signed index"), "{err}");
    assert_no_output(&out);
}

/// With SOURCE_DATE_EPOCH, two builds from the same inputs are
/// byte-identical: disk, ISO, root filesystem, upgrade artifact and lock
/// file. The second also pushes its upgrade artifact (`--push`).
#[test]
fn builds_are_reproducible() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let comps = components();
    let reg = Registry::start();
    let target = reg.image("fleet/os", "20251009.085320");
    let mut env = TestEnv::new();
    env.env("SOURCE_DATE_EPOCH", "1760000000");
    let mut sums = Vec::new();
    let mut results = Vec::new();
    for run in ["one", "two"] {
        let out = env.tmp.path().join(run);
        let mut args = vec![
            "--cache-dir",
            shared_cache().to_str().unwrap(),
            "--json",
            "--arch",
            "amd64",
            "--base",
            "archive",
            "--without",
            "k3s",
            "--components",
            &format!("oci-layout:{}", comps.display()),
            "-o",
            out.to_str().unwrap(),
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        if run == "two" {
            args.extend(["--push".to_string(), target.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = env.run_raw(&args);
        assert!(
            o.status.success(),
            "build failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["version"], "20251009.085320");
        // Without --flavor: Debian's current stable release, and it says so.
        let f = images::flavor(DEFAULT_FLAVOR);
        assert_eq!(
            (r["flavor"].as_str(), r["release"].as_str()),
            (Some("debian"), Some(f.release.as_str()))
        );
        let said = format!("building {} for amd64 (flavor {})", f.description, f.id);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&said),
            "{said:?} not on stderr"
        );
        let s: Vec<(String, String)> = r["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let p = Path::new(a["path"].as_str().unwrap());
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    a["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // squashfs, raw, raw.bmap, iso, upgrade, lock.
        assert_eq!(s.len(), 6, "{s:?}");
        sums.push(s);
        results.push(r);
    }
    assert_eq!(sums[0], sums[1]);

    // The default build writes the upgrade artifact: a layout skopeo reads
    // and build-image's push accepts, whose config describes the build and
    // whose root layer is the .squashfs itself (a hardlink, not a copy).
    let digest_of = |format: &str| -> String {
        results[0]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["format"] == format)
            .unwrap_or_else(|| panic!("no {format} artifact: {}", results[0]))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let one = env.tmp.path().join("one");
    let upgrade = images::output(&one, images::DEFAULT_FLAVOR, "amd64", "upgrade");
    let raw = common::skopeo_inspect_oci_raw(&upgrade, "20251009.085320");
    assert_eq!(common::sha256_digest(&raw), digest_of("upgrade"));
    let layout = build_image::upgrade::read_layout(&upgrade).unwrap();
    let c = &layout.config;
    assert_eq!(
        (c.arch.as_str(), c.version.as_str(), c.created.as_str()),
        ("amd64", "20251009.085320", "2025-10-09T08:53:20Z")
    );
    assert_eq!(c.rootfs_digest, digest_of("squashfs"));
    assert_eq!(c.lock_digest, digest_of("lock"));
    assert!(
        c.kernel.ends_with("-amd64") && c.k3s_version.is_none(),
        "{c:?}"
    );
    use std::os::unix::fs::MetadataExt;
    let root_blob = upgrade
        .join("blobs/sha256")
        .join(&c.rootfs_digest["sha256:".len()..]);
    assert_eq!(
        fs::metadata(&root_blob).unwrap().ino(),
        fs::metadata(images::output(
            &one,
            images::DEFAULT_FLAVOR,
            "amd64",
            "squashfs"
        ))
        .unwrap()
        .ino()
    );
    // --push sent exactly that artifact.
    assert_eq!(results[1]["push"]["digest"], digest_of("upgrade").as_str());
    assert_eq!(
        common::sha256_digest(&common::skopeo_inspect_raw(&target, None)),
        digest_of("upgrade")
    );
}

/// How a live boot attaches the ISO and which firmware starts it.
#[derive(Debug, Clone, Copy)]
enum Medium {
    Cd,
    /// The ISO `dd`'d to a disk.
    Disk,
    /// The ISO `dd`'d to a USB stick.
    Usb,
}

/// A PC booting `iso` as `medium`, with OVMF (`vars` given) or SeaBIOS.
fn live_pc(iso: &Path, medium: Medium, vars: Option<&Path>) -> Vm {
    let vm = match vars {
        Some(vars) => pc().ovmf(vars),
        None => pc().no_sse42(),
    };
    match medium {
        Medium::Cd => vm.ide_cd(iso),
        Medium::Disk => vm.virtio_disk_ro(iso),
        Medium::Usb => vm.usb_stick(iso),
    }
    .nic()
}

fn check_iso_with_reference_tools(iso: &Path, label: &str) {
    require_tool("xorriso", "xorriso");
    let o = Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}");
    for want in [
        "El Torito boot img :   1  BIOS",
        "El Torito boot img :   2  UEFI",
        "boot-info-table grub2-boot-info",
    ] {
        assert!(report.contains(want), "no {want:?} in:\n{report}");
    }
    require_tool("isoinfo", "genisoimage");
    let o = Command::new("isoinfo")
        .arg("-d")
        .arg("-i")
        .arg(iso)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{info}");
    for want in [
        format!("Volume id: {label}"),
        "Application id: build-image".into(),
        "Rock Ridge signatures".into(),
        "Joliet".into(),
    ] {
        assert!(info.contains(&want), "no {want:?} in:\n{info}");
    }
    // Started from the CD, GRUB reads its config from the ISO 9660 side.
    for cfg in ["/EFI/debian/grub.cfg", "/EFI/BOOT/grub.cfg"] {
        let o = Command::new("isoinfo")
            .args(["-R", "-x", cfg, "-i"])
            .arg(iso)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains(&format!("--label --set=root {label}")),
            "{cfg} on the ISO:\n{text}"
        );
    }
    assert_gpt_clean(iso);
}

/// The live ISO boots from CD, a dd'd disk and a USB stick, with SeaBIOS
/// and OVMF, and the live system reports `boot ok slot=live`; its menu's
/// install entry installs to a blank disk.
#[test]
fn debian_amd64_iso_boots_live_from_cd_disk_and_usb_with_bios_and_uefi() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let key = Key::generate(env.tmp.path(), "admin");
    let config = config_with_key(env.tmp.path(), &key);
    let (out, result) = build_with(
        &env,
        DEFAULT_FLAVOR,
        "amd64",
        "archive",
        "1.0.0-iso",
        &config,
        "live",
        &["--format", "iso"],
    );
    let arts = result["artifacts"].as_array().unwrap();
    let formats: Vec<&str> = arts.iter().map(|a| a["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["squashfs", "iso", "lock"], "{result}");
    assert!(!images::output(&out, DEFAULT_FLAVOR, "amd64", "raw").exists());
    let iso = images::output(&out, DEFAULT_FLAVOR, "amd64", "iso");
    let label = "DEBIAN_AMD64_1_0_0_ISO";
    check_iso_with_reference_tools(&iso, label);

    let doc = inspect_iso(&env, &iso);
    assert_eq!(doc["volumeId"], label);
    assert_eq!(
        doc["applicationId"],
        format!(
            "build-image {} debian amd64 1.0.0-iso",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(doc["install"]["image"]["version"], "1.0.0-iso");

    let cases = [
        (Medium::Cd, false, "/dev/sr0"),
        (Medium::Cd, true, "/dev/sr0"),
        (Medium::Disk, false, "/dev/vda"),
        (Medium::Disk, true, "/dev/vda"),
        (Medium::Usb, true, "/dev/sda"),
    ];
    for (i, (medium, uefi, dev)) in cases.into_iter().enumerate() {
        let vars = env.tmp.path().join(format!("VARS-{i}.fd"));
        fresh_vars(OVMF_VARS, &vars);
        let c = live_pc(&iso, medium, uefi.then_some(vars.as_path()))
            .run_until("os-agent: boot ", Duration::from_secs(600));
        let what = format!("{medium:?} with {}", if uefi { "OVMF" } else { "SeaBIOS" });
        boot_ok(&c, &what, "os-agent: boot ok slot=live version=1.0.0-iso");
        assert!(
            c.contains(&format!("os-init: live medium {label} is {dev}")),
            "{what}:\n{}",
            tail(&c, 60)
        );
    }

    // The menu's install entry, chosen at the console (OVMF reads the
    // serial line as a keyboard): no install config, yet it installs to
    // the blank disk and reboots.
    let target = env.tmp.path().join("target.raw");
    let needed = doc["install"]["min_device_size"].as_u64().unwrap();
    blank_disk(&target, needed + (1 << 30));
    let vars = env.tmp.path().join("VARS-install.fd");
    fresh_vars(OVMF_VARS, &vars);
    let c = live_pc(&iso, Medium::Cd, Some(&vars))
        .virtio_disk(&target)
        .keys_on("(live)", &["\x1b[B", "\r"])
        .run_until("os-agent: rebooting", Duration::from_secs(900));
    assert!(
        c.contains("os-agent: installed debian 1.0.0-iso to /dev/vda"),
        "the install entry did not install:\n{}",
        tail(&c, 80)
    );
    assert_gpt_clean(&target);

    install_over_ssh(&env, &iso, &key);
}

/// What a user of the live system does over SSH: only the configured key
/// gets in, and sudo works for the user the config allows it;
/// `os-agent install --config` refuses a bad file before touching
/// the disk, then installs and puts the file on the new ESP; the installed
/// disk boots (SeaBIOS) and applies that file over the image's own.
/// What the node says of its loader cache: whether ldconfig.service ran
/// this boot, and the cache's libc and generator lines.
const LOADER_CACHE: &str = "systemctl show -P ConditionResult ldconfig.service && \
     /sbin/ldconfig -p | grep -E '^\\s+libc\\.so\\.6 |^Cache generated by'";

/// The image's own `/etc/ld.so.cache` is used: ldconfig.service skipped
/// the boot (`ConditionResult=no`) and the cache lists libc.
fn assert_loader_cache(o: &std::process::Output) {
    let text = ssh_text(o);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(o.status.success(), "{text}");
    assert_eq!(lines.first(), Some(&"no"), "ldconfig.service ran: {text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("libc.so.6 (libc6,x86-64) => /")
                && l.ends_with("lib/x86_64-linux-gnu/libc.so.6")),
        "{text}"
    );
    assert!(
        lines.contains(&concat!(
            "Cache generated by: build-image ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

fn install_over_ssh(env: &TestEnv, iso: &Path, key: &Key) {
    let stranger = Key::generate(env.tmp.path(), "stranger");
    let target = env.tmp.path().join("target-ssh.raw");
    let doc = inspect_iso(env, iso);
    let needed = doc["install"]["min_device_size"].as_u64().unwrap();
    blank_disk(&target, needed + (1 << 30));
    let device_config = format!(
        "hostname: node-installed\nssh: {{password_authentication: true}}\nusers:\n  - name: root\n    ssh_authorized_keys: [\"{}\"]\n",
        key.public
    );
    let install =
        "cat > /run/node.yaml && os-agent install --device /dev/vda --config /run/node.yaml";
    let ssh = Ssh { port: free_port() };
    let (done, c) = pc()
        .no_sse42()
        .ide_cd(iso)
        .virtio_disk(&target)
        .nic_ssh(ssh.port)
        .while_up("os-agent: boot ", Duration::from_secs(600), |_| {
            ssh.wait(key, "admin", Duration::from_secs(180))?;
            Ok::<_, String>([
                ssh.run(key, "admin", "id -un && sudo -n id -u", b""),
                ssh.run(key, "admin", LOADER_CACHE, b""),
                ssh.run(&stranger, "admin", "true", b""),
                ssh.run(&stranger, "root", "true", b""),
                ssh.run(key, "root", install, b"hostname: node-x\nhostnme: typo\n"),
                ssh.run(key, "root", "cmp -n 2097152 /dev/vda /dev/zero", b""),
                ssh.run(key, "root", install, device_config.as_bytes()),
            ])
        });
    let [who, loader, stranger_admin, stranger_root, bad, untouched, good] = done
        .unwrap_or_else(|| panic!("live system over SSH: no boot line:\n{}", tail(&c, 80)))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&c, 80)));
    boot_ok(&c, "live system over SSH", "os-agent: boot ok slot=live");
    assert!(who.status.success(), "{}", ssh_text(&who));
    assert_eq!(
        String::from_utf8_lossy(&who.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["admin", "0"],
        "admin over SSH, then root through sudo"
    );
    assert_loader_cache(&loader);
    for (o, user) in [(&stranger_admin, "admin"), (&stranger_root, "root")] {
        assert!(
            !o.status.success() && ssh_text(o).contains("Permission denied"),
            "an unknown key got in as {user}: {}",
            ssh_text(o)
        );
        // sshd lists the methods it would still accept: keys only, no
        // password logins by default.
        assert!(
            ssh_text(o).contains("Permission denied (publickey)"),
            "sshd offers more than keys to {user}: {}",
            ssh_text(o)
        );
    }
    assert!(!bad.status.success(), "a bad --config was accepted");
    let bad = ssh_text(&bad);
    assert!(
        bad.contains("/run/node.yaml") && bad.contains("hostnme"),
        "the error does not name the file and the field: {bad}"
    );
    assert!(
        untouched.status.success(),
        "a refused --config left writes on the disk: {}",
        ssh_text(&untouched)
    );
    let good = ssh_text(&good);
    assert!(
        good.contains("os-agent: installed debian 1.0.0-iso to /dev/vda"),
        "{good}\n{}",
        tail(&c, 40)
    );

    // The installed disk alone, under SeaBIOS: the ESP's config applies.
    let ssh = Ssh { port: free_port() };
    let (hostname, c) = pc()
        .no_sse42()
        .virtio_disk(&target)
        .nic_ssh(ssh.port)
        .while_up("os-agent: boot ", Duration::from_secs(600), |_| {
            ssh.wait(key, "root", Duration::from_secs(180))?;
            Ok::<_, String>((
                ssh.run(key, "root", "hostname && os-agent status --json", b""),
                ssh.run(&stranger, "root", "true", b""),
            ))
        });
    let (hostname, stranger_root) = hostname
        .unwrap_or_else(|| panic!("installed disk: no boot line:\n{}", tail(&c, 80)))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&c, 80)));
    // The ESP's config allows password logins: sshd now offers them.
    assert!(
        ssh_text(&stranger_root).contains("Permission denied (publickey,password)"),
        "ssh.password_authentication: true did not reach sshd: {}",
        ssh_text(&stranger_root)
    );
    boot_ok(
        &c,
        "disk installed over SSH",
        "os-agent: boot ok slot=a version=1.0.0-iso",
    );
    let applied = c
        .lines()
        .find(|l| l.contains("os-agent: config applied"))
        .unwrap_or_else(|| panic!("no config line:\n{}", tail(&c, 80)));
    assert!(
        applied.contains("build-image/config.yaml")
            && applied.contains("hostname=node-installed")
            && applied.contains("ssh_passwords=on"),
        "{applied}"
    );
    let out = String::from_utf8_lossy(&hostname.stdout);
    let (name, status) = out
        .split_once('\n')
        .unwrap_or_else(|| panic!("{}", ssh_text(&hostname)));
    assert_eq!(name, "node-installed", "{}", ssh_text(&hostname));
    let status: serde_json::Value = serde_json::from_str(status)
        .unwrap_or_else(|e| panic!("os-agent status --json: {e}: {status}"));
    assert_eq!(status["slot"], "a", "{status}");
    assert_eq!(status["version"], "1.0.0-iso", "{status}");
}

/// A disk of `len` bytes with nothing on it (sparse).
fn blank_disk(path: &Path, len: u64) {
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// `sgdisk -v` finds no problem in the GPT of `disk`.
fn assert_gpt_clean(disk: &Path) {
    require_tool("sgdisk", "gdisk");
    let o = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.contains("No problems found"), "{}: {v}", disk.display());
}

fn inspect_iso(env: &TestEnv, iso: &Path) -> serde_json::Value {
    let o = env.run_raw(&["--json", "inspect", iso.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The unattended install: a machine booted from the ISO with a blank disk
/// and `install: {device: auto, reboot: true}` installs itself, reboots,
/// and the disk alone then boots slot a. A disk too small for the image is
/// refused and left without a partition table.
#[test]
fn debian_amd64_iso_installs_itself_to_a_blank_disk_and_refuses_a_small_one() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let config = config_file(env.tmp.path());
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("install:\n  device: auto\n  reboot: true\n");
    fs::write(&config, text).unwrap();
    let (out, _) = build_with(
        &env,
        DEFAULT_FLAVOR,
        "amd64",
        "archive",
        "1.0.0-inst",
        &config,
        "inst",
        &["--format", "iso"],
    );
    let iso = images::output(&out, DEFAULT_FLAVOR, "amd64", "iso");
    let doc = inspect_iso(&env, &iso);
    let needed = doc["install"]["min_device_size"].as_u64().unwrap();

    // Too small: refused before anything is written.
    let small = env.tmp.path().join("small.raw");
    blank_disk(&small, (needed - (64 << 20)) & !0xfffff);
    let c = live_pc(&iso, Medium::Cd, None)
        .virtio_disk(&small)
        .run_until("too small: needs", Duration::from_secs(600));
    let at = c
        .find("os-agent: install failed: --device auto: no suitable disk")
        .unwrap_or_else(|| panic!("no install failure:\n{}", tail(&c, 80)));
    assert!(
        c[at..].contains("vda ") && c[at..].contains("too small"),
        "{}",
        &c[at..]
    );
    let head = fs::read(&small).unwrap();
    assert!(
        head[..2 << 20].iter().all(|&b| b == 0),
        "the small disk was written to"
    );

    // Big enough: installed, and QEMU exits on the reboot.
    let target = env.tmp.path().join("target.raw");
    blank_disk(&target, needed + (1 << 30));
    let c = live_pc(&iso, Medium::Cd, None)
        .virtio_disk(&target)
        .run_until("os-agent: rebooting", Duration::from_secs(900));
    assert!(
        c.contains("os-agent: installed debian 1.0.0-inst to /dev/vda"),
        "{}",
        tail(&c, 80)
    );
    assert_gpt_clean(&target);

    // The disk alone boots slot a (UEFI), creating persist.
    let vars = env.tmp.path().join("VARS-installed.fd");
    fresh_vars(OVMF_VARS, &vars);
    let c = pc()
        .ovmf(&vars)
        .virtio_disk(&target)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(600));
    boot_ok(
        &c,
        "installed disk",
        "os-agent: boot ok slot=a version=1.0.0-inst",
    );
    assert!(c.contains("os-init: created persist"), "{}", tail(&c, 60));
}

/// A base image of another release than the flavor's is refused after it
/// is merged and before any package is installed, naming both releases
/// and the file it read; nothing is left in the output directory.
#[test]
fn a_base_of_another_release_than_the_flavors_is_refused() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let base = debian_minbase_of("bookworm");
    let out = env.tmp.path().join("dist");
    let comps = format!("oci-layout:{}", components().display());
    let base_arg = format!("rootfs-tar:{}", base.display());
    let o = env.run(&[
        "--flavor",
        "debian-13",
        "--base",
        &base_arg,
        "--components",
        &comps,
        "--without",
        "k3s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        base_arg.as_str(),
        "Debian GNU/Linux 12 (bookworm)",
        "VERSION_CODENAME=bookworm in /etc/os-release",
        "flavor debian-13 builds debian trixie",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
    let cached_debs = walk_files(&env.cache)
        .iter()
        .filter(|p| fs::read(p).is_ok_and(|b| b.starts_with(b"!<arch>")))
        .count();
    assert_eq!(cached_debs, 0, "a .deb was downloaded before the check");
    assert_no_output(&out);
}

/// Debian 12 from its container base image (the bookworm minbase in a
/// local registry): every default format (the upgrade artifact too), the
/// files named after bookworm, the disk's block map that bmaptool copies
/// it with, the bookworm suites in the lock; the disk boots under OVMF and
/// then SeaBIOS with persist kept.
#[test]
fn debian_12_amd64_from_a_base_image_builds_and_boots_uefi_and_bios() {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let reg = Registry::start();
    let (base, digests) = debian_layout_of("bookworm");
    reg.push(&base, "bookworm", "library/debian");
    let env = TestEnv::new();
    let (out, result) = build(
        &env,
        "debian-12",
        "amd64",
        &reg.image("library/debian", "bookworm"),
        "1.0.0-bookworm",
    );
    assert_eq!(result["flavor"], "debian");
    let names: Vec<String> = result["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            Path::new(a["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "debian-bookworm-amd64.squashfs",
            "debian-bookworm-amd64.raw",
            "debian-bookworm-amd64.raw.bmap",
            "debian-bookworm-amd64.iso",
            "debian-bookworm-amd64.upgrade",
            "build-image.lock"
        ]
    );
    // bmaptool copies the disk to a blank file that equals it, through the
    // block map beside it.
    assert_bmap_copy_equals(
        &out.join("debian-bookworm-amd64.raw"),
        &env.tmp.path().join("bmap-copy.raw"),
    );
    let lock: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("build-image.lock")).unwrap()).unwrap();
    assert_eq!(lock["base"]["manifestDigest"], digests.manifest.as_str());
    let suites: Vec<&str> = lock["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["suite"].as_str().unwrap())
        .collect();
    assert_eq!(
        suites,
        ["bookworm", "bookworm-updates", "bookworm-security"]
    );
    let kernel = lock["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| {
            let n = p["name"].as_str().unwrap();
            (n.starts_with("linux-image-6.") && n.ends_with("-amd64")).then_some(n)
        })
        .unwrap();
    assert!(kernel.starts_with("linux-image-6.1."), "{kernel}");

    let (vm_disk, vars) = vm_disk(
        &images::output(&out, "debian-12", "amd64", "raw"),
        OVMF_VARS,
        &env.tmp.path().join("boot"),
    );
    let c1 = pc()
        .ovmf(&vars)
        .virtio_disk(&vm_disk)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(600));
    let line = boot_ok(
        &c1,
        "UEFI",
        "os-agent: boot ok slot=a version=1.0.0-bookworm k3s=v1.31.4+k3s1",
    );
    assert!(line.contains("boot_count=1"), "{line}");
    assert!(c1.contains("os-init: created persist"), "{}", tail(&c1, 80));
    assert!(c1.contains("Debian GNU/Linux 12"), "{}", tail(&c1, 80));
    let c2 = pc()
        .no_sse42()
        .virtio_disk(&vm_disk)
        .nic()
        .run_until("os-agent: boot ", Duration::from_secs(600));
    let line = boot_ok(&c2, "BIOS", "os-agent: boot ok slot=a");
    assert!(line.contains("boot_count=2"), "{line}\n{}", tail(&c2, 60));
}

/// Debian 12 on arm64 from the archive, booted under AAVMF.
#[test]
fn debian_12_arm64_builds_from_the_archive_and_boots_under_aavmf() {
    arm64_builds_from_the_archive_and_boots("debian-12", "1.0.0-bookworm-arm");
}

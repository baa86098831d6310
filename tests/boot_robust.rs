//! A node with nobody next to it must never hang, loop or lose its data.
//! Real boots under QEMU, with the kernel command line build-image ships
//! (`panic=10`; no `panic=` added here):
//!
//! - GRUB (OVMF, bootloader/grub.cfg, small busybox roots): a trial whose
//!   kernel is empty, a trial whose init dies (a kernel panic) and a trial
//!   that hangs in userspace (QEMU's i6300esb watchdog, armed by os-init for
//!   the trial) each come back on slot a by themselves; a default slot that
//!   cannot load halts and says so.
//! - os-init (direct kernel boot, a root of Debian's e2fsprogs): its own
//!   panic reboots; a `persist` whose superblock magic and first group
//!   descriptor are broken is not formatted and not fixed behind anyone's
//!   back: the boot goes on with persist in RAM, says so, and the data is
//!   still there for `e2fsck -b`; a blank `persist` is formatted.
//! - The full image (systemd, os-agent): systemd runs the hardware
//!   watchdog; a trial whose kernel cannot load comes back on slot a, whose
//!   `os-agent status` records the failed trial, with both GRUB environment
//!   copies clean, and reports the damaged persist as degraded.

mod common;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boot_contract::grubenv::GrubEnv;
use build_image::disk::{self, Arch, Layout, Source};
use build_image::tree::ContentStore;
use common::abdisk::{self, grub_cfg, read_env, read_fat_file, AbDisk};
use common::boot::{
    busybox_root, deb_tree, debian_packages_root, file_bytes, kernel_and_shipped_initrd,
    KernelAndInitrd, E2FSPROGS,
};
use common::fixtures::debian_package_deb;
use common::qemu::{boot_line, fresh_vars, tail, Vm, OVMF_VARS};
use common::ssh::{free_port, text as ssh_text, Key, Ssh};
use common::{images, require_tool, sparse_copy};

const MIB: u64 = 1 << 20;

/// The kernel command line build-image ships for amd64.
fn shipped_cmdline() -> &'static str {
    let c = build_image::pipeline::default_cmdline("amd64");
    assert!(c.contains("panic=10"), "{c}");
    c
}

fn expect(console: &str, wants: &[&str]) {
    for want in wants {
        assert!(
            console.contains(want),
            "console lacks {want:?}:\n{}",
            tail(console, 60)
        );
    }
}

/// `first` appears on the console, and `then` after it.
fn expect_order(console: &str, first: &str, then: &str) {
    let i = console
        .find(first)
        .unwrap_or_else(|| panic!("console lacks {first:?}:\n{}", tail(console, 60)));
    assert!(
        console[i..].contains(then),
        "console lacks {then:?} after {first:?}:\n{}",
        tail(console, 60)
    );
}

struct GrubBed {
    k: KernelAndInitrd,
    grub_efi: Vec<u8>,
    cfg: String,
    vars: std::path::PathBuf,
    disk: std::path::PathBuf,
}

impl GrubBed {
    /// Writes the disk: slot a's kernel, slot b's kernel `b_kernel`, both
    /// initrds, the env; returns its layout.
    fn write(
        &self,
        a_kernel: &[u8],
        b_kernel: &[u8],
        env: &GrubEnv,
        slots: (&Path, &Path),
        store: &mut ContentStore,
    ) -> Layout {
        let esp_files: Vec<(&str, &[u8])> = vec![
            ("/EFI/BOOT/BOOTX64.EFI", &self.grub_efi),
            ("/EFI/debian/grub.cfg", self.cfg.as_bytes()),
            ("/EFI/BOOT/grub.cfg", self.cfg.as_bytes()),
            ("/a/vmlinuz", a_kernel),
            ("/a/initrd", &self.k.initrd),
            ("/b/vmlinuz", b_kernel),
            ("/b/initrd", &self.k.initrd),
        ];
        let spec = AbDisk {
            arch: Arch::X86_64,
            esp_size: 64 * MIB,
            persist_size: 0,
            seed: b"robust-grub",
            volume_id: 0x0b0b_0b0b,
            esp_files: &esp_files,
            env,
            primary: None,
            slots,
        };
        fresh_vars(OVMF_VARS, &self.vars);
        abdisk::write(&self.disk, &spec, store).0
    }

    /// Boots until the guest powers off (reboots stay within the run).
    fn boot(&self, watchdog: bool) -> String {
        let mut vm = Vm::x86_64(768)
            .ovmf(&self.vars)
            .virtio_disk(&self.disk)
            .allow_reboot();
        if watchdog {
            vm = vm.watchdog();
        }
        let (status, console) = vm.run(Duration::from_secs(480));
        assert!(
            status.is_some(),
            "the machine did not come back and power off:\n{}",
            tail(&console, 60)
        );
        console
    }
}

fn env(default: &str, trial: &str) -> GrubEnv {
    let mut e = GrubEnv::new();
    e.set("default_slot", default).unwrap();
    e.set("trial_slot", trial).unwrap();
    e
}

#[test]
fn failed_trials_come_back_on_the_default_slot_by_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    // The initramfs's real module list: it must carry the watchdog driver.
    let k = kernel_and_shipped_initrd(&mut store);
    let grub = deb_tree(
        &debian_package_deb("grub-efi-amd64-signed", "amd64"),
        &mut store,
    );
    let grub_efi = file_bytes(
        &grub,
        &store,
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
    );
    let a = tmp.path().join("a.squashfs");
    busybox_root(
        &mut store,
        "echo \"root-init: slot a $(cat /proc/cmdline)\"",
        &a,
    );
    let dies = tmp.path().join("b-dies.squashfs");
    busybox_root(&mut store, "echo 'root-init: slot b dies'\nexit 1", &dies);
    let hangs = tmp.path().join("b-hangs.squashfs");
    busybox_root(
        &mut store,
        "echo 'root-init: slot b hangs'\nwhile :; do /bin/busybox sleep 1000; done",
        &hangs,
    );
    let bed = GrubBed {
        grub_efi,
        cfg: grub_cfg(
            "robust test",
            &format!("{} bi.persist=off", shipped_cmdline()),
        ),
        vars: tmp.path().join("VARS.fd"),
        disk: tmp.path().join("disk.img"),
        k,
    };
    let vmlinuz = bed.k.vmlinuz.clone();
    let back_on_a = "root-init: slot a";

    // 1. A trial whose kernel is empty: GRUB cannot load it, reboots, and
    //    the default slot boots (without bi.trial).
    let layout = bed.write(
        &vmlinuz,
        b"",
        &env("a", "b"),
        (a.as_path(), a.as_path()),
        &mut store,
    );
    let c = bed.boot(false);
    expect_order(
        &c,
        "build-image: the trial of slot b failed to load; rebooting into slot a",
        back_on_a,
    );
    let line = c[c.find(back_on_a).unwrap()..].lines().next().unwrap();
    assert!(
        line.contains("bi.slot=a") && !line.contains("bi.trial"),
        "{line}"
    );
    let after = read_env(&bed.disk, &layout);
    assert_eq!(
        (after.get("trial_slot"), after.get("trial_booted")),
        (Some(""), Some("b")),
        "GRUB consumes the trial and records it: {after:?}"
    );

    // 2. The default slot itself cannot load: halt, and say why.
    bed.write(
        b"",
        &vmlinuz,
        &env("a", ""),
        (a.as_path(), a.as_path()),
        &mut store,
    );
    let c = bed.boot(false);
    expect(
        &c,
        &["build-image: the default slot a failed to load: halting"],
    );
    assert!(!c.contains(back_on_a), "{}", tail(&c, 40));

    // 3. A trial whose init dies: the kernel panics, panic=10 reboots.
    bed.write(
        &vmlinuz,
        &vmlinuz,
        &env("a", "b"),
        (a.as_path(), dies.as_path()),
        &mut store,
    );
    let c = bed.boot(false);
    expect_order(&c, "root-init: slot b dies", "Attempted to kill init");
    expect_order(&c, "Rebooting in 10 seconds", back_on_a);

    // 4. A trial that hangs in userspace: os-init armed the watchdog for
    //    the trial, nothing pings it, the machine resets.
    bed.write(
        &vmlinuz,
        &vmlinuz,
        &env("a", "b"),
        (a.as_path(), hangs.as_path()),
        &mut store,
    );
    let c = bed.boot(true);
    expect_order(
        &c,
        "os-init: trial boot: watchdog /dev/watchdog0 armed (60 s)",
        "root-init: slot b hangs",
    );
    // Paused while persist is set up (no bound on an e2fsck), then armed
    // again until the init takes it over.
    expect_order(
        &c,
        "os-init: trial boot: watchdog paused while persist is set up",
        "os-init: trial boot: watchdog /dev/watchdog0 armed (60 s)",
    );
    expect_order(&c, "root-init: slot b hangs", back_on_a);
    // The default slot is no trial: no watchdog from os-init.
    let last = &c[c.rfind("os-init: root root_a").unwrap()..];
    assert!(!last.contains("watchdog /dev/watchdog0 armed"), "{last}");
}

const PERSIST_SCRIPT: &str = r#"b=/bin/busybox
echo "root-init: persist $($b cat /run/os/persist.status | $b tr '\n' ' ')"
$b grep -q ' /run/os/persist tmpfs ' /proc/mounts && echo "root-init: persist is a tmpfs"
$b grep -q ' /run/os/persist ext4 ' /proc/mounts && echo "root-init: persist is ext4"
if [ -f /var/lib/os-agent/marker ]; then
  echo "root-init: marker $($b cat /var/lib/os-agent/marker)"
else
  echo "root-init: no marker"
  echo kept-since-first-boot > /var/lib/os-agent/marker
fi
$b sync"#;

/// Direct kernel boot of `disk` (slot a) with `cmdline` and the disk's
/// `bi.esp=`; QEMU must exit.
fn direct_boot(k: &(String, String), disk: Option<&Path>, cmdline: &str) -> String {
    let cmdline = match disk {
        Some(d) => format!("{cmdline} {}", abdisk::esp_param(d)),
        None => cmdline.to_string(),
    };
    let mut vm = Vm::x86_64(768).args([
        "-kernel".to_string(),
        k.0.clone(),
        "-initrd".to_string(),
        k.1.clone(),
        "-append".to_string(),
        cmdline,
    ]);
    if let Some(d) = disk {
        vm = vm.virtio_disk(d);
    }
    let (status, console) = vm.run(Duration::from_secs(300));
    assert!(
        status.is_some(),
        "QEMU did not exit:\n{}",
        tail(&console, 50)
    );
    console
}

/// The bytes `[off, off + len)` of `path`.
fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn write_at(path: &Path, off: u64, data: &[u8]) {
    let mut f = File::options().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Offset and length of the GPT partition named `name` (sgdisk).
fn partition(disk: &Path, name: &str) -> (u64, u64) {
    require_tool("sgdisk", "gdisk");
    let p = Command::new("sgdisk").arg("-p").arg(disk).output().unwrap();
    let table = String::from_utf8_lossy(&p.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("no partition {name}:\n{table}"));
    let f: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0] * 512, (f[1] - f[0] + 1) * 512)
}

/// Breaks the ext4 of the partition at `off`: the superblock's magic and
/// the first group descriptor. Returns the block size.
fn break_superblock(disk: &Path, off: u64) -> u64 {
    let sb = read_at(disk, off + 1024, 1024);
    assert_eq!(sb[0x38..0x3A], [0x53, 0xEF], "no ext4 to break");
    let bs = 1024u64 << u32::from_le_bytes(sb[0x18..0x1C].try_into().unwrap());
    write_at(disk, off + 1024 + 0x38, &[0, 0]);
    // The descriptor table follows the superblock's block.
    let gdt = if bs == 1024 { 2048 } else { bs };
    write_at(disk, off + gdt, &[0xA5; 64]);
    bs
}

fn sha256_range(path: &Path, off: u64, len: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f.take(len), &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// Copies the partition out (sparse), recovers it with `e2fsck -b` from
/// the first backup superblock and returns `debugfs -R "cat PATH"`.
fn recover_and_cat(tmp: &Path, disk: &Path, (off, len): (u64, u64), bs: u64, path: &str) -> String {
    require_tool("debugfs", "e2fsprogs");
    let part = tmp.join("persist-copy.img");
    common::sparse_copy_range(disk, off, len, &part);
    let backup = if bs == 1024 { 8193 } else { 8 * bs };
    let fsck = Command::new("e2fsck")
        .args(["-fy", "-b", &backup.to_string(), "-B", &bs.to_string()])
        .arg(&part)
        .output()
        .unwrap();
    // 0: clean, 1: errors corrected.
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck -b {backup} could not recover persist:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&part)
        .output()
        .unwrap();
    String::from_utf8_lossy(&cat.stdout).into_owned()
}

#[test]
fn os_init_panics_reboot_and_damaged_persist_degrades_the_boot_keeping_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let k = kernel_and_shipped_initrd(&mut store);
    let kfiles = (
        tmp.path().join("vmlinuz").display().to_string(),
        tmp.path().join("initrd").display().to_string(),
    );
    fs::write(&kfiles.0, &k.vmlinuz).unwrap();
    fs::write(&kfiles.1, &k.initrd).unwrap();

    // os-init's own panic reboots, even without panic= on the command line.
    let c = direct_boot(&kfiles, None, "console=ttyS0 OS_INIT_FAULT=panic");
    expect_order(
        &c,
        "os-init: panic: panicked at",
        "os-init: rebooting in 5 s",
    );
    assert!(!c.contains("Kernel panic"), "{}", tail(&c, 30));

    let sqfs = tmp.path().join("root.squashfs");
    debian_packages_root(
        &mut store,
        E2FSPROGS,
        &[("/etc/machine-id", b"", 0o444)],
        PERSIST_SCRIPT,
        &sqfs,
    );
    let slot = fs::metadata(&sqfs).unwrap().len().max(16 * MIB);
    let layout = Layout::ab(Arch::X86_64, 64 * MIB, slot, 0, b"robust-persist").unwrap();
    let disk = tmp.path().join("disk.img");
    let disk_file = File::create(&disk).unwrap();
    let sq = File::open(&sqfs).unwrap();
    disk::write_image(&layout, &disk_file, vec![(disk::ROOT_A, Source::File(&sq))]).unwrap();
    disk_file
        .set_len(disk_file.metadata().unwrap().len() + 160 * MIB)
        .unwrap();
    drop(disk_file);
    let cmdline = format!("{} bi.root=root_a bi.slot=a", shipped_cmdline());

    // Boot 1: persist is created, formatted, used.
    let c = direct_boot(&kfiles, Some(&disk), &cmdline);
    expect(
        &c,
        &[
            "os-init: created persist",
            "root-init: persist state=ok",
            "root-init: persist is ext4",
            "root-init: no marker",
        ],
    );
    let persist = partition(&disk, "persist");

    // Two zeroed bytes of magic and a garbled group descriptor: e2fsck -p
    // cannot use it, and os-init must neither format it nor loop.
    let bs = break_superblock(&disk, persist.0);
    let before = sha256_range(&disk, persist.0, persist.1);
    let c = direct_boot(&kfiles, Some(&disk), &cmdline);
    expect(
        &c,
        &[
            "os-init: PERSIST DEGRADED: ",
            "has no ext4 superblock, but holds data",
            &format!(
                "e2fsck -b {} -B {bs}",
                if bs == 1024 { 8193 } else { 8 * bs }
            ),
            "root-init: persist state=degraded reason=",
            "root-init: persist is a tmpfs",
            "root-init: no marker",
            "reboot: Power down",
        ],
    );
    assert!(!c.contains("formatting"), "{}", tail(&c, 40));
    assert_eq!(
        sha256_range(&disk, persist.0, persist.1),
        before,
        "a degraded boot changed the persist partition"
    );
    // The data is all there for a repair from the backup superblock.
    let marker = recover_and_cat(
        tmp.path(),
        &disk,
        persist,
        bs,
        "/state/var/lib/os-agent/marker",
    );
    assert_eq!(marker.trim(), "kept-since-first-boot");

    // A blank persist (nothing on it to lose) is formatted.
    write_at(&disk, persist.0, &vec![0u8; persist.1 as usize]);
    let c = direct_boot(&kfiles, Some(&disk), &cmdline);
    expect(
        &c,
        &[
            "has no filesystem and is blank: formatting it",
            "root-init: persist state=ok",
            "root-init: persist is ext4",
        ],
    );
}

/// Arms a trial of slot b whose kernel and initrd are empty files, in both
/// environment blocks of the disk's ESP, as an upgrade that wrote a broken
/// kernel would leave it.
fn arm_broken_trial(disk: &Path, work: &Path) {
    let (esp, _) = partition(disk, "ESP");
    let image = format!("{}@@{esp}", disk.display());
    let mtools = |tool: &str, args: &[&str], must: bool| {
        let o = Command::new(tool)
            .arg("-i")
            .arg(&image)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success() || !must,
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    mtools("mmd", &["::/b"], false);
    let empty = work.join("empty");
    fs::write(&empty, b"").unwrap();
    for f in ["vmlinuz", "initrd"] {
        mtools(
            "mcopy",
            &["-o", empty.to_str().unwrap(), &format!("::/b/{f}")],
            true,
        );
    }
    let mut env = GrubEnv::parse(&read_fat_file(disk, esp, "/grubenv")).unwrap();
    env.set("trial_slot", "b").unwrap();
    let block = work.join("grubenv");
    fs::write(&block, env.encode().unwrap()).unwrap();
    for name in ["::/grubenv", "::/grubenv.bak"] {
        mtools("mcopy", &["-o", block.to_str().unwrap(), name], true);
    }
}

/// Puts `text` on the disk's ESP as the device's `build-image/config.yaml`.
fn esp_config(disk: &Path, work: &Path, text: &str) {
    let (esp, _) = partition(disk, "ESP");
    let image = format!("{}@@{esp}", disk.display());
    let file = work.join("config.yaml");
    fs::write(&file, text).unwrap();
    let _ = Command::new("mmd")
        .args(["-i", &image, "::/build-image"])
        .output();
    let o = Command::new("mcopy")
        .args(["-i", &image, "-o", file.to_str().unwrap()])
        .arg("::/build-image/config.yaml")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn status_of(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text
        .find('{')
        .unwrap_or_else(|| panic!("{}", ssh_text(out)))..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {}", ssh_text(out)))
}

#[test]
fn full_image_reports_a_failed_trial_and_a_degraded_persist() {
    let built = images::default_amd64();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.raw");
    sparse_copy(
        &images::output(&built, images::DEFAULT_FLAVOR, "amd64", "raw"),
        &disk,
    );
    let f = File::options().write(true).open(&disk).unwrap();
    f.set_len(f.metadata().unwrap().len() + (1 << 30)).unwrap();
    drop(f);
    let vars = tmp.path().join("VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    let key = Key::generate(tmp.path(), "robust");
    esp_config(
        &disk,
        tmp.path(),
        &format!(
            "users:\n  - name: root\n    ssh_authorized_keys: [\"{}\"]\n",
            key.public
        ),
    );
    let pc = |port: u16| {
        Vm::x86_64(1536)
            .args(["-smp", "2"])
            .ovmf(&vars)
            .virtio_disk(&disk)
            .nic_ssh(port)
            .watchdog()
    };

    // Boot 1: systemd runs the watchdog (os-init did not: no trial).
    let ssh = Ssh { port: free_port() };
    let probe = "cat /sys/class/watchdog/watchdog0/identity /sys/class/watchdog/watchdog0/state; \
                 systemctl show -p RuntimeWatchdogUSec --value; os-agent status --json";
    let (out, c) = pc(ssh.port).while_up("os-agent: boot ", Duration::from_secs(900), |_| {
        ssh.wait(&key, "root", Duration::from_secs(180))?;
        Ok::<_, String>(ssh.run(&key, "root", probe, b""))
    });
    let out = out
        .unwrap_or_else(|| panic!("boot 1: no boot line:\n{}", tail(&c, 80)))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&c, 80)));
    let line = boot_line(&c).unwrap();
    assert!(line.starts_with("os-agent: boot ok slot=a"), "{line}");
    assert!(
        !c.contains("watchdog /dev/watchdog0 armed"),
        "{}",
        tail(&c, 60)
    );
    let text = ssh_text(&out);
    for want in ["i6300ESB timer", "active", "30s"] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert_eq!(status_of(&out)["persist"], "ok", "{text}");

    // A trial of b whose kernel is empty, and a persist whose superblock
    // is broken.
    arm_broken_trial(&disk, tmp.path());
    let persist = partition(&disk, "persist");
    let bs = break_superblock(&disk, persist.0);
    let head = sha256_range(&disk, persist.0, 64 * MIB);

    // Boot 2: GRUB cannot load b and reboots; slot a comes up with persist
    // in RAM, records the failed trial, reports degraded, stays up.
    let ssh = Ssh { port: free_port() };
    let (out, c) =
        pc(ssh.port)
            .allow_reboot()
            .while_up("os-agent: boot ", Duration::from_secs(900), |_| {
                ssh.wait(&key, "root", Duration::from_secs(180))?;
                Ok::<_, String>(ssh.run(&key, "root", "os-agent status --json", b""))
            });
    let out = out
        .unwrap_or_else(|| panic!("boot 2: no boot line:\n{}", tail(&c, 80)))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&c, 80)));
    expect_order(
        &c,
        "build-image: the trial of slot b failed to load; rebooting into slot a",
        "os-init: PERSIST DEGRADED",
    );
    expect(
        &c,
        &["os-agent: trial of slot b failed before its health check (no_health_verdict"],
    );
    let line = boot_line(&c).unwrap();
    assert!(
        line.starts_with("os-agent: boot degraded slot=a") && line.contains("persist=degraded"),
        "{line}"
    );
    let s = status_of(&out);
    assert_eq!(
        (&s["slot"], &s["bootState"], &s["persist"]),
        (&"a".into(), &"committed".into(), &"degraded".into()),
        "{s}"
    );
    assert!(
        s["persistReason"]
            .as_str()
            .unwrap()
            .contains("has no ext4 superblock, but holds data"),
        "{s}"
    );
    assert_eq!(
        (&s["lastRollback"]["slot"], &s["lastRollback"]["to"]),
        (&"b".into(), &"a".into()),
        "{s}"
    );

    // Both environment copies are clean: nothing arms b again.
    let (esp, _) = partition(&disk, "ESP");
    for name in ["/grubenv", "/grubenv.bak"] {
        let env = GrubEnv::parse(&read_fat_file(&disk, esp, name)).unwrap();
        assert_eq!(env.get("default_slot"), Some("a"), "{name}: {env:?}");
        assert_eq!(env.get("trial_slot"), Some(""), "{name}: {env:?}");
        assert_eq!(env.get("trial_booted"), Some(""), "{name}: {env:?}");
    }
    // Persist was left alone, and its data is recoverable.
    assert_eq!(sha256_range(&disk, persist.0, 64 * MIB), head);
    let state = recover_and_cat(
        tmp.path(),
        &disk,
        persist,
        bs,
        "/state/var/lib/os-agent/state.json",
    );
    assert!(state.contains("\"bootCount\": 1"), "{state}");
}

//! A node boots only its own disk, installs itself once, and refuses a
//! disk it cannot lay out. Real boots under QEMU of the default image
//! (tests/common/images.rs, built once), with OVMF and SeaBIOS:
//!
//! - two disks written from the same `.raw`, the second with an ESP
//!   configuration that adds a user, in both drive orders, the firmware
//!   told to boot the second drive: GRUB names its ESP by partition UUID,
//!   os-init takes the root and `persist` from that disk only and gives it
//!   its own GUIDs and ESP serial, os-agent reads only its ESP, the other
//!   disk stays byte for byte the same; the disk boots again after its
//!   identity changed (also with SeaBIOS, whose core.img no longer finds
//!   the ESP by its FAT serial);
//! - os-init refuses a command line without `bi.esp=`, and two disks it
//!   cannot tell apart (direct kernel boots);
//! - the unattended install from the ISO (first in the firmware's boot
//!   order) installs once, gives the disk its own identity and a firmware
//!   boot entry (`BootNext`), the disk boots, and the installer started
//!   again refuses to install over it (its data on `persist` is kept) and
//!   refuses a 4Kn disk, which stays untouched.

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boot_contract::fat::Fat32;
use boot_contract::gpt::{Entry, Gpt};
use boot_contract::grubenv::GrubEnv;
use build_image::disk::{self, Arch};
use build_image::tree::ContentStore;
use common::abdisk::{self, debugfs_cat, ext4_copy, AbDisk};
use common::boot::{busybox_root, kernel_and_shipped_initrd};
use common::qemu::{fresh_vars, tail, Vm, OVMF_VARS};
use common::{images, require_tool, sparse_copy};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn expect(console: &str, what: &str, wants: &[&str]) {
    for want in wants {
        assert!(
            console.contains(want),
            "{what}: console lacks {want:?}:\n{}",
            tail(console, 80)
        );
    }
}

fn sha256_file(path: &Path) -> String {
    common::sha256_file(path)
}

/// The GPT of a disk image file (512-byte sectors).
fn gpt(disk: &Path) -> Gpt {
    let mut f = File::open(disk).unwrap();
    let sectors = f.metadata().unwrap().len() / 512;
    Gpt::read(&mut f, 512, sectors).unwrap()
}

fn entries(g: &Gpt) -> Vec<Entry> {
    g.partitions().map(|(_, e)| e).collect()
}

/// The FAT serial of the ESP of `disk`.
fn esp_serial(disk: &Path) -> u32 {
    let g = gpt(disk);
    let (_, esp) = g.find(disk::ESP).unwrap();
    let mut f = File::open(disk).unwrap();
    Fat32::read(&mut f, esp.first_lba * 512, esp.sectors() * 512)
        .unwrap()
        .volume_id()
}

fn esp_file(disk: &Path, name: &str) -> Vec<u8> {
    let (_, esp) = gpt(disk).find(disk::ESP).unwrap();
    common::abdisk::read_fat_file(disk, esp.first_lba * 512, name)
}

fn assert_gpt_clean(disk: &Path) {
    require_tool("sgdisk", "gdisk");
    let o = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.contains("No problems found"), "{}: {v}", disk.display());
}

/// `new` has the names, types and places of `image` with GUIDs of its own
/// (and may have more partitions after them: persist).
fn assert_own_identity(what: &str, image: &Gpt, new: &Gpt) {
    assert_ne!(new.disk_guid(), image.disk_guid(), "{what}: disk GUID");
    let (old, now) = (entries(image), entries(new));
    assert!(now.len() >= old.len(), "{what}: {now:?}");
    for (o, n) in old.iter().zip(&now) {
        assert_ne!(o.guid, n.guid, "{what}: {} kept its GUID", o.name);
        assert_eq!(
            &Entry {
                guid: o.guid,
                ..n.clone()
            },
            o,
            "{what}: only the GUID of {} may change",
            o.name
        );
    }
}

/// Copies the image to `dst` with `grow` bytes of room after it.
fn disk_from(raw: &Path, dst: &Path, grow: u64) {
    sparse_copy(raw, dst);
    let f = File::options().write(true).open(dst).unwrap();
    f.set_len(f.metadata().unwrap().len() + grow).unwrap();
}

/// Puts `text` on the ESP of `disk` as `build-image/config.yaml`.
fn esp_config(disk: &Path, work: &Path, text: &str) {
    require_tool("mcopy", "mtools");
    let (_, esp) = gpt(disk).find(disk::ESP).unwrap();
    let image = format!("{}@@{}", disk.display(), esp.first_lba * 512);
    let file = work.join("config.yaml");
    fs::write(&file, text).unwrap();
    let o = Command::new("mmd")
        .args(["-i", &image, "::/build-image"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("mcopy")
        .args([
            "-i",
            &image,
            file.to_str().unwrap(),
            "::/build-image/config.yaml",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A drive on its own virtio-blk PCI device (in argument order: vda,
/// vdb, …); `boot` makes it the firmware's first boot device.
fn drive(id: &str, path: &Path, extra: &str) -> [String; 4] {
    [
        "-drive".into(),
        format!("if=none,id={id},file={},format=raw", path.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={id}{extra}"),
    ]
}

const USB_USER: &str = "stick-user";

/// One machine: `first` as vda, `second` as vdb and the firmware's boot
/// device, booted twice.
struct TwoDisks {
    what: &'static str,
    uefi: bool,
    dir: PathBuf,
    first: PathBuf,
    second: PathBuf,
    /// Whether the second disk is the one with the ESP configuration.
    second_has_config: bool,
}

impl TwoDisks {
    /// The machine; a reboot (a kernel that panics early under a loaded
    /// TCG host, say) stays within the run.
    fn vm(&self) -> Vm {
        let mut vm = Vm::x86_64(1536).allow_reboot();
        if self.uefi {
            vm = vm.args(["-smp", "2"]).ovmf(&self.dir.join("VARS.fd"));
        }
        vm.args(drive("d0", &self.first, ""))
            .args(drive("d1", &self.second, ",bootindex=0"))
            .nic()
    }

    fn run(&self, raw: &Path) {
        let what = self.what;
        if self.uefi {
            fresh_vars(OVMF_VARS, &self.dir.join("VARS.fd"));
        }
        let image = gpt(raw);
        let image_esp = image.find(disk::ESP).unwrap().1.guid;
        let image_serial = esp_serial(raw);
        let untouched = sha256_file(&self.first);

        // Boot 1: the firmware starts GRUB from vdb.
        let c = self
            .vm()
            .run_until("os-agent: boot ", Duration::from_secs(1200));
        expect(
            &c,
            what,
            &[
                &format!("os-init: boot disk /dev/vdb: it holds the ESP partition {image_esp}"),
                "os-init: root root_a is /dev/vdb3",
                "os-init: gave /dev/vdb its own identity: disk GUID",
                "os-init: created persist /dev/vdb5",
                "os-agent: boot ok slot=a",
            ],
        );
        let applied = c
            .lines()
            .find(|l| l.contains("os-agent: config applied"))
            .unwrap_or_else(|| panic!("{what}: no config line:\n{}", tail(&c, 80)));
        if self.second_has_config {
            assert!(
                applied.contains("build-image/config.yaml") && applied.contains(USB_USER),
                "{what}: the booted disk's ESP configuration was not applied: {applied}"
            );
        } else {
            assert!(
                !applied.contains("build-image/config.yaml") && !applied.contains(USB_USER),
                "{what}: another disk's ESP configuration was applied: {applied}"
            );
        }
        assert_eq!(
            sha256_file(&self.first),
            untouched,
            "{what}: the disk that was not booted changed"
        );
        // The booted disk has its own identity, and GRUB's mark.
        let own = gpt(&self.second);
        assert_own_identity(what, &image, &own);
        assert_eq!(
            entries(&own).last().map(|e| e.name.as_str()),
            Some(disk::PERSIST)
        );
        assert_gpt_clean(&self.second);
        assert_ne!(esp_serial(&self.second), image_serial, "{what}: ESP serial");
        let env = GrubEnv::parse(&esp_file(&self.second, "/grubenv")).unwrap();
        assert_eq!(env.get("disk_booted"), Some("1"), "{what}: {env:?}");
        let new_esp = own.find(disk::ESP).unwrap().1.guid;
        let machine_id = c
            .lines()
            .find_map(|l| {
                Some(
                    l.split("os-init: machine-id ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .to_string(),
                )
            })
            .unwrap_or_else(|| panic!("{what}: no machine-id line"));

        // Boot 2: the same disk, found by its new ESP partition UUID (with
        // SeaBIOS: core.img finds the ESP by its partition number, not by
        // the FAT serial that changed); persist and its data kept.
        let c = self
            .vm()
            .run_until("os-agent: boot ", Duration::from_secs(1200));
        expect(
            &c,
            what,
            &[
                &format!("os-init: boot disk /dev/vdb: it holds the ESP partition {new_esp}"),
                "os-init: persist is /dev/vdb5",
                &format!("os-init: machine-id {machine_id} (kept on persist)"),
                "os-agent: boot ok slot=a",
            ],
        );
        assert!(!c.contains("its own identity"), "{what}: {}", tail(&c, 40));
        assert_eq!(gpt(&self.second).disk_guid(), own.disk_guid(), "{what}");
        assert_eq!(
            sha256_file(&self.first),
            untouched,
            "{what}: the disk that was not booted changed"
        );
    }
}

/// Two disks from one `.raw`; the second drive is the firmware's boot
/// device. UEFI: the plain disk is vda and the one with the configuration
/// vdb (booted: its configuration applies). SeaBIOS: the other way round
/// (booted: the plain disk, the configuration on vda is not read). Both
/// machines run at once.
#[test]
fn boots_only_the_disk_the_firmware_chose_and_gives_it_its_own_identity() {
    let built = images::default_amd64();
    let raw = images::output(&built, images::DEFAULT_FLAVOR, "amd64", "raw");
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "users:\n  - name: {USB_USER}\n    ssh_authorized_keys: [\"{}\"]\n",
        images::NO_SUCH_KEY
    );
    let mut machines = Vec::new();
    for (what, uefi, config_second) in [("UEFI", true, true), ("SeaBIOS", false, false)] {
        let dir = tmp.path().join(what);
        fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain.raw");
        let with = dir.join("with-config.raw");
        disk_from(&raw, &plain, GIB);
        disk_from(&raw, &with, GIB);
        esp_config(&with, &dir, &config);
        let (first, second) = if config_second {
            (plain, with)
        } else {
            (with, plain)
        };
        machines.push(TwoDisks {
            what,
            uefi,
            dir,
            first,
            second,
            second_has_config: config_second,
        });
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = machines.iter().map(|m| s.spawn(|| m.run(&raw))).collect();
        for r in runs {
            if let Err(e) = r.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// Direct kernel boots of two disks written from one small A/B image
/// (busybox root): without `bi.esp=` os-init refuses to pick any disk; with
/// it, two disks GRUB never marked cannot be told apart and the boot
/// stops; the disk GRUB marked is the one used. Nothing is written to a
/// disk that is not used.
#[test]
fn os_init_uses_no_disk_it_cannot_tie_to_the_boot_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let k = kernel_and_shipped_initrd(&mut store);
    let (vmlinuz, initrd) = (tmp.path().join("vmlinuz"), tmp.path().join("initrd"));
    fs::write(&vmlinuz, &k.vmlinuz).unwrap();
    fs::write(&initrd, &k.initrd).unwrap();
    let root = tmp.path().join("root.squashfs");
    busybox_root(
        &mut store,
        "echo \"root-init: up $(cat /proc/cmdline)\"",
        &root,
    );
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    let spec = AbDisk {
        arch: Arch::X86_64,
        esp_size: 64 * MIB,
        persist_size: 0,
        seed: b"two-disks",
        volume_id: 0x1234_5678,
        esp_files: &[],
        env: &env,
        primary: None,
        slots: (&root, &root),
    };
    let a = tmp.path().join("a.img");
    let b = tmp.path().join("b.img");
    let (layout, _) = abdisk::write(&a, &spec, &mut store);
    fs::copy(&a, &b).unwrap();
    let esp = layout.partition(disk::ESP).unwrap().guid;
    let boot = |cmdline: &str| {
        let (_, c) = Vm::x86_64(768)
            .args([
                "-kernel".to_string(),
                vmlinuz.display().to_string(),
                "-initrd".to_string(),
                initrd.display().to_string(),
                "-append".to_string(),
                format!("console=ttyS0 panic=-1 bi.root=root_a bi.slot=a bi.persist=off bi.timeout=3 {cmdline}"),
            ])
            .virtio_disk(&a)
            .virtio_disk(&b)
            .run(Duration::from_secs(300));
        c
    };
    let (sha_a, sha_b) = (sha256_file(&a), sha256_file(&b));

    let c = boot("");
    expect(
        &c,
        "no bi.esp",
        &[
            "os-init: error: no bi.esp=PARTUUID on the kernel command line",
            "os-init uses no disk it cannot tie to it",
            "os-init: rebooting",
        ],
    );
    assert!(!c.contains("root-init: up"), "{}", tail(&c, 30));

    let c = boot(&format!("bi.esp={esp}"));
    expect(
        &c,
        "two unmarked disks",
        &[
            &format!("os-init: error: disks /dev/vda, /dev/vdb all hold the ESP partition {esp}"),
            "none carries GRUB's disk_booted mark",
            "os-init: rebooting",
        ],
    );
    assert!(!c.contains("root-init: up"), "{}", tail(&c, 30));
    assert_eq!((sha256_file(&a), sha256_file(&b)), (sha_a.clone(), sha_b));

    // GRUB's mark on b (as its first boot leaves it): b is used, in
    // lowercase as GRUB's probe prints the UUID.
    env.set("disk_booted", "1").unwrap();
    let block = tmp.path().join("grubenv");
    fs::write(&block, env.encode().unwrap()).unwrap();
    let off = layout.partition(disk::ESP).unwrap().offset();
    let o = Command::new("mcopy")
        .args(["-o", "-i", &format!("{}@@{off}", b.display())])
        .arg(&block)
        .arg("::/grubenv")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = boot(&format!("bi.esp={}", esp.to_string().to_lowercase()));
    expect(
        &c,
        "b marked",
        &[
            &format!("os-init: boot disk /dev/vdb: it holds the ESP partition {esp}"),
            "os-init: root root_a is /dev/vdb3",
            "root-init: up",
        ],
    );
    assert_eq!(sha256_file(&a), sha_a, "the disk that was not used changed");
}

/// The first `len` bytes of `path` are all zero.
fn zeros(path: &Path, len: u64) -> bool {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// `debugfs -R "cat PATH"` of the ext4 at `part` of `disk`, copied out
/// and its journal replayed (`e2fsck -fy`: the machine was stopped, not
/// shut down, and what os-agent synced may still be in the journal).
fn persist_file(work: &Path, disk: &Path, part: &Entry, path: &str) -> String {
    let copy = work.join("persist.img");
    ext4_copy(disk, part.first_lba * 512, part.sectors() * 512, &copy);
    debugfs_cat(&copy, path)
}

/// The ISO first in the firmware's boot order (OVMF, bootindex), its
/// install entry chosen at every boot (as an unattended install would
/// run): the first boot installs and registers the disk in `BootNext`;
/// the second boots the installed disk, which creates persist; the third
/// starts the installer again, which refuses to install over that disk
/// and refuses the 4Kn disk next to it. Nothing on either disk changes.
#[test]
fn the_unattended_install_happens_once_and_keeps_the_data() {
    let built = images::default_amd64();
    let raw = images::output(&built, images::DEFAULT_FLAVOR, "amd64", "raw");
    let iso = images::output(&built, images::DEFAULT_FLAVOR, "amd64", "iso");
    let tmp = tempfile::tempdir().unwrap();
    let size = fs::metadata(&raw).unwrap().len() + GIB;
    let target = tmp.path().join("target.raw");
    let k4 = tmp.path().join("4kn.raw");
    for d in [&target, &k4] {
        File::create(d).unwrap().set_len(size).unwrap();
    }
    let vars = tmp.path().join("VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    let pc = || {
        Vm::x86_64(1536)
            .args(["-smp", "2"])
            .ovmf(&vars)
            .args([
                "-drive".to_string(),
                format!(
                    "if=none,id=cd,file={},media=cdrom,format=raw,readonly=on",
                    iso.display()
                ),
                "-device".to_string(),
                "ide-cd,drive=cd,bootindex=0".to_string(),
            ])
            .args(drive("t", &target, ",bootindex=1"))
            .args(drive(
                "k",
                &k4,
                ",logical_block_size=4096,physical_block_size=4096",
            ))
            .nic()
    };
    let version = images::VERSION;

    // Boot 1: the installer.
    let c = pc()
        .keys_on("(live)", &["\x1b[B", "\r"])
        .run_until("os-agent: rebooting", Duration::from_secs(1200));
    expect(
        &c,
        "install",
        &[
            &format!("os-agent: installed debian {version} to /dev/vda (disk GUID "),
            "os-agent: firmware boot entry: Boot0",
            "first in BootOrder and BootNext",
            "os-agent: rebooting",
        ],
    );
    assert_gpt_clean(&target);
    let image = gpt(&raw);
    let installed = gpt(&target);
    assert_own_identity("installed disk", &image, &installed);
    assert_eq!(entries(&installed).len(), entries(&image).len());
    assert_ne!(esp_serial(&target), esp_serial(&raw), "ESP serial");
    assert!(zeros(&k4, 4 * MIB), "the 4Kn disk was written to");
    let entry = c
        .lines()
        .find_map(|l| Some(l.split("firmware boot entry: ").nth(1)?[..8].to_string()))
        .unwrap();

    // Boot 2: the ISO is still first in the boot order; BootNext starts
    // the installed disk, whose first boot creates persist.
    let c = pc().run_until("os-agent: boot ", Duration::from_secs(1200));
    expect(
        &c,
        "installed disk",
        &[
            &format!("BdsDxe: loading {entry} \"debian {version}\""),
            &format!(
                "os-init: boot disk /dev/vda: it holds the ESP partition {}",
                installed.find(disk::ESP).unwrap().1.guid
            ),
            "os-init: created persist /dev/vda5",
            &format!("os-agent: boot ok slot=a version={version}"),
        ],
    );
    // The disk already had its own identity: first boot keeps it.
    let booted = gpt(&target);
    assert_eq!(booted.disk_guid(), installed.disk_guid());
    let (_, persist) = booted.find(disk::PERSIST).unwrap();
    let state = persist_file(
        tmp.path(),
        &target,
        &persist,
        "/state/var/lib/os-agent/state.json",
    );
    assert!(state.contains("\"bootCount\": 1"), "{state}");
    let before = sha256_file(&target);

    // Boot 3: the firmware starts the ISO again and its install entry is
    // chosen again: refused, the installed disk and the 4Kn disk named
    // (vdb's line is the message's last; the kernel's own line for vdb
    // says "4096-byte logical blocks" too, so wait for the reason's end).
    let c = pc().keys_on("(live)", &["\x1b[B", "\r"]).run_until(
        "use a disk with 512-byte or 512e sectors)",
        Duration::from_secs(1200),
    );
    let at = c
        .find("os-agent: install failed: --device auto: no suitable disk")
        .unwrap_or_else(|| panic!("no refusal:\n{}", tail(&c, 80)));
    let refusal = &c[at..];
    for want in [
        "vda ",
        "holds an installed system with its data on persist (partition 5",
        "install.overwrite: true or --force replaces it",
        "vdb ",
        "4096-byte logical blocks",
    ] {
        assert!(refusal.contains(want), "{want:?} not in:\n{refusal}");
    }
    assert_eq!(sha256_file(&target), before, "a refused install wrote");
    assert!(zeros(&k4, 4 * MIB), "the 4Kn disk was written to");
    let state = persist_file(
        tmp.path(),
        &target,
        &persist,
        "/state/var/lib/os-agent/state.json",
    );
    assert!(state.contains("\"bootCount\": 1"), "{state}");
}

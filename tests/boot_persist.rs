//! The persistent partition under real boots: os-init adds `persist` to a
//! GPT A/B disk written by build-image (which leaves it out), formats it
//! with the root's own mkfs.ext4 (from Debian's e2fsprogs package),
//! moves the backup GPT to the end of a disk larger than the image, grows
//! `persist` and its filesystem when the disk grows, keeps the machine-id
//! and the persistent paths across boots, and changes nothing with
//! `bi.persist=off`, and restores a damaged primary GPT from the backup. The disk is checked on the host with `sgdisk -v`,
//! `dumpe2fs -h` and `e2fsck -fn`.

mod common;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::disk::{self, Arch, Layout, Source};
use build_image::tree::ContentStore;
use common::abdisk::esp_param;
use common::boot::{
    boot_direct, debian_packages_root, expect_console, kernel_and_initrd, tail, E2FSPROGS,
};
use common::{require_tool, sha256_file, tool_stdout};

const MIB: u64 = 1 << 20;

const SCRIPT: &str = r#"b=/bin/busybox
echo "root-init: machine-id $($b cat /etc/machine-id)"
if [ -f /var/lib/os-agent/marker ]; then
  echo "root-init: marker $($b cat /var/lib/os-agent/marker)"
else
  echo "root-init: no marker"
  echo kept-since-first-boot > /var/lib/os-agent/marker
fi
echo "root-init: sshd_config $($b cat /etc/ssh/sshd_config)"
echo "root-init: profile $($b cat /root/.profile)"
$b grep -q ' /var/lib/os-agent ' /proc/mounts && echo "root-init: /var/lib/os-agent is a mount"
$b grep -q ' /etc/ssh ' /proc/mounts && echo "root-init: /etc/ssh is a mount"
$b grep -q ' /run/os/persist ext4 ' /proc/mounts && echo "root-init: persist is mounted"
$b sync"#;

struct Vm {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
}

impl Vm {
    /// Boots the disk (writes go to it) and returns the console.
    fn boot(&self, extra_cmdline: &str) -> String {
        boot_direct(
            &self.vmlinuz,
            &self.initrd,
            &format!(
                "console=ttyS0 bi.root=root_a panic=-1 {} {extra_cmdline}",
                esp_param(&self.disk)
            ),
            &format!("file={},if=virtio,format=raw", self.disk.display()),
        )
    }
}

/// The text after `prefix` up to the end of its line.
fn line_after<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once(prefix).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("console lacks {prefix:?}:\n{}", tail(console, 50)))
}

fn sgdisk(args: &[&str], disk: &Path) -> String {
    require_tool("sgdisk", "gdisk");
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn sectors(disk: &Path) -> u64 {
    fs::metadata(disk).unwrap().len() / 512
}

/// First and last sector of partition `n`, from `sgdisk -i`.
fn partition(disk: &Path, n: u32) -> (u64, u64) {
    let info = sgdisk(&["-i", &n.to_string()], disk);
    let field = |k: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("sgdisk -i {n} lacks {k:?}:\n{info}"))
    };
    assert!(info.contains("Partition name: 'persist'"), "{info}");
    assert!(
        info.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{info}"
    );
    (field("First sector: "), field("Last sector: "))
}

/// The table is clean and `persist` (partition 5) ends at the last usable
/// sector; returns its first and last sector.
fn check_table(disk: &Path) -> (u64, u64) {
    let v = sgdisk(&["-v"], disk);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let (first, last) = partition(disk, 5);
    assert_eq!(
        last,
        sectors(disk) - 34,
        "persist must end at the last usable sector"
    );
    assert_eq!(first % 2048, 0, "persist must start on a MiB boundary");
    (first, last)
}

/// Copies the partition's bytes out, runs `e2fsck -fn` on them and returns
/// `dumpe2fs -h`.
fn check_fs(tmp: &Path, disk: &Path, (first, last): (u64, u64)) -> String {
    require_tool("dumpe2fs", "e2fsprogs");
    let data = fs::read(disk).unwrap();
    let part = tmp.join("persist.img");
    fs::write(
        &part,
        &data[(first * 512) as usize..((last + 1) * 512) as usize],
    )
    .unwrap();
    tool_stdout(Command::new("e2fsck").arg("-fn").arg(&part));
    let out = tool_stdout(Command::new("dumpe2fs").arg("-h").arg(&part));
    String::from_utf8_lossy(&out).into_owned()
}

fn dumpe2fs_field(dump: &str, key: &str) -> u64 {
    dump.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("dumpe2fs lacks {key:?}:\n{dump}"))
}

fn grow(disk: &Path, by: u64) {
    let f = File::options().write(true).open(disk).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + by).unwrap();
}

#[test]
fn os_init_creates_keeps_and_grows_the_persistent_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let k = kernel_and_initrd(
        &mut store,
        &[
            "virtio_pci",
            "virtio_blk",
            "squashfs",
            "overlay",
            "ext4",
            "crc32c_generic",
        ],
    );
    let (vmlinuz, initrd) = k.write_to(tmp.path());

    let sqfs = tmp.path().join("root.squashfs");
    debian_packages_root(
        &mut store,
        E2FSPROGS,
        &[
            ("/etc/machine-id", b"", 0o444),
            ("/etc/ssh/sshd_config", b"PermitRootLogin no", 0o644),
            ("/root/.profile", b"export FROM_IMAGE=1", 0o600),
        ],
        SCRIPT,
        &sqfs,
    );
    let slot = fs::metadata(&sqfs).unwrap().len().max(16 * MIB);
    let layout = Layout::ab(Arch::X86_64, 64 * MIB, slot, 0, b"persist-test").unwrap();
    assert!(layout.partition("persist").is_none());
    let disk = tmp.path().join("disk.img");
    let disk_file = File::create(&disk).unwrap();
    let sq = File::open(&sqfs).unwrap();
    disk::write_image(&layout, &disk_file, vec![(disk::ROOT_A, Source::File(&sq))]).unwrap();
    drop(disk_file);
    // Written to a disk larger than the image.
    grow(&disk, 96 * MIB);
    let vm = Vm {
        vmlinuz,
        initrd,
        disk: disk.clone(),
    };

    // bi.persist=off: not one byte of the disk changes.
    let before = sha256_file(&disk);
    let console = vm.boot("bi.persist=off");
    expect_console(
        &console,
        &[
            "os-init: persist off (bi.persist=off): all changes stay in memory",
            "root-init: no marker",
        ],
    );
    assert_eq!(
        sha256_file(&disk),
        before,
        "bi.persist=off changed the disk"
    );

    // Boot 1: persist created at the end, formatted, seeded, machine-id made.
    let console = vm.boot("");
    expect_console(
        &console,
        &[
            "os-init: moved the backup GPT of /dev/vda to its end",
            "os-init: created persist /dev/vda5",
            "os-init: formatting /dev/vda5 as ext4",
            "os-init: mounted /dev/vda5 on /run/os/persist",
            "(new)",
            "os-init: seeded /run/os/persist/state/root from the image",
            "os-init: persistent: /var/lib/os-agent",
            "root-init: no marker",
            "root-init: sshd_config PermitRootLogin no",
            "root-init: profile export FROM_IMAGE=1",
            "root-init: /var/lib/os-agent is a mount",
            "root-init: persist is mounted",
        ],
    );
    assert!(
        !console.contains("root-init: /etc/ssh is a mount"),
        "/etc/ssh must be the image's (host keys persist under /var/lib/os-agent)"
    );
    assert!(
        !console.contains("os-init: error"),
        "{}",
        tail(&console, 50)
    );
    let id = line_after(&console, "root-init: machine-id ")
        .trim()
        .to_string();
    assert_eq!(id.len(), 32, "machine-id {id:?}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(console.contains(&format!("os-init: machine-id {id} (new)")));
    // The first boot gave the disk its own identity: the other entries
    // are where build-image put them, with new GUIDs.
    assert!(
        console.contains("os-init: gave /dev/vda its own identity: disk GUID"),
        "{}",
        tail(&console, 50)
    );
    assert!(!sgdisk(&["-p"], &disk).contains(&layout.disk_guid.to_string()));
    for (n, name) in [(1, "bios_grub"), (2, "ESP"), (3, "root_a"), (4, "root_b")] {
        let p = layout.partition(name).unwrap();
        let info = sgdisk(&["-i", &n.to_string()], &disk);
        assert!(
            info.contains(&format!("First sector: {} ", p.first_lba))
                && info.contains(&format!("Last sector: {} ", p.first_lba + p.sectors - 1))
                && info.contains(&format!("Partition name: '{name}'"))
                && info.contains(&format!("Partition GUID code: {} ", p.type_guid))
                && !info.contains(&p.guid.to_string()),
            "partition {n} changed more than its GUID:\n{info}"
        );
    }
    let range = check_table(&disk);
    assert_eq!(
        range.0 * 512,
        layout.size - MIB,
        "persist starts after root_b"
    );
    let dump = check_fs(tmp.path(), &disk, range);
    assert!(
        dump.lines()
            .any(|l| l.starts_with("Filesystem volume name:") && l.ends_with(" persist")),
        "{dump}"
    );

    // Boot 2: everything is kept.
    let console = vm.boot("");
    expect_console(
        &console,
        &[
            "os-init: persist is /dev/vda5",
            &format!("os-init: machine-id {id} (kept on persist)"),
            &format!("root-init: machine-id {id}"),
            "root-init: marker kept-since-first-boot",
        ],
    );
    for gone in [
        "created persist",
        "formatting",
        "seeded",
        "moved the backup",
    ] {
        assert!(!console.contains(gone), "{gone}:\n{}", tail(&console, 50));
    }

    // The disk grows by 64 MiB: boot 3 moves the backup GPT, grows persist
    // and its filesystem.
    grow(&disk, 64 * MIB);
    let console = vm.boot("");
    expect_console(
        &console,
        &[
            "os-init: moved the backup GPT of /dev/vda to its end",
            "os-init: grew persist /dev/vda5 from",
            "os-init: resized the persist filesystem from",
            "root-init: marker kept-since-first-boot",
            &format!("root-init: machine-id {id}"),
        ],
    );
    let grown = check_table(&disk);
    assert_eq!(grown.0, range.0, "persist keeps its start");
    assert_eq!(grown.1, range.1 + 64 * MIB / 512);
    let dump = check_fs(tmp.path(), &disk, grown);
    let fs_bytes = dumpe2fs_field(&dump, "Block count:") * dumpe2fs_field(&dump, "Block size:");
    let part_bytes = (grown.1 - grown.0 + 1) * 512;
    assert!(
        fs_bytes <= part_bytes && fs_bytes + 16 * MIB > part_bytes,
        "filesystem {fs_bytes} bytes on a {part_bytes}-byte partition:\n{dump}"
    );

    // A write cut off between the backup and the primary leaves a primary
    // that fails its CRC (here: a byte of unused entry 100). With `gpt` on
    // its command line the kernel reads the backup and finds root_a;
    // os-init restores the primary from the backup.
    let table = fs::read(&disk).unwrap()[..34 * 512].to_vec();
    let mut f = File::options().read(true).write(true).open(&disk).unwrap();
    f.seek(SeekFrom::Start(1024 + 100 * 128 + 60)).unwrap();
    f.write_all(&[0x5A]).unwrap();
    drop(f);
    let console = vm.boot("gpt");
    expect_console(
        &console,
        &[
            "os-init: the primary GPT of /dev/vda is damaged (GPT entries at LBA 2: CRC32 is",
            "restoring it from the backup",
            "os-init: persist is /dev/vda5",
            "root-init: marker kept-since-first-boot",
        ],
    );
    assert_eq!(fs::read(&disk).unwrap()[..34 * 512], table[..]);
    check_table(&disk);
}

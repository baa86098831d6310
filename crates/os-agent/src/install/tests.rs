//! `install` to regular files from a generated live ISO tree: a small A/B
//! head (MBR with boot code, a GPT made with boot_contract::gpt, a fake
//! ESP), a fake rootfs; results checked with `sgdisk -v`.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use boot_contract::gpt::{crc32, Entry, Gpt, Guid, SIGNATURE};
use sha2::{Digest, Sha256};

use super::*;

const IMAGE: u64 = 8 * MIB;
const HEAD: u64 = 2 * MIB;
const ROOT_A: (u64, u64) = (2 * MIB, 3 * MIB);
const ROOT_B: (u64, u64) = (5 * MIB, 2 * MIB);
const MIN: u64 = 10 * MIB;
/// A GPT entry array of 128 entries of 128 bytes: LBA 2..33.
const ENTRIES: usize = 128 * 128;
const ROOTFS_LEN: usize = 3 * MIB as usize / 2 + 123;

fn guid(n: u8) -> Guid {
    Guid::random_v4([n; 16])
}

/// ESP type C12A7328-F81F-11D2-BA4B-00A0C93EC93B, on-disk byte order.
const ESP_TYPE: Guid = Guid([
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
]);

/// LBA 0..33 of the image: MBR (boot code, protective entry, 55AA) and
/// the primary GPT for a disk of `IMAGE` bytes.
fn table() -> Vec<u8> {
    let sectors = IMAGE / SECTOR;
    let mut t = vec![0u8; TABLE_BYTES as usize];
    for (i, b) in t[..440].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1; // "boot code"
    }
    let p = 446;
    t[p + 1..p + 4].copy_from_slice(&[0, 2, 0]);
    t[p + 4] = 0xEE;
    t[p + 5..p + 8].copy_from_slice(&[0xFF; 3]);
    t[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
    t[p + 12..p + 16].copy_from_slice(&((sectors - 1) as u32).to_le_bytes());
    t[510..512].copy_from_slice(&[0x55, 0xAA]);
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    h[56..72].copy_from_slice(&guid(9).0);
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&[0u8; ENTRIES]).to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    t[512..512 + 92].copy_from_slice(&h);
    let mut g = Gpt::read(&mut Cursor::new(&t), SECTOR, sectors).unwrap();
    for (i, (name, ty, (off, len))) in [
        (partition::ESP, ESP_TYPE, (MIB, MIB)),
        (
            partition::ROOT_A,
            boot_contract::gpt::types::LINUX_FILESYSTEM,
            ROOT_A,
        ),
        (
            partition::ROOT_B,
            boot_contract::gpt::types::LINUX_FILESYSTEM,
            ROOT_B,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        g.add(&Entry {
            type_guid: ty,
            guid: guid(i as u8 + 1),
            first_lba: off / SECTOR,
            last_lba: (off + len) / SECTOR - 1,
            attributes: 0,
            name: name.into(),
        })
        .unwrap();
    }
    let [_, _, (pe_at, pe), (ph_at, ph)] = g.writes();
    t[pe_at as usize..pe_at as usize + pe.len()].copy_from_slice(&pe);
    t[ph_at as usize..ph_at as usize + ph.len()].copy_from_slice(&ph);
    t
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// Pseudo-random bytes.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The full head as it must appear on the disk.
    head: Vec<u8>,
    rootfs: Vec<u8>,
}

impl Fixture {
    fn source(&self) -> PathBuf {
        self.dir.path().join("iso")
    }

    fn manifest_path(&self) -> PathBuf {
        self.source().join(boot_contract::live::MANIFEST)
    }

    /// Rewrites the manifest with `f` applied to its JSON.
    fn edit(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.manifest_path();
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// A target file of `size` bytes filled with 0xAB (old data).
    fn target(&self, name: &str, size: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, vec![0xABu8; size as usize]).unwrap();
        p
    }

    fn opts(&self, target: &Path) -> Options {
        Options {
            source: self.source(),
            ..Options::new(Device::Path(target.to_path_buf()))
        }
    }

    /// The GPT of the image's head.
    fn head_gpt(&self) -> Gpt {
        Gpt::read(&mut Cursor::new(&self.head), SECTOR, IMAGE / SECTOR).unwrap()
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut head = vec![0u8; HEAD as usize];
    head[..TABLE_BYTES as usize].copy_from_slice(&table());
    // A "FAT boot sector" and some "files" in the ESP.
    let esp = MIB as usize;
    head[esp..esp + 512].copy_from_slice(&noise(512, 1));
    head[esp + 510..esp + 512].copy_from_slice(&[0x55, 0xAA]);
    head[esp + 65536..esp + 65536 + 3000].copy_from_slice(&noise(3000, 2));
    let chunks: Vec<[u64; 2]> = vec![[0, TABLE_BYTES], [MIB, 512], [MIB + 65536, 3000]];
    let mut stored = Vec::new();
    for [o, l] in &chunks {
        stored.extend_from_slice(&head[*o as usize..(*o + *l) as usize]);
    }
    let rootfs = noise(ROOTFS_LEN, 3);
    let iso = dir.path().join("iso");
    fs::create_dir_all(iso.join("install")).unwrap();
    fs::write(iso.join("install/head.bin"), &stored).unwrap();
    fs::write(iso.join("rootfs.squashfs"), &rootfs).unwrap();
    let m = serde_json::json!({
        "format": "build-image-install/1",
        "image": {"id": "debian", "version": "1.0.0", "arch": machine_arch()},
        "sector_size": 512,
        "image_size": IMAGE,
        "min_device_size": MIN,
        "head": {"file": "install/head.bin", "size": HEAD, "sha256": sha(&head), "chunks": chunks},
        "rootfs": {"file": "rootfs.squashfs", "size": rootfs.len(), "sha256": sha(&rootfs)},
        "root_a": {"offset": ROOT_A.0, "size": ROOT_A.1},
        "root_b": {"offset": ROOT_B.0, "size": ROOT_B.1},
    });
    fs::write(
        iso.join("install/install.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    Fixture { dir, head, rootfs }
}

fn sgdisk(args: &[&str], disk: &Path) -> String {
    let o = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .expect("running sgdisk (package gdisk)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No partition table is left: the first and last MiB are zero.
fn assert_wiped(path: &Path) {
    let d = fs::read(path).unwrap();
    let m = MIB as usize;
    assert!(d[..m].iter().all(|&b| b == 0), "first MiB not zero");
    assert!(
        d[d.len() - m..].iter().all(|&b| b == 0),
        "last MiB not zero"
    );
    let v = sgdisk(&["-v"], path);
    assert!(
        v.contains("Creating new GPT entries"),
        "a GPT is left:\n{v}"
    );
}

#[test]
fn installs_to_a_larger_file_and_sgdisk_agrees() {
    let f = fixture();
    let size = 16 * MIB;
    let t = f.target("disk.img", size);
    let vars = f.dir.path().join("efivars");
    fs::create_dir(&vars).unwrap();
    let mut o = f.opts(&t);
    o.efivars = EfiVars::Dir(vars.clone());
    let done = install(&o).unwrap();
    assert_eq!(
        (
            done.id.as_str(),
            done.version.as_str(),
            done.device.as_path()
        ),
        ("debian", "1.0.0", t.as_path())
    );
    let v = sgdisk(&["-v"], &t);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let p = sgdisk(&["-p"], &t);
    for name in ["ESP", "root_a", "root_b"] {
        assert!(p.contains(name), "{name} missing:\n{p}");
    }
    let d = fs::read(&t).unwrap();
    let sectors = size / SECTOR;
    // The backup GPT is at the end of the target, not of the image.
    assert_eq!(&d[(size - SECTOR) as usize..][..8], SIGNATURE);
    assert_ne!(&d[(IMAGE - SECTOR) as usize..][..8], SIGNATURE);
    let g = Gpt::read(&mut Cursor::new(&d), SECTOR, sectors).unwrap();
    assert_eq!(g.alternate_lba(), sectors - 1);
    assert!(!g.backup_misplaced(sectors));
    let backup = Gpt::read_backup(&mut Cursor::new(&d), SECTOR, sectors).unwrap();
    // The disk's own identity: new GUIDs, the same names, types, places.
    let image = f.head_gpt();
    assert_eq!(g.disk_guid(), done.disk_guid);
    assert_eq!(backup.disk_guid(), done.disk_guid);
    assert_ne!(g.disk_guid(), image.disk_guid());
    let (new, old): (Vec<Entry>, Vec<Entry>) = (
        g.partitions().map(|p| p.1).collect(),
        image.partitions().map(|p| p.1).collect(),
    );
    assert_eq!(new.len(), old.len());
    for (n, o) in new.iter().zip(&old) {
        assert_ne!(n.guid, o.guid, "{}", n.name);
        assert_eq!(
            &Entry {
                guid: o.guid,
                ..n.clone()
            },
            o
        );
    }
    // The firmware boots the new disk next: HD(1,GPT,<new ESP>)/File(...)
    // first in BootOrder and in BootNext.
    let (i, esp) = g.find(partition::ESP).unwrap();
    assert_eq!(done.esp.guid, esp.guid);
    assert_eq!(
        done.boot_entry.as_deref(),
        Ok("Boot0000, first in BootOrder and BootNext")
    );
    let var = |n: &str| fs::read(vars.join(format!("{n}-{}", efiboot::GLOBAL))).unwrap();
    let want = efiboot::load_option(
        "debian 1.0.0",
        &efiboot::EspPartition {
            number: i as u32 + 1,
            first_lba: esp.first_lba,
            sectors: esp.sectors(),
            guid: esp.guid,
        },
        efiboot::loader_path(machine_arch()).unwrap(),
    );
    assert_eq!(var("Boot0000")[4..], want[..]);
    assert_eq!(var("BootOrder")[4..], [0, 0]);
    assert_eq!(var("BootNext")[4..], [0, 0]);
    // LBA 0: boot code kept, protective entry fitted to the target.
    assert_eq!(d[..440], f.head[..440]);
    assert_eq!(d[446 + 12..446 + 16], ((sectors - 1) as u32).to_le_bytes());
    // The head past the table, zeros of the gaps included, and root_a.
    let h = TABLE_BYTES as usize;
    assert!(d[h..HEAD as usize] == f.head[h..], "head differs");
    let a = ROOT_A.0 as usize;
    assert!(d[a..a + f.rootfs.len()] == f.rootfs[..], "root_a differs");
    // Old data in root_a after the rootfs is left alone; root_b starts
    // zeroed (os-init must not take it for a filesystem).
    assert_eq!(d[a + f.rootfs.len()], 0xAB);
    let b = ROOT_B.0 as usize;
    assert!(d[b..b + MIB as usize].iter().all(|&x| x == 0));
}

/// What os-init does on the first boot: a `persist` partition after the
/// slots, holding data.
fn first_boot(t: &Path) {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t)
        .unwrap();
    let sectors = file.metadata().unwrap().len() / SECTOR;
    let mut g = Gpt::read(&mut file, SECTOR, sectors).unwrap();
    let first = g.first_free_aligned(MIB / SECTOR);
    g.add(&Entry {
        type_guid: boot_contract::gpt::types::LINUX_FILESYSTEM,
        guid: guid(7),
        first_lba: first,
        last_lba: g.last_usable(),
        attributes: 0,
        name: partition::PERSIST.into(),
    })
    .unwrap();
    g.write(&mut file, |f| f.sync_all()).unwrap();
    file.write_all_at(b"the node's data", first * SECTOR)
        .unwrap();
}

#[test]
fn an_installed_system_with_data_is_kept_unless_overwrite_is_asked() {
    let f = fixture();
    let t = f.target("disk.img", 16 * MIB);
    install(&f.opts(&t)).unwrap();
    // Installed but never booted (no persist): installing again is fine.
    install(&f.opts(&t)).unwrap();
    first_boot(&t);
    let before = fs::read(&t).unwrap();
    let e = install(&f.opts(&t)).unwrap_err().to_string();
    for want in [
        t.display().to_string().as_str(),
        "holds an installed system with its data on persist (partition 4, 8 MiB",
        "refusing to install over it",
        "install.overwrite: true",
        "--force",
    ] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    assert!(fs::read(&t).unwrap() == before, "a refused install wrote");
    // With the primary GPT damaged the backup still tells.
    let mut damaged = before.clone();
    damaged[SECTOR as usize..2 * SECTOR as usize].fill(0);
    fs::write(&t, &damaged).unwrap();
    assert!(install(&f.opts(&t)).is_err());
    // Asked for: installed over it.
    let mut o = f.opts(&t);
    o.overwrite = true;
    install(&o).unwrap();
    let g = Gpt::read(&mut fs::File::open(&t).unwrap(), SECTOR, 16 * MIB / SECTOR).unwrap();
    assert!(g.find(partition::PERSIST).is_none());
}

#[test]
fn too_small_target_is_refused_untouched() {
    let f = fixture();
    let t = f.target("small.img", 9 * MIB);
    let e = install(&f.opts(&t)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{} is {} bytes, the image needs at least {MIN}",
            t.display(),
            9 * MIB
        )
    );
    assert!(fs::read(&t).unwrap().iter().all(|&b| b == 0xAB), "touched");
}

#[test]
fn bad_inputs_are_refused_before_any_write() {
    let f = fixture();
    let t = f.target("disk.img", 16 * MIB);
    let untouched = |e: String, want: &str| {
        assert!(e.contains(want), "{want:?} not in {e}");
        assert!(
            fs::read(&t).unwrap().iter().all(|&b| b == 0xAB),
            "touched: {e}"
        );
    };
    // An image of another architecture.
    let other = if machine_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut o = f.opts(&t);
    o.arch = other.into();
    let e = install(&o).unwrap_err().to_string();
    let want = format!(
        "the image is for {}, this machine is {other}",
        machine_arch()
    );
    assert!(e.contains(&want), "{e}");
    untouched(e, "install.json");
    // head.bin shorter than its chunks.
    let hb = f.source().join("install/head.bin");
    let stored = fs::read(&hb).unwrap();
    fs::write(&hb, &stored[..stored.len() - 1]).unwrap();
    untouched(install(&f.opts(&t)).unwrap_err().to_string(), "head.file");
    fs::write(&hb, &stored).unwrap();
    // A manifest error names the manifest and the field.
    f.edit(|v| v["root_a"]["size"] = serde_json::json!(MIB));
    let e = install(&f.opts(&t)).unwrap_err().to_string();
    assert!(
        e.starts_with(&f.manifest_path().display().to_string()),
        "{e}"
    );
    untouched(e, "rootfs.size");
    // --config on a regular file without --esp, and a bad config file.
    let f = fixture();
    let cfg = f.dir.path().join("c.yaml");
    fs::write(&cfg, "hostname: node1\n").unwrap();
    let mut o = f.opts(&t);
    o.config = Some(cfg.clone());
    untouched(
        install(&o).unwrap_err().to_string(),
        "--config needs a block device",
    );
    fs::write(&cfg, "hostname: node1\nbogus: 1\n").unwrap();
    o.esp = Some(f.dir.path().to_path_buf());
    untouched(install(&o).unwrap_err().to_string(), "bogus");
    // Not a file or block device; a missing file.
    let e = install(&f.opts(f.dir.path())).unwrap_err().to_string();
    assert!(e.contains("not a block device or a regular file"), "{e}");
    let e = install(&f.opts(&f.dir.path().join("nope")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn wrong_sha256_fails_and_wipes() {
    let f = fixture();
    let t = f.target("disk.img", 16 * MIB);
    install(&f.opts(&t)).unwrap();
    f.edit(|v| v["rootfs"]["sha256"] = serde_json::json!("0".repeat(64)));
    let e = install(&f.opts(&t)).unwrap_err().to_string();
    assert!(
        e.contains("rootfs.sha256") && e.contains("were zeroed"),
        "{e}"
    );
    assert_wiped(&t);

    let f = fixture();
    let t = f.target("disk2.img", 16 * MIB);
    // One flipped byte in a chunk of head.bin.
    let hb = f.source().join("install/head.bin");
    let mut stored = fs::read(&hb).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 1;
    fs::write(&hb, &stored).unwrap();
    let e = install(&f.opts(&t)).unwrap_err().to_string();
    assert!(e.contains("head.sha256"), "{e}");
    assert_wiped(&t);
}

#[test]
fn injected_faults_wipe_the_target() {
    for point in [
        fault::INSTALL_AFTER_HEAD,
        fault::INSTALL_AFTER_ROOTFS,
        fault::INSTALL_AFTER_BACKUP_GPT,
    ] {
        let f = fixture();
        let t = f.target("disk.img", 16 * MIB);
        let mut o = f.opts(&t);
        o.fail_at = Some(point);
        let e = install(&o).unwrap_err().to_string();
        assert!(
            e.contains(point) && e.contains("were zeroed"),
            "{point}: {e}"
        );
        assert_wiped(&t);
        // The same target installs fine afterwards.
        install(&f.opts(&t)).unwrap();
        assert!(sgdisk(&["-v"], &t).contains("No problems found"));
    }
}

#[test]
fn config_goes_to_the_esp() {
    let f = fixture();
    let t = f.target("disk.img", 16 * MIB);
    let cfg = f.dir.path().join("c.yaml");
    fs::write(&cfg, "hostname: node1\n").unwrap();
    let esp = f.dir.path().join("esp");
    fs::create_dir(&esp).unwrap();
    let mut o = f.opts(&t);
    o.config = Some(cfg);
    o.esp = Some(esp.clone());
    install(&o).unwrap();
    assert_eq!(
        fs::read_to_string(esp.join("build-image/config.yaml")).unwrap(),
        "hostname: node1\n"
    );
    let (c, _) = crate::config::load(&crate::fsutil::Root::new(f.dir.path()), Some(&esp)).unwrap();
    assert_eq!(c.hostname.as_deref(), Some("node1"));
}

#[test]
fn unattended_install_from_the_configuration() {
    let f = fixture();
    let t = f.target("disk.img", 16 * MIB);
    let root = f.dir.path().join("root");
    let console = f.dir.path().join("console");
    fs::write(&console, "").unwrap();
    let run = |extra: &[&str]| {
        let mut argv: Vec<String> = vec![
            "install".into(),
            "--unattended".into(),
            format!("--root={}", root.display()),
            format!("--source={}", f.source().display()),
            format!("--console={}", console.display()),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        crate::cli::run(&crate::cli::parse(&argv).unwrap())
    };
    // No configuration: nothing to do, exit 0, the target untouched.
    assert_eq!(run(&[]).unwrap(), 0);
    assert!(fs::read(&t).unwrap().iter().all(|&b| b == 0xAB));
    let cfg = root.join("etc/os-agent/config.yaml");
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    fs::write(
        &cfg,
        format!("install:\n  device: {}\n  reboot: false\n", t.display()),
    )
    .unwrap();
    assert_eq!(run(&[]).unwrap(), 0);
    let said = fs::read_to_string(&console).unwrap();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(
        lines[0].starts_with(&format!(
            "os-agent: installed debian 1.0.0 to {} (disk GUID ",
            t.display()
        )),
        "{said}"
    );
    assert_eq!(
        lines[1],
        "os-agent: firmware boot entry: none (the target is a file)"
    );
    assert!(sgdisk(&["-v"], &t).contains("No problems found"));
}

//! The A/B GPT disk writer against the reference tools: `sgdisk -v`/`-p`/
//! `-i`, `sfdisk --json`, `fsck.vfat -n` on the ESP (extracted: it has no
//! offset option), mtools at the ESP's offset and `unsquashfs -s` on the
//! root slot extracted from the image.
//!
//! Needs the `gdisk`, `fdisk`, `dosfstools`, `mtools` and `squashfs-tools`
//! packages.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::disk::{self, types, Arch, Layout, Source};
use build_image::fat::{self, FatOptions, FatType};
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::{require_tool, tool_stdout};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const T0: i64 = 1_700_000_040;

fn tools() {
    for (tool, package) in [
        ("sgdisk", "gdisk"),
        ("sfdisk", "fdisk"),
        ("fsck.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mksquashfs", "squashfs-tools"),
        ("unsquashfs", "squashfs-tools"),
    ] {
        require_tool(tool, package);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = tool_stdout(cmd.env("TZ", "UTC").env("MTOOLS_SKIP_CHECK", "1"));
    String::from_utf8_lossy(&out).into_owned()
}

/// A small ESP tree.
fn esp_tree(dir: &Path) -> (FsTree, ContentStore) {
    let mut tree = FsTree::new();
    let mut store = ContentStore::new_in(dir).unwrap();
    let mut cur = tree.root();
    for name in ["EFI", "BOOT"] {
        let id = tree.add_inode(
            InodeKind::Directory {
                children: BTreeMap::new(),
            },
            Metadata::new(0o755, 0, 0, T0),
        );
        tree.link(cur, name.as_bytes().to_vec(), id);
        cur = id;
    }
    for (name, data) in [
        ("BOOTX64.EFI", vec![0x4D; 300_000]),
        ("grub.cfg", b"set default=0\n".to_vec()),
    ] {
        let content = store.append(&data).unwrap();
        let id = tree.add_inode(InodeKind::File { content }, Metadata::new(0o644, 0, 0, T0));
        tree.link(cur, name.as_bytes().to_vec(), id);
    }
    (tree, store)
}

/// A squashfs made by mksquashfs from a few files.
fn squashfs(tmp: &Path) -> PathBuf {
    let src = tmp.join("rootfs");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/os-release"), b"ID=debian\n").unwrap();
    let mut big = Vec::new();
    for i in 0u32..200_000 {
        big.extend_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
    }
    fs::write(src.join("blob"), &big).unwrap();
    let out = tmp.join("root.sqfs");
    run(Command::new("mksquashfs").arg(&src).arg(&out).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]));
    out
}

struct Built {
    _tmp: TempDir,
    img: PathBuf,
    layout: Layout,
    sqfs: PathBuf,
}

/// Writes a whole A/B image: FAT ESP, squashfs in root_a, nothing else.
fn build(arch: Arch, seed: &[u8]) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::ab(arch, 64 * MIB, 16 * MIB, 8 * MIB, seed).unwrap();
    let sqfs = squashfs(tmp.path());
    let (tree, store) = esp_tree(tmp.path());
    let img = tmp.path().join("disk.img");
    let out = File::create(&img).unwrap();
    let sq = File::open(&sqfs).unwrap();
    let esp_size = layout.partition(disk::ESP).unwrap().size();
    let opts = FatOptions {
        size_bytes: esp_size,
        fat_type: Some(FatType::Fat32),
        volume_label: "ESP".into(),
        volume_id: 0xC0FF_EE00,
        timestamp: T0,
    };
    disk::write_image(
        &layout,
        &out,
        vec![
            (
                disk::ESP,
                Source::Writer(Box::new(|w| {
                    fat::write(&tree, &store, &opts, w, 0)?;
                    Ok(())
                })),
            ),
            (disk::ROOT_A, Source::File(&sq)),
        ],
    )
    .unwrap();
    Built {
        _tmp: tmp,
        img,
        layout,
        sqfs,
    }
}

/// Copies one partition out of the image.
fn extract(b: &Built, name: &str) -> PathBuf {
    let range = b.layout.range(name).unwrap();
    let path = b.img.with_extension(name);
    let mut src = File::open(&b.img).unwrap();
    src.seek(SeekFrom::Start(range.start)).unwrap();
    let mut dst = File::create(&path).unwrap();
    std::io::copy(&mut src.take(range.end - range.start), &mut dst).unwrap();
    path
}

fn sha_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

/// `sgdisk -i N`: (type GUID, unique GUID, name, first sector, last sector).
fn sgdisk_info(img: &Path, n: usize) -> (String, String, String, u64, u64) {
    let out = run(Command::new("sgdisk").arg("-i").arg(n.to_string()).arg(img));
    let field = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .trim()
            .to_string()
    };
    let type_guid = field("Partition GUID code:")
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let sector = |key: &str| field(key).split(' ').next().unwrap().parse().unwrap();
    (
        type_guid,
        field("Partition unique GUID:"),
        field("Partition name:").trim_matches('\'').to_string(),
        sector("First sector:"),
        sector("Last sector:"),
    )
}

fn check_table(b: &Built, expect: &[(&str, disk::Guid)]) {
    let v = run(Command::new("sgdisk").arg("-v").arg(&b.img));
    assert!(v.contains("No problems found"), "{v}");
    let p = run(Command::new("sgdisk").arg("-p").arg(&b.img));
    for (name, _) in expect {
        assert!(p.contains(name), "{name} missing from:\n{p}");
    }
    assert!(
        p.contains(&format!("Disk identifier (GUID): {}", b.layout.disk_guid)),
        "{p}"
    );
    for (i, (name, type_guid)) in expect.iter().enumerate() {
        let (t, guid, n, first, last) = sgdisk_info(&b.img, i + 1);
        let part = b.layout.partition(name).unwrap();
        assert_eq!(n, *name);
        assert_eq!(t, type_guid.to_string(), "type of {name}");
        assert_eq!(guid, part.guid.to_string(), "GUID of {name}");
        assert_eq!(first % 2048, 0, "{name} is not 1 MiB aligned");
        assert_eq!((last + 1) % 2048, 0, "{name} does not end on a MiB");
        assert_eq!(first * 512, part.offset());
    }
    // There is no partition after the expected ones.
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg((expect.len() + 1).to_string())
        .arg(&b.img)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Partition name"));

    let verify = run(Command::new("sfdisk").arg("--verify").arg(&b.img));
    assert!(verify.contains("No errors detected"), "{verify}");
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&b.img))).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["id"], b.layout.disk_guid.to_string());
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), expect.len());
    for (p, (name, type_guid)) in parts.iter().zip(expect) {
        assert_eq!(p["name"], *name);
        assert_eq!(p["type"], type_guid.to_string());
        assert_eq!(p["start"].as_u64().unwrap() % 2048, 0);
    }
}

fn check_contents(b: &Built) {
    let esp = extract(b, disk::ESP);
    run(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let at = format!(
        "{}@@{}",
        b.img.display(),
        b.layout.partition(disk::ESP).unwrap().offset()
    );
    let cfg = run(Command::new("mcopy").args(["-i", &at, "::/EFI/BOOT/grub.cfg", "-"]));
    assert_eq!(cfg, "set default=0\n");

    let root = extract(b, disk::ROOT_A);
    let s = run(Command::new("unsquashfs").arg("-s").arg(&root));
    assert!(s.contains("Found a valid SQUASHFS 4:0 superblock"), "{s}");
    let listing = run(Command::new("unsquashfs").arg("-l").arg(&root));
    assert!(
        listing.contains("etc/os-release") && listing.contains("blob"),
        "{listing}"
    );
    // Byte-exact, then zeros to the end of the slot.
    let want = fs::read(&b.sqfs).unwrap();
    let got = fs::read(&root).unwrap();
    assert_eq!(&got[..want.len()], &want[..]);
    assert!(got[want.len()..].iter().all(|&x| x == 0));
    // The empty slot is all zeros.
    let root_b = fs::read(extract(b, disk::ROOT_B)).unwrap();
    assert!(root_b.iter().all(|&x| x == 0));
}

#[test]
fn x86_64_ab_image() {
    tools();
    let b = build(Arch::X86_64, b"seed one");
    check_table(
        &b,
        &[
            ("bios_grub", types::BIOS_BOOT),
            ("ESP", types::EFI_SYSTEM),
            ("root_a", types::ROOT_X86_64),
            ("root_b", types::ROOT_X86_64),
            ("persist", types::LINUX_FILESYSTEM),
        ],
    );
    check_contents(&b);
    // BIOS boot code goes in after the table and leaves it valid.
    let out = fs::OpenOptions::new().write(true).open(&b.img).unwrap();
    disk::write_mbr_boot_code(&out, &[0xEB; 440]).unwrap();
    assert!(disk::write_mbr_boot_code(&out, &[0xEB; 441]).is_err());
    let v = run(Command::new("sgdisk").arg("-v").arg(&b.img));
    assert!(v.contains("No problems found"), "{v}");
    let meta = fs::metadata(&b.img).unwrap();
    assert_eq!(meta.len(), b.layout.size);
    assert!(
        meta.blocks() * 512 < 8 * MIB,
        "the image is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
}

#[test]
fn arm64_ab_image_has_no_bios_grub() {
    tools();
    let b = build(Arch::Aarch64, b"seed one");
    check_table(
        &b,
        &[
            ("ESP", types::EFI_SYSTEM),
            ("root_a", types::ROOT_ARM64),
            ("root_b", types::ROOT_ARM64),
            ("persist", types::LINUX_FILESYSTEM),
        ],
    );
    check_contents(&b);
}

#[test]
fn same_seed_same_bytes_other_seed_other_guids() {
    tools();
    let one = build(Arch::X86_64, b"seed one");
    let two = build(Arch::X86_64, b"seed one");
    assert_eq!(sha_file(&one.img), sha_file(&two.img));
    let other = build(Arch::X86_64, b"seed two");
    assert_ne!(sha_file(&one.img), sha_file(&other.img));
    assert_ne!(one.layout.disk_guid, other.layout.disk_guid);
    for i in 1..=5 {
        let (_, g1, name, ..) = sgdisk_info(&one.img, i);
        let (_, g2, ..) = sgdisk_info(&other.img, i);
        assert_ne!(g1, g2, "{name}");
    }
}

#[test]
fn oversized_file_is_rejected_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::ab(Arch::X86_64, 64 * MIB, 4 * MIB, 4 * MIB, b"s").unwrap();
    let big = tmp.path().join("big");
    let bigf = File::create(&big).unwrap();
    bigf.set_len(4 * MIB + 1).unwrap();
    let img = tmp.path().join("disk.img");
    fs::write(&img, b"old").unwrap();
    let out = fs::OpenOptions::new().write(true).open(&img).unwrap();
    let err = disk::write_image(&layout, &out, vec![("root_a", Source::File(&bigf))]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("root_a") && msg.contains("4194305") && msg.contains("4194304"),
        "{msg}"
    );
    assert_eq!(fs::read(&img).unwrap(), b"old", "the image was touched");
    let err = disk::write_image(&layout, &out, vec![("root_c", Source::File(&bigf))]).unwrap_err();
    assert!(format!("{err:#}").contains("root_c"));
}

#[test]
fn oversized_reader_and_writer_stop_at_the_partition_end() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::ab(Arch::X86_64, 64 * MIB, 4 * MIB, 4 * MIB, b"s").unwrap();
    let img = tmp.path().join("disk.img");
    let out = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    let mut data = Cursor::new(vec![0xAAu8; (4 * MIB + 10) as usize]);
    let err =
        disk::write_image(&layout, &out, vec![("root_b", Source::Reader(&mut data))]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("root_b") && msg.contains("larger than the partition"),
        "{msg}"
    );
    // Nothing landed in persist, right after root_b.
    let persist = layout.range("persist").unwrap();
    let mut buf = vec![0u8; 4096];
    out.read_exact_at(&mut buf, persist.start).unwrap();
    assert!(buf.iter().all(|&b| b == 0));

    let err = disk::write_image(
        &layout,
        &out,
        vec![(
            "root_a",
            Source::Writer(Box::new(|w| {
                w.seek(SeekFrom::Start(4 * MIB - 2))?;
                w.write_all(b"abc")?;
                Ok(())
            })),
        )],
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("root_a") && msg.contains("cross the end"),
        "{msg}"
    );
    let root_b = layout.range("root_b").unwrap();
    let mut b = [0u8; 4];
    out.read_exact_at(&mut b, root_b.start).unwrap();
    assert_eq!(b, [0; 4]);
}

#[test]
fn fat_writer_too_large_for_its_partition_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::ab(Arch::Aarch64, 40 * MIB, 4 * MIB, 4 * MIB, b"s").unwrap();
    let (tree, store) = esp_tree(tmp.path());
    let out = File::create(tmp.path().join("disk.img")).unwrap();
    let opts = FatOptions {
        size_bytes: 64 * MIB,
        fat_type: Some(FatType::Fat32),
        volume_label: String::new(),
        volume_id: 1,
        timestamp: T0,
    };
    let err = disk::write_image(
        &layout,
        &out,
        vec![(
            "ESP",
            Source::Writer(Box::new(|w| {
                fat::write(&tree, &store, &opts, w, 0)?;
                Ok(())
            })),
        )],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("partition ESP"), "{err:#}");
}

/// Writes `table` to `img`, its partition `part` a FAT32 whose root holds
/// `files`.
fn write_with_fat(table: &dyn disk::Table, part: &str, img: &Path, files: &[(&str, &[u8])]) {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = FsTree::new();
    let mut store = ContentStore::new_in(dir.path()).unwrap();
    let root = tree.root();
    for (name, data) in files {
        let content = store.append(data).unwrap();
        let id = tree.add_inode(InodeKind::File { content }, Metadata::new(0o644, 0, 0, T0));
        tree.link(root, name.as_bytes().to_vec(), id);
    }
    let extent = table.extent(part).unwrap();
    let opts = FatOptions {
        size_bytes: extent.end - extent.start,
        fat_type: Some(FatType::Fat32),
        volume_label: "BOOT".into(),
        volume_id: 0x1234_5678,
        timestamp: T0,
    };
    disk::write_image(
        table,
        &File::create(img).unwrap(),
        vec![(
            part,
            Source::Writer(Box::new(|w| {
                fat::write(&tree, &store, &opts, w, 0)?;
                Ok(())
            })),
        )],
    )
    .unwrap();
}

/// A GRUB environment block (1024 bytes) holding `vars`.
fn grubenv(vars: &str) -> Vec<u8> {
    let mut b = format!("# GRUB Environment Block\n{vars}").into_bytes();
    b.resize(1024, b'#');
    b
}

/// `build-image --json inspect` of `path`, which must succeed.
fn inspect(path: &Path) -> serde_json::Value {
    let o = common::run(&["--json", "inspect", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The partitions of `inspect`'s document `d` are those of `sfdisk --json`
/// (sectors of 512 bytes), in order.
fn same_extents(d: &serde_json::Value, sfdisk: &[serde_json::Value]) {
    let ours = d["partitions"].as_array().unwrap();
    assert_eq!(ours.len(), sfdisk.len(), "{d}");
    for (p, s) in ours.iter().zip(sfdisk) {
        for k in ["start", "size"] {
            assert_eq!(p[k].as_u64(), s[k].as_u64().map(|x| x * 512), "{k}: {d}");
        }
    }
}

/// `build-image inspect` of a GPT disk image and of a Raspberry Pi card:
/// the table and identity, the partitions as sfdisk reads them, the slot
/// GRUB boots next and a pending trial, and the card's board sections.
#[test]
fn inspect_reads_a_disk_image_and_a_card() {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let sfdisk = |img: &Path| -> serde_json::Value {
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(img))).unwrap()
    };

    // The A/B disk, its ESP with an environment block armed for a trial.
    let layout = Layout::ab(Arch::X86_64, 64 * MIB, 16 * MIB, 8 * MIB, b"inspect").unwrap();
    let env = grubenv("default_slot=a\ntrial_slot=b\n");
    let img = tmp.path().join("disk.raw");
    write_with_fat(
        &layout,
        disk::ESP,
        &img,
        &[("grubenv", &env), ("grubenv.bak", &env)],
    );
    let d = inspect(&img);
    assert_eq!(d["kind"], "DiskInspect", "{d}");
    assert_eq!(d["table"], "gpt", "{d}");
    assert_eq!(d["identity"], "build", "{d}");
    let table = sfdisk(&img);
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(
        d["diskId"].as_str().unwrap().to_uppercase(),
        table["partitiontable"]["id"]
            .as_str()
            .unwrap()
            .to_uppercase(),
        "{d}"
    );
    same_extents(&d, parts);
    for (p, s) in d["partitions"].as_array().unwrap().iter().zip(parts) {
        assert_eq!(p["name"], s["name"], "{d}");
    }
    assert_eq!(d["bootEnv"]["defaultSlot"], "a", "{d}");
    assert_eq!(d["bootEnv"]["trialSlot"], "b", "{d}");
    assert_eq!(d["boards"], serde_json::json!([]), "{d}");

    // A card, its boot partition with config.txt.
    let card = disk::card::CardLayout::new(64 * MIB, 16 * MIB, 8 * MIB, b"inspect").unwrap();
    let env = grubenv("default_slot=b\ntrial_slot=\n");
    let config = b"arm_64bit=1\n[pi3]\nkernel=u-boot-rpi_arm64.bin\n[pi5]\n[all]\n";
    let img = tmp.path().join("card.img");
    write_with_fat(
        &card,
        disk::card::BOOT,
        &img,
        &[("grubenv", &env), ("config.txt", config)],
    );
    let d = inspect(&img);
    assert_eq!(d["table"], "mbr", "{d}");
    assert_eq!(d["identity"], "build", "{d}");
    let table = sfdisk(&img);
    assert_eq!(
        format!("0x{}", d["diskId"].as_str().unwrap()),
        table["partitiontable"]["id"].as_str().unwrap(),
        "{d}"
    );
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boot", "root_a", "root_b", "persist"], "{d}");
    same_extents(&d, parts);
    for (p, s) in d["partitions"].as_array().unwrap().iter().zip(parts) {
        assert_eq!(
            p["type"].as_str().unwrap(),
            format!("0x{:0>2}", s["type"].as_str().unwrap()),
            "{d}"
        );
        assert_eq!(
            p["bootable"],
            s["bootable"].as_bool().unwrap_or(false),
            "{d}"
        );
    }
    assert_eq!(d["bootEnv"]["defaultSlot"], "b", "{d}");
    assert_eq!(d["bootEnv"]["trialSlot"], "", "{d}");
    assert_eq!(
        d["boards"],
        serde_json::json!([
            {"section": "pi3", "kernel": "u-boot-rpi_arm64.bin"},
            {"section": "pi5", "kernel": null}
        ]),
        "{d}"
    );
    // The text form says the same.
    let o = common::run(&["inspect", img.to_str().unwrap()]);
    let text = common::stdout(&o);
    for want in [
        "MBR (Raspberry Pi card), disk signature",
        "the build's, until the first boot",
        "slot b, no trial pending",
        "[pi3] starts u-boot-rpi_arm64.bin",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // A card whose grubenv is gone: the table still reads, and why the
    // slot is unknown is said.
    write_with_fat(&card, disk::card::BOOT, &img, &[("config.txt", config)]);
    let d = inspect(&img);
    assert!(d["bootEnv"].is_null(), "{d}");
    assert_eq!(d["bootEnvProblem"], "no grubenv; no grubenv.bak", "{d}");
}

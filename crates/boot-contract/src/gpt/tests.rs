//! Round trips through the reference tool: tables made by `sgdisk`, changed
//! here, and checked with `sgdisk -v`.

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use super::*;

const MIB: u64 = 1 << 20;

fn sgdisk(args: &[&str], disk: &Path) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .expect("sgdisk not found: apt-get install gdisk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk {args:?} failed:\n{text}");
    text
}

fn assert_clean(disk: &Path) {
    let v = sgdisk(&["-v"], disk);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
}

/// A 64 MiB disk with an A/B-like table made by sgdisk.
fn disk(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    File::create(&path).unwrap().set_len(64 * MIB).unwrap();
    sgdisk(
        &[
            "-n",
            "1:2048:+1M",
            "-c",
            "1:bios_grub",
            "-t",
            "1:EF02",
            "-n",
            "2:0:+8M",
            "-c",
            "2:ESP",
            "-t",
            "2:EF00",
            "-n",
            "3:0:+16M",
            "-c",
            "3:root_a",
            "-n",
            "4:0:+16M",
            "-c",
            "4:root_b",
        ],
        &path,
    );
    path
}

fn sectors(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len() / 512
}

fn read(path: &Path) -> Result<Gpt, GptError> {
    Gpt::read(&mut File::open(path).unwrap(), 512, sectors(path))
}

fn write(gpt: &Gpt, path: &Path) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    gpt.write(&mut f, |f| f.sync_all()).unwrap();
}

fn persist_entry(gpt: &Gpt) -> Entry {
    Entry {
        type_guid: types::LINUX_FILESYSTEM,
        guid: Guid::random_v4([7; 16]),
        first_lba: gpt.first_free_aligned(2048),
        last_lba: gpt.last_usable(),
        attributes: 0,
        name: "persist".into(),
    }
}

#[test]
fn reads_what_sgdisk_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let gpt = read(&path).unwrap();
    let names: Vec<String> = gpt.partitions().map(|(_, e)| e.name).collect();
    assert_eq!(names, ["bios_grub", "ESP", "root_a", "root_b"]);
    let (i, a) = gpt.find("root_a").unwrap();
    assert_eq!(i, 2);
    assert_eq!(a.first_lba, 2048 + 2048 + 16384);
    assert_eq!(a.sectors(), 32768);
    assert!(!gpt.backup_misplaced(sectors(&path)));
    let p = sgdisk(&["-p"], &path);
    assert!(p.contains(&gpt.disk_guid().to_string()), "{p}");
}

#[test]
fn adds_persist_up_to_the_end_and_sgdisk_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let before = std::fs::read(&path).unwrap();
    let mut gpt = read(&path).unwrap();
    let e = persist_entry(&gpt);
    assert_eq!(e.first_lba, 2048 * (1 + 1 + 8 + 16 + 16));
    assert_eq!(gpt.add(&e).unwrap(), 4);
    write(&gpt, &path);
    assert_clean(&path);
    let info = sgdisk(&["-i", "5"], &path);
    assert!(info.contains("Partition name: 'persist'"), "{info}");
    assert!(
        info.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{info}"
    );
    assert!(
        info.contains(&format!("Last sector: {} ", gpt.last_usable())),
        "{info}"
    );
    // Everything else in the first 1 MiB is as it was but the entry, the
    // header CRCs and the entries CRC.
    let again = read(&path).unwrap();
    assert_eq!(again.find("persist").unwrap().1, e);
    let after = std::fs::read(&path).unwrap();
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    for &i in &changed {
        let in_entry = |base: usize| (base + 4 * 128..base + 5 * 128).contains(&i);
        let crc = |base: usize| {
            (base + 16..base + 20).contains(&i) || (base + 88..base + 92).contains(&i)
        };
        let backup_hdr = (sectors(&path) as usize - 1) * 512;
        let backup_ent = backup_hdr - 32 * 512;
        assert!(
            in_entry(1024) || in_entry(backup_ent) || crc(512) || crc(backup_hdr),
            "byte {i} changed"
        );
    }
}

#[test]
fn relocates_the_backup_of_a_grown_disk_and_grows_the_last_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let mut gpt = read(&path).unwrap();
    let e = persist_entry(&gpt);
    let index = gpt.add(&e).unwrap();
    write(&gpt, &path);

    // dd to a larger disk: the backup is no longer at the end.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100 * MIB)
        .unwrap();
    let n = sectors(&path);
    let v = Command::new("sgdisk")
        .arg("-v")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&v.stdout).contains("No problems found"));
    let mut gpt = read(&path).unwrap();
    assert!(gpt.backup_misplaced(n));
    gpt.relocate_backup(n).unwrap();
    assert_eq!(gpt.alternate_lba(), n - 1);
    assert_eq!(gpt.last_usable(), n - 34);
    gpt.set_last_lba(index, gpt.last_usable()).unwrap();
    write(&gpt, &path);
    let mut mbr = [0u8; 512];
    let mut f = File::options().read(true).write(true).open(&path).unwrap();
    f.read_exact(&mut mbr).unwrap();
    assert!(fit_protective_mbr(&mut mbr, n));
    assert!(
        !fit_protective_mbr(&mut mbr, n),
        "second fit changes nothing"
    );
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&mbr).unwrap();
    drop(f);
    assert_clean(&path);
    let gpt = read(&path).unwrap();
    assert!(!gpt.backup_misplaced(n));
    let (_, p) = gpt.find("persist").unwrap();
    assert_eq!((p.first_lba, p.last_lba), (e.first_lba, n - 34));
    // The backup copy is valid too: sgdisk can rebuild the primary from it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[512..1024].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new("sgdisk")
        .args(["-e", "-v"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
}

#[test]
fn refuses_changes_that_would_clobber_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let mut gpt = read(&path).unwrap();
    let (_, b) = gpt.find("root_b").unwrap();
    let mut e = persist_entry(&gpt);
    e.first_lba = b.last_lba;
    assert!(matches!(gpt.add(&e), Err(GptError::Change(m)) if m.contains("overlap entry 3")));
    let mut e = persist_entry(&gpt);
    e.last_lba = gpt.last_usable() + 1;
    assert!(gpt.add(&e).is_err());
    let mut e = persist_entry(&gpt);
    e.name = "root_a".into();
    assert!(gpt.add(&e).is_err());
    assert!(
        gpt.set_last_lba(2, b.first_lba).is_err(),
        "root_a must not grow over root_b"
    );
    assert!(gpt.set_last_lba(9, 100).is_err());
    // A smaller disk would cut root_b off.
    assert!(gpt.relocate_backup(b.last_lba).is_err());
}

#[test]
fn restores_a_damaged_primary_from_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let good = std::fs::read(&path).unwrap();
    let n = sectors(&path);
    let mut b = good.clone();
    b[1024 + 100 * 128 + 60] ^= 0x5A; // unused entry 100: only the CRC breaks
    assert!(matches!(
        Gpt::read(&mut Cursor::new(&b), 512, n),
        Err(GptError::EntriesCrc { lba: 2, .. })
    ));
    let gpt = Gpt::read_backup(&mut Cursor::new(&b), 512, n).unwrap();
    let primary = Gpt::read(&mut Cursor::new(&good), 512, n).unwrap();
    assert_eq!(
        gpt.partitions().collect::<Vec<_>>(),
        primary.partitions().collect::<Vec<_>>()
    );
    assert_eq!(gpt.alternate_lba(), n - 1);
    std::fs::write(&path, &b).unwrap();
    write(&gpt, &path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the primary is as sgdisk wrote it"
    );
    assert_clean(&path);

    // A backup whose header is damaged too is refused.
    let mut b2 = b.clone();
    b2[(n as usize - 1) * 512 + 40] ^= 1;
    assert!(matches!(
        Gpt::read_backup(&mut Cursor::new(&b2), 512, n),
        Err(GptError::HeaderCrc { .. })
    ));
    // A disk that grew: no backup at the new end.
    let mut b3 = good.clone();
    b3.resize(b3.len() + (1 << 20), 0);
    assert!(matches!(
        Gpt::read_backup(&mut Cursor::new(&b3), 512, n + 2048),
        Err(GptError::NoSignature { .. })
    ));
}

#[test]
fn rejects_corrupt_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let good = std::fs::read(&path).unwrap();
    let n = sectors(&path);
    let parse = |b: &[u8]| Gpt::read(&mut Cursor::new(b), 512, n);
    assert!(parse(&good).is_ok());

    let mut b = good.clone();
    b[512 + 40] ^= 1; // first usable LBA, covered by the header CRC
    assert!(matches!(parse(&b), Err(GptError::HeaderCrc { lba: 1, .. })));

    let mut b = good.clone();
    b[1024 + 2 * 128 + 60] ^= 1; // a name byte of entry 2
    assert!(matches!(
        parse(&b),
        Err(GptError::EntriesCrc { lba: 2, .. })
    ));

    let mut b = good.clone();
    b[512] = b'X';
    assert!(matches!(parse(&b), Err(GptError::NoSignature { lba: 1 })));

    // A header with a correct CRC but nonsense fields is refused too.
    let mut b = good.clone();
    b[512 + 84..512 + 88].copy_from_slice(&100u32.to_le_bytes());
    let crc = {
        let mut h = b[512..512 + 92].to_vec();
        h[16..20].fill(0);
        crc32(&h)
    };
    b[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(e.to_string().contains("entry size is 100"), "{e}");

    // Truncated disks are I/O errors, not panics.
    assert!(matches!(
        Gpt::read(&mut Cursor::new(&good[..700]), 512, n),
        Err(GptError::Io { .. })
    ));
    // The table claims a larger disk than it is on.
    assert!(matches!(
        Gpt::read(&mut Cursor::new(&good), 512, n - 100),
        Err(GptError::BadHeader {
            field: "alternate LBA",
            ..
        })
    ));
}

#[test]
fn never_panics_on_mangled_headers_and_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let good = std::fs::read(&path).unwrap();
    let n = sectors(&path);
    // xorshift: deterministic, no dependency
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    // Only the primary header and entries are read; the rest of the disk
    // need not be in memory.
    let b = good[..34 * 512].to_vec();
    for _ in 0..3000 {
        let mut m = b.clone();
        for _ in 0..1 + next() % 4 {
            let at = 512 + (next() % (33 * 512)) as usize;
            m[at] = next() as u8;
        }
        // Re-seal the header CRC half of the time so field checks run.
        if next() % 2 == 0 {
            let mut h = m[512..512 + 92].to_vec();
            h[16..20].fill(0);
            let c = crc32(&h);
            m[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
        }
        let _ = Gpt::read(&mut Cursor::new(&m), 512, n);
    }
}

#[test]
fn guid_text_and_crc() {
    assert_eq!(
        types::LINUX_FILESYSTEM.to_string(),
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    );
    let g = Guid::random_v4([0xFF; 16]).to_string();
    assert_eq!(&g[14..15], "4");
    assert!(matches!(&g[19..20], "8" | "9" | "A" | "B"), "{g}");
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn guid_text_and_disk_order() {
    let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
    assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(
        g.0,
        [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B
        ]
    );
    assert_eq!(Guid::parse_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), g);
    assert_eq!(Guid::from_text_bytes(g.text_bytes()), g);
    assert_eq!(g.text_bytes()[0], 0xC1);
    assert!("C12A7328-F81F-11D2-BA4B".parse::<Guid>().is_err());
    assert!("X12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        .parse::<Guid>()
        .is_err());
}

/// A table made from scratch passes `sgdisk -v`, reads back as written, and
/// refuses what does not fit.
#[test]
fn new_tables_are_clean_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.img");
    let sectors = 64 * MIB / 512;
    let esp = Entry {
        type_guid: Guid::parse_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        guid: Guid::random_v4([7; 16]),
        first_lba: 2048,
        last_lba: 2048 + 2 * 2048 - 1,
        attributes: 0,
        name: "ESP".into(),
    };
    let root = Entry {
        name: "root_a".into(),
        first_lba: 6144,
        last_lba: 6144 + 2048 * 10 - 1,
        guid: Guid::random_v4([9; 16]),
        ..esp.clone()
    };
    let disk_guid = Guid::random_v4([1; 16]);
    let gpt = Gpt::new(512, sectors, disk_guid, &[esp.clone(), root.clone()]).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all(&protective_mbr(sectors)).unwrap();
    gpt.write(&mut f, |_| Ok(())).unwrap();
    assert_clean(&path);
    let back = Gpt::read(&mut f, 512, sectors).unwrap();
    assert_eq!(back.disk_guid(), disk_guid);
    assert_eq!(back.find("root_a").unwrap().1, root);
    let p = sgdisk(&["-p"], &path);
    assert!(p.contains(&disk_guid.to_string()), "{p}");

    let overlap = Entry {
        name: "x".into(),
        first_lba: 3000,
        ..root.clone()
    };
    assert!(Gpt::new(512, sectors, disk_guid, &[esp.clone(), overlap]).is_err());
    let outside = Entry {
        name: "y".into(),
        last_lba: sectors,
        ..root.clone()
    };
    assert!(Gpt::new(512, sectors, disk_guid, &[outside]).is_err());
    assert!(Gpt::new(512, 40, disk_guid, &[]).is_err());
    assert!(Gpt::new(520, sectors, disk_guid, &[]).is_err());
}

#[test]
fn personalize_gives_new_guids_and_keeps_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let path = disk(tmp.path());
    let mut gpt = read(&path).unwrap();
    let before: Vec<(usize, Entry)> = gpt.partitions().collect();
    let old_disk = gpt.disk_guid();
    let mut n = 0u8;
    gpt.personalize(|| {
        n += 1;
        Guid::random_v4([n; 16])
    })
    .unwrap();
    write(&gpt, &path);
    assert_clean(&path);
    let again = read(&path).unwrap();
    assert_eq!(again.disk_guid(), Guid::random_v4([1; 16]));
    assert_ne!(again.disk_guid(), old_disk);
    let after: Vec<(usize, Entry)> = again.partitions().collect();
    assert_eq!(after.len(), before.len());
    for (k, ((i, b), (j, a))) in before.iter().zip(&after).enumerate() {
        assert_eq!(i, j);
        assert_eq!(a.guid, Guid::random_v4([k as u8 + 2; 16]), "{}", a.name);
        assert_eq!(
            Entry {
                guid: b.guid,
                ..a.clone()
            },
            *b,
            "only the GUID changes"
        );
    }
    // sgdisk sees the new identity.
    let p = sgdisk(&["-i", "2"], &path);
    assert!(
        p.contains(&format!(
            "Partition unique GUID: {}",
            Guid::random_v4([3; 16])
        )),
        "{p}"
    );
    // The backup holds the same table.
    let backup = Gpt::read_backup(&mut File::open(&path).unwrap(), 512, sectors(&path)).unwrap();
    assert_eq!(backup.disk_guid(), again.disk_guid());
    assert!(gpt.personalize(|| Guid::NIL).is_err());
}

#[test]
fn derived_and_random_guids_are_told_apart() {
    let d = Guid::derived([0xFF; 16]);
    assert_eq!(d.version(), 8);
    assert!(d.is_derived());
    assert_eq!(d.to_string(), "FFFFFFFF-FFFF-8FFF-BFFF-FFFFFFFFFFFF");
    let r = Guid::random_v4([0xFF; 16]);
    assert_eq!(r.version(), 4);
    assert!(!r.is_derived());
    assert_eq!(r.to_string(), "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF");
}

//! Against the reference tools: filesystems made by `mkfs.fat`, files put
//! there by `mcopy`, checked with `fsck.fat -n` and `mdir`.

use std::fs::{self, File, OpenOptions};
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (apt-get install dosfstools mtools)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?}:\n{text}");
    text
}

/// A FAT32 filesystem of `size` bytes with `sector`-byte sectors made by
/// mkfs.fat, with the GRUB environment blocks and a long-named file.
fn mkfs(dir: &Path, size: u64, sector: u32) -> PathBuf {
    let img = dir.join(format!("fat-{sector}.img"));
    File::create(&img).unwrap().set_len(size).unwrap();
    let s = sector.to_string();
    run(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-S",
            &s,
            "-i",
            "1234ABCD",
            img.to_str().unwrap(),
        ],
    );
    let mut env = b"# GRUB Environment Block\ndefault_slot=a\n".to_vec();
    env.resize(1024, b'#');
    let envf = dir.join("grubenv");
    fs::write(&envf, &env).unwrap();
    let big = dir.join("A Long Name.txt");
    fs::write(&big, vec![7u8; 70_000]).unwrap();
    let i = img.to_str().unwrap();
    for (src, dst) in [
        (big.to_str().unwrap(), "::/A Long Name.txt"),
        (envf.to_str().unwrap(), "::/grubenv"),
        (envf.to_str().unwrap(), "::/grubenv.bak"),
    ] {
        run("mcopy", &["-i", i, src, dst]);
    }
    run("mmd", &["-i", i, "::/EFI"]);
    img
}

#[test]
fn reads_what_mkfs_and_mcopy_wrote_and_sets_the_serial_fsck_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    for (size, sector) in [(64 * MIB, 512), (300 * MIB, 4096)] {
        let img = mkfs(tmp.path(), size, sector);
        // Inside a disk, 1 MiB in.
        let disk = tmp.path().join("disk.img");
        let fsbytes = fs::read(&img).unwrap();
        let d = File::create(&disk).unwrap();
        d.write_all_at(&[0x5A; 4096], 0).unwrap();
        d.write_all_at(&fsbytes, MIB).unwrap();
        drop(d);
        let mut f = File::open(&disk).unwrap();
        let fat = Fat32::read(&mut f, MIB, size).unwrap();
        assert_eq!(fat.volume_id(), 0x1234_ABCD);
        assert_eq!(volume_id_text(fat.volume_id()), "1234-ABCD");
        let env = fat
            .read_root_file(&mut f, "grubenv", 1024)
            .unwrap()
            .unwrap();
        assert!(env.starts_with(b"# GRUB Environment Block\n"));
        assert_eq!(env.len(), 1024);
        let bak = fat.read_root_file(&mut f, "GRUBENV.BAK", 1024).unwrap();
        assert_eq!(bak.as_deref(), Some(&env[..]));
        assert!(fat
            .read_root_file(&mut f, "missing", 1024)
            .unwrap()
            .is_none());
        assert!(
            fat.read_root_file(&mut f, "EFI", 1024).unwrap().is_none(),
            "a directory"
        );
        // The long name's short alias, over several clusters.
        let long = fat.read_root_file(&mut f, "ALONGN~1.TXT", 100_000).unwrap();
        assert_eq!(long, Some(vec![7u8; 70_000]));
        assert!(matches!(
            fat.read_root_file(&mut f, "ALONGN~1.TXT", 1024),
            Err(FatError::TooLarge { size: 70_000, .. })
        ));

        let mut w = OpenOptions::new().write(true).open(&disk).unwrap();
        let writes = fat.volume_id_writes(0xCAFE_F00D);
        assert_eq!(writes.len(), 2, "boot sector and its backup");
        for (at, b) in writes {
            w.write_all_at(&b, at).unwrap();
        }
        w.flush().unwrap();
        let mut f = File::open(&disk).unwrap();
        assert_eq!(
            Fat32::read(&mut f, MIB, size).unwrap().volume_id(),
            0xCAFE_F00D
        );
        let part = tmp.path().join("part.img");
        let all = fs::read(&disk).unwrap();
        fs::write(&part, &all[MIB as usize..]).unwrap();
        let fsck = run("fsck.fat", &["-n", part.to_str().unwrap()]);
        assert!(!fsck.contains("differ"), "{fsck}");
        let dir = run("mdir", &["-i", part.to_str().unwrap(), "::/"]);
        assert!(dir.contains("Volume Serial Number is CAFE-F00D"), "{dir}");
    }
}

#[test]
fn refuses_what_is_not_fat32() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat16.img");
    File::create(&img).unwrap().set_len(32 * MIB).unwrap();
    run("mkfs.fat", &["-F", "16", img.to_str().unwrap()]);
    let e = Fat32::read(&mut File::open(&img).unwrap(), 0, 32 * MIB).unwrap_err();
    assert!(matches!(e, FatError::NotFat32(_)), "{e}");
    let e = Fat32::read(&mut Cursor::new(vec![0u8; 4096]), 0, 4096).unwrap_err();
    assert!(e.to_string().contains("55 AA"), "{e}");
    // Too large for the partition it is in.
    let img = mkfs(tmp.path(), 64 * MIB, 512);
    let e = Fat32::read(&mut File::open(&img).unwrap(), 0, 32 * MIB).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}

#[test]
fn never_panics_on_mangled_filesystems() {
    let tmp = tempfile::tempdir().unwrap();
    let img = mkfs(tmp.path(), 40 * MIB, 512);
    let good = fs::read(&img).unwrap();
    // The boot sector, the FAT's first sector and the root directory's
    // first cluster, mangled byte by byte with a few values.
    let fat = Fat32::read(&mut Cursor::new(&good), 0, good.len() as u64).unwrap();
    let fat_at = (fat.reserved_sectors * fat.bytes_per_sector) as usize;
    let root_at = (fat.cluster_at(fat.root_cluster) - fat.offset) as usize;
    let mut spots: Vec<usize> = (0..90).collect();
    spots.extend(fat_at..fat_at + 64);
    spots.extend(root_at..root_at + 160);
    let mut bad = good.clone();
    let len = bad.len() as u64;
    for at in spots {
        for v in [0x00, 0x01, 0x7F, 0xFF] {
            bad[at] = v;
            let mut c = Cursor::new(&bad);
            if let Ok(f) = Fat32::read(&mut c, 0, len) {
                let _ = f.read_root_file(&mut c, "grubenv", 1024);
                let _ = f.read_root_file(&mut c, "ALONGN~1.TXT", 1 << 20);
            }
        }
        bad[at] = good[at];
    }
    assert!(short_name("grubenv.bak").is_some());
    assert!(short_name("much-too-long.name").is_none());
}

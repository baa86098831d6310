//! ISO writer throughput against xorriso on the same files.
//!
//! Run with `cargo test --release --bench iso -- --nocapture` (plain tests
//! that time things, as `benches/squashfs.rs`). The input is shaped like a
//! live ISO: an incompressible `rootfs.squashfs` (`ISO_BENCH_MB`, default
//! 256 MiB), a kernel, an initrd, the install head and a few small files,
//! plus an 8 MiB FAT ESP for the UEFI El Torito entry and the GPT. Our
//! writer gets the large files as host files, as a build does; xorriso
//! (`-as mkisofs`, Rock Ridge, Joliet, `-e` + `-isohybrid-gpt-basdat`)
//! reads the same files from a directory. Both write to the same
//! filesystem; the best of interleaved runs counts.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use build_image::iso::{self, Spec};
use build_image::tree::edit::Editor;
use build_image::tree::{ContentStore, FsTree};
use hadris_fs::Content;

const MIB: usize = 1 << 20;
const LABEL: &str = "BENCH_AMD64_1_0_0";
const MTIME: i64 = 1_700_000_000;

fn runs() -> usize {
    std::env::var("ISO_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}

/// Incompressible bytes (xorshift), as a squashfs or a kernel is to a
/// writer that copies them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn best(times: &[Duration]) -> Duration {
    *times.iter().min().unwrap()
}

#[test]
fn iso_writer_against_xorriso() {
    assert!(
        Command::new("xorriso").arg("-version").output().is_ok(),
        "xorriso missing: apt-get install xorriso"
    );
    let rootfs_mb: usize = std::env::var("ISO_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");

    // The live ISO's files.
    let vmlinuz = noise(8 * MIB, 1);
    let initrd = noise(24 * MIB, 2);
    let grub_cfg = b"set timeout=5\nmenuentry live { linux /boot/vmlinuz }\n".to_vec();
    let manifest = br#"{"format": "build-image-install/1"}"#.to_vec();
    write(&tree, "rootfs.squashfs", &noise(rootfs_mb * MIB, 3));
    write(&tree, "install/head.bin", &noise(16 * MIB, 4));
    write(&tree, "boot/vmlinuz", &vmlinuz);
    write(&tree, "boot/initrd", &initrd);
    write(&tree, "boot/grub/grub.cfg", &grub_cfg);
    write(&tree, "install/install.json", &manifest);
    let mut store = ContentStore::new_in(work.path()).unwrap();
    let mut esp_tree = FsTree::new();
    let mut ed = Editor {
        tree: &mut esp_tree,
        store: &mut store,
        mtime: MTIME,
    };
    ed.write("EFI/BOOT/BOOTX64.EFI", &noise(2 * MIB, 5), 0o644)
        .unwrap();
    ed.write("EFI/BOOT/grub.cfg", &grub_cfg, 0o644).unwrap();
    let esp = iso::esp_image(&esp_tree, &store, MTIME, 0x1234_5678).unwrap();
    write(&tree, "boot/efi.img", &esp);

    let ours = work.path().join("ours.iso");
    let theirs = work.path().join("xorriso.iso");
    let host = |rel: &str| hadris_fs::host::file(tree.join(rel)).unwrap();
    let (mut t_ours, mut t_theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs() {
        let _ = fs::remove_file(&ours);
        let start = Instant::now();
        let spec = Spec {
            volume_id: LABEL.into(),
            application_id: "build-image bench".into(),
            mtime: MTIME,
            files: vec![
                (
                    "boot/grub/grub.cfg".into(),
                    Content::bytes(grub_cfg.clone()),
                ),
                ("boot/vmlinuz".into(), Content::bytes(vmlinuz.clone())),
                ("boot/initrd".into(), Content::bytes(initrd.clone())),
                ("rootfs.squashfs".into(), host("rootfs.squashfs")),
                ("install/head.bin".into(), host("install/head.bin")),
                (
                    "install/install.json".into(),
                    Content::bytes(manifest.clone()),
                ),
            ],
            bios: None,
            esp: esp.clone(),
        };
        iso::write(&spec, &File::create(&ours).unwrap()).unwrap();
        t_ours.push(start.elapsed());

        let _ = fs::remove_file(&theirs);
        let start = Instant::now();
        let o = Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", LABEL])
            .args(["-A", "build-image bench"])
            .args([
                "-e",
                "boot/efi.img",
                "-no-emul-boot",
                "-isohybrid-gpt-basdat",
            ])
            .arg("-o")
            .arg(&theirs)
            .arg(&tree)
            .output()
            .unwrap();
        t_theirs.push(start.elapsed());
        assert!(
            o.status.success(),
            "xorriso: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Both are bootable UEFI ISOs, not just files of the right size.
    for iso_path in [&ours, &theirs] {
        let o = Command::new("xorriso")
            .arg("-indev")
            .arg(iso_path)
            .args(["-report_el_torito", "plain"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(report.contains("UEFI"), "{}: {report}", iso_path.display());
    }
    let size = |p: &Path| fs::metadata(p).unwrap().len() as f64 / MIB as f64;
    let (a, b) = (best(&t_ours), best(&t_theirs));
    println!(
        "\nlive ISO, {rootfs_mb} MiB rootfs, best of {} runs:",
        runs()
    );
    println!("| writer | time | size |\n|---|---|---|");
    println!(
        "| build-image (hadris-iso) | {:.3} s | {:.1} MiB |",
        a.as_secs_f64(),
        size(&ours)
    );
    println!(
        "| xorriso -as mkisofs | {:.3} s | {:.1} MiB |",
        b.as_secs_f64(),
        size(&theirs)
    );
    println!(
        "xorriso / build-image: {:.2}x",
        b.as_secs_f64() / a.as_secs_f64()
    );
}

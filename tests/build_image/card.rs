//! The Raspberry Pi card (`--format rpi`, docs/raspberry-pi.md), checked
//! with the reference tools: a real arm64 build from the Debian archive
//! (raspi-firmware, u-boot-rpi and the kernel's device trees from the
//! signed archive), its MBR read by `sfdisk --json`, its boot partition
//! by `fsck.vfat -n` and mtools, its initramfs by `cpio`. Bad input is
//! refused before anything is fetched.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::abdisk::{debugfs_cat, ext4_copy, mtools, read_fat_file};
use crate::common::fixtures::fixtures_dir;
use crate::common::images;
use crate::common::qemu::{tail, Vm};
use crate::common::registry::Registry;
use crate::common::upgrade as up;
use crate::common::{assert_bmap_copy_equals, require_tool, sparse_copy, TestEnv};
use boot_contract::grubenv::GrubEnv;

/// The card's partitions as `sfdisk --json` reads them.
fn sfdisk(card: &Path) -> serde_json::Value {
    require_tool("sfdisk", "fdisk");
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(card)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Bytes `start..start+len` of `file` into a new file.
fn cut(file: &Path, start: u64, len: u64, to: &Path) {
    let mut f = fs::File::open(file).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = fs::File::create(to).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

/// The boot partition (`len` bytes at `start`) of `card`, checked clean by
/// `fsck.vfat -n`, and its FAT serial as `minfo` prints it.
fn boot_partition_serial(card: &Path, start: u64, len: u64, to: &Path) -> String {
    cut(card, start, len, to);
    let fsck = Command::new("fsck.vfat")
        .arg("-n")
        .arg(to)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.vfat -n of the boot partition of {}: {}{}",
        card.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let minfo = String::from_utf8_lossy(&mtools("minfo", to, &["::"])).into_owned();
    assert!(
        minfo.contains("FAT32") || minfo.contains("fat32"),
        "{minfo}"
    );
    minfo
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial number:"))
        .unwrap_or_else(|| panic!("no serial number in minfo's output:\n{minfo}"))
        .trim()
        .to_string()
}

/// Writes the upgrade layout `layout` to `/upgrade` of the ext4 `persist`
/// (`len` bytes at byte `at` of `card`) and the upgrade Job's command `job`
/// (one argument a line) where the k3s stand-in runs it from
/// (`/var/lib/rancher/k3s/server/standin-upgrade-job` on the device), with
/// debugfs; checks that both are there.
fn write_to_persist(card: &Path, at: u64, len: u64, work: &Path, layout: &Path, job: &str) {
    require_tool("debugfs", "e2fsprogs");
    // On a copy of the partition, its journal replayed (the first boot
    // was cut short), so the kernel's replay at the next mount cannot undo
    // what debugfs adds.
    let part = work.join("persist.ext4");
    ext4_copy(card, at, len, &part);
    let job_file = work.join("upgrade-job");
    fs::write(&job_file, format!("{job}\n")).unwrap();
    let job_dest = "state/var/lib/rancher/k3s/server/standin-upgrade-job";
    // The job's directory may not be on persist yet (the first boot is
    // stopped at its boot line, k3s perhaps not started): made here, each
    // level; debugfs says so and goes on where one exists.
    let mut script = String::new();
    let mut dir = String::new();
    for part in job_dest
        .split('/')
        .collect::<Vec<_>>()
        .split_last()
        .unwrap()
        .1
    {
        dir = if dir.is_empty() {
            part.to_string()
        } else {
            format!("{dir}/{part}")
        };
        script += &format!("mkdir {dir}\n");
    }
    script += "mkdir upgrade\nmkdir upgrade/blobs\nmkdir upgrade/blobs/sha256\n";
    for name in ["oci-layout", "index.json"] {
        script += &format!("write {} upgrade/{name}\n", layout.join(name).display());
    }
    let mut blobs = 0;
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        script += &format!(
            "write {} upgrade/blobs/sha256/{}\n",
            e.path().display(),
            e.file_name().to_str().unwrap()
        );
        blobs += 1;
    }
    script += &format!("write {} {job_dest}\n", job_file.display());
    let script_file = work.join("debugfs.cmds");
    fs::write(&script_file, script).unwrap();
    let o = Command::new("debugfs")
        .args(["-w", "-f"])
        .arg(&script_file)
        .arg(&part)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "debugfs -w: {text}");
    // debugfs goes on past a failed command: read back what it wrote.
    assert_eq!(
        debugfs_cat(&part, job_dest).trim_end(),
        job,
        "{job_dest} on persist after debugfs: {text}"
    );
    let o = Command::new("debugfs")
        .args(["-R", "ls -p upgrade/blobs/sha256"])
        .arg(&part)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.split('/').nth(5).is_some_and(|n| n.len() == 64))
        .count();
    assert_eq!(listed, blobs, "blobs on persist after debugfs: {text}");
    // Back onto the card: every MiB that differs.
    use std::os::unix::fs::FileExt;
    let (from, to) = (
        fs::File::open(&part).unwrap(),
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(card)
            .unwrap(),
    );
    let (mut new, mut old) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < len {
        let n = new.len().min((len - off) as usize);
        from.read_exact_at(&mut new[..n], off).unwrap();
        to.read_exact_at(&mut old[..n], at + off).unwrap();
        if new[..n] != old[..n] {
            to.write_all_at(&new[..n], at + off).unwrap();
        }
        off += n as u64;
    }
    to.sync_all().unwrap();
    fs::remove_file(&part).unwrap();
}

fn flavor_without_rpi(dir: &Path) -> PathBuf {
    let text =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("flavors/debian-13.yaml"))
            .unwrap();
    let cut = text
        .find("\n# Raspberry Pi cards")
        .expect("the rpi section");
    fs::create_dir_all(dir.join("keys")).unwrap();
    for e in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("flavors/keys")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.join("keys").join(e.file_name())).unwrap();
    }
    let p = dir.join("no-pi.yaml");
    fs::write(&p, &text[..cut]).unwrap();
    p
}

#[test]
fn rpi_is_refused_for_amd64_and_for_a_flavor_without_pi_firmware() {
    let env = TestEnv::new();
    let out = env.tmp.path().join("out-refused");
    let run = |args: &[&str]| {
        let mut all = vec!["--format", "rpi", "--output", out.to_str().unwrap()];
        all.extend(args);
        let o = env.run_raw(&all);
        assert!(!o.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&["--arch", "amd64"]);
    assert!(
        e.contains("--format rpi") && e.contains("arm64") && e.contains("amd64"),
        "{e}"
    );
    let flavor = flavor_without_rpi(env.tmp.path());
    let e = run(&["--arch", "arm64", "--flavor", flavor.to_str().unwrap()]);
    assert!(
        e.contains("no-pi.yaml") && e.contains("raspi-firmware") && e.contains("non-free-firmware"),
        "{e}"
    );
    let rpi_config = env.tmp.path().join("extra.txt");
    fs::write(&rpi_config, "gpu_mem=16\n").unwrap();
    let o = env.run_raw(&[
        "--arch",
        "arm64",
        "--format",
        "disk",
        "--rpi-config",
        rpi_config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("add rpi to --format"),
        "{e}"
    );
    assert!(!out.exists(), "a refused build left {}", out.display());
}

/// The default flavor's arm64 card: MBR with four primaries, a FAT32 boot
/// partition that fsck passes holding the firmware, device trees, U-Boot,
/// GRUB and slot a, config.txt with every board's section and the
/// `--rpi-config` lines, root_a holding the root filesystem, and an
/// initramfs that loads the Pi SD drivers. Then the card, copied to a
/// larger (4 GiB) one, boots under QEMU's Pi 3 B: U-Boot and the device
/// tree from its boot partition (what the firmware would start), U-Boot's
/// EFI → shim → GRUB → slot a, os-init finding the card by its MBR
/// signature, growing persist to the card's end, and os-agent's boot check.
/// Then a trial of slot b whose k3s fails: os-agent rolls it back, and
/// GRUB has taken the trial back on the card (slot a stays the default).
#[test]
fn debian_arm64_card_has_the_pi_boot_files_and_the_ab_layout() {
    require_tool("fsck.vfat", "dosfstools");
    require_tool("mdir", "mtools");
    require_tool("cpio", "cpio");
    // The builds (and the components they take) one at a time with the
    // other tests of this binary; the boots beside them.
    let one = crate::BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let comps = format!("oci-layout:{}", images::components().display());
    let reg = Registry::start();
    let k3s = images::k3s_standin_layout("arm64", env.tmp.path());
    reg.push(&k3s, images::K3S_TAG, "rancher/k3s");
    let k3s_image = reg.image("rancher/k3s", images::K3S_TAG);
    let node_config = env.tmp.path().join("node.yaml");
    fs::write(&node_config, images::node_config()).unwrap();
    let out = env.tmp.path().join("dist");
    let rpi_config = env.tmp.path().join("extra.txt");
    fs::write(&rpi_config, "# site\ndtparam=audio=on\n").unwrap();
    let cache = fixtures_dir().join("build-cache");
    // The card at 1.0.0-rpi, and an upgrade of the same image to 2.0.0-rpi
    // for the trial below.
    let build = |version: &str, format: &str, out: &Path| {
        let start = std::time::Instant::now();
        let mut args = vec![
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
            "--arch",
            "arm64",
            "--base",
            "archive",
            "--k3s-image",
            &k3s_image,
            "--config",
            node_config.to_str().unwrap(),
            "--components",
            &comps,
            "--image-version",
            version,
            "--format",
            format,
            // QEMU's Pi power management resets the machine the moment a
            // watchdog is started (it does not emulate the timer), so
            // os-init's trial watchdog and systemd's RuntimeWatchdogSec=
            // would reset the emulated Pi; real Pis count down. The k3s
            // stand-in fails in slot b (the trial below).
            "--cmdline",
            "bi.watchdog=off systemd.watchdog_sec=off standin.fail_slot=b",
            "--output",
            out.to_str().unwrap(),
        ];
        if format == "rpi" {
            args.extend(["--rpi-config", rpi_config.to_str().unwrap()]);
        }
        let o = env.run_raw(&args);
        assert!(
            o.status.success(),
            "build of {version} ({format}) failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("arm64 {format} build: {:.0?}", start.elapsed());
        o
    };
    let o = build("1.0.0-rpi", "rpi", &out);
    let out_v2 = env.tmp.path().join("dist-v2");
    build("2.0.0-rpi", "upgrade", &out_v2);
    drop(one);
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["formats"], serde_json::json!(["rpi"]));
    let stem = images::stem(images::DEFAULT_FLAVOR, "arm64");
    let card = out.join(format!("{stem}-rpi.img"));
    assert!(card.is_file(), "{}", card.display());
    assert!(
        !out.join(format!("{stem}.raw")).exists(),
        "--format rpi wrote a disk image"
    );

    // The block map: bmaptool copies the card to a blank file that equals
    // it (the holes read as zeros on both sides).
    let bmap = out.join(format!("{stem}-rpi.img.bmap"));
    assert!(bmap.is_file(), "no {}", bmap.display());
    assert_bmap_copy_equals(&card, &env.tmp.path().join("bmap-copy.img"));

    // The partition table.
    let t = sfdisk(&card);
    let t = &t["partitiontable"];
    assert_eq!(t["label"], "dos", "{t}");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4, "{t}");
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["c", "83", "83", "83"], "{t}");
    assert_eq!(parts[0]["bootable"], true, "{t}");
    assert!(parts[1..].iter().all(|p| p["bootable"].is_null()), "{t}");
    let sector = |p: &serde_json::Value, k: &str| p[k].as_u64().unwrap() * 512;
    assert_eq!(sector(&parts[0], "start"), 1 << 20);
    let disk_id = t["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    assert_eq!(disk_id.len(), 8, "{t}");
    // A build's disk signature: the top four bits 8 (boot_contract::mbr).
    assert!(disk_id.starts_with('8'), "{t}");
    let card_len = fs::metadata(&card).unwrap().len();
    let last = &parts[3];
    assert_eq!(sector(last, "start") + sector(last, "size"), card_len);
    assert_eq!(sector(last, "size"), 64 << 20, "persist is written small");

    // root_a holds the root filesystem; root_b is empty.
    let squashfs = out.join(format!("{stem}.squashfs"));
    let sq = fs::read(&squashfs).unwrap();
    let mut head = vec![0u8; sq.len()];
    let mut f = fs::File::open(&card).unwrap();
    f.seek(SeekFrom::Start(sector(&parts[1], "start"))).unwrap();
    f.read_exact(&mut head).unwrap();
    assert!(head == sq, "root_a does not hold {}", squashfs.display());
    assert_eq!(parts[1]["size"], parts[2]["size"]);
    // persist: unformatted, marked for os-init.
    let mut marker = [0u8; 32];
    f.seek(SeekFrom::Start(sector(&parts[3], "start"))).unwrap();
    f.read_exact(&mut marker).unwrap();
    assert_eq!(&marker, boot_contract::persist::FRESH_MARKER);

    // The boot partition: a clean FAT32.
    let boot = env.tmp.path().join("boot.vfat");
    let image_serial = boot_partition_serial(
        &card,
        sector(&parts[0], "start"),
        sector(&parts[0], "size"),
        &boot,
    );
    let listing = String::from_utf8_lossy(&mtools("mdir", &boot, &["-b", "-/", "::"])).into_owned();
    for want in [
        // Firmware of the Pi 3 (bootcode.bin, start.elf) and the Pi 4.
        "::/bootcode.bin",
        "::/start.elf",
        "::/fixup.dat",
        "::/start4.elf",
        "::/fixup4.dat",
        // Device trees under their mainline names.
        "::/bcm2837-rpi-3-b.dtb",
        "::/bcm2837-rpi-3-b-plus.dtb",
        "::/bcm2837-rpi-zero-2-w.dtb",
        "::/bcm2711-rpi-4-b.dtb",
        "::/bcm2711-rpi-400.dtb",
        "::/bcm2711-rpi-cm4-io.dtb",
        "::/bcm2712-rpi-5-b.dtb",
        "::/u-boot-rpi_arm64.bin",
        "::/config.txt",
        // The same boot chain and A/B state as the disk image.
        "::/EFI/BOOT/BOOTAA64.EFI",
        "::/EFI/debian/grub.cfg",
        "::/grubenv",
        "::/grubenv.bak",
        "::/a/vmlinuz",
        "::/a/initrd",
    ] {
        assert!(
            listing.lines().any(|l| l.trim() == want),
            "{want} missing from the boot partition:\n{listing}"
        );
    }
    let config = String::from_utf8(mtools("mtype", &boot, &["::config.txt"])).unwrap();
    let pos = |s: &str| {
        config
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} not in config.txt:\n{config}"))
    };
    for line in ["arm_64bit=1", "enable_uart=1", "upstream_kernel=1"] {
        assert!(pos(line) < pos("[pi3]"), "{config}");
    }
    for s in ["[pi3]", "[pi4]", "[pi5]", "[pi02]"] {
        assert!(
            config[pos(s)..].starts_with(&format!("{s}\nkernel=u-boot-rpi_arm64.bin\n")),
            "{config}"
        );
    }
    assert!(
        config
            .trim_end()
            .ends_with("[all]\n# site\ndtparam=audio=on"),
        "{config}"
    );
    let uboot = mtools("mtype", &boot, &["::u-boot-rpi_arm64.bin"]);
    assert!(uboot.len() > 100_000, "U-Boot is {} bytes", uboot.len());

    // The initramfs loads the Pi SD host drivers.
    let initrd = mtools("mtype", &boot, &["::a/initrd"]);
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&initrd[..])
        .read_to_end(&mut cpio)
        .unwrap();
    let mut child = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
    }
    let files = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    for m in ["/mmc/host/bcm2835.ko", "/mmc/host/sdhci-iproc.ko"] {
        assert!(files.lines().any(|l| l.ends_with(m)), "{m} not in\n{files}");
    }

    // The card's partitions and what boots which board, in --json.
    let rpi = &result["rpi"];
    assert_eq!(rpi["diskId"], disk_id.as_str(), "{rpi}");
    let names: Vec<&str> = rpi["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boot", "root_a", "root_b", "persist"], "{rpi}");
    for (p, s) in rpi["partitions"].as_array().unwrap().iter().zip(parts) {
        assert_eq!(p["start"].as_u64(), Some(sector(s, "start")), "{rpi}");
        assert_eq!(p["size"].as_u64(), Some(sector(s, "size")), "{rpi}");
    }
    assert_eq!(rpi["partitions"][0]["type"], "0x0c");
    assert_eq!(rpi["partitions"][0]["bootable"], true);
    let boards = rpi["boards"].as_array().expect("rpi.boards in --json");
    let board = |n: &str| boards.iter().find(|b| b["board"] == n).unwrap();
    for n in ["pi3", "pi4", "pi02"] {
        let b = board(n);
        assert_eq!(b["boot"], "u-boot", "{b}");
        assert_eq!(b["sdDriver"], true, "{b}");
        assert!(b["problem"].is_null(), "{b}");
    }
    // Debian 13's kernel has the Pi 5's device tree but not its SD
    // controller's driver (CONFIG_MMC_SDHCI_BRCMSTB): the build says so.
    let pi5 = board("pi5");
    assert_eq!(
        pi5["deviceTrees"],
        serde_json::json!(["bcm2712-rpi-5-b.dtb"])
    );
    assert_eq!(pi5["sdDriver"], false, "{pi5}");
    assert!(
        pi5["problem"]
            .as_str()
            .is_some_and(|p| p.contains("sdhci_brcmstb")),
        "{pi5}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("pi5") && stderr.contains("cannot read the card"),
        "{stderr}"
    );

    // Boot it: U-Boot and the Pi 3 B's device tree as the firmware would
    // load them from the boot partition; the card copied to a 4 GiB one.
    let work = env.tmp.path().join("boot");
    fs::create_dir_all(&work).unwrap();
    let (uboot_file, dtb) = (work.join("u-boot.bin"), work.join("rpi3b.dtb"));
    fs::write(&uboot_file, &uboot).unwrap();
    fs::write(&dtb, mtools("mtype", &boot, &["::bcm2837-rpi-3-b.dtb"])).unwrap();
    let sd = work.join("sd.img");
    sparse_copy(&card, &sd);
    fs::OpenOptions::new()
        .write(true)
        .open(&sd)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let uart1 = work.join("uart1.log");
    let start = std::time::Instant::now();
    let c = Vm::raspi3b(&uboot_file, &dtb, &uart1)
        .sd_card(&sd)
        .run_until("os-agent: boot ", std::time::Duration::from_secs(1800));
    eprintln!("raspi3b boot: {:.0?}", start.elapsed());
    let uboot_log = fs::read_to_string(&uart1).unwrap_or_default();
    let context = || {
        format!(
            "{}\n[U-Boot, second UART]\n{}",
            tail(&c, 80),
            tail(&uboot_log, 30)
        )
    };
    let id = format!("{disk_id}-01");
    let boot_at = sector(&parts[0], "start");
    for want in [
        &format!("bi.esp={id}") as &str,
        &format!("os-init: boot disk /dev/mmcblk0: it holds the ESP partition {id}"),
        "os-init: root root_a is /dev/mmcblk0p2",
        "os-init: grew persist /dev/mmcblk0p4 from 64 MiB to",
        "os-init: /dev/mmcblk0p4 is the image's unformatted persist: wiping and formatting it",
        "os-agent: boot ok slot=a version=1.0.0-rpi",
        "os-init: gave /dev/mmcblk0 its own identity: disk signature ",
    ] {
        assert!(
            c.contains(want),
            "{want:?} not on the console:\n{}",
            context()
        );
    }
    // The card's own identity: a random disk signature (top four bits 4)
    // and boot partition serial, the FAT still clean.
    let booted = sfdisk(&sd);
    let own_id = booted["partitiontable"]["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    assert!(
        own_id.len() == 8 && own_id.starts_with('4') && own_id != disk_id,
        "the card's disk signature after its first boot: {booted}"
    );
    let own_serial = boot_partition_serial(&sd, boot_at, sector(&parts[0], "size"), &boot);
    assert_ne!(own_serial, image_serial);

    // An upgrade to 2.0.0-rpi armed by os-agent, with the command of the
    // system-upgrade-controller Plan in deploy/ (run by the k3s stand-in,
    // as the controller's Job would), from the upgrade layout on persist:
    // QEMU's Pi has no network Debian's kernel can use (its USB host
    // controller does not enumerate devices under the dwc2 driver), so the
    // layout goes onto the card's persist offline, with debugfs.
    let persist_at = sector(&parts[3], "start");
    let persist_len = sector(&booted["partitiontable"]["partitions"][3], "size");
    assert_eq!(
        persist_at + persist_len,
        4 << 30,
        "persist after the first boot: {booted}"
    );
    let layout = images::output(&out_v2, images::DEFAULT_FLAVOR, "arm64", "upgrade");
    let job = up::plan_command("oci-layout:/run/os/persist/upgrade", "2.0.0-rpi").join("\n");
    write_to_persist(&sd, persist_at, persist_len, &work, &layout, &job);
    let start = std::time::Instant::now();
    let (status, c) = Vm::raspi3b(&uboot_file, &dtb, &uart1)
        .sd_card(&sd)
        .run(std::time::Duration::from_secs(1800));
    eprintln!("raspi3b upgrade boot: {:.0?}", start.elapsed());
    // GRUB names the boot partition by the card's own signature now.
    let own = format!("{own_id}-01");
    for want in [
        &format!("bi.esp={own}") as &str,
        &format!("os-init: boot disk /dev/mmcblk0: it holds the ESP partition {own}"),
        "os-agent: boot ok slot=a version=1.0.0-rpi",
        "k3s stand-in: upgrade job: ",
    ] {
        assert!(
            c.contains(want),
            "{want:?} not on the console:\n{}",
            tail(&c, 80)
        );
    }
    assert!(
        !c.contains("its own identity"),
        "the identity was changed again:\n{}",
        tail(&c, 80)
    );
    let result = c
        .lines()
        .filter_map(|l| l.split_once("k3s stand-in: upgrade job: ").map(|(_, r)| r))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result of the upgrade job:\n{}", tail(&c, 80)));
    assert_eq!(result["result"], "armed", "{result}");
    assert_eq!(result["slot"], "b", "{result}");
    assert_eq!(result["version"], "2.0.0-rpi", "{result}");
    assert!(
        status.is_some(),
        "no reboot after the upgrade:\n{}",
        tail(&c, 40)
    );
    let env_block = GrubEnv::parse(&read_fat_file(&sd, boot_at, "/grubenv")).unwrap();
    assert_eq!(env_block.get("trial_slot"), Some("b"), "{env_block:?}");
    // root_b holds the upgrade's root filesystem.
    let root_v2 = fs::read(images::output(
        &out_v2,
        images::DEFAULT_FLAVOR,
        "arm64",
        "squashfs",
    ))
    .unwrap();
    let mut head = vec![0u8; root_v2.len()];
    let mut f = fs::File::open(&sd).unwrap();
    f.seek(SeekFrom::Start(sector(&parts[2], "start"))).unwrap();
    f.read_exact(&mut head).unwrap();
    assert!(head == root_v2, "root_b does not hold the upgrade's root");

    // The trial of slot b, whose k3s fails: os-agent records the failure
    // and reboots (QEMU exits, -no-reboot); GRUB cleared the trial before
    // booting it, so the card boots slot a next.
    let start = std::time::Instant::now();
    let (status, c) = Vm::raspi3b(&uboot_file, &dtb, &uart1)
        .sd_card(&sd)
        .run(std::time::Duration::from_secs(1800));
    eprintln!("raspi3b trial boot: {:.0?}", start.elapsed());
    for want in [
        "os-init: trial boot: the watchdog is off (bi.watchdog=off)",
        "os-init: root root_b is /dev/mmcblk0p3",
        "os-agent: boot degraded slot=b version=2.0.0-rpi",
        "os-agent: trial of slot b (version 2.0.0-rpi) failed its health check: rebooting into slot a",
    ] {
        assert!(c.contains(want), "{want:?} not on the console:\n{}", tail(&c, 80));
    }
    assert!(status.is_some(), "no reboot:\n{}", tail(&c, 40));
    let env_block = GrubEnv::parse(&read_fat_file(&sd, boot_at, "/grubenv")).unwrap();
    assert_eq!(env_block.get("trial_slot"), Some(""), "{env_block:?}");
    assert_eq!(env_block.get("default_slot"), Some("a"), "{env_block:?}");
}

//! Layer merging through a real registry: whiteouts, opaque directories,
//! type changes, hardlinks, names, xattrs, modes, devices and times, each
//! checked by extracting the SquashFS with unsquashfs and comparing it entry
//! by entry with the reference merge of the test's layers; hostile layers;
//! reproducibility and the SquashFS options.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::squash::{mkfs_time, stat_field};
use common::*;

/// Pushes `layers` (lowest first, gzip) as one image and runs `rootfs`.
fn build(
    layers: &[&LayerBuilder],
    compression: Compression,
    env: &TestEnv,
    extra: &[&str],
) -> (PathBuf, std::process::Output, Vec<Layer>) {
    let reg = Registry::start();
    let built: Vec<Layer> = layers.iter().map(|l| l.build(compression)).collect();
    let (image, _) = push_layers(&reg, "layers/test", built.clone());
    let (out, o) = env.rootfs(&image, "rootfs.sqfs", extra);
    (out, o, built)
}

/// Builds and checks the result against the reference merge.
fn check_merge(layers: &[&LayerBuilder]) -> Tree {
    let env = TestEnv::new();
    let (out, o, _) = build(layers, Compression::Gzip, &env, &[]);
    assert_ok(&o);
    let actual = extract_tree(&out);
    assert_trees_match(&actual, &Tree::from_layers(layers), Compare::default());
    // the listing agrees, entry by entry
    common::squash::assert_listing_matches(&unsquashfs_listing(&out), &actual);
    actual
}

fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), n & 0xffff_ffff)
}

// ---------------------------------------------------------------- harness

/// The layer writer and the reference merge agree with GNU tar and with an
/// independent tar → SquashFS converter (squashfs-tools-ng's tar2sqfs)
/// read back through unsquashfs: the comparer itself is sound.
#[test]
fn harness_layer_writer_round_trips_through_reference_tools() {
    let layer = everything_layer();
    let tar = layer.tar();
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("layer.tar");
    fs::write(&tar_path, &tar).unwrap();

    // GNU tar reads every entry with the right name
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), layer.entries.len(), "{listing}");
    assert!(listing.contains(&long_path(300)), "{listing}");
    assert!(listing.contains("10,1234"), "{listing}");

    // tar crate parse == reference merge
    let from_tar = Tree::from_tar_bytes(&tar);
    let reference = Tree::from_layers(&[&layer]);
    assert_trees_match(&from_tar, &reference, Compare::default());

    // tar2sqfs → unsquashfs extraction == reference merge
    common::require_tool("tar2sqfs", "squashfs-tools-ng");
    let img = dir.path().join("ref.sqfs");
    let st = std::process::Command::new("tar2sqfs")
        .args(["-q", "-s", "-c", "zstd", "-j", "2"])
        .arg(&img)
        .stdin(fs::File::open(&tar_path).unwrap())
        .output()
        .unwrap();
    assert!(st.status.success(), "tar2sqfs: {st:?}");
    assert_trees_match(&extract_tree(&img), &reference, Compare::default());
    common::squash::assert_listing_matches(&unsquashfs_listing(&img), &reference);
    // and the listing check does notice a difference
    let mut wrong = reference.clone();
    wrong.nodes.get_mut(b"bin/su".as_slice()).unwrap().mode = 0o755;
    let caught = std::panic::catch_unwind(|| {
        common::squash::assert_listing_matches(&unsquashfs_listing(&img), &wrong)
    });
    assert!(caught.is_err(), "a wrong mode went unnoticed");
}

// ---------------------------------------------------------------- fixtures

fn long_path(len: usize) -> String {
    // directories of 50 chars, then a file name to reach `len`
    let mut p = String::new();
    while p.len() + 51 < len - 10 {
        p.push_str(&"d".repeat(49));
        p.push_str(&format!("{}/", p.len() % 10));
    }
    let rest = len - p.len();
    p.push_str(&"f".repeat(rest));
    assert_eq!(p.len(), len);
    p
}

/// A vfs_cap_data v2 value: cap_net_raw in permitted, effective flag set.
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// One layer with every kind of entry and attribute.
fn everything_layer() -> LayerBuilder {
    let l150 = long_path(150);
    let l300 = long_path(300);
    let mut b = LayerBuilder::new()
        .dir("./")
        .mode(0o755)
        .dir("bin")
        .file("bin/su", vec![0xcc; 70_000])
        .mode(0o4755)
        .file("bin/wall", "sgid")
        .mode(0o2755)
        .owner(0, 5)
        .file("bin/ping", "capability")
        .mode(0o755)
        .xattr("security.capability", CAP_NET_RAW)
        .dir("tmp")
        .mode(0o1777)
        .dir("srv")
        .mode(0o2775)
        .owner(1000, 1000)
        .xattr("user.comment", "a directory xattr")
        .file("srv/secret", "")
        .mode(0o000)
        .file("srv/user-file", "owned by a user")
        .mode(0o640)
        .owner(1000, 100)
        .xattr("user.mime_type", "text/plain")
        .xattr("user.binary", [0u8, 1, 2, 255])
        .file("srv/nobody", "x")
        .owner(65534, 65534)
        .file("srv/big-uid", "x")
        .owner(3_000_000, 3_000_001)
        .dir("dev")
        .char_dev("dev/null", 1, 3)
        .char_dev("dev/big-minor", 10, 1234)
        .block_dev("dev/sda", 8, 0)
        .block_dev("dev/nvme", 259, 70_000)
        .fifo("dev/initctl")
        .mode(0o600)
        .dir("names")
        .file("names/日本語.txt", "utf-8 name")
        .file("names/émoji-🦀", "crab")
        .file("names/with space and 'quotes'", "spaces")
        .file(format!("names/{}", "n".repeat(255)), "255-byte component")
        .file("names/short-pax", "forced PAX path")
        .pax_path()
        .symlink("names/abs-link", "/etc/os-release")
        .symlink("names/rel-link", "../bin/su")
        .symlink("names/dangling", "does/not/exist")
        .symlink("names/long-target", format!("/{}", long_path(200)))
        .dir("times")
        .mtime(1_234_567_890)
        .file("times/epoch", "e")
        .mtime(0)
        .file("times/old", "o")
        .mtime(1)
        .file("times/y2038", "y")
        .mtime(2_147_483_647)
        .file("times/after-2038", "a")
        .mtime(3_000_000_000);
    b = b
        .file(&l150, "ustar prefix")
        .file(&l300, "PAX path")
        .hardlink("names/hardlink-to-long", &l300);
    b.file(
        "data",
        (0..300_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .hardlink("data-link1", "data")
    .hardlink("bin/data-link2", "data")
}

// ---------------------------------------------------------------- merges

#[test]
fn every_entry_kind_and_attribute_survives() {
    let actual = check_merge(&[&everything_layer()]);
    // spot checks, independent of the comparer
    let su = actual.get("bin/su").unwrap();
    assert_eq!(su.mode, 0o4755);
    assert_eq!(
        actual.get("dev/big-minor").unwrap().kind,
        tree::Kind::CharDev(10, 1234)
    );
    assert_eq!(
        actual.get("dev/nvme").unwrap().kind,
        tree::Kind::BlockDev(259, 70_000)
    );
    assert_eq!(
        actual.get("bin/ping").unwrap().xattrs["security.capability"],
        CAP_NET_RAW.to_vec()
    );
    assert_eq!(actual.links_of("data").len(), 3);
    assert_eq!(actual.get("data").unwrap().nlink, Some(3));
    assert_eq!(actual.get("srv/big-uid").unwrap().uid, 3_000_000);
    assert_eq!(actual.get("tmp").unwrap().mode, 0o1777);
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let l1 = LayerBuilder::new()
        .dir("a")
        .dir("a/b")
        .file("a/b/f1", "f1")
        .file("a/b/f2", "f2")
        .file("a/keep", "keep")
        .dir("a/sub")
        .file("a/sub/x", "x")
        .dir("a/sub/deeper")
        .file("a/sub/deeper/y", "y")
        .file("top", "top")
        .file("same-layer", "old");
    let l2 = LayerBuilder::new()
        .whiteout("a/b/f1")
        .whiteout("a/sub")
        .whiteout("top")
        .file("a/new", "new")
        // a whiteout never hides an entry of its own layer, in either order
        .file("same-layer", "new")
        .whiteout("same-layer")
        .whiteout("fresh")
        .file("fresh", "fresh")
        // whiteout of something that never existed
        .whiteout("a/never");
    let l3 = LayerBuilder::new()
        .dir("a/sub")
        .file("a/sub/z", "z")
        .file("top", "back");
    let t = check_merge(&[&l1, &l2, &l3]);
    assert!(!t.contains("a/b/f1"));
    assert!(t.contains("a/b/f2"));
    assert!(!t.contains("a/sub/x") && !t.contains("a/sub/deeper"));
    assert!(t.contains("a/sub/z"));
    assert!(t.contains("same-layer") && t.contains("fresh"));
    assert!(!t.nodes.keys().any(|k| k.windows(4).any(|w| w == b".wh.")));
}

#[test]
fn opaque_directories() {
    let l1 = LayerBuilder::new()
        .dir("d")
        .file("d/a", "a")
        .dir("d/sub")
        .file("d/sub/c", "c")
        .dir("e")
        .file("e/old", "old")
        .dir("other")
        .file("other/untouched", "u");
    let l2 = LayerBuilder::new()
        // marker first, then re-added entries
        .dir("d")
        .mode(0o750)
        .opaque("d")
        .file("d/new", "new")
        .dir("d/sub")
        .file("d/sub/fresh", "fresh")
        // re-added entries before the marker: still kept
        .dir("e")
        .file("e/early", "early")
        .opaque("e")
        // opaque dir that did not exist below
        .dir("brand-new")
        .opaque("brand-new")
        .file("brand-new/x", "x");
    let t = check_merge(&[&l1, &l2]);
    assert!(!t.contains("d/a") && !t.contains("d/sub/c"));
    assert!(t.contains("d/new") && t.contains("d/sub/fresh"));
    assert_eq!(t.get("d").unwrap().mode, 0o750);
    assert!(!t.contains("e/old") && t.contains("e/early"));
    assert!(t.contains("other/untouched"));
}

#[test]
fn type_replacement_between_layers() {
    let l1 = LayerBuilder::new()
        .dir("x")
        .file("x/child", "c")
        .dir("x/grand")
        .file("x/grand/c", "c")
        .file("y", "file")
        .symlink("z", "y")
        .file("w", "file")
        .fifo("p")
        .char_dev("q", 1, 5);
    let l2 = LayerBuilder::new()
        .file("x", "dir became file")
        .dir("y")
        .file("y/inside", "file became dir")
        .dir("z")
        .symlink("w", "/target")
        .dir("p")
        .file("q", "device became file");
    let l3 = LayerBuilder::new()
        .symlink("x", "y/inside")
        .file("y", "dir became file again")
        .char_dev("z", 1, 7);
    let t = check_merge(&[&l1, &l2, &l3]);
    assert!(!t.contains("x/child") && !t.contains("y/inside"));
    assert_eq!(
        t.get("x").unwrap().kind,
        tree::Kind::Symlink(b"y/inside".to_vec())
    );
}

#[test]
fn hardlinks_share_one_inode() {
    let l1 = LayerBuilder::new()
        .dir("usr")
        .dir("usr/bin")
        .file("usr/bin/perl", vec![b'p'; 100_000])
        .mode(0o755)
        .hardlink("usr/bin/perl5.36.0", "usr/bin/perl")
        .hardlink("perl-at-root", "usr/bin/perl")
        .file("usr/bin/a", "a")
        .hardlink("usr/bin/b", "usr/bin/a")
        .file("empty", "")
        .hardlink("empty-link", "empty")
        .file("ln-src", "x")
        .mode(0o4711)
        .xattr("user.k", "v")
        .hardlink("ln-dst", "ln-src");
    let l2 = LayerBuilder::new()
        // a hardlink to a file of a lower layer
        .hardlink("usr/bin/perl-again", "usr/bin/perl")
        // replacing one name breaks the link for that name only
        .file("usr/bin/b", "new b");
    let t = check_merge(&[&l1, &l2]);
    assert_eq!(t.links_of("usr/bin/perl").len(), 4);
    assert_eq!(t.get("usr/bin/perl").unwrap().nlink, Some(4));
    assert!(t.links_of("usr/bin/a").is_empty());
    assert_eq!(t.get("usr/bin/a").unwrap().nlink, Some(1));
    assert_eq!(t.get("ln-dst").unwrap().mode, 0o4711);
}

#[test]
fn hardlink_to_whited_out_target_keeps_content() {
    // layer 2 links to a file, layer 3 removes the original name: the link
    // keeps the inode.
    let l1 = LayerBuilder::new().file("orig", "content");
    let l2 = LayerBuilder::new().hardlink("link", "orig");
    let l3 = LayerBuilder::new().whiteout("orig");
    let t = check_merge(&[&l1, &l2, &l3]);
    assert!(!t.contains("orig"));
    assert_eq!(t.get("link").unwrap().nlink, Some(1));
}

#[test]
fn metadata_of_directories_is_updated_by_later_layers() {
    let l1 = LayerBuilder::new()
        .dir("etc")
        .mode(0o700)
        .owner(1, 1)
        .mtime(1000)
        .xattr("user.old", "1")
        .file("etc/a", "a");
    let l2 = LayerBuilder::new()
        .dir("etc")
        .mode(0o755)
        .owner(0, 0)
        .mtime(2000)
        .file("etc/b", "b");
    let t = check_merge(&[&l1, &l2]);
    let etc = t.get("etc").unwrap();
    assert_eq!((etc.mode, etc.uid, etc.mtime), (0o755, 0, 2000));
    assert!(etc.xattrs.is_empty());
    assert!(t.contains("etc/a") && t.contains("etc/b"));
}

#[test]
fn zstd_and_uncompressed_layers_merge_alike() {
    let layer = everything_layer();
    for c in [Compression::Zstd, Compression::None] {
        let env = TestEnv::new();
        let (out, o, _) = build(&[&layer], c, &env, &[]);
        assert_ok(&o);
        assert_trees_match(
            &extract_tree(&out),
            &Tree::from_layers(&[&layer]),
            Compare::default(),
        );
    }
}

// ---------------------------------------------------------------- hostile

/// Runs `rootfs` on hostile `layers`, expecting failure that names the
/// digest of layer `bad` and `entry`, no output, and no file named
/// `canary_name` anywhere near (temp dir, /tmp, /etc) nor in `canary_dirs`.
fn assert_hostile(
    layers: &[&LayerBuilder],
    bad: usize,
    entry: &str,
    canary_name: &str,
    canary_dirs: &[&Path],
) {
    let env = TestEnv::new();
    let (out, o, built) = build(layers, Compression::Gzip, &env, &[]);
    let err = assert_fails(&o);
    eprintln!("build-image said: {err}");
    assert_mentions(&err, built[bad].hex());
    assert_mentions(&err, entry);
    assert!(
        !out.exists(),
        "{} exists after a failed build",
        out.display()
    );
    env.assert_out_empty();
    let near: Vec<_> = list_files(env.tmp.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(canary_name))
        .collect();
    assert!(near.is_empty(), "created {near:?}");
    for d in [Path::new("/tmp"), Path::new("/etc"), Path::new("/")] {
        assert!(
            !d.join(canary_name).exists(),
            "created {}",
            d.join(canary_name).display()
        );
    }
    for d in canary_dirs {
        let inside = list_files(d);
        assert!(inside.is_empty(), "{} holds {inside:?}", d.display());
    }
}

/// A 510 KB gzip layer whose one GNU long-name record is 512 MiB: refused
/// by the record's header, naming the layer's digest and the record,
/// without buffering it (the whole run stays far below the record's size)
/// and without output.
#[test]
fn hostile_long_name_record_is_refused_before_it_is_read() {
    let reg = Registry::start();
    let bomb = common::layer::long_name_bomb(512 << 20);
    assert!(bomb.size() < 1 << 20, "blob of {} bytes", bomb.size());
    let (image, _) = push_layers(&reg, "layers/bomb", vec![bomb.clone()]);
    let env = TestEnv::new();
    let out = env.out_path("bomb.sqfs");
    let (o, peak) = env.run_peak_rss(&["rootfs", &image, "-o", out.to_str().unwrap()], 1 << 30);
    let err = assert_fails(&o);
    eprintln!("build-image said: {err}");
    eprintln!("peak RSS: {} MiB", peak >> 20);
    assert_mentions(&err, bomb.hex());
    assert_mentions(&err, "GNU long-name record of 536870912 bytes");
    assert!(
        peak < 200 << 20,
        "peak RSS {} MiB for a {} KiB layer",
        peak >> 20,
        bomb.size() >> 10
    );
    assert!(
        !out.exists(),
        "{} exists after a failed build",
        out.display()
    );
    env.assert_out_empty();
}

#[test]
fn hostile_dotdot_entry() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new().file("ok", "ok");
    let l2 = LayerBuilder::new().file(format!("../../{evil}"), "pwned");
    assert_hostile(&[&l1, &l2], 1, &format!("../../{evil}"), &evil, &[]);
}

#[test]
fn hostile_dotdot_in_the_middle() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new()
        .dir("a")
        .file(format!("a/../../{evil}"), "pwned");
    assert_hostile(&[&l1], 0, &format!("a/../../{evil}"), &evil, &[]);
}

#[test]
fn hostile_dotdot_via_pax_path() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new()
        .file(format!("../{evil}"), "pwned")
        .pax_path();
    assert_hostile(&[&l1], 0, &format!("../{evil}"), &evil, &[]);
}

#[test]
fn hostile_absolute_path() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new().file(format!("/etc/{evil}"), "pwned");
    assert_hostile(&[&l1], 0, &format!("/etc/{evil}"), &evil, &[]);
}

#[test]
fn hostile_write_through_absolute_symlink_in_later_layer() {
    let canary = tempfile::Builder::new().prefix("xyz-").tempdir().unwrap();
    let evil = unique("evil");
    let l1 = LayerBuilder::new().symlink("lib", canary.path().to_str().unwrap());
    let l2 = LayerBuilder::new().file(format!("lib/{evil}"), "pwned");
    assert_hostile(
        &[&l1, &l2],
        1,
        &format!("lib/{evil}"),
        &evil,
        &[canary.path()],
    );
}

#[test]
fn hostile_write_through_symlink_in_same_layer() {
    let canary = tempfile::Builder::new().prefix("xyz-").tempdir().unwrap();
    let evil = unique("evil");
    let l1 = LayerBuilder::new()
        .symlink("lib", canary.path().to_str().unwrap())
        .file(format!("lib/{evil}"), "pwned");
    assert_hostile(&[&l1], 0, &format!("lib/{evil}"), &evil, &[canary.path()]);
}

#[test]
fn hostile_write_through_relative_symlink() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new()
        .dir("usr")
        .dir("usr/lib")
        .symlink("lib", "usr/lib");
    let l2 = LayerBuilder::new().file(format!("lib/{evil}"), "through a link");
    assert_hostile(&[&l1, &l2], 1, &format!("lib/{evil}"), &evil, &[]);
}

#[test]
fn hostile_write_through_dotdot_symlink() {
    let evil = unique("evil");
    let l1 = LayerBuilder::new().symlink("up", "../../..");
    let l2 = LayerBuilder::new().file(format!("up/{evil}"), "pwned");
    assert_hostile(&[&l1, &l2], 1, &format!("up/{evil}"), &evil, &[]);
}

#[test]
fn hostile_hardlink_to_nonexistent_path() {
    let evil = unique("bad-hardlink");
    let l1 = LayerBuilder::new()
        .file("ok", "ok")
        .hardlink(&evil, "does/not/exist");
    assert_hostile(&[&l1], 0, &evil, &evil, &[]);
}

#[test]
fn hostile_hardlink_outside_the_root() {
    let evil = unique("bad-hardlink");
    let l1 = LayerBuilder::new()
        .dir("etc")
        .file("etc/passwd", "root:x:0:0");
    let l2 = LayerBuilder::new().hardlink(&evil, "../../etc/passwd");
    assert_hostile(&[&l1, &l2], 1, &evil, &evil, &[]);
}

#[test]
fn hostile_same_path_twice_in_one_layer() {
    let evil = unique("dup");
    let l1 = LayerBuilder::new().file("base", "b");
    let l2 = LayerBuilder::new()
        .dir("etc")
        .file(format!("etc/{evil}"), "first")
        .file(format!("etc/{evil}"), "second, different");
    assert_hostile(&[&l1, &l2], 1, &format!("etc/{evil}"), "no-canary", &[]);
}

// ---------------------------------------------------------------- output

const EPOCH: i64 = 1_700_000_000;

#[test]
fn reproducible_with_source_date_epoch() {
    let l1 = everything_layer();
    let l2 = LayerBuilder::new()
        .file("future", "f")
        .mtime(1_800_000_000)
        .file("past", "p")
        .mtime(1_000_000_000)
        .dir("newdir")
        .mtime(1_900_000_000);
    let reg = Registry::start();
    let (image, _) = push_layers(
        &reg,
        "repro/app",
        vec![l1.build(Compression::Gzip), l2.build(Compression::Zstd)],
    );
    let mut sums = Vec::new();
    let mut outs = Vec::new();
    for i in 0..2 {
        let mut env = TestEnv::new();
        env.env("SOURCE_DATE_EPOCH", &EPOCH.to_string());
        let out = env.rootfs_ok(&image, &format!("run{i}.sqfs"), &[]);
        sums.push(sha256_file(&out));
        outs.push((env, out));
    }
    assert_eq!(sums[0], sums[1], "two builds differ");
    let img = &outs[0].1;
    assert_eq!(mkfs_time(img), EPOCH);
    let t = extract_tree(img);
    assert_trees_match(
        &t,
        &Tree::from_layers(&[&l1, &l2]),
        Compare {
            clamp_mtime: Some(EPOCH),
            symlink_mtimes: true,
            ..Compare::default()
        },
    );
    assert_eq!(t.get("future").unwrap().mtime, EPOCH);
    assert_eq!(t.get("past").unwrap().mtime, 1_000_000_000);
    // no entry is newer than the epoch, implicit ones included
    for (p, n) in &t.nodes {
        assert!(n.mtime <= EPOCH, "{}: mtime {}", tree::show(p), n.mtime);
    }
}

#[test]
fn compression_options() {
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| {
            format!(
                "line {} of {}\n",
                u64::from(i) * 2_654_435_761 % 1000,
                i % 97
            )
            .into_bytes()
        })
        .collect();
    let layer = LayerBuilder::new()
        .dir("data")
        .file("data/text", &text)
        .file("data/small", "small");
    let reg = Registry::start();
    let (image, _) = push_layers(&reg, "comp/app", vec![layer.build(Compression::Gzip)]);
    let expected = Tree::from_layers(&[&layer]);
    let mut sizes = std::collections::BTreeMap::new();
    for (arg, name, level) in [
        ("zstd", "zstd", None),
        ("zstd:1", "zstd", Some(1)),
        ("zstd:19", "zstd", Some(19)),
        ("xz", "xz", None),
        ("xz:6", "xz", None),
        ("gzip", "gzip", None),
        ("gzip:9", "gzip", Some(9)),
    ] {
        let env = TestEnv::new();
        let out = env.rootfs_ok(&image, "c.sqfs", &["--compression", arg]);
        let stat = unsquashfs_stat(&out);
        assert_eq!(
            stat_field(&stat, "Compression").as_deref(),
            Some(name),
            "--compression {arg}:\n{stat}"
        );
        if let (Some(level), Some(shown)) = (level, stat_field(&stat, "\tcompression-level")) {
            assert_eq!(shown, level.to_string(), "--compression {arg}:\n{stat}");
        }
        assert_trees_match(&extract_tree(&out), &expected, Compare::default());
        sizes.insert(arg, fs::metadata(&out).unwrap().len());
    }
    assert!(
        sizes["zstd:19"] <= sizes["zstd:1"],
        "zstd:19 is larger than zstd:1: {sizes:?}"
    );
    // default is zstd
    let env = TestEnv::new();
    let out = env.rootfs_ok(&image, "d.sqfs", &[]);
    assert_eq!(
        stat_field(&unsquashfs_stat(&out), "Compression").as_deref(),
        Some("zstd")
    );
}

#[test]
fn block_sizes() {
    let layer = LayerBuilder::new().file(
        "big",
        (0..3_000_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let reg = Registry::start();
    let (image, _) = push_layers(&reg, "bs/app", vec![layer.build(Compression::Gzip)]);
    for (arg, want) in [
        (None, "131072"),
        (Some("131072"), "131072"),
        (Some("128K"), "131072"),
        (Some("1M"), "1048576"),
    ] {
        let env = TestEnv::new();
        let extra: Vec<&str> = arg.map(|a| vec!["--block-size", a]).unwrap_or_default();
        let out = env.rootfs_ok(&image, "b.sqfs", &extra);
        let stat = unsquashfs_stat(&out);
        assert_eq!(
            stat_field(&stat, "Block size").as_deref(),
            Some(want),
            "--block-size {arg:?}:\n{stat}"
        );
        assert_trees_match(
            &extract_tree(&out),
            &Tree::from_layers(&[&layer]),
            Compare::default(),
        );
    }
}

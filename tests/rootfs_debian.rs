//! A real distribution: the minbase of the default flavor's Debian release
//! (made once with mmdebstrap, cached under target/test-fixtures/), pushed to a local registry as one
//! gzip layer, turned into a SquashFS and compared entry by entry with the
//! original tar.

mod common;

use std::time::Instant;

use common::tree::Kind;
use common::*;

#[test]
fn debian_minbase_from_registry_matches_the_tar() {
    let tar = debian_minbase();
    let (layout, digests) = debian_layout();
    let release = fixtures::default_release();
    let reg = Registry::start();
    assert_eq!(reg.push(&layout, &release, "debian"), digests.manifest);
    let image = reg.image("debian", &release);

    let env = TestEnv::new();
    let start = Instant::now();
    let out = env.rootfs_ok(&image, "debian.sqfs", &[]);
    eprintln!(
        "build-image rootfs of Debian minbase: {:.2} s, {} bytes",
        start.elapsed().as_secs_f64(),
        std::fs::metadata(&out).unwrap().len()
    );

    let expected = Tree::from_tar_file(&tar);
    // every tar entry, and the root, is listed once
    let listing = unsquashfs_listing(&out);
    assert_eq!(
        listing.len(),
        expected.len(),
        "unsquashfs -lln lists {} entries, the tar has {}",
        listing.len(),
        expected.len()
    );

    let actual = extract_tree(&out);
    common::squash::assert_listing_matches(&listing, &actual);
    assert_trees_match(
        &actual,
        &expected,
        Compare {
            root: true,
            symlink_mtimes: true,
            ..Compare::default()
        },
    );

    // spot checks that do not depend on the comparer
    for suid in ["usr/bin/su", "usr/bin/mount", "usr/bin/passwd"] {
        let n = actual.get(suid).unwrap_or_else(|| panic!("{suid} missing"));
        assert_eq!(n.mode & 0o4000, 0o4000, "{suid} lost its setuid bit");
        assert_eq!((n.uid, n.gid), (0, 0));
    }
    assert_eq!(actual.get("dev/null").unwrap().kind, Kind::CharDev(1, 3));
    assert_eq!(actual.get("tmp").unwrap().mode, 0o1777);
    assert!(matches!(actual.get("bin").unwrap().kind, Kind::Symlink(_)));
    assert!(!actual.links.is_empty(), "minbase has hardlinks (perl)");
    // owners other than root survive (e.g. group shadow on /etc/shadow)
    let shadow = actual.get("etc/shadow").unwrap();
    let want = expected.get("etc/shadow").unwrap();
    assert_eq!(
        (shadow.uid, shadow.gid, shadow.mode),
        (want.uid, want.gid, want.mode)
    );
    let listed = listing.iter().find(|e| e.path == "usr/bin/su").unwrap();
    assert_eq!(&listed.perms[..4], "-rws");
}

#[test]
fn debian_minbase_from_rootfs_tar_and_oci_layout() {
    let tar = debian_minbase();
    let (layout, _) = debian_layout();
    let expected = Tree::from_tar_file(&tar);
    let compare = Compare {
        root: true,
        symlink_mtimes: true,
        ..Compare::default()
    };

    let mut env = TestEnv::new();
    env.env("SOURCE_DATE_EPOCH", "1700000000");
    let from_tar = env.rootfs_ok(&format!("rootfs-tar:{}", tar.display()), "tar.sqfs", &[]);
    let from_layout = env.rootfs_ok(
        &format!(
            "oci-layout:{}:{}",
            layout.dir.display(),
            fixtures::default_release()
        ),
        "layout.sqfs",
        &[],
    );
    for img in [&from_tar, &from_layout] {
        assert_trees_match(
            &extract_tree(img),
            &expected,
            Compare {
                clamp_mtime: Some(1_700_000_000),
                ..compare
            },
        );
    }
}

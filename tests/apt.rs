//! The apt client against real Debian data: the checked-in bookworm
//! InRelease (tests/fixtures/apt/INDEX), a local signed repository served
//! over HTTP on 127.0.0.1 with real `.deb`s from Debian (downloaded once
//! with `apt-get download` into target/test-fixtures/debs/), and
//! cross-checks against gpg, dpkg and dpkg-deb.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::apt::{
    self, install_debs, installed_packages, resolve, verify_inrelease, Fetcher, InstallOptions,
    Keyring, ResolveOptions, Source,
};
use build_image::cache::BlobCache;
use build_image::oci::{Digest, RetryPolicy};
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::aptrepo::{real_debs, serve, Gpg, Head, Repo, RELEASE_DATE};
use common::file_named;
use common::fixtures::host_debian_arch;

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apt")
        .join(name)
}

fn debian_keyring() -> Keyring {
    assert!(
        Path::new(DEBIAN_KEYRING).exists(),
        "{DEBIAN_KEYRING} is missing: apt-get install debian-archive-keyring"
    );
    Keyring::load(Path::new(DEBIAN_KEYRING)).unwrap()
}

/// A fetcher for the repositories served here: one retry, 10 ms later.
fn local_fetcher() -> Fetcher {
    Fetcher::new().with_retry(RetryPolicy {
        attempts: 2,
        first_delay: std::time::Duration::from_millis(10),
    })
}

/// The `main` component of `suite` at `url`, for `arch`.
fn main_of(url: &str, suite: &str, arch: &str) -> Source {
    Source {
        url: url.to_string(),
        suite: suite.into(),
        components: vec!["main".into()],
        arch: arch.to_string(),
    }
}

/// A day after the fixture's `Date: Sat, 11 Jul 2026 10:16:37 UTC`.
const FIXTURE_NOW: i64 = 1_783_765_000 + 86_400;

#[test]
fn real_inrelease_verifies_and_tampering_fails() {
    let keyring = debian_keyring();
    assert!(keyring.keys.len() >= 3, "{} keys", keyring.keys.len());
    let bytes = std::fs::read(fixture("bookworm-InRelease")).unwrap();
    let r = verify_inrelease(&bytes, &keyring, FIXTURE_NOW, "bookworm/InRelease").unwrap();
    assert_eq!(r.codename.as_deref(), Some("bookworm"));
    assert_eq!(r.origin.as_deref(), Some("Debian"));
    assert!(r.acquire_by_hash);
    assert!(r.architectures.iter().any(|a| a == "arm64"));
    assert_eq!(r.components[0], "main");
    assert_eq!(r.date, Some(1_783_764_997));
    assert_eq!(
        apt::release::format_date(r.date.unwrap()),
        "2026-07-11 10:16:37 UTC"
    );
    let xz = &r.files["main/binary-arm64/Packages.xz"];
    assert_eq!(xz.sha256.len(), 64);
    assert!(xz.size > 1_000_000);
    // All three signatures (two archive keys, one release key) verified.
    assert_eq!(r.signed_by.len(), 3, "{:?}", r.signed_by);
    for fpr in [
        "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8", // archive 12/bookworm (by subkey 4CB5…)
        "4D64FEC119C2029067D6E791F8D2585B8783D481", // stable release 12/bookworm
    ] {
        assert!(r.signed_by.iter().any(|f| f == fpr), "{:?}", r.signed_by);
    }

    // One character changed anywhere in the signed text fails.
    let text = String::from_utf8(bytes.clone()).unwrap();
    for (from, to) in [
        ("Codename: bookworm", "Codename: bookwork"),
        ("Acquire-By-Hash: yes", "Acquire-By-Hash: ye5"),
    ] {
        let bad = text.replacen(from, to, 1);
        let e = verify_inrelease(bad.as_bytes(), &keyring, FIXTURE_NOW, "tampered/InRelease")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tampered/InRelease") && e.contains("signature did not verify"),
            "{e}"
        );
    }
    // A hash in the file list.
    let i = text.find("main/binary-arm64/Packages.xz").unwrap() - 20;
    let mut bad = bytes.clone();
    bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
    assert!(verify_inrelease(&bad, &keyring, FIXTURE_NOW, "x").is_err());

    // Long after every key expired.
    let e = verify_inrelease(&bytes, &keyring, 2_300_000_000, "late/InRelease")
        .unwrap_err()
        .to_string();
    // The dates gpg --list-keys shows for these keys.
    assert!(
        e.contains("subkey 4CB50190207B4758A3F73A796ED0E7B82643E131 expired on 2031-01-19"),
        "{e}"
    );
    assert!(
        e.contains("key 4D64FEC119C2029067D6E791F8D2585B8783D481 expired on 2031-01-21"),
        "{e}"
    );
    // In 2032 only the trixie archive key's signature still counts.
    let r = verify_inrelease(&bytes, &keyring, 1_960_000_000, "2032/InRelease").unwrap();
    assert_eq!(r.signed_by.len(), 1, "{:?}", r.signed_by);

    // The wrong keyring.
    let gpg = Gpg::new();
    let other = Keyring::from_bytes(&gpg.public_key(), "test keyring").unwrap();
    let e = verify_inrelease(&bytes, &other, FIXTURE_NOW, "bookworm/InRelease")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("signature did not verify") && e.contains("test keyring"),
        "{e}"
    );
}

#[test]
fn version_order_matches_dpkg() {
    use std::cmp::Ordering::*;
    let pairs = [
        ("1.0", "1.0", Equal),
        ("1.0", "1.1", Less),
        ("1.10", "1.9", Greater),
        ("1.0~rc1", "1.0", Less),
        ("1.0~~", "1.0~", Less),
        ("1.0~", "1.0", Less),
        ("1.0", "1.0+b1", Less),
        ("1.0a", "1.0+", Less),
        ("1.0a", "1.0", Greater),
        ("1:0.1", "2.0", Greater),
        ("0:1.0", "1.0", Equal),
        ("1.0-1", "1.0-2", Less),
        ("1.0-10", "1.0-9", Greater),
        ("1.0-1", "1.0", Greater),
        ("1.0-0", "1.0", Equal),
        ("2.36-9+deb12u9", "2.36-9+deb12u10", Less),
        ("6.1.119-1", "6.1.123-1", Less),
        ("1.2.3-1~bpo12+1", "1.2.3-1", Less),
        ("001", "1", Equal),
        ("1.0a", "1.0b", Less),
        ("1.0.0", "1.0", Greater),
        ("1.0-1ubuntu1", "1.0-1", Greater),
        ("9.0", "10.0", Less),
        ("2:1", "1:9", Greater),
        ("1.0.a", "1.0.+", Less),
        ("1.0-a", "1.0-~", Greater),
        ("3.0-2+b1", "3.0-2.1", Less),
        ("0.9.8-1", "0.9.8a-1", Less),
        ("1.2-3-4", "1.2-3", Greater),
        ("1.0+dfsg", "1.0-1", Greater),
        ("1~", "1~~a", Greater),
        ("252.33-1~deb12u1", "252.30-1~deb12u2", Greater),
        ("1:2.38.1-5+deb12u3", "2.38.1-5", Greater),
        ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12", Less),
        ("1.0a~", "1.0a", Less),
        ("2.0.0+git20230101", "2.0.0", Greater),
    ];
    for (a, b, want) in pairs {
        assert_eq!(apt::version::compare(a, b), want, "{a} vs {b}");
        let op = match want {
            Less => "lt",
            Equal => "eq",
            Greater => "gt",
        };
        let ok = Command::new("dpkg")
            .args(["--compare-versions", a, op, b])
            .status()
            .unwrap()
            .success();
        assert!(ok, "dpkg disagrees: {a} {op} {b}");
    }
}

/// A usrmerged base image with libc6 and libtinfo6 "installed".
fn base_tree(store: &mut ContentStore, arch: &str) -> FsTree {
    let mut t = FsTree::new();
    let root = t.root();
    let mk = |t: &mut FsTree, parent, name: &str| {
        let d = t.add_inode(
            InodeKind::Directory {
                children: Default::default(),
            },
            Metadata::new(0o755, 0, 0, 0),
        );
        t.link(parent, name.as_bytes().to_vec(), d);
        d
    };
    let usr = mk(&mut t, root, "usr");
    mk(&mut t, usr, "lib");
    let var = mk(&mut t, root, "var");
    let lib = mk(&mut t, var, "lib");
    let dpkg = mk(&mut t, lib, "dpkg");
    let l = t.add_inode(
        InodeKind::Symlink {
            target: b"usr/lib".to_vec(),
        },
        Metadata::new(0o777, 0, 0, 0),
    );
    t.link(root, b"lib".to_vec(), l);
    let status = format!(
        "Package: libc6\nStatus: install ok installed\nMulti-Arch: same\nVersion: 2.36-9+deb12u9\nArchitecture: {arch}\n\n\
         Package: libtinfo6\nStatus: install ok installed\nMulti-Arch: same\nVersion: 6.4-4\nArchitecture: {arch}\n"
    );
    let content = store.append(status.as_bytes()).unwrap();
    let f = t.add_inode(InodeKind::File { content }, Metadata::new(0o644, 0, 0, 0));
    t.link(dpkg, b"status".to_vec(), f);
    t
}

fn read(tree: &FsTree, store: &ContentStore, path: &str) -> Vec<u8> {
    let id = tree
        .lookup_path(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} missing"));
    match &tree.inode(id).kind {
        InodeKind::File { content } => store.read_all(content).unwrap(),
        k => panic!("{path} is a {}", k.describe()),
    }
}

/// dpkg's .list for a .deb, derived from `dpkg-deb -c`.
fn dpkg_deb_list(deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut list = String::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let path = line.split_whitespace().nth(5).unwrap();
        let path = path.strip_prefix('.').unwrap().trim_end_matches('/');
        list.push_str(if path.is_empty() { "/." } else { path });
        list.push('\n');
    }
    list
}

#[test]
fn local_repository_resolve_fetch_install() {
    let debs = real_debs();
    let repo = Repo::new(&debs);
    let future = "Sat, 11 Jul 2099 10:16:37 UTC";
    repo.publish("test", future, |_, s| s, |b| b);
    repo.publish("stale", "Sat, 11 Jan 2025 10:16:37 UTC", |_, s| s, |b| b);
    // The same packages, but hello's hash in the index is wrong.
    repo.publish(
        "badhash",
        future,
        |name, s| {
            if name != "hello" {
                return s;
            }
            let lines: Vec<String> = s
                .lines()
                .map(|l| {
                    if l.starts_with("SHA256: ") {
                        format!("SHA256: {}", "ab".repeat(32))
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            lines.join("\n") + "\n"
        },
        |b| b,
    );
    // A Release changed after signing.
    repo.publish(
        "forged",
        future,
        |_, s| s,
        |b| {
            String::from_utf8(b)
                .unwrap()
                .replacen("Origin: Test", "Origin: Tesx", 1)
                .into_bytes()
        },
    );
    let url = serve(repo.dir.path().to_path_buf());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(cache_dir.path()).unwrap();
    let fetcher = local_fetcher();
    let source = |suite: &str| main_of(&url, suite, &repo.arch);
    let keyring = repo.keyring();
    let now = FIXTURE_NOW;

    let r = fetcher
        .load(&source("test"), &keyring, &cache, now)
        .unwrap();
    assert_eq!(r.packages.len(), 3);
    let spool = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(spool.path()).unwrap();
    let mut tree = base_tree(&mut store, &repo.arch);
    let installed = installed_packages(&tree, &store).unwrap();
    assert_eq!(installed.len(), 2);
    let opts = ResolveOptions {
        arch: repo.arch.clone(),
        source: "test main".into(),
    };
    let plan = resolve(
        &["sl".into(), "hello".into()],
        &r.packages,
        &installed,
        &opts,
    )
    .unwrap();
    let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["hello", "libncurses6", "sl"]);
    let e = resolve(&["nope".into()], &r.packages, &installed, &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "cannot install nope: no package nope for {} in test main",
            repo.arch
        )
    );

    let files = fetcher.fetch_debs(&r, &plan, &cache).unwrap();
    let report = install_debs(
        &mut tree,
        &mut store,
        &files,
        &InstallOptions { mtime: 1000 },
    )
    .unwrap();
    assert_eq!(report.packages.len(), 3);

    // Files with their modes and owners; /lib stayed a symlink.
    let hello = tree.inode(tree.lookup_path(b"usr/bin/hello").unwrap());
    assert_eq!(
        (hello.meta.mode, hello.meta.uid, hello.meta.gid),
        (0o755, 0, 0)
    );
    assert!(read(&tree, &store, "usr/bin/hello").starts_with(b"\x7fELF"));
    assert!(tree.lookup_path(b"usr/games/sl").is_some());
    let multiarch = format!(
        "usr/lib/{}-linux-gnu",
        if repo.arch == "amd64" {
            "x86_64"
        } else {
            "aarch64"
        }
    );
    let so = tree
        .lookup_path(format!("{multiarch}/libncurses.so.6.4").as_bytes())
        .unwrap();
    assert_eq!(tree.inode(so).meta.mode, 0o644);
    assert!(matches!(
        tree.inode(tree.lookup_path(b"lib").unwrap()).kind,
        InodeKind::Symlink { .. }
    ));

    // The dpkg database.
    let status = String::from_utf8(read(&tree, &store, "var/lib/dpkg/status")).unwrap();
    let listed: Vec<String> = apt::parse_status(&status, "status")
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(listed, ["hello", "libc6", "libncurses6", "libtinfo6", "sl"]);
    for (deb, list) in [
        (&debs[0], "hello.list"),
        (&debs[1], "sl.list"),
        (&debs[2], &format!("libncurses6:{}.list", repo.arch)),
    ] {
        let ours =
            String::from_utf8(read(&tree, &store, &format!("var/lib/dpkg/info/{list}"))).unwrap();
        assert_eq!(ours, dpkg_deb_list(deb), "{list}");
    }
    let md5 = read(&tree, &store, "var/lib/dpkg/info/hello.md5sums");
    assert!(String::from_utf8(md5).unwrap().contains("usr/bin/hello"));
    // dpkg itself reads the status we wrote.
    let admin = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(admin.path().join("info")).unwrap();
    std::fs::write(admin.path().join("status"), &status).unwrap();
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.path().display()))
        .args(["-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n"])
        .output()
        .unwrap();
    let mut want: Vec<String> = plan
        .iter()
        .chain(&installed)
        .map(|p| format!("{} {} ii", p.name, p.version))
        .collect();
    want.sort();
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(got, want, "{}", String::from_utf8_lossy(&out.stderr));

    // file:// sources read the same repository from disk.
    let local = Source {
        url: format!("file://{}", repo.dir.path().display()),
        ..source("test")
    };
    let r2 = fetcher.load(&local, &keyring, &cache, now).unwrap();
    assert_eq!(r2.packages.len(), 3);
    assert_eq!(fetcher.fetch_debs(&r2, &plan, &cache).unwrap().len(), 3);

    // The same through the one-call entry point, from two sources (the
    // first without the packages): same plan, same dpkg status.
    repo.publish("empty", future, |_, _| String::new(), |b| b);
    let mut tree2 = base_tree(&mut store, &repo.arch);
    let sources = [(source("empty"), &keyring), (source("test"), &keyring)];
    let repos = apt::load_repositories(&fetcher, &sources, &cache, now, None).unwrap();
    apt::check_available(&repos, &["hello".into(), "sl=1.0".into()]).unwrap();
    let err = apt::check_available(&repos, &["hello".into(), "nosuch".into(), "nope".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("packages nosuch, nope not found in") && err.contains("empty main"),
        "{err}"
    );
    let req = apt::InstallRequest {
        packages: &["hello".into(), "sl".into()],
        required: false,
        mtime: 1000,
    };
    let plan2 =
        apt::install_packages(&fetcher, &repos, &req, &cache, &mut tree2, &mut store).unwrap();
    assert_eq!(
        plan2
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(
        plan2
            .releases
            .iter()
            .map(|r| (r.suite.as_str(), r.date))
            .collect::<Vec<_>>(),
        [
            ("empty", apt::release::parse_date(RELEASE_DATE)),
            ("test", apt::release::parse_date(RELEASE_DATE))
        ]
    );
    assert_eq!(
        read(&tree2, &store, "var/lib/dpkg/status"),
        status.as_bytes()
    );

    // A .deb that does not match its index: error naming the package and
    // both hashes, nothing merged.
    let bad = fetcher
        .load(&source("badhash"), &keyring, &cache, now)
        .unwrap();
    let hello = bad
        .packages
        .iter()
        .find(|p| p.name == "hello")
        .unwrap()
        .clone();
    let e = format!(
        "{:#}",
        fetcher
            .fetch_debs(&bad, std::slice::from_ref(&hello), &cache)
            .unwrap_err()
    );
    let real = Digest::of(&std::fs::read(&debs[0]).unwrap());
    assert!(
        e.contains(&format!("package hello {}", hello.version))
            && e.contains(real.hex())
            && e.contains(&"ab".repeat(32)),
        "{e}"
    );
    let before = tree.entry_count();
    let e = install_debs(
        &mut tree,
        &mut store,
        &[(hello, debs[0].clone())],
        &InstallOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("package hello") && e.contains(real.hex()) && e.contains(&"ab".repeat(32)),
        "{e}"
    );
    assert_eq!(tree.entry_count(), before);

    // A Release whose signature does not verify.
    let e = format!(
        "{:#}",
        fetcher
            .load(&source("forged"), &keyring, &cache, now)
            .unwrap_err()
    );
    assert!(
        e.contains("forged/InRelease") && e.contains("signature did not verify"),
        "{e}"
    );
    // The right Release with the wrong keyring.
    let e = format!(
        "{:#}",
        fetcher
            .load(&source("test"), &debian_keyring(), &cache, now)
            .unwrap_err()
    );
    assert!(e.contains("signature did not verify"), "{e}");
    // Valid-Until in the past.
    let e = format!(
        "{:#}",
        fetcher
            .load(&source("stale"), &keyring, &cache, now)
            .unwrap_err()
    );
    assert!(
        e.contains("stale/InRelease") && e.contains("expired: Valid-Until 2025-01-11"),
        "{e}"
    );
}

/// A signed Release is not enough: one of another suite than the source
/// asks for is refused, and so is one older than a Release seen before,
/// in the cache or in the lock file the build replaces. The messages name
/// the InRelease and both suites or both dates.
#[test]
fn another_suite_or_an_older_release_is_refused() {
    let repo = Repo::new(&real_debs());
    let future = "Sat, 11 Jul 2099 10:16:37 UTC";
    let older = "Fri, 10 Jul 2026 10:16:37 UTC";
    let keep = |_: &str, s: String| s;
    let same = |b: Vec<u8>| b;
    let head = |suite, codename, date| Head {
        suite,
        codename,
        date,
    };
    // bullseye's Release, validly signed, where bookworm is asked for.
    repo.publish_as(
        "bookworm",
        &head("oldstable", "bullseye", RELEASE_DATE),
        future,
        keep,
        same,
    );
    // Debian's and Ubuntu's updates suites: one of the two fields matches.
    let updates = head("stable-updates", "bookworm-updates", RELEASE_DATE);
    repo.publish_as("bookworm-updates", &updates, future, keep, same);
    let noble = head("noble-updates", "noble", RELEASE_DATE);
    repo.publish_as("noble-updates", &noble, future, keep, same);
    repo.publish("roll", future, keep, same);
    let url = serve(repo.dir.path().to_path_buf());
    let fetcher = local_fetcher();
    let source = |suite: &str| main_of(&url, suite, &repo.arch);
    let keyring = repo.keyring();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(cache_dir.path()).unwrap();
    let load = |suite: &str, cache: &BlobCache| {
        fetcher
            .load(&source(suite), &keyring, cache, FIXTURE_NOW)
            .map_err(|e| format!("{e:#}"))
    };

    let e = load("bookworm", &cache).unwrap_err();
    assert!(
        e.contains(&format!("{url}/dists/bookworm/InRelease"))
            && e.contains("for suite oldstable (codename bullseye)")
            && e.contains("asks for bookworm"),
        "{e}"
    );
    load("bookworm-updates", &cache).unwrap();
    load("noble-updates", &cache).unwrap();

    // Seen once, the mirror goes back a day: refused by the cache's record.
    load("roll", &cache).unwrap();
    repo.publish_as("roll", &head("roll", "roll", older), future, keep, same);
    let e = load("roll", &cache).unwrap_err();
    assert!(
        e.contains(&format!("{url}/dists/roll/InRelease"))
            && e.contains("dated 2026-07-10 10:16:37 UTC, older than the one seen before (2026-07-11 10:16:37 UTC, recorded in ")
            && e.contains(&cache_dir.path().join("apt/releases").display().to_string()),
        "{e}"
    );

    // A fresh cache has no record; the lock file of a build that saw the
    // newer Release still refuses it.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = BlobCache::open(fresh_dir.path()).unwrap();
    let lock_path = fresh_dir.path().join("build-image.lock");
    let stamp = apt::ReleaseStamp {
        url: url.clone(),
        suite: "roll".into(),
        codename: Some("roll".into()),
        date: apt::release::parse_date(RELEASE_DATE),
    };
    std::fs::write(
        &lock_path,
        serde_json::json!({"repositories": [stamp.to_json()]}).to_string(),
    )
    .unwrap();
    let lock = apt::LockRecord::read(&lock_path).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(spool.path()).unwrap();
    let mut tree = base_tree(&mut store, &repo.arch);
    let sources = [(source("roll"), &keyring)];
    let req = apt::InstallRequest {
        packages: &["hello".into()],
        required: false,
        mtime: 1000,
    };
    let before = tree.entry_count();
    let e = format!(
        "{:#}",
        apt::load_repositories(&fetcher, &sources, &fresh, FIXTURE_NOW, Some(&lock)).unwrap_err()
    );
    assert!(
        e.contains(&format!("{url}/dists/roll/InRelease"))
            && e.contains("older than the one seen before (2026-07-11 10:16:37 UTC, recorded in ")
            && e.contains(&lock_path.display().to_string()),
        "{e}"
    );
    assert_eq!(tree.entry_count(), before);
    // Without that record the same request goes through.
    let repos = apt::load_repositories(&fetcher, &sources, &fresh, FIXTURE_NOW, None).unwrap();
    let done =
        apt::install_packages(&fetcher, &repos, &req, &fresh, &mut tree, &mut store).unwrap();
    assert_eq!(done.releases[0].date, apt::release::parse_date(older));
}

/// The host's own apt lists (as `apt-get update` left them): the bookworm
/// InRelease verifies, the full main Packages index matches its signed
/// hash and parses, and boot essentials resolve against the host's dpkg
/// status.
#[test]
fn real_bookworm_index_parses_and_resolves() {
    let lists = Path::new("/var/lib/apt/lists");
    let inrelease = lists.join("deb.debian.org_debian_dists_bookworm_InRelease");
    if !inrelease.exists() {
        let st = Command::new("apt-get")
            .arg("update")
            .status()
            .expect("apt-get is needed");
        assert!(st.success(), "apt-get update failed");
    }
    let arch = host_debian_arch();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let release = verify_inrelease(
        &std::fs::read(&inrelease).unwrap(),
        &debian_keyring(),
        now,
        "bookworm/InRelease",
    )
    .unwrap();
    let packages_path = file_named(
        lists,
        &format!("deb.debian.org_debian_dists_bookworm_main_binary-{arch}_Packages"),
        "",
    )
    .expect("no bookworm main Packages in /var/lib/apt/lists: run apt-get update");
    // apt stores lists recompressed (lz4); apt-helper undoes that.
    let out = Command::new("/usr/lib/apt/apt-helper")
        .arg("cat-file")
        .arg(&packages_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let entry = &release.files[&format!("main/binary-{arch}/Packages")];
    assert_eq!(out.stdout.len() as u64, entry.size);
    assert_eq!(Digest::of(&out.stdout).hex(), entry.sha256);
    let t = std::time::Instant::now();
    let index =
        apt::parse_index(std::str::from_utf8(&out.stdout).unwrap(), "bookworm main").unwrap();
    eprintln!("parsed {} packages in {:?}", index.len(), t.elapsed());
    assert!(index.len() > 50_000, "{}", index.len());

    let status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let installed = apt::parse_status(&status, "/var/lib/dpkg/status").unwrap();
    assert!(installed.iter().any(|p| p.name == "dpkg"));
    let opts = ResolveOptions {
        arch: arch.clone(),
        source: "bookworm main".into(),
    };
    let req: Vec<String> = [
        "linux-image-amd64",
        "systemd",
        "udev",
        "kmod",
        "systemd-sysv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let req = if arch == "amd64" {
        req
    } else {
        req[1..].to_vec()
    };
    let t = std::time::Instant::now();
    let plan = resolve(&req, &index, &installed, &opts).unwrap();
    eprintln!("resolved {} packages in {:?}", plan.len(), t.elapsed());
    let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
    for want in ["systemd", "udev", "kmod"] {
        assert!(
            names.contains(&want) || installed.iter().any(|p| p.name == want),
            "{want} neither planned nor installed: {names:?}"
        );
    }
    // Same input, same plan; nothing already installed (at a satisfying
    // version) is planned again, and every planned package is unique.
    let again = resolve(&req, &index, &installed, &opts).unwrap();
    assert_eq!(
        names,
        again.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
    );
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    // Without an installed base, libc6 comes before the packages needing it.
    let plan = resolve(&["hello".into(), "systemd".into()], &index, &[], &opts).unwrap();
    let pos = |n: &str| plan.iter().position(|p| p.name == n).unwrap();
    assert!(pos("libc6") < pos("hello") && pos("libc6") < pos("systemd"));
    assert!(pos("libsystemd-shared") < pos("systemd"));
}

/// Debian 13 as the `debian-13` flavor sees it: trixie's InRelease (from
/// the archive, through apt into a private list directory) verifies with
/// the flavor's built-in keyrings alone — signed by trixie's archive and
/// release keys — its main Packages index matches the signed hash, and
/// the flavor's whole package set resolves from nothing, with the `t64`
/// library names of the 64-bit time_t transition (`libssl3t64`, not
/// `libssl3`) and trixie's versions of systemd and OpenSSH.
#[test]
fn real_trixie_index_verifies_with_the_flavor_keys_and_resolves() {
    let arch = host_debian_arch();
    common::fixtures::release_apt_options("trixie", &arch, false);
    let lists = common::fixtures::fixtures_dir().join(format!("apt-trixie-{arch}/lists"));
    let flavor = build_image::flavor::Flavor::load("debian-13").unwrap();
    let repo = &flavor.repositories[0];
    let mut keys = Vec::new();
    for k in &repo.keyrings {
        keys.extend(flavor.keyring(k).unwrap());
    }
    let keyring = Keyring::from_bytes(&keys, "debian-13 keyrings").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let inrelease =
        std::fs::read(lists.join("deb.debian.org_debian_dists_trixie_InRelease")).unwrap();
    let release = verify_inrelease(&inrelease, &keyring, now, "trixie/InRelease").unwrap();
    assert_eq!(release.codename.as_deref(), Some("trixie"));
    for fpr in [
        "04B54C3CDCA79751B16BC6B5225629DF75B188BD", // archive 13/trixie
        "41587F7DB8C774BCCF131416762F67A0B2C39DE4", // stable release 13/trixie
    ] {
        assert!(
            release.signed_by.iter().any(|f| f == fpr),
            "{:?}",
            release.signed_by
        );
    }
    // Bookworm's keys alone do not open trixie.
    let bookworm = build_image::flavor::Flavor::load("debian-12").unwrap();
    let mut old = Vec::new();
    for k in &bookworm.repositories[0].keyrings {
        if k.contains("stable") {
            old.extend(bookworm.keyring(k).unwrap());
        }
    }
    let old = Keyring::from_bytes(&old, "bookworm stable").unwrap();
    assert!(verify_inrelease(&inrelease, &old, now, "trixie/InRelease").is_err());

    let packages_path = std::fs::read_dir(&lists)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!(
                    "deb.debian.org_debian_dists_trixie_main_binary-{arch}_Packages"
                ))
        })
        .expect("no trixie main Packages in the private lists");
    let out = Command::new("/usr/lib/apt/apt-helper")
        .arg("cat-file")
        .arg(&packages_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let entry = &release.files[&format!("main/binary-{arch}/Packages")];
    assert_eq!(out.stdout.len() as u64, entry.size);
    assert_eq!(Digest::of(&out.stdout).hex(), entry.sha256);
    let index = apt::parse_index(std::str::from_utf8(&out.stdout).unwrap(), "trixie main").unwrap();
    assert!(index.len() > 50_000, "{}", index.len());

    let opts = ResolveOptions {
        arch: arch.clone(),
        source: "trixie main".into(),
    };
    let plan = resolve(&flavor.packages_for(&arch), &index, &[], &opts).unwrap();
    let version = |n: &str| {
        plan.iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("{n} not planned"))
            .version
            .to_string()
    };
    assert!(
        version("systemd").starts_with("257"),
        "{}",
        version("systemd")
    );
    assert!(
        version("openssh-server").starts_with("1:10."),
        "{}",
        version("openssh-server")
    );
    assert!(version("libssl3t64").starts_with('3'));
    for gone in ["libssl3", "libcurl4", "libgnutls30"] {
        assert!(
            !plan.iter().any(|p| p.name == gone),
            "{gone} is a pre-t64 name"
        );
    }
}

/// Signatures made by a signing subkey verify through its binding to the
/// primary; once the subkey has expired they do not.
#[test]
fn subkey_signatures_and_expiry() {
    let gpg = Gpg {
        home: tempfile::tempdir().unwrap(),
    };
    gpg.run(
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Sub Test <sub@example.org>",
            "ed25519",
            "cert",
            "0",
        ],
        b"",
    );
    let listing = String::from_utf8(gpg.run(&["--with-colons", "--list-keys"], b"")).unwrap();
    let fpr = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .unwrap()
        .split(':')
        .nth(9)
        .unwrap()
        .to_string();
    gpg.run(
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-add-key",
            &fpr,
            "rsa2048",
            "sign",
            "2d",
        ],
        b"",
    );
    let signed = gpg.clearsign("Origin: Sub\nSuite: s\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n");
    let keyring = Keyring::from_bytes(&gpg.public_key(), "sub keyring").unwrap();
    assert!(keyring.keys[0].public_subkeys.len() == 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let r = verify_inrelease(&signed, &keyring, now, "sub/InRelease").unwrap();
    assert_eq!(r.signed_by, std::slice::from_ref(&fpr));
    assert_eq!(r.origin.as_deref(), Some("Sub"));
    let e = verify_inrelease(&signed, &keyring, now + 3 * 86400, "sub/InRelease")
        .unwrap_err()
        .to_string();
    assert!(e.contains("subkey") && e.contains("expired"), "{e}");
    // The subkey without its binding signature is not trusted.
    let mut unbound = keyring.clone();
    unbound.keys[0].public_subkeys[0].signatures.clear();
    let e = verify_inrelease(&signed, &unbound, now, "sub/InRelease")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not validly bound"), "{e}");
}

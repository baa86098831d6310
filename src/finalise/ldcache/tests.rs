//! The ordering and matching rules by hand, and the whole cache against
//! the build host's `ldconfig -r ROOT -X` over a root of real libraries.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::tree::edit::Scratch;

#[test]
fn versions_compare_as_numbers() {
    let lt = |a: &str, b: &str| libcmp(a.as_bytes(), b.as_bytes()) < 0;
    assert!(lt("libfoo.so.1.9", "libfoo.so.1.10"));
    assert!(lt("libfoo.so.2", "libfoo.so.10"));
    assert!(lt("libfoo.so", "libfoo.so.1"));
    // A digit sorts after any other character.
    assert!(lt("libfoo.so.x", "libfoo.so.1"));
    assert!(lt("liba.so", "libb.so"));
    assert_eq!(libcmp(b"libfoo.so.01", b"libfoo.so.1"), 0);
    assert_eq!(libcmp(b"libz.so.1", b"libz.so.1"), 0);
}

#[test]
fn patterns_match_as_fnmatch_does() {
    let m = |p: &str, s: &str| fnmatch(p.as_bytes(), s.as_bytes());
    assert!(m("*.conf", "x86_64-linux-gnu.conf"));
    assert!(!m("*.conf", "x.conf.bak"));
    assert!(m("?-[a-c]*.conf", "1-b.conf"));
    assert!(!m("[!a-c]*", "b"));
    assert!(m("[]]", "]"));
    assert!(m("a\\*", "a*"));
    assert!(!m("a\\*", "ab"));
}

#[test]
fn strings_share_their_tails() {
    let (table, offsets) = string_table(&[b"/lib/libz.so.1", b"libz.so.1", b"z.so.1", b"/lib/a"]);
    // Sorted by their reversed bytes, highest first: "a/bil/" before
    // "1.os.zbil/bil/".
    assert_eq!(table, b"/lib/a\0/lib/libz.so.1\0");
    assert_eq!(offsets[&b"/lib/a"[..]], 0);
    assert_eq!(offsets[&b"/lib/libz.so.1"[..]], 7);
    assert_eq!(offsets[&b"libz.so.1"[..]], 12);
    assert_eq!(offsets[&b"z.so.1"[..]], 15);
}

/// Every file and symlink below `dir` into the tree at `at`.
fn load(ed: &mut Editor<'_>, dir: &Path, at: &str) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let path = format!("{at}/{name}");
        let t = e.file_type().unwrap();
        if t.is_symlink() {
            let target = fs::read_link(e.path()).unwrap();
            ed.symlink(&path, target.to_str().unwrap()).unwrap();
        } else if t.is_dir() {
            ed.mkdir(&path, 0o755).unwrap();
            load(ed, &e.path(), &path);
        } else {
            ed.write(&path, &fs::read(e.path()).unwrap(), 0o644)
                .unwrap();
        }
    }
}

/// The reference: a merged-/usr root with the build host's libraries
/// (every symlink, the regular files up to 1 MiB, so some links dangle),
/// Debian's configuration plus includes, comments, a `=TYPE` suffix, a
/// directory named twice and through a symlink, a hidden file the glob
/// skips, a linker script, a file that is not ELF, a tiny file, a
/// library without a soname, two versions of one, a development link, a
/// link with another name. `ldconfig -r ROOT -X` writes its cache; ours
/// has the same bytes but for the generator text.
#[test]
fn same_cache_as_ldconfig() {
    let host = Path::new("/usr/lib/x86_64-linux-gnu");
    assert!(
        host.join("libc.so.6").exists(),
        "{} has no libc.so.6: this test runs on an amd64 Debian host",
        host.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix("ldcache-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("root");
    let libdir = root.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&libdir).unwrap();
    for l in ["lib", "lib64", "bin", "sbin"] {
        symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    fs::create_dir_all(root.join("usr/lib64")).unwrap();
    for e in fs::read_dir(host).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if !is_dso_name(name.as_bytes()) {
            continue;
        }
        let t = e.file_type().unwrap();
        if t.is_symlink() {
            symlink(fs::read_link(e.path()).unwrap(), libdir.join(&name)).unwrap();
        } else if t.is_file() && e.metadata().unwrap().len() <= 1 << 20 {
            fs::copy(e.path(), libdir.join(&name)).unwrap();
        }
    }
    let conf = root.join("etc/ld.so.conf.d");
    fs::create_dir_all(conf.join("more")).unwrap();
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n",
    )
    .unwrap();
    fs::write(
        conf.join("x86_64-linux-gnu.conf"),
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n\
         /usr/lib/x86_64-linux-gnu\n",
    )
    .unwrap();
    fs::write(
        conf.join("libc.conf"),
        "# libc default configuration\n/usr/local/lib\n",
    )
    .unwrap();
    fs::write(
        conf.join("zz-site.conf"),
        "  /opt/site/lib=libc6   # a comment\n/opt/site/lib//\nhwcap 0 nosegneg\n\
         include more/*.conf\n\t\n/opt/nowhere\n",
    )
    .unwrap();
    fs::write(conf.join(".hidden.conf"), "/opt/hidden\n").unwrap();
    fs::write(conf.join("more/10-app.conf"), "/opt/app/lib\n").unwrap();
    let site = root.join("opt/site/lib");
    let app = root.join("opt/app/lib");
    let hidden = root.join("opt/hidden");
    for d in [&site, &app, &hidden] {
        fs::create_dir_all(d).unwrap();
    }
    let z = fs::read_dir(host)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("libz.so.1."))
        .expect("no libz.so.1.* on the host");
    let libz = host.join(&z);
    // Two versions of libz in the site directory, with the soname link
    // to the older one: the newer file is cached under the soname.
    fs::copy(&libz, site.join("libz.so.1.2.3")).unwrap();
    fs::copy(&libz, site.join("libz.so.1.2.10")).unwrap();
    symlink("libz.so.1.2.3", site.join("libz.so.1")).unwrap();
    symlink("libz.so.1", site.join("libz.so")).unwrap();
    symlink("libz.so.1.2.3", site.join("libzother.so.5")).unwrap();
    fs::write(
        site.join("libc.so"),
        "/* GNU ld script */\nGROUP ( libc.so.6 )\n",
    )
    .unwrap();
    fs::write(site.join("libnotelf.so.1"), vec![b'x'; 200]).unwrap();
    fs::write(site.join("libtiny.so.1"), b"\x7fELF").unwrap();
    symlink("libgone.so.1.0", site.join("libgone.so.1")).unwrap();
    // A file named other than its soname; a shared object without
    // DT_SONAME (glibc's gconv modules), whose file name is its key.
    fs::copy(&libz, app.join("libapp.so.3")).unwrap();
    fs::copy(host.join("gconv/UTF-16.so"), app.join("libnoso.so.2")).unwrap();
    fs::copy(&libz, hidden.join("libhidden.so.1")).unwrap();
    symlink("../site/lib", root.join("opt/app/lib/site")).unwrap();
    symlink("site/lib", root.join("opt/sitelink")).unwrap();
    fs::write(conf.join("more/20-again.conf"), "/opt/sitelink\n").unwrap();

    let out = Command::new("ldconfig")
        .arg("-r")
        .arg(&root)
        .args(["-X", "-C", "/etc/ld.so.cache"])
        .output()
        .expect("ldconfig");
    assert!(
        out.status.success(),
        "ldconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = fs::read(root.join("etc/ld.so.cache")).unwrap();
    fs::remove_file(root.join("etc/ld.so.cache")).unwrap();

    let mut scratch = Scratch::new();
    let mut ed = scratch.editor();
    load(&mut ed, &root, "");
    let outcome = write(&mut ed, "amd64", "GENERATOR").unwrap();
    let Outcome::Written { entries, dirs } = outcome else {
        panic!("{outcome:?}");
    };
    // /opt/site/lib (also as /opt/sitelink), /opt/app/lib, /lib/x86_64-linux-gnu
    // (also as /usr/lib/x86_64-linux-gnu), /lib (also as /usr/lib).
    assert_eq!(dirs, 4);
    let got = ed.read(CACHE).unwrap().unwrap();
    let ext = le32(&want, 32) as usize;
    let generator_len = le32(&want, ext + 20) as usize;
    assert_eq!(
        want.len(),
        ext + 24 + generator_len,
        "one extension, the generator"
    );
    let mut expected = want[..ext + 20].to_vec();
    expected.extend_from_slice(&9u32.to_le_bytes());
    expected.extend_from_slice(b"GENERATOR");
    assert_eq!(le32(&want, 20) as usize, entries);
    if got != expected {
        let listing = |path: &Path| {
            let o = Command::new("ldconfig")
                .arg("-p")
                .arg("-C")
                .arg(path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let ours = tmp.path().join("ours.cache");
        fs::write(&ours, &got).unwrap();
        let theirs = tmp.path().join("theirs.cache");
        fs::write(&theirs, &want).unwrap();
        panic!(
            "caches differ ({} and {} bytes)\nours:\n{}\nldconfig's:\n{}",
            got.len(),
            want.len(),
            listing(&ours),
            listing(&theirs)
        );
    }
    let id = ed.lookup(CACHE).unwrap();
    assert_eq!(ed.tree.inode(id).meta.mode & 0o7777, 0o644);
    assert_eq!(ed.read_string(DROPIN).unwrap().unwrap(), DROPIN_TEXT);
}

#[test]
fn images_without_glibc_or_with_hwcaps_get_none() {
    let mut scratch = Scratch::new();
    let mut ed = scratch.editor();
    assert_eq!(write(&mut ed, "amd64", "g").unwrap(), Outcome::NoLoader);
    ed.write("usr/lib/aarch64-linux-gnu/libc.so.6", b"x", 0o644)
        .unwrap();
    assert_eq!(write(&mut ed, "riscv64", "g").unwrap(), Outcome::NoLoader);
    assert_eq!(
        write(&mut ed, "arm64", "g").unwrap(),
        Outcome::Written {
            entries: 0,
            dirs: 2
        }
    );
    ed.write(
        "usr/lib/aarch64-linux-gnu/glibc-hwcaps/x/libfoo.so.1",
        b"x",
        0o644,
    )
    .unwrap();
    ed.remove(CACHE).unwrap();
    let Outcome::LeftToBoot(why) = write(&mut ed, "arm64", "g").unwrap() else {
        panic!()
    };
    assert_eq!(
        why,
        "/usr/lib/aarch64-linux-gnu/glibc-hwcaps has libraries for other ISA levels"
    );
    assert!(!ed.exists(CACHE));
}

//! Compiles hand-written sources and checks lookups with a reader that
//! follows sd-hwdb.c; compares with the real systemd-hwdb on Debian's
//! udev hwdb.d.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::finalise::ldcache::fnmatch;
use crate::tree::edit::Scratch;

/// sd-hwdb.c's lookup over a compiled database: the properties a
/// modalias gets. Of two matches setting one key, the higher file
/// priority wins, then the later line.
fn lookup(db: &[u8], modalias: &str) -> BTreeMap<String, String> {
    assert_eq!(&db[..8], SIGNATURE);
    assert_eq!(Reader { db }.u64(16), db.len(), "file_size");
    let mut found = Vec::new();
    let r = Reader { db };
    r.search(modalias.as_bytes(), &mut found);
    found
        .into_iter()
        .map(|(k, e)| {
            let v = r.string(r.u64(e + 8));
            (lossy(&k), lossy(v))
        })
        .collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Reader<'a> {
    db: &'a [u8],
}

/// (key without its space, value entry offset), in first-set order.
type Found = Vec<(Vec<u8>, usize)>;

impl Reader<'_> {
    fn u64(&self, off: usize) -> usize {
        u64::from_le_bytes(self.db[off..off + 8].try_into().unwrap()) as usize
    }
    fn string(&self, off: usize) -> &[u8] {
        cstr(self.db, off)
    }
    fn children(&self, node: usize) -> Vec<(u8, usize)> {
        let base = node + self.u64(32);
        let size = self.u64(40);
        (0..self.db[node + 8] as usize)
            .map(|i| (self.db[base + i * size], self.u64(base + i * size + 8)))
            .collect()
    }
    fn values(&self, node: usize) -> Vec<usize> {
        let base = node + self.u64(32) + self.db[node + 8] as usize * self.u64(40);
        (0..self.u64(node + 16))
            .map(|i| base + i * self.u64(48))
            .collect()
    }
    fn child(&self, node: usize, c: u8) -> Option<usize> {
        self.children(node)
            .into_iter()
            .find(|&(ch, _)| ch == c)
            .map(|(_, n)| n)
    }
    fn add(&self, entry: usize, found: &mut Found) {
        let Some(key) = self.string(self.u64(entry)).strip_prefix(b" ") else {
            return;
        };
        let rank = |e: usize| {
            let line = u32::from_le_bytes(self.db[e + 24..e + 28].try_into().unwrap());
            let prio = u16::from_le_bytes(self.db[e + 28..e + 30].try_into().unwrap());
            (prio, line)
        };
        match found.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) if rank(entry) < rank(*old) => {}
            Some((_, old)) => *old = entry,
            None => found.push((key.to_vec(), entry)),
        }
    }
    fn search(&self, s: &[u8], found: &mut Found) {
        let mut node = self.u64(56);
        let mut i = 0;
        loop {
            let prefix = self.string(self.u64(node));
            for (p, &c) in prefix.iter().enumerate() {
                if matches!(c, b'*' | b'?' | b'[') {
                    return self.glob(node, p, &mut Vec::new(), &s[i + p..], found);
                }
                if s.get(i + p) != Some(&c) {
                    return;
                }
            }
            i += prefix.len();
            for g in [b'*', b'?', b'['] {
                if let Some(child) = self.child(node, g) {
                    self.glob(child, 0, &mut vec![g], &s[i..], found);
                }
            }
            let Some(&c) = s.get(i) else {
                for v in self.values(node) {
                    self.add(v, found);
                }
                return;
            };
            let Some(child) = self.child(node, c) else {
                return;
            };
            node = child;
            i += 1;
        }
    }
    /// Every match line below `node` (its label from `p` on),
    /// fnmatch()ed against the rest of the modalias.
    fn glob(&self, node: usize, p: usize, buf: &mut Vec<u8>, s: &[u8], found: &mut Found) {
        let prefix = &self.string(self.u64(node))[p..];
        buf.extend_from_slice(prefix);
        for (c, child) in self.children(node) {
            buf.push(c);
            self.glob(child, 0, buf, s, found);
            buf.pop();
        }
        let values = self.values(node);
        if !values.is_empty() && fnmatch(buf, s) {
            for v in values {
                self.add(v, found);
            }
        }
        buf.truncate(buf.len() - prefix.len());
    }
}

fn src(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.as_bytes().to_vec(),
    }
}

const OWN: &str = "\
# A record with two match lines.
usb:v1234p5678*
usb:v1234p9999*
 ID_A=specific
 ID_B=two

usb:v1234*
 ID_A=generic
 ID_C=vendor   # a trailing comment

pci:v0000[89]086d*
  ID_PCI=bracket

input:?x*
 ID_Q=question
";

const LATER: &str = "usb:v1234p5678*\n ID_B=override\n";

fn props(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn lookups_follow_the_override_rules() {
    let db = compile(
        &[src("/a/10-own.hwdb", OWN), src("/a/20-later.hwdb", LATER)],
        0,
    )
    .unwrap();
    // Two match lines with two properties each, two, one, one; the later
    // file gives ID_B of a match line already there a new value.
    assert_eq!(db.entries, 8);
    let generic = [("ID_A", "generic"), ("ID_C", "vendor")];
    for (modalias, want) in [
        // The later line of one file wins, the later file wins.
        (
            "usb:v1234p5678d0100",
            props(&[
                ("ID_A", "generic"),
                ("ID_B", "override"),
                ("ID_C", "vendor"),
            ]),
        ),
        (
            "usb:v1234p9999",
            props(&[("ID_A", "generic"), ("ID_B", "two"), ("ID_C", "vendor")]),
        ),
        ("usb:v1234p0001", props(&generic)),
        ("usb:v4321p5678", props(&[])),
        ("pci:v00008086d00001237", props(&[("ID_PCI", "bracket")])),
        ("pci:v00009086d1", props(&[("ID_PCI", "bracket")])),
        ("pci:v00007086d1", props(&[])),
        ("input:ax", props(&[("ID_Q", "question")])),
        ("input:axyz", props(&[("ID_Q", "question")])),
        ("input:x", props(&[])),
    ] {
        assert_eq!(lookup(&db.bytes, modalias), want, "{modalias}");
    }
    // A later file's generic match beats an earlier file's specific one.
    let db = compile(
        &[
            src("/a/10-own.hwdb", OWN),
            src("/a/90-late.hwdb", "usb:*\n ID_A=late\n"),
        ],
        0,
    )
    .unwrap();
    assert_eq!(lookup(&db.bytes, "usb:v1234p5678")["ID_A"], "late");
    assert_eq!(lookup(&db.bytes, "usb:v9")["ID_A"], "late");
}

#[test]
fn output_depends_on_the_text_only() {
    let sources = [src("/a/10-own.hwdb", OWN), src("/a/20-later.hwdb", LATER)];
    let a = compile(&sources, 252).unwrap().bytes;
    assert_eq!(a, compile(&sources, 252).unwrap().bytes);
    assert_eq!(u64::from_le_bytes(a[8..16].try_into().unwrap()), 252);
    // CR LF line ends count as one line end each.
    let crlf = [
        src("/a/10-own.hwdb", &OWN.replace('\n', "\r\n")),
        src("/a/20-later.hwdb", LATER),
    ];
    assert_eq!(a, compile(&crlf, 252).unwrap().bytes);
}

#[test]
fn bad_sources_name_the_file_and_line() {
    for (text, line, problem) in [
        (
            " ID_A=1\n",
            1,
            Problem::PropertyWithoutMatch(" ID_A=1".into()),
        ),
        ("usb:*\n\n", 2, Problem::MatchWithoutProperties),
        ("# x\nusb:*\n", 2, Problem::MatchWithoutProperties),
        ("usb:*\n ID_A\n", 2, Problem::NotKeyValue(" ID_A".into())),
        ("usb:*\n =x\n", 2, Problem::EmptyKey(" =x".into())),
        (
            "usb:*\n ID_A=1\nusb:x\n",
            3,
            Problem::MatchAmongProperties("usb:x".into()),
        ),
    ] {
        let err = compile(
            &[src("/a/x.hwdb", "pci:*\n ID=1\n"), src("/a/y.hwdb", text)],
            0,
        )
        .unwrap_err();
        let want = HwdbError::Source {
            file: "/a/y.hwdb".into(),
            line,
            problem,
        };
        assert_eq!(err, want, "{text:?}");
        assert!(err.to_string().starts_with(&format!("/a/y.hwdb:{line}: ")));
    }
    let long = format!("usb:*\n ID={}\n", "x".repeat(LINE_MAX));
    let err = compile(&[src("/a/y.hwdb", &long)], 0).unwrap_err();
    assert_eq!(err.to_string(), "/a/y.hwdb:2: line longer than 1 MiB");
}

#[test]
fn finalise_compiles_the_images_sources_once() {
    let mut scratch = Scratch::new();
    let mut ed = scratch.editor();
    assert_eq!(write(&mut ed).unwrap(), None, "no sources");
    let usr = "usr/lib/udev/hwdb.d";
    let etc = "etc/udev/hwdb.d";
    ed.write(&format!("{usr}/50-x.hwdb"), b"usb:*\n ID_X=usr\n", 0o644)
        .unwrap();
    ed.write(&format!("{etc}/50-x.hwdb"), b"usb:*\n ID_X=etc\n", 0o644)
        .unwrap();
    ed.write(&format!("{etc}/60-y.hwdb"), b"usb:v1*\n ID_Y=1\n", 0o644)
        .unwrap();
    ed.write(&format!("{usr}/70-z.hwdb"), b"usb:*\n ID_Z=1\n", 0o644)
        .unwrap();
    ed.symlink(&format!("{etc}/70-z.hwdb"), "/dev/null")
        .unwrap();
    ed.write(&format!("{usr}/.hidden.hwdb"), b"bad\n", 0o644)
        .unwrap();
    ed.write(&format!("{usr}/README"), b"bad\n", 0o644).unwrap();
    ed.mkdir(&format!("{usr}/dir.hwdb"), 0o755).unwrap();
    ed.write(
        "var/lib/dpkg/status",
        b"Package: udev\nStatus: install ok installed\nVersion: 252.39-1~deb12u2\n\
          Architecture: amd64\n",
        0o644,
    )
    .unwrap();
    let w = write(&mut ed).unwrap().unwrap();
    assert_eq!(
        w,
        Written {
            entries: 2,
            files: 3
        }
    );
    let id = ed.lookup(BIN).unwrap();
    assert_eq!(ed.tree.inode(id).meta.mode & 0o7777, 0o644);
    let db = ed.read(BIN).unwrap().unwrap();
    // The tool version the image's own systemd-hwdb would record.
    assert_eq!(u64::from_le_bytes(db[8..16].try_into().unwrap()), 252);
    assert_eq!(
        lookup(&db, "usb:v1"),
        props(&[("ID_X", "etc"), ("ID_Y", "1")])
    );
    let names = String::from_utf8_lossy(&db);
    assert!(names.contains("/etc/udev/hwdb.d/50-x.hwdb\0"), "{names:?}");
    // A database already there is kept.
    assert_eq!(write(&mut ed).unwrap(), None);
}

/// The reference: Debian's udev hwdb.d and the files above, compiled
/// by the real `systemd-hwdb update --usr` and by [`compile`], give the
/// same bytes (but for the tool version field), and `systemd-hwdb
/// query` answers the same from either file.
#[test]
fn same_database_as_systemd_hwdb() {
    let tool = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("systemd-hwdb"))
                .find(|t| t.is_file())
        })
        .expect("systemd-hwdb not found: install Debian's udev package");
    let debian = Path::new("/usr/lib/udev/hwdb.d");
    assert!(
        debian.join("20-pci-vendor-model.hwdb").is_file(),
        "{} has no hwdb files: install Debian's udev package",
        debian.display()
    );
    let tmp = tempfile::Builder::new().prefix("hwdb-").tempdir().unwrap();
    let root = |name: &str| {
        let r = tmp.path().join(name);
        std::fs::create_dir_all(r.join("usr/lib/udev/hwdb.d")).unwrap();
        std::fs::create_dir_all(r.join("etc/udev/hwdb.d")).unwrap();
        // Debian 12's systemd-hwdb reads /lib/udev.
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        r
    };
    let reference = root("reference");
    // (directory, name, text): Debian's files, then own ones, among
    // them a file of /etc replacing one of /usr/lib.
    let mut tree_files = Vec::new();
    for e in std::fs::read_dir(debian).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".hwdb") {
            let text = std::fs::read(debian.join(&name)).unwrap();
            tree_files.push((SOURCE_DIRS[0], name, text));
        }
    }
    for (dir, name, text) in [
        (SOURCE_DIRS[0], "10-own.hwdb", OWN),
        (SOURCE_DIRS[0], "95-later.hwdb", LATER),
        (
            SOURCE_DIRS[1],
            "95-later.hwdb",
            "usb:v1234p5678*\n ID_B=from-etc\n",
        ),
        (
            SOURCE_DIRS[1],
            "99-local.hwdb",
            "pci:v00008086d00001237*\n ID_MODEL_FROM_DATABASE=local name\n",
        ),
    ] {
        tree_files.push((dir, name.into(), text.as_bytes().to_vec()));
    }
    let mut by_name = BTreeMap::new();
    for (dir, name, text) in tree_files {
        std::fs::write(reference.join(dir).join(&name), &text).unwrap();
        if dir == SOURCE_DIRS[1] || !by_name.contains_key(&name) {
            by_name.insert(name, (dir, text));
        }
    }
    let run = |root: &Path, args: &[&str]| {
        let out = Command::new(&tool)
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-hwdb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&reference, &["update", "--usr", "--strict"]);
    let want = std::fs::read(reference.join(BIN)).unwrap();

    // Debian 12's systemd-hwdb (252) records file names with the --root
    // prefix, current systemd without.
    let root_text = reference.to_str().unwrap();
    let prefix = if want
        .windows(root_text.len())
        .any(|w| w == root_text.as_bytes())
    {
        root_text
    } else {
        ""
    };
    let sources: Vec<Source> = by_name
        .into_iter()
        .map(|(name, (dir, text))| Source {
            path: format!("{prefix}/{dir}/{name}"),
            text,
        })
        .collect();
    let start = std::time::Instant::now();
    let ours = compile(&sources, 0).unwrap();
    eprintln!(
        "{} files, {} entries, {} bytes in {:?}",
        sources.len(),
        ours.entries,
        ours.bytes.len(),
        start.elapsed()
    );
    let got = &ours.bytes;
    assert_eq!(got.len(), want.len(), "file size");
    if let Some(at) = (0..got.len()).find(|&i| !(8..16).contains(&i) && got[i] != want[i]) {
        panic!(
            "first difference at byte {at}: header ours {:?}, systemd-hwdb's {:?}",
            &got[..80],
            &want[..80]
        );
    }

    let mine = root("ours");
    std::fs::write(mine.join(BIN), got).unwrap();
    for (modalias, expect) in [
        (
            "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
            "ID_MODEL_FROM_DATABASE=local name",
        ),
        (
            "usb:v1D6Bp0002d0515dc09dsc00dp01ic09isc00ip00in00",
            "ID_MODEL_FROM_DATABASE=2.0 root hub",
        ),
        ("usb:v1234p5678", "ID_B=from-etc"),
        ("usb:v1234p9999", "ID_A=generic"),
        ("pci:v00009086d1", "ID_PCI=bracket"),
        (
            "evdev:atkbd:dmi:bvnLENOVO:bvrX:bd01/01/2020:svnLENOVO:pn3000 N100:pvr3000:rvnLENOVO:",
            "KEYBOARD_KEY_",
        ),
        ("acpi:AANT0001:", "ID_VENDOR_FROM_DATABASE="),
    ] {
        let reference_says = run(&reference, &["query", modalias]);
        assert!(
            reference_says.contains(expect),
            "{modalias}: systemd-hwdb says {reference_says:?}, expected {expect:?}"
        );
        assert_eq!(
            run(&mine, &["query", modalias]),
            reference_says,
            "{modalias}"
        );
    }
}

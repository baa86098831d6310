//! Installing `.deb` packages into an [`FsTree`] the way `dpkg --unpack`
//! lays them out, without running maintainer scripts, and recording them
//! in the dpkg database so `dpkg -l` on the device tells the truth.
//!
//! Unlike OCI layers, dpkg follows symlinks in the parent components of a
//! path: bookworm packages still ship `/lib/…` while usrmerged images have
//! `lib -> usr/lib`. Resolution is confined to the tree: a symlink that
//! climbs above the root or loops is an error. Directories that exist keep
//! their metadata (and a symlink standing where a package has a directory
//! stays). A non-directory another package owns is an error unless the new
//! package `Replaces` the owner.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::deb::{read_deb, DebControl};
use super::deb822::{self, Stanza};
use super::md5::md5_hex;
use super::packages::Package;
use crate::cache::hash_reader;
use crate::tree::guard::{record_error, HeaderWatch, MAX_PATH};
use crate::tree::paths::{lossy, read_tree_file, resolve_dir, resolve_ro, split, write_tree_file};
use crate::tree::{header_id, header_mtime, ContentStore, FsTree, InodeKind, Metadata};

const STATUS: &str = "var/lib/dpkg/status";
const INFO: &str = "var/lib/dpkg/info";

/// Options for [`install_debs`].
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// mtime of the dpkg database files written (`SOURCE_DATE_EPOCH`).
    pub mtime: i64,
}

/// What was installed.
#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    /// `name version` per package, in install order.
    pub packages: Vec<String>,
    pub entries: u64,
    pub bytes: u64,
}

/// Verifies each `.deb` against its index entry (size and sha256), then
/// unpacks them in order into `tree` and records them in the dpkg database.
/// Either every package is installed or the tree is left untouched.
pub fn install_debs(
    tree: &mut FsTree,
    store: &mut ContentStore,
    debs: &[(Package, PathBuf)],
    opts: &InstallOptions,
) -> Result<InstallReport> {
    for (pkg, path) in debs {
        verify_deb(pkg, path)?;
    }
    let mut work = tree.clone();
    let mut db = Db::load(&work, store)?;
    let mut report = InstallReport::default();
    for (pkg, path) in debs {
        let what = format!("package {} {}", pkg.name, pkg.version);
        let file =
            File::open(path).with_context(|| format!("{what}: opening {}", path.display()))?;
        let mut unpacker = Unpacker {
            tree: &mut work,
            store,
            pkg,
            what: &what,
            owners: &mut db.owners,
            list: Vec::new(),
            entries: 0,
            bytes: 0,
        };
        let control = read_deb(BufReader::new(file), &what, |data| unpacker.unpack(data))?;
        let (list, entries, bytes) = (
            std::mem::take(&mut unpacker.list),
            unpacker.entries,
            unpacker.bytes,
        );
        check_control(pkg, &control, &what)?;
        db.record(&mut work, store, pkg, &control, &list, opts)?;
        report
            .packages
            .push(format!("{} {}", pkg.name, pkg.version));
        report.entries += entries;
        report.bytes += bytes;
    }
    db.write_status(&mut work, store, opts)?;
    *tree = work;
    Ok(report)
}

/// Checks a downloaded `.deb` against the index: size, then sha256.
pub fn verify_deb(pkg: &Package, path: &Path) -> Result<()> {
    let what = format!("package {} {}", pkg.name, pkg.version);
    let file = File::open(path).with_context(|| format!("{what}: opening {}", path.display()))?;
    let (digest, size) = hash_reader(&mut BufReader::new(file))
        .with_context(|| format!("{what}: reading {}", path.display()))?;
    if digest.hex() != pkg.sha256 || size != pkg.size {
        bail!(
            "{what}: {} has sha256 {} ({size} bytes) but the index says sha256 {} ({} bytes); \
             nothing was installed",
            path.display(),
            digest.hex(),
            pkg.sha256,
            pkg.size
        );
    }
    Ok(())
}

fn check_control(pkg: &Package, c: &DebControl, what: &str) -> Result<()> {
    for (field, want) in [
        ("Package", &pkg.name),
        ("Version", &pkg.version),
        ("Architecture", &pkg.architecture),
    ] {
        let got = c.control.get(field).map(str::trim).unwrap_or("");
        if got != want.as_str() {
            bail!("{what}: the .deb's control says {field}: {got:?}, the index says {want:?}");
        }
    }
    Ok(())
}

/// The packages the image's `/var/lib/dpkg/status` lists as installed.
pub fn installed_packages(tree: &FsTree, store: &ContentStore) -> Result<Vec<Package>> {
    match read_tree_file(tree, store, STATUS)? {
        Some(b) => super::packages::parse_status(
            &String::from_utf8_lossy(&b),
            "/var/lib/dpkg/status of the image",
        ),
        None => Ok(Vec::new()),
    }
}

struct Unpacker<'a> {
    tree: &'a mut FsTree,
    store: &'a mut ContentStore,
    pkg: &'a Package,
    what: &'a str,
    /// Real path of every non-directory → owning package.
    owners: &'a mut HashMap<Vec<u8>, String>,
    /// `/.`, `/usr`, … as dpkg's `.list` has them.
    list: Vec<String>,
    entries: u64,
    bytes: u64,
}

impl Unpacker<'_> {
    fn unpack(&mut self, data: &mut dyn Read) -> Result<()> {
        let watch = HeaderWatch::new();
        let mut archive = tar::Archive::new(watch.guard(data));
        for entry in archive
            .entries()
            .with_context(|| format!("{}: reading data.tar", self.what))?
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => match record_error(&e) {
                    Some(r) => return Err(self.err(&r.name, r)),
                    None => {
                        return Err(anyhow!(e))
                            .with_context(|| format!("{}: reading data.tar", self.what))
                    }
                },
            };
            watch.after(&entry);
            self.entry(entry)?;
        }
        Ok(())
    }

    fn err(&self, raw: &[u8], why: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: entry {:?}: {why}", self.what, lossy(raw))
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        if raw.len() > MAX_PATH || link_len > MAX_PATH {
            return Err(self.err(
                &raw[..raw.len().min(200)],
                format!("path or link target longer than {MAX_PATH} bytes"),
            ));
        }
        if raw.first() == Some(&b'/') || split(&raw).contains(&&b".."[..]) {
            return Err(self.err(&raw, "path leaves the package root"));
        }
        let comps = split(&raw);
        self.entries += 1;
        let h = entry.header().clone();
        let old = h.as_old();
        let meta = Metadata::new(
            (h.mode().unwrap_or(0o644) & 0o7777) as u16,
            header_id(&old.uid, "uid").map_err(|k| self.err(&raw, k))?,
            header_id(&old.gid, "gid").map_err(|k| self.err(&raw, k))?,
            header_mtime(&old.mtime).map_err(|k| self.err(&raw, k))?,
        );
        let Some((name, parents)) = comps.split_last() else {
            self.list.push("/.".into());
            return Ok(());
        };
        self.list.push(format!("/{}", lossy(&comps.join(&b'/'))));
        let parent = resolve_dir(self.tree, parents, true).map_err(|e| self.err(&raw, e))?;
        let dir = parent.dir(self.tree);
        let real = parent.path(name);
        let existing = self.tree.lookup(dir, name);
        let typ = h.entry_type();
        if typ.is_dir() {
            return match existing.map(|id| &self.tree.inode(id).kind) {
                Some(InodeKind::Directory { .. }) => Ok(()),
                Some(InodeKind::Symlink { .. }) => resolve_dir(self.tree, &comps, false)
                    .map(|_| ())
                    .map_err(|e| {
                        self.err(
                            &raw,
                            format!("a symlink stands where the package has a directory and {e}"),
                        )
                    }),
                Some(other) => Err(self.err(
                    &raw,
                    format!(
                        "the image has a {} where the package has a directory",
                        other.describe()
                    ),
                )),
                None => {
                    let id = self.tree.add_inode(
                        InodeKind::Directory {
                            children: BTreeMap::new(),
                        },
                        meta,
                    );
                    self.tree.link(dir, name.to_vec(), id);
                    Ok(())
                }
            };
        }
        if let Some(id) = existing {
            if self.tree.inode(id).kind.is_dir() {
                return Err(self.err(
                    &raw,
                    format!("the image has a directory at {}", lossy(&real)),
                ));
            }
            if let Some(owner) = self.owners.get(&real) {
                let replaces = self.pkg.replaces.iter().flatten().any(|d| &d.name == owner);
                if owner != &self.pkg.name && !replaces {
                    bail!(
                        "{}: file /{} is already owned by package {owner} (and {} does not declare Replaces: {owner})",
                        self.what,
                        lossy(&real),
                        self.pkg.name
                    );
                }
            }
            self.tree.unlink(dir, name);
        }
        let link = || {
            entry
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default()
        };
        let inode = match typ {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let len = entry.size();
                let content = self
                    .store
                    .append_from(&mut entry, len)
                    .map_err(|e| self.err(&raw, format!("reading its data: {e}")))?;
                self.bytes += len;
                self.tree.add_inode(InodeKind::File { content }, meta)
            }
            tar::EntryType::Symlink => self
                .tree
                .add_inode(InodeKind::Symlink { target: link() }, meta),
            tar::EntryType::Link => {
                let target = link();
                let tcomps = split(&target);
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.err(&raw, "hardlink without a target"));
                };
                let tdir =
                    resolve_dir(self.tree, tparents, false).map_err(|e| self.err(&raw, e))?;
                let id = self
                    .tree
                    .lookup(tdir.dir(self.tree), tname)
                    .filter(|id| !self.tree.inode(*id).kind.is_dir())
                    .ok_or_else(|| {
                        self.err(
                            &raw,
                            format!("hardlink target {:?} is missing", lossy(&target)),
                        )
                    })?;
                self.tree.link(dir, name.to_vec(), id);
                self.owners.insert(real, self.pkg.name.clone());
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = if typ == tar::EntryType::Char {
                    InodeKind::CharDevice { major, minor }
                } else {
                    InodeKind::BlockDevice { major, minor }
                };
                self.tree.add_inode(kind, meta)
            }
            tar::EntryType::Fifo => self.tree.add_inode(InodeKind::Fifo, meta),
            other => return Err(self.err(&raw, format!("unsupported tar entry type {other:?}"))),
        };
        self.tree.link(dir, name.to_vec(), inode);
        self.owners.insert(real, self.pkg.name.clone());
        Ok(())
    }
}

/// The dpkg database of the tree being built.
struct Db {
    stanzas: Vec<Stanza>,
    owners: HashMap<Vec<u8>, String>,
}

impl Db {
    fn load(tree: &FsTree, store: &ContentStore) -> Result<Db> {
        let stanzas = match read_tree_file(tree, store, STATUS)? {
            Some(b) => deb822::parse(
                &String::from_utf8_lossy(&b),
                "/var/lib/dpkg/status of the image",
            )?,
            None => Vec::new(),
        };
        let mut owners = HashMap::new();
        let mut lists = Vec::new();
        if let Ok(info) = resolve_ro(tree, &split(INFO.as_bytes())) {
            for (name, id) in tree.children(info.dir(tree)) {
                if let (Some(pkg), InodeKind::File { content }) =
                    (name.strip_suffix(b".list"), &tree.inode(id).kind)
                {
                    let pkg = lossy(pkg);
                    let pkg = pkg.split(':').next().unwrap_or(&pkg).to_string();
                    lists.push((pkg, *content));
                }
            }
        }
        for (pkg, content) in lists {
            let text = store
                .read_all(&content)
                .context("reading a dpkg .list file of the image")?;
            for line in text.split(|&b| b == b'\n') {
                let comps = split(line);
                let Some((name, parents)) = comps.split_last() else {
                    continue;
                };
                let Ok(dir) = resolve_ro(tree, parents) else {
                    continue;
                };
                let d = dir.dir(tree);
                if tree
                    .lookup(d, name)
                    .is_some_and(|id| !tree.inode(id).kind.is_dir())
                {
                    owners.insert(dir.path(name), pkg.clone());
                }
            }
        }
        Ok(Db { stanzas, owners })
    }

    fn record(
        &mut self,
        tree: &mut FsTree,
        store: &mut ContentStore,
        pkg: &Package,
        control: &DebControl,
        list: &[String],
        opts: &InstallOptions,
    ) -> Result<()> {
        let base = format!("{INFO}/{}", pkg.dpkg_name());
        let mut text = list.join("\n");
        text.push('\n');
        write_tree_file(
            tree,
            store,
            &format!("{base}.list"),
            text.as_bytes(),
            0o644,
            opts.mtime,
        )?;
        for (member, (mode, data)) in &control.info {
            let mode = if *mode & 0o111 != 0 { 0o755 } else { 0o644 };
            write_tree_file(
                tree,
                store,
                &format!("{base}.{member}"),
                data,
                mode,
                opts.mtime,
            )?;
        }
        let mut st = Stanza::default();
        st.set("Package", &pkg.name);
        st.set("Status", "install ok installed");
        for (k, v) in &control.control.fields {
            if !k.eq_ignore_ascii_case("Package") && !k.eq_ignore_ascii_case("Status") {
                st.fields.push((k.clone(), v.clone()));
            }
        }
        if !control.conffiles.is_empty() {
            let mut v = String::new();
            for c in &control.conffiles {
                let data = read_tree_file(tree, store, c)?.unwrap_or_default();
                v.push_str(&format!("\n {c} {}", md5_hex(&data)));
            }
            // dpkg puts Conffiles before Description.
            let at = st
                .fields
                .iter()
                .position(|(k, _)| k.eq_ignore_ascii_case("Description"));
            let at = at.unwrap_or(st.fields.len());
            st.fields.insert(at, ("Conffiles".into(), v));
        }
        let key = |s: &Stanza| {
            (
                s.get("Package").map(str::to_string),
                s.get("Architecture").map(str::to_string),
            )
        };
        let same_name_multiarch = pkg.multi_arch == super::MultiArch::Same;
        self.stanzas.retain(|s| {
            if same_name_multiarch {
                key(s) != key(&st)
            } else {
                s.get("Package") != Some(pkg.name.as_str())
            }
        });
        self.stanzas.push(st);
        Ok(())
    }

    fn write_status(
        &mut self,
        tree: &mut FsTree,
        store: &mut ContentStore,
        opts: &InstallOptions,
    ) -> Result<()> {
        self.stanzas.sort_by(|a, b| {
            (a.get("Package"), a.get("Architecture"))
                .cmp(&(b.get("Package"), b.get("Architecture")))
        });
        let text: Vec<String> = self.stanzas.iter().map(Stanza::render).collect();
        let mut text = text.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_tree_file(tree, store, STATUS, text.as_bytes(), 0o644, opts.mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::deb::tests::build_deb;
    use crate::apt::packages::parse_index;
    use crate::oci::Digest;

    struct Fx {
        tree: FsTree,
        store: ContentStore,
        dir: tempfile::TempDir,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let store = ContentStore::new_in(dir.path()).unwrap();
            let mut fx = Fx {
                tree: FsTree::new(),
                store,
                dir,
            };
            // A usrmerged base: lib -> usr/lib, and a package owning a file.
            resolve_dir(&mut fx.tree, &[b"usr", b"lib"], true).unwrap();
            fx.symlink("lib", "usr/lib");
            fx.write("usr/bin/base-tool", b"x", 0o755);
            fx.write(
                "var/lib/dpkg/info/base.list",
                b"/.\n/usr\n/usr/bin\n/usr/bin/base-tool\n",
                0o644,
            );
            fx.write(
                STATUS,
                b"Package: base\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n",
                0o644,
            );
            fx
        }

        fn deb(&self, name: &str, extra: &str, files: &[(&str, u32, &[u8])]) -> (Package, PathBuf) {
            let control = format!(
                "Package: {name}\nVersion: 1.0\nArchitecture: amd64\n{extra}Description: test\n"
            );
            let deb = build_deb(
                &control,
                &[
                    ("conffiles", b"/etc/x.conf\n"),
                    ("postinst", b"#!/bin/sh\nexit 0\n"),
                ],
                files,
            );
            let path = self.dir.path().join(format!("{name}.deb"));
            std::fs::write(&path, &deb).unwrap();
            let idx = format!(
                "{control}Filename: pool/{name}.deb\nSize: {}\nSHA256: {}\n",
                deb.len(),
                Digest::of(&deb).hex()
            );
            (parse_index(&idx, "test").unwrap().remove(0), path)
        }

        /// Installs `debs` with the default options.
        fn install(&mut self, debs: &[(Package, PathBuf)]) -> Result<InstallReport> {
            install_debs(
                &mut self.tree,
                &mut self.store,
                debs,
                &InstallOptions::default(),
            )
        }

        /// Makes `/name` a symlink to `target`.
        fn symlink(&mut self, name: &str, target: &str) {
            let root = self.tree.root();
            let l = self.tree.add_inode(
                InodeKind::Symlink {
                    target: target.as_bytes().to_vec(),
                },
                Metadata::new(0o777, 0, 0, 0),
            );
            self.tree.link(root, name.as_bytes().to_vec(), l);
        }

        /// Writes a file owned by root at time 0.
        fn write(&mut self, path: &str, data: &[u8], mode: u16) {
            write_tree_file(&mut self.tree, &mut self.store, path, data, mode, 0).unwrap();
        }

        fn read(&mut self, p: &str) -> String {
            String::from_utf8(read_tree_file(&self.tree, &self.store, p).unwrap().unwrap()).unwrap()
        }
    }

    #[test]
    fn unpacks_through_usrmerge_and_records() {
        let mut fx = Fx::new();
        let d = fx.deb(
            "foo",
            "",
            &[
                ("./", 0o755, b""),
                ("./lib/", 0o700, b""),
                ("./lib/libfoo.so.1", 0o644, b"elf"),
                ("./etc/x.conf", 0o644, b"abc"),
                ("./usr/bin/foo -> ../lib/libfoo.so.1", 0o777, b""),
            ],
        );
        let report = install_debs(
            &mut fx.tree,
            &mut fx.store,
            &[d],
            &InstallOptions { mtime: 7 },
        )
        .unwrap();
        assert_eq!(report.packages, ["foo 1.0"]);
        // The file went through the symlink; the symlink stays.
        let f = fx.tree.lookup_path(b"usr/lib/libfoo.so.1").unwrap();
        assert_eq!(fx.tree.inode(f).meta.mode, 0o644);
        assert!(matches!(
            fx.tree.inode(fx.tree.lookup_path(b"lib").unwrap()).kind,
            InodeKind::Symlink { .. }
        ));
        assert_eq!(
            fx.read("var/lib/dpkg/info/foo.list"),
            "/.\n/lib\n/lib/libfoo.so.1\n/etc/x.conf\n/usr/bin/foo\n"
        );
        assert_eq!(fx.read("var/lib/dpkg/info/foo.conffiles"), "/etc/x.conf\n");
        let id = fx
            .tree
            .lookup_path(b"var/lib/dpkg/info/foo.postinst")
            .unwrap();
        assert_eq!(fx.tree.inode(id).meta.mode, 0o755);
        let status = fx.read(STATUS);
        assert!(status.starts_with("Package: base\n"), "{status}");
        assert!(
            status.contains("\nPackage: foo\nStatus: install ok installed\nVersion: 1.0\n"),
            "{status}"
        );
        assert!(
            status.contains(&format!(
                "Conffiles:\n /etc/x.conf {}\nDescription",
                md5_hex(b"abc")
            )),
            "{status}"
        );
        let installed = crate::apt::parse_status(&status, "status").unwrap();
        assert_eq!(installed.len(), 2);
    }

    #[test]
    fn owned_file_conflict_and_replaces() {
        let mut fx = Fx::new();
        let d = fx.deb("bar", "", &[("./usr/bin/base-tool", 0o755, b"y")]);
        let e = fx.install(&[d]).unwrap_err().to_string();
        assert!(
            e.contains("file /usr/bin/base-tool is already owned by package base"),
            "{e}"
        );
        assert!(e.contains("package bar"), "{e}");
        // Nothing was merged.
        assert!(fx.tree.lookup_path(b"var/lib/dpkg/info/bar.list").is_none());
        let d = fx.deb(
            "bar",
            "Replaces: base\n",
            &[("./usr/bin/base-tool", 0o755, b"y")],
        );
        fx.install(&[d]).unwrap();
        assert_eq!(fx.read("usr/bin/base-tool"), "y");
    }

    #[test]
    fn escaping_and_looping_symlinks() {
        let mut fx = Fx::new();
        for (n, t) in [("up", "../../x"), ("loop1", "loop2"), ("loop2", "loop1")] {
            fx.symlink(n, t);
        }
        let d = fx.deb("esc", "", &[("./up/f", 0o644, b"")]);
        let e = fx.install(&[d]).unwrap_err().to_string();
        assert!(
            e.contains("package esc")
                && e.contains("\"up/f\"")
                && e.contains("above the image root"),
            "{e}"
        );
        let d = fx.deb("lp", "", &[("./loop1/f", 0o644, b"")]);
        let e = fx.install(&[d]).unwrap_err().to_string();
        assert!(
            e.contains("package lp") && e.contains("too many levels of symlinks"),
            "{e}"
        );
        // Absolute symlinks resolve from the tree root.
        fx.symlink("lib64", "/usr/lib");
        let d = fx.deb("abs", "", &[("./lib64/ld.so", 0o755, b"ld")]);
        fx.install(&[d]).unwrap();
        assert!(fx.tree.lookup_path(b"usr/lib/ld.so").is_some());
    }

    #[test]
    fn hash_mismatch_installs_nothing() {
        let mut fx = Fx::new();
        let (mut p, path) = fx.deb("foo", "", &[("./a", 0o644, b"a")]);
        p.sha256 = "ab".repeat(32);
        let before = fx.tree.entry_count();
        let e = fx.install(&[(p, path)]).unwrap_err().to_string();
        assert!(
            e.contains("package foo 1.0")
                && e.contains(&"ab".repeat(32))
                && e.contains("nothing was installed"),
            "{e}"
        );
        assert_eq!(fx.tree.entry_count(), before);
    }
}

//! The module indexes written from the .ko files, checked against the
//! reference: host `depmod -b` over the same module files must write the
//! same bytes, and libkmod's own `modprobe`, given only our .bin files,
//! must resolve dependencies and aliases as it does with depmod's. Debian
//! 12's modules are plain `.ko` files under /lib; Debian 13's are `.ko.xz`
//! under /usr/lib.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::kmod::depmod::{self, write_indexes, INDEX_FILES};
use build_image::kmod::ModuleIndex;
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::boot::{deb_tree, editor, file_bytes};
use common::fixtures::{debian_kernel_deb, debian_kernel_deb_for, debian_release_kernel_deb};
use common::require_tool;

/// Copies the regular files below `dir` of the tree to `dest` (the .ko
/// files plus whatever else the package put there).
fn extract(tree: &FsTree, store: &ContentStore, dir: &str, dest: &Path) {
    let prefix = format!("{dir}/");
    let mut files = Vec::new();
    tree.walk(|p, id| {
        let p = String::from_utf8_lossy(p);
        if let Some(rel) = p.strip_prefix(&prefix) {
            if let InodeKind::File { content } = &tree.inode(id).kind {
                files.push((rel.to_string(), *content));
            }
        }
    });
    for (rel, content) in files {
        let path = dest.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, store.read_all(&content).unwrap()).unwrap();
    }
}

/// Runs host depmod over a copy of the tree's modules (without any index
/// files of ours) and returns the root it wrote into.
fn reference_depmod(tree: &FsTree, store: &ContentStore, dir: &str, version: &str, root: &Path) {
    require_tool("depmod", "kmod");
    let moddir = root.join("lib/modules").join(version);
    extract(tree, store, dir, &moddir);
    for f in INDEX_FILES {
        let _ = fs::remove_file(moddir.join(f));
    }
    let out = Command::new("depmod")
        .arg("-b")
        .arg(root)
        .arg(version)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "depmod -b {} {version}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hard-links the module files below `from` into `to` (no index files).
fn link_modules(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            link_modules(&e.path(), &to.join(&name));
        } else if ty.is_file() && name.to_string_lossy().contains(".ko") {
            fs::hard_link(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `modprobe` against the module tree under `root`, with no configuration
/// from the host.
fn modprobe(root: &Path, version: &str, args: &[&str]) -> (bool, String) {
    require_tool("modprobe", "kmod");
    let conf = root.join("empty.conf");
    fs::write(&conf, "").unwrap();
    let out = Command::new("modprobe")
        .arg("-C")
        .arg(&conf)
        .arg("-d")
        .arg(root)
        .arg("-S")
        .arg(version)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&root.display().to_string(), "ROOT");
    (out.status.success(), text)
}

/// First lines of the differences between two texts, for messages.
fn first_difference(ours: &[u8], theirs: &[u8]) -> String {
    let (a, b) = (
        String::from_utf8_lossy(ours),
        String::from_utf8_lossy(theirs),
    );
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}: ours {x:?}, depmod {y:?}", i + 1);
        }
    }
    let i = ours
        .iter()
        .zip(theirs)
        .position(|(x, y)| x != y)
        .unwrap_or(ours.len().min(theirs.len()));
    format!(
        "{} vs {} bytes, first difference at byte {i}",
        ours.len(),
        theirs.len()
    )
}

struct Checked {
    version: String,
    ours: PathBuf,
    reference: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Writes the indexes for the kernel of `deb`, checks them byte for byte
/// against depmod, and leaves two roots for modprobe: one with only our
/// .bin files, one as depmod wrote it.
fn check_against_depmod(deb: &Path) -> Checked {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let mut tree = deb_tree(deb, &mut store);
    let versions = ModuleIndex::versions(&tree);
    assert_eq!(versions.len(), 1, "{versions:?}");
    let version = versions[0].clone();
    // Where the package put the modules: /lib or, merged-/usr, /usr/lib.
    let dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| format!("{d}/{version}"))
        .find(|d| tree.lookup_path(d.as_bytes()).is_some())
        .unwrap();

    let summary = write_indexes(&mut tree, &mut store, &version).unwrap();
    assert_eq!(summary.dir, dir);
    assert!(summary.modules > 1000, "{summary:?}");
    assert!(summary.aliases > 10_000, "{summary:?}");
    assert!(summary.symbols > 10_000, "{summary:?}");
    assert!(summary.builtin > 100, "{summary:?}");
    assert_eq!(summary.files, INDEX_FILES, "every file written");

    // The package's newest file time, as the tree holds it.
    let newest = {
        let mut t = i64::MIN;
        let prefix = format!("{dir}/");
        tree.walk(|p, id| {
            if p.starts_with(prefix.as_bytes()) && !tree.inode(id).kind.is_dir() {
                let name = String::from_utf8_lossy(p);
                if !INDEX_FILES.iter().any(|f| name.ends_with(&format!("/{f}"))) {
                    t = t.max(tree.inode(id).meta.mtime);
                }
            }
        });
        t
    };
    for f in INDEX_FILES {
        let id = tree
            .lookup_path(format!("{dir}/{f}").as_bytes())
            .unwrap_or_else(|| panic!("{f} not written"));
        let meta = &tree.inode(id).meta;
        assert_eq!(
            (meta.mode, meta.uid, meta.gid, meta.mtime),
            (0o644, 0, 0, newest),
            "{f}"
        );
    }

    let reference = tmp.path().join("reference");
    reference_depmod(&tree, &store, &dir, &version, &reference);
    // Both roots have the modules where depmod and modprobe look.
    let refdir = reference.join("lib/modules").join(&version);
    let mut differ = Vec::new();
    for f in INDEX_FILES {
        let ours = file_bytes(&tree, &store, &format!("{dir}/{f}"));
        let theirs = fs::read(refdir.join(f)).unwrap();
        if ours != theirs {
            differ.push(format!("{f}: {}", first_difference(&ours, &theirs)));
        }
    }
    assert!(
        differ.is_empty(),
        "differs from depmod:\n{}",
        differ.join("\n")
    );

    // Writing again replaces the files with the same bytes: the indexes do
    // not read themselves, and the output is deterministic.
    let before: Vec<Vec<u8>> = INDEX_FILES
        .iter()
        .map(|f| file_bytes(&tree, &store, &format!("{dir}/{f}")))
        .collect();
    let entries = tree.entry_count();
    let again = depmod::compute(&tree, &store, &version).unwrap();
    assert_eq!(again.summary, summary);
    for ((name, data), old) in again.files.iter().zip(&before) {
        assert!(data == old, "{name} changed on the second run");
    }
    write_indexes(&mut tree, &mut store, &version).unwrap();
    assert_eq!(tree.entry_count(), entries, "files replaced, not added");

    // A root holding the module files (hard links to the reference copy)
    // and of our files only those libkmod reads: the .bin indexes and
    // modules.softdep.
    let ours = tmp.path().join("ours");
    let ourdir = ours.join("lib/modules").join(&version);
    link_modules(&refdir, &ourdir);
    for f in INDEX_FILES
        .iter()
        .filter(|f| f.ends_with(".bin") || **f == "modules.softdep")
    {
        fs::write(
            ourdir.join(f),
            file_bytes(&tree, &store, &format!("{dir}/{f}")),
        )
        .unwrap();
    }
    Checked {
        version,
        ours,
        reference,
        _tmp: tmp,
    }
}

/// modprobe resolves every module's dependencies and a sample of aliases
/// from our files alone exactly as from depmod's full output.
fn check_modprobe(c: &Checked, aliases: &[(&str, &str)]) {
    let dep = fs::read_to_string(
        c.reference
            .join("lib/modules")
            .join(&c.version)
            .join("modules.dep"),
    )
    .unwrap();
    let names: Vec<String> = dep
        .lines()
        .map(|l| {
            let file = l.split(':').next().unwrap().rsplit('/').next().unwrap();
            file.split('.').next().unwrap().replace('-', "_")
        })
        .collect();
    let mut args = vec!["-a", "--show-depends"];
    args.extend(names.iter().map(String::as_str));
    let (ok, ours) = modprobe(&c.ours, &c.version, &args);
    assert!(ok, "modprobe --show-depends failed on our indexes:\n{ours}");
    let (ok, theirs) = modprobe(&c.reference, &c.version, &args);
    assert!(ok, "modprobe --show-depends failed on depmod's indexes");
    assert_eq!(
        ours.lines().filter(|l| l.starts_with("insmod ")).count(),
        theirs.lines().filter(|l| l.starts_with("insmod ")).count()
    );
    assert!(ours == theirs, "--show-depends differs");
    assert!(
        ours.lines().count() >= names.len(),
        "one line or more per module:\n{}",
        &ours[..ours.len().min(2000)]
    );
    let ext4: Vec<&str> = ours
        .lines()
        .skip_while(|l| !l.contains("/jbd2.ko"))
        .take(4)
        .collect();
    assert!(
        ext4.iter()
            .any(|l| l.ends_with("/fs/ext4/ext4.ko ") || l.ends_with("/fs/ext4/ext4.ko.xz ")),
        "jbd2 loads right before ext4 and its other dependencies: {ext4:?}"
    );

    for (alias, want) in aliases {
        let (ok, ours) = modprobe(&c.ours, &c.version, &["-R", alias]);
        assert!(ok, "modprobe -R {alias} failed on our indexes");
        let (_, theirs) = modprobe(&c.reference, &c.version, &["-R", alias]);
        assert_eq!(ours, theirs, "{alias}");
        assert!(
            ours.lines().any(|l| l == *want),
            "{alias} resolves to {ours:?}, expected {want}"
        );
    }
}

#[test]
fn amd64_indexes_equal_depmod_and_modprobe_reads_them() {
    let c = check_against_depmod(&debian_kernel_deb("amd64"));
    check_modprobe(
        &c,
        &[
            (
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "virtio_pci",
            ),
            (
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "virtio_pci",
            ),
            ("virtio:d00000002v00001AF4", "virtio_blk"),
            ("virtio:d00000001v00001AF4", "virtio_net"),
            ("fs-ext4", "ext4"),
            ("fs-squashfs", "squashfs"),
            ("symbol:jbd2_journal_start", "jbd2"),
            ("nvme", "nvme"),
            // Built-in aliases come from modules.builtin.alias.bin.
            ("net-pf-1", "unix"),
        ],
    );
}

/// Debian 13: `.ko.xz` modules under /usr/lib/modules.
#[test]
fn compressed_modules_indexes_equal_depmod_and_modprobe_reads_them() {
    let c = check_against_depmod(&debian_release_kernel_deb("trixie", "amd64"));
    check_modprobe(
        &c,
        &[
            ("virtio:d00000002v00001AF4", "virtio_blk"),
            ("virtio:d00000001v00001AF4", "virtio_net"),
            ("fs-ext4", "ext4"),
            ("fs-squashfs", "squashfs"),
            ("symbol:jbd2_journal_start", "jbd2"),
        ],
    );
}

#[test]
fn arm64_indexes_equal_depmod_and_modprobe_reads_them() {
    let c = check_against_depmod(&debian_kernel_deb_for("arm64"));
    check_modprobe(
        &c,
        &[
            ("virtio:d00000002v00001AF4", "virtio_blk"),
            ("fs-ext4", "ext4"),
            ("of:NvirtioT(null)Cvirtio,mmio", "virtio_mmio"),
            ("symbol:jbd2_journal_start", "jbd2"),
        ],
    );
}

/// On a merged-/usr tree (/lib a symlink to usr/lib) the files land in
/// /usr/lib/modules/VERSION.
#[test]
fn merged_usr_tree_gets_indexes_under_usr_lib() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let deb = deb_tree(&debian_kernel_deb("amd64"), &mut store);
    let version = ModuleIndex::versions(&deb).remove(0);
    // Only a few modules, to keep it quick: ext4 and what it needs.
    let idx = ModuleIndex::scan(&deb, &store, &version).unwrap();
    let keep = idx.closure(&["ext4", "virtio_blk"]).unwrap();
    let mut tree = FsTree::new();
    let mut ed = editor(&mut tree, &mut store);
    ed.symlink("lib", "usr/lib").unwrap();
    let dir = format!("usr/lib/modules/{version}");
    for m in &keep {
        let id = deb.lookup_path(m.path.as_bytes()).unwrap();
        let path = format!("{dir}/{}", m.rel_path);
        let (parent, name) = path.rsplit_once('/').unwrap();
        ed.mkdir(parent, 0o755).unwrap();
        let p = ed.lookup(parent).unwrap();
        let kind = deb.inode(id).kind.clone();
        let f = ed
            .tree
            .add_inode(kind, Metadata::new(0o644, 0, 0, 1_700_000_000));
        ed.tree.link(p, name.as_bytes().to_vec(), f);
    }
    // A stale index from an older run is replaced.
    let d = tree.lookup_path(dir.as_bytes()).unwrap();
    let stale = tree.add_inode(
        InodeKind::File {
            content: store.append(b"stale").unwrap(),
        },
        Metadata::new(0o600, 1, 1, 5),
    );
    tree.link(d, b"modules.dep".to_vec(), stale);

    let summary = write_indexes(&mut tree, &mut store, &version).unwrap();
    assert_eq!(summary.dir, dir);
    assert_eq!(summary.modules, keep.len());
    assert_eq!(summary.builtin, 0);
    assert!(
        !summary
            .files
            .iter()
            .any(|f| f.starts_with("modules.builtin")),
        "no builtin indexes without modules.builtin: {:?}",
        summary.files
    );
    let dep = String::from_utf8(file_bytes(&tree, &store, &format!("{dir}/modules.dep"))).unwrap();
    let lines: BTreeMap<&str, &str> = dep.lines().map(|l| l.split_once(':').unwrap()).collect();
    let ext4 = lines
        .iter()
        .find(|(k, _)| k.ends_with("/ext4.ko"))
        .map(|(_, v)| *v)
        .unwrap();
    for d in ["jbd2.ko", "mbcache.ko"] {
        assert!(ext4.contains(d), "ext4 needs {d}: {ext4:?}");
    }
    let id = tree
        .lookup_path(format!("{dir}/modules.dep").as_bytes())
        .unwrap();
    let meta = &tree.inode(id).meta;
    assert_eq!((meta.mode, meta.uid, meta.mtime), (0o644, 0, 1_700_000_000));
    assert!(
        tree.lookup_path(b"lib/modules").is_none(),
        "nothing written under the symlink"
    );

    let e = write_indexes(&mut tree, &mut store, "6.0.0-none").unwrap_err();
    assert!(
        format!("{e:#}").contains("no module directory for kernel 6.0.0-none"),
        "{e:#}"
    );
}

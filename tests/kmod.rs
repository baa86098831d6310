//! Kernel module metadata and closures on real Debian kernels, checked
//! against the reference tools: our transitive dependencies of every module
//! must equal what `depmod` writes to modules.dep (Debian 13's `.ko.xz`
//! modules: tests/kmod_depmod.rs), every closure must load dependencies
//! first, and the initramfs of Debian 13's kernel carries its compressed
//! modules uncompressed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use build_image::kmod::{normalise, ModuleIndex};
use build_image::tree::ContentStore;
use common::boot::deb_tree;
use common::fixtures::{debian_kernel_deb, debian_release_kernel_deb};
use common::require_tool;

fn transitive(idx: &ModuleIndex, name: &str, out: &mut BTreeSet<String>) {
    for d in &idx.modules[name].info.depends {
        if idx.modules.contains_key(d) && out.insert(d.clone()) {
            transitive(idx, d, out);
        }
    }
}

#[test]
fn dependencies_match_depmod_for_every_module() {
    dependencies_match_depmod(&debian_kernel_deb("amd64"), ".ko");
}

fn dependencies_match_depmod(deb: &std::path::Path, suffix: &str) {
    require_tool("depmod", "kmod");
    require_tool("dpkg-deb", "dpkg");
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let tree = deb_tree(deb, &mut store);

    let versions = ModuleIndex::versions(&tree);
    assert_eq!(versions.len(), 1, "{versions:?}");
    let version = &versions[0];
    let idx = ModuleIndex::scan(&tree, &store, version).unwrap();
    assert!(
        idx.modules.len() > 3000,
        "only {} modules",
        idx.modules.len()
    );
    assert!(idx.builtin.contains("unix") || !idx.builtin.is_empty());
    assert!(
        idx.modules.values().all(|m| m.rel_path.ends_with(suffix)),
        "not every module file ends in {suffix}"
    );

    // The reference: depmod over the same files.
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(x.success());
    // A package of a merged-/usr release ships only /usr/lib/modules;
    // kmod 30's depmod looks under /lib.
    if !root.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    }
    let d = Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(version)
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(version))
        .find(|d| d.is_dir())
        .unwrap();
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let name_of = |p: &str| {
        let file = p.rsplit('/').next().unwrap();
        normalise(file.split_once(".ko").map_or(file, |(stem, _)| stem))
    };
    let mut reference: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        reference.insert(
            name_of(module),
            deps.split_whitespace().map(name_of).collect(),
        );
    }
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        idx.modules.keys().collect::<Vec<_>>(),
        "module sets differ"
    );
    let mut mismatches = Vec::new();
    for (name, want) in &reference {
        let mut got = BTreeSet::new();
        transitive(&idx, name, &mut got);
        if &got != want {
            mismatches.push(format!("{name}: ours {got:?}, depmod {want:?}"));
        }
        assert_eq!(
            idx.modules[name].rel_path,
            dep.lines()
                .find(|l| name_of(l.split(':').next().unwrap()) == *name)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} modules differ, e.g.:\n{}",
        mismatches.len(),
        reference.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}

#[test]
fn initramfs_closure_loads_dependencies_first() {
    require_tool("dpkg-deb", "dpkg");
    let deb = debian_kernel_deb("amd64");
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let tree = deb_tree(&deb, &mut store);
    let version = ModuleIndex::versions(&tree).remove(0);
    let idx = ModuleIndex::scan(&tree, &store, &version).unwrap();

    // What os-init needs to find and mount its root on common hardware.
    let wanted = [
        "virtio_blk",
        "virtio_pci",
        "virtio_scsi",
        "nvme",
        "ahci",
        "sd_mod",
        "sr_mod",
        "usb_storage",
        "uas",
        "xhci_pci",
        "mmc_block",
        "squashfs",
        "overlay",
        "ext4",
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "isofs",
        "loop",
    ];
    let closure = idx.closure(&wanted).unwrap();
    let order: Vec<&str> = closure.iter().map(|m| m.info.name.as_str()).collect();
    let pos: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    for m in &closure {
        for d in &m.info.depends {
            if let Some(&p) = pos.get(d.as_str()) {
                assert!(
                    p < pos[m.info.name.as_str()],
                    "{d} must load before {}",
                    m.info.name
                );
            } else {
                assert!(
                    idx.builtin.contains(d),
                    "{d} (needed by {}) is missing",
                    m.info.name
                );
            }
        }
    }
    for w in wanted {
        assert!(
            pos.contains_key(w) || idx.builtin.contains(w),
            "{w} neither in the closure nor built in"
        );
    }
    // Debian 6.1: these are modules, with their dependencies.
    for (m, dep) in [
        ("ext4", "jbd2"),
        ("ext4", "mbcache"),
        ("virtio_blk", "virtio_ring"),
    ] {
        if pos.contains_key(m) {
            assert!(
                pos.contains_key(dep) || idx.builtin.contains(dep),
                "{m} without {dep}"
            );
        }
    }
    // The same request twice gives the same order.
    let again: Vec<&str> = idx
        .closure(&wanted)
        .unwrap()
        .iter()
        .map(|m| m.info.name.as_str())
        .collect();
    assert_eq!(order, again);
}

/// The initramfs of a kernel whose modules are `.ko.xz` carries them
/// decompressed, as `.ko`, so os-init's finit_module loads them without
/// the kernel's decompressor; its load list names those files.
#[test]
fn initramfs_carries_compressed_modules_uncompressed() {
    require_tool("dpkg-deb", "dpkg");
    require_tool("cpio", "cpio");
    let deb = debian_release_kernel_deb("trixie", "amd64");
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let tree = deb_tree(&deb, &mut store);
    let version = ModuleIndex::versions(&tree).remove(0);
    let idx = ModuleIndex::scan(&tree, &store, &version).unwrap();
    assert!(idx.modules["ext4"].rel_path.ends_with(".ko.xz"));
    let (cpio, loaded) = build_image::initramfs::build(
        &idx,
        &tree,
        &mut store,
        b"#!/bin/sh\n",
        build_image::initramfs::BOOT_MODULES,
    )
    .unwrap();
    for m in ["ext4", "jbd2", "squashfs", "overlay", "virtio_blk"] {
        assert!(loaded.iter().any(|l| l == m), "{m} not loaded: {loaded:?}");
    }
    let root = tmp.path().join("initrd");
    std::fs::create_dir(&root).unwrap();
    let mut child = Command::new("cpio")
        .args(["-id", "--quiet"])
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&cpio).unwrap();
    assert!(child.wait().unwrap().success());
    let list = std::fs::read_to_string(root.join("lib/modules/os-init.load")).unwrap();
    assert_eq!(list.lines().count(), loaded.len());
    for line in list.lines() {
        assert!(line.ends_with(".ko"), "{line}");
        let data = std::fs::read(root.join(line.trim_start_matches('/'))).unwrap();
        assert_eq!(
            &data[..4],
            b"\x7fELF",
            "{line} is not an uncompressed module"
        );
    }
    let ext4 = list.lines().find(|l| l.ends_with("/ext4.ko")).unwrap();
    assert_eq!(
        ext4,
        format!(
            "/lib/modules/{version}/{}",
            idx.modules["ext4"].rel_path.trim_end_matches(".xz")
        )
    );
}

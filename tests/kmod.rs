//! Kernel module metadata and closures on a real Debian kernel, checked
//! against the reference tools: our transitive dependencies of every module
//! must equal what `depmod` writes to modules.dep, and every closure must
//! load dependencies first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use build_image::kmod::{normalise, ModuleIndex};
use build_image::tree::ContentStore;
use common::boot::deb_tree;
use common::fixtures::debian_kernel_deb;
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
    require_tool("depmod", "kmod");
    require_tool("dpkg-deb", "dpkg");
    let deb = debian_kernel_deb("amd64");
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let tree = deb_tree(&deb, &mut store);

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

    // The reference: depmod over the same files.
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(x.success());
    let d = Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(version)
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let dep = std::fs::read_to_string(root.join("lib/modules").join(version).join("modules.dep"))
        .unwrap();
    let name_of = |p: &str| normalise(p.rsplit('/').next().unwrap().trim_end_matches(".ko"));
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

//! Kernel modules, read from their files: what each one is, what it needs,
//! and the closure of a set of modules in load order.
//!
//! Everything comes from the `.modinfo` ELF section of each `.ko` (plain,
//! `.ko.xz`, `.ko.zst` or `.ko.gz`) and from `modules.builtin`, so it works
//! for any target architecture without running anything from the image —
//! the initramfs builder uses it to pick the storage and filesystem modules
//! `os-init` loads.
//!
//! Entry points: [`ModuleIndex::scan`], then [`ModuleIndex::closure`].

mod compat;
pub mod depmod;
mod elf;
pub mod index;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use anyhow::{bail, Context, Result};

use crate::tree::{ContentStore, FsTree, InodeId, InodeKind};

/// What a module's `.modinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: String,
    pub depends: Vec<String>,
    /// `softdep=pre: a b post: c` — modules to load before this one.
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
    pub aliases: Vec<String>,
    pub firmware: Vec<String>,
    pub vermagic: String,
}

/// Module names treat `-` and `_` alike; the canonical form uses `_`.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

impl ModInfo {
    /// Parses the `.modinfo` section of an (uncompressed) module file.
    pub fn from_module(file: &[u8]) -> Result<ModInfo> {
        let sec = elf::section(file, ".modinfo")?
            .ok_or_else(|| anyhow::anyhow!("no .modinfo section"))?;
        let mut info = ModInfo::default();
        for field in sec.split(|&b| b == 0).filter(|f| !f.is_empty()) {
            let field = String::from_utf8_lossy(field);
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "name" => info.name = normalise(value),
                "depends" => info
                    .depends
                    .extend(value.split(',').filter(|d| !d.is_empty()).map(normalise)),
                "softdep" => {
                    let mut list: Option<&mut Vec<String>> = None;
                    for word in value.split_whitespace() {
                        match word {
                            "pre:" => list = Some(&mut info.softdep_pre),
                            "post:" => list = Some(&mut info.softdep_post),
                            w => {
                                if let Some(l) = list.as_deref_mut() {
                                    l.push(normalise(w))
                                }
                            }
                        }
                    }
                }
                "alias" => info.aliases.push(value.to_string()),
                "firmware" => info.firmware.push(value.to_string()),
                "vermagic" => info.vermagic = value.trim().to_string(),
                _ => {}
            }
        }
        Ok(info)
    }
}

/// A module file found in the tree.
#[derive(Debug, Clone)]
pub struct Module {
    /// Path inside the tree (`lib/modules/6.1.0-28-amd64/kernel/…/x.ko`).
    pub path: String,
    /// Path relative to the version directory (`kernel/…/x.ko`), as
    /// `modules.dep` writes it.
    pub rel_path: String,
    pub inode: InodeId,
    pub info: ModInfo,
}

/// Every module of one kernel version in a tree.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    pub version: String,
    /// The directory inside the tree (`lib/modules/VERSION`).
    pub dir: String,
    pub modules: BTreeMap<String, Module>,
    /// Names built into the kernel (from `modules.builtin`).
    pub builtin: BTreeSet<String>,
}

/// Reads a module file, decompressing by its extension (`.ko.xz`,
/// `.ko.zst`, `.ko.gz`; a plain `.ko` as it is).
pub fn read_module(
    store: &ContentStore,
    content: &crate::tree::ContentRef,
    path: &str,
) -> Result<Vec<u8>> {
    let raw = store
        .read_all(content)
        .with_context(|| format!("reading {path}"))?;
    let mut out = Vec::new();
    if path.ends_with(".ko.xz") {
        liblzma::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {path}"))?;
    } else if path.ends_with(".ko.zst") {
        out =
            zstd::stream::decode_all(&raw[..]).with_context(|| format!("decompressing {path}"))?;
    } else if path.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {path}"))?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// The path of a module file once decompressed: `x.ko.xz` → `x.ko`.
pub fn uncompressed_path(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext).filter(|p| p.ends_with(".ko")))
        .unwrap_or(path)
}

fn module_stem(file_name: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
}

impl ModuleIndex {
    /// Kernel versions with a module directory in the tree, sorted.
    pub fn versions(tree: &FsTree) -> Vec<String> {
        let mut v = BTreeSet::new();
        for base in ["lib/modules", "usr/lib/modules"] {
            if let Some(dir) = tree.lookup_path(base.as_bytes()) {
                for (name, id) in tree.children(dir) {
                    if tree.inode(id).kind.is_dir() {
                        v.insert(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
        v.into_iter().collect()
    }

    /// Reads every module of kernel `version` (under `lib/modules` or
    /// `usr/lib/modules`).
    pub fn scan(tree: &FsTree, store: &ContentStore, version: &str) -> Result<ModuleIndex> {
        let dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|b| format!("{b}/{version}"))
            .find(|d| {
                tree.lookup_path(d.as_bytes())
                    .is_some_and(|id| tree.inode(id).kind.is_dir())
            })
            .ok_or_else(|| {
                anyhow::anyhow!("no module directory for kernel {version} (lib/modules/{version})")
            })?;
        let mut index = ModuleIndex {
            version: version.to_string(),
            dir: dir.clone(),
            ..Default::default()
        };
        let mut found: Vec<(String, InodeId)> = Vec::new();
        let prefix = format!("{dir}/");
        tree.walk(|path, id| {
            let p = String::from_utf8_lossy(path);
            if p.starts_with(&prefix)
                && matches!(tree.inode(id).kind, InodeKind::File { .. })
                && module_stem(p.rsplit('/').next().unwrap_or("")).is_some()
            {
                found.push((p.into_owned(), id));
            }
        });
        for (path, id) in found {
            let InodeKind::File { content } = &tree.inode(id).kind else {
                continue;
            };
            let bytes = read_module(store, content, &path)?;
            let mut info =
                ModInfo::from_module(&bytes).with_context(|| format!("module {path}"))?;
            let file = path.rsplit('/').next().unwrap_or(&path);
            let stem = normalise(module_stem(file).unwrap_or(file));
            if info.name.is_empty() {
                info.name = stem.clone();
            }
            if let Some(prev) = index.modules.get(&info.name) {
                bail!(
                    "module {} is provided twice: {} and {path}",
                    info.name,
                    prev.path
                );
            }
            index.modules.insert(
                info.name.clone(),
                Module {
                    rel_path: path[prefix.len()..].to_string(),
                    path,
                    inode: id,
                    info,
                },
            );
        }
        if let Some(id) = tree.lookup_path(format!("{dir}/modules.builtin").as_bytes()) {
            if let InodeKind::File { content } = &tree.inode(id).kind {
                let text = store.read_all(content).context("reading modules.builtin")?;
                for line in String::from_utf8_lossy(&text).lines() {
                    let file = line.rsplit('/').next().unwrap_or(line);
                    if let Some(stem) = module_stem(file) {
                        index.builtin.insert(normalise(stem));
                    }
                }
            }
        }
        Ok(index)
    }

    /// `wanted` and everything they depend on (`depends=` and softdep
    /// `pre:`), each after its dependencies, ties in name order. Built-in
    /// modules are left out (they need no loading); a wanted module that is
    /// neither a file nor built in is an error, and so is a missing
    /// `depends=` entry, with the chain that needed it. Missing soft
    /// dependencies are skipped, as modprobe does.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<&Module>> {
        let mut out: Vec<&Module> = Vec::new();
        let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false = in progress
        let mut roots: Vec<String> = wanted.iter().map(|w| normalise(w)).collect();
        roots.sort();
        roots.dedup();
        for w in &roots {
            self.visit(w, &mut Vec::new(), &mut state, &mut out, true)?;
        }
        Ok(out)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        chain: &mut Vec<String>,
        state: &mut BTreeMap<String, bool>,
        out: &mut Vec<&'a Module>,
        required: bool,
    ) -> Result<()> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                // A cycle through soft dependencies: the one being loaded
                // already comes first.
                return Ok(());
            }
            None => {}
        }
        let Some(m) = self.modules.get(name) else {
            if self.builtin.contains(name) || !required {
                state.insert(name.to_string(), true);
                return Ok(());
            }
            let mut path = chain.clone();
            path.push(name.to_string());
            bail!(
                "kernel {}: module {} not found (needed by {})",
                self.version,
                name,
                if chain.is_empty() {
                    "the image".to_string()
                } else {
                    path.join(" → ")
                }
            );
        };
        state.insert(name.to_string(), false);
        chain.push(name.to_string());
        let mut pre: Vec<&String> = m.info.softdep_pre.iter().collect();
        pre.sort();
        for d in pre {
            self.visit(d, chain, state, out, false)?;
        }
        let mut deps: Vec<&String> = m.info.depends.iter().collect();
        deps.sort();
        for d in deps {
            self.visit(d, chain, state, out, true)?;
        }
        chain.pop();
        state.insert(name.to_string(), true);
        out.push(m);
        Ok(())
    }
}

/// 5000 damaged copies of `good` for robustness tests: three bytes of
/// each replaced at pseudo-random offsets (xorshift from `seed`), and
/// about one in `truncate_one_in` also cut short.
#[cfg(test)]
pub(crate) fn mutants(
    good: &[u8],
    mut seed: u64,
    truncate_one_in: u64,
) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..5000).map(move |_| {
        let mut m = good.to_vec();
        for _ in 0..3 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 40) as u8;
        }
        if seed % truncate_one_in == 0 {
            m.truncate((seed as usize >> 3) % m.len());
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 file with one `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let shoff = f.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, shstr_off, shstr.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn parses_modinfo_fields() {
        let m = fake_module(
            b"license=GPL\0depends=virtio,virtio-ring\0softdep=pre: crc32c post: x\0alias=virtio:d00000002v*\0name=virtio_blk\0vermagic=6.1.0 SMP \0\0",
        );
        let i = ModInfo::from_module(&m).unwrap();
        assert_eq!(i.name, "virtio_blk");
        assert_eq!(i.depends, ["virtio", "virtio_ring"]);
        assert_eq!(i.softdep_pre, ["crc32c"]);
        assert_eq!(i.softdep_post, ["x"]);
        assert_eq!(i.aliases, ["virtio:d00000002v*"]);
        assert_eq!(i.vermagic, "6.1.0 SMP");
    }

    #[test]
    fn hostile_elf_is_an_error_not_a_panic() {
        let good = fake_module(b"name=x\0");
        assert!(ModInfo::from_module(b"not elf").is_err());
        for m in mutants(&good, 0x9e37_79b9_7f4a_7c15, 5) {
            let _ = ModInfo::from_module(&m);
        }
    }

    fn index(mods: &[(&str, &[&str], &[&str])], builtin: &[&str]) -> ModuleIndex {
        let mut idx = ModuleIndex {
            version: "test".into(),
            ..Default::default()
        };
        for (name, deps, pre) in mods {
            idx.modules.insert(
                name.to_string(),
                Module {
                    path: format!("lib/modules/test/{name}.ko"),
                    rel_path: format!("{name}.ko"),
                    inode: InodeId(0),
                    info: ModInfo {
                        name: name.to_string(),
                        depends: deps.iter().map(|s| s.to_string()).collect(),
                        softdep_pre: pre.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    },
                },
            );
        }
        idx.builtin = builtin.iter().map(|s| s.to_string()).collect();
        idx
    }

    #[test]
    fn closure_orders_dependencies_first() {
        let idx = index(
            &[
                ("ext4", &["jbd2", "mbcache", "crc16"], &["crc32c"]),
                ("jbd2", &[], &[]),
                ("mbcache", &[], &[]),
                ("crc16", &[], &[]),
                ("crc32c_generic", &[], &[]),
                ("virtio_blk", &["virtio", "virtio_ring"], &[]),
                ("virtio_ring", &[], &[]),
            ],
            &["virtio", "crc32c"],
        );
        let names: Vec<&str> = idx
            .closure(&["virtio-blk", "ext4", "ext4"])
            .unwrap()
            .iter()
            .map(|m| m.info.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "crc16",
                "jbd2",
                "mbcache",
                "ext4",
                "virtio_ring",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn missing_dependency_shows_the_chain() {
        let idx = index(&[("a", &["b"], &[]), ("b", &["gone"], &["soft_gone"])], &[]);
        let e = idx.closure(&["a"]).unwrap_err().to_string();
        assert!(
            e.contains("module gone not found (needed by a → b → gone)"),
            "{e}"
        );
        let e = idx.closure(&["nope"]).unwrap_err().to_string();
        assert!(e.contains("nope not found (needed by the image)"), "{e}");
    }
}

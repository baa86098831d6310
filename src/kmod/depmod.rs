//! Module indexes (what depmod writes), computed from the .ko files.
//!
//! [`write_indexes`] reads every module of one kernel version in the tree
//! and writes the files `depmod` (kmod 30) would write next to them:
//! `modules.dep`, `modules.alias`, `modules.softdep`, `modules.symbols`,
//! `modules.devname` and the binary indexes libkmod reads at run time
//! (`modules.dep.bin`, `modules.alias.bin`, `modules.symbols.bin`,
//! `modules.builtin.bin`, `modules.builtin.alias.bin`).
//!
//! Nothing from the image runs, so this works for any target architecture.
//! Dependencies come from matching the undefined symbols of each module
//! (`.symtab`, `__versions`) with the symbols other modules export (their
//! `__crc_*` symbols, or `__ksymtab_strings`), as depmod does; the output
//! follows depmod's orderings (modules.order, its topological sort, its
//! symbol hash table) so the files are byte-identical to depmod's for the
//! same modules.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};

use super::compat::{
    alias_normalize, builtin_alias_index, builtin_index, hash_order, lossy, major_minor,
    modinfo_pairs, modname, symbols,
};
use super::index::Index;
use super::{elf, module_stem, read_module};
use crate::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

/// The index files this module writes, in the order depmod writes them.
pub const INDEX_FILES: [&str; 10] = [
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
];

/// What [`write_indexes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub version: String,
    /// The module directory inside the tree (`usr/lib/modules/VERSION`).
    pub dir: String,
    pub modules: usize,
    /// `alias=` entries of all modules.
    pub aliases: usize,
    /// Exported symbols.
    pub symbols: usize,
    /// Modules listed in `modules.builtin`.
    pub builtin: usize,
    /// Names of the files written, in [`INDEX_FILES`] order.
    pub files: Vec<String>,
}

/// The index files for one kernel version, not yet in the tree.
#[derive(Debug, Clone)]
pub struct Indexes {
    pub summary: Summary,
    /// (file name, contents), in [`INDEX_FILES`] order. The builtin indexes
    /// are left out when the kernel ships no `modules.builtin` or
    /// `modules.builtin.modinfo`.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// The newest mtime of the files read (modules, modules.order,
    /// modules.builtin*), or the directory's when it holds none of them:
    /// the time the written files get.
    pub mtime: i64,
}

/// Writes the module indexes of kernel `version` into its module directory
/// (`lib/modules/VERSION`, or `usr/lib/modules/VERSION` where `/lib` is a
/// symlink), replacing files of the same names. The files are root:root
/// 0644 and carry the newest mtime of the files they were computed from.
pub fn write_indexes(
    tree: &mut FsTree,
    store: &mut ContentStore,
    version: &str,
) -> Result<Summary> {
    let indexes = compute(tree, store, version)?;
    let dir_id = tree
        .lookup_path(indexes.summary.dir.as_bytes())
        .ok_or_else(|| anyhow!("/{} vanished", indexes.summary.dir))?;
    for (name, data) in &indexes.files {
        let path = format!("/{}/{name}", indexes.summary.dir);
        if let Some(old) = tree.lookup(dir_id, name.as_bytes()) {
            if tree.inode(old).kind.is_dir() {
                bail!("writing {path}: the image has a directory there, expected a file");
            }
            tree.unlink(dir_id, name.as_bytes());
        }
        let content = store
            .append(data)
            .with_context(|| format!("storing {path}"))?;
        let id = tree.add_inode(
            InodeKind::File { content },
            Metadata::new(0o644, 0, 0, indexes.mtime),
        );
        tree.link(dir_id, name.as_bytes().to_vec(), id);
    }
    Ok(indexes.summary)
}

/// The module directory of `version`, found the way
/// [`super::ModuleIndex::scan`] finds it.
fn module_dir(tree: &FsTree, version: &str) -> Result<(String, InodeId)> {
    if version.is_empty() || version.contains('/') || version == "." || version == ".." {
        bail!("kernel version {version:?} is not a directory name");
    }
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|b| format!("{b}/{version}"))
        .find_map(|d| {
            let id = tree.lookup_path(d.as_bytes())?;
            tree.inode(id).kind.is_dir().then_some((d, id))
        })
        .ok_or_else(|| {
            anyhow!(
                "no module directory for kernel {version} (expected /lib/modules/{version} or \
                 /usr/lib/modules/{version})"
            )
        })
}

/// One module as depmod sees it.
struct Mod {
    /// `path_to_modname`: the file name up to its first dot, `-` → `_`.
    name: String,
    /// Relative to the version directory.
    rel_path: String,
    /// `.modinfo` as (key, value) in section order.
    info: Vec<(String, String)>,
    exports: Vec<String>,
    imports: Vec<String>,
}

/// Finds every module file below `dir`, as depmod's directory walk does
/// (`build` and `source` skipped at every level).
fn find_modules(
    tree: &FsTree,
    dir: InodeId,
    rel: &str,
    top: &str,
    out: &mut Vec<(String, InodeId)>,
) -> Result<()> {
    for (name, id) in tree.children(dir) {
        let name = lossy(name);
        if name == "build" || name == "source" {
            continue;
        }
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        match &tree.inode(id).kind {
            InodeKind::Directory { .. } => find_modules(tree, id, &path, top, out)?,
            InodeKind::File { .. } if module_stem(&name).is_some_and(|s| !s.is_empty()) => {
                out.push((path, id))
            }
            InodeKind::Symlink { .. } if module_stem(&name).is_some() => {
                bail!("/{top}/{path}: a symlink to a module; expected the module file itself")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Which of two files of the same module depmod keeps with its default
/// configuration (`search updates`): the one under `updates/`.
fn pick(name: &str, old: &str, new: &str, top: &str) -> Result<bool> {
    let in_updates = |p: &str| p.starts_with("updates/");
    match (in_updates(old), in_updates(new)) {
        (false, true) => Ok(true),
        (true, false) => Ok(false),
        _ => bail!("module {name} is provided twice: /{top}/{old} and /{top}/{new}"),
    }
}

fn read_file(
    tree: &FsTree,
    store: &ContentStore,
    dir: &str,
    name: &str,
) -> Result<Option<(Vec<u8>, i64)>> {
    let path = format!("{dir}/{name}");
    let Some(id) = tree.lookup_path(path.as_bytes()) else {
        return Ok(None);
    };
    let inode = tree.inode(id);
    match &inode.kind {
        InodeKind::File { content } => Ok(Some((
            store
                .read_all(content)
                .with_context(|| format!("reading /{path}"))?,
            inode.meta.mtime,
        ))),
        other => bail!("/{path} is a {}, expected a regular file", other.describe()),
    }
}

/// Computes the index files of kernel `version` without changing the tree.
pub fn compute(tree: &FsTree, store: &ContentStore, version: &str) -> Result<Indexes> {
    let (dir, dir_id) = module_dir(tree, version)?;
    let mut found = Vec::new();
    find_modules(tree, dir_id, "", &dir, &mut found)?;
    // None until a file is read; the directory's own time if none is.
    let mut newest: Option<i64> = None;

    // Module name → (relative path, inode), resolving duplicates.
    let mut chosen: BTreeMap<String, (String, InodeId)> = BTreeMap::new();
    for (rel, id) in found {
        let name = modname(rel.rsplit('/').next().unwrap_or(&rel));
        if let Some((old, _)) = chosen.get(&name) {
            if !pick(&name, old, &rel, &dir)? {
                continue;
            }
        }
        chosen.insert(name, (rel, id));
    }

    // depmod's array: its name hash table's order, then stably sorted by
    // position in modules.order (unlisted modules last).
    let order_of: Vec<&str> = hash_order(chosen.keys().map(String::as_str), 512);
    let mut mods: Vec<Mod> = Vec::with_capacity(order_of.len());
    for name in order_of {
        let (rel, id) = &chosen[name];
        let path = format!("{dir}/{rel}");
        let inode = tree.inode(*id);
        newest = newest.max(Some(inode.meta.mtime));
        let InodeKind::File { content } = &inode.kind else {
            unreachable!("find_modules returns regular files only");
        };
        let bytes = read_module(store, content, &path)?;
        let modinfo = elf::section(&bytes, ".modinfo")
            .with_context(|| format!("module /{path}"))?
            .ok_or_else(|| anyhow!("module /{path}: no .modinfo section"))?;
        let tables = elf::symbol_tables(&bytes).with_context(|| format!("module /{path}"))?;
        let (exports, imports) = symbols(&tables);
        mods.push(Mod {
            name: name.to_string(),
            rel_path: rel.clone(),
            info: modinfo_pairs(modinfo),
            exports,
            imports,
        });
    }
    if let Some((order, t)) = read_file(tree, store, &dir, "modules.order")? {
        newest = newest.max(Some(t));
        sort_by_order(&mut mods, &order);
    }

    let n = mods.len();
    // Exported symbol → owner; a later module in the array wins.
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in mods.iter().enumerate() {
        for s in &m.exports {
            owner.insert(s.as_str(), i);
        }
    }
    // Direct dependencies, in the order depmod finds them.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut users = vec![0usize; n];
    for (i, m) in mods.iter().enumerate() {
        for s in &m.imports {
            let s = s.strip_prefix('.').unwrap_or(s);
            if let Some(&o) = owner.get(s) {
                if !deps[i].contains(&o) {
                    deps[i].push(o);
                    users[o] += 1;
                }
            }
        }
    }
    let rank = topological_ranks(&mods, &deps, users)?;
    for d in &mut deps {
        d.sort_by_key(|&x| rank[x]);
    }

    let mut files: Vec<(&'static str, Vec<u8>)> = Vec::new();

    // modules.dep and modules.dep.bin.
    let mut dep_txt = String::new();
    let mut dep_bin = Index::new();
    for (i, m) in mods.iter().enumerate() {
        let mut all = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = deps[i].iter().rev().copied().collect();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                all.push(d);
                stack.extend(deps[d].iter().rev());
            }
        }
        all.sort_by_key(|&x| rank[x]);
        let mut line = format!("{}:", m.rel_path);
        for d in all {
            line.push(' ');
            line.push_str(&mods[d].rel_path);
        }
        dep_txt.push_str(&line);
        dep_txt.push('\n');
        dep_bin
            .insert(&m.name, &line, i as u32)
            .with_context(|| format!("modules.dep.bin entry of {}", m.rel_path))?;
    }

    // modules.alias and modules.alias.bin.
    let mut alias_txt = String::from("# Aliases extracted from modules themselves.\n");
    let mut alias_bin = Index::new();
    let mut aliases = 0;
    for (i, m) in mods.iter().enumerate() {
        for (k, v) in &m.info {
            if k != "alias" {
                continue;
            }
            aliases += 1;
            alias_txt.push_str(&format!("alias {v} {}\n", m.name));
            let Some(key) = alias_normalize(v) else {
                tracing::warn!("module {}: unmatched bracket in alias {v:?}", m.rel_path);
                continue;
            };
            alias_bin
                .insert(&key, &m.name, i as u32)
                .with_context(|| format!("alias {v:?} of module {}", m.rel_path))?;
        }
    }

    // modules.softdep.
    let mut softdep = String::from("# Soft dependencies extracted from modules themselves.\n");
    for m in &mods {
        for (k, v) in &m.info {
            if k == "softdep" {
                softdep.push_str(&format!("softdep {} {v}\n", m.name));
            }
        }
    }

    // modules.symbols and modules.symbols.bin, in depmod's hash order.
    let mut sym_txt = String::from("# Aliases for symbols, used by symbol_request().\n");
    let mut sym_bin = Index::new();
    for s in hash_order(owner.keys().copied(), 2048) {
        let o = owner[s];
        sym_txt.push_str(&format!("alias symbol:{s} {}\n", mods[o].name));
        sym_bin
            .insert(&format!("symbol:{s}"), &mods[o].name, o as u32)
            .with_context(|| format!("symbol {s} of module {}", mods[o].rel_path))?;
    }

    // modules.devname.
    let mut devname_txt = String::new();
    for m in &mods {
        let mut devname: Option<&str> = None;
        let mut dev: Option<(char, u32, u32)> = None;
        for (k, v) in &m.info {
            if k != "alias" {
                continue;
            }
            if let Some(d) = v.strip_prefix("devname:") {
                devname = Some(d);
            } else if let Some((a, b)) = major_minor(v, "char-major-") {
                dev = Some(('c', a, b));
            } else if let Some((a, b)) = major_minor(v, "block-major-") {
                dev = Some(('b', a, b));
            }
            if dev.is_some() && devname.is_some() {
                break;
            }
        }
        match (devname, dev) {
            (Some(name), Some((t, major, minor))) => {
                if devname_txt.is_empty() {
                    devname_txt.push_str("# Device nodes to trigger on-demand module loading.\n");
                }
                devname_txt.push_str(&format!("{} {name} {t}{major}:{minor}\n", m.name));
            }
            (Some(name), None) => tracing::warn!(
                "module {} has devname ({name}) but no major and minor; ignored",
                m.rel_path
            ),
            _ => {}
        }
    }

    let bin = |i: Index, what: &str| -> Result<Vec<u8>> {
        i.to_bytes().with_context(|| format!("writing {what}"))
    };
    files.push(("modules.dep", dep_txt.into_bytes()));
    files.push(("modules.dep.bin", bin(dep_bin, "modules.dep.bin")?));
    files.push(("modules.alias", alias_txt.into_bytes()));
    files.push(("modules.alias.bin", bin(alias_bin, "modules.alias.bin")?));
    files.push(("modules.softdep", softdep.into_bytes()));
    files.push(("modules.symbols", sym_txt.into_bytes()));
    files.push(("modules.symbols.bin", bin(sym_bin, "modules.symbols.bin")?));

    let mut builtin = 0;
    if let Some((text, t)) = read_file(tree, store, &dir, "modules.builtin")? {
        newest = newest.max(Some(t));
        let (idx, count) = builtin_index(&text)?;
        builtin = count;
        files.push(("modules.builtin.bin", bin(idx, "modules.builtin.bin")?));
    }
    if let Some((modinfo, t)) = read_file(tree, store, &dir, "modules.builtin.modinfo")? {
        newest = newest.max(Some(t));
        let idx = builtin_alias_index(&modinfo)?;
        files.push((
            "modules.builtin.alias.bin",
            bin(idx, "modules.builtin.alias.bin")?,
        ));
    }
    files.push(("modules.devname", devname_txt.into_bytes()));

    Ok(Indexes {
        summary: Summary {
            version: version.to_string(),
            dir,
            modules: n,
            aliases,
            symbols: owner.len(),
            builtin,
            files: files.iter().map(|(f, _)| f.to_string()).collect(),
        },
        files,
        mtime: newest.unwrap_or(tree.inode(dir_id).meta.mtime),
    })
}

/// Sorts `mods` by their line in modules.order (stable; unlisted modules
/// after the listed ones, in their current order), as depmod does. Like
/// depmod, a file whose last line lacks its newline leaves the order
/// alone.
fn sort_by_order(mods: &mut Vec<Mod>, order: &[u8]) {
    if order.last().is_some_and(|&b| b != b'\n') {
        tracing::warn!("modules.order: the last line misses its newline; order ignored");
        return;
    }
    let lines: Vec<&[u8]> = order
        .split(|&b| b == b'\n')
        .take(order.iter().filter(|&&b| b == b'\n').count())
        .collect();
    let total = lines.len() as i64 + 1;
    let mut pos: BTreeMap<&[u8], i64> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        pos.insert(l, i as i64 + 1 - total);
    }
    let key = |m: &Mod| -> i64 {
        // The path depmod matches: the relative path cut after the module
        // name plus ".ko" (so compressed files match their .ko line).
        let base = m.rel_path.rfind('/').map_or(0, |i| i + 1);
        let end = (base + m.name.len() + 3).min(m.rel_path.len());
        pos.get(&m.rel_path.as_bytes()[..end]).copied().unwrap_or(1)
    };
    let mut keyed: Vec<(i64, Mod)> = mods.drain(..).map(|m| (key(&m), m)).collect();
    keyed.sort_by_key(|(k, _)| *k);
    mods.extend(keyed.into_iter().map(|(_, m)| m));
}

/// depmod's topological sort: modules nobody uses first, taken from a
/// stack; a module comes after every module that uses it. Returns each
/// module's rank, or an error naming the modules caught in a cycle.
fn topological_ranks(
    mods: &[Mod],
    deps: &[Vec<usize>],
    mut users: Vec<usize>,
) -> Result<Vec<usize>> {
    let n = mods.len();
    let mut rank = vec![usize::MAX; n];
    let mut stack: Vec<usize> = (0..n).filter(|&i| users[i] == 0).collect();
    let mut sorted = 0;
    while let Some(src) = stack.pop() {
        rank[src] = sorted;
        sorted += 1;
        for &dst in &deps[src] {
            users[dst] -= 1;
            if users[dst] == 0 {
                stack.push(dst);
            }
        }
    }
    if sorted < n {
        let mut cyc: Vec<&str> = (0..n)
            .filter(|&i| rank[i] == usize::MAX)
            .map(|i| mods[i].name.as_str())
            .collect();
        cyc.sort();
        bail!(
            "modules depend on each other in a cycle: {}",
            cyc[..cyc.len().min(20)].join(", ")
        );
    }
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_order_sorts_listed_modules_first() {
        let m = |name: &str, rel: &str| Mod {
            name: name.into(),
            rel_path: rel.into(),
            info: vec![],
            exports: vec![],
            imports: vec![],
        };
        let mut mods = vec![
            m("x", "extra/x.ko"),
            m("b", "kernel/b.ko.xz"),
            m("a", "kernel/a.ko"),
            m("y", "extra/y.ko"),
        ];
        sort_by_order(&mut mods, b"kernel/a.ko\nkernel/b.ko\n");
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "x", "y"]);
        // No final newline: depmod ignores the file.
        sort_by_order(&mut mods, b"kernel/b.ko\nkernel/a.ko");
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "x", "y"]);
    }

    #[test]
    fn cycles_are_errors_naming_the_modules() {
        let m = |name: &str| Mod {
            name: name.into(),
            rel_path: format!("{name}.ko"),
            info: vec![],
            exports: vec![],
            imports: vec![],
        };
        let mods = vec![m("a"), m("b"), m("c")];
        let deps = vec![vec![1], vec![0], vec![]];
        let e = topological_ranks(&mods, &deps, vec![1, 1, 0]).unwrap_err();
        assert!(e.to_string().contains("cycle: a, b"), "{e}");
        let deps = vec![vec![1, 2], vec![2], vec![]];
        let r = topological_ranks(&mods, &deps, vec![0, 1, 2]).unwrap();
        assert!(r[0] < r[1] && r[1] < r[2], "{r:?}");
    }
}

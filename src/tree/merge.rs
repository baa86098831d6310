//! Applying one OCI layer (an uncompressed tar stream) on top of a tree.
//!
//! Semantics follow the OCI image spec's "Applying Changesets": entries are
//! added or replace what lower layers had, `.wh.NAME` removes `NAME` of lower
//! layers and `.wh..wh..opq` hides everything lower layers put in its
//! directory. Entries that would escape or confuse the tree — `..`
//! components, absolute paths, writes through a symlink, hardlinks to paths
//! that do not exist or are directories, the same path twice in one layer —
//! stop the merge with a [`LayerError`] naming the layer and the entry.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use anyhow::{Context, Result};
use base64::Engine;

use super::content::AppendError;
use super::guard::{record_error, HeaderWatch, MAX_PATH};
use super::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

/// Identifies the layer being merged, for messages.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// Usually the layer's digest (`sha256:…`), or a file name.
    pub name: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// What was wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerErrorKind {
    ParentTraversal,
    AbsolutePath,
    ThroughSymlink {
        component: String,
    },
    ParentNotDirectory {
        component: String,
    },
    Duplicate,
    HardlinkTargetMissing {
        target: String,
    },
    HardlinkTargetUnsafe {
        target: String,
    },
    HardlinkToDirectory {
        target: String,
    },
    RootNotDirectory,
    UnsupportedType {
        typeflag: u8,
    },
    Truncated {
        expected: u64,
        got: u64,
    },
    BadPax {
        key: String,
    },
    /// A GNU long-name/long-link record or PAX header over the limit.
    RecordTooLarge {
        typeflag: u8,
        size: u64,
    },
    PathTooLong {
        len: usize,
    },
    LinkTooLong {
        len: usize,
    },
    /// A uid or gid that does not fit 32 bits (it would wrap, to 0 for
    /// 2^32) or an mtime beyond `i64`, from the header or a PAX record
    /// (`source`).
    OutOfRange {
        field: String,
        value: String,
        source: &'static str,
    },
    /// A numeric header field that is not a number.
    BadField {
        field: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: entry {entry:?}: {}", describe(.kind))]
pub struct LayerError {
    pub layer: String,
    pub entry: String,
    pub kind: LayerErrorKind,
}

impl std::fmt::Display for LayerErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self))
    }
}

fn describe(kind: &LayerErrorKind) -> String {
    use LayerErrorKind::*;
    match kind {
        ParentTraversal => "path contains a `..` component; layers must not refer outside their root".into(),
        AbsolutePath => "path is absolute; layer paths must be relative to the image root".into(),
        ThroughSymlink { component } => format!(
            "path goes through {component:?}, which is a symlink; writing through symlinks is refused"
        ),
        ParentNotDirectory { component } => {
            format!("path goes through {component:?}, which is not a directory")
        }
        Duplicate => "path appears twice in the same layer with conflicting entries".into(),
        HardlinkTargetMissing { target } => {
            format!("hardlink target {target:?} does not exist in the image")
        }
        HardlinkTargetUnsafe { target } => {
            format!("hardlink target {target:?} points outside the image root")
        }
        HardlinkToDirectory { target } => {
            format!("hardlink target {target:?} is a directory")
        }
        RootNotDirectory => "the image root can only be a directory".into(),
        UnsupportedType { typeflag } => format!(
            "unsupported tar entry type {:?} (0x{typeflag:02x})",
            *typeflag as char
        ),
        Truncated { expected, got } => {
            format!("entry data ended after {got} of {expected} bytes")
        }
        BadPax { key } => format!("malformed PAX record {key:?}"),
        RecordTooLarge { typeflag, size } => format!(
            "{} of {size} bytes; refused before reading it (the limit is {} bytes)",
            super::guard::record_name(*typeflag),
            super::guard::MAX_RECORD
        ),
        PathTooLong { len } => format!(
            "path of {len} bytes; the limit is {} bytes",
            super::guard::MAX_PATH
        ),
        LinkTooLong { len } => format!(
            "link target of {len} bytes; the limit is {} bytes",
            super::guard::MAX_PATH
        ),
        OutOfRange {
            field,
            value,
            source,
        } if field == "mtime" => format!("{field} {value} (from the {source}) is out of range"),
        OutOfRange {
            field,
            value,
            source,
        } => format!(
            "{field} {value} (from the {source}) does not fit in 32 bits; refused rather than wrapped to another owner"
        ),
        BadField { field } => format!("header field {field} is not a number"),
    }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// A path split into validated components.
fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, LayerErrorKind> {
    if raw.first() == Some(&b'/') {
        return Err(LayerErrorKind::AbsolutePath);
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(LayerErrorKind::ParentTraversal),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Applier<'a> {
    tree: &'a mut FsTree,
    store: &'a mut ContentStore,
    layer: &'a LayerSource,
    /// Paths (joined components) this layer has put in place so far.
    added: HashSet<Vec<u8>>,
    stats: MergeStats,
}

impl Applier<'_> {
    fn err(&self, entry: &[u8], kind: LayerErrorKind) -> anyhow::Error {
        LayerError {
            layer: self.layer.name.clone(),
            entry: lossy(entry),
            kind,
        }
        .into()
    }

    /// Walks to the directory that holds the last component, creating
    /// directories the layer implies but does not list.
    fn parent_dir(&mut self, entry: &[u8], comps: &[&[u8]]) -> Result<InodeId> {
        let mut cur = self.tree.root();
        let mut path = Vec::new();
        for comp in comps {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(comp);
            cur = match self.tree.lookup(cur, comp) {
                Some(id) => match &self.tree.inode(id).kind {
                    InodeKind::Directory { .. } => id,
                    InodeKind::Symlink { .. } => {
                        return Err(self.err(
                            entry,
                            LayerErrorKind::ThroughSymlink {
                                component: lossy(&path),
                            },
                        ))
                    }
                    _ => {
                        return Err(self.err(
                            entry,
                            LayerErrorKind::ParentNotDirectory {
                                component: lossy(&path),
                            },
                        ))
                    }
                },
                None => {
                    let dir = self.tree.add_inode(
                        InodeKind::Directory {
                            children: BTreeMap::new(),
                        },
                        Metadata::implicit_dir(),
                    );
                    self.tree.link(cur, comp.to_vec(), dir);
                    dir
                }
            };
        }
        Ok(cur)
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        if raw_path.len() > MAX_PATH {
            let shown = &raw_path[..200];
            return Err(self.err(
                shown,
                LayerErrorKind::PathTooLong {
                    len: raw_path.len(),
                },
            ));
        }
        if let Some(link) = entry.link_name_bytes() {
            if link.len() > MAX_PATH {
                return Err(self.err(&raw_path, LayerErrorKind::LinkTooLong { len: link.len() }));
            }
        }
        let comps = split_path(&raw_path).map_err(|k| self.err(&raw_path, k))?;
        self.stats.entries += 1;
        let header = entry.header().clone();
        let typeflag = header.entry_type().as_byte();

        // Whiteouts.
        if let Some((name, parents)) = comps.split_last() {
            if name.starts_with(WHITEOUT_PREFIX) {
                self.stats.whiteouts += 1;
                let dir = self.parent_dir(&raw_path, parents)?;
                let dir_path = parents.join(&b'/');
                if *name == OPAQUE {
                    self.opaque(dir, &dir_path);
                } else if !name.starts_with(AUFS_META_PREFIX) {
                    let target = &name[WHITEOUT_PREFIX.len()..];
                    let full = join(&dir_path, target);
                    // A whiteout only hides what lower layers put there.
                    if !self.added.contains(&full) {
                        self.tree.unlink(dir, target);
                    }
                }
                return Ok(());
            }
        }

        let meta = self.metadata(&mut entry, &raw_path)?;
        let joined = comps.join(&b'/');

        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`).
            if typeflag != b'5' {
                return Err(self.err(&raw_path, LayerErrorKind::RootNotDirectory));
            }
            let root = self.tree.root();
            self.tree.inode_mut(root).meta = meta;
            return Ok(());
        };
        let dir = self.parent_dir(&raw_path, parents)?;
        let existing = self.tree.lookup(dir, name);
        let seen_here = !self.added.insert(joined.clone());

        if typeflag == b'5' {
            if let Some(id) = existing {
                if self.tree.inode(id).kind.is_dir() {
                    // A directory over a directory merges: only metadata changes.
                    self.tree.inode_mut(id).meta = meta;
                    return Ok(());
                }
                if seen_here {
                    return Err(self.err(&raw_path, LayerErrorKind::Duplicate));
                }
                self.tree.unlink(dir, name);
            }
            let id = self.tree.add_inode(
                InodeKind::Directory {
                    children: BTreeMap::new(),
                },
                meta,
            );
            self.tree.link(dir, name.to_vec(), id);
            return Ok(());
        }

        if existing.is_some() {
            if seen_here {
                return Err(self.err(&raw_path, LayerErrorKind::Duplicate));
            }
            self.tree.unlink(dir, name);
        }

        let inode = match typeflag {
            b'0' | b'\0' | b'7' => {
                let expected = entry.size();
                let content = match self.store.append_from(&mut entry, expected) {
                    Ok(c) => c,
                    Err(AppendError::Short { got }) => {
                        return Err(self.err(&raw_path, LayerErrorKind::Truncated { expected, got }))
                    }
                    Err(AppendError::Io(e)) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "layer {}: reading entry {:?}",
                            self.layer.name,
                            lossy(&raw_path)
                        )))
                    }
                };
                self.stats.bytes += expected;
                self.tree.add_inode(InodeKind::File { content }, meta)
            }
            b'1' => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let id = self.hardlink_target(&raw_path, &target)?;
                self.tree.link(dir, name.to_vec(), id);
                return Ok(());
            }
            b'2' => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                self.tree.add_inode(InodeKind::Symlink { target }, meta)
            }
            b'3' | b'4' => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = if typeflag == b'3' {
                    InodeKind::CharDevice { major, minor }
                } else {
                    InodeKind::BlockDevice { major, minor }
                };
                self.tree.add_inode(kind, meta)
            }
            b'6' => self.tree.add_inode(InodeKind::Fifo, meta),
            other => {
                return Err(self.err(
                    &raw_path,
                    LayerErrorKind::UnsupportedType { typeflag: other },
                ))
            }
        };
        self.tree.link(dir, name.to_vec(), inode);
        Ok(())
    }

    /// Hides everything lower layers put in `dir`; entries this layer added
    /// stay.
    fn opaque(&mut self, dir: InodeId, dir_path: &[u8]) {
        let names: Vec<Vec<u8>> = self
            .tree
            .children(dir)
            .map(|(n, _)| n.to_vec())
            .filter(|n| !self.added.contains(&join(dir_path, n)))
            .collect();
        for n in names {
            self.tree.unlink(dir, &n);
        }
    }

    fn hardlink_target(&self, entry: &[u8], target: &[u8]) -> Result<InodeId> {
        let comps = split_path(target).map_err(|_| {
            self.err(
                entry,
                LayerErrorKind::HardlinkTargetUnsafe {
                    target: lossy(target),
                },
            )
        })?;
        let mut cur = self.tree.root();
        for (i, comp) in comps.iter().enumerate() {
            let next = self.tree.lookup(cur, comp).ok_or_else(|| {
                self.err(
                    entry,
                    LayerErrorKind::HardlinkTargetMissing {
                        target: lossy(target),
                    },
                )
            })?;
            let last = i + 1 == comps.len();
            match &self.tree.inode(next).kind {
                InodeKind::Directory { .. } if last => {
                    return Err(self.err(
                        entry,
                        LayerErrorKind::HardlinkToDirectory {
                            target: lossy(target),
                        },
                    ))
                }
                InodeKind::Directory { .. } => {}
                InodeKind::Symlink { .. } if !last => {
                    return Err(self.err(
                        entry,
                        LayerErrorKind::ThroughSymlink {
                            component: lossy(&comps[..=i].join(&b'/')),
                        },
                    ))
                }
                _ if !last => {
                    return Err(self.err(
                        entry,
                        LayerErrorKind::HardlinkTargetMissing {
                            target: lossy(target),
                        },
                    ))
                }
                _ => {}
            }
            cur = next;
        }
        if comps.is_empty() {
            return Err(self.err(
                entry,
                LayerErrorKind::HardlinkToDirectory {
                    target: lossy(target),
                },
            ));
        }
        Ok(cur)
    }

    /// Mode, owner, mtime and xattrs, with PAX records taking precedence
    /// over the fixed header fields. Owners that do not fit 32 bits and
    /// numeric fields that are not numbers are refused, never wrapped or
    /// defaulted (either could make a file root's).
    fn metadata<R: Read>(&self, entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Metadata> {
        let size = entry.size();
        let h = entry.header().clone();
        let (mut uid, mut gid, mut mtime) = (None, None, None);
        let mut xattrs = BTreeMap::new();
        let pax = entry
            .pax_extensions()
            .with_context(|| format!("layer {}: reading PAX header", self.layer.name))?;
        for ext in pax.into_iter().flatten() {
            let ext = ext.with_context(|| {
                format!(
                    "layer {}: entry {:?}: reading PAX record",
                    self.layer.name,
                    lossy(path)
                )
            })?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let bad = || self.err(path, LayerErrorKind::BadPax { key: lossy(key) });
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.insert(name.to_vec(), value.to_vec());
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(value.strip_suffix(b"=").unwrap_or(value))
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(value))
                    .map_err(|_| bad())?;
                xattrs.insert(percent_decode(name), decoded);
            } else {
                match key {
                    b"uid" | b"gid" => {
                        let v = parse_num(value).ok_or_else(bad)?;
                        let id = u32::try_from(v).map_err(|_| {
                            self.err(
                                path,
                                LayerErrorKind::OutOfRange {
                                    field: lossy(key),
                                    value: v.to_string(),
                                    source: "PAX record",
                                },
                            )
                        })?;
                        if key == b"uid" {
                            uid = Some(id);
                        } else {
                            gid = Some(id);
                        }
                    }
                    b"mtime" => {
                        let s = std::str::from_utf8(value).map_err(|_| bad())?;
                        let secs = s.split('.').next().unwrap_or("");
                        mtime = Some(secs.parse::<i64>().map_err(|_| bad())?);
                    }
                    // The tar reader sized the entry by this record when
                    // it parsed; when it did not, the reader and any other
                    // tool disagree on where the entry ends.
                    b"size" if parse_num(value) != Some(size) => return Err(bad()),
                    _ => {}
                }
            }
        }
        let old = h.as_old();
        let field = |k: LayerErrorKind| self.err(path, k);
        let mut meta = Metadata::new(
            (h.mode().unwrap_or(0o644) & 0o7777) as u16,
            match uid {
                Some(u) => u,
                None => header_id(&old.uid, "uid").map_err(field)?,
            },
            match gid {
                Some(g) => g,
                None => header_id(&old.gid, "gid").map_err(field)?,
            },
            match mtime {
                Some(t) => t,
                None => header_mtime(&old.mtime).map_err(field)?,
            },
        );
        meta.xattrs = xattrs;
        Ok(meta)
    }
}

fn parse_num(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A numeric header field; a blank one (all NULs or spaces) is 0.
fn header_number(field: &[u8], name: &'static str) -> Result<u64, LayerErrorKind> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(0);
    }
    super::guard::number(field).ok_or(LayerErrorKind::BadField { field: name })
}

/// A uid or gid header field (octal or base-256), refused when it does not
/// fit 32 bits.
pub fn header_id(field: &[u8], name: &'static str) -> Result<u32, LayerErrorKind> {
    let v = header_number(field, name)?;
    u32::try_from(v).map_err(|_| LayerErrorKind::OutOfRange {
        field: name.into(),
        value: v.to_string(),
        source: "tar header",
    })
}

/// The mtime header field, refused beyond `i64`.
pub fn header_mtime(field: &[u8]) -> Result<i64, LayerErrorKind> {
    let v = header_number(field, "mtime")?;
    i64::try_from(v).map_err(|_| LayerErrorKind::OutOfRange {
        field: "mtime".into(),
        value: v.to_string(),
        source: "tar header",
    })
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// Applies one layer, given as an uncompressed tar stream, on top of `tree`.
/// File contents go to `store`.
pub fn merge_layer(
    tree: &mut FsTree,
    store: &mut ContentStore,
    layer: &LayerSource,
    tar_stream: impl Read,
) -> Result<MergeStats> {
    let watch = HeaderWatch::new();
    let mut archive = tar::Archive::new(watch.guard(tar_stream));
    let mut applier = Applier {
        tree,
        store,
        layer,
        added: HashSet::new(),
        stats: MergeStats::default(),
    };
    let entries = archive
        .entries()
        .with_context(|| format!("layer {}: reading tar stream", layer.name))?;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if let Some(r) = record_error(&e) {
                    return Err(LayerError {
                        layer: layer.name.clone(),
                        entry: lossy(&r.name),
                        kind: LayerErrorKind::RecordTooLarge {
                            typeflag: r.typeflag,
                            size: r.size,
                        },
                    }
                    .into());
                }
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("layer {}: reading tar entry", layer.name));
            }
        };
        watch.after(&entry);
        applier.apply(entry)?;
    }
    Ok(applier.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar layer entry by entry, writing names raw so hostile
    /// paths can be expressed.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        fn entry(
            &mut self,
            kind: tar::EntryType,
            path: &str,
            link: &str,
            data: &[u8],
        ) -> &mut Self {
            let mut h = tar::Header::new_ustar();
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(1000);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.entry(tar::EntryType::Regular, path, "", data)
        }

        fn dir(&mut self, path: &str) -> &mut Self {
            self.entry(tar::EntryType::Directory, path, "", b"")
        }

        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.entry(tar::EntryType::Symlink, path, target, b"")
        }

        fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.entry(tar::EntryType::Link, path, target, b"")
        }

        fn bytes(&mut self) -> Vec<u8> {
            std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
                .into_inner()
                .unwrap()
        }
    }

    struct Fixture {
        tree: FsTree,
        store: ContentStore,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Fixture {
                tree: FsTree::new(),
                store: ContentStore::new_in(dir.path()).unwrap(),
                _dir: dir,
            }
        }

        fn apply(&mut self, name: &str, layer: &mut Layer) -> Result<MergeStats> {
            let bytes = layer.bytes();
            merge_layer(
                &mut self.tree,
                &mut self.store,
                &LayerSource { name: name.into() },
                &bytes[..],
            )
        }

        fn paths(&self) -> Vec<String> {
            let mut v = Vec::new();
            self.tree
                .walk(|p, _| v.push(String::from_utf8_lossy(p).into_owned()));
            v
        }

        fn content(&self, path: &str) -> Vec<u8> {
            let id = self.tree.lookup_path(path.as_bytes()).unwrap();
            match &self.tree.inode(id).kind {
                InodeKind::File { content } => self.store.read_all(content).unwrap(),
                k => panic!("{path} is a {}", k.describe()),
            }
        }
    }

    fn err_kind(e: &anyhow::Error) -> LayerErrorKind {
        e.downcast_ref::<LayerError>()
            .unwrap_or_else(|| panic!("not a layer error: {e:#}"))
            .kind
            .clone()
    }

    #[test]
    fn files_dirs_and_implicit_parents() {
        let mut f = Fixture::new();
        f.apply(
            "l1",
            Layer::new()
                .dir("./")
                .dir("./etc/")
                .file("./etc/hostname", b"box\n")
                .file("usr/bin/sh", b"ELF"),
        )
        .unwrap();
        assert_eq!(
            f.paths(),
            ["", "etc", "etc/hostname", "usr", "usr/bin", "usr/bin/sh"]
        );
        assert_eq!(f.content("etc/hostname"), b"box\n");
        let usr = f.tree.lookup_path(b"usr").unwrap();
        assert_eq!(f.tree.inode(usr).meta, Metadata::implicit_dir());
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let mut f = Fixture::new();
        f.apply(
            "l1",
            Layer::new()
                .file("a/x", b"1")
                .file("a/y", b"2")
                .file("b", b"3"),
        )
        .unwrap();
        f.apply(
            "l2",
            Layer::new()
                .file("a/.wh.x", b"")
                .file(".wh.b", b"")
                .file(".wh.nonexistent", b""),
        )
        .unwrap();
        assert_eq!(f.paths(), ["", "a", "a/y"]);
        // A whiteout next to an entry of its own layer keeps that entry.
        f.apply("l3", Layer::new().file("a/z", b"new").file("a/.wh.z", b""))
            .unwrap();
        assert_eq!(f.paths(), ["", "a", "a/y", "a/z"]);
    }

    #[test]
    fn opaque_dirs_keep_entries_of_their_own_layer() {
        let mut f = Fixture::new();
        f.apply(
            "l1",
            Layer::new()
                .file("d/old1", b"")
                .file("d/sub/old2", b"")
                .file("e", b""),
        )
        .unwrap();
        // The new entry comes before the opaque marker in tar order.
        f.apply(
            "l2",
            Layer::new()
                .dir("d")
                .file("d/new", b"n")
                .file("d/.wh..wh..opq", b""),
        )
        .unwrap();
        assert_eq!(f.paths(), ["", "d", "d/new", "e"]);
    }

    #[test]
    fn type_replacement() {
        let mut f = Fixture::new();
        f.apply(
            "l1",
            Layer::new()
                .file("p/q/r", b"deep")
                .file("f", b"file")
                .symlink("s", "/target"),
        )
        .unwrap();
        f.apply(
            "l2",
            Layer::new()
                .file("p", b"now a file")
                .dir("f")
                .file("f/inside", b"i")
                .dir("s"),
        )
        .unwrap();
        assert_eq!(f.paths(), ["", "f", "f/inside", "p", "s"]);
        assert_eq!(f.content("p"), b"now a file");
        f.apply("l3", Layer::new().symlink("f", "/abs/target"))
            .unwrap();
        let id = f.tree.lookup_path(b"f").unwrap();
        assert_eq!(
            f.tree.inode(id).kind,
            InodeKind::Symlink {
                target: b"/abs/target".to_vec()
            }
        );
        // Directory nlink went back down when f/ was replaced.
        assert_eq!(f.tree.inode(f.tree.root()).nlink, 3);
    }

    #[test]
    fn hardlinks_share_inodes_across_layers() {
        let mut f = Fixture::new();
        f.apply(
            "l1",
            Layer::new()
                .file("bin/a", b"same")
                .hardlink("bin/b", "bin/a"),
        )
        .unwrap();
        f.apply("l2", Layer::new().hardlink("c", "./bin/a"))
            .unwrap();
        let a = f.tree.lookup_path(b"bin/a").unwrap();
        assert_eq!(f.tree.lookup_path(b"bin/b"), Some(a));
        assert_eq!(f.tree.lookup_path(b"c"), Some(a));
        assert_eq!(f.tree.inode(a).nlink, 3);
        f.apply("l3", Layer::new().file("bin/.wh.a", b"")).unwrap();
        assert_eq!(f.tree.inode(a).nlink, 2);
        assert_eq!(f.content("c"), b"same");
    }

    type Case = (&'static str, Box<dyn Fn(&mut Layer)>, LayerErrorKind);

    #[test]
    fn hostile_entries_are_refused_with_layer_and_entry() {
        let cases: Vec<Case> = vec![
            (
                "dotdot",
                Box::new(|l| {
                    l.file("../../evil", b"x");
                }),
                LayerErrorKind::ParentTraversal,
            ),
            (
                "inner-dotdot",
                Box::new(|l| {
                    l.file("a/../../evil", b"x");
                }),
                LayerErrorKind::ParentTraversal,
            ),
            (
                "absolute",
                Box::new(|l| {
                    l.file("/etc/evil", b"x");
                }),
                LayerErrorKind::AbsolutePath,
            ),
            (
                "through-symlink",
                Box::new(|l| {
                    l.symlink("lib", "/tmp/xyz").file("lib/evil", b"x");
                }),
                LayerErrorKind::ThroughSymlink {
                    component: "lib".into(),
                },
            ),
            (
                "through-file",
                Box::new(|l| {
                    l.file("f", b"").file("f/evil", b"x");
                }),
                LayerErrorKind::ParentNotDirectory {
                    component: "f".into(),
                },
            ),
            (
                "link-missing",
                Box::new(|l| {
                    l.hardlink("h", "nope");
                }),
                LayerErrorKind::HardlinkTargetMissing {
                    target: "nope".into(),
                },
            ),
            (
                "link-escape",
                Box::new(|l| {
                    l.hardlink("h", "../../etc/passwd");
                }),
                LayerErrorKind::HardlinkTargetUnsafe {
                    target: "../../etc/passwd".into(),
                },
            ),
            (
                "link-dir",
                Box::new(|l| {
                    l.dir("d").hardlink("h", "d");
                }),
                LayerErrorKind::HardlinkToDirectory { target: "d".into() },
            ),
            (
                "duplicate",
                Box::new(|l| {
                    l.file("twice", b"one").file("twice", b"two");
                }),
                LayerErrorKind::Duplicate,
            ),
            (
                "root-file",
                Box::new(|l| {
                    l.file("./", b"");
                }),
                LayerErrorKind::RootNotDirectory,
            ),
        ];
        for (name, build, want) in cases {
            let mut f = Fixture::new();
            let mut layer = Layer::new();
            build(&mut layer);
            let e = f.apply("sha256:feed", &mut layer).expect_err(name);
            assert_eq!(err_kind(&e), want, "{name}");
            let msg = format!("{e:#}");
            assert!(msg.contains("layer sha256:feed: entry"), "{name}: {msg}");
        }
    }

    #[test]
    fn write_through_symlink_from_lower_layer_is_refused() {
        let mut f = Fixture::new();
        f.apply("l1", Layer::new().dir("usr/lib").symlink("lib", "usr/lib"))
            .unwrap();
        let e = f
            .apply("l2", Layer::new().file("lib/libc.so", b"x"))
            .unwrap_err();
        assert_eq!(
            err_kind(&e),
            LayerErrorKind::ThroughSymlink {
                component: "lib".into()
            }
        );
    }

    #[test]
    fn truncated_entry_is_reported() {
        let mut f = Fixture::new();
        let mut bytes = Layer::new().file("big", &[7u8; 4000]).bytes();
        bytes.truncate(512 + 1000);
        let e = merge_layer(
            &mut f.tree,
            &mut f.store,
            &LayerSource { name: "l".into() },
            &bytes[..],
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("layer l"), "{msg}");
    }

    #[test]
    fn pax_xattrs_owners_devices() {
        let mut f = Fixture::new();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
            ("uid", b"3000000"),
            ("mtime", b"1700000000.5"),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("usr/bin/ping").unwrap();
        h.set_mode(0o4755);
        h.set_size(3);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"elf"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("dev/foo").unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(10).unwrap();
        h.set_device_minor(1234).unwrap();
        h.set_mode(0o600);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        merge_layer(
            &mut f.tree,
            &mut f.store,
            &LayerSource { name: "l".into() },
            &bytes[..],
        )
        .unwrap();
        let ping = f.tree.inode(f.tree.lookup_path(b"usr/bin/ping").unwrap());
        assert_eq!(ping.meta.mode, 0o4755);
        assert_eq!(ping.meta.uid, 3_000_000);
        assert_eq!(ping.meta.mtime, 1_700_000_000);
        assert_eq!(
            ping.meta
                .xattrs
                .get(&b"security.capability"[..])
                .map(Vec::as_slice),
            Some(&b"\x01\x00\x00\x02"[..])
        );
        let dev = f.tree.inode(f.tree.lookup_path(b"dev/foo").unwrap());
        assert_eq!(
            dev.kind,
            InodeKind::CharDevice {
                major: 10,
                minor: 1234
            }
        );
    }
}

#[cfg(test)]
mod limits {
    use super::*;
    use crate::tree::guard::MAX_RECORD;
    use std::io::Cursor;

    fn gnu_header(typeflag: u8, name: &[u8], size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h
    }

    fn file_header(path: &str) -> tar::Header {
        let mut h = gnu_header(b'0', path.as_bytes(), 1);
        h.set_cksum();
        h
    }

    /// A record of type `typeflag` whose body is `len` bytes of `fill`,
    /// then a one-byte file `f` and the end marker.
    fn with_record(typeflag: u8, name: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = gnu_header(typeflag, name, body.len() as u64)
            .as_bytes()
            .to_vec();
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(512), 0);
        out.extend_from_slice(file_header("f").as_bytes());
        out.extend_from_slice(&[b'x'; 512]);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + base.to_string().len();
            if len.to_string().len() != base.to_string().len() {
                len = base + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }

    fn merge(bytes: impl Read) -> Result<(FsTree, MergeStats)> {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = FsTree::new();
        let mut store = ContentStore::new_in(dir.path()).unwrap();
        let layer = LayerSource {
            name: "sha256:feed".into(),
        };
        let stats = merge_layer(&mut tree, &mut store, &layer, bytes)?;
        Ok((tree, stats))
    }

    fn kind(e: &anyhow::Error) -> LayerErrorKind {
        e.downcast_ref::<LayerError>()
            .unwrap_or_else(|| panic!("not a layer error: {e:#}"))
            .kind
            .clone()
    }

    /// Counts what was read from it.
    struct Counted<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn oversized_records_are_refused_before_their_body_is_read() {
        for (typeflag, name) in [
            (b'L', &b"././@LongLink"[..]),
            (b'K', b"././@LongLink"),
            (b'x', b"PaxHeaders/f"),
            (b'g', b"pax_global_header"),
        ] {
            // A record announcing 1 TiB, backed by an endless stream.
            let head = gnu_header(typeflag, name, 1 << 40).as_bytes().to_vec();
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let stream = Counted(Cursor::new(head).chain(std::io::repeat(b'a')), read.clone());
            let e = merge(stream).unwrap_err();
            assert_eq!(
                kind(&e),
                LayerErrorKind::RecordTooLarge {
                    typeflag,
                    size: 1 << 40
                }
            );
            let msg = format!("{e:#}");
            assert!(msg.starts_with("layer sha256:feed: entry"), "{msg}");
            assert!(msg.contains("1099511627776 bytes"), "{msg}");
            assert!(
                read.get() <= 64 << 10,
                "{} bytes read for {msg}",
                read.get()
            );
        }
        // Just over the limit, with a real body.
        let e =
            merge(&with_record(b'L', b"././@LongLink", &vec![b'a'; MAX_RECORD as usize + 1])[..])
                .unwrap_err();
        assert_eq!(
            kind(&e),
            LayerErrorKind::RecordTooLarge {
                typeflag: b'L',
                size: MAX_RECORD + 1
            }
        );
    }

    #[test]
    fn records_up_to_the_limit_and_long_paths_up_to_4096_bytes_work() {
        // A 4096-byte path in a GNU long name, and a PAX header of exactly
        // the limit (the path plus a large xattr).
        let path = format!("{}ff", "d/".repeat(2047));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &path, &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let (tree, _) = merge(&bytes[..]).unwrap();
        assert!(tree.lookup_path(path.as_bytes()).is_some());

        let xattr_len = (60_000..MAX_RECORD as usize)
            .find(|&n| pax(&[("SCHILY.xattr.user.big", &vec![b'v'; n])]).len() as u64 == MAX_RECORD)
            .unwrap();
        let records = pax(&[("SCHILY.xattr.user.big", &vec![b'v'; xattr_len])]);
        assert_eq!(records.len() as u64, MAX_RECORD);
        let (tree, _) = merge(&with_record(b'x', b"PaxHeaders/f", &records)[..]).unwrap();
        let f = tree.inode(tree.lookup_path(b"f").unwrap());
        assert_eq!(f.meta.xattrs[&b"user.big"[..]].len(), xattr_len);
    }

    #[test]
    fn paths_and_link_targets_over_4096_bytes_are_refused() {
        let long = "p/".repeat(2100) + "f";
        let e = merge(&with_record(b'x', b"PaxHeaders/f", &pax(&[("path", long.as_bytes())]))[..])
            .unwrap_err();
        assert_eq!(kind(&e), LayerErrorKind::PathTooLong { len: long.len() });
        let e = merge(&with_record(b'L', b"././@LongLink", long.as_bytes())[..]).unwrap_err();
        assert_eq!(kind(&e), LayerErrorKind::PathTooLong { len: long.len() });
        let e = merge(&with_record(b'K', b"././@LongLink", long.as_bytes())[..]).unwrap_err();
        assert_eq!(kind(&e), LayerErrorKind::LinkTooLong { len: long.len() });
    }

    #[test]
    fn owners_beyond_32_bits_are_refused_not_wrapped() {
        for (key, value) in [
            ("uid", "4294967296"),
            ("gid", "4294967296"),
            ("uid", "18446744073709551615"),
        ] {
            let e =
                merge(&with_record(b'x', b"PaxHeaders/f", &pax(&[(key, value.as_bytes())]))[..])
                    .unwrap_err();
            assert_eq!(
                kind(&e),
                LayerErrorKind::OutOfRange {
                    field: key.into(),
                    value: value.into(),
                    source: "PAX record"
                }
            );
            assert!(
                format!("{e:#}").contains("does not fit in 32 bits"),
                "{e:#}"
            );
        }
        let ok = pax(&[("uid", b"4294967295"), ("gid", b"3000000")]);
        let (tree, _) = merge(&with_record(b'x', b"PaxHeaders/f", &ok)[..]).unwrap();
        let f = tree.inode(tree.lookup_path(b"f").unwrap());
        assert_eq!((f.meta.uid, f.meta.gid), (u32::MAX, 3_000_000));
        for bad in ["-1", "1e3", "+5", " 7", ""] {
            let e =
                merge(&with_record(b'x', b"PaxHeaders/f", &pax(&[("uid", bad.as_bytes())]))[..])
                    .unwrap_err();
            assert_eq!(
                kind(&e),
                LayerErrorKind::BadPax { key: "uid".into() },
                "{bad:?}"
            );
        }
    }

    /// GNU base-256 header fields hold more than 32 bits.
    #[test]
    fn header_fields_are_refused_when_out_of_range_or_not_numbers() {
        let entry = |edit: &dyn Fn(&mut [u8; 512])| {
            let mut h = *file_header("f").as_bytes();
            edit(&mut h);
            let mut t = tar::Header::from_byte_slice(&h).clone();
            t.set_cksum();
            let mut out = t.as_bytes().to_vec();
            out.extend_from_slice(&[b'x'; 512]);
            out.extend_from_slice(&[0; 1024]);
            merge(&out[..])
        };
        let e = entry(&|h| {
            h[108..116].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0]);
        })
        .unwrap_err();
        assert_eq!(
            kind(&e),
            LayerErrorKind::OutOfRange {
                field: "uid".into(),
                value: "4294967296".into(),
                source: "tar header"
            }
        );
        let e = entry(&|h| h[116..124].copy_from_slice(b"12x4567\0")).unwrap_err();
        assert_eq!(kind(&e), LayerErrorKind::BadField { field: "gid" });
        let e = entry(&|h| {
            h[136..148].copy_from_slice(&[
                0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ]);
        })
        .unwrap_err();
        assert!(
            matches!(kind(&e), LayerErrorKind::OutOfRange { ref field, .. } if field == "mtime"),
            "{e:#}"
        );
        // Blank fields are 0, as other tar readers take them.
        let (tree, _) = entry(&|h| h[108..124].fill(0)).unwrap();
        let f = tree.inode(tree.lookup_path(b"f").unwrap());
        assert_eq!((f.meta.uid, f.meta.gid), (0, 0));
    }

    /// The tar reader sizes an entry by a PAX `size` it can parse; one it
    /// cannot parse would leave it and other tools disagreeing.
    #[test]
    fn pax_size_must_be_the_entry_size() {
        let (tree, _) =
            merge(&with_record(b'x', b"PaxHeaders/f", &pax(&[("size", b"1")]))[..]).unwrap();
        assert!(tree.lookup_path(b"f").is_some());
        for bad in ["0x1", "one", "-1"] {
            let e =
                merge(&with_record(b'x', b"PaxHeaders/f", &pax(&[("size", bad.as_bytes())]))[..])
                    .unwrap_err();
            assert_eq!(
                kind(&e),
                LayerErrorKind::BadPax { key: "size".into() },
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// xorshift64*: a fixed-seed generator so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn sample_layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        for (i, path) in ["d/", "d/f", "d/.wh.x", "l", "h", "d/.wh..wh..opq"]
            .iter()
            .enumerate()
        {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            let (kind, data): (_, &[u8]) = match i {
                0 => (tar::EntryType::Directory, b""),
                3 => (tar::EntryType::Symlink, b""),
                4 => (tar::EntryType::Link, b""),
                _ => (tar::EntryType::Regular, b"some file content"),
            };
            if i == 3 {
                h.set_link_name("/d/f").unwrap();
            }
            if i == 4 {
                h.set_link_name("d/f").unwrap();
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Random corruption of a valid layer must give an error or a tree,
    /// never a panic.
    #[test]
    fn mutated_layers_never_panic() {
        let base = sample_layer();
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut data = base.clone();
            for _ in 0..(rng.next() % 8 + 1) {
                let i = (rng.next() as usize) % data.len();
                data[i] = rng.next() as u8;
            }
            if rng.next() % 4 == 0 {
                data.truncate((rng.next() as usize) % data.len());
            }
            let mut tree = FsTree::new();
            let mut store = ContentStore::new_in(dir.path()).unwrap();
            let _ = merge_layer(
                &mut tree,
                &mut store,
                &LayerSource {
                    name: "fuzz".into(),
                },
                &data[..],
            );
        }
    }
}

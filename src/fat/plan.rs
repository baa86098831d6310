//! The first pass: names every entry and gives every directory and file one
//! contiguous run of clusters, in sorted walk order (a directory before its
//! children), so the second pass writes in ascending cluster order. A
//! FAT12/16 root directory gets no clusters: it is the fixed region before
//! the data.

use anyhow::{bail, Context, Result};

use super::geometry::MEDIA;
use super::names::{self, short_entry, DirName, DosTime, ENTRY};
use super::{label_entry, FatType, ATTR_ARCHIVE, ATTR_DIRECTORY};
use crate::tree::{ContentRef, FsTree, InodeId, InodeKind};

/// A directory may hold at most this many 32-byte entries.
const MAX_DIR_ENTRIES: usize = 65_536;

/// What a run of clusters holds.
pub enum Extent {
    /// Index into [`Plan::dirs`].
    Dir(usize),
    File {
        content: ContentRef,
        path: String,
    },
}

pub struct Run {
    pub first: u32,
    pub clusters: u32,
    pub what: Extent,
}

pub struct Child {
    name: DirName,
    is_dir: bool,
    first: u32,
    size: u32,
}

pub struct DirPlan {
    /// Path without the leading `/` (empty for the root).
    pub path: String,
    first: u32,
    /// First cluster of the parent, 0 when the parent is the root (as FAT
    /// requires), unused for the root itself.
    parent: u32,
    is_root: bool,
    children: Vec<Child>,
}

pub struct Plan {
    pub dirs: Vec<DirPlan>,
    /// In ascending cluster order.
    pub extents: Vec<Run>,
    /// Regular files, empty ones included.
    pub files: usize,
    /// Next free cluster number (may exceed the filesystem: checked later).
    next: u64,
    cluster_bytes: u64,
    has_label: bool,
    /// Entries of a fixed root directory region (FAT12/16); `None` when the
    /// root is a cluster chain (FAT32).
    fixed_root: Option<usize>,
    fat_type: FatType,
}

pub fn plan(
    tree: &FsTree,
    cluster_bytes: u64,
    has_label: bool,
    fixed_root: Option<usize>,
    fat_type: FatType,
) -> Result<Plan> {
    let mut p = Plan {
        dirs: Vec::new(),
        extents: Vec::new(),
        files: 0,
        next: 2,
        cluster_bytes,
        has_label,
        fixed_root,
        fat_type,
    };
    p.plan_dir(tree, tree.root(), String::new(), 0)?;
    Ok(p)
}

impl Plan {
    pub fn used_clusters(&self) -> u64 {
        self.next - 2
    }

    /// Reserves `n` clusters; returns the first (0 for none). Cluster
    /// numbers past u32 are caught by the capacity check.
    fn alloc(&mut self, n: u64) -> u32 {
        if n == 0 {
            return 0;
        }
        let first = self.next;
        self.next += n;
        first.min(u64::from(u32::MAX)) as u32
    }

    fn plan_dir(&mut self, tree: &FsTree, id: InodeId, path: String, parent: u32) -> Result<u32> {
        let is_root = id == tree.root();
        let kids: Vec<(&[u8], InodeId)> = tree.children(id).collect();
        let raw: Vec<&[u8]> = kids.iter().map(|(n, _)| *n).collect();
        let child_path = |name: &[u8]| {
            let name = String::from_utf8_lossy(name);
            if path.is_empty() {
                name.into_owned()
            } else {
                format!("{path}/{name}")
            }
        };
        let mut dir_names = Vec::with_capacity(kids.len());
        for (r, (name, _)) in names::name_entries(&raw)?.into_iter().zip(&kids) {
            dir_names
                .push(r.with_context(|| format!("cannot store /{} on FAT", child_path(name)))?);
        }
        let fixed = if is_root {
            usize::from(self.has_label)
        } else {
            2
        };
        let entries = fixed + dir_names.iter().map(DirName::entry_count).sum::<usize>();
        if entries > MAX_DIR_ENTRIES {
            bail!("directory /{path} has too many entries for FAT ({entries} of at most {MAX_DIR_ENTRIES})");
        }
        let fixed = self.fixed_root.filter(|_| is_root);
        if let Some(max) = fixed {
            if entries > max {
                let label = if self.has_label {
                    ", the volume label's included"
                } else {
                    ""
                };
                bail!(
                    "the root directory of a {} holds at most {max} entries and this one needs \
                     {entries}{label} (a long name takes one entry per 13 characters, plus one); \
                     move files into a subdirectory, shorten names or use FAT32",
                    self.fat_type
                );
            }
        }
        let clusters = match fixed {
            Some(_) => 0,
            None => ((entries * ENTRY) as u64)
                .div_ceil(self.cluster_bytes)
                .max(1),
        };
        let first = self.alloc(clusters);
        let index = self.dirs.len();
        self.dirs.push(DirPlan {
            path: path.clone(),
            first,
            parent,
            is_root,
            children: Vec::new(),
        });
        if clusters > 0 {
            self.extents.push(Run {
                first,
                clusters: clusters as u32,
                what: Extent::Dir(index),
            });
        }
        let mut children = Vec::with_capacity(kids.len());
        for (name, (raw_name, child)) in dir_names.into_iter().zip(kids) {
            let cpath = child_path(raw_name);
            let (is_dir, first, size) = match &tree.inode(child).kind {
                InodeKind::Directory { .. } => {
                    let parent_ref = if is_root { 0 } else { first };
                    (true, self.plan_dir(tree, child, cpath, parent_ref)?, 0)
                }
                InodeKind::File { content } => {
                    let Ok(size) = u32::try_from(content.len) else {
                        bail!(
                            "/{cpath} is {} bytes: FAT files hold at most 4 GiB - 1",
                            content.len
                        );
                    };
                    self.files += 1;
                    let n = content.len.div_ceil(self.cluster_bytes);
                    let first = self.alloc(n);
                    if n > 0 {
                        self.extents.push(Run {
                            first,
                            clusters: n as u32,
                            what: Extent::File {
                                content: *content,
                                path: cpath,
                            },
                        });
                    }
                    (false, first, size)
                }
                other => bail!(
                    "/{cpath} is a {}: FAT can hold only directories and regular files",
                    other.describe()
                ),
            };
            children.push(Child {
                name,
                is_dir,
                first,
                size,
            });
        }
        self.dirs[index].children = children;
        Ok(first)
    }

    /// The directory's entries, unpadded.
    pub fn encode_dir(&self, index: usize, label: Option<[u8; 11]>, t: DosTime, out: &mut Vec<u8>) {
        out.clear();
        let d = &self.dirs[index];
        if d.is_root {
            if let Some(label) = label {
                out.extend_from_slice(&label_entry(&label, t));
            }
        } else {
            out.extend_from_slice(&short_entry(b".          ", ATTR_DIRECTORY, d.first, 0, t));
            out.extend_from_slice(&short_entry(b"..         ", ATTR_DIRECTORY, d.parent, 0, t));
        }
        for c in &d.children {
            let attr = if c.is_dir {
                ATTR_DIRECTORY
            } else {
                ATTR_ARCHIVE
            };
            c.name.encode(attr, c.first, c.size, t, out);
        }
    }

    /// One FAT of `bytes` bytes: the two reserved entries, then a chain per
    /// run, zeros (free) after. The caller sized it for every cluster.
    pub fn fat_table(&self, bytes: usize) -> Vec<u8> {
        let mut fat = vec![0u8; bytes];
        let ty = self.fat_type;
        let eoc = ty.end_of_chain();
        let mut put = |cluster: u32, value: u32| {
            let c = cluster as usize;
            match ty {
                FatType::Fat32 => fat[c * 4..c * 4 + 4].copy_from_slice(&value.to_le_bytes()),
                FatType::Fat16 => {
                    fat[c * 2..c * 2 + 2].copy_from_slice(&(value as u16).to_le_bytes())
                }
                // Two entries share three bytes: an even cluster takes the
                // low 12 bits, an odd one the high 12.
                FatType::Fat12 => {
                    let at = c * 3 / 2;
                    let pair = u16::from_le_bytes([fat[at], fat[at + 1]]);
                    let v = (value & 0xFFF) as u16;
                    let pair = if c % 2 == 0 {
                        (pair & 0xF000) | v
                    } else {
                        (pair & 0x000F) | (v << 4)
                    };
                    fat[at..at + 2].copy_from_slice(&pair.to_le_bytes());
                }
            }
        };
        // FAT[0]: the media byte with every other bit set; FAT[1]: an
        // end-of-chain value (on FAT16/32 its top bits say "clean, no
        // errors").
        put(0, (eoc & !0xFF) | u32::from(MEDIA));
        put(1, eoc);
        for run in &self.extents {
            for i in 0..run.clusters {
                let c = run.first + i;
                put(c, if i + 1 == run.clusters { eoc } else { c + 1 });
            }
        }
        fat
    }
}

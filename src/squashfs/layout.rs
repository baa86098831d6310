//! The metadata pass: inodes and directory listings in the order the plan
//! fixed, plus the export table (inode number → inode reference) and the
//! xattr table they refer to.

use anyhow::{bail, Result};

use super::compress::Compressor;
use super::data::DataOutput;
use super::dir::{encode_listing, Entry};
use super::inode::{self, DirIndex, DirInode, FileInode, Header};
use super::metadata::{meta_ref, MetaWriter, METADATA_SIZE};
use super::plan::{Event, Plan};
use super::xattr::XattrTable;
use super::Compression;
use crate::tree::{FsTree, InodeId, InodeKind};

pub(crate) struct Laid {
    pub inode_table: Vec<u8>,
    pub dir_table: Vec<u8>,
    pub root_ref: u64,
    /// Export table entries: the reference of inode 1, 2, … as u64.
    pub export: Vec<u8>,
    pub xattrs: XattrTable,
}

/// Where a directory's listing went.
struct Listing {
    start_block: u32,
    offset: u16,
    size: u32,
    index: Vec<DirIndex>,
}

pub(crate) fn lay_out(
    tree: &FsTree,
    plan: &Plan,
    data: &DataOutput,
    compression: &Compression,
) -> Result<Laid> {
    let comp = || Compressor::new(compression, METADATA_SIZE as u32);
    let mut inodes = MetaWriter::new(comp()?);
    let mut dirs = MetaWriter::new(comp()?);
    let mut xattrs = XattrTable::new(comp()?);
    let cap = tree.inode_capacity();
    let mut refs = vec![0u64; cap];
    let mut listings: Vec<Option<Listing>> = Vec::new();
    listings.resize_with(cap, || None);
    let mut export = vec![0u8; plan.inode_count as usize * 8];
    let mut buf = Vec::new();
    let mut entries = Vec::new();

    for &ev in &plan.events {
        match ev {
            Event::Inode(id) => {
                let (block, offset) = inodes.position();
                if block > u32::MAX as u64 {
                    bail!("the inode table is larger than 4 GiB");
                }
                let r = meta_ref(block, offset);
                refs[id.0 as usize] = r;
                let number = plan.number[id.0 as usize];
                export[(number as usize - 1) * 8..number as usize * 8]
                    .copy_from_slice(&r.to_le_bytes());
                buf.clear();
                let listing = listings[id.0 as usize].take();
                encode_inode(&mut buf, tree, plan, data, &mut xattrs, id, listing)?;
                inodes.append(&buf)?;
            }
            Event::Listing(d) => {
                entries.clear();
                entries.extend(tree.children(d).map(|(name, c)| Entry {
                    name,
                    inode_ref: refs[c.0 as usize],
                    number: plan.number[c.0 as usize],
                    kind: inode::basic_type(&tree.inode(c).kind),
                }));
                let at = dirs.uncompressed_len();
                let (start_block, offset) = dirs.position();
                if start_block > u32::MAX as u64 {
                    bail!("the directory table is larger than 4 GiB");
                }
                buf.clear();
                let points = encode_listing(&entries, at, &mut buf);
                let size = u32::try_from(buf.len())
                    .map_err(|_| anyhow::anyhow!("{}: listing too large", plan.path(tree, d)))?;
                dirs.append(&buf)?;
                let index = points
                    .into_iter()
                    .map(|p| DirIndex {
                        index: p.offset,
                        start: dirs.block_start_of(p.table_pos) as u32,
                        name: p.name,
                    })
                    .collect();
                listings[d.0 as usize] = Some(Listing {
                    start_block: start_block as u32,
                    offset,
                    size,
                    index,
                });
            }
        }
    }
    let root_ref = refs[tree.root().0 as usize];
    let (inode_table, _) = inodes.finish()?;
    let (dir_table, _) = dirs.finish()?;
    Ok(Laid {
        inode_table,
        dir_table,
        root_ref,
        export,
        xattrs,
    })
}

fn encode_inode(
    out: &mut Vec<u8>,
    tree: &FsTree,
    plan: &Plan,
    data: &DataOutput,
    xattrs: &mut XattrTable,
    id: InodeId,
    listing: Option<Listing>,
) -> Result<()> {
    let node = tree.inode(id);
    let meta = &node.meta;
    let h = Header {
        mode: meta.mode,
        uid: plan.id_index(meta.uid),
        gid: plan.id_index(meta.gid),
        mtime: inode::clamp_mtime(meta.mtime),
        number: plan.number[id.0 as usize],
    };
    let nlink = plan.nlink[id.0 as usize];
    let xattr = if meta.xattrs.is_empty() {
        None
    } else {
        xattrs.add(&meta.xattrs)?
    };
    match &node.kind {
        InodeKind::Directory { .. } => {
            let l = listing.unwrap_or_else(|| unreachable!("listings come before their inode"));
            let parent = match plan.parent(id) {
                Some(p) => plan.number[p.0 as usize],
                None => plan.inode_count + 1,
            };
            inode::encode_dir(
                out,
                &h,
                &DirInode {
                    start_block: l.start_block,
                    offset: l.offset,
                    listing_size: l.size,
                    nlink,
                    parent,
                    xattr,
                    index: &l.index,
                },
            );
        }
        InodeKind::File { content } => {
            let f = &data.files[plan.file_slot[id.0 as usize] as usize];
            inode::encode_file(
                out,
                &h,
                &FileInode {
                    start: f.start,
                    size: content.len,
                    fragment: f.fragment,
                    blocks: &f.blocks,
                    nlink,
                    xattr,
                    sparse: f.sparse,
                },
            );
        }
        InodeKind::Symlink { target } => inode::encode_symlink(out, &h, target, nlink, xattr),
        InodeKind::CharDevice { major, minor } | InodeKind::BlockDevice { major, minor } => {
            let basic = inode::basic_type(&node.kind);
            // Checked by the plan.
            let rdev = inode::new_encode_dev(*major, *minor).unwrap_or(0);
            inode::encode_special(out, &h, basic, Some(rdev), nlink, xattr);
        }
        InodeKind::Fifo | InodeKind::Socket => {
            inode::encode_special(out, &h, inode::basic_type(&node.kind), None, nlink, xattr);
        }
    }
    Ok(())
}

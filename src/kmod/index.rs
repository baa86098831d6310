//! libkmod's binary index format (`modules.*.bin`): a path-compressed trie
//! of ASCII keys, each key holding a list of values sorted by priority.
//!
//! The file is a 12-byte header (magic `0xB007F457`, version 2.1, the
//! offset of the root node) followed by the nodes, children before their
//! parent. All integers are big-endian `u32`. A node offset carries flags
//! in its high nibble saying which parts the node has:
//!
//! ```text
//! prefix   (0x80000000)  NUL-terminated rest of the label
//! children (0x20000000)  first char, last char, (last - first + 1) offsets
//! values   (0x40000000)  count, then count × (priority, NUL-terminated value)
//! ```
//!
//! [`Index::insert`] builds the trie exactly as depmod does (same node
//! splits, same value order), so [`Index::to_bytes`] gives the bytes depmod
//! writes for the same insertions in the same order.

use std::collections::BTreeMap;

use thiserror::Error;

pub const MAGIC: u32 = 0xB007_F457;
pub const VERSION: u32 = 0x0002_0001;

const FLAG_PREFIX: u32 = 0x8000_0000;
const FLAG_VALUES: u32 = 0x4000_0000;
const FLAG_CHILDREN: u32 = 0x2000_0000;
const OFFSET_MASK: u32 = 0x0FFF_FFFF;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("index key or value {0:?} is not 7-bit ASCII without NUL bytes")]
    NotAscii(String),
    #[error("index would be larger than the format's 256 MiB limit")]
    TooLarge,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// The rest of this node's label after the character that leads to it.
    prefix: Vec<u8>,
    /// (priority, value), ascending priority; equal priorities newest first.
    values: Vec<(u32, Vec<u8>)>,
    /// Character → node.
    children: BTreeMap<u8, usize>,
}

/// An index being built in memory.
#[derive(Debug, Clone)]
pub struct Index {
    nodes: Vec<Node>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

fn check(s: &[u8]) -> Result<(), IndexError> {
    if s.iter().all(|&c| c != 0 && c < 0x80) {
        Ok(())
    } else {
        Err(IndexError::NotAscii(
            String::from_utf8_lossy(s).into_owned(),
        ))
    }
}

impl Index {
    pub fn new() -> Self {
        Index {
            nodes: vec![Node::default()],
        }
    }

    /// Adds `value` under `key`. Returns whether `key` already held the same
    /// value (depmod warns about such duplicates; both are kept).
    pub fn insert(&mut self, key: &str, value: &str, priority: u32) -> Result<bool, IndexError> {
        let (key, value) = (key.as_bytes(), value.as_bytes());
        check(key)?;
        check(value)?;
        let mut node = 0;
        let mut i = 0;
        loop {
            // Make the node's prefix a prefix of key[i..], splitting the
            // node where they differ.
            let prefix_len = self.nodes[node].prefix.len();
            let mut j = 0;
            while j < prefix_len {
                let ch = self.nodes[node].prefix[j];
                if key.get(i + j) != Some(&ch) {
                    let old = &mut self.nodes[node];
                    let tail = Node {
                        prefix: old.prefix[j + 1..].to_vec(),
                        values: std::mem::take(&mut old.values),
                        children: std::mem::take(&mut old.children),
                    };
                    old.prefix.truncate(j);
                    let id = self.nodes.len();
                    self.nodes.push(tail);
                    self.nodes[node].children.insert(ch, id);
                    break;
                }
                j += 1;
            }
            i += j;
            let Some(&ch) = key.get(i) else {
                return Ok(add_value(&mut self.nodes[node].values, value, priority));
            };
            match self.nodes[node].children.get(&ch) {
                Some(&child) => {
                    node = child;
                    i += 1;
                }
                None => {
                    let id = self.nodes.len();
                    self.nodes.push(Node {
                        prefix: key[i + 1..].to_vec(),
                        values: vec![(priority, value.to_vec())],
                        children: BTreeMap::new(),
                    });
                    self.nodes[node].children.insert(ch, id);
                    return Ok(false);
                }
            }
        }
    }

    /// The file: header, then the nodes in post-order (children in
    /// character order before their parent), as depmod lays them out.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        let mut offsets = vec![0u32; self.nodes.len()];
        // Iterative post-order: (node, children already pushed).
        let mut stack = vec![(0usize, false)];
        while let Some((id, expanded)) = stack.pop() {
            let node = &self.nodes[id];
            if !expanded {
                stack.push((id, true));
                for &child in node.children.values().rev() {
                    stack.push((child, false));
                }
                continue;
            }
            let mut offset = u32::try_from(out.len()).map_err(|_| IndexError::TooLarge)?;
            if offset & !OFFSET_MASK != 0 {
                return Err(IndexError::TooLarge);
            }
            if !node.prefix.is_empty() {
                out.extend_from_slice(&node.prefix);
                out.push(0);
                offset |= FLAG_PREFIX;
            }
            if let (Some((&first, _)), Some((&last, _))) = (
                node.children.first_key_value(),
                node.children.last_key_value(),
            ) {
                out.push(first);
                out.push(last);
                for c in first..=last {
                    let child = node.children.get(&c).map_or(0, |&n| offsets[n]);
                    out.extend_from_slice(&child.to_be_bytes());
                }
                offset |= FLAG_CHILDREN;
            }
            if !node.values.is_empty() {
                let count = u32::try_from(node.values.len()).map_err(|_| IndexError::TooLarge)?;
                out.extend_from_slice(&count.to_be_bytes());
                for (priority, value) in &node.values {
                    out.extend_from_slice(&priority.to_be_bytes());
                    out.extend_from_slice(value);
                    out.push(0);
                }
                offset |= FLAG_VALUES;
            }
            offsets[id] = offset;
        }
        if out.len() > OFFSET_MASK as usize {
            return Err(IndexError::TooLarge);
        }
        out[8..12].copy_from_slice(&offsets[0].to_be_bytes());
        Ok(out)
    }
}

/// Inserts before the first value of equal or higher priority, as depmod
/// does. Returns whether the same value was already there.
fn add_value(values: &mut Vec<(u32, Vec<u8>)>, value: &[u8], priority: u32) -> bool {
    let duplicate = values.iter().any(|(_, v)| v == value);
    let at = values
        .iter()
        .position(|(p, _)| *p >= priority)
        .unwrap_or(values.len());
    values.insert(at, (priority, value.to_vec()));
    duplicate
}

/// Why a file is not a readable index.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("not a kmod index (bad magic)")]
    Magic,
    #[error("unsupported kmod index version {0:#x}")]
    Version(u32),
    #[error("kmod index node at {0} lies outside the file")]
    OutOfBounds(usize),
    #[error("kmod index nodes form a loop")]
    Loop,
}

/// Reads an index back into its (key, priority, value) entries, in key
/// order: the inverse of [`Index::to_bytes`], for checking files.
pub fn read_entries(bytes: &[u8]) -> Result<Vec<(String, u32, String)>, ReadError> {
    let u32_at = |at: usize| -> Result<u32, ReadError> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or(ReadError::OutOfBounds(at))
    };
    let c_str = |at: usize| -> Result<(&[u8], usize), ReadError> {
        let rest = bytes.get(at..).ok_or(ReadError::OutOfBounds(at))?;
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(ReadError::OutOfBounds(at))?;
        Ok((&rest[..end], at + end + 1))
    };
    if u32_at(0)? != MAGIC {
        return Err(ReadError::Magic);
    }
    let version = u32_at(4)?;
    if version >> 16 != VERSION >> 16 {
        return Err(ReadError::Version(version));
    }
    let mut out = Vec::new();
    // Children always lie before their parent, so offsets strictly
    // decrease along any path: a node at or after its parent is a loop.
    let mut stack = vec![(u32_at(8)?, Vec::new(), usize::MAX)];
    while let Some((offset, mut key, parent)) = stack.pop() {
        let mut at = (offset & OFFSET_MASK) as usize;
        if at >= parent {
            return Err(ReadError::Loop);
        }
        let node_at = at;
        if offset & FLAG_PREFIX != 0 {
            let (p, next) = c_str(at)?;
            key.extend_from_slice(p);
            at = next;
        }
        let mut children = Vec::new();
        if offset & FLAG_CHILDREN != 0 {
            let first = *bytes.get(at).ok_or(ReadError::OutOfBounds(at))?;
            let last = *bytes.get(at + 1).ok_or(ReadError::OutOfBounds(at))?;
            at += 2;
            for c in first..=last {
                let child = u32_at(at)?;
                at += 4;
                if child != 0 {
                    let mut k = key.clone();
                    k.push(c);
                    children.push((child, k, node_at));
                }
            }
        }
        if offset & FLAG_VALUES != 0 {
            let count = u32_at(at)?;
            at += 4;
            for _ in 0..count {
                let priority = u32_at(at)?;
                let (v, next) = c_str(at + 4)?;
                at = next;
                out.push((
                    String::from_utf8_lossy(&key).into_owned(),
                    priority,
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut idx = Index::new();
        for (k, v, p) in entries {
            idx.insert(k, v, *p).unwrap();
        }
        idx.to_bytes().unwrap()
    }

    #[test]
    fn empty_index_is_a_header_and_an_empty_root() {
        let b = build(&[]);
        assert_eq!(
            b,
            [0xB0, 0x07, 0xF4, 0x57, 0, 2, 0, 1, 0, 0, 0, 12],
            "root at offset 12 with no parts"
        );
        assert!(read_entries(&b).unwrap().is_empty());
    }

    #[test]
    fn single_key_layout_byte_by_byte() {
        let b = build(&[("ab", "v", 7)]);
        let mut want = vec![0xB0, 0x07, 0xF4, 0x57, 0, 2, 0, 1];
        // Root offset: node at 24 with children.
        want.extend_from_slice(&(0x2000_0000u32 | 24).to_be_bytes());
        // Leaf at 12: prefix "b", one value (7, "v").
        want.extend_from_slice(b"b\0");
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&7u32.to_be_bytes());
        want.extend_from_slice(b"v\0");
        // Root at 24: children 'a'..'a' → leaf (prefix | values | 12).
        want.extend_from_slice(b"aa");
        want.extend_from_slice(&(0xC000_0000u32 | 12).to_be_bytes());
        assert_eq!(b, want);
    }

    #[test]
    fn splits_nodes_and_reads_back_every_entry() {
        let entries = [
            ("once", "3", 0),
            ("ask", "1", 0),
            ("on", "2", 0),
            ("ate", "4", 0),
            ("one", "5", 0),
            ("o", "6", 0),
            ("pci:v*d*", "7", 1),
        ];
        let b = build(&entries);
        let mut got = read_entries(&b).unwrap();
        got.sort();
        let mut want: Vec<(String, u32, String)> = entries
            .iter()
            .map(|(k, v, p)| (k.to_string(), *p, v.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want);
        // Insertion order does not change the bytes when keys are distinct.
        let mut rev = entries;
        rev.reverse();
        assert_eq!(build(&rev), b);
    }

    #[test]
    fn values_sorted_by_priority_newest_first_on_ties() {
        let mut idx = Index::new();
        assert!(!idx.insert("k", "b", 5).unwrap());
        assert!(!idx.insert("k", "a", 1).unwrap());
        assert!(!idx.insert("k", "c", 5).unwrap());
        assert!(idx.insert("k", "a", 9).unwrap(), "duplicate value reported");
        let got: Vec<(u32, String)> = read_entries(&idx.to_bytes().unwrap())
            .unwrap()
            .into_iter()
            .map(|(_, p, v)| (p, v))
            .collect();
        assert_eq!(
            got,
            [
                (1, "a".to_string()),
                (5, "c".to_string()),
                (5, "b".to_string()),
                (9, "a".to_string())
            ]
        );
    }

    #[test]
    fn sparse_children_get_zero_offsets() {
        let b = build(&[("a", "1", 0), ("c", "2", 0)]);
        // Root: 'a'..'c' with a zero offset for 'b'.
        let root = u32::from_be_bytes(b[8..12].try_into().unwrap());
        assert_eq!(root & 0xF000_0000, 0x2000_0000);
        let at = (root & OFFSET_MASK) as usize;
        assert_eq!(&b[at..at + 2], b"ac");
        assert_eq!(&b[at + 6..at + 10], &[0, 0, 0, 0]);
        assert_eq!(read_entries(&b).unwrap().len(), 2);
    }

    #[test]
    fn rejects_non_ascii_and_bad_files() {
        let mut idx = Index::new();
        assert!(matches!(
            idx.insert("caf\u{e9}", "x", 0),
            Err(IndexError::NotAscii(_))
        ));
        assert_eq!(read_entries(b"no"), Err(ReadError::OutOfBounds(0)));
        assert_eq!(read_entries(b"nope"), Err(ReadError::Magic));
        let mut b = build(&[("x", "y", 0)]);
        b[0] = 0;
        assert_eq!(read_entries(&b), Err(ReadError::Magic));
        let mut b = build(&[("x", "y", 0)]);
        b[5] = 3;
        assert!(matches!(read_entries(&b), Err(ReadError::Version(_))));
        // A root pointing at itself is a loop, not a hang.
        let mut b = build(&[("x", "y", 0), ("z", "w", 0)]);
        let root = u32::from_be_bytes(b[8..12].try_into().unwrap());
        let at = (root & OFFSET_MASK) as usize;
        b[at + 2..at + 6].copy_from_slice(&root.to_be_bytes());
        assert_eq!(read_entries(&b), Err(ReadError::Loop));
    }
}

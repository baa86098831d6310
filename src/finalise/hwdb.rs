//! The udev hardware database, compiled as `systemd-hwdb update --usr`
//! compiles it (udev's postinst runs it), so the image ships
//! `/usr/lib/udev/hwdb.bin` and `systemd-hwdb-update.service` finds nothing
//! to do at boot. Left to the device, the compile takes longer than the
//! unit's 90 s timeout on a slow machine, and the failed unit counts
//! against a trial boot's health check.
//!
//! Sources (hwdb(7)): `*.hwdb` files of `/usr/lib/udev/hwdb.d` and
//! `/etc/udev/hwdb.d`, a file in /etc replacing the one of the same name,
//! read in file name order. A record is one or more match lines (globs
//! against a modalias) followed by property lines ` KEY=VALUE`, ended by an
//! empty line; `#` starts a comment. Each file gets a priority (1, 2, …
//! in that order) and each property its line number: on a lookup, of two
//! matching records setting the same key, the later file wins, and within
//! a file the later line.
//!
//! The binary format is systemd's (`src/libsystemd/sd-hwdb/hwdb-internal.h`,
//! written by `src/shared/hwdb-util.c`): a header, then the nodes of a radix
//! trie over the match strings in post-order (children, in character order,
//! before their parent), then a pool of NUL-terminated strings in which a
//! string that is the tail of one already stored points into it. All
//! integers are little-endian.
//!
//! ```text
//! header (80)  "KSLPHHRH", tool_version, file_size, header_size, node_size,
//!              child_entry_size, value_entry_size, nodes_root_off,
//!              nodes_len, strings_len                      (u64 each)
//! node (24)    prefix_off u64, children_count u8, 7 padding, values_count u64
//! child (16)   c u8, 7 padding, child_off u64          (children_count ×)
//! value (32)   key_off, value_off, filename_off u64, line_number u32,
//!              file_priority u16, 2 padding             (values_count ×)
//! ```
//!
//! Keys are stored with their leading space (readers skip keys without
//! one). Nodes, splits and string offsets follow systemd's insertion order
//! step by step, so the same sources give the same bytes as systemd-hwdb
//! (a unit test compares with the real tool).

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use thiserror::Error;

use crate::tree::edit::Editor;
use crate::tree::InodeKind;

/// Where `systemd-hwdb update --usr` writes the database.
pub const BIN: &str = "usr/lib/udev/hwdb.bin";
/// A database here is read first and makes the boot-time update run.
pub const ETC_BIN: &str = "etc/udev/hwdb.bin";
/// Source directories, lowest precedence first.
const SOURCE_DIRS: [&str; 2] = ["usr/lib/udev/hwdb.d", "etc/udev/hwdb.d"];

const SIGNATURE: &[u8; 8] = b"KSLPHHRH";
const HEADER_SIZE: u64 = 80;
const NODE_SIZE: u64 = 24;
const CHILD_SIZE: u64 = 16;
/// `trie_value_entry2_f`: key, value, file name, line, file priority.
const VALUE_SIZE: u64 = 32;
/// systemd's `LONG_LINE_MAX`: longer lines are a read error.
const LINE_MAX: usize = 1024 * 1024;

/// One source file: the path the database records for it and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: Vec<u8>,
}

/// A compiled database.
#[derive(Debug)]
pub struct Database {
    pub bytes: Vec<u8>,
    /// Property entries stored (one per match line and property).
    pub entries: usize,
}

/// A source systemd-hwdb would warn about (and, with `--strict`, fail on).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HwdbError {
    #[error("{file}:{line}: {problem}")]
    Source {
        file: String,
        line: u32,
        problem: Problem,
    },
    #[error("more than 65535 hwdb files")]
    TooManyFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("match line expected, got the indented property {0:?}")]
    PropertyWithoutMatch(String),
    #[error("property expected: the record's match lines have no properties")]
    MatchWithoutProperties,
    #[error("property or empty line expected, got {0:?}")]
    MatchAmongProperties(String),
    #[error("KEY=VALUE expected, got {0:?}")]
    NotKeyValue(String),
    #[error("empty key in {0:?}")]
    EmptyKey(String),
    #[error("line longer than 1 MiB")]
    LineTooLong,
}

/// What [`write`] put into the image.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    pub entries: usize,
    pub files: usize,
}

/// udev's postinst (`systemd-hwdb update`): compiles the image's hwdb
/// sources into [`BIN`], unless the image has no sources or already has a
/// compiled database (a base image keeps its own).
pub fn write(ed: &mut Editor<'_>) -> Result<Option<Written>> {
    if ed.exists(BIN) || ed.exists(ETC_BIN) {
        return Ok(None);
    }
    let sources = sources(ed)?;
    if sources.is_empty() {
        return Ok(None);
    }
    let db = compile(&sources, tool_version(ed)).context("compiling the udev hardware database")?;
    ed.write(BIN, &db.bytes, 0o644)?;
    Ok(Some(Written {
        entries: db.entries,
        files: sources.len(),
    }))
}

/// The `*.hwdb` files systemd-hwdb reads, in its order. Directories and
/// hidden files are not sources; a symlink to /dev/null masks a file of
/// /usr/lib and contributes nothing.
fn sources(ed: &Editor<'_>) -> Result<Vec<Source>> {
    let mut by_name = BTreeMap::new();
    for dir in SOURCE_DIRS {
        for name in ed.list(dir) {
            let path = format!("{dir}/{name}");
            let is_file = ed.lookup(&path).is_some_and(|id| {
                matches!(
                    ed.tree.inode(id).kind,
                    InodeKind::File { .. } | InodeKind::Symlink { .. }
                )
            });
            if is_file && name.ends_with(".hwdb") && !name.starts_with('.') {
                by_name.insert(name, path);
            }
        }
    }
    let mut out = Vec::with_capacity(by_name.len());
    for path in by_name.into_values() {
        let id = ed
            .lookup(&path)
            .ok_or_else(|| anyhow!("/{path}: not in the image"))?;
        let text = match &ed.tree.inode(id).kind {
            InodeKind::Symlink { target } if target == b"/dev/null" => Vec::new(),
            _ => ed
                .read_following(&path)?
                .ok_or_else(|| anyhow!("/{path}: a symlink to no regular file of the image"))?,
        };
        out.push(Source {
            path: format!("/{path}"),
            text,
        });
    }
    Ok(out)
}

/// The systemd version the image's own systemd-hwdb would record in the
/// header (the major version of its udev package); 0 when the image has
/// no dpkg database saying so. Readers only log this field.
fn tool_version(ed: &Editor<'_>) -> u64 {
    let Ok(packages) = crate::apt::install::installed_packages(ed.tree, ed.store) else {
        return 0;
    };
    let Some(udev) = packages.iter().find(|p| p.name == "udev") else {
        return 0;
    };
    let upstream = udev
        .version
        .split_once(':')
        .map_or(udev.version.as_str(), |(_, v)| v);
    let digits: String = upstream.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// Compiles `sources` (in priority order, lowest first) into the bytes
/// systemd-hwdb writes for them.
pub fn compile(sources: &[Source], tool_version: u64) -> Result<Database, HwdbError> {
    let mut trie = Trie::new();
    for (i, src) in sources.iter().enumerate() {
        let priority = u16::try_from(i + 1).map_err(|_| HwdbError::TooManyFiles)?;
        import(&mut trie, src, priority)?;
    }
    let entries = trie.nodes.iter().map(|n| n.values.len()).sum();
    Ok(Database {
        bytes: trie.store(tool_version),
        entries,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records.
    None,
    /// After a record's first match line.
    Match,
    /// After a record's first property.
    Data,
}

/// hwdb-util.c's `import_file`, with every warning an error.
fn import(trie: &mut Trie, src: &Source, priority: u16) -> Result<(), HwdbError> {
    let mut line_number = 0u32;
    let fail = |line, problem| HwdbError::Source {
        file: src.path.clone(),
        line,
        problem,
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut matches: Vec<&[u8]> = Vec::new();
    let mut state = State::None;
    for raw in Lines::new(&src.text) {
        line_number = line_number.wrapping_add(1);
        let raw = raw.map_err(|()| fail(line_number, Problem::LineTooLong))?;
        if raw.first() == Some(&b'#') {
            continue;
        }
        let mut line = match raw.iter().position(|&c| c == b'#') {
            Some(p) => &raw[..p],
            None => raw,
        };
        while let Some((last, rest)) = line.split_last() {
            if !is_space(*last) {
                break;
            }
            line = rest;
        }
        let indented = line.first() == Some(&b' ');
        match state {
            State::None if line.is_empty() => {}
            State::None if indented => {
                return Err(fail(
                    line_number,
                    Problem::PropertyWithoutMatch(lossy(line)),
                ))
            }
            State::None => {
                matches.push(line);
                state = State::Match;
            }
            State::Match if line.is_empty() => {
                return Err(fail(line_number, Problem::MatchWithoutProperties))
            }
            State::Match if !indented => matches.push(line),
            State::Data if line.is_empty() => {
                matches.clear();
                state = State::None;
            }
            State::Data if !indented => {
                return Err(fail(
                    line_number,
                    Problem::MatchAmongProperties(lossy(line)),
                ))
            }
            State::Match | State::Data => {
                state = State::Data;
                let eq = line
                    .iter()
                    .position(|&c| c == b'=')
                    .ok_or_else(|| fail(line_number, Problem::NotKeyValue(lossy(line))))?;
                let (mut key, value) = (&line[..eq], &line[eq + 1..]);
                // Runs of leading blanks become one; the key keeps it.
                while key.len() >= 2 && is_blank(key[0]) && is_blank(key[1]) {
                    key = &key[1..];
                }
                if key.len() < 2 {
                    return Err(fail(line_number, Problem::EmptyKey(lossy(line))));
                }
                for m in &matches {
                    trie.insert(
                        m,
                        Entry {
                            key,
                            value,
                            file: src.path.as_bytes(),
                            line: line_number,
                            priority,
                        },
                    );
                }
            }
        }
    }
    if state == State::Match {
        return Err(fail(line_number, Problem::MatchWithoutProperties));
    }
    Ok(())
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// C's `isspace` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Lines as systemd's `read_line()` splits them: a line ends at `\n`,
/// `\r`, `\r\n`, `\n\r` or NUL; a line of 1 MiB or more is an error.
struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Self {
        Lines { text, pos: 0 }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.text[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let marker = |c: u8| match c {
            0 => 1u8,
            b'\n' => 2,
            b'\r' => 4,
            _ => 0,
        };
        let len = rest
            .iter()
            .position(|&c| marker(c) != 0)
            .unwrap_or(rest.len());
        if len >= LINE_MAX {
            self.pos = self.text.len();
            return Some(Err(()));
        }
        // One end of line is a run of distinct markers, NUL last.
        let mut seen = 0u8;
        let mut end = len;
        while let Some(&c) = rest.get(end) {
            let m = marker(c);
            if m == 0 || seen & m != 0 || seen & 1 != 0 {
                break;
            }
            seen |= m;
            end += 1;
        }
        self.pos += end;
        Some(Ok(&rest[..len]))
    }
}

/// One property of one match line, as inserted.
struct Entry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    file: &'a [u8],
    line: u32,
    priority: u16,
}

/// A stored property: offsets into the string pool.
#[derive(Debug, Clone, Copy)]
struct Value {
    key: usize,
    value: usize,
    file: usize,
    line: u32,
    priority: u16,
}

#[derive(Debug, Default)]
struct Node {
    /// Offset of the NUL-terminated rest of the label after the character
    /// that leads here.
    prefix: usize,
    /// (character, node), sorted by character.
    children: Vec<(u8, usize)>,
    /// Sorted by key.
    values: Vec<Value>,
}

/// The trie as hwdb-util.c builds it in memory.
struct Trie {
    nodes: Vec<Node>,
    strings: Strings,
}

impl Trie {
    fn new() -> Self {
        Trie {
            nodes: vec![Node::default()],
            strings: Strings::new(),
        }
    }

    /// hwdb-util.c's `trie_insert`: walks `search` down from the root,
    /// splitting a node whose label differs part-way.
    fn insert(&mut self, search: &[u8], e: Entry<'_>) {
        let mut node = 0;
        let mut i = 0;
        loop {
            let prefix = self.nodes[node].prefix;
            let mut p = 0;
            loop {
                let c = self.strings.buf[prefix + p];
                if c == 0 {
                    break;
                }
                if search.get(i + p) == Some(&c) {
                    p += 1;
                    continue;
                }
                // The rest of the label and everything below move to a
                // new child; the node keeps the shared part.
                let head = self.strings.buf[prefix..prefix + p].to_vec();
                let off = self.strings.add(&head);
                let old = &mut self.nodes[node];
                let tail = Node {
                    prefix: prefix + p + 1,
                    children: std::mem::take(&mut old.children),
                    values: std::mem::take(&mut old.values),
                };
                old.prefix = off;
                let id = self.nodes.len();
                self.nodes.push(tail);
                self.nodes[node].children.push((c, id));
                break;
            }
            i += p;
            let Some(&c) = search.get(i) else {
                self.add_value(node, &e);
                return;
            };
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&c, |&(ch, _)| ch) {
                Ok(k) => {
                    node = children[k].1;
                    i += 1;
                }
                Err(k) => {
                    let off = self.strings.add(&search[i + 1..]);
                    let id = self.nodes.len();
                    self.nodes.push(Node {
                        prefix: off,
                        ..Node::default()
                    });
                    self.nodes[node].children.insert(k, (c, id));
                    self.add_value(id, &e);
                    return;
                }
            }
        }
    }

    /// hwdb-util.c's `trie_node_add_value`: a key already on the node takes
    /// the new value (files are read in priority order).
    fn add_value(&mut self, node: usize, e: &Entry<'_>) {
        let key = self.strings.add(e.key);
        let value = self.strings.add(e.value);
        let file = self.strings.add(e.file);
        let buf = &self.strings.buf;
        let values = &mut self.nodes[node].values;
        match values.binary_search_by(|v| cstr(buf, v.key).cmp(e.key)) {
            Ok(k) => {
                let v = &mut values[k];
                v.value = value;
                v.file = file;
                v.line = e.line;
                v.priority = e.priority;
            }
            Err(k) => values.insert(
                k,
                Value {
                    key,
                    value,
                    file,
                    line: e.line,
                    priority: e.priority,
                },
            ),
        }
    }

    /// hwdb-util.c's `trie_store`: header, nodes in post-order, strings.
    fn store(&self, tool_version: u64) -> Vec<u8> {
        let nodes_len: u64 = self
            .nodes
            .iter()
            .map(|n| {
                NODE_SIZE
                    + CHILD_SIZE * n.children.len() as u64
                    + VALUE_SIZE * n.values.len() as u64
            })
            .sum();
        let strings_off = HEADER_SIZE + nodes_len;
        let s = |off: usize| strings_off + off as u64;
        let mut out = Vec::with_capacity((strings_off as usize) + self.strings.buf.len());
        out.resize(HEADER_SIZE as usize, 0);
        let mut offsets = vec![0u64; self.nodes.len()];
        // Iterative post-order: (node, children already visited).
        let mut stack = vec![(0usize, 0usize)];
        while let Some((id, next)) = stack.last_mut() {
            let n = &self.nodes[*id];
            if let Some(&(_, child)) = n.children.get(*next) {
                *next += 1;
                stack.push((child, 0));
                continue;
            }
            offsets[*id] = out.len() as u64;
            stack.pop();
            out.extend_from_slice(&s(n.prefix).to_le_bytes());
            // At most 255 children: one per non-NUL byte.
            out.push(n.children.len() as u8);
            out.extend_from_slice(&[0; 7]);
            out.extend_from_slice(&(n.values.len() as u64).to_le_bytes());
            for &(c, child) in &n.children {
                out.push(c);
                out.extend_from_slice(&[0; 7]);
                out.extend_from_slice(&offsets[child].to_le_bytes());
            }
            for v in &n.values {
                out.extend_from_slice(&s(v.key).to_le_bytes());
                out.extend_from_slice(&s(v.value).to_le_bytes());
                out.extend_from_slice(&s(v.file).to_le_bytes());
                out.extend_from_slice(&v.line.to_le_bytes());
                out.extend_from_slice(&v.priority.to_le_bytes());
                out.extend_from_slice(&[0; 2]);
            }
        }
        out.extend_from_slice(&self.strings.buf);
        let header = [
            tool_version,
            out.len() as u64,
            HEADER_SIZE,
            NODE_SIZE,
            CHILD_SIZE,
            VALUE_SIZE,
            offsets[0],
            nodes_len,
            self.strings.buf.len() as u64,
        ];
        out[..8].copy_from_slice(SIGNATURE);
        for (i, field) in header.iter().enumerate() {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&field.to_le_bytes());
        }
        out
    }
}

/// The NUL-terminated string at `off`.
fn cstr(buf: &[u8], off: usize) -> &[u8] {
    let rest = &buf[off..];
    &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
}

/// systemd's `strbuf`: strings appended NUL-terminated, a string equal to
/// the tail of one already stored returned as an offset into it. A trie
/// over the strings read backwards finds such tails; its nodes are only
/// made where a lookup fell off, so which offset a string gets depends on
/// the order strings came in, exactly as in strbuf.c.
struct Strings {
    buf: Vec<u8>,
    nodes: Vec<StringNode>,
}

struct StringNode {
    off: usize,
    len: usize,
    /// (character, node), sorted by character.
    children: Vec<(u8, usize)>,
}

impl Strings {
    fn new() -> Self {
        Strings {
            // Offset 0 is the empty string.
            buf: vec![0],
            nodes: vec![StringNode {
                off: 0,
                len: 0,
                children: Vec::new(),
            }],
        }
    }

    fn add(&mut self, s: &[u8]) -> usize {
        let len = s.len();
        if len == 0 {
            return 0;
        }
        let mut node = 0;
        let mut depth = 0;
        let (c, at) = loop {
            let n = &self.nodes[node];
            // A node at depth d holds a string whose last d bytes are the
            // path to it.
            if depth == len || (n.len >= len && &self.buf[n.off + n.len - len..n.off + n.len] == s)
            {
                return n.off + n.len - len;
            }
            let c = s[len - 1 - depth];
            match n.children.binary_search_by_key(&c, |&(ch, _)| ch) {
                Ok(k) => {
                    node = n.children[k].1;
                    depth += 1;
                }
                Err(k) => break (c, k),
            }
        };
        let off = self.buf.len();
        self.buf.extend_from_slice(s);
        self.buf.push(0);
        let id = self.nodes.len();
        self.nodes.push(StringNode {
            off,
            len,
            children: Vec::new(),
        });
        self.nodes[node].children.insert(at, (c, id));
        off
    }
}

#[cfg(test)]
mod tests;

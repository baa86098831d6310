//! The dynamic loader's cache, `/etc/ld.so.cache`, as `ldconfig -X`
//! writes it (libc-bin's trigger runs ldconfig after every install). With
//! it in the image, `ldconfig.service` has nothing to do at boot: on a Pi
//! or under emulation it otherwise spends minutes rebuilding the cache at
//! every boot, because `/etc` starts anew each time.
//!
//! What is scanned, as glibc's `elf/ldconfig.c` does it (glibc 2.37 and
//! later: no legacy hwcap subdirectories):
//! - the directories of `/etc/ld.so.conf`, whose `include PATTERN` lines
//!   read other files (a relative pattern is taken from the including
//!   file's directory; `*`, `?` and `[...]` in the last component, matches
//!   in byte order, as glob(3) sorts them), `hwcap` lines are ignored,
//!   `#` starts a comment and a `=TYPE` suffix is dropped; then the
//!   builtin directories `/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`,
//!   `/usr/lib`. A directory reached again (by another name, through a
//!   symlink such as `/lib` → `usr/lib`) is skipped; one that does not
//!   exist too.
//! - in each directory, the regular files and symlinks named `lib*.so*`,
//!   `ld-*.so*`, `ld.so.*` or `ld64.so.*` that are shared objects
//!   (`ET_DYN`) of the image's architecture with a dynamic segment. A
//!   library's key is its `DT_SONAME` (else its file name). A symlink
//!   whose name is not that soname (or, for a name ending in `.so`, a
//!   prefix of it) counts as a file; one that is keeps its own name as
//!   key (so `libfoo.so` → `libfoo.so.1` has an entry of its own). Of two
//!   files with one key, a file beats a symlink, then the higher version
//!   (`_dl_cache_libcmp`). The cached path is `<directory>/<key>`.
//!
//! The file (`glibc-ld.so.cache1.1`, the new format only, little-endian):
//!
//! ```text
//! header (48)   "glibc-ld.so.cache" "1.1", nlibs u32, len_strings u32,
//!               flags u8 (2: little-endian), 3 padding,
//!               extension_offset u32, 12 unused
//! entry (24)    flags i32, key u32, value u32, osversion u32 (0),
//!               hwcap u64 (0)                                (nlibs ×)
//! strings       NUL-terminated, offsets counted from the header's start;
//!               a string that ends another shares its bytes
//! extension     at a 4-byte boundary: magic 0xeaa42174, count u32, then
//!               (tag u32, flags u32, offset u32, size u32) for tag 0,
//!               the generator: the text of this writer
//! ```
//!
//! Entries are sorted by key, highest version first (`_dl_cache_libcmp`),
//! then by flags, highest first; entries that compare equal keep the
//! order of their directories. The loader takes the first entry whose
//! key and flags fit, so the order decides which library a program gets.
//!
//! An image whose library directories hold `glibc-hwcaps` subdirectories
//! gets no cache from here (their entries carry ISA levels this writer
//! does not compute); `ldconfig.service` builds it at boot then. A unit
//! test compares the bytes with the build host's `ldconfig -r ROOT -X`.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Context, Result};

use crate::tree::edit::Editor;
use crate::tree::{InodeId, InodeKind};

/// Where the loader reads the cache.
pub const CACHE: &str = "etc/ld.so.cache";
/// The loader's configuration.
pub const CONF: &str = "etc/ld.so.conf";
/// Runs ldconfig.service only when the image has no cache: its own
/// condition (`/etc` newer than `/etc/.updated`) holds at every boot of a
/// node, whose `/etc` is new each boot.
pub const DROPIN: &str = "usr/lib/systemd/system/ldconfig.service.d/10-build-image.conf";
pub const DROPIN_TEXT: &str = "\
# build-image: /etc/ld.so.cache comes with the image and /usr is read-only,
# so the cache is rebuilt only where the image has none.
[Unit]
ConditionNeedsUpdate=
ConditionFileNotEmpty=!/etc/ld.so.cache
";

const MAGIC: &[u8; 20] = b"glibc-ld.so.cache1.1";
const HEADER_SIZE: usize = 48;
const ENTRY_SIZE: usize = 24;
const FLAGS_LITTLE_ENDIAN: u8 = 2;
const EXTENSION_MAGIC: u32 = 0xeaa4_2174;
const TAG_GENERATOR: u32 = 0;
/// glibc's `FLAG_ELF_LIBC6`.
const FLAG_ELF_LIBC6: i32 = 0x0003;
/// Include files nested deeper than this are an error (glibc loops).
const MAX_INCLUDE_DEPTH: usize = 16;

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SONAME: i64 = 14;

/// An architecture's libraries: its multiarch directory, the ELF machine
/// and the cache flags ldconfig gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub triplet: &'static str,
    pub machine: u16,
    pub flags: i32,
}

impl Arch {
    /// By Debian architecture name; `None` for one this writer does not
    /// know.
    pub fn of(deb_arch: &str) -> Option<Arch> {
        match deb_arch {
            // FLAG_X8664_LIB64
            "amd64" => Some(Arch {
                triplet: "x86_64-linux-gnu",
                machine: EM_X86_64,
                flags: 0x0300 | FLAG_ELF_LIBC6,
            }),
            // FLAG_AARCH64_LIB64
            "arm64" => Some(Arch {
                triplet: "aarch64-linux-gnu",
                machine: EM_AARCH64,
                flags: 0x0a00 | FLAG_ELF_LIBC6,
            }),
            _ => None,
        }
    }
}

/// What [`write`] put into the image.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Written {
        entries: usize,
        dirs: usize,
    },
    /// The image has no glibc for the architecture (nothing to cache).
    NoLoader,
    /// The cache is left to ldconfig.service, for the reason given.
    LeftToBoot(String),
}

/// One library in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub path: Vec<u8>,
    pub flags: i32,
}

/// Writes [`CACHE`] for the libraries of `deb_arch` (replacing one a base
/// image had: packages were added since) and [`DROPIN`]. `generator` is
/// recorded in the cache (`ldconfig -p` prints it).
pub fn write(ed: &mut Editor<'_>, deb_arch: &str, generator: &str) -> Result<Outcome> {
    let Some(arch) = Arch::of(deb_arch) else {
        return Ok(Outcome::NoLoader);
    };
    let libc = format!("usr/lib/{}/libc.so.6", arch.triplet);
    if follow(ed, &libc).is_none() && !ed.exists(CONF) {
        return Ok(Outcome::NoLoader);
    }
    let dirs = directories(ed, &arch)?;
    let mut entries = Vec::new();
    for d in &dirs {
        if has_hwcaps_subdirectories(ed, d) {
            return Ok(Outcome::LeftToBoot(format!(
                "{d}/glibc-hwcaps has libraries for other ISA levels"
            )));
        }
        entries.extend(scan(ed, d, &arch).with_context(|| format!("reading {d}"))?);
    }
    sort(&mut entries);
    let n = entries.len();
    ed.write(CACHE, &encode(&entries, generator), 0o644)?;
    ed.write(DROPIN, DROPIN_TEXT.as_bytes(), 0o644)?;
    Ok(Outcome::Written {
        entries: n,
        dirs: dirs.len(),
    })
}

/// glibc's `_dl_cache_libcmp`: runs of digits compare as numbers (with
/// C's `int` arithmetic), a digit sorts after any other character.
pub fn libcmp(a: &[u8], b: &[u8]) -> i32 {
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    while at(a, i) != 0 {
        let (c1, c2) = (at(a, i), at(b, j));
        if c1.is_ascii_digit() {
            if !c2.is_ascii_digit() {
                return 1;
            }
            let mut v1: i32 = 0;
            while at(a, i).is_ascii_digit() {
                v1 = v1.wrapping_mul(10).wrapping_add((at(a, i) - b'0') as i32);
                i += 1;
            }
            let mut v2: i32 = 0;
            while at(b, j).is_ascii_digit() {
                v2 = v2.wrapping_mul(10).wrapping_add((at(b, j) - b'0') as i32);
                j += 1;
            }
            if v1 != v2 {
                return v1.wrapping_sub(v2);
            }
        } else if c2.is_ascii_digit() {
            return -1;
        } else if c1 != c2 {
            return c1 as i32 - c2 as i32;
        } else {
            i += 1;
            j += 1;
        }
    }
    at(a, i) as i32 - at(b, j) as i32
}

/// The scan order: key by [`libcmp`], highest first, then flags, highest
/// first; a stable sort, as ldconfig inserts each entry after the ones
/// that compare equal.
fn sort(entries: &mut [Entry]) {
    entries.sort_by(|x, y| {
        libcmp(&y.key, &x.key)
            .cmp(&0)
            .then_with(|| y.flags.cmp(&x.flags))
    });
}

/// The directories to scan, in order, each once (by the directory it
/// leads to), as written in the configuration.
fn directories(ed: &Editor<'_>, arch: &Arch) -> Result<Vec<String>> {
    let mut listed = Vec::new();
    parse_conf(ed, &format!("/{CONF}"), 0, &mut listed)?;
    for d in [
        format!("/lib/{}", arch.triplet),
        format!("/usr/lib/{}", arch.triplet),
        "/lib".to_string(),
        "/usr/lib".to_string(),
    ] {
        listed.push(d);
    }
    let mut seen: BTreeSet<InodeId> = BTreeSet::new();
    let mut out = Vec::new();
    for d in listed {
        let Some(id) = follow(ed, &d) else {
            continue;
        };
        if !ed.tree.inode(id).kind.is_dir() || !seen.insert(id) {
            continue;
        }
        out.push(d);
    }
    Ok(out)
}

/// ldconfig's `parse_conf`: the directories `file` lists, includes
/// expanded in place.
fn parse_conf(ed: &Editor<'_>, file: &str, depth: usize, out: &mut Vec<String>) -> Result<()> {
    if depth > MAX_INCLUDE_DEPTH {
        bail!("{file}: includes nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)");
    }
    let Some(id) = follow(ed, file) else {
        return Ok(());
    };
    let InodeKind::File { content } = &ed.tree.inode(id).kind else {
        return Ok(());
    };
    let text = ed
        .store
        .read_all(content)
        .with_context(|| format!("reading {file} of the image"))?;
    for raw in text.split(|&c| c == b'\n') {
        let line = raw.split(|&c| c == b'#').next().unwrap_or_default();
        let start = line
            .iter()
            .position(|c| !is_space(*c))
            .unwrap_or(line.len());
        let line = &line[start..];
        if line.is_empty() {
            continue;
        }
        if line.len() > 7 && line.starts_with(b"include") && is_blank(line[7]) {
            for pattern in line[8..].split(|c| is_blank(*c)).filter(|p| !p.is_empty()) {
                let pattern = String::from_utf8_lossy(pattern);
                let pattern = if pattern.starts_with('/') {
                    pattern.into_owned()
                } else {
                    let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
                    format!("{dir}/{pattern}")
                };
                for f in glob(ed, &pattern)? {
                    parse_conf(ed, &f, depth + 1, out)?;
                }
            }
        } else if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"hwcap") && is_blank(line[5]) {
            // Ignored by ldconfig too.
        } else {
            let path = line.split(|&c| c == b'=').next().unwrap_or_default();
            let mut end = path.len();
            while end > 0 && is_space(path[end - 1]) {
                end -= 1;
            }
            while end > 1 && path[end - 1] == b'/' {
                end -= 1;
            }
            if end > 0 {
                out.push(String::from_utf8_lossy(&path[..end]).into_owned());
            }
        }
    }
    Ok(())
}

/// C's `isspace` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// The files `pattern` (absolute) matches, in byte order, as glob(3)
/// finds them: wildcards only in the last component.
fn glob(ed: &Editor<'_>, pattern: &str) -> Result<Vec<String>> {
    let (dir, last) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if dir.contains(['*', '?', '[']) {
        bail!("include {pattern}: wildcards in a directory name are not supported");
    }
    if !last.contains(['*', '?', '[']) {
        return Ok(vec![pattern.to_string()]);
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    let mut names: Vec<String> = ed
        .list(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') || last.starts_with('.'))
        .filter(|n| fnmatch(last.as_bytes(), n.as_bytes()))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .collect())
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` (with `!` or `^` and
/// ranges), `\` quoting.
pub(crate) fn fnmatch(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| fnmatch(rest, &s[k..])),
        Some((b'?', rest)) => !s.is_empty() && fnmatch(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, tail)) = s.split_first() else {
                return false;
            };
            match bracket(rest, c) {
                Some((hit, after)) => hit && fnmatch(after, tail),
                // No closing `]`: a literal `[`.
                None => c == b'[' && fnmatch(rest, tail),
            }
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && fnmatch(&rest[1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && fnmatch(rest, &s[1..]),
    }
}

/// A bracket expression after its `[`: whether `c` is in it and the
/// pattern after its `]`; `None` if it has no `]`.
fn bracket(p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negate, mut k) = match p.first() {
        Some(b'!' | b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    loop {
        let ch = *p.get(k)?;
        if ch == b']' && !first {
            return Some((hit != negate, &p[k + 1..]));
        }
        first = false;
        if p.get(k + 1) == Some(&b'-') && p.get(k + 2).is_some_and(|&e| e != b']') {
            let end = p[k + 2];
            hit |= ch <= c && c <= end;
            k += 3;
        } else {
            hit |= ch == c;
            k += 1;
        }
    }
}

/// The inode `path` leads to, `None` where ldconfig's stat would fail
/// (nothing there, a dangling link, a loop).
fn follow(ed: &Editor<'_>, path: &str) -> Option<InodeId> {
    ed.lookup_following(path).ok().flatten()
}

/// glibc's `_dl_is_dso`: the names ldconfig looks at.
fn is_dso_name(name: &[u8]) -> bool {
    ((name.starts_with(b"lib") || name.starts_with(b"ld-")) && contains(name, b".so"))
        || name.starts_with(b"ld.so.")
        || name.starts_with(b"ld64.so.")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `dir/glibc-hwcaps` holds any subdirectory with entries.
fn has_hwcaps_subdirectories(ed: &Editor<'_>, dir: &str) -> bool {
    let h = format!("{dir}/glibc-hwcaps");
    ed.list(&h)
        .iter()
        .any(|sub| !ed.list(&format!("{h}/{sub}")).is_empty())
}

/// One candidate of a directory (ldconfig's `dlib_entry`).
struct Dlib {
    name: Vec<u8>,
    key: Vec<u8>,
    is_link: bool,
}

/// ldconfig's `search_dir`: the directory's libraries, one per key.
fn scan(ed: &Editor<'_>, dir: &str, arch: &Arch) -> Result<Vec<Entry>> {
    let Some(dir_id) = follow(ed, dir) else {
        return Ok(Vec::new());
    };
    let children: Vec<(Vec<u8>, InodeId)> = ed
        .tree
        .children(dir_id)
        .map(|(n, id)| (n.to_vec(), id))
        .collect();
    let mut dlibs: Vec<Dlib> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for (name, id) in children {
        if !is_dso_name(&name) || name.ends_with(b".#prelink#") || contains(&name, b".#prelink#.") {
            continue;
        }
        let path = format!("{dir}/{}", String::from_utf8_lossy(&name));
        let mut is_link = false;
        let content = match &ed.tree.inode(id).kind {
            InodeKind::File { content } => content,
            InodeKind::Symlink { .. } => {
                is_link = true;
                let Some(t) = follow(ed, &path) else {
                    continue; // dangling
                };
                match &ed.tree.inode(t).kind {
                    InodeKind::File { content } => content,
                    _ => continue,
                }
            }
            _ => continue,
        };
        // Smaller than an ELF header: not looked at.
        if content.len < 64 {
            continue;
        }
        let file = Stored {
            store: &*ed.store,
            content,
            error: Default::default(),
        };
        let soname = shared_object_soname(&file, arch);
        if let Some(e) = file.error.into_inner() {
            return Err(e).with_context(|| format!("reading {path} of the image"));
        }
        let Some(soname) = soname else {
            continue;
        };
        let mut key = soname.unwrap_or_else(|| name.clone());
        if is_link && name != key && !(name.ends_with(b".so") && key.starts_with(&name)) {
            is_link = false;
        }
        if is_link {
            key = name.clone();
        }
        match index.get(&key) {
            Some(&k) => {
                let d = &mut dlibs[k];
                if (!is_link && d.is_link) || (is_link == d.is_link && libcmp(&d.name, &name) < 0) {
                    d.name = name;
                    d.is_link = is_link;
                }
            }
            None => {
                index.insert(key.clone(), dlibs.len());
                dlibs.push(Dlib { name, key, is_link });
            }
        }
    }
    // ldconfig keeps the list newest first.
    Ok(dlibs
        .into_iter()
        .rev()
        .map(|d| {
            let mut path = dir.as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(&d.key);
            Entry {
                key: d.key,
                path,
                flags: arch.flags,
            }
        })
        .collect())
}

/// Bytes of a file, read on demand (libraries are large; ldconfig reads
/// a few hundred bytes of each).
trait Bytes {
    /// `len` bytes at `at`, `None` past the end.
    fn get(&self, at: u64, len: usize) -> Option<Vec<u8>>;
    fn len(&self) -> u64;
}

impl Bytes for [u8] {
    fn get(&self, at: u64, len: usize) -> Option<Vec<u8>> {
        let at = usize::try_from(at).ok()?;
        self.get(at..at.checked_add(len)?).map(<[u8]>::to_vec)
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

/// A file of the image's content store; the first read error is kept
/// for the caller (a failed read is not a library to pass over).
struct Stored<'a> {
    store: &'a crate::tree::ContentStore,
    content: &'a crate::tree::ContentRef,
    error: std::cell::RefCell<Option<std::io::Error>>,
}

impl Bytes for Stored<'_> {
    fn get(&self, at: u64, len: usize) -> Option<Vec<u8>> {
        if at.checked_add(len as u64)? > self.content.len {
            return None;
        }
        let mut buf = vec![0; len];
        match self.store.read_at(self.content, at, &mut buf) {
            Ok(()) => Some(buf),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }
    fn len(&self) -> u64 {
        self.content.len
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// For a 64-bit little-endian shared object (`ET_DYN`) of `arch`'s
/// machine with a dynamic segment and string table: `Some(DT_SONAME)`.
/// `None` for anything else (ldconfig passes over it), out-of-bounds
/// offsets included.
fn shared_object_soname(f: &(impl Bytes + ?Sized), arch: &Arch) -> Option<Option<Vec<u8>>> {
    let h = f.get(0, 64)?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    if le16(&h, 16) != ET_DYN || le16(&h, 18) != arch.machine {
        return None;
    }
    let (phoff, phentsize, phnum) = (le64(&h, 32), le16(&h, 54) as usize, le16(&h, 56) as usize);
    if phentsize < 56 {
        return None;
    }
    let ph = f.get(phoff, phentsize.checked_mul(phnum)?)?;
    let mut dynamic = None;
    let mut loads = Vec::new();
    for p in ph.chunks_exact(phentsize) {
        let (offset, vaddr, filesz) = (le64(p, 8), le64(p, 16), le64(p, 32));
        match le32(p, 0) {
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_LOAD => loads.push((offset, vaddr, filesz)),
            _ => {}
        }
    }
    let (dyn_off, dyn_size) = dynamic?;
    if dyn_size == 0 || dyn_size > f.len() {
        return None;
    }
    let dynamic = f.get(dyn_off, usize::try_from(dyn_size).ok()?)?;
    let entries: Vec<(i64, u64)> = dynamic
        .chunks_exact(16)
        .map(|e| (le64(e, 0) as i64, le64(e, 8)))
        .take_while(|(tag, _)| *tag != DT_NULL)
        .collect();
    let (_, strtab) = entries.iter().find(|(tag, _)| *tag == DT_STRTAB)?;
    let strtab = loads
        .iter()
        .find(|(_, vaddr, filesz)| *strtab >= *vaddr && strtab - vaddr < *filesz)
        .map_or(Some(*strtab), |(off, vaddr, _)| {
            (strtab - vaddr).checked_add(*off)
        })?;
    let Some((_, name)) = entries.iter().find(|(tag, _)| *tag == DT_SONAME) else {
        return Some(None);
    };
    let at = strtab.checked_add(*name)?;
    let rest = f.get(
        at,
        usize::try_from(f.len().checked_sub(at)?.min(4096)).ok()?,
    )?;
    let end = rest.iter().position(|&c| c == 0)?;
    Some(Some(rest[..end].to_vec()))
}

/// The cache file for `entries` (in cache order).
pub fn encode(entries: &[Entry], generator: &str) -> Vec<u8> {
    let strings: Vec<&[u8]> = entries
        .iter()
        .flat_map(|e| [e.path.as_slice(), e.key.as_slice()])
        .collect();
    let (table, offsets) = string_table(&strings);
    let str_base = HEADER_SIZE + ENTRY_SIZE * entries.len();
    let ext_offset = (str_base + table.len()).next_multiple_of(4);
    let mut out = Vec::with_capacity(ext_offset + 24 + generator.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.push(FLAGS_LITTLE_ENDIAN);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(ext_offset as u32).to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    for e in entries {
        let off = |s: &[u8]| (str_base + offsets[s]) as u32;
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&off(&e.key).to_le_bytes());
        out.extend_from_slice(&off(&e.path).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out.extend_from_slice(&table);
    out.resize(ext_offset, 0);
    out.extend_from_slice(&EXTENSION_MAGIC.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&TAG_GENERATOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&((ext_offset + 24) as u32).to_le_bytes());
    out.extend_from_slice(&(generator.len() as u32).to_le_bytes());
    out.extend_from_slice(generator.as_bytes());
    out
}

/// glibc's `stringtable_finalize`: the distinct strings sorted by their
/// reversed bytes, highest first (a longer string before its own tail),
/// each NUL-terminated; a string that ends the one before it points into
/// it.
fn string_table<'a>(strings: &[&'a [u8]]) -> (Vec<u8>, HashMap<&'a [u8], usize>) {
    let mut distinct: Vec<&[u8]> = strings.to_vec();
    distinct.sort();
    distinct.dedup();
    distinct.sort_by(|l, r| {
        let (lr, rr) = (l.iter().rev(), r.iter().rev());
        // Reverse order of the reversed strings; at a common tail the
        // longer one first.
        rr.cmp(lr)
    });
    let mut table = Vec::new();
    let mut offsets = HashMap::new();
    let mut prev: Option<(&[u8], usize)> = None;
    for s in distinct {
        let off = match prev {
            Some((p, poff)) if p.len() >= s.len() && p.ends_with(s) => poff + p.len() - s.len(),
            _ => {
                let off = table.len();
                table.extend_from_slice(s);
                table.push(0);
                off
            }
        };
        offsets.insert(s, off);
        prev = Some((s, off));
    }
    (table, offsets)
}

#[cfg(test)]
mod tests;

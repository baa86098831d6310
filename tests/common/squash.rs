//! The reference SquashFS reader (squashfs-tools' `unsquashfs`): listings,
//! extraction and superblock information.

use std::path::Path;
use std::process::Command;

use super::tree::Tree;
use super::{require_tool, tool_stdout};

/// One line of `unsquashfs -lln`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// `drwxr-xr-x`, `-rwsr-xr-x`, `crw-rw-rw-`, …
    pub perms: String,
    pub uid: u32,
    pub gid: u32,
    /// The size column (for devices unsquashfs 4.5 prints `MAJ,MIN` using
    /// the old 8-bit minor decoding: do not compare devices with it).
    pub size: String,
    /// The mtime column, `YYYY-MM-DD HH:MM` (in the UTC the listing is
    /// made in).
    pub time: String,
    /// Relative path; "" for the root.
    pub path: String,
    /// Symlink target.
    pub target: Option<String>,
}

impl ListEntry {
    pub fn kind_char(&self) -> char {
        self.perms.chars().next().unwrap_or('?')
    }
}

/// `unsquashfs ARGS IMG`'s stdout.
fn unsquashfs(args: &[&str], img: &Path) -> Vec<u8> {
    require_tool("unsquashfs", "squashfs-tools");
    tool_stdout(
        Command::new("unsquashfs")
            .args(args)
            .arg(img)
            .env("TZ", "UTC"),
    )
}

/// `unsquashfs -lln IMG`, parsed. The root is the entry with path "".
pub fn unsquashfs_listing(img: &Path) -> Vec<ListEntry> {
    let out = unsquashfs(&["-lln"], img);
    let text = String::from_utf8_lossy(&out).to_string();
    let mut entries = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("Parallel unsquashfs") {
            continue;
        }
        // perms, uid/gid, size, date, time, then the path (may hold spaces)
        let mut rest = line;
        let mut fields: Vec<String> = Vec::new();
        while fields.len() < 5 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            let tok = &rest[..end];
            rest = &rest[end..];
            // devices: "MAJ,  MIN" may be split by padding
            if fields.len() == 3 && fields[2].ends_with(',') {
                fields[2].push_str(tok);
                continue;
            }
            fields.push(tok.to_string());
        }
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let (path, target) = if fields[0].starts_with('l') {
            match rest.split_once(" -> ") {
                Some((p, t)) => (p, Some(t.to_string())),
                None => (rest, None),
            }
        } else {
            (rest, None)
        };
        let path = path
            .strip_prefix("squashfs-root")
            .unwrap_or_else(|| panic!("unexpected unsquashfs line {line:?}"));
        let path = path.strip_prefix('/').unwrap_or(path).to_string();
        let (uid, gid) = fields[1].split_once('/').unwrap();
        entries.push(ListEntry {
            perms: fields[0].clone(),
            uid: uid.parse().unwrap(),
            gid: gid.parse().unwrap(),
            size: fields[2].clone(),
            time: format!("{} {}", fields[3], fields[4]),
            path,
            target,
        });
    }
    assert!(
        entries.first().map(|e| e.path.is_empty()) == Some(true),
        "unsquashfs -lln printed no root: {text}"
    );
    entries
}

/// `unsquashfs -d DIR IMG` (DIR must not exist yet). Run as root this keeps
/// owners, setuid bits, device nodes and `security.*` xattrs.
pub fn extract(img: &Path, dir: &Path) {
    unsquashfs(&["-q", "-n", "-st", "-d", dir.to_str().unwrap()], img);
}

/// Extracts `img` into a fresh temp dir and reads it back as a [`Tree`].
pub fn extract_tree(img: &Path) -> Tree {
    let tmp = tempfile::Builder::new()
        .prefix("unsquashfs-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("root");
    extract(img, &dir);
    Tree::from_dir(&dir)
}

/// `unsquashfs -s IMG` (superblock information).
pub fn unsquashfs_stat(img: &Path) -> String {
    String::from_utf8_lossy(&unsquashfs(&["-s"], img)).to_string()
}

/// The value of a `NAME VALUE` line of `unsquashfs -s` (e.g. "Compression",
/// "Block size").
pub fn stat_field(stat: &str, name: &str) -> Option<String> {
    stat.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
}

/// The superblock's creation time (`unsquashfs -mkfs-time`).
pub fn mkfs_time(img: &Path) -> i64 {
    let out = unsquashfs(&["-mkfs-time"], img);
    String::from_utf8_lossy(&out).trim().parse().unwrap()
}

/// The content of one file in the image (`unsquashfs -cat`).
pub fn cat(img: &Path, path: &str) -> Vec<u8> {
    require_tool("unsquashfs", "squashfs-tools");
    tool_stdout(Command::new("unsquashfs").arg("-cat").arg(img).arg(path))
}

/// `ls -l` style permission string of a tree node (`-rwsr-xr-x`, …).
pub fn perms_string(n: &super::tree::Node) -> String {
    use super::tree::Kind;
    let t = match n.kind {
        Kind::Dir => 'd',
        Kind::File(..) => '-',
        Kind::Symlink(_) => 'l',
        Kind::CharDev(..) => 'c',
        Kind::BlockDev(..) => 'b',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
    };
    let m = n.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, on: char, off: char| match (m & x != 0, m & s != 0) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Checks an `unsquashfs -lln` listing against a tree (normally the one
/// extracted from the same image, or the expected one): the same paths, and
/// per entry the same type and permission string, owner, file size and
/// symlink target.
pub fn assert_listing_matches(listing: &[ListEntry], tree: &Tree) {
    use super::tree::Kind;
    let mut diffs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in listing {
        let key = e.path.as_bytes().to_vec();
        seen.insert(key.clone());
        let Some(n) = tree.nodes.get(&key) else {
            diffs.push(format!("/{}: listed but not in the tree", e.path));
            continue;
        };
        let want = perms_string(n);
        if e.perms != want {
            diffs.push(format!("/{}: listed {}, expected {want}", e.path, e.perms));
        }
        if (e.uid, e.gid) != (n.uid, n.gid) {
            diffs.push(format!(
                "/{}: listed owner {}/{}, expected {}/{}",
                e.path, e.uid, e.gid, n.uid, n.gid
            ));
        }
        match &n.kind {
            Kind::File(size, _) if e.size != size.to_string() => diffs.push(format!(
                "/{}: listed size {}, expected {size}",
                e.path, e.size
            )),
            Kind::Symlink(t) if e.target.as_deref() != Some(&*String::from_utf8_lossy(t)) => {
                diffs.push(format!("/{}: listed target {:?}", e.path, e.target))
            }
            _ => {}
        }
    }
    for p in tree.nodes.keys() {
        if !seen.contains(p) {
            diffs.push(format!("{}: not listed", super::tree::show(p)));
        }
    }
    assert!(
        diffs.is_empty(),
        "unsquashfs -lln disagrees in {} ways:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

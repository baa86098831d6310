//! A tar layer writer with full control over every header field.
//!
//! The headers are written byte by byte (ustar + PAX), not through the `tar`
//! crate's builder, so hostile names such as `../evil` or `/etc/evil`, raw
//! non-UTF-8 bytes and duplicate entries reach the layer exactly as written.

use std::collections::BTreeMap;
use std::io::Write;

use super::sha256_digest;

/// The default mtime of every entry (2020-09-13T12:26:40Z).
pub const DEFAULT_MTIME: i64 = 1_600_000_000;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }

    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }
}

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
}

/// One tar entry, exactly as it will be written.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Raw name bytes, written unchanged (no normalisation at all).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Put the path into a PAX `path` record even when it fits the header.
    pub pax_path: bool,
}

/// Builds one layer entry by entry. Modifier methods (`mode`, `owner`,
/// `mtime`, `xattr`, `pax_path`) change the entry added last.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    pub entries: Vec<Entry>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder::default()
    }

    pub fn entry(mut self, path: impl AsRef<[u8]>, kind: EntryKind, mode: u32) -> Self {
        self.entries.push(Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: BTreeMap::new(),
            pax_path: false,
        });
        self
    }

    /// A directory; the name is written with a trailing `/` unless it has one.
    pub fn dir(self, path: impl AsRef<[u8]>) -> Self {
        let mut p = path.as_ref().to_vec();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        self.entry(p, EntryKind::Dir, 0o755)
    }

    pub fn file(self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Self {
        self.entry(path, EntryKind::File(content.as_ref().to_vec()), 0o644)
    }

    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(path, EntryKind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(path, EntryKind::Hardlink(target.as_ref().to_vec()), 0o644)
    }

    pub fn char_dev(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        self.entry(path, EntryKind::CharDev(major, minor), 0o666)
    }

    pub fn block_dev(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        self.entry(path, EntryKind::BlockDev(major, minor), 0o660)
    }

    pub fn fifo(self, path: impl AsRef<[u8]>) -> Self {
        self.entry(path, EntryKind::Fifo, 0o644)
    }

    /// An OCI whiteout hiding `path` (`dir/name` → `dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.entry(wh, EntryKind::File(Vec::new()), 0o644)
    }

    /// An opaque-directory marker (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        let p = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.entry(p, EntryKind::File(Vec::new()), 0o644)
    }

    fn last(&mut self) -> &mut Entry {
        self.entries.last_mut().expect("no entry to modify")
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.last().mode = mode;
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        let e = self.last();
        e.uid = uid;
        e.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: i64) -> Self {
        self.last().mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.last()
            .xattrs
            .insert(name.to_string(), value.as_ref().to_vec());
        self
    }

    pub fn pax_path(mut self) -> Self {
        self.last().pax_path = true;
        self
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            write_entry(&mut out, e);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    pub fn build(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.tar(), compression)
    }
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Vec<u8>,
    /// `sha256:HEX` of `blob`.
    pub digest: String,
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    pub compression: Compression,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = sha256_digest(&tar);
        let blob = compression.compress(&tar);
        Layer {
            digest: sha256_digest(&blob),
            diff_id,
            blob,
            compression,
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }

    /// The bare hex of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// A gzip layer whose first record is a GNU long name of `name_len` bytes
/// (`a`s), naming a one-byte file, written as a stream: the blob stays
/// small (gzip packs the repeated byte about 1000:1, so 512 MiB make about
/// 510 KB) while a reader that buffers the record needs `name_len` bytes.
pub fn long_name_bomb(name_len: u64) -> Layer {
    use sha2::{Digest as _, Sha256};
    struct Both {
        gz: flate2::write::GzEncoder<Vec<u8>>,
        sha: Sha256,
    }
    impl Write for Both {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.sha.update(b);
            self.gz.write_all(b)?;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Both {
        gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()),
        sha: Sha256::new(),
    };
    let mut head = Vec::new();
    write_header(
        &mut head,
        &Header {
            name: b"././@LongLink".to_vec(),
            prefix: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: name_len,
            mtime: 0,
            flag: b'L',
            link: Vec::new(),
            dev: (0, 0),
        },
    );
    w.write_all(&head).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = name_len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&vec![
        0;
        (name_len.next_multiple_of(512) - name_len) as usize
    ])
    .unwrap();
    let mut rest = Vec::new();
    write_entry(
        &mut rest,
        &Entry {
            path: b"a".to_vec(),
            kind: EntryKind::File(b"x".to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: BTreeMap::new(),
            pax_path: false,
        },
    );
    rest.extend_from_slice(&[0u8; 1024]);
    w.write_all(&rest).unwrap();
    let diff_id = format!("sha256:{}", hex::encode(w.sha.finalize()));
    let blob = w.gz.finish().unwrap();
    Layer {
        digest: sha256_digest(&blob),
        diff_id,
        blob,
        compression: Compression::Gzip,
    }
}

fn type_flag(kind: &EntryKind) -> u8 {
    match kind {
        EntryKind::File(_) => b'0',
        EntryKind::Hardlink(_) => b'1',
        EntryKind::Symlink(_) => b'2',
        EntryKind::CharDev(..) => b'3',
        EntryKind::BlockDev(..) => b'4',
        EntryKind::Dir => b'5',
        EntryKind::Fifo => b'6',
    }
}

/// Writes `v` as zero-padded octal filling `field` but its last byte (NUL).
/// Returns false when it does not fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() > width {
        return false;
    }
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
    true
}

/// One PAX record: `LEN key=value\n`, LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

struct Header {
    name: Vec<u8>,
    prefix: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    flag: u8,
    link: Vec<u8>,
    dev: (u32, u32),
}

fn write_header(out: &mut Vec<u8>, h: &Header) {
    let mut b = [0u8; 512];
    let n = h.name.len().min(100);
    b[..n].copy_from_slice(&h.name[..n]);
    assert!(octal(&mut b[100..108], u64::from(h.mode & 0o7777)));
    // Values that do not fit were already put in PAX records: write 0.
    if !octal(&mut b[108..116], h.uid) {
        octal(&mut b[108..116], 0);
    }
    if !octal(&mut b[116..124], h.gid) {
        octal(&mut b[116..124], 0);
    }
    assert!(octal(&mut b[124..136], h.size));
    if !octal(&mut b[136..148], h.mtime) {
        octal(&mut b[136..148], 0);
    }
    b[156] = h.flag;
    let n = h.link.len().min(100);
    b[157..157 + n].copy_from_slice(&h.link[..n]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(h.dev.0));
    octal(&mut b[337..345], u64::from(h.dev.1));
    let n = h.prefix.len().min(155);
    b[345..345 + n].copy_from_slice(&h.prefix[..n]);
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&b);
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// Splits a 101..=255 byte path into ustar prefix + name at a `/`.
fn split_ustar(path: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if path.len() <= 100 || path.len() > 256 {
        return None;
    }
    (0..path.len())
        .rev()
        .filter(|&i| path[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && path.len() - i > 1)
        .map(|i| (path[..i].to_vec(), path[i + 1..].to_vec()))
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut pax = Vec::new();
    let (mut name, mut prefix) = (e.path.clone(), Vec::new());
    if e.pax_path || e.path.len() > 100 {
        match split_ustar(&e.path) {
            Some((p, n)) if !e.pax_path => {
                prefix = p;
                name = n;
            }
            _ => {
                pax_record(&mut pax, b"path", &e.path);
                // The header keeps a harmless stand-in; readers use PAX.
                let base = e.path.rsplit(|&c| c == b'/').next().unwrap_or(b"x");
                name = base.iter().copied().take(100).collect();
                if name.is_empty() || name == b".." || name == b"." {
                    name = b"pax-named-entry".to_vec();
                }
            }
        }
    }
    let link = match &e.kind {
        EntryKind::Symlink(t) | EntryKind::Hardlink(t) => t.clone(),
        _ => Vec::new(),
    };
    if link.len() > 100 {
        pax_record(&mut pax, b"linkpath", &link);
    }
    if u64::from(e.uid) > 0o7777777 {
        pax_record(&mut pax, b"uid", e.uid.to_string().as_bytes());
    }
    if u64::from(e.gid) > 0o7777777 {
        pax_record(&mut pax, b"gid", e.gid.to_string().as_bytes());
    }
    if e.mtime < 0 || e.mtime > 0o77777777777 {
        pax_record(&mut pax, b"mtime", e.mtime.to_string().as_bytes());
    }
    for (k, v) in &e.xattrs {
        pax_record(&mut pax, format!("SCHILY.xattr.{k}").as_bytes(), v);
    }
    if !pax.is_empty() {
        let mut pname = b"PaxHeaders/".to_vec();
        pname.extend(name.iter().copied().take(89));
        write_header(
            out,
            &Header {
                name: pname,
                prefix: Vec::new(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: pax.len() as u64,
                mtime: e.mtime.max(0) as u64,
                flag: b'x',
                link: Vec::new(),
                dev: (0, 0),
            },
        );
        out.extend_from_slice(&pax);
        pad(out);
    }
    let (data, dev): (&[u8], (u32, u32)) = match &e.kind {
        EntryKind::File(c) => (c, (0, 0)),
        EntryKind::CharDev(a, b) | EntryKind::BlockDev(a, b) => (&[], (*a, *b)),
        _ => (&[], (0, 0)),
    };
    write_header(
        out,
        &Header {
            name,
            prefix,
            mode: e.mode,
            uid: u64::from(e.uid),
            gid: u64::from(e.gid),
            size: data.len() as u64,
            mtime: e.mtime.max(0) as u64,
            flag: type_flag(&e.kind),
            link,
            dev,
        },
    );
    out.extend_from_slice(data);
    pad(out);
}

//! GRUB's i386-pc core.img, assembled in-process from the target's own
//! `grub-pc-bin` files, so the host needs no GRUB of the target's version.
//! The result is what `grub-mkimage -O i386-pc` writes for the same
//! modules, config and prefix, apart from the LZMA stream (see [`lzma`]).
//!
//! The format, from GRUB's util/mkimage.c (`grub_install_generate_image`),
//! util/grub-mkimagexx.c (loading kernel.img), util/resolve.c (module
//! order), include/grub/kernel.h (module objects) and include/grub/offsets.h
//! (header offsets):
//!
//! ```text
//! diskboot.img          one sector; its last 12 bytes are the blocklist
//!                       (start u64, sectors u16, segment u16): sectors is
//!                       the length of the rest in sectors, segment 0x820
//! lzma_decompress.img   at most 0xe00 bytes (it runs at 0x8200, the kernel
//!                       at 0x9000); u32 at 0x08: the compressed size,
//!                       u32 at 0x0c: the uncompressed size
//! raw LZMA1 stream of
//!   kernel              the PROGBITS sections of kernel.img (an ELF32
//!                       executable linked at 0x9000): executable ones first,
//!                       then data, each at its aligned address - 0x9000
//!   module info         "mimg" magic (0x676d696d), offset 12, and the size
//!                       of this whole part (info, headers and objects)
//!   objects             each: type u32, size u32 (header plus data rounded
//!                       up to 4 bytes), the data, zero padding to 4 bytes:
//!                       the modules (type 0) in dependency order, the
//!                       config (type 2) and the prefix (type 3), both
//!                       NUL-terminated
//! ```
//!
//! All integers little-endian. The kernel finds the module info right after
//! its own data (`_edata`), which is why the layout of kernel.img's sections
//! is checked against their link addresses rather than trusted.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::lzma;

/// Where GRUB's i386-pc kernel is linked and run.
pub const LINK_ADDR: u32 = 0x9000;
/// Where diskboot.img loads the decompressor: the kernel's link address
/// bounds it.
const DECOMPRESSOR_ADDR: u32 = 0x8200;
/// The largest lzma_decompress.img (grub-mkimage's "Decompressor is too
/// big").
pub const MAX_DECOMPRESSOR_SIZE: usize = (LINK_ADDR - DECOMPRESSOR_ADDR) as usize;
/// Offsets of the size fields in lzma_decompress.img.
pub const COMPRESSED_SIZE_OFFSET: usize = 0x08;
pub const UNCOMPRESSED_SIZE_OFFSET: usize = 0x0c;
/// The decompressor and the compressed kernel must end below this address
/// (grub-mkimage's "core image is too big").
pub const CORE_END_LIMIT: u32 = 0x78000;
/// The kernel's text, data and bss must end below this address
/// (grub-mkimage's "kernel image is too big").
pub const KERNEL_END_LIMIT: u32 = 0x68000;
/// "mimg" in memory: `GRUB_MODULE_MAGIC`.
pub const MODULE_MAGIC: u32 = 0x676d_696d;
/// Size of the module info (magic, offset, size).
pub const MODULE_INFO_SIZE: usize = 12;
/// Size of an object header (type, size).
pub const OBJECT_HEADER_SIZE: usize = 8;
/// Object types (`OBJ_TYPE_*` of include/grub/kernel.h).
pub const OBJ_TYPE_ELF: u32 = 0;
pub const OBJ_TYPE_CONFIG: u32 = 2;
pub const OBJ_TYPE_PREFIX: u32 = 3;
/// diskboot.img: one sector, its blocklist in the last 12 bytes.
pub const DISKBOOT_SIZE: usize = 512;
const BLOCKLIST_LEN: usize = DISKBOOT_SIZE - 4;
const BLOCKLIST_SEGMENT: usize = DISKBOOT_SIZE - 2;
/// The segment diskboot.img loads the decompressor to (0x8200 >> 4).
pub const DISKBOOT_SEGMENT: u16 = (DECOMPRESSOR_ADDR >> 4) as u16;
/// Objects are aligned to the target's pointer size.
const ALIGN: usize = 4;

/// Why core.img could not be assembled. Files are named as in GRUB's
/// i386-pc directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreImgError {
    #[error(
        "{0} is missing from GRUB's i386-pc files (they come from the image's grub-pc-bin package)"
    )]
    MissingFile(String),
    #[error("moddep.lst line {line}: {text:?} is not \"module: dependencies\"")]
    ModdepLine { line: usize, text: String },
    #[error("module {module}{} is not listed in moddep.lst", needed_by_text(.needed_by))]
    ModuleNotListed {
        module: String,
        needed_by: Option<String>,
    },
    #[error("moddep.lst has a dependency cycle: {0}")]
    DependencyCycle(String),
    #[error("kernel.img is not GRUB's i386 kernel: {0}")]
    KernelNotElf(String),
    #[error("kernel.img is truncated: its {what} ends at byte {end}, the file has {size} bytes")]
    KernelTruncated { what: String, end: u64, size: usize },
    #[error(
        "kernel.img section {section} is linked at {addr:#x}, expected {expected:#x}: GRUB \
         finds the modules right after the kernel's data"
    )]
    KernelLayout {
        section: String,
        addr: u32,
        expected: u64,
    },
    #[error(
        "kernel.img needs memory up to {end:#x} (text, data and bss from {LINK_ADDR:#x}), \
         above the {KERNEL_END_LIMIT:#x} GRUB's BIOS kernel may use"
    )]
    KernelTooLarge { end: u64 },
    #[error("{name} is {size} bytes, expected {expected}")]
    WrongSize {
        name: &'static str,
        size: usize,
        expected: String,
    },
    #[error("{name} is not GRUB's: {reason}")]
    NotGrubs {
        name: &'static str,
        reason: &'static str,
    },
    #[error(
        "core.img would be {size} bytes after diskboot.img and end at {end:#x}, above the \
         {CORE_END_LIMIT:#x} GRUB's BIOS loader can fill: embed fewer modules (the largest \
         are {largest})"
    )]
    TooLarge {
        size: usize,
        end: u64,
        largest: String,
    },
    #[error("compressing the kernel and modules with LZMA failed: {0}")]
    Compress(String),
    #[error("not a core.img as grub-mkimage writes it: {0}")]
    NotCoreImg(String),
}

fn needed_by_text(by: &Option<String>) -> String {
    by.as_ref()
        .map(|m| format!(" (needed by {m})"))
        .unwrap_or_default()
}

/// GRUB's i386-pc files (the contents of `/usr/lib/grub/i386-pc`), by
/// file name.
#[derive(Debug, Clone, Default)]
pub struct PcFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl PcFiles {
    pub fn new() -> PcFiles {
        PcFiles::default()
    }

    /// The regular files of `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<PcFiles> {
        let mut files = PcFiles::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let data = std::fs::read(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            files.insert(name, data);
        }
        Ok(files)
    }

    pub fn insert(&mut self, name: impl Into<String>, data: Vec<u8>) {
        self.files.insert(name.into(), data);
    }

    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        self.files.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    fn file(&self, name: &str) -> Result<&[u8], CoreImgError> {
        self.get(name)
            .ok_or_else(|| CoreImgError::MissingFile(name.to_string()))
    }

    /// `grub_version` of modinfo.sh ("2.12"), if it has one.
    pub fn grub_version(&self) -> Option<String> {
        let text = std::str::from_utf8(self.get("modinfo.sh")?).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("grub_version="))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .filter(|v| !v.is_empty())
    }
}

/// What goes into core.img besides GRUB's kernel.
#[derive(Debug, Clone, Copy)]
pub struct CoreSpec<'a> {
    /// Modules to build in; their dependencies are added from moddep.lst.
    pub modules: &'a [&'a str],
    /// The early config, run before normal mode; none when empty.
    pub config: &'a str,
    /// `$prefix` (the early config may set it again).
    pub prefix: &'a str,
}

/// core.img for a disk: diskboot.img (its blocklist's sector count filled
/// in; the start LBA is the installer's), lzma_decompress.img with its
/// size fields, and the compressed kernel with `spec`'s modules, config
/// and prefix.
pub fn assemble(files: &PcFiles, spec: &CoreSpec) -> Result<Vec<u8>, CoreImgError> {
    let modules = check(files, spec.modules)?;
    let mut blobs = Vec::with_capacity(modules.len());
    for m in &modules {
        blobs.push((m.as_str(), files.file(&format!("{m}.mod"))?));
    }
    let kernel = load_kernel(files.file("kernel.img")?)?;
    let payload = payload(&kernel.image, &blobs, spec.config, spec.prefix);

    let decompressor = files.file("lzma_decompress.img")?;
    check_decompressor(decompressor)?;
    let diskboot = files.file("diskboot.img")?;
    check_diskboot(diskboot)?;

    let compressed = lzma::compress(&payload).map_err(|e| CoreImgError::Compress(e.to_string()))?;
    let core_size = decompressor.len() + compressed.len();
    let end = u64::from(LINK_ADDR) + core_size as u64;
    if end > u64::from(CORE_END_LIMIT) {
        let mut by_size = blobs.clone();
        by_size.sort_by_key(|(_, b)| std::cmp::Reverse(b.len()));
        let largest = by_size
            .iter()
            .take(3)
            .map(|(m, b)| format!("{m} {} bytes", b.len()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CoreImgError::TooLarge {
            size: core_size,
            end,
            largest,
        });
    }
    let as_u32 = |n: usize| u32::try_from(n).expect("bounded by CORE_END_LIMIT");
    let mut out = Vec::with_capacity(DISKBOOT_SIZE + core_size);
    out.extend_from_slice(diskboot);
    let sectors = core_size.div_ceil(DISKBOOT_SIZE) as u16;
    out[BLOCKLIST_LEN..BLOCKLIST_LEN + 2].copy_from_slice(&sectors.to_le_bytes());
    let at = out.len();
    out.extend_from_slice(decompressor);
    out[at + COMPRESSED_SIZE_OFFSET..at + COMPRESSED_SIZE_OFFSET + 4]
        .copy_from_slice(&as_u32(compressed.len()).to_le_bytes());
    out[at + UNCOMPRESSED_SIZE_OFFSET..at + UNCOMPRESSED_SIZE_OFFSET + 4]
        .copy_from_slice(&as_u32(payload.len()).to_le_bytes());
    out.extend_from_slice(&compressed);
    tracing::debug!(
        "core.img: kernel {} bytes, {} modules ({}), {} bytes uncompressed, {} compressed",
        kernel.image.len(),
        modules.len(),
        modules.join(" "),
        payload.len(),
        compressed.len()
    );
    Ok(out)
}

/// The files [`assemble`] reads: kernel.img, the decompressor,
/// diskboot.img, and the module file of `modules` and each of their
/// dependencies. Returns the modules in the order they are built in.
pub fn check(files: &PcFiles, modules: &[&str]) -> Result<Vec<String>, CoreImgError> {
    for name in ["kernel.img", "lzma_decompress.img", "diskboot.img"] {
        files.file(name)?;
    }
    let moddep = parse_moddep(files.file("moddep.lst")?)?;
    let modules = resolve(&moddep, modules)?;
    for m in &modules {
        files.file(&format!("{m}.mod"))?;
    }
    Ok(modules)
}

/// The uncompressed part: the kernel, the module info and the objects.
fn payload(kernel: &[u8], modules: &[(&str, &[u8])], config: &str, prefix: &str) -> Vec<u8> {
    let mut objects: Vec<(u32, &[u8], usize)> = modules
        .iter()
        .map(|(_, data)| (OBJ_TYPE_ELF, *data, data.len()))
        .collect();
    // Config and prefix are strings: at least one NUL after them. Without
    // an early config there is no config object (grub-mkimage without -c).
    if !config.is_empty() {
        objects.push((OBJ_TYPE_CONFIG, config.as_bytes(), config.len() + 1));
    }
    objects.push((OBJ_TYPE_PREFIX, prefix.as_bytes(), prefix.len() + 1));
    let total = MODULE_INFO_SIZE
        + objects
            .iter()
            .map(|(_, _, len)| OBJECT_HEADER_SIZE + len.next_multiple_of(ALIGN))
            .sum::<usize>();
    let mut out = Vec::with_capacity(kernel.len() + total);
    out.extend_from_slice(kernel);
    let u32_le = |n: usize| (n as u32).to_le_bytes();
    out.extend_from_slice(&MODULE_MAGIC.to_le_bytes());
    out.extend_from_slice(&u32_le(MODULE_INFO_SIZE));
    out.extend_from_slice(&u32_le(total));
    for (kind, data, len) in objects {
        let padded = len.next_multiple_of(ALIGN);
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&u32_le(OBJECT_HEADER_SIZE + padded));
        out.extend_from_slice(data);
        out.resize(out.len() + padded - data.len(), 0);
    }
    debug_assert_eq!(out.len(), kernel.len() + total);
    out
}

/// moddep.lst: `module: dependency dependency …`, one module a line.
pub type Moddep = BTreeMap<String, Vec<String>>;

pub fn parse_moddep(text: &[u8]) -> Result<Moddep, CoreImgError> {
    let mut deps = Moddep::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let bad = || CoreImgError::ModdepLine {
            line: i + 1,
            text: String::from_utf8_lossy(line).into_owned(),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_text = std::str::from_utf8(line).map_err(|_| bad())?;
        let (name, rest) = line_text.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        // A later line for the same module wins, as in grub-mkimage.
        deps.insert(
            name.to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    Ok(deps)
}

/// `wanted` and everything they depend on, each module after its
/// dependencies. The order is grub-mkimage's: depth first, requested
/// modules in the order given, a module's dependencies from the last one
/// on its moddep.lst line to the first.
pub fn resolve(moddep: &Moddep, wanted: &[&str]) -> Result<Vec<String>, CoreImgError> {
    struct Walk<'a> {
        moddep: &'a Moddep,
        done: HashSet<&'a str>,
        order: Vec<String>,
        path: Vec<&'a str>,
    }
    impl<'a> Walk<'a> {
        fn add(&mut self, name: &'a str, needed_by: Option<&str>) -> Result<(), CoreImgError> {
            if self.done.contains(name) {
                return Ok(());
            }
            if let Some(at) = self.path.iter().position(|&m| m == name) {
                let mut chain = self.path[at..].join(" -> ");
                let _ = write!(chain, " -> {name}");
                return Err(CoreImgError::DependencyCycle(chain));
            }
            let (key, deps) =
                self.moddep
                    .get_key_value(name)
                    .ok_or_else(|| CoreImgError::ModuleNotListed {
                        module: name.to_string(),
                        needed_by: needed_by.map(str::to_string),
                    })?;
            self.path.push(key);
            for dep in deps.iter().rev() {
                self.add(dep, Some(key))?;
            }
            self.path.pop();
            self.done.insert(key);
            self.order.push(key.clone());
            Ok(())
        }
    }
    let mut walk = Walk {
        moddep,
        done: HashSet::new(),
        order: Vec::new(),
        path: Vec::new(),
    };
    for name in wanted {
        // Look the requested name up in the map so the walk borrows only
        // from it.
        let key = moddep
            .get_key_value(*name)
            .map(|(k, _)| k.as_str())
            .ok_or_else(|| CoreImgError::ModuleNotListed {
                module: name.to_string(),
                needed_by: None,
            })?;
        walk.add(key, None)?;
    }
    Ok(walk.order)
}

/// GRUB's kernel as it runs: text and data from [`LINK_ADDR`] on.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub image: Vec<u8>,
    /// Bytes of bss after `image`.
    pub bss_size: u64,
}

const SHT_PROGBITS: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;
const SHDR_SIZE: usize = 40;

struct Section {
    name: String,
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
    align: u32,
}

/// Loads kernel.img (an ELF32 i386 executable linked at [`LINK_ADDR`]) as
/// grub-mkimage does: the executable PROGBITS sections, then the other
/// allocated PROGBITS sections, each at the next offset aligned to its
/// alignment, which must be its link address; the NOBITS sections after
/// them are the bss.
pub fn load_kernel(elf: &[u8]) -> Result<Kernel, CoreImgError> {
    let not_elf = |why: &str| CoreImgError::KernelNotElf(why.to_string());
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    if elf.len() < 52 || elf[..4] != *b"\x7fELF" {
        return Err(not_elf("no ELF header"));
    }
    if elf[4] != 1 || elf[5] != 1 || elf[6] != 1 || u32_at(0x14) != 1 {
        return Err(not_elf("not a 32-bit little-endian ELF file, version 1"));
    }
    if u16_at(0x12) != 3 {
        return Err(not_elf("not for i386 (ELF machine 3)"));
    }
    let shoff = u64::from(u32_at(0x20));
    let shentsize = usize::from(u16_at(0x2e));
    let shnum = usize::from(u16_at(0x30));
    let shstrndx = usize::from(u16_at(0x32));
    if shnum == 0 || shentsize < SHDR_SIZE {
        return Err(not_elf("no section headers"));
    }
    let table_end = shoff + (shnum * shentsize) as u64;
    if table_end > elf.len() as u64 {
        return Err(CoreImgError::KernelTruncated {
            what: "section header table".into(),
            end: table_end,
            size: elf.len(),
        });
    }
    let mut sections: Vec<Section> = (0..shnum)
        .map(|i| {
            let at = shoff as usize + i * shentsize;
            Section {
                name: format!("#{i}"),
                kind: u32_at(at + 4),
                flags: u32_at(at + 8),
                addr: u32_at(at + 12),
                offset: u32_at(at + 16),
                size: u32_at(at + 20),
                align: u32_at(at + 32),
            }
        })
        .collect();
    // Names, for messages only.
    if let Some(strtab) = sections.get(shstrndx).and_then(|s| {
        let end = s.offset as usize + s.size as usize;
        elf.get(s.offset as usize..end)
    }) {
        let names: Vec<u32> = (0..shnum)
            .map(|i| u32_at(shoff as usize + i * shentsize))
            .collect();
        for (s, at) in sections.iter_mut().zip(names) {
            if let Some(rest) = strtab.get(at as usize..) {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                if end > 0 {
                    s.name = String::from_utf8_lossy(&rest[..end]).into_owned();
                }
            }
        }
    }

    let is_text = |s: &Section| {
        s.kind == SHT_PROGBITS && s.flags & (SHF_ALLOC | SHF_EXECINSTR) == SHF_ALLOC | SHF_EXECINSTR
    };
    let is_data =
        |s: &Section| s.kind == SHT_PROGBITS && s.flags & (SHF_ALLOC | SHF_EXECINSTR) == SHF_ALLOC;
    if !sections.iter().any(is_text) {
        return Err(not_elf("no executable section"));
    }
    let mut placed: Vec<(&Section, u64)> = Vec::new();
    let mut pos = 0u64;
    let place = |s: &Section, pos: u64| -> Result<u64, CoreImgError> {
        if s.align > 1 && !s.align.is_power_of_two() {
            return Err(not_elf("a section alignment that is not a power of two"));
        }
        let at = pos.next_multiple_of(u64::from(s.align.max(1)));
        let expected = u64::from(LINK_ADDR) + at;
        if u64::from(s.addr) != expected {
            return Err(CoreImgError::KernelLayout {
                section: s.name.clone(),
                addr: s.addr,
                expected,
            });
        }
        Ok(at)
    };
    for s in sections
        .iter()
        .filter(|s| is_text(s))
        .chain(sections.iter().filter(|s| is_data(s)))
    {
        let at = place(s, pos)?;
        let end = u64::from(s.offset) + u64::from(s.size);
        if end > elf.len() as u64 {
            return Err(CoreImgError::KernelTruncated {
                what: format!("section {}", s.name),
                end,
                size: elf.len(),
            });
        }
        placed.push((s, at));
        pos = at + u64::from(s.size);
    }
    let kernel_size = pos;
    for s in sections.iter().filter(|s| s.kind == SHT_NOBITS) {
        pos = place(s, pos)? + u64::from(s.size);
    }
    let end = u64::from(LINK_ADDR) + pos;
    if end > u64::from(KERNEL_END_LIMIT) {
        return Err(CoreImgError::KernelTooLarge { end });
    }
    let mut image = vec![0u8; kernel_size as usize];
    for (s, at) in placed {
        let from = s.offset as usize;
        image[at as usize..at as usize + s.size as usize]
            .copy_from_slice(&elf[from..from + s.size as usize]);
    }
    Ok(Kernel {
        image,
        bss_size: pos - kernel_size,
    })
}

fn check_decompressor(d: &[u8]) -> Result<(), CoreImgError> {
    const NAME: &str = "lzma_decompress.img";
    if d.len() > MAX_DECOMPRESSOR_SIZE || d.len() < UNCOMPRESSED_SIZE_OFFSET + 4 {
        return Err(CoreImgError::WrongSize {
            name: NAME,
            size: d.len(),
            expected: format!(
                "{} to {MAX_DECOMPRESSOR_SIZE} (it runs at {DECOMPRESSOR_ADDR:#x}, below the \
                 kernel at {LINK_ADDR:#x})",
                UNCOMPRESSED_SIZE_OFFSET + 4
            ),
        });
    }
    // A far jump over the data area, whose size fields grub-mkimage fills.
    if d[0] != 0xea {
        return Err(CoreImgError::NotGrubs {
            name: NAME,
            reason: "it does not start with a far jump",
        });
    }
    if d[COMPRESSED_SIZE_OFFSET..UNCOMPRESSED_SIZE_OFFSET + 4]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(CoreImgError::NotGrubs {
            name: NAME,
            reason: "its size fields at 0x08..0x10 are already set",
        });
    }
    Ok(())
}

fn check_diskboot(d: &[u8]) -> Result<(), CoreImgError> {
    const NAME: &str = "diskboot.img";
    if d.len() != DISKBOOT_SIZE {
        return Err(CoreImgError::WrongSize {
            name: NAME,
            size: d.len(),
            expected: DISKBOOT_SIZE.to_string(),
        });
    }
    if d[BLOCKLIST_SEGMENT..] != DISKBOOT_SEGMENT.to_le_bytes() {
        return Err(CoreImgError::NotGrubs {
            name: NAME,
            reason: "its blocklist does not load segment 0x820",
        });
    }
    Ok(())
}

/// One object of core.img's module area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: u32,
    /// The data with its padding.
    pub data: Vec<u8>,
}

impl Object {
    /// The text of a config or prefix object (up to its first NUL).
    pub fn text(&self) -> String {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.data.len());
        String::from_utf8_lossy(&self.data[..end]).into_owned()
    }
}

/// A core.img taken apart: what grub-mkimage or [`assemble`] put in.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub diskboot: Vec<u8>,
    /// lzma_decompress.img with its size fields as written.
    pub decompressor: Vec<u8>,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    /// The kernel's text and data.
    pub kernel: Vec<u8>,
    /// The size field of the module info.
    pub total_module_size: u32,
    pub objects: Vec<Object>,
}

/// Takes a core.img for a disk (diskboot.img first, no padding after the
/// LZMA stream) apart, decompressing it.
pub fn unpack(core: &[u8]) -> Result<Unpacked, CoreImgError> {
    let bad = |why: String| CoreImgError::NotCoreImg(why);
    if core.len() < DISKBOOT_SIZE + UNCOMPRESSED_SIZE_OFFSET + 4 {
        return Err(bad(format!("{} bytes is too short", core.len())));
    }
    let (diskboot, rest) = core.split_at(DISKBOOT_SIZE);
    let field = |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().unwrap());
    let compressed_size = field(COMPRESSED_SIZE_OFFSET);
    let uncompressed_size = field(UNCOMPRESSED_SIZE_OFFSET);
    let decompressor_len = rest
        .len()
        .checked_sub(compressed_size as usize)
        .filter(|&n| (UNCOMPRESSED_SIZE_OFFSET + 4..=MAX_DECOMPRESSOR_SIZE).contains(&n))
        .ok_or_else(|| {
            bad(format!(
                "compressed size {compressed_size} does not fit the {} bytes after diskboot.img",
                rest.len()
            ))
        })?;
    let (decompressor, stream) = rest.split_at(decompressor_len);
    if uncompressed_size > KERNEL_END_LIMIT + CORE_END_LIMIT {
        return Err(bad(format!("uncompressed size {uncompressed_size}")));
    }
    let payload = lzma::decompress(stream, uncompressed_size as usize)
        .ok_or_else(|| bad("the LZMA stream does not decode".into()))?;
    // The module info: the magic, offset 12 and a size reaching the end.
    let info_at = (0..payload.len().saturating_sub(MODULE_INFO_SIZE))
        .rev()
        .find(|&at| {
            let w = |i: usize| u32::from_le_bytes(payload[at + i..at + i + 4].try_into().unwrap());
            w(0) == MODULE_MAGIC
                && w(4) as usize == MODULE_INFO_SIZE
                && at + w(8) as usize == payload.len()
        })
        .ok_or_else(|| bad("no module info (\"mimg\") ending the payload".into()))?;
    let w = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
    let total_module_size = w(info_at + 8);
    let mut objects = Vec::new();
    let mut at = info_at + MODULE_INFO_SIZE;
    while at < payload.len() {
        if at + OBJECT_HEADER_SIZE > payload.len() {
            return Err(bad(format!("object header at {at} runs past the end")));
        }
        let kind = w(at);
        let size = w(at + 4) as usize;
        let end = at + size.next_multiple_of(ALIGN);
        if size < OBJECT_HEADER_SIZE || end > payload.len() {
            return Err(bad(format!("object at {at} has size {size}")));
        }
        objects.push(Object {
            kind,
            data: payload[at + OBJECT_HEADER_SIZE..end].to_vec(),
        });
        at = end;
    }
    Ok(Unpacked {
        diskboot: diskboot.to_vec(),
        decompressor: decompressor.to_vec(),
        compressed_size,
        uncompressed_size,
        kernel: payload[..info_at].to_vec(),
        total_module_size,
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF32 i386 executable: .text at 0x9000, .rodata aligned
    /// to 4, .data aligned to 32, .bss.
    fn elf(text: &[u8], rodata: &[u8], data: &[u8], bss: u32) -> Vec<u8> {
        let mut out = vec![0u8; 52];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4..7].copy_from_slice(&[1, 1, 1]);
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        out[0x12..0x14].copy_from_slice(&3u16.to_le_bytes());
        out[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        let mut sections = vec![(0u32, 0u32, 0u32, 0u32, 0u32, 0u32)];
        let mut pos = 0u64;
        for (bytes, flags, align) in [
            (text, SHF_ALLOC | SHF_EXECINSTR, 1u32),
            (rodata, SHF_ALLOC, 4),
            (data, SHF_ALLOC | 1, 32),
        ] {
            pos = pos.next_multiple_of(u64::from(align));
            let off = out.len() as u32;
            out.extend_from_slice(bytes);
            sections.push((
                SHT_PROGBITS,
                flags,
                LINK_ADDR + pos as u32,
                off,
                bytes.len() as u32,
                align,
            ));
            pos += bytes.len() as u64;
        }
        pos = pos.next_multiple_of(32);
        sections.push((
            SHT_NOBITS,
            SHF_ALLOC | 1,
            LINK_ADDR + pos as u32,
            0,
            bss,
            32,
        ));
        let shoff = out.len() as u32;
        for (kind, flags, addr, off, size, align) in &sections {
            let mut h = [0u8; SHDR_SIZE];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..12].copy_from_slice(&flags.to_le_bytes());
            h[12..16].copy_from_slice(&addr.to_le_bytes());
            h[16..20].copy_from_slice(&off.to_le_bytes());
            h[20..24].copy_from_slice(&size.to_le_bytes());
            h[32..36].copy_from_slice(&align.to_le_bytes());
            out.extend_from_slice(&h);
        }
        out[0x20..0x24].copy_from_slice(&shoff.to_le_bytes());
        out[0x2e..0x30].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        out[0x30..0x32].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out
    }

    fn files() -> PcFiles {
        let mut f = PcFiles::new();
        f.insert("kernel.img", elf(&[0x90; 0x53], &[1; 7], &[2; 16], 64));
        let mut dec = vec![0u8; 0x300];
        dec[0] = 0xea;
        f.insert("lzma_decompress.img", dec);
        let mut diskboot = vec![0x11u8; 0x100];
        diskboot.resize(DISKBOOT_SIZE, 0);
        diskboot[500..502].copy_from_slice(&2u16.to_le_bytes());
        diskboot[510..].copy_from_slice(&0x820u16.to_le_bytes());
        f.insert("diskboot.img", diskboot);
        f.insert(
            "moddep.lst",
            b"normal: boot extcmd\nextcmd:\nboot: \nfat: fshelp\nfshelp:\n".to_vec(),
        );
        for m in ["normal", "extcmd", "boot", "fat", "fshelp"] {
            f.insert(format!("{m}.mod"), format!("module {m}").into_bytes());
        }
        f
    }

    #[test]
    fn kernel_sections_land_at_their_link_addresses() {
        let k = load_kernel(&elf(&[0x90; 0x53], &[1; 7], &[2; 16], 64)).unwrap();
        // .rodata at 0x54 (aligned to 4), .data at 0x60 (aligned to 32).
        assert_eq!(k.image.len(), 0x60 + 16);
        assert!(k.image[..0x53].iter().all(|&b| b == 0x90));
        assert_eq!(k.image[0x53], 0);
        assert_eq!(k.image[0x54..0x5b], [1; 7]);
        assert!(k.image[0x5b..0x60].iter().all(|&b| b == 0));
        assert_eq!(k.image[0x60..], [2; 16]);
        // bss: aligned to 32 after .data's end at 0x70.
        assert_eq!(k.bss_size, 0x10 + 64);
    }

    #[test]
    fn bad_kernels_are_named() {
        let good = elf(&[0x90; 0x53], &[1; 7], &[2; 16], 64);
        // Cut in the middle: the section headers at the end are gone.
        let e = load_kernel(&good[..good.len() / 2]).unwrap_err();
        assert!(
            matches!(&e, CoreImgError::KernelTruncated { what, .. } if what == "section header table"),
            "{e}"
        );
        assert!(e.to_string().contains("kernel.img is truncated"), "{e}");
        // Section data past the end of the file.
        let mut cut = good.clone();
        let shoff = u32::from_le_bytes(cut[0x20..0x24].try_into().unwrap()) as usize;
        let data_hdr = shoff + 3 * SHDR_SIZE;
        cut[data_hdr + 20..data_hdr + 24].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(matches!(
            load_kernel(&cut).unwrap_err(),
            CoreImgError::KernelTruncated { .. }
        ));
        // A section linked elsewhere.
        let mut moved = good.clone();
        let ro_hdr = shoff + 2 * SHDR_SIZE;
        moved[ro_hdr + 12..ro_hdr + 16].copy_from_slice(&0x9100u32.to_le_bytes());
        assert_eq!(
            load_kernel(&moved).unwrap_err(),
            CoreImgError::KernelLayout {
                section: "#2".into(),
                addr: 0x9100,
                expected: 0x9054
            }
        );
        // Not i386, not ELF at all.
        let mut arm = good.clone();
        arm[0x12] = 40;
        assert!(matches!(
            load_kernel(&arm),
            Err(CoreImgError::KernelNotElf(_))
        ));
        assert!(matches!(
            load_kernel(b"GRUB"),
            Err(CoreImgError::KernelNotElf(_))
        ));
        // A bss reaching past what the BIOS kernel may use.
        let huge = elf(&[0x90; 0x53], &[1; 7], &[2; 16], 0x60000);
        assert!(matches!(
            load_kernel(&huge),
            Err(CoreImgError::KernelTooLarge { .. })
        ));
    }

    #[test]
    fn modules_come_after_their_dependencies_in_grub_mkimage_order() {
        let m = parse_moddep(b"a: b c\nb: d\nc: d\nd:\ne: a\n").unwrap();
        // The dependencies of a line are taken from the last one back.
        assert_eq!(resolve(&m, &["a"]).unwrap(), ["d", "c", "b", "a"]);
        assert_eq!(resolve(&m, &["e", "d"]).unwrap(), ["d", "c", "b", "a", "e"]);
        assert_eq!(resolve(&m, &["b", "a"]).unwrap(), ["d", "b", "c", "a"]);
    }

    #[test]
    fn moddep_errors_name_the_module_and_line() {
        let m = parse_moddep(b"a: b\nb: gone\n").unwrap();
        let e = resolve(&m, &["a"]).unwrap_err();
        assert_eq!(
            e,
            CoreImgError::ModuleNotListed {
                module: "gone".into(),
                needed_by: Some("b".into())
            }
        );
        assert_eq!(
            e.to_string(),
            "module gone (needed by b) is not listed in moddep.lst"
        );
        assert!(matches!(
            resolve(&m, &["zz"]),
            Err(CoreImgError::ModuleNotListed {
                needed_by: None,
                ..
            })
        ));
        let cyclic = parse_moddep(b"a: b\nb: c\nc: a\n").unwrap();
        assert_eq!(
            resolve(&cyclic, &["a"]).unwrap_err(),
            CoreImgError::DependencyCycle("a -> b -> c -> a".into())
        );
        assert_eq!(
            parse_moddep(b"a: b\nno colon here\n").unwrap_err(),
            CoreImgError::ModdepLine {
                line: 2,
                text: "no colon here".into()
            }
        );
    }

    #[test]
    fn assemble_and_unpack_round_trip() {
        let f = files();
        let spec = CoreSpec {
            modules: &["fat", "normal"],
            config: "set root=(hd0)\n",
            prefix: "/boot/grub",
        };
        let core = assemble(&f, &spec).unwrap();
        let u = unpack(&core).unwrap();
        // diskboot.img: the sector count of the rest, nothing else changed.
        let sectors = (core.len() - DISKBOOT_SIZE).div_ceil(DISKBOOT_SIZE) as u16;
        assert_eq!(u.diskboot[508..510], sectors.to_le_bytes());
        let diskboot = f.get("diskboot.img").unwrap();
        assert_eq!(u.diskboot[..508], diskboot[..508]);
        assert_eq!(u.diskboot[510..], diskboot[510..]);
        // The decompressor: its two size fields filled in.
        assert_eq!(u.decompressor.len(), 0x300);
        assert_eq!(
            u.compressed_size as usize,
            core.len() - DISKBOOT_SIZE - 0x300
        );
        let k = load_kernel(f.get("kernel.img").unwrap()).unwrap();
        assert_eq!(u.kernel, k.image);
        assert_eq!(
            u.uncompressed_size as usize,
            k.image.len() + u.total_module_size as usize
        );
        let kinds: Vec<u32> = u.objects.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [0, 0, 0, 0, 0, 2, 3]);
        let names: Vec<String> = u.objects[..5].iter().map(Object::text).collect();
        assert_eq!(
            names,
            [
                "module fshelp",
                "module fat",
                "module extcmd",
                "module boot",
                "module normal"
            ]
        );
        // "module fat" is 10 bytes: padded to 12; the strings get a NUL.
        assert_eq!(u.objects[1].data, b"module fat\0\0");
        assert_eq!(u.objects[5].data, b"set root=(hd0)\n\0");
        assert_eq!(u.objects[6].data, b"/boot/grub\0\0");
        assert_eq!(
            u.total_module_size as usize,
            12 + u.objects.iter().map(|o| 8 + o.data.len()).sum::<usize>()
        );
    }

    #[test]
    fn missing_and_foreign_files_are_refused() {
        for name in [
            "moddep.lst",
            "kernel.img",
            "lzma_decompress.img",
            "diskboot.img",
            "fat.mod",
        ] {
            let mut f = files();
            f.remove(name);
            let spec = CoreSpec {
                modules: &["fat"],
                config: "",
                prefix: "/",
            };
            assert_eq!(
                assemble(&f, &spec).unwrap_err(),
                CoreImgError::MissingFile(name.into())
            );
        }
        let spec = CoreSpec {
            modules: &["fat"],
            config: "",
            prefix: "/",
        };
        let mut f = files();
        f.insert("diskboot.img", vec![0; 511]);
        assert!(matches!(
            assemble(&f, &spec),
            Err(CoreImgError::WrongSize {
                name: "diskboot.img",
                ..
            })
        ));
        let mut f = files();
        f.insert("diskboot.img", vec![0; 512]);
        assert!(matches!(
            assemble(&f, &spec),
            Err(CoreImgError::NotGrubs {
                name: "diskboot.img",
                ..
            })
        ));
        let mut f = files();
        f.insert("lzma_decompress.img", vec![0xea; MAX_DECOMPRESSOR_SIZE + 1]);
        assert!(matches!(
            assemble(&f, &spec),
            Err(CoreImgError::WrongSize {
                name: "lzma_decompress.img",
                ..
            })
        ));
        let mut f = files();
        f.insert("lzma_decompress.img", vec![0xea; 0x300]);
        assert!(matches!(
            assemble(&f, &spec),
            Err(CoreImgError::NotGrubs {
                name: "lzma_decompress.img",
                ..
            })
        ));
    }

    #[test]
    fn too_much_to_load_is_refused_with_the_largest_modules() {
        let mut f = files();
        // Incompressible: a xorshift sequence.
        let mut x = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..CORE_END_LIMIT as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        f.insert("fshelp.mod", noise);
        let spec = CoreSpec {
            modules: &["fat"],
            config: "",
            prefix: "/",
        };
        let e = assemble(&f, &spec).unwrap_err();
        assert!(
            matches!(&e, CoreImgError::TooLarge { largest, .. } if largest.starts_with("fshelp ")),
            "{e}"
        );
    }

    #[test]
    fn unpack_refuses_what_is_not_a_core_image() {
        assert!(matches!(
            unpack(&[0; 100]),
            Err(CoreImgError::NotCoreImg(_))
        ));
        let f = files();
        let spec = CoreSpec {
            modules: &["fat"],
            config: "",
            prefix: "/",
        };
        let mut core = assemble(&f, &spec).unwrap();
        let n = core.len();
        core[n - 40..].fill(0x55);
        assert!(matches!(unpack(&core), Err(CoreImgError::NotCoreImg(_))));
    }
}

//! Just enough ELF to find a section by name: 32- and 64-bit, either byte
//! order, every offset bounds-checked (module files are untrusted input).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF class {0}")]
    Class(u8),
    #[error("unsupported ELF byte order {0}")]
    ByteOrder(u8),
    #[error("ELF {0} lies outside the file")]
    OutOfBounds(&'static str),
}

struct Reader<'a> {
    b: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize, what: &'static str) -> Result<[u8; N], ElfError> {
        self.b
            .get(at..at.checked_add(N).ok_or(ElfError::OutOfBounds(what))?)
            .and_then(|s| s.try_into().ok())
            .ok_or(ElfError::OutOfBounds(what))
    }

    fn u16(&self, at: usize, what: &'static str) -> Result<u64, ElfError> {
        let b = self.bytes::<2>(at, what)?;
        Ok(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        } as u64)
    }

    fn u32(&self, at: usize, what: &'static str) -> Result<u64, ElfError> {
        let b = self.bytes::<4>(at, what)?;
        Ok(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as u64)
    }

    fn u64(&self, at: usize, what: &'static str) -> Result<u64, ElfError> {
        let b = self.bytes::<8>(at, what)?;
        Ok(if self.le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
}

fn slice<'a>(b: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(off).map_err(|_| ElfError::OutOfBounds(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::OutOfBounds(what))?;
    b.get(start..start.checked_add(len).ok_or(ElfError::OutOfBounds(what))?)
        .ok_or(ElfError::OutOfBounds(what))
}

/// The parts of an ELF header this module needs.
struct Header<'a> {
    r: Reader<'a>,
    is64: bool,
    machine: u16,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
    shstrndx: u64,
}

impl<'a> Header<'a> {
    fn parse(file: &'a [u8]) -> Result<Header<'a>, ElfError> {
        if file.get(..4) != Some(b"\x7fELF") {
            return Err(ElfError::NotElf);
        }
        let class = *file.get(4).ok_or(ElfError::NotElf)?;
        let order = *file.get(5).ok_or(ElfError::NotElf)?;
        let le = match order {
            1 => true,
            2 => false,
            o => return Err(ElfError::ByteOrder(o)),
        };
        let r = Reader { b: file, le };
        let is64 = match class {
            1 => false,
            2 => true,
            c => return Err(ElfError::Class(c)),
        };
        let machine = r.u16(0x12, "header")? as u16;
        let (shoff, shentsize, shnum, shstrndx) = if is64 {
            (
                r.u64(0x28, "section header offset")?,
                r.u16(0x3a, "header")?,
                r.u16(0x3c, "header")?,
                r.u16(0x3e, "header")?,
            )
        } else {
            (
                r.u32(0x20, "section header offset")?,
                r.u16(0x2e, "header")?,
                r.u16(0x30, "header")?,
                r.u16(0x32, "header")?,
            )
        };
        Ok(Header {
            r,
            is64,
            machine,
            shoff,
            shentsize,
            shnum,
            shstrndx,
        })
    }

    /// (name offset, file offset, size) of section `i`.
    fn section_header(&self, i: u64) -> Result<(u64, u64, u64), ElfError> {
        let r = &self.r;
        let base = self
            .shoff
            .checked_add(
                i.checked_mul(self.shentsize)
                    .ok_or(ElfError::OutOfBounds("section header"))?,
            )
            .ok_or(ElfError::OutOfBounds("section header"))?;
        let base = usize::try_from(base).map_err(|_| ElfError::OutOfBounds("section header"))?;
        let name = r.u32(base, "section header")?;
        Ok(if self.is64 {
            (
                name,
                r.u64(base + 0x18, "section header")?,
                r.u64(base + 0x20, "section header")?,
            )
        } else {
            (
                name,
                r.u32(base + 0x10, "section header")?,
                r.u32(base + 0x14, "section header")?,
            )
        })
    }

    /// The first section called `name`.
    fn section(&self, name: &str) -> Result<Option<&'a [u8]>, ElfError> {
        if self.shnum == 0 || self.shstrndx >= self.shnum {
            return Ok(None);
        }
        let file = self.r.b;
        let (_, str_off, str_size) = self.section_header(self.shstrndx)?;
        let names = slice(file, str_off, str_size, "section name table")?;
        for i in 0..self.shnum {
            let (name_off, off, size) = self.section_header(i)?;
            let Some(rest) = names.get(name_off as usize..) else {
                continue;
            };
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            if &rest[..end] == name.as_bytes() {
                return slice(file, off, size, "section").map(Some);
            }
        }
        Ok(None)
    }
}

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(file: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    Header::parse(file)?.section(name)
}

/// One entry of `.symtab`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// The name from `.strtab` (without its NUL).
    pub name: &'a [u8],
    /// `st_shndx`: 0 for an undefined symbol.
    pub shndx: u16,
    /// `st_info`: binding in the high nibble, type in the low one.
    pub info: u8,
}

/// What a module file says about the symbols it exports and needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolTables<'a> {
    /// `e_machine`.
    pub machine: u16,
    /// `.symtab` entries after the null entry 0, in file order; `None`
    /// when the file has no `.symtab` or `.strtab`.
    pub symtab: Option<Vec<Symbol<'a>>>,
    /// Names in `__versions` (each entry is a CRC then a NUL-padded name),
    /// in file order; empty without the section.
    pub versions: Vec<&'a [u8]>,
    /// The `__ksymtab_strings` section.
    pub ksymtab_strings: Option<&'a [u8]>,
}

/// The NUL-terminated string at `off` in `table`.
fn c_str<'a>(table: &'a [u8], off: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let rest = usize::try_from(off)
        .ok()
        .and_then(|o| table.get(o..))
        .ok_or(ElfError::OutOfBounds(what))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or(ElfError::OutOfBounds(what))?;
    Ok(&rest[..end])
}

/// Reads `.symtab` (names from `.strtab`), `__versions` and
/// `__ksymtab_strings`: the sections depmod reads to match the symbols a
/// module needs with the ones other modules export.
pub fn symbol_tables(file: &[u8]) -> Result<SymbolTables<'_>, ElfError> {
    let h = Header::parse(file)?;
    let mut out = SymbolTables {
        machine: h.machine,
        ksymtab_strings: h.section("__ksymtab_strings")?,
        ..Default::default()
    };
    let reader = Reader { b: &[], le: h.r.le };
    if let Some(versions) = h.section("__versions")? {
        // struct modversion_info: an unsigned long CRC, then a name of
        // 64 - sizeof(long) bytes.
        let (entry, crc) = if h.is64 { (64, 8) } else { (64, 4) };
        if versions.len() % entry == 0 {
            for e in versions.chunks_exact(entry) {
                out.versions.push(c_str(&e[crc..], 0, "__versions entry")?);
            }
        }
    }
    let (Some(symtab), Some(strtab)) = (h.section(".symtab")?, h.section(".strtab")?) else {
        return Ok(out);
    };
    let size = if h.is64 { 24 } else { 16 };
    if symtab.len() % size != 0 {
        return Err(ElfError::OutOfBounds(".symtab entry"));
    }
    let r = Reader {
        b: symtab,
        ..reader
    };
    let mut syms = Vec::with_capacity(symtab.len() / size);
    for i in 1..symtab.len() / size {
        let at = i * size;
        let name = r.u32(at, ".symtab entry")?;
        let (info, shndx) = if h.is64 {
            (
                r.bytes::<1>(at + 4, ".symtab entry")?[0],
                r.u16(at + 6, ".symtab entry")?,
            )
        } else {
            (
                r.bytes::<1>(at + 12, ".symtab entry")?[0],
                r.u16(at + 14, ".symtab entry")?,
            )
        };
        syms.push(Symbol {
            name: c_str(strtab, name, "symbol name")?,
            shndx: shndx as u16,
            info,
        });
    }
    out.symtab = Some(syms);
    Ok(out)
}

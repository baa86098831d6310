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

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(file: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
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
    let header = |i: u64| -> Result<(u64, u64, u64), ElfError> {
        let base = shoff
            .checked_add(
                i.checked_mul(shentsize)
                    .ok_or(ElfError::OutOfBounds("section header"))?,
            )
            .ok_or(ElfError::OutOfBounds("section header"))?;
        let base = usize::try_from(base).map_err(|_| ElfError::OutOfBounds("section header"))?;
        let name = r.u32(base, "section header")?;
        Ok(if is64 {
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
    };
    if shnum == 0 || shstrndx >= shnum {
        return Ok(None);
    }
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = slice(file, str_off, str_size, "section name table")?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
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

//! GRUB environment blocks: the 1024-byte files `load_env`/`save_env` read
//! and write, and the try-once boot state lives in.
//!
//! Format (GRUB's `lib/envblk.c`): the signature line
//! `# GRUB Environment Block\n`, then `name=value\n` lines, then `#` up to
//! exactly 1024 bytes. In values, a backslash escapes the next byte (GRUB
//! writes `\\` for a backslash and a backslash before a newline). Order of
//! variables is kept as found; new ones are appended, as `grub-editenv`
//! does.

use std::fmt;

/// Size of a GRUB environment block.
pub const BLOCK_SIZE: usize = 1024;
const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment block is {0} bytes, expected {BLOCK_SIZE}")]
    WrongSize(usize),
    #[error("environment block does not start with \"# GRUB Environment Block\"")]
    BadSignature,
    #[error("environment block line {line}: {why}")]
    BadLine { line: usize, why: &'static str },
    #[error(
        "variable name {0:?} is not valid (letters, digits and '_', not starting with a digit)"
    )]
    BadName(String),
    #[error("variables need {0} bytes, more than the {BLOCK_SIZE}-byte block holds")]
    TooLarge(usize),
}

/// The variables of one block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl GrubEnv {
    pub fn new() -> Self {
        GrubEnv::default()
    }

    /// Parses a whole block; it must be exactly [`BLOCK_SIZE`] bytes.
    pub fn parse(block: &[u8]) -> Result<Self, EnvError> {
        if block.len() != BLOCK_SIZE {
            return Err(EnvError::WrongSize(block.len()));
        }
        let body = block
            .strip_prefix(SIGNATURE)
            .ok_or(EnvError::BadSignature)?;
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut i = 0;
        let mut line = 1;
        while i < body.len() {
            line += 1;
            if body[i] == b'#' {
                // Padding or a comment: skip to the end of the line.
                while i < body.len() && body[i] != b'\n' {
                    i += 1;
                }
                i += 1;
                continue;
            }
            let start = i;
            while i < body.len() && body[i] != b'=' && body[i] != b'\n' {
                i += 1;
            }
            if i >= body.len() || body[i] != b'=' {
                return Err(EnvError::BadLine {
                    line,
                    why: "expected name=value",
                });
            }
            let name = std::str::from_utf8(&body[start..i]).map_err(|_| EnvError::BadLine {
                line,
                why: "name is not UTF-8",
            })?;
            if !valid_name(name) {
                return Err(EnvError::BadName(name.to_string()));
            }
            i += 1;
            let mut value = Vec::new();
            loop {
                match body.get(i) {
                    None => {
                        return Err(EnvError::BadLine {
                            line,
                            why: "value runs to the end of the block",
                        })
                    }
                    Some(b'\n') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let Some(&next) = body.get(i + 1) else {
                            return Err(EnvError::BadLine {
                                line,
                                why: "backslash at the end of the block",
                            });
                        };
                        value.push(next);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
            let value = String::from_utf8(value).map_err(|_| EnvError::BadLine {
                line,
                why: "value is not UTF-8",
            })?;
            let name = name.to_string();
            match vars.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => vars.push((name, value)),
            }
        }
        Ok(GrubEnv { vars })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, keeping its position if it exists.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EnvError> {
        if !valid_name(name) {
            return Err(EnvError::BadName(name.to_string()));
        }
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// Removes `name`; returns whether it was there.
    pub fn unset(&mut self, name: &str) -> bool {
        let before = self.vars.len();
        self.vars.retain(|(n, _)| n != name);
        self.vars.len() != before
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The whole 1024-byte block.
    pub fn encode(&self) -> Result<[u8; BLOCK_SIZE], EnvError> {
        let mut out = Vec::with_capacity(BLOCK_SIZE);
        out.extend_from_slice(SIGNATURE);
        for (n, v) in &self.vars {
            out.extend_from_slice(n.as_bytes());
            out.push(b'=');
            for &b in v.as_bytes() {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > BLOCK_SIZE {
            return Err(EnvError::TooLarge(out.len()));
        }
        let mut block = [b'#'; BLOCK_SIZE];
        block[..out.len()].copy_from_slice(&out);
        Ok(block)
    }
}

impl fmt::Display for GrubEnv {
    /// `name=value` lines, as `grub-editenv FILE list` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.vars {
            writeln!(f, "{n}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_escapes() {
        let mut env = GrubEnv::new();
        env.set("default_slot", "a").unwrap();
        env.set("trial_slot", "").unwrap();
        env.set("odd", "back\\slash\nnewline").unwrap();
        let block = env.encode().unwrap();
        assert_eq!(block.len(), BLOCK_SIZE);
        assert!(block.starts_with(SIGNATURE));
        assert_eq!(*block.last().unwrap(), b'#');
        let back = GrubEnv::parse(&block).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.get("odd"), Some("back\\slash\nnewline"));
        assert_eq!(back.get("trial_slot"), Some(""));
    }

    #[test]
    fn set_keeps_order_and_unset_removes() {
        let mut env = GrubEnv::new();
        env.set("a", "1").unwrap();
        env.set("b", "2").unwrap();
        env.set("a", "3").unwrap();
        assert_eq!(env.to_string(), "a=3\nb=2\n");
        assert!(env.unset("a"));
        assert!(!env.unset("a"));
        assert_eq!(env.to_string(), "b=2\n");
        assert!(env.set("1x", "v").is_err());
        assert!(env.set("a-b", "v").is_err());
    }

    #[test]
    fn rejects_bad_blocks() {
        assert_eq!(GrubEnv::parse(&[b'#'; 10]), Err(EnvError::WrongSize(10)));
        assert_eq!(
            GrubEnv::parse(&[b'#'; BLOCK_SIZE]),
            Err(EnvError::BadSignature)
        );
        let mut block = GrubEnv::new().encode().unwrap();
        block[SIGNATURE.len()..SIGNATURE.len() + 7].copy_from_slice(b"novalue");
        block[SIGNATURE.len() + 7] = b'\n';
        assert!(matches!(
            GrubEnv::parse(&block),
            Err(EnvError::BadLine { .. })
        ));
        let mut big = GrubEnv::new();
        big.set("x", &"v".repeat(1000)).unwrap();
        assert!(matches!(big.encode(), Err(EnvError::TooLarge(_))));
    }

    #[test]
    fn arbitrary_blocks_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let base = {
            let mut e = GrubEnv::new();
            e.set("default_slot", "a").unwrap();
            e.set("trial_slot", "b").unwrap();
            e.encode().unwrap()
        };
        for _ in 0..5000 {
            let mut b = base;
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b[(seed as usize) % BLOCK_SIZE] = (seed >> 32) as u8;
            }
            let _ = GrubEnv::parse(&b);
        }
    }
}

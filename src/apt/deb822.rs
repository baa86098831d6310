//! The deb822 control-file syntax shared by `Release`, `Packages`, the dpkg
//! `status` file and a package's `control` file: stanzas separated by blank
//! lines, `Field: value` lines, continuation lines starting with a space or
//! a tab.

use anyhow::{bail, Result};

/// One stanza: fields in file order. Names compare case-insensitively, as
/// dpkg does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    /// `(name, value)`; multi-line values keep their continuation lines
    /// joined with `\n`, each still starting with its space.
    pub fields: Vec<(String, String)>,
    /// 1-based line number of the stanza's first field, for messages.
    pub line: usize,
}

impl Stanza {
    /// The value of field `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Writes the stanza back in deb822 syntax (no trailing blank line).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push(':');
            if !v.starts_with('\n') && !v.is_empty() {
                out.push(' ');
            }
            out.push_str(v);
            out.push('\n');
        }
        out
    }

    /// Sets a field, replacing an existing one in place or appending.
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(slot) = self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            slot.1 = value.to_string();
        } else {
            self.fields.push((name.to_string(), value.to_string()));
        }
    }

    /// Removes a field if present.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// Parses every stanza of `text`. `what` names the file for messages.
/// Comment lines (`#`) are skipped, as dpkg and apt do.
pub fn parse(text: &str, what: &str) -> Result<Vec<Stanza>> {
    let mut out = Vec::new();
    for_each(text, what, |st| {
        out.push(st);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` with each stanza of `text` as soon as it is complete, so a
/// large index is never held twice (as text and as stanzas).
pub fn for_each(text: &str, what: &str, mut f: impl FnMut(Stanza) -> Result<()>) -> Result<()> {
    let mut cur = Stanza::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let lineno = i + 1;
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                f(std::mem::take(&mut cur))?;
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some((_, value)) = cur.fields.last_mut() else {
                bail!("{what}: line {lineno}: continuation line without a field before it");
            };
            value.push('\n');
            value.push_str(line);
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("{what}: line {lineno}: expected `Field: value`, found {line:?}");
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("{what}: line {lineno}: bad field name {name:?}");
        }
        if cur.fields.is_empty() {
            cur.line = lineno;
        }
        if cur.get(name).is_some() {
            bail!("{what}: line {lineno}: field {name} appears twice in one stanza");
        }
        cur.fields
            .push((name.to_string(), value.trim_start().trim_end().to_string()));
    }
    if !cur.fields.is_empty() {
        f(cur)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_continuations_and_comments() {
        let text = "Package: a\nDescription: short\n line two\n .\n line four\n\n\n# c\nPackage: b\r\nVersion: 1\n";
        let s = parse(text, "t").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].get("description"),
            Some("short\n line two\n .\n line four")
        );
        assert_eq!(s[1].get("Version"), Some("1"));
        assert_eq!(s[1].line, 9);
        assert_eq!(
            s[0].render(),
            "Package: a\nDescription: short\n line two\n .\n line four\n"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(" x\n", "f").unwrap_err().to_string();
        assert!(e.contains("f: line 1"), "{e}");
        let e = parse("A: 1\nnope\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("A: 1\nA: 2\n", "f").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}

//! The grammar of dependency fields (`Depends`, `Pre-Depends`, `Provides`,
//! `Conflicts`, `Breaks`, `Replaces`): comma-separated groups of `|`
//! alternatives, each `name[:archqual] [(op version)] [[arch …]] [<profile …>]`.

use std::fmt;

use super::version::{compare, Version};

/// A version relation from `(op version)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `<<`
    Lt,
    /// `<=` (and the obsolete `<`)
    Le,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    Ge,
    /// `>>`
    Gt,
}

impl Relation {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "<<" => Relation::Lt,
            "<=" | "<" => Relation::Le,
            "=" => Relation::Eq,
            ">=" | ">" => Relation::Ge,
            ">>" => Relation::Gt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Lt => "<<",
            Relation::Le => "<=",
            Relation::Eq => "=",
            Relation::Ge => ">=",
            Relation::Gt => ">>",
        }
    }

    /// Whether `have` satisfies `self want`.
    pub fn holds(self, have: &str, want: &str) -> bool {
        let o = compare(have, want);
        match self {
            Relation::Lt => o.is_lt(),
            Relation::Le => o.is_le(),
            Relation::Eq => o.is_eq(),
            Relation::Ge => o.is_ge(),
            Relation::Gt => o.is_gt(),
        }
    }
}

/// One alternative: `name[:arch] [(rel version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: String,
    /// `any`, `native` or an architecture name, from `name:qual`.
    pub arch_qual: Option<String>,
    pub version: Option<(Relation, String)>,
    /// `[amd64 !arm64]` restriction list, kept verbatim (entries may start
    /// with `!`). Empty when absent.
    pub arches: Vec<String>,
}

impl Dep {
    /// Whether the `[arch]` restriction (if any) includes `arch`.
    pub fn applies_to(&self, arch: &str) -> bool {
        if self.arches.is_empty() {
            return true;
        }
        let negated = self.arches.iter().all(|a| a.starts_with('!'));
        if negated {
            !self.arches.iter().any(|a| &a[1..] == arch)
        } else {
            self.arches.iter().any(|a| a == arch)
        }
    }

    /// Whether `version` satisfies the constraint (always, without one).
    pub fn version_ok(&self, version: &str) -> bool {
        match &self.version {
            None => true,
            Some((rel, want)) => rel.holds(version, want),
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(q) = &self.arch_qual {
            write!(f, ":{q}")?;
        }
        if let Some((rel, v)) = &self.version {
            write!(f, " ({} {v})", rel.as_str())?;
        }
        Ok(())
    }
}

/// `a | b` alternatives; the group is satisfied by any one of them.
pub type Alternatives = Vec<Dep>;

/// Parses a whole dependency field. Build profiles (`<!nocheck>`) are
/// ignored; `[arch]` lists are kept on each [`Dep`]. The error says what
/// was wrong; callers add the file, package and field.
pub fn parse_field(s: &str) -> Result<Vec<Alternatives>, String> {
    let mut out = Vec::new();
    for group in s.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_dep(alt.trim())?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_dep(s: &str) -> Result<Dep, String> {
    let bad = |why: &str| format!("{s:?}: {why}");
    // Build profiles: drop every `<…>` group that is not part of `(<< x)`.
    let mut rest = s;
    let name_end = rest
        .find(|c: char| c.is_whitespace() || "([<".contains(c))
        .unwrap_or(rest.len());
    let full_name = &rest[..name_end];
    rest = rest[name_end..].trim_start();
    if full_name.is_empty() {
        return Err(bad("missing package name"));
    }
    let (name, arch_qual) = match full_name.split_once(':') {
        Some((n, q)) if !q.is_empty() => (n, Some(q.to_string())),
        Some(_) => return Err(bad("empty architecture qualifier")),
        None => (full_name, None),
    };
    if !valid_name(name) {
        return Err(bad("invalid package name"));
    }
    let mut version = None;
    let mut arches = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('(') {
            let Some(end) = r.find(')') else {
                return Err(bad("unclosed `(`"));
            };
            let inner = r[..end].trim();
            let op_end = inner
                .find(|c: char| !"<>=".contains(c))
                .unwrap_or(inner.len());
            let rel = Relation::parse(&inner[..op_end])
                .ok_or_else(|| bad(&format!("unknown relation {:?}", &inner[..op_end])))?;
            let v = inner[op_end..].trim();
            Version::parse(v).map_err(|e| bad(&e))?;
            if version.is_some() {
                return Err(bad("two version constraints"));
            }
            version = Some((rel, v.to_string()));
            rest = r[end + 1..].trim_start();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Err(bad("unclosed `[`"));
            };
            arches.extend(r[..end].split_whitespace().map(str::to_string));
            rest = r[end + 1..].trim_start();
        } else if let Some(r) = rest.strip_prefix('<') {
            let Some(end) = r.find('>') else {
                return Err(bad("unclosed `<`"));
            };
            rest = r[end + 1..].trim_start();
        } else {
            return Err(bad(&format!("unexpected {rest:?}")));
        }
    }
    Ok(Dep {
        name: name.to_string(),
        arch_qual,
        version,
        arches,
    })
}

/// Policy 5.6.1: lowercase letters, digits, `+`, `-`, `.`, starting
/// alphanumeric. Uppercase, `_` and one-letter names are tolerated.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let d = parse_field(
            "libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any (<< 3.12~), \
             foo [amd64 arm64] <!nocheck>, bar:native, baz (<<1)",
        )
        .unwrap();
        assert_eq!(d.len(), 6);
        assert_eq!(d[0][0].name, "libc6");
        assert_eq!(d[0][0].version, Some((Relation::Ge, "2.34".into())));
        assert_eq!(d[1].len(), 2);
        assert_eq!(d[1][1].name, "debconf-2.0");
        assert_eq!(d[2][0].arch_qual.as_deref(), Some("any"));
        assert_eq!(d[2][0].version, Some((Relation::Lt, "3.12~".into())));
        assert_eq!(d[3][0].arches, ["amd64", "arm64"]);
        assert!(d[3][0].applies_to("arm64") && !d[3][0].applies_to("i386"));
        assert_eq!(d[4][0].arch_qual.as_deref(), Some("native"));
        assert_eq!(d[5][0].version, Some((Relation::Lt, "1".into())));
        assert_eq!(d[0][0].to_string(), "libc6 (>= 2.34)");
        let n = parse_field("a [!amd64]").unwrap();
        assert!(!n[0][0].applies_to("amd64") && n[0][0].applies_to("arm64"));
        assert!(parse_field("").unwrap().is_empty());
    }

    #[test]
    fn relations() {
        for (have, rel, want, ok) in [
            ("1.0", Relation::Lt, "1.1", true),
            ("1.1", Relation::Lt, "1.1", false),
            ("1.1", Relation::Le, "1.1", true),
            ("1.1", Relation::Eq, "1.1-0", true),
            ("1.2", Relation::Ge, "1.1", true),
            ("1.1", Relation::Gt, "1.1", false),
            ("1.1~1", Relation::Ge, "1.1", false),
        ] {
            assert_eq!(rel.holds(have, want), ok, "{have} {rel:?} {want}");
        }
    }

    #[test]
    fn bad_input() {
        for s in [
            "a (>= 1",
            "libc6 (~ 1)",
            "-x",
            "a b",
            "a (>= )",
            "a (>= 1) (<< 2)",
            "a:",
        ] {
            assert!(parse_field(s).is_err(), "{s}");
        }
    }
}

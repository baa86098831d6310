//! Debian version numbers (`[epoch:]upstream[-revision]`) and their order,
//! exactly as Debian policy 5.6.12 and dpkg define it.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version. Ordering is dpkg's, so `1.0~rc1 < 1.0`.
#[derive(Debug, Clone)]
pub struct Version {
    pub epoch: u32,
    pub upstream: String,
    /// Empty when the version has no `-`.
    pub revision: String,
}

impl Version {
    /// Parses a version; fails on an empty upstream part, a bad epoch or
    /// characters policy does not allow.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => {
                let epoch = e
                    .parse::<u32>()
                    .map_err(|_| format!("version {s:?}: epoch {e:?} is not a number"))?;
                (epoch, rest)
            }
            None => (0, s),
        };
        let (upstream, revision) = match rest.rfind('-') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(format!("version {s:?}: empty upstream version"));
        }
        let ok = |c: char, extra: &str| c.is_ascii_alphanumeric() || extra.contains(c);
        if !upstream.chars().all(|c| ok(c, ".+~-:")) || !revision.chars().all(|c| ok(c, ".+~")) {
            return Err(format!(
                "version {s:?}: contains a character policy forbids"
            ));
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if !self.revision.is_empty() {
            write!(f, "-{}", self.revision)?;
        }
        Ok(())
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| cmp_part(&self.upstream, &other.upstream))
            .then_with(|| cmp_part(&self.revision, &other.revision))
    }
}

/// The weight of one character in the non-digit part: `~` sorts before
/// everything (even the end), letters before non-letters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`.
fn cmp_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Numeric part, compared as numbers of any length.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// Compares two version strings; unparsable ones compare as plain text
/// after all valid ones would (callers validate at parse time).
pub fn compare(a: &str, b: &str) -> Ordering {
    match (Version::parse(a), Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `(a, b, a cmp b)`; cross-checked against `dpkg --compare-versions`
    /// by tests/apt.rs.
    pub const TABLE: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Ordering::Equal),
        ("1.0", "1.1", Ordering::Less),
        ("1.10", "1.9", Ordering::Greater),
        ("1.0~rc1", "1.0", Ordering::Less),
        ("1.0~~", "1.0~", Ordering::Less),
        ("1.0~", "1.0", Ordering::Less),
        ("1.0", "1.0+b1", Ordering::Less),
        ("1.0a", "1.0+", Ordering::Less),
        ("1.0a", "1.0", Ordering::Greater),
        ("1:0.1", "2.0", Ordering::Greater),
        ("0:1.0", "1.0", Ordering::Equal),
        ("1.0-1", "1.0-2", Ordering::Less),
        ("1.0-10", "1.0-9", Ordering::Greater),
        ("1.0-1", "1.0", Ordering::Greater),
        ("1.0-0", "1.0", Ordering::Equal),
        ("2.36-9+deb12u9", "2.36-9+deb12u10", Ordering::Less),
        ("2.36-9+deb12u4", "2.36-9", Ordering::Greater),
        ("6.1.119-1", "6.1.123-1", Ordering::Less),
        ("1.2.3-1~bpo12+1", "1.2.3-1", Ordering::Less),
        ("001", "1", Ordering::Equal),
        ("1.001", "1.1", Ordering::Equal),
        ("a", "b", Ordering::Less),
        ("1.0.0", "1.0", Ordering::Greater),
        ("1.0-1ubuntu1", "1.0-1", Ordering::Greater),
        ("9.0", "10.0", Ordering::Less),
        ("1:1.0", "1:1.0-0", Ordering::Equal),
        ("2:1", "1:9", Ordering::Greater),
        ("1.0.a", "1.0.+", Ordering::Less),
        ("1.0-a", "1.0-~", Ordering::Greater),
        ("3.0-2+b1", "3.0-2.1", Ordering::Less),
        ("0.9.8-1", "0.9.8a-1", Ordering::Less),
        ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12", Ordering::Less),
        ("1.2-3-4", "1.2-3", Ordering::Greater),
        ("1.0+dfsg", "1.0", Ordering::Greater),
        ("1.0+dfsg", "1.0-1", Ordering::Greater),
        ("1~", "1~~a", Ordering::Greater),
        ("252.33-1~deb12u1", "252.30-1~deb12u2", Ordering::Greater),
        ("1:2.38.1-5+deb12u3", "2.38.1-5", Ordering::Greater),
    ];

    #[test]
    fn table() {
        for (a, b, want) in TABLE {
            assert_eq!(compare(a, b), *want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn parse_and_display() {
        let v = Version::parse("1:2.3-4-5").unwrap();
        assert_eq!(
            (v.epoch, v.upstream.as_str(), v.revision.as_str()),
            (1, "2.3-4", "5")
        );
        assert_eq!(v.to_string(), "1:2.3-4-5");
        assert!(Version::parse("").is_err());
        assert!(Version::parse("x:1").is_err());
        assert!(Version::parse("1.0 beta").is_err());
        assert!(Version::parse("-1").is_err());
    }
}

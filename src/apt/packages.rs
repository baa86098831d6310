//! `Packages` indexes and the dpkg `status` file: deb822 stanzas turned
//! into [`Package`] records.

use anyhow::{bail, Result};

use super::deb822::{self, Stanza};
use super::depends::{parse_field, Alternatives, Dep};
use super::version::Version;

/// `Multi-Arch:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiArch {
    #[default]
    No,
    Same,
    Foreign,
    Allowed,
}

/// One binary package as an index (or the dpkg database) describes it.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub depends: Vec<Alternatives>,
    pub pre_depends: Vec<Alternatives>,
    /// Provides carry no alternatives: one [`Dep`] per provided name, with
    /// an optional `(= version)`.
    pub provides: Vec<Dep>,
    pub conflicts: Vec<Alternatives>,
    pub breaks: Vec<Alternatives>,
    pub replaces: Vec<Alternatives>,
    pub multi_arch: MultiArch,
    pub essential: bool,
    pub priority: Option<String>,
    pub section: Option<String>,
    /// Path relative to the repository root (empty in the status file).
    pub filename: String,
    pub size: u64,
    /// Lowercase hex; empty in the status file.
    pub sha256: String,
    /// KiB, as the field says.
    pub installed_size: Option<u64>,
    pub source: Option<String>,
}

impl Package {
    /// `name` or `name:arch` as dpkg names `.list` files: the arch suffix
    /// only for `Multi-Arch: same` packages.
    pub fn dpkg_name(&self) -> String {
        if self.multi_arch == MultiArch::Same {
            format!("{}:{}", self.name, self.architecture)
        } else {
            self.name.clone()
        }
    }

    /// Parses one stanza. `what` names the file.
    pub fn from_stanza(st: Stanza, what: &str, need_file: bool) -> Result<Package> {
        let pkg_name = st.get("Package").unwrap_or("").to_string();
        let at = |field: &str| {
            if pkg_name.is_empty() {
                format!("{what}: stanza at line {}: field {field}", st.line)
            } else {
                format!(
                    "{what}: package {pkg_name} (line {}): field {field}",
                    st.line
                )
            }
        };
        let required = |field: &str| -> Result<String> {
            match st.get(field) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => bail!("{}: missing", at(field)),
            }
        };
        let name = required("Package")?;
        let version = required("Version")?;
        Version::parse(&version).map_err(|e| anyhow::anyhow!("{}: {e}", at("Version")))?;
        let architecture = required("Architecture")?;
        let deps = |field: &str| -> Result<Vec<Alternatives>> {
            match st.get(field) {
                None => Ok(Vec::new()),
                Some(v) => parse_field(&v.replace('\n', " "))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at(field))),
            }
        };
        let provides = deps("Provides")?
            .into_iter()
            .map(|mut alts| {
                if alts.len() != 1 {
                    bail!("{}: alternatives are not allowed", at("Provides"));
                }
                Ok(alts.remove(0))
            })
            .collect::<Result<Vec<_>>>()?;
        let num = |field: &str| -> Result<Option<u64>> {
            st.get(field)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| anyhow::anyhow!("{}: {v:?} is not a number", at(field)))
                })
                .transpose()
        };
        let multi_arch = match st.get("Multi-Arch").map(str::trim) {
            None | Some("no") => MultiArch::No,
            Some("same") => MultiArch::Same,
            Some("foreign") => MultiArch::Foreign,
            Some("allowed") => MultiArch::Allowed,
            Some(v) => bail!("{}: unknown value {v:?}", at("Multi-Arch")),
        };
        let (filename, size, sha256) = if need_file {
            let sha = required("SHA256")?.to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
                bail!("{}: expected 64 hex digits, found {sha:?}", at("SHA256"));
            }
            let size = num("Size")?.ok_or_else(|| anyhow::anyhow!("{}: missing", at("Size")))?;
            let filename = required("Filename")?;
            if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
                bail!("{}: {filename:?} leaves the repository", at("Filename"));
            }
            (filename, size, sha)
        } else {
            (String::new(), 0, String::new())
        };
        Ok(Package {
            depends: deps("Depends")?,
            pre_depends: deps("Pre-Depends")?,
            provides,
            conflicts: deps("Conflicts")?,
            breaks: deps("Breaks")?,
            replaces: deps("Replaces")?,
            multi_arch,
            essential: st.get("Essential").map(str::trim) == Some("yes"),
            priority: st.get("Priority").map(|s| s.trim().to_string()),
            section: st.get("Section").map(|s| s.trim().to_string()),
            installed_size: num("Installed-Size")?,
            source: st.get("Source").map(|s| s.trim().to_string()),
            filename,
            size,
            sha256,
            name,
            version,
            architecture,
        })
    }
}

/// Parses a `Packages` index. Every stanza needs `Filename`, `Size` and
/// `SHA256`; errors name the file, package and field.
pub fn parse_index(text: &str, what: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    deb822::for_each(text, what, |st| {
        out.push(Package::from_stanza(st, what, true)?);
        Ok(())
    })?;
    Ok(out)
}

/// Parses a dpkg `status` file and keeps the packages whose `Status` is
/// `install ok installed`.
pub fn parse_status(text: &str, what: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for st in deb822::parse(text, what)? {
        let installed = st.get("Status").is_some_and(|s| {
            s.split_whitespace().collect::<Vec<_>>() == ["install", "ok", "installed"]
        });
        if installed {
            out.push(Package::from_stanza(st, what, false)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn index_stanza() {
        let text = format!(
            "Package: libfoo1\nSource: foo (1.2-1)\nVersion: 1:1.2-1+b1\nInstalled-Size: 120\n\
             Architecture: arm64\nMulti-Arch: same\nDepends: libc6 (>= 2.34),\n libbar | libbaz\n\
             Provides: foo-api (= 2), libfoo\nPre-Depends: dpkg (>= 1.19)\nBreaks: old (<< 1)\n\
             Priority: optional\nFilename: pool/main/f/foo/libfoo1_1.2-1_arm64.deb\nSize: 1000\n\
             SHA256: {SHA}\nDescription: foo\n the library\n"
        );
        let p = &parse_index(&text, "Packages").unwrap()[0];
        assert_eq!(p.name, "libfoo1");
        assert_eq!(p.version, "1:1.2-1+b1");
        assert_eq!(p.depends.len(), 2);
        assert_eq!(p.depends[1].len(), 2);
        assert_eq!(p.provides[0].version.as_ref().unwrap().1, "2");
        assert_eq!(p.pre_depends[0][0].name, "dpkg");
        assert_eq!(p.breaks[0][0].name, "old");
        assert_eq!(p.multi_arch, MultiArch::Same);
        assert_eq!(p.dpkg_name(), "libfoo1:arm64");
        assert_eq!(p.installed_size, Some(120));
        assert_eq!(p.source.as_deref(), Some("foo (1.2-1)"));
        assert_eq!(p.size, 1000);
    }

    #[test]
    fn errors_name_file_package_field() {
        let text = format!(
            "Package: ok\nVersion: 1\nArchitecture: all\nFilename: a.deb\nSize: 1\nSHA256: {SHA}\n\n\
             Package: broken\nVersion: 1\nArchitecture: all\nDepends: libc6 (>= \nFilename: a.deb\nSize: 1\nSHA256: {SHA}\n"
        );
        let e = parse_index(&text, "main/binary-arm64/Packages")
            .unwrap_err()
            .to_string();
        assert!(e.contains("main/binary-arm64/Packages"), "{e}");
        assert!(e.contains("package broken"), "{e}");
        assert!(e.contains("field Depends"), "{e}");
        let e = parse_index("Package: x1\nVersion: 1\nArchitecture: all\n", "P")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("package x1") && e.contains("SHA256") && e.contains("missing"),
            "{e}"
        );
        let e = parse_index(
            &format!("Package: x1\nVersion: 1\nArchitecture: all\nFilename: ../x\nSize: 1\nSHA256: {SHA}\n"),
            "P",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Filename"), "{e}");
    }

    /// Every truncation and many byte flips of an index give errors or
    /// packages, never panics.
    #[test]
    fn mutations_do_not_panic() {
        let text = format!(
            "Package: libfoo1\nVersion: 1:1.2-1+b1\nArchitecture: arm64\nMulti-Arch: same\n\
             Depends: libc6 (>= 2.34), a | b:any [amd64] <!nocheck>\nProvides: x (= 1)\n\
             Filename: pool/f.deb\nSize: 1\nSHA256: {SHA}\nDescription: d\n long\n"
        );
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let _ = parse_index(&String::from_utf8_lossy(&bytes[..cut]), "P");
        }
        let specials = b" \n:|,()<>=![]~-+.\t#";
        for i in 0..bytes.len() {
            for &c in specials {
                let mut m = bytes.to_vec();
                m[i] = c;
                let _ = parse_index(&String::from_utf8_lossy(&m), "P");
            }
        }
    }

    #[test]
    fn status_keeps_installed_only() {
        let text = "Package: a1\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n\
                    Package: b1\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n";
        let s = parse_status(text, "status").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "a1");
    }
}

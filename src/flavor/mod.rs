//! Flavors: what a distribution needs to become a bootable image.
//!
//! A flavor file (`flavors/NAME.yaml`, schema in docs/flavors.md) names the
//! base image, the package repositories per architecture with their signing
//! keys, the packages to layer in (boot essentials, kernel, bootloader,
//! firmware) and the init system. The flavors shipped in `flavors/` are
//! compiled into the binary, so `--flavor debian` needs no files; a path
//! (`--flavor ./my.yaml`) loads one from disk, with keyrings relative to it.
//!
//! Entry point: [`Flavor::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Architectures a flavor may list (Debian names).
pub const ARCHITECTURES: &[&str] = &["amd64", "arm64"];

/// The flavors compiled into the binary: name, YAML text.
const BUILTIN: &[(&str, &str)] = &[
    ("debian", include_str!("../../flavors/debian.yaml")),
    ("ubuntu", include_str!("../../flavors/ubuntu.yaml")),
];

/// Keyrings the built-in flavors refer to, by their path under `flavors/`.
const BUILTIN_KEYS: &[(&str, &[u8])] = &[
    (
        "keys/debian-archive-bookworm-stable.gpg",
        include_bytes!("../../flavors/keys/debian-archive-bookworm-stable.gpg"),
    ),
    (
        "keys/debian-archive-bookworm-automatic.gpg",
        include_bytes!("../../flavors/keys/debian-archive-bookworm-automatic.gpg"),
    ),
    (
        "keys/debian-archive-bookworm-security-automatic.gpg",
        include_bytes!("../../flavors/keys/debian-archive-bookworm-security-automatic.gpg"),
    ),
    (
        "keys/ubuntu-archive-2018.gpg",
        include_bytes!("../../flavors/keys/ubuntu-archive-2018.gpg"),
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitSystem {
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageFormat {
    Deb,
}

/// A flavor file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Flavor {
    /// Short name (`debian`), used in image names and os-release.
    pub name: String,
    /// Human-readable name (`Debian GNU/Linux 12 (bookworm)`).
    pub description: String,
    /// Release codename (`bookworm`, `noble`).
    pub release: String,
    pub package_format: PackageFormat,
    pub init: InitSystem,
    pub architectures: Vec<String>,
    pub base: Base,
    pub repositories: Vec<Repository>,
    pub packages: Packages,
    /// Where the file came from, for messages (`builtin:debian` or a path).
    #[serde(skip)]
    pub origin: String,
    /// The directory keyrings are relative to; `None` for built-in flavors.
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The distribution's container image, multi-arch (`docker.io/library/debian:bookworm`).
    pub image: String,
    /// What a build starts from without `--base`: `image` (the default), or
    /// `archive` — a base bootstrapped from the flavor's signed package
    /// archive (its `Priority: required` and `Essential` packages).
    #[serde(default)]
    pub default: BaseDefault,
}

/// [`Base::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseDefault {
    #[default]
    Image,
    Archive,
}

impl Flavor {
    /// The `--base` a build uses when none is given.
    pub fn default_base(&self) -> String {
        match self.base.default {
            BaseDefault::Image => self.base.image.clone(),
            BaseDefault::Archive => "archive".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    pub name: String,
    /// Archive root per architecture.
    pub url: BTreeMap<String, String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// OpenPGP keyring(s) the `InRelease` files must be signed by, relative
    /// to the flavor file.
    pub keyrings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// For every architecture: boot essentials container bases lack.
    pub common: Vec<String>,
    /// Per architecture.
    pub kernel: BTreeMap<String, Vec<String>>,
    /// Per architecture.
    pub bootloader: BTreeMap<String, Vec<String>>,
    /// Per architecture; may be empty.
    #[serde(default)]
    pub firmware: BTreeMap<String, Vec<String>>,
}

impl Flavor {
    /// Names of the built-in flavors.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    /// A built-in flavor by name, or a flavor file if `name_or_path`
    /// contains a `/` or ends in `.yaml`.
    pub fn load(name_or_path: &str) -> Result<Flavor> {
        if name_or_path.contains('/') || name_or_path.ends_with(".yaml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading flavor file {}", path.display()))?;
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            return Flavor::parse(&text, &path.display().to_string(), Some(dir));
        }
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => Flavor::parse(text, &format!("builtin:{n}"), None),
            None => bail!(
                "unknown flavor {name_or_path:?}: built-in flavors are {}; or give a path to a flavor file",
                Flavor::builtin_names().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Parses and validates flavor YAML. `origin` names it in messages.
    pub fn parse(text: &str, origin: &str, dir: Option<PathBuf>) -> Result<Flavor> {
        let mut f: Flavor =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("flavor {origin}: {e}"))?;
        f.origin = origin.to_string();
        f.dir = dir;
        f.validate()?;
        Ok(f)
    }

    fn validate(&self) -> Result<()> {
        let o = &self.origin;
        let word = |field: &str, v: &str| -> Result<()> {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!("flavor {o}: field {field}: {v:?} is not a plain name (letters, digits, '-', '_', '.')");
            }
            Ok(())
        };
        word("name", &self.name)?;
        word("release", &self.release)?;
        if self.architectures.is_empty() {
            bail!("flavor {o}: field architectures: lists none");
        }
        for a in &self.architectures {
            if !ARCHITECTURES.contains(&a.as_str()) {
                bail!(
                    "flavor {o}: field architectures: {a:?} is not supported (expected one of {})",
                    ARCHITECTURES.join(", ")
                );
            }
        }
        crate::oci::ImageSource::parse(&self.base.image)
            .with_context(|| format!("flavor {o}: field base.image"))?;
        if self.repositories.is_empty() {
            bail!("flavor {o}: field repositories: lists none");
        }
        for (i, r) in self.repositories.iter().enumerate() {
            let at = format!("repositories[{i}] ({})", r.name);
            word(&format!("repositories[{i}].name"), &r.name)?;
            for a in &self.architectures {
                let Some(url) = r.url.get(a) else {
                    bail!("flavor {o}: field {at}.url: no URL for architecture {a}");
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("flavor {o}: field {at}.url.{a}: {url:?} is not an http(s) URL");
                }
            }
            for a in r.url.keys() {
                if !self.architectures.contains(a) {
                    bail!("flavor {o}: field {at}.url: architecture {a:?} is not in architectures");
                }
            }
            if r.suites.is_empty() || r.components.is_empty() {
                bail!("flavor {o}: field {at}: needs at least one suite and one component");
            }
            if r.keyrings.is_empty() {
                bail!(
                    "flavor {o}: field {at}.keyrings: a repository must name its signing keyring"
                );
            }
            for k in &r.keyrings {
                self.keyring(k)
                    .with_context(|| format!("flavor {o}: field {at}.keyrings"))?;
            }
        }
        for (field, map) in [
            ("packages.kernel", &self.packages.kernel),
            ("packages.bootloader", &self.packages.bootloader),
            ("packages.firmware", &self.packages.firmware),
        ] {
            for a in map.keys() {
                if !self.architectures.contains(a) {
                    bail!("flavor {o}: field {field}: architecture {a:?} is not in architectures");
                }
            }
            if field != "packages.firmware" {
                for a in &self.architectures {
                    if map.get(a).is_none_or(|v| v.is_empty()) {
                        bail!("flavor {o}: field {field}: no packages for architecture {a}");
                    }
                }
            }
        }
        Ok(())
    }

    /// The bytes of a keyring named in the flavor.
    pub fn keyring(&self, name: &str) -> Result<Vec<u8>> {
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            bail!("keyring {name:?}: must be a path inside the flavor's directory");
        }
        match &self.dir {
            Some(dir) => {
                let p = dir.join(name);
                std::fs::read(&p).with_context(|| format!("reading keyring {}", p.display()))
            }
            None => BUILTIN_KEYS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.to_vec())
                .ok_or_else(|| anyhow::anyhow!("keyring {name:?} is not built in")),
        }
    }

    /// Every package to layer in for `arch`, in flavor order, without
    /// repeats.
    pub fn packages_for(&self, arch: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let per_arch = [
            &self.packages.kernel,
            &self.packages.bootloader,
            &self.packages.firmware,
        ];
        let all = self.packages.common.iter().chain(
            per_arch
                .iter()
                .flat_map(|m| m.get(arch).into_iter().flatten()),
        );
        for p in all {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_debian_is_valid() {
        let f = Flavor::load("debian").unwrap();
        assert_eq!(f.release, "bookworm");
        assert_eq!(f.architectures, ["amd64", "arm64"]);
        let amd = f.packages_for("amd64");
        assert!(amd.contains(&"linux-image-amd64".to_string()));
        assert!(amd.contains(&"systemd".to_string()));
        assert!(!amd.contains(&"linux-image-arm64".to_string()));
        for r in &f.repositories {
            for k in &r.keyrings {
                assert!(!f.keyring(k).unwrap().is_empty());
            }
            for url in r.url.values() {
                assert!(url.starts_with("https://deb.debian.org/"), "{url}");
            }
        }
    }

    #[test]
    fn unknown_flavor_lists_builtins() {
        let e = Flavor::load("gentoo").unwrap_err().to_string();
        assert!(e.contains("debian"), "{e}");
    }

    fn with(replace: &str, by: &str) -> String {
        let text = BUILTIN[0].1;
        assert!(text.contains(replace), "fixture text {replace:?} missing");
        text.replacen(replace, by, 1)
    }

    fn parse_err(text: &str) -> String {
        format!(
            "{:#}",
            Flavor::parse(text, "test.yaml", None).expect_err("should be rejected")
        )
    }

    #[test]
    fn errors_name_the_file_and_field() {
        // Unknown field: the YAML error carries the line.
        let e = parse_err(&with("release: bookworm", "release: bookworm\nrelaese: x"));
        assert!(e.contains("test.yaml") && e.contains("relaese"), "{e}");
        assert!(e.contains("line") || e.contains(':'), "{e}");

        let e = parse_err(&with("  - arm64\n", "  - mips\n"));
        assert!(e.contains("architectures") && e.contains("mips"), "{e}");

        let e = parse_err(&with("init: systemd", "init: sysvinit"));
        assert!(e.contains("test.yaml") && e.contains("sysvinit"), "{e}");

        let e = parse_err(&with("    arm64: [linux-image-arm64]", "    arm64: []"));
        assert!(e.contains("packages.kernel") && e.contains("arm64"), "{e}");

        let e = parse_err(&with(
            "keys/debian-archive-bookworm-stable.gpg",
            "keys/missing.gpg",
        ));
        assert!(e.contains("keyrings") && e.contains("missing.gpg"), "{e}");

        let e = parse_err(&with(
            "keys/debian-archive-bookworm-stable.gpg",
            "../../etc/passwd",
        ));
        assert!(e.contains("inside the flavor"), "{e}");
    }
}

//! Flavors: what a distribution needs to become a bootable image.
//!
//! A flavor file (`flavors/NAME.yaml`, schema in docs/flavors.md) names the
//! base image, the package repositories per architecture with their signing
//! keys, the packages to layer in (boot essentials, kernel, bootloader,
//! firmware) and the init system. The flavors shipped in `flavors/` are
//! compiled into the binary, one per release (`--flavor debian-13`), so they
//! need no files; an alias names the release a distribution's plain name
//! stands for (`debian` is Debian's current stable release, [`ALIASES`]). A
//! path (`--flavor ./my.yaml`) loads one from disk, with keyrings relative
//! to it.
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
    ("debian-12", include_str!("../../flavors/debian-12.yaml")),
    ("debian-13", include_str!("../../flavors/debian-13.yaml")),
    ("ubuntu", include_str!("../../flavors/ubuntu.yaml")),
];

/// Names that stand for a built-in flavor: alias, flavor. `debian` is
/// Debian's current stable release; when Debian releases the next one, a
/// flavor file for it is added and the alias moves to it once the test
/// suite builds and boots it (docs/flavors.md).
pub const ALIASES: &[(&str, &str)] = &[("debian", "debian-13")];

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
        "keys/debian-archive-trixie-stable.gpg",
        include_bytes!("../../flavors/keys/debian-archive-trixie-stable.gpg"),
    ),
    (
        "keys/debian-archive-trixie-automatic.gpg",
        include_bytes!("../../flavors/keys/debian-archive-trixie-automatic.gpg"),
    ),
    (
        "keys/debian-archive-trixie-security-automatic.gpg",
        include_bytes!("../../flavors/keys/debian-archive-trixie-security-automatic.gpg"),
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
    /// Where the file came from, for messages (`builtin:debian-13` or a
    /// path).
    #[serde(skip)]
    pub origin: String,
    /// The flavor a build names: a built-in one's name (`debian-13`, also
    /// when asked for by an alias) or the file's path.
    #[serde(skip)]
    pub id: String,
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

    /// The built-in flavor `name` stands for: itself, or the flavor an
    /// alias names; `None` for a name that is neither.
    pub fn resolve_builtin(name: &str) -> Option<&'static str> {
        let name = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, target)| *target);
        BUILTIN.iter().map(|(n, _)| *n).find(|n| *n == name)
    }

    /// Every name `--flavor` takes without a path, for messages:
    /// `debian (debian-13), debian-12, debian-13, ubuntu`.
    pub fn known_names() -> String {
        let aliases = ALIASES.iter().map(|(a, t)| format!("{a} ({t})"));
        let names = BUILTIN.iter().map(|(n, _)| n.to_string());
        let mut all: Vec<String> = aliases.chain(names).collect();
        all.sort();
        all.join(", ")
    }

    /// A built-in flavor by name or alias, or a flavor file if
    /// `name_or_path` contains a `/` or ends in `.yaml`.
    pub fn load(name_or_path: &str) -> Result<Flavor> {
        if name_or_path.contains('/') || name_or_path.ends_with(".yaml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading flavor file {}", path.display()))?;
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            let mut f = Flavor::parse(&text, &path.display().to_string(), Some(dir))?;
            f.id = path.display().to_string();
            return Ok(f);
        }
        let Some(name) = Flavor::resolve_builtin(name_or_path) else {
            bail!(
                "unknown flavor {name_or_path:?}: the built-in flavors are {}; or give the path \
                 of a flavor file (docs/flavors.md)",
                Flavor::known_names()
            );
        };
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .expect("resolve_builtin returns built-in names");
        let mut f = Flavor::parse(text, &format!("builtin:{name}"), None)?;
        f.id = name.to_string();
        Ok(f)
    }

    /// Parses and validates flavor YAML. `origin` names it in messages.
    pub fn parse(text: &str, origin: &str, dir: Option<PathBuf>) -> Result<Flavor> {
        let mut f: Flavor =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("flavor {origin}: {e}"))?;
        f.origin = origin.to_string();
        f.id = origin.to_string();
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
    fn builtin_debian_releases_are_valid() {
        for (name, release) in [("debian-12", "bookworm"), ("debian-13", "trixie")] {
            let f = Flavor::load(name).unwrap();
            assert_eq!((f.name.as_str(), f.release.as_str()), ("debian", release));
            assert_eq!(f.id, name);
            assert_eq!(f.origin, format!("builtin:{name}"));
            assert_eq!(f.architectures, ["amd64", "arm64"]);
            assert_eq!(f.default_base(), "archive");
            assert!(f.base.image.ends_with(&format!(":{release}")), "{name}");
            let amd = f.packages_for("amd64");
            assert!(amd.contains(&"linux-image-amd64".to_string()));
            assert!(amd.contains(&"systemd".to_string()));
            assert!(amd.contains(&"grub-pc-bin".to_string()));
            assert!(!amd.contains(&"linux-image-arm64".to_string()));
            let suites: Vec<&str> = f
                .repositories
                .iter()
                .flat_map(|r| r.suites.iter().map(String::as_str))
                .collect();
            let want = [
                release.to_string(),
                format!("{release}-updates"),
                format!("{release}-security"),
            ];
            assert_eq!(suites, want, "{name}");
            for r in &f.repositories {
                for k in &r.keyrings {
                    assert!(k.contains(release), "{name}: {k}");
                    assert!(!f.keyring(k).unwrap().is_empty());
                }
                for url in r.url.values() {
                    assert!(url.starts_with("https://deb.debian.org/"), "{url}");
                }
            }
        }
    }

    /// The built-in keyrings hold exactly the keys Debian publishes for
    /// each release (ftp-master.debian.org/keys.html, and the
    /// debian-archive-keyring package they were copied from).
    #[test]
    fn builtin_keyrings_hold_debians_published_keys() {
        let published = [
            (
                "keys/debian-archive-bookworm-stable.gpg",
                "4D64FEC119C2029067D6E791F8D2585B8783D481",
            ),
            (
                "keys/debian-archive-bookworm-automatic.gpg",
                "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
            ),
            (
                "keys/debian-archive-bookworm-security-automatic.gpg",
                "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",
            ),
            (
                "keys/debian-archive-trixie-stable.gpg",
                "41587F7DB8C774BCCF131416762F67A0B2C39DE4",
            ),
            (
                "keys/debian-archive-trixie-automatic.gpg",
                "04B54C3CDCA79751B16BC6B5225629DF75B188BD",
            ),
            (
                "keys/debian-archive-trixie-security-automatic.gpg",
                "5E04A1E3223A19A20706E20F9904613D4CCE68C6",
            ),
        ];
        let f = Flavor::load("debian-13").unwrap();
        for (file, fpr) in published {
            let ring = crate::apt::Keyring::from_bytes(&f.keyring(file).unwrap(), file).unwrap();
            assert_eq!(ring.fingerprints(), [fpr], "{file}");
        }
    }

    #[test]
    fn debian_names_the_current_stable_release() {
        let f = Flavor::load("debian").unwrap();
        assert_eq!(f.id, "debian-13");
        assert_eq!(f.release, "trixie");
        assert_eq!(Flavor::resolve_builtin("debian"), Some("debian-13"));
        assert_eq!(Flavor::resolve_builtin("debian-13"), Some("debian-13"));
        assert_eq!(Flavor::resolve_builtin("debian-11"), None);
        // Every alias names a built-in flavor.
        for (alias, target) in ALIASES {
            assert_eq!(Flavor::resolve_builtin(alias), Some(*target));
        }
    }

    #[test]
    fn unknown_flavor_lists_the_known_ones() {
        let e = Flavor::load("debian-11").unwrap_err().to_string();
        assert!(
            e.contains("\"debian-11\"")
                && e.contains("debian (debian-13), debian-12, debian-13, ubuntu"),
            "{e}"
        );
        let e = Flavor::load("gentoo").unwrap_err().to_string();
        assert!(e.contains("gentoo") && e.contains("debian-13"), "{e}");
    }

    fn with(replace: &str, by: &str) -> String {
        let text = BUILTIN.iter().find(|(n, _)| *n == "debian-12").unwrap().1;
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

//! The first stage: everything a build is going to do, decided from the
//! command line and the flavor before anything is fetched, so that a
//! mistake in the arguments fails in milliseconds.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::build::{BuildArgs, Format, Optional};
use crate::disk;
use crate::flavor::Flavor;
use crate::oci::{ImageSource, Reference, WantedPlatform};
use crate::sign::SigningKey;
use crate::squashfs;

/// Where the base of the root filesystem comes from.
#[derive(Debug, Clone)]
pub enum BaseSource {
    /// Bootstrapped from the flavor's signed package archive.
    Archive,
    Image(ImageSource),
}

/// A build, decided.
#[derive(Debug)]
pub struct BuildPlan {
    pub flavor: Flavor,
    pub platform: WantedPlatform,
    /// `amd64` or `arm64`.
    pub arch: String,
    pub disk_arch: disk::Arch,
    /// Sorted, without repeats.
    pub formats: Vec<Format>,
    /// `SOURCE_DATE_EPOCH`, when set: mtimes are clamped to it.
    pub epoch: Option<i64>,
    /// The mtime of everything the build creates.
    pub mtime: i64,
    pub version: String,
    /// The node config to bake in, already checked.
    pub config: Option<String>,
    /// Public keys upgrades must be signed with (`--upgrade-key`).
    pub upgrade_keys: Vec<UpgradeKey>,
    pub base: BaseSource,
    pub components: ImageSource,
    pub k3s: Option<ImageSource>,
    /// The whole kernel command line after the slot arguments.
    pub cmdline: String,
    pub slot_size: Option<u64>,
    pub esp_size: u64,
    /// `--rpi-config`: lines for the Pi card's config.txt, read up front.
    pub rpi_config: Option<String>,
    pub compression: squashfs::Compression,
    pub insecure_registries: Vec<String>,
    /// The output directory (created, canonical).
    pub out_dir: PathBuf,
    /// `{flavor}-{release}-{arch}`, the stem of every output file.
    pub stem: String,
    /// Recorded in the upgrade artifact's annotations.
    pub revision: Option<String>,
    pub source_url: Option<String>,
    /// Where to push the upgrade artifact after the build (with a tag).
    pub push: Option<Reference>,
    /// The key that signs what is pushed, read before anything is built.
    pub sign_key: Option<SigningKey>,
}

impl BuildPlan {
    pub fn wants(&self, f: Format) -> bool {
        self.formats.contains(&f)
    }

    /// The path of an output file.
    pub fn output(&self, suffix: &str) -> PathBuf {
        self.out_dir.join(format!("{}{suffix}", self.stem))
    }
}

/// Decides the build; creates the output directory.
pub fn plan(a: &BuildArgs) -> Result<BuildPlan> {
    let flavor = Flavor::load(&a.flavor)?;
    let platform = match &a.arch {
        Some(x) => WantedPlatform::parse(x)?,
        None => WantedPlatform::host(),
    };
    let arch = platform.architecture.clone();
    if !flavor.architectures.contains(&arch) {
        bail!(
            "flavor {} ({}) does not support architecture {arch}; it supports {}",
            flavor.name,
            flavor.origin,
            flavor.architectures.join(", ")
        );
    }
    let disk_arch = match arch.as_str() {
        "amd64" => disk::Arch::X86_64,
        "arm64" => disk::Arch::Aarch64,
        other => bail!("architecture {other}: no disk layout for it"),
    };
    let mut formats = a.format.clone();
    if formats.is_empty() {
        formats = vec![Format::Disk, Format::Iso, Format::Upgrade];
        if arch == "arm64" && flavor.rpi.is_some() {
            formats.push(Format::Rpi);
        }
    }
    formats.sort();
    formats.dedup();
    if formats.contains(&Format::Rpi) {
        check_rpi(&flavor, &arch)?;
    }
    let rpi_config = match &a.rpi_config {
        Some(_) if !formats.contains(&Format::Rpi) => {
            bail!(
                "--rpi-config: it adds to the Raspberry Pi card's config.txt; add rpi to --format"
            )
        }
        Some(p) => Some(read_rpi_config(p)?),
        None => None,
    };
    let push = match &a.push {
        Some(p) => Some(push_target(p, &formats)?),
        None => None,
    };
    let sign_key = match &a.sign_key {
        Some(k) => Some(SigningKey::load(k).context("--sign-key")?),
        None => None,
    };
    for (flag, v) in [("--revision", &a.revision), ("--source-url", &a.source_url)] {
        if v.as_deref()
            .is_some_and(|v| v.is_empty() || v.chars().any(char::is_control))
        {
            bail!("{flag} {v:?}: expected a non-empty value without control characters");
        }
    }

    let epoch = crate::cli::source_date_epoch()?;
    let mtime = epoch.unwrap_or_else(now);
    let version = a
        .image_version
        .clone()
        .unwrap_or_else(|| version_from_epoch(mtime));
    if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("--image-version {version:?}: expected a version without spaces or quotes");
    }
    let config = match &a.config {
        Some(p) => Some(check_config(p)?),
        None => None,
    };
    let upgrade_keys = a
        .upgrade_keys
        .iter()
        .map(|p| UpgradeKey::load(p))
        .collect::<Result<Vec<_>>>()?;
    let base = match a.base.clone().unwrap_or_else(|| flavor.default_base()) {
        b if b == "archive" => BaseSource::Archive,
        b => BaseSource::Image(ImageSource::parse(&b).context("--base")?),
    };
    let components = match &a.components {
        Some(c) => ImageSource::parse(c).context("--components")?,
        None => default_components(option_env!("BUILD_IMAGE_DEFAULT_COMPONENTS"))?,
    };
    let k3s = if a.without.contains(&Optional::K3s) {
        None
    } else {
        Some(ImageSource::parse(&a.k3s_image).context("--k3s-image")?)
    };
    let cmdline = match &a.cmdline {
        Some(extra) => format!("{} {extra}", default_cmdline(&arch)),
        None => default_cmdline(&arch).to_string(),
    };
    a.compression.validate()?;

    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating output directory {}", a.output.display()))?;
    let out_dir = a
        .output
        .canonicalize()
        .with_context(|| format!("output directory {}", a.output.display()))?;
    let stem = format!("{}-{}-{}", flavor.name, flavor.release, arch);
    Ok(BuildPlan {
        flavor,
        platform,
        arch,
        disk_arch,
        formats,
        epoch,
        mtime,
        version,
        config,
        upgrade_keys,
        base,
        components,
        k3s,
        cmdline,
        slot_size: a.slot_size,
        esp_size: a.esp_size,
        rpi_config,
        compression: a.compression.clone(),
        insecure_registries: a.insecure_registries.clone(),
        out_dir,
        stem,
        revision: a.revision.clone(),
        source_url: a.source_url.clone(),
        push,
        sign_key,
    })
}

/// `--format rpi` needs an arm64 build of a flavor that says where its
/// distribution keeps the Pi firmware.
fn check_rpi(flavor: &Flavor, arch: &str) -> Result<()> {
    if arch != "arm64" {
        bail!(
            "--format rpi: Raspberry Pi cards are arm64 images (Pi 3, 4 and 5 boot 64-bit); \
             this build is for {arch}: add --arch arm64"
        );
    }
    if flavor.rpi.is_none() {
        bail!(
            "--format rpi: flavor {} ({}) has no rpi section naming its Raspberry Pi firmware \
             package (Debian's is raspi-firmware, in the non-free-firmware component) and where \
             it installs; see docs/raspberry-pi.md",
            flavor.name,
            flavor.origin
        );
    }
    Ok(())
}

/// `--rpi-config FILE`: config.txt lines, text.
fn read_rpi_config(p: &Path) -> Result<String> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("--rpi-config: reading {}", p.display()))?;
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        bail!(
            "--rpi-config {}: {c:?} is not text: expected config.txt lines",
            p.display()
        );
    }
    Ok(text)
}

/// A public key for the image's [`boot_contract::upgrade::KEYS_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeKey {
    /// The file name in the image: the first 16 hex digits of the
    /// SHA-256 of the key (reproducible, and the same key twice is one
    /// file).
    pub name: String,
    /// The key as SPKI PEM.
    pub pem: String,
}

impl UpgradeKey {
    /// Reads `--upgrade-key PUB`: a P-256 public key, SPKI PEM.
    pub fn load(p: &Path) -> Result<UpgradeKey> {
        use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("--upgrade-key: reading {}", p.display()))?;
        let key = p256::PublicKey::from_public_key_pem(text.trim()).map_err(|e| {
            anyhow!(
                "--upgrade-key {}: not a P-256 public key in PEM (\"-----BEGIN PUBLIC KEY-----\", \
                 as `build-image keygen` writes it): {e}",
                p.display()
            )
        })?;
        let der = key
            .to_public_key_der()
            .map_err(|e| anyhow!("--upgrade-key {}: {e}", p.display()))?;
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow!("--upgrade-key {}: {e}", p.display()))?;
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der.as_bytes()));
        Ok(UpgradeKey {
            name: format!("{}.{}", &id[..16], boot_contract::upgrade::KEY_EXTENSION),
            pem,
        })
    }
}

/// `--push REF`: a reference with a tag, and the upgrade artifact to push.
fn push_target(p: &str, formats: &[Format]) -> Result<Reference> {
    if !formats.contains(&Format::Upgrade) {
        bail!("--push {p}: it pushes the upgrade artifact; add upgrade to --format");
    }
    let r = Reference::parse(p.strip_prefix("docker://").unwrap_or(p)).context("--push")?;
    if r.digest.is_some() {
        bail!("--push {p}: give a tag to push to (REGISTRY/REPOSITORY:TAG), not a digest");
    }
    Ok(r)
}

/// Reads the node config and checks it with the rules os-agent applies
/// on the device (unknown fields, bad values; file, line and field named),
/// so a mistake fails the build instead of the node's first boot.
fn check_config(p: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
    let cfg = node_config::parse(&text, p).context("--config")?;
    node_config::validate_merged(&cfg).with_context(|| format!("--config: {}", p.display()))?;
    Ok(text)
}

/// The components layout `cargo xtask components` writes in the checkout
/// this binary was built from (`built_in`, set by .cargo/config.toml), if
/// it is there. A binary built elsewhere has no default: the message says
/// how to get one.
fn default_components(built_in: Option<&str>) -> Result<ImageSource> {
    if let Some(dir) = built_in {
        if Path::new(dir).join("index.json").is_file() {
            return Ok(ImageSource::OciLayout {
                dir: PathBuf::from(dir),
                tag: None,
            });
        }
    }
    let checkout = built_in
        .and_then(|d| Path::new(d).parent()?.parent())
        .filter(|d| d.join("xtask").is_dir());
    let how = match checkout {
        Some(src) => format!(
            "run `cargo xtask components` in {} (it writes {}), or pass --components",
            src.display(),
            built_in.unwrap_or_default()
        ),
        None => "build them from the build-image source with `cargo xtask components` and \
                 pass --components oci-layout:DIR (or set BUILD_IMAGE_COMPONENTS)"
            .to_string(),
    };
    bail!("no os-agent/os-init components image: {how}")
}

/// Kernel command line per architecture: both consoles, the serial one
/// last so it is /dev/console (where os-init and os-agent report); `gpt`
/// lets the kernel use the backup GPT if a write of the primary tore;
/// `panic=10` reboots 10 s after a kernel panic (an init that dies, a
/// kernel that cannot mount its root) instead of waiting forever, so a
/// failed trial comes back on the default slot.
pub fn default_cmdline(arch: &str) -> &'static str {
    match arch {
        "arm64" => "gpt panic=10 console=tty0 console=ttyAMA0,115200n8",
        _ => "gpt panic=10 console=tty0 console=ttyS0,115200n8",
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Gregorian date and time of a Unix time, `YYYYMMDD.HHMMSS`.
pub fn version_from_epoch(t: i64) -> String {
    let (y, m, d, h, mi, s) = crate::apt::release::civil(t);
    format!("{y:04}{m:02}{d:02}.{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_default_to_the_checkouts_layout_or_say_how_to_get_one() {
        let tmp = tempfile::tempdir().unwrap();
        let checkout = tmp.path();
        std::fs::create_dir_all(checkout.join("xtask")).unwrap();
        let layout = checkout.join("target/components");
        let dir = layout.to_str().unwrap();
        let e = default_components(Some(dir)).unwrap_err().to_string();
        assert!(
            e.contains("run `cargo xtask components` in") && e.contains(dir),
            "{e}"
        );
        let e = default_components(None).unwrap_err().to_string();
        assert!(
            e.contains("cargo xtask components") && e.contains("--components oci-layout:DIR"),
            "{e}"
        );
        std::fs::create_dir_all(&layout).unwrap();
        std::fs::write(layout.join("index.json"), "{}").unwrap();
        match default_components(Some(dir)).unwrap() {
            ImageSource::OciLayout { dir: d, tag: None } => assert_eq!(d, layout),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_from_time() {
        assert_eq!(super::version_from_epoch(0), "19700101.000000");
        assert_eq!(super::version_from_epoch(1_700_000_000), "20231114.221320");
    }
}

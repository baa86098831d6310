//! `build-image [build] [OPTIONS]`: the options of the main build. The
//! build itself is [`crate::pipeline`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::parse_size;
use crate::squashfs;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Format {
    /// GPT A/B raw disk image (`dd` it to a disk)
    Disk,
    /// Hybrid live/installer ISO: boots as a CD and from a USB stick, BIOS
    /// and UEFI; installs the A/B layout with `os-agent install`
    Iso,
    /// Upgrade artifact: an OCI image layout (`{stem}.upgrade/`) for
    /// `build-image push` and `os-agent upgrade`
    Upgrade,
    /// Raspberry Pi SD card image (`{stem}-rpi.img`, arm64): MBR, the Pi
    /// firmware, U-Boot and the same A/B boot as the disk
    Rpi,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Disk => "disk",
            Format::Iso => "iso",
            Format::Upgrade => "upgrade",
            Format::Rpi => "rpi",
        }
    }
}

/// Components a build can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Optional {
    K3s,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Built-in flavor name or a flavor file (flavors/*.yaml)
    #[arg(long, default_value = "debian", value_name = "FLAVOR")]
    pub flavor: String,
    /// Target architecture: amd64 or arm64 [default: the host's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Output formats, comma-separated [default: every format the flavor
    /// and architecture support]
    #[arg(long, value_delimiter = ',', value_name = "FORMAT")]
    pub format: Vec<Format>,
    /// Output directory
    #[arg(long, short, default_value = "out", value_name = "DIR")]
    pub output: PathBuf,
    /// Base image: REGISTRY/REPO[:TAG][@DIGEST], oci-layout:DIR[:TAG],
    /// rootfs-tar:FILE, or `archive` to bootstrap the base from the
    /// flavor's signed package archive [default: the flavor's base]
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// Node config (YAML, docs/config.md) baked into the image; checked
    /// now with the rules os-agent applies on the device
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A public key (P-256, PEM, as `build-image keygen` writes it) that
    /// upgrades of this image must be signed with; repeatable. An image
    /// with keys refuses unsigned upgrades
    #[arg(long = "upgrade-key", value_name = "PUB")]
    pub upgrade_keys: Vec<PathBuf>,
    /// Leave a component out (k3s: a plain immutable node)
    #[arg(long, value_name = "COMPONENT")]
    pub without: Vec<Optional>,
    /// k3s image to take k3s from
    #[arg(long, default_value = crate::finalise::k3s::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub k3s_image: String,
    /// Image with os-agent and os-init for the target architecture
    /// (`cargo xtask components` writes one) [default: target/components
    /// of the source checkout this binary was built from]
    #[arg(long, env = "BUILD_IMAGE_COMPONENTS", value_name = "IMAGE")]
    pub components: Option<String>,
    /// Version recorded in the image (os-release IMAGE_VERSION)
    /// [default: the build time, YYYYMMDD.HHMMSS]
    #[arg(long, value_name = "VERSION")]
    pub image_version: Option<String>,
    /// Extra kernel command line arguments
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Size of each root slot (e.g. 2G) [default: twice the root
    /// filesystem, at least 1 GiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub slot_size: Option<u64>,
    /// Size of the EFI system partition
    #[arg(long, value_parser = parse_size, default_value = "256M", value_name = "SIZE")]
    pub esp_size: u64,
    /// Lines added to the Raspberry Pi card's config.txt (under [all],
    /// after the flavor's)
    #[arg(long, value_name = "FILE")]
    pub rpi_config: Option<PathBuf>,
    /// SquashFS compression of the root: zstd, xz or gzip[:LEVEL]
    #[arg(long, default_value = "zstd", value_name = "ALGO[:LEVEL]")]
    pub compression: squashfs::Compression,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Source revision (a commit id) recorded in the upgrade artifact as
    /// org.opencontainers.image.revision
    #[arg(long, env = "BUILD_IMAGE_REVISION", value_name = "REV")]
    pub revision: Option<String>,
    /// Source repository URL recorded in the upgrade artifact as
    /// org.opencontainers.image.source
    #[arg(long, env = "BUILD_IMAGE_SOURCE_URL", value_name = "URL")]
    pub source_url: Option<String>,
    /// After the build, push the upgrade artifact to REF
    /// (REGISTRY/REPOSITORY:TAG), as `build-image push` does
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Sign what --push pushes with this P-256 private key (cosign's
    /// signature format; `build-image keygen` makes one)
    #[arg(long, value_name = "KEY", requires = "push")]
    pub sign_key: Option<PathBuf>,
}

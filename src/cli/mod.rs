//! The `build-image` command line: argument definitions and dispatch.

mod inspect;
mod rootfs;

pub use rootfs::source_date_epoch;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::cache::BlobCache;
use crate::oci::{Puller, RegistryClient, WantedPlatform};
use crate::progress::Reporter;

/// Turn a Linux distribution's OCI image into a bootable, immutable,
/// A/B-upgradable OS image.
///
/// Without a subcommand, builds the image: `build-image --flavor debian
/// --arch arm64` writes an A/B disk image, its root filesystem and
/// build-image.lock to ./out.
#[derive(Debug, Parser)]
#[command(name = "build-image", version, term_width = 80)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub build: crate::pipeline::BuildArgs,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Blob cache directory [default: $XDG_CACHE_HOME/build-image]
    #[arg(long, global = true, env = "BUILD_IMAGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print nothing but errors and results
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print the result as one JSON object on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the merged layers of an image as a SquashFS, nothing added
    Rootfs(rootfs::RootfsArgs),
    /// Show an image's platforms, digests, layers and config
    Inspect(inspect::InspectArgs),
}

/// Options shared by every command that reads an image.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Target architecture: amd64, arm64 (or x86_64, aarch64, arm64/v8)
    /// [default: the host's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT); loopback
    /// registries always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl SourceArgs {
    pub fn platform(&self) -> Result<WantedPlatform> {
        match &self.arch {
            Some(a) => WantedPlatform::parse(a),
            None => Ok(WantedPlatform::host()),
        }
    }

    pub fn puller<'a>(&self, g: &Global, reporter: &'a dyn Reporter) -> Result<Puller<'a>> {
        let dir = match &g.cache_dir {
            Some(d) => d.clone(),
            None => BlobCache::default_dir()?,
        };
        Ok(Puller {
            client: RegistryClient::new(self.insecure_registries.clone()),
            cache: BlobCache::open(&dir)?,
            reporter,
        })
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, reporter: &dyn Reporter) -> Result<()> {
    match cli.command {
        None => crate::pipeline::run(&cli.global, cli.build, reporter),
        Some(Command::Rootfs(a)) => rootfs::run(&cli.global, a, reporter),
        Some(Command::Inspect(a)) => inspect::run(&cli.global, a, reporter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_rootfs() {
        let cli = Cli::try_parse_from([
            "build-image",
            "--quiet",
            "rootfs",
            "127.0.0.1:5000/x:1",
            "-o",
            "out.sqfs",
            "--arch",
            "arm64",
            "--compression",
            "xz",
            "--block-size",
            "1M",
            "--insecure-registry",
            "reg.lan",
        ])
        .unwrap();
        assert!(cli.global.quiet);
        let Some(Command::Rootfs(a)) = cli.command else {
            panic!("expected rootfs");
        };
        assert_eq!(a.block_size, 1 << 20);
        assert_eq!(a.source.arch.as_deref(), Some("arm64"));
        assert!(Cli::try_parse_from(["build-image", "rootfs", "x"]).is_err());
    }

    #[test]
    fn parses_build() {
        let cli = Cli::try_parse_from([
            "build-image",
            "--flavor",
            "debian",
            "--arch",
            "arm64",
            "--format",
            "disk",
            "--without",
            "k3s",
            "-o",
            "dist",
            "--slot-size",
            "2G",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.build.arch.as_deref(), Some("arm64"));
        assert_eq!(cli.build.slot_size, Some(2 << 30));
        assert_eq!(cli.build.without, [crate::pipeline::Optional::K3s]);
        assert_eq!(cli.build.output, PathBuf::from("dist"));
        let cli = Cli::try_parse_from(["build-image"]).unwrap();
        assert_eq!(cli.build.flavor, "debian");
        assert!(Cli::try_parse_from(["build-image", "--format", "floppy"]).is_err());
        assert!(Cli::try_parse_from(["build-image", "--without", "kernel"]).is_err());
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command();
        cmd.build();
        for line in cmd.render_long_help().to_string().lines() {
            assert!(line.chars().count() <= 80, "build-image: {line:?}");
        }
        for sub in ["rootfs", "inspect"] {
            let mut cmd = Cli::command();
            cmd.build();
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{sub}: {line:?}");
            }
        }
    }
}

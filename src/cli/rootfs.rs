//! `build-image rootfs`: an image's merged layers as a SquashFS.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::{source_date_epoch, Global, Output, SourceArgs};
use crate::assemble::assemble;
use crate::oci::{Digest, ImageSource, LayerSummary, ResolvedImage};
use crate::pipeline::squashfs_with_bar;
use crate::progress::{Event, Reporter};
use crate::squashfs;
use crate::staging::{Artifact, Staging};
use crate::tree::ContentStore;

#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// REGISTRY/REPO[:TAG][@DIGEST], oci-layout:DIR[:TAG] or
    /// rootfs-tar:FILE
    pub image: String,
    /// The SquashFS file to write
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// zstd, xz or gzip, with an optional level (zstd:19, xz:9, gzip:6)
    #[arg(long, default_value = "zstd", value_name = "ALGO[:LEVEL]")]
    pub compression: squashfs::Compression,
    /// SquashFS block size, 4K to 1M, a power of two
    #[arg(long, default_value = "128K", value_parser = block_size, value_name = "SIZE")]
    pub block_size: u32,
}

fn block_size(s: &str) -> Result<u32, String> {
    let n = super::parse_size(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?}: larger than a SquashFS block can be"))
}

/// What `rootfs --json` prints (`kind: RootfsResult`).
#[derive(Debug, Serialize)]
pub struct RootfsResult {
    pub artifacts: Vec<Artifact>,
    pub input: InputSummary,
}

/// The image a result was made from.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputSummary {
    pub image: String,
    pub platform: String,
    pub index_digest: Option<Digest>,
    pub manifest_digest: Option<Digest>,
    pub config_digest: Option<Digest>,
    pub layers: Vec<LayerSummary>,
}

impl InputSummary {
    pub fn of(img: &ResolvedImage) -> Self {
        InputSummary {
            image: img.source.to_string(),
            platform: img.platform.clone(),
            index_digest: img.index_digest.clone(),
            manifest_digest: img.manifest_digest.clone(),
            config_digest: img.config_digest.clone(),
            layers: img.layer_summaries(),
        }
    }
}

impl Output for RootfsResult {
    fn kind(&self) -> &'static str {
        "RootfsResult"
    }
    fn text(&self) -> String {
        self.artifacts.iter().map(|a| a.line() + "\n").collect()
    }
}

pub fn run(g: &Global, a: RootfsArgs, reporter: &dyn Reporter) -> Result<RootfsResult> {
    let src = ImageSource::parse(&a.image)?;
    let want = a.source.platform()?;
    let epoch = source_date_epoch()?;
    let opts = squashfs::Options {
        compression: a.compression,
        block_size: a.block_size,
        mkfs_time: match epoch {
            Some(e) => e.clamp(0, u32::MAX as i64) as u32,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                .unwrap_or(0),
        },
        threads: 0,
    };
    opts.validate()?;
    if a.output.is_dir() {
        bail!(
            "output {}: is a directory, expected a file name",
            a.output.display()
        );
    }
    let dir = match a.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    let puller = g.puller(&a.source.insecure_registries, reporter)?;

    reporter.event(Event::Stage {
        message: format!("resolving {src}"),
    });
    let img = puller.resolve(&src, &want)?;
    let mut store = ContentStore::new_in(&dir)?;
    let (mut tree, stats) = assemble(&puller, &img, &mut store)?;
    if let Some(e) = epoch {
        tree.clamp_mtimes(e);
    }
    reporter.event(Event::Stage {
        message: format!(
            "writing {} ({} entries, {} of file data)",
            a.output.display(),
            tree.entry_count(),
            indicatif::HumanBytes(stats.bytes)
        ),
    });
    let mut staging = Staging::new();
    let out = staging.create(&a.output, "squashfs")?;
    squashfs_with_bar(&tree, &store, &opts, staging.file(out), reporter)
        .with_context(|| format!("writing SquashFS {}", a.output.display()))?;
    drop(store);
    Ok(RootfsResult {
        artifacts: staging.commit()?,
        input: InputSummary::of(&img),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(block_size("128K"), Ok(131072));
        assert_eq!(block_size("1M"), Ok(1 << 20));
        assert!(block_size("8G").is_err());
    }
}

//! `build-image rootfs`: an image's merged layers as a SquashFS.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::{Global, SourceArgs};
use crate::assemble::assemble;
use crate::cache::hash_file;
use crate::oci::ImageSource;
use crate::progress::{Event, Reporter};
use crate::squashfs;
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
    #[arg(long, default_value = "128K", value_parser = parse_size, value_name = "SIZE")]
    pub block_size: u32,
}

/// Parses `131072`, `128K`, `1M`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: expected a size like 131072, 128K or 1M"))
}

/// `SOURCE_DATE_EPOCH`, if set.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970")),
        _ => Ok(None),
    }
}

fn output_dir(out: &Path) -> Result<PathBuf> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    if out.is_dir() {
        bail!(
            "output {}: is a directory, expected a file name",
            out.display()
        );
    }
    Ok(dir)
}

pub fn run(g: &Global, a: RootfsArgs, reporter: &dyn Reporter) -> Result<()> {
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
    let dir = output_dir(&a.output)?;
    let puller = a.source.puller(g, reporter)?;

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
    // Written under a temporary name and renamed at the end: a failed run
    // leaves nothing at the output path.
    let mut tmp = tempfile::Builder::new()
        .prefix(".build-image-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let bar = "compress".to_string();
    reporter.event(Event::Start {
        id: bar.clone(),
        label: format!("compress {}", opts.compression),
        total: stats.bytes,
    });
    let written =
        squashfs::write_with_progress(&tree, &store, &opts, tmp.as_file_mut(), &|done, total| {
            reporter.event(Event::Advance {
                id: bar.clone(),
                done: stats.bytes.saturating_mul(done) / total.max(1),
            })
        });
    reporter.event(Event::Finish {
        id: bar,
        message: None,
    });
    written.with_context(|| format!("writing SquashFS {}", a.output.display()))?;
    drop(store);
    // Temporary files are created 0600; an artifact is for everyone to read.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .with_context(|| format!("setting permissions of {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", a.output.display()))?;
    tmp.persist(&a.output)
        .with_context(|| format!("moving the result to {}", a.output.display()))?;
    let (sha, size) = hash_file(&a.output)?;

    if g.json {
        let doc = json!({
            "apiVersion": crate::API_VERSION,
            "kind": "RootfsResult",
            "artifacts": [{
                "path": a.output,
                "format": "squashfs",
                "size": size,
                "sha256": sha.hex(),
            }],
            "input": {
                "image": img.source.to_string(),
                "platform": img.platform,
                "indexDigest": img.index_digest.as_ref().map(|d| d.to_string()),
                "manifestDigest": img.manifest_digest.as_ref().map(|d| d.to_string()),
                "configDigest": img.config_digest.as_ref().map(|d| d.to_string()),
                "layers": img.layer_summaries(),
            },
        });
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        println!(
            "{}  {}  {}",
            a.output.display(),
            indicatif::HumanBytes(size),
            sha
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("131072"), Ok(131072));
        assert_eq!(parse_size("128K"), Ok(131072));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5000000M").is_err());
    }
}

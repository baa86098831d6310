//! `build-image inspect`: what an image is made of, what a build-image
//! ISO holds, or what a disk image or Raspberry Pi card (or the disk it
//! was written to) holds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{Global, Output, SourceArgs};
use crate::disk::inspect::{self as disk, DiskInspect};
use crate::oci::{Digest, ImageSource, LayerSummary};
use crate::progress::Reporter;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// REGISTRY/REPO[:TAG][@DIGEST], oci-layout:DIR[:TAG],
    /// rootfs-tar:FILE, or an ISO, disk image or card that build-image
    /// wrote (or the device it was written to)
    pub image: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// What `inspect --json` prints: `kind: ImageInspect`, `IsoInspect` or
/// `DiskInspect`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Inspected {
    Image(ImageInspect),
    Iso(IsoInspect),
    Disk(DiskInspect),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInspect {
    pub reference: String,
    pub index_digest: Option<Digest>,
    /// What the index offers.
    pub platforms: Vec<PlatformEntry>,
    /// The platform that was selected.
    pub platform: String,
    pub manifest_digest: Option<Digest>,
    pub config_digest: Option<Digest>,
    /// The image config document, as the registry holds it.
    pub config: serde_json::Value,
    pub layers: Vec<LayerSummary>,
}

#[derive(Debug, Serialize)]
pub struct PlatformEntry {
    pub platform: String,
    pub digest: Digest,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IsoInspect {
    pub path: PathBuf,
    pub volume_id: String,
    pub application_id: String,
    pub size: u64,
    /// The install manifest (`install/install.json`), when the ISO has one.
    pub install: Option<serde_json::Value>,
}

pub fn run(g: &Global, a: InspectArgs, reporter: &dyn Reporter) -> Result<Inspected> {
    let path = Path::new(&a.image);
    if path.is_file() && crate::iso::is_iso(path) {
        let info = crate::iso::read_info(path)?;
        return Ok(Inspected::Iso(IsoInspect {
            path: path.to_path_buf(),
            volume_id: info.volume_id,
            application_id: info.application_id,
            size: info.size,
            install: info.install,
        }));
    }
    let looks_like_path = a.image.starts_with('/')
        || a.image.starts_with("./")
        || a.image.starts_with("../")
        || (!a.image.contains(':')
            && [".iso", ".img", ".raw"]
                .iter()
                .any(|e| a.image.ends_with(e)));
    if looks_like_path && !path.exists() {
        anyhow::bail!(
            "{}: no such file (inspect takes an image reference, or an ISO, disk image or card)",
            path.display()
        );
    }
    let is_device = {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    };
    if (path.is_file() || is_device) && disk::looks_like_disk(path) {
        return Ok(Inspected::Disk(disk::inspect(path)?));
    }
    let src = ImageSource::parse(&a.image)?;
    let want = a.source.platform()?;
    let puller = g.puller(&a.source.insecure_registries, reporter)?;
    let img = puller.resolve(&src, &want)?;
    Ok(Inspected::Image(ImageInspect {
        reference: img.source.to_string(),
        index_digest: img.index_digest.clone(),
        platforms: img
            .platforms
            .iter()
            .map(|(p, d)| PlatformEntry {
                platform: p.clone(),
                digest: d.clone(),
            })
            .collect(),
        platform: img.platform.clone(),
        manifest_digest: img.manifest_digest.clone(),
        config_digest: img.config_digest.clone(),
        config: img.config_json.clone(),
        layers: img.layer_summaries(),
    }))
}

impl Output for Inspected {
    fn kind(&self) -> &'static str {
        match self {
            Inspected::Image(_) => "ImageInspect",
            Inspected::Iso(_) => "IsoInspect",
            Inspected::Disk(_) => "DiskInspect",
        }
    }

    fn text(&self) -> String {
        match self {
            Inspected::Image(i) => image_text(i),
            Inspected::Iso(i) => iso_text(i),
            Inspected::Disk(d) => disk_text(d),
        }
    }
}

fn image_text(img: &ImageInspect) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Image:     {}", img.reference);
    if let Some(d) = &img.index_digest {
        let _ = writeln!(s, "Index:     {d}");
        for p in &img.platforms {
            let _ = writeln!(s, "  {:<20} {}", p.platform, p.digest);
        }
    }
    let _ = writeln!(s, "Platform:  {}", img.platform);
    if let Some(d) = &img.manifest_digest {
        let _ = writeln!(s, "Manifest:  {d}");
    }
    if let Some(d) = &img.config_digest {
        let _ = writeln!(s, "Config:    {d}");
    }
    if let Some(c) = img.config.get("created").and_then(|v| v.as_str()) {
        let _ = writeln!(s, "Created:   {c}");
    }
    if !img.layers.is_empty() {
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        let _ = writeln!(
            s,
            "Layers:    {} ({} compressed)",
            img.layers.len(),
            indicatif::HumanBytes(total)
        );
        for l in &img.layers {
            let _ = writeln!(
                s,
                "  {} {:>10}  {}",
                l.digest,
                indicatif::HumanBytes(l.size).to_string(),
                l.media_type
            );
        }
    }
    if let Some(cfg) = img.config.get("config") {
        for key in ["Entrypoint", "Cmd", "Env", "WorkingDir", "User"] {
            if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
                let _ = writeln!(s, "{:<10} {}", format!("{key}:"), v);
            }
        }
    }
    s
}

fn iso_text(info: &IsoInspect) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "ISO:         {}", info.path.display());
    let _ = writeln!(s, "Label:       {}", info.volume_id);
    let _ = writeln!(s, "Application: {}", info.application_id);
    let _ = writeln!(s, "Size:        {}", indicatif::HumanBytes(info.size));
    match &info.install {
        Some(m) => {
            let image = &m["image"];
            let _ = writeln!(
                s,
                "Image:       {} {} {}",
                image["id"].as_str().unwrap_or("?"),
                image["version"].as_str().unwrap_or("?"),
                image["arch"].as_str().unwrap_or("?")
            );
            if let Some(n) = m["min_device_size"].as_u64() {
                let _ = writeln!(
                    s,
                    "Installs to: a disk of at least {}",
                    indicatif::HumanBytes(n)
                );
            }
        }
        None => {
            let _ = writeln!(
                s,
                "Image:       (no install manifest: not a build-image ISO)"
            );
        }
    }
    s
}

fn disk_text(d: &DiskInspect) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Disk:        {}", d.path.display());
    let _ = writeln!(s, "Size:        {}", indicatif::HumanBytes(d.size));
    let what = if d.table == "gpt" {
        "GPT, disk GUID"
    } else {
        "MBR (Raspberry Pi card), disk signature"
    };
    let identity = if d.identity == "build" {
        "the build's, until the first boot"
    } else {
        "its own, since its first boot"
    };
    let _ = writeln!(s, "Table:       {what} {} ({identity})", d.disk_id);
    let _ = writeln!(s, "Partitions:");
    for p in &d.partitions {
        let _ = writeln!(
            s,
            "  {}  {:<9} {:>10} at {:>10}  {}{}",
            p.number,
            p.name,
            indicatif::HumanBytes(p.size).to_string(),
            indicatif::HumanBytes(p.start).to_string(),
            p.kind,
            if p.bootable { " (boot flag)" } else { "" }
        );
    }
    match (&d.boot_env, &d.boot_env_problem) {
        (Some(e), _) => {
            let trial = if e.trial_slot.is_empty() {
                "no trial pending".to_string()
            } else {
                format!("a trial of slot {} pending", e.trial_slot)
            };
            let _ = writeln!(s, "Boots:       slot {}, {trial}", e.default_slot);
        }
        (None, Some(p)) => {
            let _ = writeln!(s, "Boots:       unknown: {p}");
        }
        (None, None) => {}
    }
    if !d.boards.is_empty() {
        let _ = writeln!(s, "Boards (config.txt):");
        for b in &d.boards {
            let _ = writeln!(
                s,
                "  [{}] {}",
                b.section,
                b.kernel
                    .as_deref()
                    .map(|k| format!("starts {k}"))
                    .unwrap_or_else(|| "no kernel= line".into())
            );
        }
    }
    s
}

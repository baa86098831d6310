//! `build-image inspect`: what an image is made of.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{Global, SourceArgs};
use crate::oci::ImageSource;
use crate::progress::Reporter;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// REGISTRY/REPO[:TAG][@DIGEST], oci-layout:DIR[:TAG],
    /// rootfs-tar:FILE, or an ISO that build-image wrote
    pub image: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(g: &Global, a: InspectArgs, reporter: &dyn Reporter) -> Result<()> {
    let path = std::path::Path::new(&a.image);
    if path.is_file() && crate::iso::is_iso(path) {
        return inspect_iso(g, path);
    }
    let src = ImageSource::parse(&a.image)?;
    let want = a.source.platform()?;
    let puller = a.source.puller(g, reporter)?;
    let img = puller.resolve(&src, &want)?;
    if g.json {
        let doc = json!({
            "apiVersion": crate::API_VERSION,
            "kind": "ImageInspect",
            "reference": img.source.to_string(),
            "indexDigest": img.index_digest.as_ref().map(|d| d.to_string()),
            "platforms": img.platforms.iter().map(|(p, d)| json!({"platform": p, "digest": d.to_string()})).collect::<Vec<_>>(),
            "platform": img.platform,
            "manifestDigest": img.manifest_digest.as_ref().map(|d| d.to_string()),
            "configDigest": img.config_digest.as_ref().map(|d| d.to_string()),
            "config": img.config_json,
            "layers": img.layer_summaries(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("Image:     {}", img.source);
    if let Some(d) = &img.index_digest {
        println!("Index:     {d}");
        for (p, d) in &img.platforms {
            println!("  {p:<20} {d}");
        }
    }
    println!("Platform:  {}", img.platform);
    if let Some(d) = &img.manifest_digest {
        println!("Manifest:  {d}");
    }
    if let Some(d) = &img.config_digest {
        println!("Config:    {d}");
    }
    if let Some(c) = img.config_json.get("created").and_then(|v| v.as_str()) {
        println!("Created:   {c}");
    }
    if !img.layers.is_empty() {
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        println!(
            "Layers:    {} ({} compressed)",
            img.layers.len(),
            indicatif::HumanBytes(total)
        );
        for l in &img.layers {
            println!(
                "  {} {:>10}  {}",
                l.digest,
                indicatif::HumanBytes(l.size).to_string(),
                l.media_type
            );
        }
    }
    if let Some(cfg) = img.config_json.get("config") {
        for key in ["Entrypoint", "Cmd", "Env", "WorkingDir", "User"] {
            if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
                println!("{:<10} {}", format!("{key}:"), v);
            }
        }
    }
    Ok(())
}

fn inspect_iso(g: &Global, path: &std::path::Path) -> Result<()> {
    let info = crate::iso::read_info(path)?;
    if g.json {
        let doc = json!({
            "apiVersion": crate::API_VERSION,
            "kind": "IsoInspect",
            "path": path,
            "volumeId": info.volume_id,
            "applicationId": info.application_id,
            "size": info.size,
            "install": info.install,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("ISO:         {}", path.display());
    println!("Label:       {}", info.volume_id);
    println!("Application: {}", info.application_id);
    println!("Size:        {}", indicatif::HumanBytes(info.size));
    match &info.install {
        Some(m) => {
            let image = &m["image"];
            println!(
                "Image:       {} {} {}",
                image["id"].as_str().unwrap_or("?"),
                image["version"].as_str().unwrap_or("?"),
                image["arch"].as_str().unwrap_or("?")
            );
            if let Some(n) = m["min_device_size"].as_u64() {
                println!(
                    "Installs to: a disk of at least {}",
                    indicatif::HumanBytes(n)
                );
            }
        }
        None => println!("Image:       (no install manifest: not a build-image ISO)"),
    }
    Ok(())
}

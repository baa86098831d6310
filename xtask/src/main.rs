//! Repository tasks.
//!
//! `cargo xtask components [--output DIR] [--arch amd64,arm64]` builds
//! os-agent and os-init as static musl binaries for each architecture and
//! writes them, with os-agent's systemd units, as a multi-arch OCI image
//! layout (by default `target/components`, tagged with the version).
//! `build-image --components oci-layout:DIR` layers it into images; a
//! source build of build-image defaults to `target/components` when it
//! exists (see .cargo/config.toml). The musl targets are added with rustup
//! when they are missing (rust-toolchain.toml names them).
//!
//! `cargo xtask docs [--output DIR]` writes build-image's man pages
//! (`DIR/man/*.1`) and shell completions (`DIR/completions/`), by default
//! under `target/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask components [--output DIR] [--arch amd64,arm64]\n       \
         cargo xtask docs [--output DIR]"
    );
    std::process::exit(2);
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("components") => components(args),
        Some("docs") => docs(args),
        _ => usage(),
    }
}

/// The musl targets the device binaries need, added with rustup when they
/// are missing (a toolchain that rustup does not manage must have them).
fn ensure_targets(triples: &[&str]) -> Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
    else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = triples
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() || !out.status.success() {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust targets {}", missing.join(" "));
    let status = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .current_dir(root())
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!(
            "`rustup target add {}` failed; the device binaries are built for these targets",
            missing.join(" ")
        );
    }
    Ok(())
}

/// `cargo xtask docs`: man pages and completions from build-image's own
/// command-line definition.
fn docs(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut output = root().join("target");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--output" | "-o" => output = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |extra: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(&cargo)
            .args(["run", "-q", "--bin", "build-image", "--"])
            .args(extra)
            .current_dir(root())
            .output()
            .context("running cargo")?;
        if !out.status.success() {
            bail!(
                "build-image {}: {}",
                extra.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    let man = output.join("man");
    run(&[
        "manpages",
        man.to_str().context("output path is not UTF-8")?,
    ])?;
    let comp = output.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    for (shell, file) in [
        ("bash", "build-image.bash"),
        ("zsh", "_build-image"),
        ("fish", "build-image.fish"),
    ] {
        std::fs::write(comp.join(file), run(&["completions", shell])?)?;
    }
    println!("{}\n{}", man.display(), comp.display());
    Ok(())
}

fn components(mut args: impl Iterator<Item = String>) -> Result<()> {
    let root = root();
    let mut output = root.join("target/components");
    let mut arches = vec!["amd64".to_string(), "arm64".to_string()];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--output" | "-o" => output = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--arch" => {
                arches = args
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            _ => usage(),
        }
    }
    let mtime: u64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let triples: Vec<&str> = arches
        .iter()
        .map(|a| match a.as_str() {
            "amd64" => Ok("x86_64-unknown-linux-musl"),
            "arm64" => Ok("aarch64-unknown-linux-musl"),
            other => bail!("--arch {other}: expected amd64 or arm64"),
        })
        .collect::<Result<_>>()?;
    ensure_targets(&triples)?;
    let blobs = output.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let mut manifests = Vec::new();
    for arch in &arches {
        let triple = match arch.as_str() {
            "amd64" => "x86_64-unknown-linux-musl",
            "arm64" => "aarch64-unknown-linux-musl",
            other => bail!("--arch {other}: expected amd64 or arm64"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .args([
                "build",
                "--profile",
                "device",
                "-p",
                "os-init",
                "-p",
                "os-agent",
                "--target",
                triple,
            ])
            .current_dir(&root)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("building os-init and os-agent for {triple} failed (is the target installed? `rustup target add {triple}`)");
        }
        // The `device` profile (Cargo.toml): LTO, size over speed.
        let bin = target_dir.join(triple).join("device");
        let mut files: Vec<(String, Vec<u8>, u32)> = vec![
            (
                "usr/bin/os-agent".into(),
                read(&bin.join("os-agent"))?,
                0o755,
            ),
            (
                "usr/lib/build-image/os-init".into(),
                read(&bin.join("os-init"))?,
                0o755,
            ),
        ];
        let units = root.join("crates/os-agent/units");
        let mut names: Vec<String> = std::fs::read_dir(&units)
            .with_context(|| format!("reading {}", units.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".service") || n.ends_with(".timer"))
            .collect();
        names.sort();
        for n in names {
            files.push((
                format!("usr/lib/systemd/system/{n}"),
                read(&units.join(&n))?,
                0o644,
            ));
        }
        let (layer, diff_id) = layer_tar(&files, mtime)?;
        let layer_desc = blob(
            &blobs,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &layer,
        )?;
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.version": VERSION}},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created_by": "cargo xtask components"}],
        });
        let config_desc = blob(
            &blobs,
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config)?,
        )?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        });
        let mut desc = blob(
            &blobs,
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest)?,
        )?;
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        manifests.push(desc);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut top = blob(
        &blobs,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index)?,
    )?;
    top["annotations"] = json!({"org.opencontainers.image.ref.name": format!("v{VERSION}")});
    std::fs::write(
        output.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let doc = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(output.join("index.json"), serde_json::to_vec_pretty(&doc)?)?;
    println!("{}", output.display());
    Ok(())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// A gzip'd tar of `files` with their parent directories; returns it and
/// the sha256 of the uncompressed tar (the diff_id).
fn layer_tar(files: &[(String, Vec<u8>, u32)], mtime: u64) -> Result<(Vec<u8>, String)> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(mtime);
        h.set_size(0);
        b.append_data(&mut h, format!("{}/", d.display()), std::io::empty())?;
    }
    for (path, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    let tar = b.into_inner()?;
    let diff_id = hex::encode(Sha256::digest(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    gz.write_all(&tar)?;
    Ok((gz.finish()?, diff_id))
}

/// Stores a blob; returns its descriptor.
fn blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<serde_json::Value> {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(dir.join(&hex), data)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()}))
}

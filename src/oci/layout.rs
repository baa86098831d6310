//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::manifest::{self, Descriptor, Index, ManifestDoc, WantedPlatform};
use super::{finish, platforms_of, ImageSource, ResolvedImage};
use crate::cache::hash_file;

/// The `index.json` annotation naming a manifest (`oci-layout:DIR:TAG`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The path of a blob inside a layout, verified against its descriptor.
pub fn verified_blob(dir: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let path = dir.join("blobs/sha256").join(desc.digest.hex());
    let (actual, len) = hash_file(&path)
        .with_context(|| format!("blob {} of layout {}", desc.digest, dir.display()))?;
    if actual != desc.digest {
        bail!(
            "blob {} of layout {}: content has digest {actual}, expected {}",
            desc.digest,
            dir.display(),
            desc.digest
        );
    }
    if len != desc.size {
        bail!(
            "blob {} of layout {}: {len} bytes, the descriptor says {}",
            desc.digest,
            dir.display(),
            desc.size
        );
    }
    Ok(path)
}

fn read_blob(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>> {
    let p = verified_blob(dir, desc)?;
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

pub(super) fn resolve(
    src: &ImageSource,
    dir: &Path,
    tag: Option<&str>,
    want: &WantedPlatform,
) -> Result<ResolvedImage> {
    let what = format!("OCI layout {}", dir.display());
    let marker = dir.join("oci-layout");
    let text = std::fs::read_to_string(&marker)
        .with_context(|| format!("{what}: reading {}", marker.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{what}: {} is not valid JSON", marker.display()))?;
    if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        bail!("{what}: field imageLayoutVersion of oci-layout: expected \"1.0.0\"");
    }
    let index_path = dir.join("index.json");
    let raw = std::fs::read(&index_path)
        .with_context(|| format!("{what}: reading {}", index_path.display()))?;
    let top: Index = serde_json::from_slice(&raw)
        .with_context(|| format!("{what}: {} is malformed", index_path.display()))?;
    let tagged: Vec<&Descriptor> = match tag {
        Some(t) => top
            .manifests
            .iter()
            .filter(|d| {
                d.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == t)
            })
            .collect(),
        None => top.manifests.iter().collect(),
    };
    let entry = match tagged.as_slice() {
        [one] => (*one).clone(),
        [] => bail!(
            "{what}: no manifest {} in index.json",
            tag.map(|t| format!("tagged {t:?}"))
                .unwrap_or_else(|| "at all".into())
        ),
        many => {
            if tag.is_none() {
                bail!(
                    "{what}: index.json lists {} manifests; name one with oci-layout:DIR:TAG",
                    many.len()
                );
            }
            // Several entries for one tag: a per-platform list.
            let idx = Index {
                schema_version: 2,
                media_type: None,
                manifests: many.iter().map(|d| (*d).clone()).collect(),
            };
            manifest::select_platform(&idx, want, &what)?.clone()
        }
    };
    let body = read_blob(dir, &entry)?;
    let (index_digest, platforms, m, mdigest) =
        match ManifestDoc::parse(&body, Some(&entry.media_type), &what)? {
            ManifestDoc::Index(idx) => {
                let desc = manifest::select_platform(&idx, want, &what)?.clone();
                let mbody = read_blob(dir, &desc)?;
                let ManifestDoc::Manifest(m) =
                    ManifestDoc::parse(&mbody, Some(&desc.media_type), &what)?
                else {
                    bail!("{what}: index entry {} is itself an index", desc.digest);
                };
                (
                    Some(entry.digest.clone()),
                    platforms_of(&idx),
                    m,
                    desc.digest,
                )
            }
            ManifestDoc::Manifest(m) => (None, Vec::new(), m, entry.digest.clone()),
        };
    let config_path = verified_blob(dir, &m.config)?;
    finish(
        src,
        &what,
        index_digest,
        platforms,
        mdigest,
        &m,
        &config_path,
        want,
    )
}

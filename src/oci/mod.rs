//! Fetching images: registry references, OCI layout directories and rootfs
//! tarballs, resolved to one platform's config and layers, with every blob
//! verified by digest.
//!
//! Entry point: [`Puller::resolve`], then [`Puller::layer_file`] per layer.

pub mod auth;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod upload;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use manifest::{Descriptor, Digest, ImageConfig, ManifestDoc, WantedPlatform};
pub use reference::{ImageSource, Reference};
pub use registry::{Access, RegistryClient, RetryPolicy};
pub use upload::{BlobPush, BlobSource};

use crate::cache::BlobCache;
use crate::progress::Reporter;

/// An image resolved to one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub source: ImageSource,
    /// The digest of the index the platform was picked from, if any.
    pub index_digest: Option<Digest>,
    /// What the index offered: platform string and manifest digest.
    pub platforms: Vec<(String, Digest)>,
    pub manifest_digest: Option<Digest>,
    pub config_digest: Option<Digest>,
    /// The whole image config document.
    pub config_json: serde_json::Value,
    pub config: Option<ImageConfig>,
    pub layers: Vec<Descriptor>,
    /// `linux/arm64`, or `unknown` for a rootfs tarball.
    pub platform: String,
}

/// A layer as the JSON summary reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSummary {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl ResolvedImage {
    pub fn layer_summaries(&self) -> Vec<LayerSummary> {
        self.layers
            .iter()
            .map(|l| LayerSummary {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect()
    }
}

/// Resolves images and makes their layers available as verified files.
pub struct Puller<'a> {
    pub client: RegistryClient,
    pub cache: BlobCache,
    pub reporter: &'a dyn Reporter,
}

impl Puller<'_> {
    pub fn resolve(&self, src: &ImageSource, want: &WantedPlatform) -> Result<ResolvedImage> {
        match src {
            ImageSource::Registry(r) => self.resolve_registry(src, r, want),
            ImageSource::OciLayout { dir, tag } => layout::resolve(src, dir, tag.as_deref(), want),
            ImageSource::RootfsTar { file } => {
                let meta = std::fs::metadata(file)
                    .with_context(|| format!("rootfs tarball {}", file.display()))?;
                if !meta.is_file() {
                    bail!("rootfs tarball {}: not a regular file", file.display());
                }
                Ok(ResolvedImage {
                    source: src.clone(),
                    index_digest: None,
                    platforms: Vec::new(),
                    manifest_digest: None,
                    config_digest: None,
                    config_json: serde_json::Value::Null,
                    config: None,
                    layers: Vec::new(),
                    platform: "unknown".into(),
                })
            }
        }
    }

    fn resolve_registry(
        &self,
        src: &ImageSource,
        r: &Reference,
        want: &WantedPlatform,
    ) -> Result<ResolvedImage> {
        let (body, ct, digest) = self.client.manifest(r, &r.manifest_ref())?;
        let what = format!("image {r}");
        let (index_digest, platforms, manifest, manifest_digest) =
            match ManifestDoc::parse(&body, ct.as_deref(), &what)? {
                ManifestDoc::Index(idx) => {
                    let desc = manifest::select_platform(&idx, want, &what)?.clone();
                    let (mbody, mct, mdigest) = self.client.manifest(r, desc.digest.as_str())?;
                    let ManifestDoc::Manifest(m) =
                        ManifestDoc::parse(&mbody, mct.as_deref(), &what)?
                    else {
                        bail!("{what}: index entry {} is itself an index", desc.digest);
                    };
                    (Some(digest), platforms_of(&idx), m, mdigest)
                }
                ManifestDoc::Manifest(m) => (None, Vec::new(), m, digest),
            };
        let config_path =
            self.client
                .fetch_blob(r, &manifest.config, &self.cache, self.reporter)?;
        finish(
            src,
            &what,
            index_digest,
            platforms,
            manifest_digest,
            &manifest,
            &config_path,
            want,
        )
    }

    /// A verified file holding layer `desc` of `img`, downloading it into the
    /// cache if needed.
    pub fn layer_file(&self, img: &ResolvedImage, desc: &Descriptor) -> Result<PathBuf> {
        match &img.source {
            ImageSource::Registry(r) => self.client.fetch_blob(r, desc, &self.cache, self.reporter),
            ImageSource::OciLayout { dir, .. } => layout::verified_blob(dir, desc),
            ImageSource::RootfsTar { file } => Ok(file.clone()),
        }
    }
}

fn platforms_of(idx: &manifest::Index) -> Vec<(String, Digest)> {
    idx.manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .map(|p| (p.to_string(), d.digest.clone()))
        })
        .filter(|(p, _)| p != "unknown/unknown")
        .collect()
}

/// Reads the config, checks the platform and layer list, and assembles
/// the result (shared by the registry and layout sources).
#[allow(clippy::too_many_arguments)]
fn finish(
    src: &ImageSource,
    what: &str,
    index_digest: Option<Digest>,
    platforms: Vec<(String, Digest)>,
    manifest_digest: Digest,
    m: &manifest::Manifest,
    config_path: &Path,
    want: &WantedPlatform,
) -> Result<ResolvedImage> {
    if m.artifact_type.as_deref() == Some(boot_contract::upgrade::ARTIFACT_TYPE) {
        bail!(
            "{what}: a build-image upgrade artifact, not a container image (read its manifest and config with `skopeo inspect --raw` and `--config --raw`; docs/upgrade.md)"
        );
    }
    let raw = std::fs::read(config_path)
        .with_context(|| format!("{what}: reading config {}", m.config.digest))?;
    let config_json: serde_json::Value = serde_json::from_slice(&raw)
        .with_context(|| format!("{what}: config {} is not valid JSON", m.config.digest))?;
    let config: ImageConfig = serde_json::from_value(config_json.clone())
        .with_context(|| format!("{what}: config {} is malformed", m.config.digest))?;
    if !want.matches(&config.architecture, &config.os, config.variant.as_deref()) {
        bail!(
            "{what}: the image is for {}/{}{}, but {want} was asked for (use --arch to pick another)",
            config.os,
            config.architecture,
            config.variant.as_deref().map(|v| format!("/{v}")).unwrap_or_default()
        );
    }
    for l in &m.layers {
        if !manifest::is_layer_media_type(&l.media_type) {
            bail!(
                "{what}: layer {} has media type {:?}, which is not a filesystem layer this tool can apply",
                l.digest,
                l.media_type
            );
        }
    }
    if let Some(rootfs) = &config.rootfs {
        if rootfs.diff_ids.len() != m.layers.len() {
            bail!(
                "{what}: config {} lists {} diff_ids but the manifest has {} layers",
                m.config.digest,
                rootfs.diff_ids.len(),
                m.layers.len()
            );
        }
    }
    let platform = format!(
        "{}/{}{}",
        config.os,
        config.architecture,
        config
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default()
    );
    Ok(ResolvedImage {
        source: src.clone(),
        index_digest,
        platforms,
        manifest_digest: Some(manifest_digest),
        config_digest: Some(m.config.digest.clone()),
        config_json,
        config: Some(config),
        layers: m.layers.clone(),
        platform,
    })
}

//! OCI and Docker v2 manifest, index and config documents.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const OCI_NONDIST_LAYER_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// The `Accept` header for manifest requests: every kind we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types this tool can merge.
pub fn is_layer_media_type(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | DOCKER_LAYER_GZIP
            | DOCKER_FOREIGN_LAYER
            | OCI_NONDIST_LAYER_GZIP
            | "application/vnd.docker.image.rootfs.diff.tar"
    )
}

/// A `sha256:<64 hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            bail!("digest {s:?}: only sha256 digests are supported");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("digest {s:?}: expected sha256: followed by 64 lowercase hex digits");
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(data: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    pub fn from_sha256(hash: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (or Docker manifest list). Serialised in the OCI
/// field order, without `artifactType`: some clients rewrite an index that
/// has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI 1.1, or Docker v2 schema 2), serialised in the
/// OCI field order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// OCI 1.1: what kind of artifact this is (not a container image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Either kind of document a manifest URL may return.
// Short-lived parse results, one or two at a time: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ManifestDoc {
    Index(Index),
    Manifest(Manifest),
}

impl ManifestDoc {
    /// Parses a manifest body. `content_type` is the response's media type,
    /// used when the body does not say (Docker v2 always does; OCI may not).
    pub fn parse(body: &[u8], content_type: Option<&str>, what: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            layers: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(body)
            .with_context(|| format!("{what}: manifest is not valid JSON"))?;
        if probe.schema_version != Some(2) {
            bail!(
                "{what}: unsupported manifest schemaVersion {:?} (expected 2; Docker schema 1 images are not supported)",
                probe.schema_version
            );
        }
        let mt = probe
            .media_type
            .as_deref()
            .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()));
        let is_index = match mt {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            _ if probe.manifests.is_some() => true,
            _ if probe.layers.is_some() => false,
            other => bail!("{what}: unsupported manifest media type {other:?}"),
        };
        if is_index {
            let idx: Index = serde_json::from_slice(body)
                .with_context(|| format!("{what}: malformed image index"))?;
            Ok(ManifestDoc::Index(idx))
        } else {
            let m: Manifest = serde_json::from_slice(body)
                .with_context(|| format!("{what}: malformed image manifest"))?;
            Ok(ManifestDoc::Manifest(m))
        }
    }
}

/// The parts of an image config this tool reads; the whole document is
/// kept as JSON for `inspect`.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The platform the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPlatform {
    pub architecture: String,
    pub variant: Option<String>,
}

impl WantedPlatform {
    /// Accepts Go names (`amd64`, `arm64`, `arm64/v8`, `arm/v7`), kernel
    /// names (`x86_64`, `aarch64`) and an optional `linux/` prefix.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.strip_prefix("linux/").unwrap_or(s);
        let (arch, variant) = match s.split_once('/') {
            Some((a, v)) => (a, Some(v.to_string())),
            None => (s, None),
        };
        let architecture = match arch {
            "amd64" | "x86_64" | "x86-64" => "amd64",
            "arm64" | "aarch64" => "arm64",
            "arm" | "armhf" => "arm",
            "riscv64" => "riscv64",
            "ppc64le" => "ppc64le",
            "s390x" => "s390x",
            "386" | "i386" | "i686" => "386",
            other => bail!(
                "architecture {other:?}: expected one of amd64, arm64, arm, riscv64, ppc64le, s390x, 386"
            ),
        };
        Ok(WantedPlatform {
            architecture: architecture.to_string(),
            variant,
        })
    }

    /// The architecture of the machine running this program.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "riscv64" => "riscv64",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "x86" => "386",
            other => other,
        };
        WantedPlatform {
            architecture: arch.to_string(),
            variant: None,
        }
    }

    /// Whether an image of `p` can be used for this platform. arm64 images
    /// match with variant `v8` or none.
    pub fn matches(&self, architecture: &str, os: &str, variant: Option<&str>) -> bool {
        if os != "linux" || architecture != self.architecture {
            return false;
        }
        let norm = |v: Option<&str>| -> Option<String> {
            match (architecture, v) {
                ("arm64", None) => Some("v8".into()),
                (_, v) => v.map(str::to_string),
            }
        };
        match &self.variant {
            None => true,
            Some(want) => norm(variant).as_deref() == norm(Some(want)).as_deref(),
        }
    }
}

impl fmt::Display for WantedPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linux/{}", self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest for `want` from an index. Errors list what the index
/// offers.
pub fn select_platform<'a>(
    idx: &'a Index,
    want: &WantedPlatform,
    what: &str,
) -> Result<&'a Descriptor> {
    let found = idx.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            want.matches(&p.architecture, &p.os, p.variant.as_deref())
                && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
        })
    });
    found.ok_or_else(|| {
        let offered: Vec<String> = idx
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .filter(|p| p != "unknown/unknown")
            .collect();
        anyhow::anyhow!(
            "{what}: no image for platform {want} in the index (it has: {})",
            if offered.is_empty() {
                "no platforms".to_string()
            } else {
                offered.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_validation() {
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_err());
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn platform_matching() {
        let arm = WantedPlatform::parse("aarch64").unwrap();
        assert!(arm.matches("arm64", "linux", Some("v8")));
        assert!(arm.matches("arm64", "linux", None));
        assert!(!arm.matches("amd64", "linux", None));
        let v8 = WantedPlatform::parse("linux/arm64/v8").unwrap();
        assert!(v8.matches("arm64", "linux", None));
        let v7 = WantedPlatform::parse("arm/v7").unwrap();
        assert!(!v7.matches("arm", "linux", Some("v6")));
        assert!(WantedPlatform::parse("mips").is_err());
    }

    #[test]
    fn parses_docker_list_and_oci_manifest() {
        let d = format!("sha256:{}", "1".repeat(64));
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let ManifestDoc::Index(idx) = ManifestDoc::parse(list.as_bytes(), None, "t").unwrap()
        else {
            panic!("expected index");
        };
        let sel = select_platform(&idx, &WantedPlatform::parse("arm64").unwrap(), "t").unwrap();
        assert_eq!(sel.digest.as_str(), d);
        let err = select_platform(&idx, &WantedPlatform::parse("amd64").unwrap(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/arm64/v8"), "{err}");

        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}},"layers":[]}}"#
        );
        assert!(matches!(
            ManifestDoc::parse(m.as_bytes(), Some(OCI_MANIFEST), "t").unwrap(),
            ManifestDoc::Manifest(_)
        ));
        assert!(ManifestDoc::parse(b"{\"schemaVersion\":1}", None, "t").is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        let d = format!("sha256:{}", "1".repeat(64));
        let good = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        );
        let mut seed = 0x1234_5678_9abc_def0u64;
        for i in 0..5000 {
            let mut doc = good.clone().into_bytes();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % doc.len();
            match i % 3 {
                0 => doc[at] = (seed >> 8) as u8,
                1 => doc.truncate(at),
                _ => doc.insert(at, b'"'),
            }
            if let Ok(ManifestDoc::Index(idx)) = ManifestDoc::parse(&doc, None, "fuzz") {
                let _ = select_platform(&idx, &WantedPlatform::host(), "fuzz");
            }
        }
    }
}

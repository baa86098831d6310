//! The upgrade artifact as the registry serves it (OCI image spec 1.1,
//! docs/upgrade.md): an index (several architectures) or one manifest
//! whose `artifactType`, config media type and layer media types are
//! those of [`boot_contract::upgrade`]. Everything here is untrusted input:
//! parsing never panics, sizes are bounded, and errors name the document
//! and the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use boot_contract::upgrade::{
    self as contract, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, DEVICETREE_MEDIA_TYPE, INITRD_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE, ROOTFS_MEDIA_TYPE, TITLE_ANNOTATION,
};

use crate::bail;
use crate::error::{Context, Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What the agent asks a registry for.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests, indexes and the config are small documents: anything larger
/// is refused before it is read whole.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or an image manifest (the fields of both; which one it
/// is comes from its media type).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A fetched manifest or index: its bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl Fetched {
    pub fn parse(&self, what: &str) -> Result<Document> {
        let doc: Document = serde_json::from_slice(&self.bytes)
            .with_context(|| format!("{what} {}: not an OCI manifest", self.digest))?;
        if doc.schema_version != Some(2) {
            bail!(
                "{what} {}: schemaVersion {:?}, expected 2",
                self.digest,
                doc.schema_version
            );
        }
        Ok(doc)
    }

    /// The media type the registry gave, else the document's own.
    pub fn kind(&self, doc: &Document) -> String {
        if self.media_type.is_empty() || self.media_type == "application/octet-stream" {
            doc.media_type.clone().unwrap_or_default()
        } else {
            self.media_type.clone()
        }
    }

    pub fn is_index(&self, doc: &Document) -> bool {
        let k = self.kind(doc);
        k == OCI_INDEX || k == DOCKER_LIST || (k.is_empty() && !doc.manifests.is_empty())
    }
}

/// `sha256:` and 64 lower-case hex digits; the only digest the agent
/// accepts (it names paths and is compared as text).
pub fn check_digest(d: &str, what: &str) -> Result<()> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if !ok {
        bail!("{what}: digest {d:?} is not sha256: and 64 lower-case hex digits");
    }
    Ok(())
}

/// The entry of `index` for `linux/<arch>`.
pub fn pick_platform<'a>(index: &'a Document, digest: &str, arch: &str) -> Result<&'a Descriptor> {
    let found = index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    });
    match found {
        Some(d) => {
            check_digest(
                &d.digest,
                &format!("index {digest}: manifest for linux/{arch}"),
            )?;
            Ok(d)
        }
        None => {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            Err(Error::msg(format!(
                "index {digest} has no upgrade for linux/{arch} (it has: {}): wrong architecture",
                if have.is_empty() {
                    "no platforms".to_string()
                } else {
                    have.join(", ")
                }
            )))
        }
    }
}

/// The layers an upgrade is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    pub rootfs: Descriptor,
    pub kernel: Descriptor,
    pub initrd: Descriptor,
    /// Device trees, by file name (their title).
    pub devicetrees: Vec<(String, Descriptor)>,
}

/// Checks that `doc` (the manifest `digest`) is an upgrade artifact and
/// picks its config and layers.
pub fn upgrade_layers(doc: &Document, digest: &str) -> Result<(Descriptor, Layers)> {
    let config = doc
        .config
        .clone()
        .ok_or_else(|| Error::msg(format!("manifest {digest}: no config")))?;
    let typed = doc.artifact_type.as_deref() == Some(ARTIFACT_TYPE);
    if config.media_type != CONFIG_MEDIA_TYPE {
        bail!(
            "manifest {digest}: config media type {:?}{}, expected {CONFIG_MEDIA_TYPE}: not a build-image upgrade artifact",
            config.media_type,
            if typed { "" } else { " and no artifactType" },
        );
    }
    check_digest(&config.digest, &format!("manifest {digest}: config"))?;
    if config.size > MAX_DOCUMENT {
        bail!(
            "manifest {digest}: config of {} bytes is too large",
            config.size
        );
    }
    let one = |media: &str, name: &str| -> Result<Descriptor> {
        let mut it = doc.layers.iter().filter(|l| l.media_type == media);
        let l = it
            .next()
            .ok_or_else(|| Error::msg(format!("manifest {digest}: no {name} layer ({media})")))?;
        if it.next().is_some() {
            bail!("manifest {digest}: more than one {name} layer ({media})");
        }
        check_digest(&l.digest, &format!("manifest {digest}: {name} layer"))?;
        Ok(l.clone())
    };
    let rootfs = one(ROOTFS_MEDIA_TYPE, "root filesystem")?;
    let kernel = one(KERNEL_MEDIA_TYPE, "kernel")?;
    let initrd = one(INITRD_MEDIA_TYPE, "initrd")?;
    for l in [&kernel, &initrd] {
        if l.size > MAX_BOOT_FILE {
            bail!(
                "manifest {digest}: layer {} of {} bytes: a kernel or initrd is at most {} MiB",
                l.digest,
                l.size,
                MAX_BOOT_FILE >> 20
            );
        }
    }
    let mut devicetrees = Vec::new();
    for l in doc
        .layers
        .iter()
        .filter(|l| l.media_type == DEVICETREE_MEDIA_TYPE)
    {
        check_digest(&l.digest, &format!("manifest {digest}: device tree layer"))?;
        let name = l
            .annotations
            .get(TITLE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !ok || l.size > MAX_BOOT_FILE {
            bail!(
                "manifest {digest}: device tree layer {}: title {name:?} is not a plain file name, or it is too large",
                l.digest
            );
        }
        devicetrees.push((name, l.clone()));
    }
    Ok((
        config,
        Layers {
            rootfs,
            kernel,
            initrd,
            devicetrees,
        },
    ))
}

/// The largest kernel, initrd or device tree the agent puts on the ESP.
pub const MAX_BOOT_FILE: u64 = 512 << 20;

/// The config blob: its format first (so a newer format is refused with
/// a clear message, not as an unknown field), then the whole document.
pub fn parse_config(bytes: &[u8], digest: &str) -> Result<contract::Config> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        format: Option<u32>,
        min_agent_version: Option<String>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).with_context(|| format!("config {digest}: not JSON"))?;
    if probe.format != Some(contract::CONFIG_FORMAT) {
        bail!(
            "config {digest}: format {:?}; this os-agent ({}) reads format {}{}",
            probe.format,
            env!("CARGO_PKG_VERSION"),
            contract::CONFIG_FORMAT,
            probe
                .min_agent_version
                .map(|v| format!(" (the artifact needs os-agent {v} or later)"))
                .unwrap_or_default()
        );
    }
    serde_json::from_slice(bytes).with_context(|| format!("config {digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn manifest(layers: &str) -> Document {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{ARTIFACT_TYPE}",
            "config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"{}","size":10}},
            "layers":[{layers}]}}"#,
            d('c')
        );
        Fetched {
            bytes: text.into_bytes(),
            digest: d('0'),
            media_type: OCI_MANIFEST.into(),
        }
        .parse("manifest")
        .unwrap()
    }

    fn layer(media: &str, n: char, title: &str) -> String {
        format!(
            r#"{{"mediaType":"{media}","digest":"{}","size":5,"annotations":{{"{TITLE_ANNOTATION}":"{title}"}}}}"#,
            d(n)
        )
    }

    #[test]
    fn picks_the_layers_of_an_upgrade() {
        let all = [
            layer(ROOTFS_MEDIA_TYPE, '1', "root.squashfs"),
            layer(KERNEL_MEDIA_TYPE, '2', "vmlinuz"),
            layer(INITRD_MEDIA_TYPE, '3', "initrd.img"),
            layer(DEVICETREE_MEDIA_TYPE, '4', "bcm2711-rpi-4-b.dtb"),
        ];
        let (cfg, l) = upgrade_layers(&manifest(&all.join(",")), "m").unwrap();
        assert_eq!(cfg.digest, d('c'));
        assert_eq!(l.rootfs.digest, d('1'));
        assert_eq!(l.initrd.digest, d('3'));
        assert_eq!(l.devicetrees[0].0, "bcm2711-rpi-4-b.dtb");

        let e = upgrade_layers(&manifest(&all[..2].join(",")), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no initrd layer"), "{e}");
        let twice = format!("{},{}", all.join(","), all[0]);
        let e = upgrade_layers(&manifest(&twice), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one root filesystem layer"), "{e}");
        let evil = all[..3].join(",") + "," + &layer(DEVICETREE_MEDIA_TYPE, '5', "../../x");
        let e = upgrade_layers(&manifest(&evil), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a plain file name"), "{e}");
        let bad = all.join(",").replace(&d('2'), "sha256:../../etc");
        let e = upgrade_layers(&manifest(&bad), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not sha256:"), "{e}");
    }

    #[test]
    fn an_image_is_not_an_upgrade() {
        let text = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
            d('a')
        );
        let doc = Fetched {
            bytes: text.into_bytes(),
            digest: d('0'),
            media_type: OCI_MANIFEST.into(),
        }
        .parse("manifest")
        .unwrap();
        let e = upgrade_layers(&doc, "m").unwrap_err().to_string();
        assert!(e.contains("not a build-image upgrade artifact"), "{e}");
    }

    #[test]
    fn platform_from_an_index() {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
            d('1')
        );
        let f = Fetched {
            bytes: text.into_bytes(),
            digest: d('0'),
            media_type: String::new(),
        };
        let doc = f.parse("index").unwrap();
        assert!(f.is_index(&doc));
        assert_eq!(pick_platform(&doc, "i", "arm64").unwrap().digest, d('1'));
        let e = pick_platform(&doc, "i", "amd64").unwrap_err().to_string();
        assert!(
            e.contains("no upgrade for linux/amd64 (it has: linux/arm64)"),
            "{e}"
        );
    }

    #[test]
    fn config_format_is_checked_first() {
        let e = parse_config(br#"{"format":2,"minAgentVersion":"9.0.0","new":1}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format Some(2)") && e.contains("needs os-agent 9.0.0"),
            "{e}"
        );
        assert!(parse_config(b"[1]", "c").is_err());
        assert!(parse_config(b"\xff", "c").is_err());
    }
}

//! The upgrade artifact: what `build-image --format upgrade` writes and
//! pushes, and what `os-agent upgrade` reads (docs/upgrade.md).
//!
//! One OCI image manifest per architecture (OCI image spec 1.1: an artifact
//! with its own `artifactType` and config media type), layers stored
//! uncompressed: the root SquashFS (already compressed), the kernel, the
//! initrd and, for boards that need them, device trees. Several
//! architectures are tied together by a plain OCI index (no
//! `artifactType` on the index: some clients rewrite an index that has
//! one, changing its digest). Every layer carries an
//! `org.opencontainers.image.title` annotation, the file name a generic
//! client (`oras pull`) writes it to.

/// `artifactType` of every per-architecture manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.build-image.upgrade.v1";
/// Media type of the config blob ([`Config`], JSON).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.build-image.upgrade.config.v1+json";
/// The root filesystem (SquashFS), written raw to the passive slot.
pub const ROOTFS_MEDIA_TYPE: &str = "application/vnd.build-image.rootfs.squashfs";
/// The kernel image (`/a/vmlinuz` or `/b/vmlinuz` on the ESP).
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.build-image.kernel";
/// The initramfs (`/a/initrd` or `/b/initrd` on the ESP).
pub const INITRD_MEDIA_TYPE: &str = "application/vnd.build-image.initrd";
/// A flattened device tree (boards).
pub const DEVICETREE_MEDIA_TYPE: &str = "application/vnd.build-image.devicetree";

/// Layer titles (`org.opencontainers.image.title`).
pub const ROOTFS_TITLE: &str = "root.squashfs";
pub const KERNEL_TITLE: &str = "vmlinuz";
pub const INITRD_TITLE: &str = "initrd.img";

/// The OCI annotation naming a layer's file.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Where an image keeps the public keys `build-image --upgrade-key` baked
/// in (one SPKI PEM P-256 key per `*.pub` file): `os-agent upgrade`
/// refuses an artifact no key has signed when there is at least one.
pub const KEYS_DIR: &str = "/etc/os-agent/upgrade-keys";
/// The file name extension of a key in [`KEYS_DIR`].
pub const KEY_EXTENSION: &str = "pub";

/// cosign's signature storage (the "tag" scheme, for registries without
/// the referrers API): the signature manifest of `sha256:HEX` is tagged
/// `sha256-HEX.sig` in the same repository; each of its layers is a
/// simple-signing payload ([`SIMPLE_SIGNING_MEDIA_TYPE`]) whose
/// base64 DER ECDSA P-256 signature over the payload bytes is the layer
/// annotation [`SIGNATURE_ANNOTATION`].
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a simple-signing payload.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

/// The tag of the signature manifest of `digest` (`sha256:HEX` →
/// `sha256-HEX.sig`); None for a digest that is not `ALGO:HEX`.
pub fn signature_tag(digest: &str) -> Option<String> {
    let (algo, hex) = digest.split_once(':')?;
    if algo.is_empty() || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{algo}-{hex}.sig"))
}

/// The version of the config document's format this build understands
/// ([`Config::format`]).
pub const CONFIG_FORMAT: u32 = 1;

/// The config blob: everything the device checks before it writes a byte.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// [`CONFIG_FORMAT`].
    pub format: u32,
    /// The image version (`IMAGE_VERSION` in os-release).
    pub version: String,
    /// Flavor name (`debian`) and release (`bookworm`).
    pub flavor: String,
    pub release: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// The kernel version (`6.1.0-28-amd64`).
    pub kernel: String,
    /// The k3s version, if the image has k3s.
    pub k3s_version: Option<String>,
    /// Size and `sha256:` digest of the root SquashFS layer.
    pub rootfs_size: u64,
    pub rootfs_digest: String,
    /// The smallest root slot the image fits in, in bytes.
    pub min_slot_size: u64,
    /// The oldest os-agent version that can apply this artifact.
    pub min_agent_version: String,
    /// `sha256:` digest of the build's `build-image.lock`.
    pub lock_digest: String,
    /// RFC 3339 UTC build time (from `SOURCE_DATE_EPOCH` when set).
    pub created: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_tags() {
        assert_eq!(
            signature_tag("sha256:00ff").as_deref(),
            Some("sha256-00ff.sig")
        );
        assert_eq!(signature_tag("sha256"), None);
        assert_eq!(signature_tag("sha256:../x"), None);
    }
}

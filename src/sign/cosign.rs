//! cosign's signature storage, byte for byte where clients look at bytes.
//!
//! For a manifest (or index) with digest `sha256:H` in repository `R`:
//! - the *payload* (the signed bytes) is the "simple signing" JSON naming
//!   `R` (registry included, no tag) and the digest;
//! - the *signature* is `base64(DER(ECDSA-P256(SHA-256(payload))))`,
//!   carried in the layer annotation `dev.cosignproject.cosign/signature`;
//! - the layer is the payload blob, media type
//!   `application/vnd.dev.cosign.simplesigning.v1+json`, in an OCI image
//!   manifest tagged `sha256-H.sig` in `R`, one layer per signature: signing
//!   again appends a layer (an identical one is not added twice);
//! - that manifest's config is the image config cosign writes for it (one
//!   `history` entry and one `diff_id` per layer).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::keys::SigningKey;
use crate::oci::manifest::{Manifest, ManifestDoc, MANIFEST_ACCEPT, OCI_MANIFEST};
use crate::oci::reference::DOCKER_HUB;
use crate::oci::{BlobSource, Descriptor, Digest, Reference, RegistryClient};
use crate::progress::Reporter;

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// cosign's timestamps: Go's zero time.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The repository as cosign names it in a payload: registry (with port)
/// and repository, no tag or digest; Docker Hub as `index.docker.io`.
pub fn docker_reference(r: &Reference) -> String {
    let registry = if r.registry == DOCKER_HUB {
        "index.docker.io"
    } else {
        r.registry.as_str()
    };
    format!("{registry}/{}", r.repository)
}

/// The tag the signatures of `digest` live under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The simple-signing payload: compact JSON in cosign's key order.
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        critical: Critical<'a>,
        optional: Option<()>,
    }
    #[derive(Serialize)]
    struct Critical<'a> {
        identity: Identity<'a>,
        image: Image<'a>,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(Serialize)]
    struct Identity<'a> {
        #[serde(rename = "docker-reference")]
        docker_reference: &'a str,
    }
    #[derive(Serialize)]
    struct Image<'a> {
        #[serde(rename = "docker-manifest-digest")]
        digest: &'a str,
    }
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity { docker_reference },
            image: Image {
                digest: digest.as_str(),
            },
            kind: "cosign container image signature",
        },
        optional: None,
    })
    .expect("a payload serialises")
}

/// The config blob of a signature manifest with these layers.
fn config_blob(layers: &[Descriptor]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Config<'a> {
        architecture: &'static str,
        created: &'static str,
        history: Vec<History>,
        os: &'static str,
        rootfs: RootFs<'a>,
        config: Empty,
    }
    #[derive(Serialize)]
    struct History {
        created: &'static str,
    }
    #[derive(Serialize)]
    struct RootFs<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        diff_ids: Vec<&'a str>,
    }
    #[derive(Serialize)]
    struct Empty {}
    serde_json::to_vec(&Config {
        architecture: "",
        created: ZERO_TIME,
        history: layers
            .iter()
            .map(|_| History { created: ZERO_TIME })
            .collect(),
        os: "",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.digest.as_str()).collect(),
        },
        config: Empty {},
    })
    .expect("a config serialises")
}

/// One signature attached to a digest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureRecord {
    /// What was signed.
    pub digest: Digest,
    /// `REGISTRY/REPOSITORY:sha256-<hex>.sig`
    pub tag: String,
    /// The signature manifest's digest after signing.
    pub manifest_digest: Digest,
    /// How many signatures that manifest holds.
    pub signatures: usize,
    /// False when this very signature was there already.
    pub added: bool,
}

/// Signs `digest` in `r`'s repository with `key` and stores the signature
/// as cosign does, appending to the signatures already there.
pub fn attach(
    client: &RegistryClient,
    r: &Reference,
    key: &SigningKey,
    digest: &Digest,
    reporter: &dyn Reporter,
) -> Result<SignatureRecord> {
    let repo = Reference {
        tag: None,
        digest: None,
        ..r.clone()
    };
    let tag = signature_tag(digest);
    let payload = payload(&docker_reference(&repo), digest);
    let signature = key.sign_base64(&payload);
    let layer = Descriptor {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        digest: Digest::of(&payload),
        size: payload.len() as u64,
        platform: None,
        annotations: Some(BTreeMap::from([(
            SIGNATURE_ANNOTATION.to_string(),
            signature.clone(),
        )])),
    };
    let what = format!("signatures of {digest} in {}", docker_reference(&repo));
    let existing = client.manifest_if_exists(&repo, &tag, MANIFEST_ACCEPT)?;
    let (mut manifest, media_type) = match existing {
        Some((body, ct)) => match ManifestDoc::parse(&body, ct.as_deref(), &what)? {
            ManifestDoc::Manifest(m) => {
                let mt = m
                    .media_type
                    .clone()
                    .or(ct.map(|c| c.split(';').next().unwrap_or_default().trim().to_string()))
                    .unwrap_or_else(|| OCI_MANIFEST.to_string());
                (m, mt)
            }
            ManifestDoc::Index(_) => {
                bail!("{what}: tag {tag} holds an index, not a signature manifest")
            }
        },
        None => (
            Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.into()),
                artifact_type: None,
                config: Descriptor {
                    media_type: OCI_CONFIG.into(),
                    digest: Digest::of(b""),
                    size: 0,
                    platform: None,
                    annotations: None,
                },
                layers: Vec::new(),
                annotations: None,
            },
            OCI_MANIFEST.to_string(),
        ),
    };
    let full_tag = format!("{}:{tag}", docker_reference(&repo));
    if manifest.layers.contains(&layer) {
        let body = serde_json::to_vec(&manifest)?;
        return Ok(SignatureRecord {
            digest: digest.clone(),
            tag: full_tag,
            manifest_digest: Digest::of(&body),
            signatures: manifest.layers.len(),
            added: false,
        });
    }
    manifest.layers.push(layer.clone());
    let config = config_blob(&manifest.layers);
    manifest.config = Descriptor {
        media_type: manifest.config.media_type.clone(),
        digest: Digest::of(&config),
        size: config.len() as u64,
        platform: None,
        annotations: None,
    };
    client.push_blob(&repo, &layer, BlobSource::Bytes(&payload), &[], reporter)?;
    client.push_blob(
        &repo,
        &manifest.config,
        BlobSource::Bytes(&config),
        &[],
        reporter,
    )?;
    let body = serde_json::to_vec(&manifest)?;
    let manifest_digest = client.put_manifest(&repo, &tag, &media_type, &body)?;
    Ok(SignatureRecord {
        digest: digest.clone(),
        tag: full_tag,
        manifest_digest,
        signatures: manifest.layers.len(),
        added: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_and_config_are_cosigns_bytes() {
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let r = Reference::parse("127.0.0.1:5077/test/img:v1").unwrap();
        assert_eq!(docker_reference(&r), "127.0.0.1:5077/test/img");
        assert_eq!(
            String::from_utf8(payload(&docker_reference(&r), &d)).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5077/test/img"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "ab".repeat(32)));
        let layer = Descriptor {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
            digest: d.clone(),
            size: 1,
            platform: None,
            annotations: None,
        };
        assert_eq!(
            String::from_utf8(config_blob(&[layer])).unwrap(),
            format!(
                r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{d}"]}},"config":{{}}}}"#
            )
        );
        let hub = Reference::parse("debian").unwrap();
        assert_eq!(docker_reference(&hub), "index.docker.io/library/debian");
    }
}

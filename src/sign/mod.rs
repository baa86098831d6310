//! Signatures of pushed images, in cosign's format (docs/upgrade.md,
//! *Signatures*): ECDSA P-256 over a "simple signing" payload, stored in
//! the image's repository under the tag `sha256-<hex>.sig`. Verified by
//! `cosign verify --key`, by containers/image (skopeo, podman) with a
//! `sigstoreSigned` policy, and by os-agent.
//!
//! - [`keys`]: generating, reading and writing P-256 key pairs (PKCS#8 /
//!   SEC1 private keys, SPKI public keys, PEM);
//! - [`cosign`]: the payload, the signature manifest, attaching it.

pub mod cosign;
pub mod keys;

pub use cosign::{attach, payload, signature_tag, SignatureRecord};
pub use keys::{KeyPair, SigningKey};

use anyhow::{bail, Result};

use crate::oci::manifest::{ManifestDoc, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::oci::{Digest, Reference, RegistryClient};
use crate::progress::{Event, Reporter};

/// Signs image `digest` of `r`'s repository; an index is signed together
/// with every platform manifest it lists (container clients check the
/// signature of the platform manifest they copy, cosign that of the
/// digest it is given). Returns the index's record first.
pub fn sign_image(
    client: &RegistryClient,
    r: &Reference,
    digest: &Digest,
    key: &SigningKey,
    reporter: &dyn Reporter,
) -> Result<Vec<SignatureRecord>> {
    let (body, ct, _) = client.manifest(r, digest.as_str())?;
    let what = format!("{}/{}@{digest}", r.registry, r.repository);
    let mut digests = vec![digest.clone()];
    if let ManifestDoc::Index(idx) = ManifestDoc::parse(&body, ct.as_deref(), &what)? {
        for m in &idx.manifests {
            if !matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
                bail!(
                    "{what}: the index lists {} of type {}; only image manifests can be signed with it",
                    m.digest,
                    m.media_type
                );
            }
            digests.push(m.digest.clone());
        }
    }
    let mut records = Vec::new();
    for d in &digests {
        reporter.event(Event::Stage {
            message: format!("signing {d}"),
        });
        records.push(attach(client, r, key, d, reporter)?);
    }
    Ok(records)
}

//! What must hold before a byte is written: the artifact is signed by a
//! trusted key (cosign's format, [`boot_contract::upgrade`]) when the
//! device has keys, and it is newer than what runs (versions compared the
//! way dpkg compares them).

use std::cmp::Ordering;
use std::path::PathBuf;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use boot_contract::upgrade::{
    KEYS_DIR, KEY_EXTENSION, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SIMPLE_SIGNING_TYPE,
};

use super::source::Source;
use crate::error::{Context, Error, Result};
use crate::fsutil::Root;

/// A trusted key and where it came from (for messages).
pub struct Key {
    pub origin: String,
    pub key: VerifyingKey,
}

/// The keys an upgrade must be signed with: every `*.pub` in
/// [`KEYS_DIR`] of the running image, and `upgrade.public_keys` of the
/// node config. An unreadable key is an error, not a key less.
pub fn load_keys(root: &Root, config_keys: &[String]) -> Result<Vec<Key>> {
    let mut keys = Vec::new();
    let dir = root.join(KEYS_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == KEY_EXTENSION))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    for f in files {
        let pem =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            Error::msg(format!(
                "{}: not a P-256 public key (SPKI PEM): {e}",
                f.display()
            ))
        })?;
        keys.push(Key {
            origin: f.display().to_string(),
            key,
        });
    }
    for (i, pem) in config_keys.iter().enumerate() {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            Error::msg(format!(
                "node config upgrade.public_keys[{i}]: not a P-256 public key: {e}"
            ))
        })?;
        keys.push(Key {
            origin: format!("upgrade.public_keys[{i}]"),
            key,
        });
    }
    Ok(keys)
}

/// The simple-signing payload cosign signs.
#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The digest the signature is for (the platform manifest's or the
    /// index's, which names it).
    pub digest: String,
    /// Which key.
    pub key: String,
}

/// The repository path of a `docker-reference` (`HOST/PATH`): the part
/// after the host.
fn reference_path(r: &str) -> &str {
    match r.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => p,
        _ => r,
    }
}

/// Checks the signatures of `digests` (the platform manifest first, then
/// the index that names it). `Ok(Ok(_))`: verified by a key;
/// `Ok(Err(why))`: no valid signature (a refusal); `Err`: the source
/// could not be read.
pub fn check_signature(
    source: &mut dyn Source,
    keys: &[Key],
    digests: &[&str],
) -> Result<std::result::Result<Signed, String>> {
    let mut why = Vec::new();
    let repo = source.repository().map(|(_, p)| p);
    for &digest in digests {
        let Some(sig) = source.signatures(digest)? else {
            why.push(format!("no signature for {digest}"));
            continue;
        };
        let doc = sig.parse("signature manifest")?;
        for layer in doc
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        {
            let Some(b64) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                why.push(format!("{}: a payload without a signature", sig.digest));
                continue;
            };
            let payload = source.small_blob(&layer.digest, layer.size)?;
            match verify_payload(&payload, b64, digest, repo.as_deref(), keys) {
                Ok(key) => {
                    return Ok(Ok(Signed {
                        digest: digest.to_string(),
                        key,
                    }))
                }
                Err(e) => why.push(format!("signature of {digest}: {e}")),
            }
        }
    }
    Ok(Err(why.join("; ")))
}

/// Verifies one simple-signing payload and its base64 DER signature.
pub fn verify_payload(
    payload: &[u8],
    signature_b64: &str,
    digest: &str,
    repository_path: Option<&str>,
    keys: &[Key],
) -> std::result::Result<String, String> {
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("not a simple-signing payload: {e}"))?;
    if p.critical.kind != SIMPLE_SIGNING_TYPE {
        return Err(format!("payload type {:?}", p.critical.kind));
    }
    if p.critical.image.docker_manifest_digest != digest {
        return Err(format!(
            "it signs {}, not {digest}",
            p.critical.image.docker_manifest_digest
        ));
    }
    let der = node_config::b64::decode(signature_b64)
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let sig = DerSignature::try_from(der.as_slice())
        .map_err(|e| format!("signature is not a DER ECDSA signature: {e}"))?;
    let by = keys
        .iter()
        .find(|k| k.key.verify(payload, &sig).is_ok())
        .ok_or_else(|| "signed by none of the trusted keys (or tampered with)".to_string())?;
    // The registry host may differ (a mirror, another address of the
    // same registry); the repository may not.
    if let Some(want) = repository_path {
        let got = reference_path(&p.critical.identity.docker_reference);
        if got != want {
            return Err(format!(
                "signed for repository {:?}, not {want:?}",
                p.critical.identity.docker_reference
            ));
        }
    }
    Ok(by.origin.clone())
}

/// A version split into runs of digits and of other characters.
fn parts(v: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let digit = b[i].is_ascii_digit();
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() == digit {
            i += 1;
        }
        out.push((digit, &v[start..i]));
    }
    out
}

/// dpkg's order of non-digit characters: `~` first, then the end of the
/// run, letters, then everything else.
fn char_order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn cmp_text(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for i in 0..a.len().max(b.len()) {
        let o = char_order(a.get(i).copied()).cmp(&char_order(b.get(i).copied()));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn cmp_num(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares two image versions like dpkg compares upstream versions:
/// `1.9 < 1.10`, `2.0~rc1 < 2.0 < 2.0a`, `20250101.120000 < 20250102.080000`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (pa, pb) = (parts(a), parts(b));
    let mut i = 0;
    loop {
        match (pa.get(i), pb.get(i)) {
            (None, None) => return Ordering::Equal,
            (x, y) => {
                let o = match (x, y) {
                    (Some((true, x)), Some((true, y))) => cmp_num(x, y),
                    (Some((false, x)), Some((false, y))) => cmp_text(x, y),
                    // A digit run against a text run or the end: compare
                    // the text side as dpkg does (empty text, number 0).
                    (Some((true, x)), Some((false, y))) => cmp_text("", y).then(cmp_num(x, "0")),
                    (Some((false, x)), Some((true, y))) => cmp_text(x, "").then(cmp_num("0", y)),
                    (Some((true, x)), None) => cmp_num(x, "0"),
                    (None, Some((true, y))) => cmp_num("0", y),
                    (Some((false, x)), None) => cmp_text(x, ""),
                    (None, Some((false, y))) => cmp_text("", y),
                    (None, None) => unreachable!(),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
        i += 1;
    }
}

/// `a` is at least `min` (for `minAgentVersion`).
pub fn at_least(a: &str, min: &str) -> bool {
    compare_versions(a, min) != Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0.0-test", "2.0.0-test", Less),
            ("1.9", "1.10", Less),
            ("1.10", "1.9", Greater),
            ("2.0~rc1", "2.0", Less),
            ("2.0", "2.0a", Less),
            ("2.0", "2.0.1", Less),
            ("20250101.120000", "20250102.080000", Less),
            ("1.0", "1.0", Equal),
            ("01", "1", Equal),
            ("1.0.0", "1.0", Greater),
            ("3.0.0-test", "2.0.0-test", Greater),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
        assert!(at_least("0.1.0", "0.1.0") && !at_least("0.1.0", "0.2.0"));
    }

    #[test]
    fn cosign_payloads() {
        use p256::ecdsa::signature::Signer;
        use p256::ecdsa::{Signature, SigningKey};
        let sk = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let keys = [Key {
            origin: "k".into(),
            key: *sk.verifying_key(),
        }];
        let d = format!("sha256:{}", "a".repeat(64));
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/test/os"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let sig: Signature = sk.sign(payload.as_bytes());
        let b64 = crate::upgrade::registry::base64(sig.to_der().as_bytes());
        let v = |p: &str, repo: Option<&str>, digest: &str| {
            verify_payload(p.as_bytes(), &b64, digest, repo, &keys)
        };
        assert_eq!(v(&payload, Some("test/os"), &d), Ok("k".into()));
        assert_eq!(v(&payload, None, &d), Ok("k".into()));
        let e = v(&payload, Some("other/os"), &d).unwrap_err();
        assert!(e.contains("not \"other/os\""), "{e}");
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(v(&payload, None, &other).unwrap_err().contains("it signs"));
        let tampered = payload.replace("test/os", "test/oz");
        assert!(v(&tampered, None, &d)
            .unwrap_err()
            .contains("none of the trusted keys"));
        let wrong = SigningKey::from_bytes(&[8u8; 32].into()).unwrap();
        let keys2 = [Key {
            origin: "w".into(),
            key: *wrong.verifying_key(),
        }];
        assert!(verify_payload(payload.as_bytes(), &b64, &d, None, &keys2).is_err());
        assert!(verify_payload(payload.as_bytes(), "!!", &d, None, &keys).is_err());
    }

    #[test]
    fn reference_paths() {
        assert_eq!(reference_path("127.0.0.1:5000/test/os"), "test/os");
        assert_eq!(reference_path("reg.example/os"), "os");
        assert_eq!(reference_path("test/os"), "test/os");
    }
}

//! P-256 key pairs as cosign, openssl and os-agent read them: the private
//! key as unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`; SEC1 `BEGIN EC
//! PRIVATE KEY` is read too), the public key as SPKI PEM (`BEGIN PUBLIC
//! KEY`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};

/// A private key that signs.
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Reads a PEM private key from `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading signing key {}", path.display()))?;
        Self::from_pem(&text).with_context(|| format!("signing key {}", path.display()))
    }

    /// Parses a PKCS#8 or SEC1 PEM P-256 private key.
    pub fn from_pem(text: &str) -> Result<Self> {
        let label = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or_else(|| anyhow!("not a PEM file (no -----BEGIN line)"))?;
        let secret = match label {
            "PRIVATE KEY" => p256::SecretKey::from_pkcs8_pem(text).map_err(|e| {
                anyhow!("not a P-256 private key in PKCS#8 form ({e}); only ECDSA P-256 keys are supported")
            })?,
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_pem(text)
                .map_err(|e| anyhow!("not a P-256 private key in SEC1 form ({e})"))?,
            "ENCRYPTED PRIVATE KEY" | "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => bail!(
                "the key is encrypted ({label}); give an unencrypted PKCS#8 P-256 key (`build-image keygen` writes one)"
            ),
            other => bail!(
                "a PEM {other:?} block; expected a P-256 private key (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)"
            ),
        };
        Ok(SigningKey {
            key: p256::ecdsa::SigningKey::from(secret),
        })
    }

    /// `base64(DER(ECDSA-P256(SHA-256(data))))`, deterministic (RFC 6979),
    /// as cosign stores it.
    pub fn sign_base64(&self, data: &[u8]) -> String {
        use base64::Engine;
        let sig: p256::ecdsa::Signature = self.key.sign(data);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> Result<String> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow!("encoding the public key: {e}"))
    }
}

/// A new key pair, PEM-encoded.
pub struct KeyPair {
    /// PKCS#8 (`BEGIN PRIVATE KEY`).
    pub private_pem: p256::elliptic_curve::zeroize::Zeroizing<String>,
    /// SPKI (`BEGIN PUBLIC KEY`).
    pub public_pem: String,
}

impl KeyPair {
    /// A fresh P-256 key pair from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let private_pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow!("encoding the private key: {e}"))?;
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow!("encoding the public key: {e}"))?;
        Ok(KeyPair {
            private_pem,
            public_pem,
        })
    }
}

/// Checks `sig_base64` (as [`SigningKey::sign_base64`] writes it) over
/// `data` with an SPKI PEM public key.
pub fn verify_base64(public_pem: &str, data: &[u8], sig_base64: &str) -> Result<()> {
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem)
        .map_err(|e| anyhow!("not a P-256 public key in SPKI PEM form: {e}"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(sig_base64.trim())
        .context("the signature is not base64")?;
    let sig = p256::ecdsa::Signature::from_der(&der)
        .map_err(|e| anyhow!("the signature is not a DER ECDSA signature: {e}"))?;
    key.verify(data, &sig)
        .map_err(|_| anyhow!("the signature does not verify with this key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_read_back() {
        let pair = KeyPair::generate().unwrap();
        assert!(pair
            .private_pem
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = SigningKey::from_pem(&pair.private_pem).unwrap();
        assert_eq!(key.public_pem().unwrap(), pair.public_pem);
        let sig = key.sign_base64(b"payload");
        // Deterministic (RFC 6979): the same payload gives the same bytes.
        assert_eq!(sig, key.sign_base64(b"payload"));
        verify_base64(&pair.public_pem, b"payload", &sig).unwrap();
        assert!(verify_base64(&pair.public_pem, b"payloaD", &sig).is_err());
        let other = KeyPair::generate().unwrap();
        assert!(verify_base64(&other.public_pem, b"payload", &sig).is_err());
    }

    #[test]
    fn sec1_keys_are_read_and_other_pem_is_refused_by_name() {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        SigningKey::from_pem(&sec1).unwrap();
        let pair = KeyPair::generate().unwrap();
        let e = SigningKey::from_pem(&pair.public_pem).unwrap_err();
        assert!(format!("{e:#}").contains("\"PUBLIC KEY\""), "{e:#}");
        let e = SigningKey::from_pem("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nxx\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("encrypted"), "{e:#}");
        assert!(SigningKey::from_pem("hello").is_err());
    }
}

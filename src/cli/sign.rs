//! `build-image sign --key KEY REF@DIGEST` and `build-image keygen`:
//! cosign-compatible signatures of pushed images and the key pairs that
//! make them ([`crate::sign`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::{Global, Output};
use crate::oci::{Reference, RegistryClient};
use crate::progress::Reporter;
use crate::sign::{self, KeyPair, SignatureRecord, SigningKey};
use crate::staging::Staging;

#[derive(Debug, Args)]
pub struct SignArgs {
    /// P-256 private key (PEM, PKCS#8 or SEC1)
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// What to sign: REGISTRY/REPOSITORY@sha256:DIGEST (an index is signed
    /// with every platform manifest it lists)
    #[arg(value_name = "REF@DIGEST")]
    pub reference: String,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT); loopback
    /// registries always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

/// What `sign --json` prints (`kind: SignResult`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignResult {
    /// `REGISTRY/REPOSITORY@DIGEST` as signed.
    pub reference: String,
    /// The index first (if it is one), then its platform manifests.
    pub signatures: Vec<SignatureRecord>,
}

impl Output for SignResult {
    fn kind(&self) -> &'static str {
        "SignResult"
    }

    fn text(&self) -> String {
        self.signatures
            .iter()
            .map(|s| format!("{}  {}\n", s.digest, s.tag))
            .collect()
    }
}

pub fn run_sign(_g: &Global, a: SignArgs, reporter: &dyn Reporter) -> Result<SignResult> {
    let r = Reference::parse(
        a.reference
            .strip_prefix("docker://")
            .unwrap_or(&a.reference),
    )
    .context("sign REF@DIGEST")?;
    let Some(digest) = r.digest.clone() else {
        bail!(
            "sign {}: name the image by digest (REGISTRY/REPOSITORY@sha256:…, as `build-image push` prints it): a tag can move between looking it up and signing",
            a.reference
        );
    };
    let key = SigningKey::load(&a.key).context("--key")?;
    let client = RegistryClient::new(a.insecure_registries);
    let signatures = sign::sign_image(&client, &r, &digest, &key, reporter)?;
    Ok(SignResult {
        reference: format!("{}/{}@{digest}", r.registry, r.repository),
        signatures,
    })
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write PREFIX.key (private, mode 0600) and PREFIX.pub (public)
    #[arg(long, short, default_value = "build-image", value_name = "PREFIX")]
    pub output: PathBuf,
}

/// What `keygen --json` prints (`kind: KeyPair`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeygenResult {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
}

impl Output for KeygenResult {
    fn kind(&self) -> &'static str {
        "KeyPair"
    }

    fn text(&self) -> String {
        format!(
            "{}\n{}\n",
            self.private_key.display(),
            self.public_key.display()
        )
    }
}

pub fn run_keygen(a: KeygenArgs) -> Result<KeygenResult> {
    let mut name = a.output.into_os_string();
    let mut private = name.clone();
    private.push(".key");
    name.push(".pub");
    let (private, public) = (PathBuf::from(private), PathBuf::from(name));
    for p in [&private, &public] {
        if p.symlink_metadata().is_ok() {
            bail!("{} exists already; not replacing a key", p.display());
        }
    }
    let pair = KeyPair::generate()?;
    let mut staging = Staging::new();
    let k = staging.create_new(&private, "private-key", 0o600)?;
    staging
        .file(k)
        .write_all(pair.private_pem.as_bytes())
        .with_context(|| format!("writing {}", private.display()))?;
    let p = staging.create_new(&public, "public-key", 0o644)?;
    staging
        .file(p)
        .write_all(pair.public_pem.as_bytes())
        .with_context(|| format!("writing {}", public.display()))?;
    staging.commit()?;
    Ok(KeygenResult {
        private_key: private,
        public_key: public,
    })
}

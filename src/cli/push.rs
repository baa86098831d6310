//! `build-image push DIR... REF`: upgrade layouts into a registry (one
//! index over several architectures), optionally signed. The work is
//! [`crate::upgrade::push`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::Global;
use crate::oci::{Reference, RegistryClient};
use crate::progress::Reporter;
use crate::sign::SigningKey;
use crate::upgrade::{self, BlobLocations, PushResult};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Upgrade layouts to push: the `{stem}.upgrade` directories builds
    /// wrote, one per architecture
    #[arg(required = true, value_name = "DIR")]
    pub layouts: Vec<PathBuf>,
    /// Where to push: REGISTRY/REPOSITORY:TAG
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Sign the pushed index and every platform manifest with this P-256
    /// private key, as cosign does (`build-image keygen` makes one)
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT); loopback
    /// registries always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

pub fn run(g: &Global, a: PushArgs, reporter: &dyn Reporter) -> Result<PushResult> {
    let target = Reference::parse(
        a.reference
            .strip_prefix("docker://")
            .unwrap_or(&a.reference),
    )
    .context("push REF")?;
    let key = match &a.sign_key {
        Some(k) => Some(SigningKey::load(k).context("--sign-key")?),
        None => None,
    };
    let client = RegistryClient::new(a.insecure_registries.clone());
    let mut locations = BlobLocations::open(&g.cache_dir()?, &target.registry);
    upgrade::push(
        &client,
        Some(&mut locations),
        &a.layouts,
        &target,
        key.as_ref(),
        reporter,
    )
}

//! The last stage of `--push`: the committed upgrade artifact into a
//! registry, as `build-image push` would send it.

use anyhow::{Context, Result};

use super::plan::BuildPlan;
use crate::cli::Global;
use crate::oci::RegistryClient;
use crate::progress::Reporter;
use crate::staging::Artifact;
use crate::upgrade::{self, BlobLocations, PushResult};

/// Pushes the build's upgrade layout to `--push REF` (signed with
/// `--sign-key`), or does nothing without `--push`. The build's outputs are
/// on disk by now: a failed push says how to retry it.
pub fn push(
    g: &Global,
    plan: &BuildPlan,
    artifacts: &[Artifact],
    reporter: &dyn Reporter,
) -> Result<Option<PushResult>> {
    let Some(target) = &plan.push else {
        return Ok(None);
    };
    let layout = artifacts
        .iter()
        .find(|a| a.format == "upgrade")
        .map(|a| a.path.clone())
        .context("--push: the build wrote no upgrade artifact")?;
    let client = RegistryClient::new(plan.insecure_registries.clone());
    let mut locations = BlobLocations::open(&g.cache_dir()?, &target.registry);
    upgrade::push(
        &client,
        Some(&mut locations),
        std::slice::from_ref(&layout),
        target,
        plan.sign_key.as_ref(),
        reporter,
    )
    .map(Some)
    .with_context(|| {
        format!(
            "the build succeeded, but pushing it to {target} failed (retry with `build-image push {} {target}`)",
            layout.display()
        )
    })
}

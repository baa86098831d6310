//! The main job: `build-image [--flavor F] [--arch A] ...` — a bootable,
//! A/B-upgradable system image from a distribution's base image and
//! packages. [`run`] reads top to bottom as the stages it runs; each stage
//! is a function whose signature says what it takes and what it yields.

mod boot;
mod inputs;
mod live;
pub mod lock;
mod media;
pub mod plan;
mod publish;
mod root;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::apt;
use crate::cli::build::BuildArgs;
use crate::cli::build::Format;
use crate::cli::{Global, Output};
use crate::oci::Digest;
use crate::progress::Reporter;
use crate::staging::{Artifact, Staging};
use crate::upgrade::PushResult;

pub use media::squashfs_with_bar;
pub use plan::{default_cmdline, version_from_epoch, BuildPlan};

/// What `build-image --json` prints for a build (`kind: BuildResult`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildResult {
    pub flavor: String,
    /// The flavor's release codename (`trixie`).
    pub release: String,
    pub arch: String,
    pub version: String,
    pub kernel: String,
    pub k3s_version: Option<String>,
    pub formats: Vec<&'static str>,
    pub artifacts: Vec<Artifact>,
    /// What `--push` pushed (`null` without it).
    pub push: Option<PushResult>,
    /// The Raspberry Pi card: its partitions and what boots each board
    /// (`null` without `--format rpi`).
    pub rpi: Option<media::CardSummary>,
}

pub fn run(g: &Global, a: BuildArgs, reporter: &dyn Reporter) -> Result<BuildResult> {
    let plan = plan::plan(&a)?;
    reporter.event(crate::progress::Event::Stage {
        message: format!(
            "building {} for {} (flavor {})",
            plan.flavor.description, plan.arch, plan.flavor.id
        ),
    });
    let puller = g.puller(&plan.insecure_registries, reporter)?;
    let fetcher = apt::Fetcher::new();
    let mut inputs = inputs::resolve(&plan, &puller, &fetcher, reporter)?;

    // File contents and scratch files live next to the outputs (the cache
    // directory may be on another disk) and go when the build ends.
    let spool = tempfile::Builder::new()
        .prefix(".build-image-spool-")
        .tempdir_in(&plan.out_dir)
        .context("creating a spool directory in the output directory")?;
    let mut root = root::Root::new(spool.path(), plan.mtime)?;
    let mut lock = lock::BuildLock::new(
        &plan.flavor.name,
        &plan.flavor.release,
        &plan.arch,
        &plan.version,
    );
    root::add_base(&plan, &inputs, &puller, &mut root, &mut lock)?;
    // The parsed indexes are the largest thing a build holds in memory:
    // they go as soon as the packages are in.
    let repositories = std::mem::take(&mut inputs.repositories);
    let releases = root::add_packages(
        &plan,
        &inputs,
        repositories,
        &fetcher,
        &puller,
        &mut root,
        &mut lock,
    )?;
    let k3s_version = root::add_components(&plan, &inputs, &puller, &mut root, &mut lock)?;
    let kernel = root::finalise(&plan, k3s_version.clone(), reporter, &mut root, &mut lock)?;
    let boot = boot::boot_files(&plan, &kernel, reporter, &mut root)?;

    let mut staging = Staging::new();
    let rootfs = media::write_rootfs(&plan, &root, reporter, &mut staging)?;
    drop(root);
    if plan.wants(Format::Disk) || plan.wants(Format::Iso) {
        let disk = media::write_disk(
            &plan,
            &boot,
            rootfs,
            &lock.seed(),
            spool.path(),
            reporter,
            &mut staging,
        )?;
        if plan.wants(Format::Iso) {
            media::write_iso(
                &plan,
                &boot,
                rootfs,
                &disk,
                spool.path(),
                reporter,
                &mut staging,
            )?;
        }
    }
    let mut rpi = None;
    if plan.wants(Format::Rpi) {
        rpi = Some(media::write_card(
            &plan,
            &boot,
            rootfs,
            &lock.seed(),
            spool.path(),
            reporter,
            &mut staging,
        )?);
    }
    lock.repositories = releases.iter().map(apt::ReleaseStamp::to_json).collect();
    let lock_bytes = lock.to_file_bytes();
    if plan.wants(Format::Upgrade) {
        media::write_upgrade(
            &plan,
            &boot,
            rootfs,
            &kernel,
            k3s_version.as_deref(),
            &Digest::of(&lock_bytes),
            reporter,
            &mut staging,
        )?;
    }
    let lock_file = staging.create(&plan.out_dir.join("build-image.lock"), "lock")?;
    std::io::Write::write_all(staging.file(lock_file), &lock_bytes)?;
    let artifacts = staging.commit()?;
    let push = publish::push(g, &plan, &artifacts, reporter)?;

    Ok(BuildResult {
        flavor: plan.flavor.name.clone(),
        release: plan.flavor.release.clone(),
        arch: plan.arch.clone(),
        version: plan.version.clone(),
        kernel,
        k3s_version,
        formats: plan.formats.iter().map(|f| f.name()).collect(),
        artifacts,
        push,
        rpi,
    })
}

impl Output for BuildResult {
    fn kind(&self) -> &'static str {
        "BuildResult"
    }

    fn text(&self) -> String {
        let mut t: String = self.artifacts.iter().map(|a| a.line() + "\n").collect();
        if let Some(p) = &self.push {
            t.push_str(&format!("{}@{}\n", p.reference, p.digest));
        }
        t
    }
}

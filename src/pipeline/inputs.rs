//! The second stage: every input of the build resolved to a digest before
//! anything big is downloaded — the base, components and k3s images to
//! their manifests and configs, the flavor's repositories to verified
//! package indexes, and the flavor's packages checked against them. A
//! registry that is not reachable, a tag that does not exist or a package
//! that is not in the archive fails here, in seconds.

use anyhow::{Context, Result};

use super::plan::{BaseSource, BuildPlan};
use crate::apt;
use crate::oci::{ImageSource, Puller, ResolvedImage};
use crate::progress::{Event, Reporter};

/// The build's inputs, each pinned.
pub struct Inputs {
    /// `None` when the base is bootstrapped from the archive.
    pub base: Option<ResolvedImage>,
    pub components: ResolvedImage,
    pub k3s: Option<ResolvedImage>,
    /// The flavor's repositories, in flavor order, metadata verified.
    pub repositories: Vec<apt::Repository>,
    /// The flavor's packages for the architecture.
    pub packages: Vec<String>,
}

pub fn resolve(
    plan: &BuildPlan,
    puller: &Puller<'_>,
    fetcher: &apt::Fetcher,
    reporter: &dyn Reporter,
) -> Result<Inputs> {
    let stage = |m: String| reporter.event(Event::Stage { message: m });
    let image = |src: &ImageSource, what: &str, fix: &str| -> Result<ResolvedImage> {
        stage(format!("resolving the {what} image {src}"));
        puller
            .resolve(src, &plan.platform)
            .with_context(|| format!("resolving the {what} image {src} ({fix})"))
    };
    let base = match &plan.base {
        BaseSource::Archive => None,
        BaseSource::Image(src) => Some(image(
            src,
            "base",
            "pass --base with a reachable image, or --base archive",
        )?),
    };
    let components = image(
        &plan.components,
        "components",
        "build it with `cargo xtask components`, or pass --components",
    )?;
    let k3s = match &plan.k3s {
        Some(src) => Some(image(
            src,
            "k3s",
            "pass --k3s-image for a mirror, or --without k3s",
        )?),
        None => None,
    };

    let flavor = &plan.flavor;
    stage(format!(
        "reading the package indexes of {}",
        flavor
            .repositories
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let keyrings = flavor
        .repositories
        .iter()
        .map(|r| {
            let mut bytes = Vec::new();
            for k in &r.keyrings {
                bytes.extend(flavor.keyring(k)?);
            }
            apt::Keyring::from_bytes(&bytes, &r.keyrings.join(", "))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sources = Vec::new();
    for (r, k) in flavor.repositories.iter().zip(&keyrings) {
        let url = r.url.get(&plan.arch).with_context(|| {
            format!(
                "flavor {}: repository {} has no URL for {}",
                flavor.origin, r.name, plan.arch
            )
        })?;
        for suite in &r.suites {
            sources.push((
                apt::Source {
                    url: url.clone(),
                    suite: suite.clone(),
                    components: r.components.clone(),
                    arch: plan.arch.clone(),
                },
                k,
            ));
        }
    }
    // A rebuild into the same directory must not go back to an older
    // Release than the lock file it replaces records.
    let seen = apt::LockRecord::read(&plan.out_dir.join("build-image.lock"))?;
    let repositories = apt::load_repositories(fetcher, &sources, &puller.cache, now(), Some(&seen))
        .with_context(|| format!("reading the {} flavor's repositories", flavor.name))?;
    let mut packages = flavor.packages_for(&plan.arch);
    if plan.wants(crate::cli::build::Format::Rpi) {
        if let Some(rpi) = &flavor.rpi {
            for p in &rpi.packages {
                if !packages.contains(p) {
                    packages.push(p.clone());
                }
            }
        }
    }
    apt::check_available(&repositories, &packages)
        .with_context(|| format!("flavor {} ({})", flavor.name, flavor.origin))?;
    Ok(Inputs {
        base,
        components,
        k3s,
        repositories,
        packages,
    })
}

/// Seconds since the epoch, for signature expiry checks (never
/// `SOURCE_DATE_EPOCH`: a reproducible build still checks today's trust).
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

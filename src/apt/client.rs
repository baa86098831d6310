//! The whole `apt-get install --no-install-recommends` of a build in one
//! call: verified metadata from every source, resolution against the
//! image's dpkg status, verified downloads, installation into the tree.

use anyhow::{anyhow, Context, Result};

use super::fetch::{Fetcher, Repository, Source};
use super::freshness::{LockRecord, ReleaseStamp};
use super::install::{install_debs, installed_packages, InstallOptions};
use super::packages::Package;
use super::release::Keyring;
use super::resolve::{resolve, ResolveOptions};
use crate::cache::BlobCache;
use crate::tree::{ContentStore, FsTree};

/// What to install and from where.
#[derive(Debug, Clone, Copy)]
pub struct InstallRequest<'a> {
    /// Each source with the keyring that signs it. All must be for the
    /// same architecture; a package in several sources comes from the
    /// first that has the chosen version.
    pub sources: &'a [(Source, &'a Keyring)],
    /// Package names, optionally `name=version`.
    pub packages: &'a [String],
    /// Also install every `Priority: required` and `Essential: yes`
    /// package: what debootstrap's minbase installs, to build a base
    /// system from the archive alone.
    pub required: bool,
    /// Seconds since the epoch, for signature and `Valid-Until` checks.
    pub now: i64,
    /// mtime of the dpkg database files (`SOURCE_DATE_EPOCH`).
    pub mtime: i64,
    /// The Releases the lock file being replaced recorded: none of the
    /// sources may go back to an older one.
    pub seen: Option<&'a LockRecord>,
}

/// What [`install_packages`] installed, and the Release of each source
/// (what a lock file records).
#[derive(Debug, Clone)]
pub struct Installed {
    /// In install order, each with its pinned sha256.
    pub packages: Vec<Package>,
    pub releases: Vec<ReleaseStamp>,
}

/// Installs `req.packages` and their dependencies into `tree`; returns the
/// installed packages in install order and the sources' Releases.
pub fn install_packages(
    fetcher: &Fetcher,
    req: &InstallRequest<'_>,
    cache: &BlobCache,
    tree: &mut FsTree,
    store: &mut ContentStore,
) -> Result<Installed> {
    let (first, _) = req
        .sources
        .first()
        .ok_or_else(|| anyhow!("no package sources configured"))?;
    let arch = first.arch.clone();
    if let Some((s, _)) = req.sources.iter().find(|(s, _)| s.arch != arch) {
        return Err(anyhow!(
            "source {} is for {}, the others for {arch}",
            s.url,
            s.arch
        ));
    }
    let repos = req
        .sources
        .iter()
        .map(|(s, k)| {
            let repo = fetcher.load(s, k, cache, req.now)?;
            if let Some(lock) = req.seen {
                lock.check(
                    s,
                    &repo.release,
                    &format!(
                        "{}/dists/{}/InRelease",
                        s.url.trim_end_matches('/'),
                        s.suite
                    ),
                )?;
            }
            Ok(repo)
        })
        .collect::<Result<Vec<Repository>>>()?;
    let installed = installed_packages(tree, store)?;
    let all: Vec<Package> = repos
        .iter()
        .flat_map(|r| r.packages.iter().cloned())
        .collect();
    let names: Vec<String> = req.sources.iter().map(|(s, _)| s.describe()).collect();
    let opts = ResolveOptions {
        arch,
        source: names.join(", "),
    };
    let mut wanted: Vec<String> = req.packages.to_vec();
    if req.required {
        wanted.extend(
            all.iter()
                .filter(|p| p.essential || p.priority.as_deref() == Some("required"))
                .map(|p| p.name.clone()),
        );
        wanted.sort();
        wanted.dedup();
    }
    let plan = resolve(&wanted, &all, &installed, &opts)?;
    let mut debs = Vec::new();
    for p in &plan {
        let repo = repos
            .iter()
            .find(|r| {
                r.packages
                    .iter()
                    .any(|q| q.name == p.name && q.version == p.version && q.sha256 == p.sha256)
            })
            .ok_or_else(|| anyhow!("package {} {}: no source has it", p.name, p.version))?;
        debs.extend(fetcher.fetch_debs(repo, std::slice::from_ref(p), cache)?);
    }
    install_debs(tree, store, &debs, &InstallOptions { mtime: req.mtime })
        .context("installing packages")?;
    Ok(Installed {
        packages: plan,
        releases: repos
            .iter()
            .map(|r| ReleaseStamp::new(&r.source, &r.release))
            .collect(),
    })
}

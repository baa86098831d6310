//! The `apt-get update && apt-get install --no-install-recommends` of a
//! build, in two calls: [`load_repositories`] fetches and verifies every
//! source's metadata (cheap: a build does it before downloading anything
//! else, so a wrong URL or a missing package fails in seconds), and
//! [`install_packages`] resolves against the image's dpkg status, downloads
//! verified `.deb`s and installs them into the tree.

use anyhow::{anyhow, bail, Context, Result};

use super::fetch::{Fetcher, Repository, Source};
use super::freshness::{LockRecord, ReleaseStamp};
use super::install::{install_debs, installed_packages, InstallOptions};
use super::packages::Package;
use super::release::Keyring;
use super::resolve::{resolve, ResolveOptions};
use crate::cache::BlobCache;
use crate::tree::{ContentStore, FsTree};

/// Fetches and verifies the metadata of every source (each with the
/// keyring that signs it); all must be for the same architecture. `now`
/// is seconds since the epoch, for signature and `Valid-Until` checks;
/// `seen` holds the Releases the lock file being replaced recorded: no
/// source may go back to an older one.
pub fn load_repositories(
    fetcher: &Fetcher,
    sources: &[(Source, &Keyring)],
    cache: &BlobCache,
    now: i64,
    seen: Option<&LockRecord>,
) -> Result<Vec<Repository>> {
    let (first, _) = sources
        .first()
        .ok_or_else(|| anyhow!("no package sources configured"))?;
    if let Some((s, _)) = sources.iter().find(|(s, _)| s.arch != first.arch) {
        bail!(
            "source {} is for {}, the others for {}",
            s.url,
            s.arch,
            first.arch
        );
    }
    sources
        .iter()
        .map(|(s, k)| {
            let repo = fetcher.load(s, k, cache, now)?;
            if let Some(lock) = seen {
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
        .collect()
}

/// Checks that every requested package (`name` or `name=version`) is in
/// one of `repos`, by name or as a virtual package some package provides,
/// naming every one that is not.
pub fn check_available(repos: &[Repository], packages: &[String]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|p| p.split_once('=').map_or(p.as_str(), |(n, _)| n))
        .filter(|name| {
            !repos
                .iter()
                .flat_map(|r| &r.packages)
                .any(|p| p.name == *name || p.provides.iter().any(|d| d.name == *name))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let where_: Vec<String> = repos
        .iter()
        .map(|r| format!("{} {}", r.source.url, r.source.describe()))
        .collect();
    bail!(
        "package{} {} not found in {} for {}",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        where_.join("; "),
        repos.first().map_or("", |r| r.source.arch.as_str())
    )
}

/// What to install.
#[derive(Debug, Clone, Copy)]
pub struct InstallRequest<'a> {
    /// Package names, optionally `name=version`. A package in several
    /// repositories comes from the first that has the chosen version.
    pub packages: &'a [String],
    /// Also install every `Priority: required` and `Essential: yes`
    /// package: what debootstrap's minbase installs, to build a base
    /// system from the archive alone.
    pub required: bool,
    /// mtime of the dpkg database files (`SOURCE_DATE_EPOCH`).
    pub mtime: i64,
}

/// What [`install_packages`] installed, and the Release of each source
/// (what a lock file records).
#[derive(Debug, Clone)]
pub struct Installed {
    /// In install order, each with its pinned sha256.
    pub packages: Vec<Package>,
    pub releases: Vec<ReleaseStamp>,
}

/// Installs `req.packages` and their dependencies from `repos` into
/// `tree`; returns the installed packages in install order and the
/// sources' Releases.
pub fn install_packages(
    fetcher: &Fetcher,
    repos: &[Repository],
    req: &InstallRequest<'_>,
    cache: &BlobCache,
    tree: &mut FsTree,
    store: &mut ContentStore,
) -> Result<Installed> {
    let arch = repos
        .first()
        .map(|r| r.source.arch.clone())
        .ok_or_else(|| anyhow!("no package sources configured"))?;
    let installed = installed_packages(tree, store)?;
    let all = || repos.iter().flat_map(|r| &r.packages);
    let names: Vec<String> = repos.iter().map(|r| r.source.describe()).collect();
    let opts = ResolveOptions {
        arch,
        source: names.join(", "),
    };
    let mut wanted: Vec<String> = req.packages.to_vec();
    if req.required {
        wanted.extend(
            all()
                .filter(|p| p.essential || p.priority.as_deref() == Some("required"))
                .map(|p| p.name.clone()),
        );
        wanted.sort();
        wanted.dedup();
    }
    let plan = resolve(&wanted, all(), &installed, &opts)?;
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

//! Fetching repository metadata and packages over HTTP(S) (or `file://`),
//! with retries, into the [`BlobCache`] by sha256.
//!
//! Only `InRelease` is fetched without a known hash; it is trusted after
//! its signature verifies. Every other file is pinned by the sha256 the
//! verified Release (for indexes) or index (for `.deb`s) gives, and checked
//! while it streams into the cache.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use super::freshness;
use super::packages::{parse_index, Package};
use super::release::{verify_inrelease, Keyring, Release};
use crate::cache::{BlobCache, InsertError};
use crate::oci::Digest;
use crate::retry::{retry, Outcome, RetryPolicy};

/// One apt source: `deb URL SUITE COMPONENTS` for one architecture.
#[derive(Debug, Clone)]
pub struct Source {
    /// Repository root, e.g. `https://deb.debian.org/debian` (no trailing `/`).
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
}

impl Source {
    /// `bookworm main contrib`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.suite, self.components.join(" "))
    }

    fn dists(&self) -> String {
        format!("{}/dists/{}", self.url.trim_end_matches('/'), self.suite)
    }
}

/// A repository whose Release verified, with its packages for the source's
/// architecture (and `all`).
#[derive(Debug, Clone)]
pub struct Repository {
    pub source: Source,
    pub release: Release,
    pub packages: Vec<Package>,
}

const MAX_INRELEASE: u64 = 64 << 20;

/// An HTTP client for apt repositories.
pub struct Fetcher {
    agent: ureq::Agent,
    retry: RetryPolicy,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        Fetcher {
            agent: crate::http::agent(),
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Opens `url` for reading, retrying connection failures, 429 and 5xx.
    fn open(&self, url: &str) -> Result<Box<dyn Read + Send>> {
        if let Some(path) = url.strip_prefix("file://") {
            let f = std::fs::File::open(path).with_context(|| format!("opening {url}"))?;
            return Ok(Box::new(f));
        }
        retry(self.retry, &format!("GET {url}"), |_| {
            match self.agent.get(url).call() {
                Ok(resp) if resp.status().is_success() => Ok(Outcome::Ok(Box::new(
                    resp.into_body().into_reader(),
                )
                    as Box<dyn Read + Send>)),
                Ok(resp) => {
                    let status = resp.status();
                    let e = anyhow!("GET {url}: HTTP {status}");
                    if status.is_server_error() || status.as_u16() == 429 {
                        Ok(Outcome::Transient(e))
                    } else {
                        Err(e)
                    }
                }
                Err(e) => Ok(Outcome::Transient(anyhow!(e))),
            }
        })
    }

    /// Downloads a small file whose hash is not known in advance.
    pub fn get_bytes(&self, url: &str, limit: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(url)?
            .take(limit + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if buf.len() as u64 > limit {
            bail!("{url}: larger than {limit} bytes");
        }
        Ok(buf)
    }

    /// Makes sure the file at `url` with `sha256`/`size` is in the cache;
    /// returns its path. A transfer that breaks or comes up short is
    /// retried; content with another hash is an error naming both.
    pub fn fetch_verified(
        &self,
        url: &str,
        sha256: &str,
        size: u64,
        cache: &BlobCache,
        what: &str,
    ) -> Result<PathBuf> {
        let digest =
            Digest::parse(&format!("sha256:{sha256}")).with_context(|| what.to_string())?;
        if let Some(p) = cache.get_verified(&digest, Some(size))? {
            return Ok(p);
        }
        retry(self.retry, what, |_| {
            let mut reader = self.open(url).with_context(|| what.to_string())?;
            match cache.insert(&digest, Some(size), &mut reader, &mut |_| {}) {
                Ok(p) => Ok(Outcome::Ok(p)),
                Err(e) if e.is_transient() => Ok(Outcome::Transient(anyhow!(e))),
                Err(InsertError::DigestMismatch { expected, actual }) => Err(anyhow!(
                    "{what}: {url} has sha256 {} but the signed index says {}; nothing was cached",
                    actual.hex(),
                    expected.hex()
                )),
                Err(e) => Err(anyhow!(e).context(format!("{what}: fetching {url}"))),
            }
        })
    }

    /// Fetches and verifies `InRelease` (signature, expiry, suite, and not
    /// older than the one the cache saw last, see [`freshness`]), then the
    /// `Packages` index of each component for the source's architecture.
    /// `now` is seconds since the epoch (for expiry checks).
    pub fn load(
        &self,
        source: &Source,
        keyring: &Keyring,
        cache: &BlobCache,
        now: i64,
    ) -> Result<Repository> {
        let url = format!("{}/InRelease", source.dists());
        let bytes = self.get_bytes(&url, MAX_INRELEASE)?;
        let release = verify_inrelease(&bytes, keyring, now, &url)?;
        freshness::check_suite(&release, &source.suite, &url)?;
        freshness::check_cached(cache, source, &release, &url)?;
        let mut packages = Vec::new();
        for comp in &source.components {
            let base = format!("{comp}/binary-{}/Packages", source.arch);
            let (path, file) = ["xz", "gz", ""]
                .iter()
                .map(|ext| {
                    if ext.is_empty() {
                        base.clone()
                    } else {
                        format!("{base}.{ext}")
                    }
                })
                .find_map(|p| release.files.get(&p).map(|f| (p, f)))
                .ok_or_else(|| anyhow!("{url}: lists no {base}(.xz|.gz) for component {comp}"))?;
            let file_url = if release.acquire_by_hash {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{}/{dir}/by-hash/SHA256/{}", source.dists(), file.sha256)
            } else {
                format!("{}/{path}", source.dists())
            };
            let what = format!("{}/{path}", source.dists());
            let cached = self.fetch_verified(&file_url, &file.sha256, file.size, cache, &what)?;
            let raw = std::fs::File::open(&cached)
                .with_context(|| format!("opening {}", cached.display()))?;
            let mut reader: Box<dyn Read> = if path.ends_with(".xz") {
                Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw))
            } else if path.ends_with(".gz") {
                Box::new(flate2::read::MultiGzDecoder::new(raw))
            } else {
                Box::new(raw)
            };
            let mut text = String::new();
            reader
                .read_to_string(&mut text)
                .with_context(|| format!("{what}: decompressing"))?;
            let arch = &source.arch;
            packages.extend(
                parse_index(&text, &what)?
                    .into_iter()
                    .filter(|p| &p.architecture == arch || p.architecture == "all"),
            );
        }
        Ok(Repository {
            source: source.clone(),
            release,
            packages,
        })
    }

    /// Downloads each package's `.deb` into the cache, verified against the
    /// index's size and sha256.
    pub fn fetch_debs(
        &self,
        repo: &Repository,
        pkgs: &[Package],
        cache: &BlobCache,
    ) -> Result<Vec<(Package, PathBuf)>> {
        pkgs.iter()
            .map(|p| {
                let url = format!("{}/{}", repo.source.url.trim_end_matches('/'), p.filename);
                let what = format!("package {} {}", p.name, p.version);
                let path = self.fetch_verified(&url, &p.sha256, p.size, cache, &what)?;
                Ok((p.clone(), path))
            })
            .collect()
    }
}

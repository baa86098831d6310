//! `build-image push DIR... REF`: upgrade layouts into a registry.
//!
//! Order, so that a failure at any point leaves nothing that looks pushed:
//! 1. read and check every layout: its documents, that every blob is there
//!    with its size, and the digest of every blob but the largest (nothing
//!    is sent before that much is known good);
//! 2. blobs, the largest first: skipped when the repository has them,
//!    mounted from another repository of the registry that had them when
//!    this cache last saw them, else uploaded streaming from the layout.
//!    The largest (a root filesystem) is hashed as it streams, which costs
//!    no time of its own (hashing runs several times faster than a registry
//!    takes data in), and its upload is cut off before the last byte if
//!    the content does not match: the registry never stores it, and as it
//!    goes first nothing was uploaded before it;
//! 3. each platform manifest by digest, then (several architectures) the
//!    index over them, by digest;
//! 4. signatures of the index and of every platform manifest (`--sign-key`);
//! 5. last, the tag: the one step that makes the push visible under REF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::{read_layout_checked, LayoutBlob, UpgradeLayout};
use crate::cli::Output;
use crate::oci::layout::verified_blob;
use crate::oci::manifest::{Index, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{BlobPush, BlobSource, Digest, Reference, RegistryClient};
use crate::progress::{Event, Reporter};
use crate::sign::{self, SignatureRecord, SigningKey};

/// What `push --json` prints (`kind: PushResult`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushResult {
    /// `REGISTRY/REPOSITORY:TAG` as pushed.
    pub reference: String,
    /// What the tag points to now: the manifest (one layout) or the index.
    pub digest: Digest,
    pub media_type: String,
    pub version: String,
    /// One per layout.
    pub manifests: Vec<PushedManifest>,
    pub blobs: BlobStats,
    /// Empty without a signing key.
    pub signatures: Vec<SignatureRecord>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushedManifest {
    pub layout: PathBuf,
    /// `linux/amd64`
    pub platform: String,
    pub digest: Digest,
    pub size: u64,
}

/// What the blobs took.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobStats {
    /// Uploaded, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// The repository had them.
    pub existing: usize,
    /// Mounted from another repository of the registry.
    pub mounted: usize,
}

impl Output for PushResult {
    fn kind(&self) -> &'static str {
        "PushResult"
    }

    fn text(&self) -> String {
        format!("{}\n", self.digest)
    }
}

/// Reads and checks all layouts before anything is sent: one architecture
/// each, all of the same image version, flavor and release; blobs up to
/// `hash_max` bytes hashed.
pub fn read_layouts(
    dirs: &[PathBuf],
    hash_max: u64,
    reporter: &dyn Reporter,
) -> Result<Vec<UpgradeLayout>> {
    let mut layouts: Vec<UpgradeLayout> = Vec::new();
    for dir in dirs {
        reporter.event(Event::Stage {
            message: format!("checking {}", dir.display()),
        });
        let l = read_layout_checked(dir, hash_max)?;
        if let Some(other) = layouts.iter().find(|o| o.config.arch == l.config.arch) {
            bail!(
                "{} and {} are both for {}: a push takes one layout per architecture",
                other.dir.display(),
                l.dir.display(),
                l.config.arch
            );
        }
        if let Some(first) = layouts.first() {
            let (a, b) = (&first.config, &l.config);
            if (&a.version, &a.flavor, &a.release) != (&b.version, &b.flavor, &b.release) {
                bail!(
                    "{} is {} {} version {} but {} is {} {} version {}: one reference holds one version of one flavor",
                    first.dir.display(),
                    a.flavor,
                    a.release,
                    a.version,
                    l.dir.display(),
                    b.flavor,
                    b.release,
                    b.version
                );
            }
        }
        layouts.push(l);
    }
    if layouts.is_empty() {
        bail!("no upgrade layout to push");
    }
    Ok(layouts)
}

/// Pushes `dirs` to `target` (a reference with a tag) and, with `key`,
/// signs what it pushed. `locations` remembers which repositories hold
/// which blobs, for mounts.
pub fn push(
    client: &RegistryClient,
    mut locations: Option<&mut BlobLocations>,
    dirs: &[PathBuf],
    target: &Reference,
    key: Option<&SigningKey>,
    reporter: &dyn Reporter,
) -> Result<PushResult> {
    let Some(tag) = target.tag.clone().filter(|_| target.digest.is_none()) else {
        bail!("push {target}: give a tag to push to (REGISTRY/REPOSITORY:TAG), not a digest");
    };
    let layouts = read_layouts(dirs, 0, reporter)?;
    let repo = Reference {
        digest: None,
        ..target.clone()
    };
    // Each blob once, the largest first. All but the largest are hashed
    // now, before anything is sent; the largest as it streams.
    let mut blobs: Vec<(&UpgradeLayout, &LayoutBlob)> = Vec::new();
    for l in &layouts {
        for b in &l.blobs {
            if !blobs.iter().any(|(_, o)| o.desc.digest == b.desc.digest) {
                blobs.push((l, b));
            }
        }
    }
    blobs.sort_by_key(|(_, b)| std::cmp::Reverse(b.desc.size));
    let mut blobs: Vec<(&UpgradeLayout, LayoutBlob)> =
        blobs.into_iter().map(|(l, b)| (l, b.clone())).collect();
    for (l, b) in blobs.iter_mut().skip(1).filter(|(_, b)| !b.verified) {
        verified_blob(&l.dir, &b.desc)?;
        b.verified = true;
    }
    let mut stats = BlobStats::default();
    for (l, b) in &blobs {
        let from = locations
            .as_deref()
            .map(|loc| loc.candidates(&b.desc.digest, &repo.repository))
            .unwrap_or_default();
        let src = BlobSource::File {
            path: &b.path,
            verified: b.verified,
        };
        let how = client
            .push_blob(&repo, &b.desc, src, &from, reporter)
            .with_context(|| format!("pushing {}", l.dir.display()))?;
        match &how {
            BlobPush::Existed => stats.existing += 1,
            BlobPush::Mounted { .. } => stats.mounted += 1,
            BlobPush::Uploaded => {
                stats.uploaded += 1;
                stats.uploaded_bytes += b.desc.size;
            }
        }
        if let Some(loc) = locations.as_deref_mut() {
            loc.record(&b.desc.digest, &repo.repository);
        }
    }
    let mut manifests = Vec::new();
    for l in &layouts {
        client.put_manifest(
            &repo,
            l.manifest_digest.as_str(),
            OCI_MANIFEST,
            &l.manifest_bytes,
        )?;
        manifests.push(PushedManifest {
            layout: l.dir.clone(),
            platform: format!("linux/{}", l.config.arch),
            digest: l.manifest_digest.clone(),
            size: l.manifest_bytes.len() as u64,
        });
    }
    let (top_bytes, media_type) = if layouts.len() == 1 {
        (layouts[0].manifest_bytes.clone(), OCI_MANIFEST)
    } else {
        let mut entries: Vec<_> = layouts.iter().map(|l| l.descriptor()).collect();
        entries.sort_by(|a, b| {
            a.platform
                .as_ref()
                .map(|p| p.to_string())
                .cmp(&b.platform.as_ref().map(|p| p.to_string()))
        });
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: entries,
        };
        let bytes = serde_json::to_vec(&index)?;
        client.put_manifest(&repo, Digest::of(&bytes).as_str(), OCI_INDEX, &bytes)?;
        (bytes, OCI_INDEX)
    };
    let digest = Digest::of(&top_bytes);
    let mut signatures = Vec::new();
    if let Some(key) = key {
        let mut to_sign: Vec<Digest> = manifests.iter().map(|m| m.digest.clone()).collect();
        if layouts.len() > 1 {
            to_sign.insert(0, digest.clone());
        }
        for d in &to_sign {
            reporter.event(Event::Stage {
                message: format!("signing {d}"),
            });
            signatures.push(sign::attach(client, &repo, key, d, reporter)?);
        }
    }
    client.put_manifest(&repo, &tag, media_type, &top_bytes)?;
    if let Some(loc) = locations {
        if let Err(e) = loc.save() {
            tracing::warn!("{e:#}");
        }
    }
    Ok(PushResult {
        reference: format!("{}/{}:{tag}", repo.registry, repo.repository),
        digest,
        media_type: media_type.to_string(),
        version: layouts[0].config.version.clone(),
        manifests,
        blobs: stats,
        signatures,
    })
}

/// Which repositories of a registry held which blobs when this machine
/// last pushed or saw them: the candidates for a cross-repository mount
/// (`DIR/push-locations/<registry>.json` in the cache). Only a hint: a
/// mount that fails falls back to an upload.
#[derive(Debug, Default)]
pub struct BlobLocations {
    path: PathBuf,
    /// digest → repositories, most recent first.
    map: BTreeMap<String, Vec<String>>,
    changed: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct LocationsFile {
    blobs: BTreeMap<String, Vec<String>>,
}

/// How many repositories are remembered per blob.
const MAX_REPOS: usize = 4;

impl BlobLocations {
    /// The records for `registry` under `cache_dir` (none yet is fine; an
    /// unreadable file is ignored, it is only a hint).
    pub fn open(cache_dir: &Path, registry: &str) -> Self {
        let name: String = registry
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = cache_dir
            .join("push-locations")
            .join(format!("{name}.json"));
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LocationsFile>(&b).ok())
            .map(|f| f.blobs)
            .unwrap_or_default();
        BlobLocations {
            path,
            map,
            changed: false,
        }
    }

    /// Repositories other than `repo` that held `d`.
    pub fn candidates(&self, d: &Digest, repo: &str) -> Vec<String> {
        self.map
            .get(d.as_str())
            .map(|v| v.iter().filter(|r| *r != repo).cloned().collect())
            .unwrap_or_default()
    }

    pub fn record(&mut self, d: &Digest, repo: &str) {
        let v = self.map.entry(d.to_string()).or_default();
        if v.first().map(String::as_str) == Some(repo) {
            return;
        }
        v.retain(|r| r != repo);
        v.insert(0, repo.to_string());
        v.truncate(MAX_REPOS);
        self.changed = true;
    }

    pub fn save(&self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let dir = self.path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        serde_json::to_writer(
            tmp.as_file(),
            &LocationsFile {
                blobs: self.map.clone(),
            },
        )?;
        tmp.persist(&self.path)
            .with_context(|| format!("saving {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_remember_recent_repositories_per_blob() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        let mut l = BlobLocations::open(dir.path(), "127.0.0.1:5000");
        assert!(l.candidates(&d, "a").is_empty());
        for r in ["a", "b", "c", "d", "e", "b"] {
            l.record(&d, r);
        }
        assert_eq!(l.candidates(&d, "zz"), ["b", "e", "d", "c"]);
        assert_eq!(l.candidates(&d, "b"), ["e", "d", "c"]);
        l.save().unwrap();
        assert!(dir
            .path()
            .join("push-locations/127.0.0.1_5000.json")
            .is_file());
        let again = BlobLocations::open(dir.path(), "127.0.0.1:5000");
        assert_eq!(again.candidates(&d, "zz"), ["b", "e", "d", "c"]);
        let other = BlobLocations::open(dir.path(), "127.0.0.1:5001");
        assert!(other.candidates(&d, "zz").is_empty());
    }
}

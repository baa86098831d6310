//! `build-image.lock`: every input of a build, pinned by digest.

use serde::Serialize;

use crate::apt::Package;
use crate::oci::{Digest, ResolvedImage};

/// The lock file's document (`kind: BuildLock`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildLock {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub flavor: String,
    pub release: String,
    pub arch: String,
    pub version: String,
    pub base: LockedBase,
    pub packages: Vec<LockedPackage>,
    pub components: Option<LockedImage>,
    /// `null` for a build without k3s.
    pub k3s: Option<LockedImage>,
    /// The kernel version the image boots.
    pub kernel: Option<String>,
    /// The Release of each package source (url, suite, codename, date). A
    /// rebuild refuses an older one. Not part of [`BuildLock::seed`]: a
    /// newer Release listing the same packages builds the same image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<serde_json::Value>,
}

/// Where the base came from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LockedBase {
    /// `{"archive": true}`: bootstrapped from the flavor's archive (its
    /// packages are in `packages`).
    Archive {
        archive: bool,
    },
    Image(LockedImage),
}

/// An image, as resolved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockedImage {
    pub image: String,
    pub platform: String,
    pub manifest_digest: Option<Digest>,
    pub index_digest: Option<Digest>,
    /// k3s only: the version its tag names (`v1.31.4+k3s1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl LockedImage {
    pub fn of(img: &ResolvedImage) -> Self {
        LockedImage {
            image: img.source.to_string(),
            platform: img.platform.clone(),
            manifest_digest: img.manifest_digest.clone(),
            index_digest: img.index_digest.clone(),
            version: None,
        }
    }
}

/// A package, pinned by the hash the signed index gave.
#[derive(Debug, Clone, Serialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub digest: String,
}

impl LockedPackage {
    pub fn of(p: &Package) -> Self {
        LockedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            digest: format!("sha256:{}", p.sha256),
        }
    }
}

impl BuildLock {
    pub fn new(flavor: &str, release: &str, arch: &str, version: &str) -> Self {
        BuildLock {
            api_version: crate::API_VERSION,
            kind: "BuildLock",
            flavor: flavor.into(),
            release: release.into(),
            arch: arch.into(),
            version: version.into(),
            base: LockedBase::Archive { archive: true },
            packages: Vec::new(),
            components: None,
            k3s: None,
            kernel: None,
            repositories: Vec::new(),
        }
    }

    /// The document as the file holds it (pretty, newline-terminated).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a lock serialises");
        v.push(b'\n');
        v
    }

    /// A seed derived from every input: disk and partition GUIDs and the
    /// FAT volume id come from it, so the same inputs give the same disk.
    pub fn seed(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let inputs = BuildLock {
            repositories: Vec::new(),
            ..self.clone()
        };
        sha2::Sha256::digest(serde_json::to_vec(&inputs).expect("a lock serialises")).into()
    }
}

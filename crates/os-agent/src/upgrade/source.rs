//! Where an upgrade comes from: a registry (`HOST/REPO:TAG`,
//! `HOST/REPO@sha256:…`, [`super::registry`]) or an OCI image layout on
//! disk (`oci-layout:DIR[:TAG]`, [`Layout`]). Both answer the same
//! questions, so everything after the resolution is the same code.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::artifact::{check_digest, Document, Fetched, MAX_DOCUMENT, OCI_INDEX};
use crate::bail;
use crate::error::{Context, Result};

/// What the agent asks of a source.
pub trait Source {
    /// The reference as given, for messages and records.
    fn describe(&self) -> String;
    /// The repository, `HOST/PATH` (for a signature's identity); None for
    /// a layout.
    fn repository(&self) -> Option<(String, String)>;
    /// The manifest or index the reference names.
    fn top(&mut self) -> Result<Fetched>;
    /// A manifest by digest (the platform's, out of an index).
    fn manifest(&mut self, digest: &str) -> Result<Fetched>;
    /// A small blob, read whole and checked against its digest.
    fn small_blob(&mut self, digest: &str, size: u64) -> Result<Vec<u8>>;
    /// A blob from byte `offset` on: the stream and the offset it really
    /// starts at (0 when the source cannot start elsewhere).
    fn open_blob(&mut self, digest: &str, offset: u64) -> Result<(Box<dyn Read + '_>, u64)>;
    /// The cosign signature manifest of `digest`, if there is one.
    fn signatures(&mut self, digest: &str) -> Result<Option<Fetched>>;
}

/// The digest of `bytes` as `sha256:HEX`.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(d: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 2 * d.len());
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `oci-layout:DIR[:TAG]`.
pub const LAYOUT_PREFIX: &str = "oci-layout:";

/// An OCI image layout: `index.json` and `blobs/sha256/`.
pub struct Layout {
    dir: PathBuf,
    tag: Option<String>,
}

impl Layout {
    /// `spec` is what follows `oci-layout:`: `DIR` or `DIR:TAG`.
    pub fn open(spec: &str) -> Result<Layout> {
        let (dir, tag) = match spec.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
            _ => (spec, None),
        };
        let dir = PathBuf::from(dir);
        if !dir.join("index.json").is_file() {
            bail!(
                "{LAYOUT_PREFIX}{}: no index.json: not an OCI image layout",
                dir.display()
            );
        }
        Ok(Layout { dir, tag })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        check_digest(digest, &format!("{LAYOUT_PREFIX}{}", self.dir.display()))?;
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]))
    }

    fn read_checked(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > max {
            bail!("{}: larger than {max} bytes", path.display());
        }
        let got = sha256(&bytes);
        if got != digest {
            bail!(
                "{}: content has digest {got}, expected {digest}",
                path.display()
            );
        }
        Ok(bytes)
    }

    fn index(&self) -> Result<Document> {
        let path = self.dir.join("index.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Fetched {
            bytes,
            digest: path.display().to_string(),
            media_type: OCI_INDEX.into(),
        }
        .parse("index")
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Source for Layout {
    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("{LAYOUT_PREFIX}{}:{t}", self.dir.display()),
            None => format!("{LAYOUT_PREFIX}{}", self.dir.display()),
        }
    }

    fn repository(&self) -> Option<(String, String)> {
        None
    }

    fn top(&mut self) -> Result<Fetched> {
        let index = self.index()?;
        // Signature manifests are tagged `sha256-….sig`: never the upgrade.
        fn named(m: &super::artifact::Descriptor) -> Option<&str> {
            m.annotations.get(REF_NAME).map(String::as_str)
        }
        let candidates: Vec<_> = index
            .manifests
            .iter()
            .filter(|m| !named(m).is_some_and(|n| n.ends_with(".sig")))
            .filter(|m| match &self.tag {
                Some(t) => named(m) == Some(t.as_str()),
                None => true,
            })
            .collect();
        let d = match candidates[..] {
            [one] => one,
            [] => bail!("{}: no such manifest in index.json", self.describe()),
            _ => bail!(
                "{}: index.json lists {} manifests; name one with {LAYOUT_PREFIX}DIR:TAG",
                self.describe(),
                candidates.len()
            ),
        };
        let bytes = self.read_checked(&d.digest, MAX_DOCUMENT)?;
        Ok(Fetched {
            bytes,
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
        })
    }

    fn manifest(&mut self, digest: &str) -> Result<Fetched> {
        let bytes = self.read_checked(digest, MAX_DOCUMENT)?;
        Ok(Fetched {
            bytes,
            digest: digest.to_string(),
            media_type: String::new(),
        })
    }

    fn small_blob(&mut self, digest: &str, size: u64) -> Result<Vec<u8>> {
        let b = self.read_checked(digest, size.min(MAX_DOCUMENT))?;
        if b.len() as u64 != size {
            bail!(
                "blob {digest}: {} bytes, its descriptor says {size}",
                b.len()
            );
        }
        Ok(b)
    }

    fn open_blob(&mut self, digest: &str, offset: u64) -> Result<(Box<dyn Read + '_>, u64)> {
        let path = self.blob_path(digest)?;
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start(offset))
            .with_context(|| format!("reading {}", path.display()))?;
        Ok((Box::new(f), offset))
    }

    fn signatures(&mut self, digest: &str) -> Result<Option<Fetched>> {
        let Some(tag) = boot_contract::upgrade::signature_tag(digest) else {
            return Ok(None);
        };
        let index = self.index()?;
        let Some(d) = index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME) == Some(&tag))
        else {
            return Ok(None);
        };
        let bytes = self.read_checked(&d.digest, MAX_DOCUMENT)?;
        Ok(Some(Fetched {
            bytes,
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
        }))
    }
}

/// Opens the source `reference` names.
pub fn open(
    reference: &str,
    root: &crate::fsutil::Root,
    insecure: &[String],
) -> Result<Box<dyn Source>> {
    if let Some(spec) = reference.strip_prefix(LAYOUT_PREFIX) {
        return Ok(Box::new(Layout::open(spec)?));
    }
    let r = super::registry::Reference::parse(reference)?;
    Ok(Box::new(super::registry::Registry::new(r, root, insecure)?))
}

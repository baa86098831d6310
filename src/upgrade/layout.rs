//! The upgrade artifact as an OCI image layout directory: written by the
//! build (`--format upgrade`), read and checked by `push`.
//!
//! ```text
//! DIR/oci-layout               {"imageLayoutVersion":"1.0.0"}
//! DIR/index.json               one manifest, ref.name = the image version
//! DIR/blobs/sha256/<hex>       manifest, config, root SquashFS, kernel, initrd
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use boot_contract::upgrade::{self as contract, Config};

use crate::oci::layout::{verified_blob, REF_NAME};
use crate::oci::manifest::{Index, Manifest, Platform, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Descriptor, Digest};

/// `oci-layout`'s content.
const LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
pub const REVISION_ANNOTATION: &str = "org.opencontainers.image.revision";
pub const SOURCE_ANNOTATION: &str = "org.opencontainers.image.source";

/// The manifest's `org.opencontainers.image.*` annotations.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    pub version: String,
    /// RFC 3339, as [`Config::created`].
    pub created: String,
    /// The source revision the image was built from (a commit id).
    pub revision: Option<String>,
    /// Where that source lives (a repository URL).
    pub source: Option<String>,
}

impl Annotations {
    fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            (VERSION_ANNOTATION.to_string(), self.version.clone()),
            (CREATED_ANNOTATION.to_string(), self.created.clone()),
        ]);
        if let Some(r) = &self.revision {
            m.insert(REVISION_ANNOTATION.into(), r.clone());
        }
        if let Some(s) = &self.source {
            m.insert(SOURCE_ANNOTATION.into(), s.clone());
        }
        m
    }
}

/// The payload of an artifact: the root SquashFS as a file (linked into
/// the layout, not copied, where the filesystem allows), kernel and initrd.
pub struct ArtifactFiles<'a> {
    pub rootfs: &'a Path,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
}

/// What [`write_layout`] wrote.
#[derive(Debug, Clone)]
pub struct WrittenLayout {
    /// The manifest, with its platform.
    pub manifest: Descriptor,
    /// The bytes of every blob (what a push uploads at most).
    pub size: u64,
    /// Whether the root SquashFS was hardlinked (else copied).
    pub rootfs_linked: bool,
}

/// The platform of an upgrade artifact for `arch`.
pub fn platform(arch: &str) -> Platform {
    Platform {
        architecture: arch.to_string(),
        os: "linux".into(),
        variant: None,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn rfc3339(t: i64) -> String {
    let (y, m, d, h, mi, s) = crate::apt::release::civil(t);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn descriptor(media_type: &str, digest: Digest, size: u64, title: Option<&str>) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: title
            .map(|t| BTreeMap::from([(contract::TITLE_ANNOTATION.to_string(), t.to_string())])),
    }
}

fn write_blob(blobs: &Path, data: &[u8]) -> Result<(Digest, u64)> {
    let d = Digest::of(data);
    let p = blobs.join(d.hex());
    fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    Ok((d, data.len() as u64))
}

/// Makes `dst` the same file as `src`: a hardlink, or where the
/// filesystem cannot link, a copy (the kernel may share its extents).
/// Returns whether it linked.
fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::debug!(
                "linking {} to {}: {e}; copying instead",
                src.display(),
                dst.display()
            );
            fs::copy(src, dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            Ok(false)
        }
    }
}

/// Writes the artifact into `dir` (an empty directory): the config as
/// given (its `rootfsDigest`/`rootfsSize` must describe `files.rootfs`),
/// the layers, the manifest, `index.json` naming it by version, and
/// `oci-layout`. The same inputs give the same bytes.
pub fn write_layout(
    dir: &Path,
    config: &Config,
    files: &ArtifactFiles,
    annotations: &Annotations,
) -> Result<WrittenLayout> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let rootfs_digest = Digest::parse(&config.rootfs_digest).context("config rootfsDigest")?;
    let len = fs::metadata(files.rootfs)
        .with_context(|| format!("root filesystem {}", files.rootfs.display()))?
        .len();
    if len != config.rootfs_size {
        bail!(
            "root filesystem {}: {len} bytes, but the config says rootfsSize {}",
            files.rootfs.display(),
            config.rootfs_size
        );
    }
    let rootfs_linked = link_or_copy(files.rootfs, &blobs.join(rootfs_digest.hex()))?;
    let (kd, ks) = write_blob(&blobs, files.kernel)?;
    let (id, is) = write_blob(&blobs, files.initrd)?;
    let config_bytes = serde_json::to_vec(config)?;
    let (cd, cs) = write_blob(&blobs, &config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(contract::ARTIFACT_TYPE.into()),
        config: descriptor(contract::CONFIG_MEDIA_TYPE, cd, cs, None),
        layers: vec![
            descriptor(
                contract::ROOTFS_MEDIA_TYPE,
                rootfs_digest,
                len,
                Some(contract::ROOTFS_TITLE),
            ),
            descriptor(
                contract::KERNEL_MEDIA_TYPE,
                kd,
                ks,
                Some(contract::KERNEL_TITLE),
            ),
            descriptor(
                contract::INITRD_MEDIA_TYPE,
                id,
                is,
                Some(contract::INITRD_TITLE),
            ),
        ],
        annotations: Some(annotations.to_map()),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let (md, ms) = write_blob(&blobs, &manifest_bytes)?;
    let mut entry = descriptor(OCI_MANIFEST, md, ms, None);
    entry.platform = Some(platform(&config.arch));
    let mut listed = entry.clone();
    listed.annotations = Some(BTreeMap::from([(
        REF_NAME.to_string(),
        config.version.clone(),
    )]));
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: vec![listed],
    };
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)
        .with_context(|| format!("writing {}/index.json", dir.display()))?;
    fs::write(dir.join("oci-layout"), LAYOUT_MARKER)
        .with_context(|| format!("writing {}/oci-layout", dir.display()))?;
    Ok(WrittenLayout {
        manifest: entry,
        size: len + ks + is + cs + ms,
        rootfs_linked,
    })
}

/// The path of a blob inside a layout whose file has the descriptor's size
/// (its content is not read).
fn sized_blob(dir: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let path = dir.join("blobs/sha256").join(desc.digest.hex());
    let len = fs::metadata(&path)
        .with_context(|| {
            format!(
                "blob {} of layout {}: {}",
                desc.digest,
                dir.display(),
                path.display()
            )
        })?
        .len();
    if len != desc.size {
        bail!(
            "blob {} of layout {}: {len} bytes, the descriptor says {}",
            desc.digest,
            dir.display(),
            desc.size
        );
    }
    Ok(path)
}

/// An upgrade layout, read and checked.
#[derive(Debug, Clone)]
pub struct UpgradeLayout {
    pub dir: PathBuf,
    /// The manifest's bytes, as pushed.
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: Config,
    /// The config and the layers, with their files.
    pub blobs: Vec<LayoutBlob>,
}

/// A blob of a layout and its file.
#[derive(Debug, Clone)]
pub struct LayoutBlob {
    pub desc: Descriptor,
    pub path: PathBuf,
    /// Hashed and found to match; otherwise only its size was checked (see
    /// [`read_layout_checked`]).
    pub verified: bool,
}

impl UpgradeLayout {
    /// The manifest's descriptor for an index, with its platform.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: self.manifest_digest.clone(),
            size: self.manifest_bytes.len() as u64,
            platform: Some(platform(&self.config.arch)),
            annotations: None,
        }
    }
}

/// Reads the upgrade artifact in layout `dir` and checks all of it: the
/// layout files, that its one manifest is an upgrade artifact whose config
/// this build-image understands and agrees with the layers, and that every
/// blob is there with the size and digest its descriptor gives.
pub fn read_layout(dir: &Path) -> Result<UpgradeLayout> {
    read_layout_checked(dir, u64::MAX)
}

/// [`read_layout`], hashing only the layers up to `hash_max` bytes; larger
/// ones are checked for presence and size, and left for the caller to
/// verify as it streams them (`verified: false`).
pub fn read_layout_checked(dir: &Path, hash_max: u64) -> Result<UpgradeLayout> {
    let what = format!("upgrade layout {}", dir.display());
    let marker = dir.join("oci-layout");
    let text = match fs::read(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{what}: not an OCI image layout (no {}); expected the {{stem}}.upgrade directory a build writes with --format upgrade",
            marker.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("{what}: reading {}", marker.display())),
    };
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{what}: {} is not valid JSON", marker.display()))?;
    if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        bail!("{what}: field imageLayoutVersion of oci-layout: expected \"1.0.0\"");
    }
    let index_path = dir.join("index.json");
    let raw = fs::read(&index_path)
        .with_context(|| format!("{what}: reading {}", index_path.display()))?;
    let index: Index = serde_json::from_slice(&raw)
        .with_context(|| format!("{what}: {} is malformed", index_path.display()))?;
    let entry = match index.manifests.as_slice() {
        [one] => one,
        other => bail!(
            "{what}: index.json lists {} manifests; an upgrade layout holds exactly one",
            other.len()
        ),
    };
    if entry.media_type != OCI_MANIFEST {
        bail!(
            "{what}: index.json lists a {}; expected an OCI image manifest ({OCI_MANIFEST})",
            entry.media_type
        );
    }
    let manifest_path = verified_blob(dir, entry)?;
    let manifest_bytes =
        fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{what}: manifest {} is malformed", entry.digest))?;
    let mwhat = format!("{what}: manifest {}", entry.digest);
    if manifest.artifact_type.as_deref() != Some(contract::ARTIFACT_TYPE) {
        bail!(
            "{mwhat}: artifactType is {:?}, expected {:?} (not an upgrade artifact)",
            manifest.artifact_type,
            contract::ARTIFACT_TYPE
        );
    }
    if manifest.config.media_type != contract::CONFIG_MEDIA_TYPE {
        bail!(
            "{mwhat}: config mediaType is {:?}, expected {:?}",
            manifest.config.media_type,
            contract::CONFIG_MEDIA_TYPE
        );
    }
    let config_path = verified_blob(dir, &manifest.config)?;
    let config_bytes =
        fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: Config = serde_json::from_slice(&config_bytes).with_context(|| {
        format!(
            "{mwhat}: config {} is not an upgrade config",
            manifest.config.digest
        )
    })?;
    if config.format != contract::CONFIG_FORMAT {
        bail!(
            "{mwhat}: config format {} (this build-image writes and pushes format {})",
            config.format,
            contract::CONFIG_FORMAT
        );
    }
    if !matches!(config.arch.as_str(), "amd64" | "arm64") {
        bail!(
            "{mwhat}: config arch {:?}: expected amd64 or arm64",
            config.arch
        );
    }
    let layer = |media_type: &str| -> Result<&Descriptor> {
        match manifest
            .layers
            .iter()
            .filter(|l| l.media_type == media_type)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [one] => Ok(one),
            found => Err(anyhow!(
                "{mwhat}: {} layers of type {media_type}, expected one",
                found.len()
            )),
        }
    };
    let rootfs = layer(contract::ROOTFS_MEDIA_TYPE)?;
    layer(contract::KERNEL_MEDIA_TYPE)?;
    layer(contract::INITRD_MEDIA_TYPE)?;
    if rootfs.digest.as_str() != config.rootfs_digest || rootfs.size != config.rootfs_size {
        bail!(
            "{mwhat}: the root layer is {} ({} bytes) but the config says {} ({} bytes)",
            rootfs.digest,
            rootfs.size,
            config.rootfs_digest,
            config.rootfs_size
        );
    }
    let mut blobs = vec![LayoutBlob {
        desc: manifest.config.clone(),
        path: config_path,
        verified: true,
    }];
    for l in &manifest.layers {
        let (path, verified) = if l.size <= hash_max {
            (verified_blob(dir, l)?, true)
        } else {
            (sized_blob(dir, l)?, false)
        };
        blobs.push(LayoutBlob {
            desc: l.clone(),
            path,
            verified,
        });
    }
    Ok(UpgradeLayout {
        dir: dir.to_path_buf(),
        manifest_digest: entry.digest.clone(),
        manifest_bytes,
        manifest,
        config,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path, arch: &str) -> (PathBuf, Config) {
        let rootfs = dir.join(format!("root-{arch}.squashfs"));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&rootfs, &data).unwrap();
        let config = Config {
            format: contract::CONFIG_FORMAT,
            version: "1.2.3".into(),
            flavor: "debian".into(),
            release: "bookworm".into(),
            arch: arch.into(),
            kernel: "6.1.0-28-amd64".into(),
            k3s_version: None,
            rootfs_size: data.len() as u64,
            rootfs_digest: Digest::of(&data).to_string(),
            min_slot_size: 1 << 20,
            min_agent_version: "0.1.0".into(),
            lock_digest: Digest::of(b"lock").to_string(),
            created: rfc3339(1_700_000_000),
        };
        (rootfs, config)
    }

    fn write(dir: &Path, out: &str, arch: &str) -> (PathBuf, WrittenLayout) {
        let (rootfs, config) = sample(dir, arch);
        let layout = dir.join(out);
        fs::create_dir(&layout).unwrap();
        let w = write_layout(
            &layout,
            &config,
            &ArtifactFiles {
                rootfs: &rootfs,
                kernel: b"kernel",
                initrd: b"initrd",
            },
            &Annotations {
                version: "1.2.3".into(),
                created: config.created.clone(),
                revision: Some("abc".into()),
                source: None,
            },
        )
        .unwrap();
        (layout, w)
    }

    #[test]
    fn written_layouts_read_back_and_are_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, wa) = write(tmp.path(), "a", "amd64");
        let (b, wb) = write(tmp.path(), "b", "amd64");
        assert_eq!(wa.manifest, wb.manifest);
        assert!(wa.rootfs_linked);
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        for f in ["index.json", "oci-layout"] {
            assert_eq!(fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap());
        }
        let l = read_layout(&a).unwrap();
        assert_eq!(l.manifest_digest, wa.manifest.digest);
        assert_eq!(l.config.arch, "amd64");
        assert_eq!(l.blobs.len(), 4);
        assert_eq!(
            wa.size,
            l.blobs.iter().map(|b| b.desc.size).sum::<u64>() + l.manifest_bytes.len() as u64
        );
        assert!(l.blobs.iter().all(|b| b.verified));
        let partly = read_layout_checked(&a, 50_000).unwrap();
        let verified: Vec<bool> = partly.blobs.iter().map(|b| b.verified).collect();
        // config, root (100,000 bytes), kernel, initrd
        assert_eq!(verified, [true, false, true, true]);
        let m: serde_json::Value = serde_json::from_slice(&l.manifest_bytes).unwrap();
        assert_eq!(m["artifactType"], contract::ARTIFACT_TYPE);
        assert_eq!(
            m["layers"][0]["annotations"][contract::TITLE_ANNOTATION],
            "root.squashfs"
        );
        assert_eq!(m["annotations"][REVISION_ANNOTATION], "abc");
        assert!(m["annotations"].get(SOURCE_ANNOTATION).is_none());
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(a.join("index.json")).unwrap()).unwrap();
        assert_eq!(idx["manifests"][0]["annotations"][REF_NAME], "1.2.3");
    }

    #[test]
    fn damaged_layouts_are_refused_naming_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let err = |dir: &Path| format!("{:#}", read_layout(dir).unwrap_err());

        let e = err(tmp.path());
        assert!(e.contains("not an OCI image layout"), "{e}");

        // A root blob with other content of the same size.
        let (l, _) = write(tmp.path(), "c", "arm64");
        let lay = read_layout(&l).unwrap();
        let (root, root_path) = (lay.blobs[1].desc.clone(), lay.blobs[1].path.clone());
        fs::remove_file(&root_path).unwrap(); // a hardlink: do not touch the source
        let mut data = fs::read(tmp.path().join("root-arm64.squashfs")).unwrap();
        data[10] ^= 1;
        fs::write(&root_path, &data).unwrap();
        let e = err(&l);
        assert!(
            e.contains(root.digest.as_str()) && e.contains("content has digest"),
            "{e}"
        );

        // A missing blob.
        fs::remove_file(&root_path).unwrap();
        let e = err(&l);
        assert!(
            e.contains(root.digest.as_str()) && e.contains("No such file"),
            "{e}"
        );

        // A layout that is not an upgrade artifact.
        let (l, w) = write(tmp.path(), "d", "arm64");
        let mpath = l.join("blobs/sha256").join(w.manifest.digest.hex());
        let text = fs::read_to_string(&mpath).unwrap();
        let other = text.replace(contract::ARTIFACT_TYPE, "application/vnd.example+type");
        fs::write(&mpath, &other).unwrap();
        let d = Digest::of(other.as_bytes());
        fs::rename(&mpath, l.join("blobs/sha256").join(d.hex())).unwrap();
        let idx = fs::read_to_string(l.join("index.json")).unwrap();
        let idx = idx.replace(w.manifest.digest.as_str(), d.as_str()).replace(
            &format!("\"size\":{}", w.manifest.size),
            &format!("\"size\":{}", other.len()),
        );
        fs::write(l.join("index.json"), idx).unwrap();
        let e = err(&l);
        assert!(
            e.contains("artifactType") && e.contains("not an upgrade artifact"),
            "{e}"
        );
    }
}

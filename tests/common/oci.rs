//! Writes OCI image layouts (blobs, config, manifest, index.json), with OCI or
//! Docker v2 schema 2 media types, single images and multi-arch indexes.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::layer::Layer;
use super::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An image to write: its platform, its layers and some config.
#[derive(Clone, Debug)]
pub struct Image {
    pub arch: String,
    pub os: String,
    pub variant: Option<String>,
    pub layers: Vec<Layer>,
    /// Docker v2 schema 2 media types instead of OCI ones.
    pub docker: bool,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: Vec<(String, String)>,
}

impl Image {
    pub fn new(arch: &str, layers: Vec<Layer>) -> Image {
        Image {
            arch: arch.to_string(),
            os: "linux".to_string(),
            variant: if arch == "arm64" {
                Some("v8".to_string())
            } else {
                None
            },
            layers,
            docker: false,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            labels: Vec::new(),
        }
    }

    /// The image for the machine running the tests.
    pub fn host(layers: Vec<Layer>) -> Image {
        Image::new(host_arch(), layers)
    }

    pub fn variant(mut self, v: Option<&str>) -> Image {
        self.variant = v.map(str::to_string);
        self
    }

    pub fn docker_media_types(mut self) -> Image {
        self.docker = true;
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Image {
        self.labels.push((k.to_string(), v.to_string()));
        self
    }

    /// `linux/arm64` (the variant is not part of it).
    pub fn platform(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }

    pub fn config_json(&self) -> Vec<u8> {
        let mut cfg = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.arch,
            "os": self.os,
            "config": {"Env": self.env, "Cmd": self.cmd},
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().enumerate()
                .map(|(i, _)| json!({"created": "2023-11-14T22:13:20Z",
                                     "created_by": format!("test layer {i}")}))
                .collect::<Vec<_>>(),
        });
        if let Some(v) = &self.variant {
            cfg["variant"] = json!(v);
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            cfg["config"]["Labels"] = Value::Object(labels);
        }
        serde_json::to_vec(&cfg).unwrap()
    }

    pub fn layer_media_type(&self, l: &Layer) -> &'static str {
        if self.docker {
            l.compression.docker_media_type()
        } else {
            l.compression.oci_media_type()
        }
    }

    pub fn platform_json(&self) -> Value {
        let mut p = json!({"architecture": self.arch, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// The architecture name (OCI spelling) of the machine running the tests.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("unsupported test host arch {other}"),
    }
}

/// The architecture that is not the host's.
pub fn other_arch() -> &'static str {
    if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// What was written for one image.
#[derive(Clone, Debug)]
pub struct ImageDigests {
    pub manifest: String,
    pub manifest_size: u64,
    pub manifest_json: Vec<u8>,
    pub manifest_media_type: String,
    pub config: String,
    pub config_json: Vec<u8>,
    /// (digest, size, media type) per layer.
    pub layers: Vec<(String, u64, String)>,
    pub platform: String,
}

/// What was written for a multi-arch index.
#[derive(Clone, Debug)]
pub struct IndexDigests {
    pub index: String,
    pub index_json: Vec<u8>,
    pub images: Vec<ImageDigests>,
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    pub dir: PathBuf,
}

impl OciLayout {
    /// Creates (or reopens) a layout at `dir`.
    pub fn create(dir: impl AsRef<Path>) -> OciLayout {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        if !dir.join("index.json").exists() {
            fs::write(
                dir.join("index.json"),
                serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": []}))
                .unwrap(),
            )
            .unwrap();
        }
        OciLayout { dir }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Stores a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        let p = self.blob_path(&d);
        if !p.exists() {
            fs::write(p, bytes).unwrap();
        }
        d
    }

    fn write_image_blobs(&self, image: &Image) -> ImageDigests {
        let config_json = image.config_json();
        let config = self.put_blob(&config_json);
        let mut layers = Vec::new();
        for l in &image.layers {
            let d = self.put_blob(&l.blob);
            assert_eq!(d, l.digest);
            layers.push((d, l.size(), image.layer_media_type(l).to_string()));
        }
        let (mt, cmt) = if image.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": config, "size": config_json.len()},
            "layers": layers.iter().map(|(d, s, m)| json!({"mediaType": m, "digest": d, "size": s}))
                .collect::<Vec<_>>(),
        });
        if !image.docker {
            manifest["annotations"] = json!({"org.opencontainers.image.description": "test image"});
        }
        let manifest_json = serde_json::to_vec(&manifest).unwrap();
        let manifest = self.put_blob(&manifest_json);
        ImageDigests {
            manifest,
            manifest_size: manifest_json.len() as u64,
            manifest_json,
            manifest_media_type: mt.to_string(),
            config,
            config_json,
            layers,
            platform: image.platform(),
        }
    }

    fn add_ref(&self, tag: &str, media_type: &str, digest: &str, size: u64) {
        // skopeo's oci: transport only looks at OCI media types in
        // index.json; a Docker manifest behind such a descriptor is pushed
        // unchanged.
        let media_type = match media_type {
            DOCKER_MANIFEST => OCI_MANIFEST,
            DOCKER_LIST => OCI_INDEX,
            other => other,
        };
        let p = self.dir.join("index.json");
        let mut index: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let manifests = index["manifests"].as_array_mut().unwrap();
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != json!(tag));
        manifests.push(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        fs::write(p, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// Writes a single-platform image and tags it.
    pub fn add_image(&self, tag: &str, image: &Image) -> ImageDigests {
        let d = self.write_image_blobs(image);
        self.add_ref(tag, &d.manifest_media_type, &d.manifest, d.manifest_size);
        d
    }

    /// Writes a multi-arch index over `images` and tags it.
    pub fn add_index(&self, tag: &str, images: &[Image]) -> IndexDigests {
        let docker = images.iter().all(|i| i.docker);
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for img in images {
            let d = self.write_image_blobs(img);
            entries.push(json!({
                "mediaType": d.manifest_media_type,
                "digest": d.manifest,
                "size": d.manifest_size,
                "platform": img.platform_json(),
            }));
            digests.push(d);
        }
        let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
        let index_json = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": entries,
        }))
        .unwrap();
        let index = self.put_blob(&index_json);
        self.add_ref(tag, mt, &index, index_json.len() as u64);
        IndexDigests {
            index,
            index_json,
            images: digests,
        }
    }

    /// Tags an existing manifest blob (OCI media type in index.json).
    pub fn tag(&self, tag: &str, digest: &str) {
        self.tag_as(tag, OCI_MANIFEST, digest);
    }

    /// Tags an existing manifest or index blob of `media_type`.
    pub fn tag_as(&self, tag: &str, media_type: &str, digest: &str) {
        let size = fs::metadata(self.blob_path(digest)).unwrap().len();
        self.add_ref(tag, media_type, digest, size);
    }

    /// The bytes of the Docker manifest list `tag` names, if it names one.
    pub fn docker_list(&self, tag: &str) -> Option<Vec<u8>> {
        let index: Value =
            serde_json::from_slice(&fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let d = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == json!(tag))?;
        let blob = fs::read(self.blob_path(d["digest"].as_str()?)).ok()?;
        let v: Value = serde_json::from_slice(&blob).ok()?;
        (v["mediaType"] == json!(DOCKER_LIST)).then_some(blob)
    }

    /// Whether `tag` in index.json names an index (multi-arch).
    pub fn tag_is_index(&self, tag: &str) -> bool {
        let index: Value =
            serde_json::from_slice(&fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == json!(tag))
            .map(|m| m["mediaType"] == json!(OCI_INDEX) || m["mediaType"] == json!(DOCKER_LIST))
            .unwrap_or_else(|| panic!("tag {tag} not in {}", self.dir.display()))
    }
}

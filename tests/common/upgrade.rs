//! Upgrade artifacts made to the contract of `boot_contract::upgrade`
//! (docs/upgrade.md) for tests of the device side, cosign-format
//! signatures of them, and a device tree on which the real `os-agent`
//! runs with `--root`: the kernel command line, image.json, the two slot
//! partitions as files under `dev/disk/by-partlabel/`, an ESP directory
//! with both GRUB environment blocks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use boot_contract::grubenv::GrubEnv;
use boot_contract::upgrade::{self as contract, Config};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::json;

use super::oci::OciLayout;
use super::{require_tool, sha256_digest};

/// The agent's musl build for this machine (from `cargo xtask
/// components`, which the image tests build anyway).
pub fn agent_binary() -> PathBuf {
    let _ = super::images::components();
    let triple = match std::env::consts::ARCH {
        "x86_64" => "x86_64-unknown-linux-musl",
        _ => "aarch64-unknown-linux-musl",
    };
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join(triple).join("device/os-agent");
    assert!(
        bin.is_file(),
        "{} missing after cargo xtask components",
        bin.display()
    );
    bin
}

/// A real SquashFS of `payload_mib` MiB of incompressible bytes (seeded)
/// and a small file, made with mksquashfs.
pub fn squashfs(dir: &Path, name: &str, payload_mib: usize, seed: u64) -> PathBuf {
    require_tool("mksquashfs", "squashfs-tools");
    let src = dir.join(format!("{name}.tree"));
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(
        src.join("etc/os-release"),
        format!("IMAGE_VERSION={name}\n"),
    )
    .unwrap();
    let mut x = seed | 1;
    let data: Vec<u8> = (0..payload_mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(src.join("payload"), data).unwrap();
    let out = dir.join(format!("{name}.squashfs"));
    let o = Command::new("mksquashfs")
        .arg(&src)
        .arg(&out)
        .args([
            "-noappend",
            "-quiet",
            "-comp",
            "zstd",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// What goes into one artifact.
#[derive(Clone, Debug)]
pub struct Spec {
    pub version: String,
    pub arch: String,
    pub flavor: String,
    pub rootfs: PathBuf,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// Defaults to the root's size.
    pub min_slot_size: Option<u64>,
    pub min_agent_version: String,
}

impl Spec {
    pub fn new(version: &str, rootfs: &Path) -> Spec {
        Spec {
            version: version.into(),
            arch: super::oci::host_arch().into(),
            flavor: "debian".into(),
            rootfs: rootfs.to_path_buf(),
            kernel: format!("kernel of {version}\n").into_bytes(),
            initrd: format!("initrd of {version}\n").into_bytes(),
            min_slot_size: None,
            min_agent_version: "0.1.0".into(),
        }
    }
}

/// Digests of a written artifact.
#[derive(Clone, Debug)]
pub struct Written {
    pub manifest: String,
    pub manifest_size: u64,
    pub rootfs: String,
    pub rootfs_size: u64,
    pub config: Config,
}

fn descriptor(
    layout: &OciLayout,
    media: &str,
    bytes: &[u8],
    title: Option<&str>,
) -> serde_json::Value {
    let d = layout.put_blob(bytes);
    let mut v = json!({"mediaType": media, "digest": d, "size": bytes.len()});
    if let Some(t) = title {
        v["annotations"] = json!({contract::TITLE_ANNOTATION: t});
    }
    v
}

/// Writes the artifact `spec` into `layout` and tags it `tag`.
pub fn write(layout: &OciLayout, tag: &str, spec: &Spec) -> Written {
    let root = fs::read(&spec.rootfs).unwrap();
    let rootfs = descriptor(
        layout,
        contract::ROOTFS_MEDIA_TYPE,
        &root,
        Some(contract::ROOTFS_TITLE),
    );
    let config = Config {
        format: contract::CONFIG_FORMAT,
        version: spec.version.clone(),
        flavor: spec.flavor.clone(),
        release: "bookworm".into(),
        arch: spec.arch.clone(),
        kernel: "6.1.0-test".into(),
        k3s_version: None,
        rootfs_size: root.len() as u64,
        rootfs_digest: rootfs["digest"].as_str().unwrap().into(),
        min_slot_size: spec.min_slot_size.unwrap_or(root.len() as u64),
        min_agent_version: spec.min_agent_version.clone(),
        lock_digest: sha256_digest(b"lock"),
        created: "2026-01-01T00:00:00Z".into(),
    };
    let config_json = serde_json::to_vec(&config).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": contract::ARTIFACT_TYPE,
        "config": descriptor(layout, contract::CONFIG_MEDIA_TYPE, &config_json, None),
        "layers": [
            rootfs,
            descriptor(layout, contract::KERNEL_MEDIA_TYPE, &spec.kernel, Some(contract::KERNEL_TITLE)),
            descriptor(layout, contract::INITRD_MEDIA_TYPE, &spec.initrd, Some(contract::INITRD_TITLE)),
        ],
        "annotations": {"org.opencontainers.image.version": spec.version},
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = layout.put_blob(&bytes);
    layout.tag(tag, &digest);
    Written {
        manifest: digest,
        manifest_size: bytes.len() as u64,
        rootfs: config.rootfs_digest.clone(),
        rootfs_size: config.rootfs_size,
        config,
    }
}

/// An index over `parts` (their platforms from their configs), tagged
/// `tag`; returns its digest.
pub fn index(layout: &OciLayout, tag: &str, parts: &[&Written]) -> String {
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": parts.iter().map(|w| json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest,
            "size": w.manifest_size,
            "platform": {"architecture": w.config.arch, "os": "linux"},
        })).collect::<Vec<_>>(),
    });
    let d = layout.put_blob(&serde_json::to_vec(&idx).unwrap());
    layout.tag_as(tag, "application/vnd.oci.image.index.v1+json", &d);
    d
}

/// `user:pass` in base64, for a Docker config's `auth`.
pub fn base64_pair(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// A P-256 key pair from a seed: the private key and the SPKI PEM public
/// key.
pub fn key(seed: u8) -> (SigningKey, String) {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let mut bytes = [seed; 32];
    bytes[0] = 1;
    let sk = SigningKey::from_bytes(&bytes.into()).unwrap();
    let pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (sk, pem)
}

/// [`key`] as files in `dir`: `upgrade-N.key` (PKCS#8 PEM) and
/// `upgrade-N.pub` (SPKI PEM), as `build-image keygen` writes them.
pub fn key_files(dir: &Path, seed: u8) -> (PathBuf, PathBuf) {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let (sk, pem) = key(seed);
    let private = dir.join(format!("upgrade-{seed}.key"));
    let public = dir.join(format!("upgrade-{seed}.pub"));
    let text = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    if fs::read_to_string(&private).ok().as_deref() != Some(text.as_str()) {
        fs::write(&private, text.as_bytes()).unwrap();
    }
    if fs::read_to_string(&public).ok().as_deref() != Some(pem.as_str()) {
        fs::write(&public, &pem).unwrap();
    }
    (private, public)
}

/// The [`Spec`] of the (single-manifest) upgrade layout `dir`, its root
/// being the layout's blob file.
pub fn spec_of(dir: &Path) -> Spec {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&fs::read(blob(m)).unwrap()).unwrap();
    let cfg: Config =
        serde_json::from_slice(&fs::read(blob(m["config"]["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = |media: &str| {
        let l = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["mediaType"] == media)
            .unwrap_or_else(|| panic!("{}: no {media} layer", dir.display()));
        blob(l["digest"].as_str().unwrap())
    };
    Spec {
        version: cfg.version,
        arch: cfg.arch,
        flavor: cfg.flavor,
        rootfs: layer(contract::ROOTFS_MEDIA_TYPE),
        kernel: fs::read(layer(contract::KERNEL_MEDIA_TYPE)).unwrap(),
        initrd: fs::read(layer(contract::INITRD_MEDIA_TYPE)).unwrap(),
        min_slot_size: Some(cfg.min_slot_size),
        min_agent_version: cfg.min_agent_version,
    }
}

/// cosign's payload for `digest` in repository `docker_reference`
/// (`HOST/PATH`), byte for byte as cosign 2.5 writes it.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// Writes cosign's signature manifest of `digest` (signed with `key`,
/// over `payload`) into `layout`, tagged `sha256-HEX.sig`; returns the
/// tag.
pub fn sign_into(layout: &OciLayout, digest: &str, payload: &[u8], key: &SigningKey) -> String {
    use base64::Engine;
    let sig: Signature = key.sign(payload);
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    let p = layout.put_blob(payload);
    let cfg = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{p}"]}},"config":{{}}}}"#
    );
    let c = layout.put_blob(cfg.as_bytes());
    let m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": cfg.len(), "digest": c},
        "layers": [{
            "mediaType": contract::SIMPLE_SIGNING_MEDIA_TYPE,
            "size": payload.len(),
            "digest": p,
            "annotations": {contract::SIGNATURE_ANNOTATION: b64},
        }],
    });
    let md = layout.put_blob(&serde_json::to_vec(&m).unwrap());
    let tag = contract::signature_tag(digest).unwrap();
    layout.tag(&tag, &md);
    tag
}

/// A device as the agent sees it under `--root`.
pub struct Device {
    pub root: PathBuf,
    pub esp: PathBuf,
    pub slot_size: u64,
}

impl Device {
    /// Running slot `running` with image `version`, both GRUB env copies
    /// saying `default_slot=running`, slots of `slot_size` bytes (the
    /// running one starts with a SquashFS magic).
    pub fn new(dir: &Path, running: &str, version: &str, slot_size: u64) -> Device {
        let root = dir.join("root");
        let esp = dir.join("esp");
        let w = |rel: &str, data: &[u8]| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        };
        w(
            "proc/cmdline",
            format!("BOOT_IMAGE=/{running}/vmlinuz bi.root=root_{running} bi.slot={running}\n")
                .as_bytes(),
        );
        w(
            "usr/lib/build-image/image.json",
            json!({"apiVersion": "build-image/v1", "flavor": "debian", "arch": super::oci::host_arch(), "version": version})
                .to_string()
                .as_bytes(),
        );
        fs::create_dir_all(root.join("var/lib/os-agent")).unwrap();
        fs::create_dir_all(root.join("dev/disk/by-partlabel")).unwrap();
        for s in ["a", "b"] {
            let p = root.join(format!("dev/disk/by-partlabel/root_{s}"));
            let f = fs::File::create(&p).unwrap();
            f.set_len(slot_size).unwrap();
            if s == running {
                std::os::unix::fs::FileExt::write_all_at(&f, b"hsqs", 0).unwrap();
            }
        }
        fs::create_dir_all(esp.join(running)).unwrap();
        fs::write(esp.join(running).join("vmlinuz"), b"running kernel").unwrap();
        fs::write(esp.join(running).join("initrd"), b"running initrd").unwrap();
        let d = Device {
            root,
            esp,
            slot_size,
        };
        d.set_env(running, "");
        d
    }

    pub fn set_env(&self, default: &str, trial: &str) {
        let mut e = GrubEnv::new();
        e.set("default_slot", default).unwrap();
        e.set("trial_slot", trial).unwrap();
        let block = e.encode().unwrap();
        for n in ["grubenv", "grubenv.bak"] {
            fs::write(self.esp.join(n), block).unwrap();
        }
    }

    /// Both env copies, parsed.
    pub fn env(&self) -> (GrubEnv, GrubEnv) {
        let r = |n: &str| GrubEnv::parse(&fs::read(self.esp.join(n)).unwrap()).unwrap();
        (r("grubenv"), r("grubenv.bak"))
    }

    pub fn slot(&self, s: &str) -> PathBuf {
        self.root.join(format!("dev/disk/by-partlabel/root_{s}"))
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// Runs the agent on this device: `args` then `--root`, `--esp` where
    /// the command takes them.
    pub fn agent(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("--root").arg(&self.root);
        if args.first() != Some(&"reset") {
            cmd.arg("--esp").arg(&self.esp);
        }
        cmd.env_remove("OS_AGENT_FAULT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    pub fn status(&self, bin: &Path) -> serde_json::Value {
        let o = self.agent(bin, &["status", "--json"], &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.file("var/lib/os-agent/state.json")).unwrap())
            .unwrap()
    }
}

/// The command of the system-upgrade-controller Plan in deploy/ with its
/// `$(VAR)` references filled in.
pub fn plan_command(image: &str, version: &str) -> Vec<String> {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/system-upgrade/os-upgrade-plan.yaml"),
    )
    .unwrap();
    let plan: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let up = &plan["spec"]["upgrade"];
    let mut argv: Vec<String> = up["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(up["args"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for a in &mut argv {
        *a = a
            .replace("$(OS_IMAGE)", image)
            .replace("$(SYSTEM_UPGRADE_PLAN_LATEST_VERSION)", version);
    }
    argv
}

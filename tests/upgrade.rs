//! The upgrade artifact against real tools: its OCI layout read and copied
//! by skopeo, `build-image push` to a real registry (htpasswd and bearer
//! auth, skipped and mounted blobs, several architectures as one index,
//! streaming), refused inputs that push nothing, and signatures checked by
//! the real clients (trixie's skopeo 1.18 with a `sigstoreSigned` policy,
//! cosign 2.5).
//!
//! The artifacts are small fakes written with the library's own layout
//! writer; tests/build_image.rs checks the layout a real build writes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use boot_contract::upgrade::{Config, CONFIG_FORMAT};
use build_image::oci::Digest;
use build_image::upgrade::{layout, write_layout, Annotations, ArtifactFiles};
use common::*;
use serde_json::Value;

/// Bytes that do not compress, as a SquashFS.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An upgrade layout for `arch` at `dir/NAME`, with a root filesystem of
/// `rootfs` (a file written by the caller). Returns the layout and its
/// manifest digest.
fn layout_with_rootfs(
    dir: &Path,
    name: &str,
    arch: &str,
    version: &str,
    rootfs: &Path,
) -> (PathBuf, String) {
    let (digest, size) = build_image::cache::hash_file(rootfs).unwrap();
    let config = Config {
        format: CONFIG_FORMAT,
        version: version.into(),
        flavor: "debian".into(),
        release: "bookworm".into(),
        arch: arch.into(),
        kernel: format!("6.1.0-28-{arch}"),
        k3s_version: Some("v1.31.4+k3s1".into()),
        rootfs_size: size,
        rootfs_digest: digest.to_string(),
        min_slot_size: size.next_multiple_of(1 << 20),
        min_agent_version: "0.1.0".into(),
        lock_digest: Digest::of(b"lock").to_string(),
        created: "2025-10-09T08:53:20Z".into(),
    };
    let out = dir.join(name);
    fs::create_dir_all(&out).unwrap();
    let w = write_layout(
        &out,
        &config,
        &ArtifactFiles {
            rootfs,
            kernel: &noise(40_000, arch.len() as u64),
            initrd: &noise(30_000, 7 + arch.len() as u64),
        },
        &Annotations {
            version: version.into(),
            created: config.created.clone(),
            revision: Some("0123abcd".into()),
            source: Some("https://example.org/os.git".into()),
        },
    )
    .unwrap();
    (out, w.manifest.digest.to_string())
}

/// A small upgrade layout (a 1 MiB root of noise).
fn fake_layout(dir: &Path, name: &str, arch: &str, version: &str) -> (PathBuf, String) {
    let rootfs = dir.join(format!("{name}.squashfs"));
    fs::create_dir_all(rootfs.parent().unwrap()).unwrap();
    fs::write(
        &rootfs,
        noise(1 << 20, name.len() as u64 * 31 + arch.len() as u64),
    )
    .unwrap();
    layout_with_rootfs(dir, name, arch, version, &rootfs)
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\n--- stderr\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

fn skopeo(args: &[&str]) -> std::process::Output {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// The manifest digest an OCI layout's index.json lists (one entry).
fn listed_digest(layout: &Path) -> String {
    let idx: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{idx}");
    m[0]["digest"].as_str().unwrap().to_string()
}

/// The paths of the `method` requests the proxy saw that got past auth
/// (a first request without credentials meets a 401 challenge).
fn methods(p: &Proxy, method: &str) -> Vec<String> {
    p.requests()
        .into_iter()
        .filter(|r| r.method == method && r.status != 401)
        .map(|r| r.path)
        .collect()
}

// ------------------------------------------------------------- the layout

#[test]
fn the_layout_is_read_and_copied_by_skopeo_with_its_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = fake_layout(tmp.path(), "a.upgrade", "amd64", "1.0.0");
    let oci = format!("oci:{}:1.0.0", dir.display());
    let raw = skopeo(&["inspect", "--raw", &oci]).stdout;
    assert_eq!(sha256_digest(&raw), digest);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["artifactType"], boot_contract::upgrade::ARTIFACT_TYPE);
    assert_eq!(
        m["config"]["mediaType"],
        boot_contract::upgrade::CONFIG_MEDIA_TYPE
    );
    let titles: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(titles, ["root.squashfs", "vmlinuz", "initrd.img"]);
    for k in ["version", "created", "revision", "source"] {
        assert!(
            m["annotations"][format!("org.opencontainers.image.{k}")].is_string(),
            "{k}: {m}"
        );
    }
    let config: Value =
        serde_json::from_slice(&skopeo(&["inspect", "--config", "--raw", &oci]).stdout).unwrap();
    assert_eq!(config["arch"], "amd64");
    assert_eq!(config["version"], "1.0.0");

    // oci → oci keeps every byte (no re-serialisation, no recompression).
    let copy = tmp.path().join("copy");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        &oci,
        &format!("oci:{}:1.0.0", copy.display()),
    ]);
    assert_eq!(listed_digest(&copy), digest);
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(blob(&copy, d), blob(&dir, d), "layer {d}");
    }
    // And build-image reads the copy as an upgrade layout.
    let back = layout::read_layout(&copy).unwrap();
    assert_eq!(back.manifest_digest.as_str(), digest);
    // `inspect` (and --base) say what it is instead of a platform mismatch.
    let e = assert_fails(
        &TestEnv::new().run(&["inspect", &format!("oci-layout:{}:1.0.0", dir.display())]),
    );
    assert_mentions(&e, "a build-image upgrade artifact, not a container image");
}

// ------------------------------------------------------------- push

#[test]
fn push_with_basic_auth_then_skip_existing_blobs_then_mount_into_another_repository() {
    let reg = Registry::start_with_auth("alice", "s3cret");
    let proxy = Proxy::start(&reg.host, Fault::PassThrough);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = fake_layout(tmp.path(), "x.upgrade", "amd64", "2.0.0");
    let target = proxy.image("fleet/os", "2.0.0");

    // Without credentials: refused, nothing tagged.
    let env = TestEnv::new();
    let o = env.run(&["push", dir.to_str().unwrap(), &target]);
    let e = assert_fails(&o);
    assert_mentions(&e, "no credentials were found");
    assert!(methods(&proxy, "PUT")
        .iter()
        .all(|p| !p.contains("/manifests/")));

    env.login(&proxy.host, "alice", "s3cret");
    proxy.clear_log();
    let o = env.run(&["--json", "push", dir.to_str().unwrap(), &target]);
    assert_ok(&o);
    let r = json_of(&o);
    assert_eq!(r["kind"], "PushResult");
    assert_eq!(r["digest"], digest.as_str());
    assert_eq!(r["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(r["reference"], target.as_str());
    assert_eq!(r["blobs"]["uploaded"], 4, "{r}");
    assert_eq!(r["signatures"], serde_json::json!([]));
    // The registry serves the layout's manifest byte for byte.
    let raw = skopeo_inspect_raw(&target, Some(("alice", "s3cret")));
    assert_eq!(sha256_digest(&raw), digest);
    assert_eq!(raw, blob(&dir, &digest));
    // Each blob went up in one streamed PUT after its POST.
    assert_eq!(methods(&proxy, "POST").len(), 4, "{}", proxy.log_text());
    assert_eq!(methods(&proxy, "PATCH").len(), 0, "{}", proxy.log_text());

    // The text form is the digest alone.
    proxy.clear_log();
    let o = env.run(&["push", dir.to_str().unwrap(), &target]);
    assert_ok(&o);
    assert_eq!(stdout(&o), format!("{digest}\n"));
    // A re-push sends no blob: HEAD finds all four.
    let log = proxy.log_text();
    assert_eq!(methods(&proxy, "HEAD").len(), 4, "{log}");
    assert!(methods(&proxy, "POST").is_empty(), "{log}");
    assert!(
        methods(&proxy, "PUT")
            .iter()
            .all(|p| p.contains("/manifests/")),
        "{log}"
    );

    // Another repository of the same registry: mounted, not uploaded.
    proxy.clear_log();
    let other = proxy.image("fleet/os-stable", "2.0.0");
    let o = env.run(&["--json", "push", dir.to_str().unwrap(), &other]);
    assert_ok(&o);
    let r = json_of(&o);
    assert_eq!(r["blobs"]["mounted"], 4, "{r}\n{}", proxy.log_text());
    assert_eq!(r["blobs"]["uploaded"], 0);
    let posts = methods(&proxy, "POST");
    assert!(
        posts.len() == 4
            && posts
                .iter()
                .all(|p| p.contains("mount=") && p.contains("from=fleet%2Fos")),
        "{}",
        proxy.log_text()
    );
    assert_eq!(
        sha256_digest(&skopeo_inspect_raw(&other, Some(("alice", "s3cret")))),
        digest
    );
}

#[test]
fn push_through_a_bearer_token_service_asks_for_push_scope() {
    let reg = Registry::start();
    let proxy = Proxy::start(
        &reg.host,
        Fault::BearerToken {
            creds: Some(("bob".into(), "hunter2".into())),
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = fake_layout(tmp.path(), "b.upgrade", host_arch(), "3.0.0");
    let env = TestEnv::new();
    env.login(&proxy.host, "bob", "hunter2");
    let o = env.run(&[
        "push",
        dir.to_str().unwrap(),
        &proxy.image("team/os", "3.0.0"),
    ]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    let tokens: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/token"))
        .map(|r| r.path)
        .collect();
    assert!(
        tokens
            .iter()
            .any(|p| p.contains("scope=repository%3Ateam%2Fos%3Apull%2Cpush")),
        "{}",
        proxy.log_text()
    );
    assert_eq!(
        sha256_digest(&skopeo_inspect_raw(&reg.image("team/os", "3.0.0"), None)),
        digest
    );
}

/// Uploads that meet 503s start over and succeed, with the pull side's
/// retry policy.
#[test]
fn failed_uploads_are_retried_from_a_new_upload_session() {
    let reg = Registry::start();
    let proxy = Proxy::start(
        &reg.host,
        Fault::ServiceUnavailable {
            times: 2,
            path_contains: "digest=sha256".into(),
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = fake_layout(tmp.path(), "r.upgrade", "amd64", "3.1.0");
    let env = TestEnv::new();
    let o = env.run(&[
        "push",
        dir.to_str().unwrap(),
        &proxy.image("fleet/os", "3.1.0"),
    ]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    assert_eq!(proxy.faults_applied(), 2);
    let log = proxy.log_text();
    // Four blobs, two of the PUTs refused: six upload sessions.
    assert_eq!(methods(&proxy, "POST").len(), 6, "{log}");
    assert_mentions(&stderr(&o), "attempt 1/5");
    assert_eq!(
        sha256_digest(&skopeo_inspect_raw(&reg.image("fleet/os", "3.1.0"), None)),
        digest
    );
}

#[test]
fn two_architectures_become_one_index_that_clients_resolve_per_platform() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (amd, amd_digest) = fake_layout(tmp.path(), "out-amd64/os.upgrade", "amd64", "4.0.0");
    let (arm, arm_digest) = fake_layout(tmp.path(), "out-arm64/os.upgrade", "arm64", "4.0.0");
    let target = reg.image("fleet/os", "4.0.0");
    let env = TestEnv::new();
    // The order on the command line does not change the index.
    let o = env.run(&[
        "--json",
        "push",
        arm.to_str().unwrap(),
        amd.to_str().unwrap(),
        &target,
    ]);
    assert_ok(&o);
    let r = json_of(&o);
    assert_eq!(r["mediaType"], "application/vnd.oci.image.index.v1+json");
    let raw = skopeo_inspect_raw(&target, None);
    assert_eq!(sha256_digest(&raw), r["digest"].as_str().unwrap());
    let idx: Value = serde_json::from_slice(&raw).unwrap();
    assert!(idx.get("artifactType").is_none(), "{idx}");
    let entries: Vec<(String, String)> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.get("artifactType").is_none(), "{m}");
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("amd64".to_string(), amd_digest.clone()),
            ("arm64".to_string(), arm_digest.clone())
        ]
    );
    let o2 = env.run(&[
        "--json",
        "push",
        amd.to_str().unwrap(),
        arm.to_str().unwrap(),
        &target,
    ]);
    assert_ok(&o2);
    assert_eq!(json_of(&o2)["digest"], r["digest"]);

    for (arch, want) in [("arm64", &arm_digest), ("amd64", &amd_digest)] {
        let out = tmp.path().join(format!("pulled-{arch}"));
        skopeo(&[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--override-arch",
            arch,
            &format!("docker://{target}"),
            &format!("oci:{}:x", out.display()),
        ]);
        assert_eq!(&listed_digest(&out), want, "{arch}");
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_sent() {
    let reg = Registry::start();
    let proxy = Proxy::start(&reg.host, Fault::PassThrough);
    let tmp = tempfile::tempdir().unwrap();
    let target = proxy.image("fleet/os", "5.0.0");
    let env = TestEnv::new();
    let (good, _) = fake_layout(tmp.path(), "good.upgrade", "amd64", "5.0.0");
    let push = |dirs: &[&Path]| -> String {
        let mut args = vec!["push".to_string()];
        args.extend(dirs.iter().map(|d| d.to_str().unwrap().to_string()));
        args.push(target.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = assert_fails(&env.run(&args));
        assert!(
            proxy.requests().is_empty(),
            "bad input, yet requests were sent:\n{}",
            proxy.log_text()
        );
        e
    };

    // Not a layout at all.
    let e = push(&[tmp.path()]);
    assert_mentions(&e, "not an OCI image layout");
    assert_mentions(&e, &tmp.path().display().to_string());

    // Two layouts of one architecture.
    let (twin, _) = fake_layout(tmp.path(), "twin.upgrade", "amd64", "5.0.0");
    let e = push(&[&good, &twin]);
    assert_mentions(&e, "are both for amd64");

    // Two versions under one reference.
    let (older, _) = fake_layout(tmp.path(), "older.upgrade", "arm64", "4.9.0");
    let e = push(&[&good, &older]);
    assert_mentions(&e, "version 5.0.0");
    assert_mentions(&e, "version 4.9.0");

    // A blob missing from the layout.
    let (gap, _) = fake_layout(tmp.path(), "gap.upgrade", "amd64", "5.0.0");
    let l = layout::read_layout(&gap).unwrap();
    let (kernel, kernel_path) = (l.blobs[2].desc.clone(), l.blobs[2].path.clone());
    fs::remove_file(&kernel_path).unwrap();
    let e = push(&[&gap]);
    assert_mentions(&e, kernel.digest.as_str());
    assert_mentions(&e, "no such file");

    // A blob whose content does not match its digest (same size).
    let (bad, _) = fake_layout(tmp.path(), "bad.upgrade", "amd64", "5.0.0");
    let l = layout::read_layout(&bad).unwrap();
    let (initrd, initrd_path) = (l.blobs[3].desc.clone(), l.blobs[3].path.clone());
    let mut bytes = fs::read(&initrd_path).unwrap();
    bytes[100] ^= 0x55;
    fs::write(&initrd_path, bytes).unwrap();
    let e = push(&[&bad]);
    assert_mentions(&e, &format!("blob {} of layout", initrd.digest));
    assert_mentions(&e, "content has digest");

    // A digest instead of a tag.
    let e = assert_fails(&env.run(&[
        "push",
        good.to_str().unwrap(),
        &format!("{}/fleet/os@{}", proxy.host, initrd.digest),
    ]));
    assert_mentions(&e, "give a tag");
    assert!(proxy.requests().is_empty(), "{}", proxy.log_text());

    // The registry never saw the repository.
    assert_eq!(
        registry::http_status(&reg.host, "/v2/fleet/os/tags/list"),
        Some(404)
    );
}

/// The root filesystem is the one blob not hashed before the push starts:
/// it goes first, is hashed as it streams, and a mismatch cuts the upload
/// off before its end, so the registry stores nothing at all.
#[test]
fn a_damaged_root_filesystem_is_cut_off_and_nothing_is_stored() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = fake_layout(tmp.path(), "d.upgrade", "amd64", "5.1.0");
    let l = layout::read_layout(&dir).unwrap();
    let root = &l.blobs[1];
    assert_eq!(
        root.desc.media_type,
        boot_contract::upgrade::ROOTFS_MEDIA_TYPE
    );
    // Same size, one byte changed, in the layout only (it is a hardlink).
    let mut bytes = fs::read(&root.path).unwrap();
    fs::remove_file(&root.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&root.path, bytes).unwrap();
    let env = TestEnv::new();
    let o = env.run(&[
        "push",
        dir.to_str().unwrap(),
        &reg.image("fleet/os", "5.1.0"),
    ]);
    let e = assert_fails(&o);
    assert_mentions(&e, &format!("expected {}", root.desc.digest));
    assert_mentions(&e, "cut off");
    // Not retried: a content mismatch is not a transient failure.
    assert!(!e.contains("attempt 2/"), "{e}");
    assert_eq!(
        registry::http_status(&reg.host, "/v2/fleet/os/tags/list"),
        Some(404)
    );
    let stored = list_files(&reg.storage().join("docker/registry/v2/blobs"));
    assert!(stored.is_empty(), "the registry stored blobs: {stored:?}");
}

/// A 128 MiB root goes up streamed from the file: the push's peak RSS
/// stays far below the blob's size.
#[test]
fn a_large_root_is_streamed_not_held_in_memory() {
    require_tool("time", "time");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("big.squashfs");
    let f = fs::File::create(&rootfs).unwrap();
    f.set_len(128 << 20).unwrap();
    drop(f);
    let (dir, digest) = layout_with_rootfs(tmp.path(), "big.upgrade", "amd64", "6.0.0", &rootfs);
    let env = TestEnv::new();
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "maxrss_kib=%M"]).arg(BIN);
    for (k, v) in env.command().get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.arg("--cache-dir").arg(&env.cache).args([
        "push",
        dir.to_str().unwrap(),
        &reg.image("big/os", "6.0.0"),
    ]);
    let o = run_cmd(cmd);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    let rss: u64 = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in:\n{}", stderr(&o)));
    assert!(rss < 48 * 1024, "peak RSS {rss} KiB pushing a 128 MiB blob");
}

// ------------------------------------------------------------- signatures

/// `keygen` writes a private key only its owner reads and the public key;
/// it never replaces an existing key.
#[test]
fn keygen_writes_a_private_and_a_public_key_once() {
    let env = TestEnv::new();
    let prefix = env.out.join("fleet");
    let o = env.run(&["--json", "keygen", "--output", prefix.to_str().unwrap()]);
    assert_ok(&o);
    let r = json_of(&o);
    assert_eq!(r["kind"], "KeyPair");
    let key = env.out.join("fleet.key");
    let public = env.out.join("fleet.pub");
    assert_eq!(r["privateKey"], key.to_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    // openssl reads the private key and derives the same public key.
    require_tool("openssl", "openssl");
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, fs::read(&public).unwrap());
    let before = fs::read(&key).unwrap();
    let e = assert_fails(&env.run(&["keygen", "--output", prefix.to_str().unwrap()]));
    assert_mentions(&e, "exists already");
    assert_eq!(fs::read(&key).unwrap(), before);
}

/// A sigstoreSigned policy for `repo` trusting `public`, and the
/// registries.d that tells skopeo where cosign keeps signatures.
fn policy(dir: &Path, host: &str, repo: &str, public: &Path) -> (PathBuf, PathBuf) {
    let regd = dir.join("registries.d");
    fs::create_dir_all(&regd).unwrap();
    fs::write(
        regd.join("default.yaml"),
        format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n"),
    )
    .unwrap();
    let pol = dir.join(format!(
        "policy-{}.json",
        public.file_stem().unwrap().to_string_lossy()
    ));
    let p = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {format!("{host}/{repo}"): [{
            "type": "sigstoreSigned",
            "keyPath": public,
            "signedIdentity": {"type": "matchRepository"},
        }]}}
    });
    fs::write(&pol, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    (pol, regd)
}

/// `skopeo copy` under a policy: Ok, or Err with skopeo's stderr.
fn verified_copy(
    skopeo: &Path,
    (pol, regd): &(PathBuf, PathBuf),
    image: &str,
    arch: &str,
    out: &Path,
) -> Result<(), String> {
    let o = Command::new(skopeo)
        .arg("--policy")
        .arg(pol)
        .arg("--registries.d")
        .arg(regd)
        .args([
            "copy",
            "--quiet",
            "--remove-signatures",
            "--src-tls-verify=false",
        ])
        .args(["--override-arch", arch])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:x", out.display()))
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn signatures_are_accepted_by_skopeo_and_cosign_and_tampering_is_refused() {
    let tools = match trixie_tools() {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "SKIPPED signatures_are_accepted_by_skopeo_and_cosign_and_tampering_is_refused: \
                 could not fetch skopeo 1.18 and cosign from Debian trixie:\n{e}"
            );
            return;
        }
    };
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let env = TestEnv::new();
    for name in ["fleet", "other"] {
        assert_ok(&env.run(&["keygen", "-o", env.out.join(name).to_str().unwrap()]));
    }
    let key = env.out.join("fleet.key");
    let public = env.out.join("fleet.pub");
    let other_public = env.out.join("other.pub");
    let (amd, amd_digest) = fake_layout(tmp.path(), "amd.upgrade", "amd64", "7.0.0");
    let (arm, arm_digest) = fake_layout(tmp.path(), "arm.upgrade", "arm64", "7.0.0");
    let signed = reg.image("fleet/os", "7.0.0");
    let o = env.run(&[
        "--json",
        "push",
        amd.to_str().unwrap(),
        arm.to_str().unwrap(),
        &signed,
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let r = json_of(&o);
    let index = r["digest"].as_str().unwrap().to_string();
    let sigs: Vec<&str> = r["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        sigs,
        [index.as_str(), amd_digest.as_str(), arm_digest.as_str()]
    );

    let trusted = policy(tmp.path(), &reg.host, "fleet", &public);
    let wrong = policy(tmp.path(), &reg.host, "fleet", &other_public);
    let out = |n: &str| tmp.path().join(n);
    // The real client accepts our signatures, for each platform.
    verified_copy(&tools.skopeo, &trusted, &signed, "arm64", &out("ok-arm")).unwrap();
    verified_copy(&tools.skopeo, &trusted, &signed, "amd64", &out("ok-amd")).unwrap();
    assert_eq!(listed_digest(&out("ok-arm")), arm_digest);
    // cosign verifies the index's signature.
    let cosign = Command::new(&tools.cosign)
        .args(["verify", "--key"])
        .arg(&public)
        .args(["--insecure-ignore-tlog=true", "--allow-insecure-registry"])
        .arg(format!("{}/fleet/os@{index}", reg.host))
        .output()
        .unwrap();
    assert!(
        cosign.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&cosign.stderr)
    );
    let payloads: Value = serde_json::from_slice(&cosign.stdout).unwrap();
    assert_eq!(
        payloads[0]["critical"]["image"]["docker-manifest-digest"],
        index.as_str()
    );

    // Another key: refused.
    let e = verified_copy(&tools.skopeo, &wrong, &signed, "arm64", &out("wrong")).unwrap_err();
    assert_mentions(&e, "signature");

    // Unsigned: refused; `build-image sign` then makes it acceptable.
    let unsigned = reg.image("fleet/plain", "7.0.0");
    let o = env.run(&[
        "push",
        amd.to_str().unwrap(),
        arm.to_str().unwrap(),
        &unsigned,
    ]);
    assert_ok(&o);
    let plain_index = stdout(&o).trim().to_string();
    let e = verified_copy(
        &tools.skopeo,
        &trusted,
        &unsigned,
        "amd64",
        &out("unsigned"),
    )
    .unwrap_err();
    assert_mentions(&e, "a signature was required");
    let o = env.run(&[
        "--json",
        "sign",
        "--key",
        key.to_str().unwrap(),
        &format!("{}/fleet/plain@{plain_index}", reg.host),
    ]);
    assert_ok(&o);
    assert_eq!(json_of(&o)["signatures"].as_array().unwrap().len(), 3);
    verified_copy(
        &tools.skopeo,
        &trusted,
        &unsigned,
        "amd64",
        &out("signed-later"),
    )
    .unwrap();
    // Signing again with the same key adds nothing; another key appends.
    let o = env.run(&[
        "--json",
        "sign",
        "--key",
        key.to_str().unwrap(),
        &format!("{}/fleet/plain@{plain_index}", reg.host),
    ]);
    assert_ok(&o);
    assert!(json_of(&o)["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["added"] == false && s["signatures"] == 1));
    let o = env.run(&[
        "--json",
        "sign",
        "--key",
        env.out.join("other.key").to_str().unwrap(),
        &format!("{}/fleet/plain@{plain_index}", reg.host),
    ]);
    assert_ok(&o);
    assert!(json_of(&o)["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["added"] == true && s["signatures"] == 2));
    verified_copy(
        &tools.skopeo,
        &trusted,
        &unsigned,
        "arm64",
        &out("two-sigs-a"),
    )
    .unwrap();
    verified_copy(
        &tools.skopeo,
        &wrong,
        &unsigned,
        "arm64",
        &out("two-sigs-b"),
    )
    .unwrap();

    // Tampered: one character of the arm64 signature changed in the
    // registry: refused.
    let tag = format!("sha256-{}.sig", arm_digest.trim_start_matches("sha256:"));
    let sig_manifest = skopeo_inspect_raw(&reg.image("fleet/os", &tag), None);
    let mut m: Value = serde_json::from_slice(&sig_manifest).unwrap();
    let ann = &mut m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let s = ann.as_str().unwrap().to_string();
    let i = s.len() / 2;
    let flipped = if &s[i..i + 1] == "A" { "B" } else { "A" };
    *ann = Value::String(format!("{}{flipped}{}", &s[..i], &s[i + 1..]));
    registry::put_manifest(
        &reg.host,
        "fleet/os",
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&m).unwrap(),
        None,
    );
    let e = verified_copy(&tools.skopeo, &trusted, &signed, "arm64", &out("tampered")).unwrap_err();
    assert_mentions(&e, "signature");
    // The amd64 signature was left alone: still accepted.
    verified_copy(&tools.skopeo, &trusted, &signed, "amd64", &out("untouched")).unwrap();
}

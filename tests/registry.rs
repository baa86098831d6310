//! Pulling images from a real local registry (Debian's docker-registry):
//! references, media types, platforms, compressions, auth, the blob cache,
//! fault injection through a proxy, and the local sources.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A small two-layer image: base files, then an update.
fn sample_layers() -> (LayerBuilder, LayerBuilder) {
    let l1 = LayerBuilder::new()
        .dir("etc")
        .file("etc/os-release", "ID=test\n")
        .dir("usr")
        .dir("usr/bin")
        .file("usr/bin/tool", vec![0x7f; 5000])
        .mode(0o755)
        .symlink("bin", "usr/bin")
        .dir("tmp")
        .mode(0o1777);
    let l2 = LayerBuilder::new()
        .dir("etc")
        .file("etc/hostname", "testhost\n")
        .file("usr/bin/tool", "v2")
        .mode(0o755)
        .owner(0, 0);
    (l1, l2)
}

/// Pushes the first `compressions.len()` of [`sample_layers`], each built
/// with its compression, to `reg` as `repo:latest`; returns the reference
/// and the digests.
fn push_sample(reg: &Registry, repo: &str, compressions: &[Compression]) -> (String, ImageDigests) {
    let (l1, l2) = sample_layers();
    assert!(compressions.len() <= 2, "there are two sample layers");
    let layers = [l1, l2]
        .iter()
        .zip(compressions)
        .map(|(l, c)| l.build(*c))
        .collect();
    push_layers(reg, repo, layers)
}

/// A proxy in front of `reg` that injects `fault`, and `repo:latest`
/// through it.
fn proxied(reg: &Registry, repo: &str, fault: Fault) -> (Proxy, String) {
    let proxy = Proxy::start(&reg.host, fault);
    let image = proxy.image(repo, "latest");
    (proxy, image)
}

/// Pulls `image` in a fresh [`TestEnv`] expecting a failure that names
/// `digest`, the blob the proxy breaks, and leaves that blob out of the
/// cache; returns the environment and stderr.
fn pull_fails_on_blob(image: &str, digest: &str) -> (TestEnv, String) {
    let env = TestEnv::new();
    let err = env.rootfs_fails(image);
    assert_mentions(&err, digest.trim_start_matches("sha256:"));
    assert!(
        !env.cached_blob(digest).exists(),
        "the broken blob {digest} was cached"
    );
    (env, err)
}

/// The first sample layer as `private/app:latest` behind a token service
/// that hands out tokens only for `bob:hunter2`; returns the registry, the
/// proxy and the image through it.
fn behind_bobs_token_service() -> (Registry, Proxy, String) {
    let reg = Registry::start();
    push_sample(&reg, "private/app", &[Compression::Gzip]);
    let (proxy, image) = proxied(
        &reg,
        "private/app",
        Fault::BearerToken {
            creds: Some(("bob".into(), "hunter2".into())),
        },
    );
    (reg, proxy, image)
}

/// Asserts the SquashFS `img` holds the merged tree of `layers`.
fn assert_tree_of(img: &Path, layers: &[&LayerBuilder]) {
    assert_trees_match(
        &extract_tree(img),
        &Tree::from_layers(layers),
        Compare::default(),
    );
}

/// Builds `rootfs` of `image` and checks the merged tree of `layers`.
fn check_rootfs(env: &TestEnv, image: &str, layers: &[&LayerBuilder], extra: &[&str]) {
    assert_tree_of(&env.rootfs_ok(image, "out.squashfs", extra), layers);
}

/// Asserts the `layers` array of a JSON result lists `want`'s layers, in
/// order, with their digests, sizes and media types.
fn assert_layers_json(layers: &Value, want: &ImageDigests) {
    let layers = layers.as_array().unwrap();
    assert_eq!(layers.len(), want.layers.len(), "{layers:?}");
    for (got, (digest, size, mt)) in layers.iter().zip(&want.layers) {
        assert_eq!(got["digest"], digest.as_str());
        assert_eq!(got["size"], *size);
        assert_eq!(got["mediaType"], mt.as_str());
    }
}

/// `os/arch` of a platform string; `linux/arm64/v8` counts as `linux/arm64`
/// (arm64's only variant).
fn platform_of(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("platform {v} is not a string"));
    s.strip_suffix("/v8").unwrap_or(s).to_string()
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

// ---------------------------------------------------------------- harness

#[test]
fn harness_registry_serves_pushed_layout_byte_for_byte() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(dir.path());
    let d = layout.add_image(
        "v1",
        &Image::host(vec![
            l1.build(Compression::Gzip),
            l2.build(Compression::Zstd),
        ]),
    );
    assert_eq!(reg.push(&layout, "v1", "test/app"), d.manifest);
    let raw = skopeo_inspect_raw(&reg.image("test/app", "v1"), None);
    assert_eq!(raw, d.manifest_json);
    // by digest too
    let raw = skopeo_inspect_raw(&reg.image_digest("test/app", &d.manifest), None);
    assert_eq!(raw, d.manifest_json);

    // a multi-arch index keeps its digest and both manifests
    let idx = layout.add_index(
        "multi",
        &[
            Image::new("amd64", vec![l1.build(Compression::Gzip)]),
            Image::new("arm64", vec![l2.build(Compression::Gzip)]),
        ],
    );
    assert_eq!(reg.push(&layout, "multi", "test/app"), idx.index);
    for m in &idx.images {
        let raw = skopeo_inspect_raw(&reg.image_digest("test/app", &m.manifest), None);
        assert_eq!(raw, m.manifest_json);
    }
}

#[test]
fn harness_auth_registry_needs_credentials() {
    let reg = Registry::start_with_auth("alice", "s3cret");
    assert_eq!(registry::http_status(&reg.host, "/v2/"), Some(401));
    let (_, d) = push_sample(&reg, "private/app", &[Compression::Gzip]);
    let raw = skopeo_inspect_raw(
        &reg.image("private/app", "latest"),
        Some(("alice", "s3cret")),
    );
    assert_eq!(raw, d.manifest_json);
}

/// One raw GET through the proxy: (status line, body).
fn raw_get(host: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    (
        head.lines().next().unwrap_or("").to_string(),
        buf[split..].to_vec(),
    )
}

#[test]
fn harness_proxy_injects_faults() {
    let reg = Registry::start();
    let layer = LayerBuilder::new()
        .file("marker", "ORIGINAL-CONTENT-0123456789")
        .build(Compression::None);
    let (_, _d) = push_layers(&reg, "p/x", vec![layer.clone()]);
    let path = format!("/v2/p/x/blobs/{}", layer.digest);

    let p = Proxy::start(&reg.host, Fault::PassThrough);
    let (st, body) = raw_get(&p.host, &path);
    assert!(st.contains(" 200 "), "{st}");
    assert_eq!(body, layer.blob);

    let p = Proxy::start(
        &reg.host,
        Fault::ReplaceInBlob {
            digest: layer.digest.clone(),
            find: b"ORIGINAL".to_vec(),
            replace: b"TAMPERED".to_vec(),
        },
    );
    let (_, body) = raw_get(&p.host, &path);
    assert_eq!(body.len(), layer.blob.len());
    assert_ne!(sha256_digest(&body), layer.digest);
    assert_eq!(p.faults_applied(), 1);

    let p = Proxy::start(
        &reg.host,
        Fault::TruncateBlob {
            digest: layer.digest.clone(),
            times: 2,
        },
    );
    assert_eq!(raw_get(&p.host, &path).1.len(), layer.blob.len() / 2);
    assert_eq!(raw_get(&p.host, &path).1.len(), layer.blob.len() / 2);
    assert_eq!(raw_get(&p.host, &path).1, layer.blob);

    let p = Proxy::start(
        &reg.host,
        Fault::ServiceUnavailable {
            times: 2,
            path_contains: "/v2/".into(),
        },
    );
    assert!(raw_get(&p.host, &path).0.contains(" 503 "));
    assert!(raw_get(&p.host, &path).0.contains(" 503 "));
    assert_eq!(raw_get(&p.host, &path).1, layer.blob);
    assert_eq!(p.requests().len(), 3);

    let p = Proxy::start(&reg.host, Fault::BearerToken { creds: None });
    let (st, _) = raw_get(&p.host, &path);
    assert!(st.contains(" 401 "), "{st}");
}

// ---------------------------------------------------------------- references

#[test]
fn pull_by_tag() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    let (image, _) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Gzip]);
    check_rootfs(&TestEnv::new(), &image, &[&l1, &l2], &[]);
}

#[test]
fn pull_by_digest_and_docker_prefix() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Gzip]);
    let forms = [
        format!("{}/library/app@{}", reg.host, d.manifest),
        format!("{}/library/app:latest@{}", reg.host, d.manifest),
        format!("docker://{}/library/app:latest", reg.host),
        format!("localhost:{}/library/app:latest", reg.port),
    ];
    for image in &forms {
        let env = TestEnv::new();
        let o = env.run(&["--json", "rootfs", image, "-o", "out.sqfs"]);
        assert_ok(&o);
        let j = json_of(&o);
        assert_eq!(j["input"]["manifestDigest"], d.manifest.as_str(), "{image}");
        assert_tree_of(&env.out_path("out.sqfs"), &[&l1, &l2]);
    }
}

#[test]
fn pull_by_wrong_digest_fails() {
    let reg = Registry::start();
    push_sample(&reg, "library/app", &[Compression::Gzip]);
    let missing = format!("sha256:{}", "ab".repeat(32));
    let err = TestEnv::new().rootfs_fails(&format!("{}/library/app@{missing}", reg.host));
    assert_mentions(&err, &missing["sha256:".len()..]);
}

#[test]
fn tampered_manifest_fetched_by_digest_is_rejected() {
    let reg = Registry::start();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip]);
    let proxy = Proxy::start(
        &reg.host,
        Fault::ReplaceInManifest {
            find: b"test image".to_vec(),
            replace: b"evil image".to_vec(),
        },
    );
    let err = TestEnv::new().rootfs_fails(&format!("{}/library/app@{}", proxy.host, d.manifest));
    assert!(
        proxy.faults_applied() > 0,
        "manifest never fetched:\n{}",
        proxy.log_text()
    );
    assert_mentions(&err, d.manifest.trim_start_matches("sha256:"));
}

// ---------------------------------------------------------------- media types

#[test]
fn docker_v2_schema2_media_types() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    let img = Image::host(vec![
        l1.build(Compression::Gzip),
        l2.build(Compression::Gzip),
    ])
    .docker_media_types();
    let (image, d) = push_image(&reg, "docker/app", &img);
    let raw: Value = serde_json::from_slice(&skopeo_inspect_raw(&image, None)).unwrap();
    assert_eq!(raw["mediaType"], oci::DOCKER_MANIFEST);

    let env = TestEnv::new();
    let o = env.run(&["--json", "rootfs", &image, "-o", "out.sqfs"]);
    assert_ok(&o);
    assert_layers_json(&json_of(&o)["input"]["layers"], &d);
    assert_tree_of(&env.out_path("out.sqfs"), &[&l1, &l2]);
}

#[test]
fn docker_manifest_list_selects_arch() {
    let reg = Registry::start();
    let (image, _) = push_index(
        &reg,
        "docker/multi",
        &[
            arch_image("amd64", Compression::Gzip).docker_media_types(),
            arch_image("arm64", Compression::Gzip).docker_media_types(),
        ],
    );
    let raw: Value = serde_json::from_slice(&skopeo_inspect_raw(&image, None)).unwrap();
    assert_eq!(raw["mediaType"], oci::DOCKER_LIST);
    for arch in ["amd64", "arm64"] {
        let env = TestEnv::new();
        let img = env.rootfs_ok(&image, "o.sqfs", &["--arch", arch]);
        assert_tree_of(&img, &[&arch_layer(arch)]);
    }
}

#[test]
fn gzip_zstd_and_uncompressed_layers() {
    let reg = Registry::start();
    let l1 = LayerBuilder::new()
        .dir("data")
        .file("data/gzip", vec![b'g'; 300_000]);
    let l2 = LayerBuilder::new().file("data/zstd", vec![b'z'; 300_000]);
    let l3 = LayerBuilder::new()
        .file("data/none", vec![b'n'; 300_000])
        .file("data/gzip", "overwritten by the uncompressed layer");
    let (image, d) = push_layers(
        &reg,
        "mixed/app",
        vec![
            l1.build(Compression::Gzip),
            l2.build(Compression::Zstd),
            l3.build(Compression::None),
        ],
    );
    let mts: Vec<&str> = d.layers.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(
        mts,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar"
        ]
    );
    check_rootfs(&TestEnv::new(), &image, &[&l1, &l2, &l3], &[]);
}

// ---------------------------------------------------------------- platforms

fn arch_layer(arch: &str) -> LayerBuilder {
    LayerBuilder::new()
        .dir("etc")
        .file("etc/arch", format!("{arch}\n"))
        .file(format!("only-on-{arch}"), arch)
}

/// An image of `arch` holding [`arch_layer`] built with `compression`.
fn arch_image(arch: &str, compression: Compression) -> Image {
    Image::new(arch, vec![arch_layer(arch).build(compression)])
}

/// Pushes an amd64 + arm64/v8 index as `multi/app:latest`.
fn push_multi_arch(reg: &Registry) -> IndexDigests {
    let images = [
        arch_image("amd64", Compression::Gzip),
        arch_image("arm64", Compression::Gzip).variant(Some("v8")),
    ];
    push_index(reg, "multi/app", &images).1
}

/// The image of `linux/ARCH` in `idx`.
fn image_of<'a>(idx: &'a IndexDigests, arch: &str) -> &'a ImageDigests {
    let platform = format!("linux/{arch}");
    idx.images
        .iter()
        .find(|m| m.platform == platform)
        .unwrap_or_else(|| panic!("no {platform} in the index"))
}

#[test]
fn multi_arch_index_selects_requested_arch() {
    let reg = Registry::start();
    let idx = push_multi_arch(&reg);
    let image = reg.image("multi/app", "latest");
    let cases = [
        ("amd64", "amd64"),
        ("x86_64", "amd64"),
        ("arm64", "arm64"),
        ("aarch64", "arm64"),
        ("arm64/v8", "arm64"),
    ];
    for (flag, arch) in cases {
        let env = TestEnv::new();
        let o = env.run(&["--json", "rootfs", &image, "-o", "out.sqfs", "--arch", flag]);
        assert_ok(&o);
        let j = json_of(&o);
        let want = image_of(&idx, arch);
        assert_eq!(
            platform_of(&j["input"]["platform"]),
            format!("linux/{arch}"),
            "--arch {flag}"
        );
        assert_eq!(
            j["input"]["manifestDigest"],
            want.manifest.as_str(),
            "--arch {flag}"
        );
        assert_eq!(
            j["input"]["configDigest"],
            want.config.as_str(),
            "--arch {flag}"
        );
        assert_tree_of(&env.out_path("out.sqfs"), &[&arch_layer(arch)]);
    }
    // no --arch: the host's
    let env = TestEnv::new();
    let img = env.rootfs_ok(&image, "host.sqfs", &[]);
    assert_tree_of(&img, &[&arch_layer(host_arch())]);
}

#[test]
fn multi_arch_index_pulled_by_index_digest() {
    let reg = Registry::start();
    let idx = push_multi_arch(&reg);
    let image = reg.image_digest("multi/app", &idx.index);
    let env = TestEnv::new();
    let o = env.run(&[
        "--json", "rootfs", &image, "-o", "o.sqfs", "--arch", "arm64",
    ]);
    assert_ok(&o);
    assert_eq!(
        json_of(&o)["input"]["manifestDigest"],
        image_of(&idx, "arm64").manifest.as_str()
    );
    assert_tree_of(&env.out_path("o.sqfs"), &[&arch_layer("arm64")]);
}

#[test]
fn arch_missing_from_index_fails() {
    let reg = Registry::start();
    let (image, _) = push_index(
        &reg,
        "one/app",
        &[arch_image(other_arch(), Compression::Gzip)],
    );
    let err = TestEnv::new().rootfs_fails(&image);
    assert_mentions(&err, host_arch());
}

#[test]
fn single_arch_image_of_another_arch_fails_naming_both() {
    let reg = Registry::start();
    let (image, _) = push_image(
        &reg,
        "foreign/app",
        &arch_image(other_arch(), Compression::Gzip),
    );
    let env = TestEnv::new();
    let err = env.rootfs_fails(&image);
    assert_mentions(&err, host_arch());
    assert_mentions(&err, other_arch());
    // asking for its arch works
    env.rootfs_ok(&image, "y.sqfs", &["--arch", other_arch()]);
}

// ---------------------------------------------------------------- auth

#[test]
fn basic_auth_with_docker_config_json() {
    let reg = Registry::start_with_auth("alice", "s3cret");
    let (l1, l2) = sample_layers();
    let (image, _) = push_sample(&reg, "private/app", &[Compression::Gzip, Compression::Gzip]);

    // no credentials
    let err = TestEnv::new().rootfs_fails(&image);
    assert_mentions_any(&err, &["401", "auth", "unauthorized", "credentials"]);

    // wrong password
    let env = TestEnv::new();
    env.login(&reg.host, "alice", "wrong");
    let err = env.rootfs_fails(&image);
    assert_mentions_any(&err, &["401", "auth", "unauthorized", "credentials"]);

    // $DOCKER_CONFIG/config.json
    let env = TestEnv::new();
    env.login(&reg.host, "alice", "s3cret");
    check_rootfs(&env, &image, &[&l1, &l2], &[]);

    // ~/.docker/config.json (no DOCKER_CONFIG)
    let env = TestEnv::new();
    env.login(&reg.host, "alice", "s3cret");
    fs::create_dir_all(env.home.join(".docker")).unwrap();
    fs::rename(
        env.docker_config.join("config.json"),
        env.home.join(".docker/config.json"),
    )
    .unwrap();
    let mut cmd = env.command();
    cmd.env_remove("DOCKER_CONFIG")
        .arg("--cache-dir")
        .arg(&env.cache)
        .args(["rootfs", &image, "-o", "home.sqfs"]);
    assert_ok(&run_cmd(cmd));

    // $REGISTRY_AUTH_FILE wins
    let mut env = TestEnv::new();
    env.login(&reg.host, "alice", "s3cret");
    let auth = env.tmp.path().join("auth.json");
    fs::rename(env.docker_config.join("config.json"), &auth).unwrap();
    env.env("REGISTRY_AUTH_FILE", auth.to_str().unwrap());
    env.rootfs_ok(&image, "authfile.sqfs", &[]);
}

#[test]
fn anonymous_bearer_token_flow() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Gzip]);
    let (proxy, image) = proxied(&reg, "library/app", Fault::BearerToken { creds: None });
    let env = TestEnv::new();
    check_rootfs(&env, &image, &[&l1, &l2], &[]);
    let log = proxy.log_text();
    assert!(
        proxy.any_request(|r| r.path.starts_with("/token")),
        "no token request:\n{log}"
    );
    assert!(
        proxy.any_request(
            |r| r.path.contains("scope=repository%3Alibrary%2Fapp%3Apull")
                || r.path.contains("scope=repository:library/app:pull")
        ),
        "token request without the challenge's scope:\n{log}"
    );
}

#[test]
fn bearer_token_with_credentials() {
    let (_reg, proxy, image) = behind_bobs_token_service();
    let (l1, _) = sample_layers();
    let err = TestEnv::new().rootfs_fails(&image);
    assert_mentions_any(
        &err,
        &["401", "auth", "unauthorized", "credentials", "token"],
    );

    let env = TestEnv::new();
    env.login(&proxy.host, "bob", "hunter2");
    check_rootfs(&env, &image, &[&l1], &[]);
}

/// Credentials never travel in clear text to a token service the user did
/// not trust with plain HTTP. The realm below is plain HTTP on a host that
/// is not loopback by address (0.0.0.0, which reaches this machine's
/// proxy): the pull fails before any token request; listing that host with
/// --insecure-registry lets it through.
#[test]
fn credentials_are_not_sent_to_a_plain_http_realm() {
    let (_reg, proxy, image) = behind_bobs_token_service();
    let (l1, _) = sample_layers();
    let (alias, _) = loopback_alias();
    let port = proxy.host.rsplit(':').next().unwrap().to_string();
    let realm = format!("http://{alias}:{port}/token");
    proxy.set_realm_host(&format!("{alias}:{port}"));
    let env = TestEnv::new();
    env.login(&proxy.host, "bob", "hunter2");
    let err = env.rootfs_fails(&image);
    assert_mentions(&err, "refusing to send the credentials");
    assert_mentions(&err, &realm);
    assert!(
        !proxy.any_request(|r| r.path.starts_with("/token")),
        "credentials went to {realm}:\n{}",
        proxy.log_text()
    );

    check_rootfs(&env, &image, &[&l1], &["--insecure-registry", &alias]);
    assert!(
        proxy.any_request(|r| r.path.starts_with("/token") && r.status == 200),
        "no token with --insecure-registry {alias}:\n{}",
        proxy.log_text()
    );
}

// ---------------------------------------------------------------- transport

/// A host that is not one of the loopback names build-image trusts with
/// plain HTTP, yet reaches a server bound to 127.0.0.1: on Linux a
/// connection to 0.0.0.0 goes to the local host. Works on any machine,
/// whatever its /etc/hosts says.
fn loopback_alias() -> (String, std::net::IpAddr) {
    (
        "0.0.0.0".to_string(),
        std::net::IpAddr::from([127, 0, 0, 1]),
    )
}

#[test]
fn plain_http_to_non_loopback_needs_insecure_registry() {
    // A name that is not loopback: HTTPS is required.
    let start = Instant::now();
    let err = TestEnv::new().rootfs_fails("localhost.example:5000/x:latest");
    assert_mentions_any(&err, &["https", "tls", "insecure"]);
    assert!(start.elapsed() < Duration::from_secs(120));

    // A plain-HTTP registry behind a name that is not one of the loopback
    // names (though it resolves to a loopback address on this machine).
    let (name, ip) = loopback_alias();
    let reg = Registry::start();
    let (l1, _) = sample_layers();
    push_sample(&reg, "library/app", &[Compression::Gzip]);
    let proxy = Proxy::start_on(&ip.to_string(), &reg.host, Fault::PassThrough);
    let port = proxy.host.rsplit(':').next().unwrap().to_string();
    let host = format!("{name}:{port}");
    let image = format!("{host}/library/app:latest");
    let err = TestEnv::new().rootfs_fails(&image);
    assert_mentions_any(&err, &["https", "tls", "insecure"]);
    assert!(
        !proxy.any_request(|r| r.path.contains("/manifests/") || r.path.contains("/blobs/")),
        "fetched over plain HTTP without --insecure-registry:\n{}",
        proxy.log_text()
    );

    let env = TestEnv::new();
    check_rootfs(&env, &image, &[&l1], &["--insecure-registry", &host]);
    // the flag without the port names the host on any port
    let env = TestEnv::new();
    check_rootfs(&env, &image, &[&l1], &["--insecure-registry", &name]);
}

// ---------------------------------------------------------------- inspect

#[test]
fn inspect_multi_arch_text_and_json() {
    let reg = Registry::start();
    let idx = push_multi_arch(&reg);
    let image = reg.image("multi/app", "latest");
    let env = TestEnv::new();

    let o = env.run(&["--json", "inspect", &image, "--arch", "arm64"]);
    assert_ok(&o);
    let j = json_of(&o);
    let arm = image_of(&idx, "arm64");
    assert_eq!(j["apiVersion"], "build-image/v1alpha1");
    assert_eq!(j["kind"], "ImageInspect");
    assert!(j["reference"].as_str().unwrap().contains("multi/app"));
    assert_eq!(j["indexDigest"], idx.index.as_str());
    assert_eq!(j["manifestDigest"], arm.manifest.as_str());
    let platforms: Vec<(String, String)> = j["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                platform_of(&p["platform"]),
                p["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = idx
        .images
        .iter()
        .map(|m| (m.platform.clone(), m.manifest.clone()))
        .collect();
    let mut sorted = platforms.clone();
    sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted);
    let config: Value = serde_json::from_slice(&arm.config_json).unwrap();
    assert_eq!(j["config"], config);
    assert_layers_json(&j["layers"], arm);

    // human-readable: the same facts
    let o = env.run(&["inspect", &image, "--arch", "arm64"]);
    assert_ok(&o);
    let text = stdout(&o);
    for needle in [
        idx.index.as_str(),
        arm.manifest.as_str(),
        arm.config.as_str(),
        arm.layers[0].0.as_str(),
        "linux/amd64",
        "linux/arm64",
    ] {
        assert_mentions(&text, needle);
    }
    assert!(
        serde_json::from_slice::<Value>(&o.stdout).is_err(),
        "plain inspect printed JSON"
    );
}

#[test]
fn inspect_single_arch_json() {
    let reg = Registry::start();
    let (_, l2) = sample_layers();
    let (image, d) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Zstd]);
    let env = TestEnv::new();
    let o = env.run(&["--json", "inspect", &image]);
    assert_ok(&o);
    let j = json_of(&o);
    assert_eq!(j["kind"], "ImageInspect");
    assert!(j["indexDigest"].is_null(), "{j}");
    assert_eq!(j["manifestDigest"], d.manifest.as_str());
    assert_eq!(
        j["config"]["rootfs"]["diff_ids"][1],
        l2.build(Compression::Zstd).diff_id.as_str()
    );
    assert_layers_json(&j["layers"], &d);
}

// ---------------------------------------------------------------- JSON result

#[test]
fn rootfs_json_result() {
    let reg = Registry::start();
    let (image, d) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Zstd]);
    let env = TestEnv::new();
    let out = env.out_path("root.sqfs");
    let o = env.run(&["--json", "rootfs", &image, "-o", out.to_str().unwrap()]);
    assert_ok(&o);
    let j = json_of(&o);
    assert_eq!(j["apiVersion"], "build-image/v1alpha1");
    assert_eq!(j["kind"], "RootfsResult");
    let a = &j["artifacts"][0];
    assert_eq!(j["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(a["format"], "squashfs");
    assert_eq!(
        fs::canonicalize(a["path"].as_str().unwrap()).unwrap(),
        fs::canonicalize(&out).unwrap()
    );
    assert_eq!(a["size"], fs::metadata(&out).unwrap().len());
    assert_eq!(a["digest"], format!("sha256:{}", sha256_file(&out)));
    assert!(j["input"]["image"]
        .as_str()
        .unwrap()
        .contains("library/app"));
    assert_eq!(
        platform_of(&j["input"]["platform"]),
        format!("linux/{}", host_arch())
    );
    assert_eq!(j["input"]["manifestDigest"], d.manifest.as_str());
    assert_eq!(j["input"]["configDigest"], d.config.as_str());
    assert_layers_json(&j["input"]["layers"], &d);
}

// ---------------------------------------------------------------- cache

#[test]
fn warm_cache_fetches_no_blobs() {
    let reg = Registry::start();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Zstd]);
    let (proxy, image) = proxied(&reg, "library/app", Fault::PassThrough);
    let mut env = TestEnv::new();
    env.env("SOURCE_DATE_EPOCH", "1700000000");

    let first = env.rootfs_ok(&image, "first.sqfs", &[]);
    assert!(
        proxy.blob_gets() >= 2,
        "cold run fetched fewer blobs than layers:\n{}",
        proxy.log_text()
    );
    for (digest, size, _) in &d.layers {
        let p = env.cached_blob(digest);
        assert!(p.is_file(), "layer {digest} not cached at {}", p.display());
        assert_eq!(fs::metadata(&p).unwrap().len(), *size);
        assert_eq!(format!("sha256:{}", sha256_file(&p)), *digest);
    }
    proxy.clear_log();
    let second = env.rootfs_ok(&image, "second.sqfs", &[]);
    assert_eq!(
        proxy.blob_gets(),
        0,
        "warm run fetched blobs:\n{}",
        proxy.log_text()
    );
    assert_eq!(sha256_file(&first), sha256_file(&second));
}

#[test]
fn cache_dir_from_env_and_xdg_default() {
    let reg = Registry::start();
    let (image, d) = push_sample(&reg, "library/app", &[Compression::Gzip]);
    let hex = d.layers[0].0.trim_start_matches("sha256:").to_string();

    // BUILD_IMAGE_CACHE_DIR
    let mut env = TestEnv::new();
    let envcache = env.tmp.path().join("envcache");
    env.env("BUILD_IMAGE_CACHE_DIR", envcache.to_str().unwrap());
    assert_ok(&env.run_raw(&["rootfs", &image, "-o", "a.sqfs"]));
    assert!(envcache.join("blobs/sha256").join(&hex).is_file());

    // $XDG_CACHE_HOME/build-image
    let env = TestEnv::new();
    assert_ok(&env.run_raw(&["rootfs", &image, "-o", "b.sqfs"]));
    let xdg = env.home.join(".cache/build-image/blobs/sha256").join(&hex);
    assert!(xdg.is_file(), "{} missing", xdg.display());

    // ~/.cache/build-image without XDG_CACHE_HOME
    let env = TestEnv::new();
    let mut cmd = env.command();
    cmd.env_remove("XDG_CACHE_HOME")
        .args(["rootfs", &image, "-o", "c.sqfs"]);
    assert_ok(&run_cmd(cmd));
    assert!(env
        .home
        .join(".cache/build-image/blobs/sha256")
        .join(&hex)
        .is_file());
}

#[test]
fn corrupted_cache_entry_is_detected_and_refetched() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Gzip]);
    let (proxy, image) = proxied(&reg, "library/app", Fault::PassThrough);
    let mut env = TestEnv::new();
    env.env("SOURCE_DATE_EPOCH", "1700000000");
    let first = env.rootfs_ok(&image, "first.sqfs", &[]);

    let digest = &d.layers[0].0;
    let cached = env.cached_blob(digest);
    let mut bytes = fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&cached, &bytes).unwrap();

    proxy.clear_log();
    let second = env.rootfs_ok(&image, "second.sqfs", &[]);
    assert_eq!(sha256_file(&first), sha256_file(&second));
    assert!(
        proxy.any_request(|r| r.method == "GET" && r.path.ends_with(digest.as_str())),
        "the corrupted blob was not fetched again:\n{}",
        proxy.log_text()
    );
    assert_eq!(format!("sha256:{}", sha256_file(&cached)), *digest);
    assert_trees_match(
        &extract_tree(&second),
        &Tree::from_layers(&[&l1, &l2]),
        Compare {
            clamp_mtime: Some(1_700_000_000),
            ..Compare::default()
        },
    );
}

// ---------------------------------------------------------------- faults

#[test]
fn digest_mismatch_fails_and_caches_nothing() {
    let reg = Registry::start();
    let good = LayerBuilder::new().file("ok", "fine");
    let bad = LayerBuilder::new()
        .dir("data")
        .file("data/marker", "ORIGINAL-CONTENT-0123456789");
    let bad_layer = bad.build(Compression::None);
    push_layers(
        &reg,
        "library/app",
        vec![good.build(Compression::Gzip), bad_layer.clone()],
    );
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::ReplaceInBlob {
            digest: bad_layer.digest.clone(),
            find: b"ORIGINAL".to_vec(),
            replace: b"TAMPERED".to_vec(),
        },
    );
    let tampered: Vec<u8> = {
        let mut b = bad_layer.blob.clone();
        let i = b.windows(8).position(|w| w == b"ORIGINAL").unwrap();
        b[i..i + 8].copy_from_slice(b"TAMPERED");
        b
    };
    let actual_hex = sha256_hex(&tampered);
    let (env, err) = pull_fails_on_blob(&image, &bad_layer.digest);
    assert!(proxy.faults_applied() > 0, "{}", proxy.log_text());
    assert_mentions(&err, &actual_hex);
    let leftovers: Vec<_> = list_files(&env.cache)
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains(bad_layer.hex()) || s.contains(&actual_hex)
        })
        .collect();
    assert!(leftovers.is_empty(), "cache holds {leftovers:?}");
}

#[test]
fn tampered_config_blob_is_rejected() {
    let reg = Registry::start();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip]);
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::ReplaceInBlob {
            digest: d.config.clone(),
            find: b"/bin/sh".to_vec(),
            replace: b"/bin/xx".to_vec(),
        },
    );
    pull_fails_on_blob(&image, &d.config);
    assert!(proxy.faults_applied() > 0, "{}", proxy.log_text());
}

#[test]
fn corrupted_gzip_blob_fails_naming_the_digest() {
    let reg = Registry::start();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip]);
    let digest = &d.layers[0].0;
    let (_proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::CorruptBlob {
            digest: digest.clone(),
        },
    );
    pull_fails_on_blob(&image, digest);
}

#[test]
fn truncated_download_is_retried() {
    let reg = Registry::start();
    let big = LayerBuilder::new().dir("data").file(
        "data/blob",
        (0..2_000_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let layer = big.build(Compression::Gzip);
    push_layers(&reg, "library/app", vec![layer.clone()]);
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::TruncateBlob {
            digest: layer.digest.clone(),
            times: 2,
        },
    );
    let env = TestEnv::new();
    let (out, o) = env.rootfs(&image, "x.sqfs", &[]);
    assert_eq!(proxy.faults_applied(), 2, "{}", proxy.log_text());
    assert_ok(&o);
    assert_tree_of(&out, &[&big]);
    assert_eq!(
        format!("sha256:{}", sha256_file(&env.cached_blob(&layer.digest))),
        layer.digest
    );
}

#[test]
fn truncated_download_every_time_fails_cleanly() {
    let reg = Registry::start();
    let (_, d) = push_sample(&reg, "library/app", &[Compression::Gzip]);
    let digest = &d.layers[0].0;
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::TruncateBlob {
            digest: digest.clone(),
            times: 1000,
        },
    );
    let start = Instant::now();
    pull_fails_on_blob(&image, digest);
    assert!(
        start.elapsed() < Duration::from_secs(180),
        "gave up only after {:?}",
        start.elapsed()
    );
    assert!(
        proxy.faults_applied() < 50,
        "{} attempts",
        proxy.faults_applied()
    );
}

#[test]
fn service_unavailable_is_retried_with_backoff() {
    let reg = Registry::start();
    let (l1, l2) = sample_layers();
    push_sample(&reg, "library/app", &[Compression::Gzip, Compression::Gzip]);
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::ServiceUnavailable {
            times: 3,
            path_contains: "/blobs/".into(),
        },
    );
    check_rootfs(&TestEnv::new(), &image, &[&l1, &l2], &[]);
    assert_eq!(proxy.faults_applied(), 3);
    let reqs = proxy.requests();
    let first_503 = reqs.iter().position(|r| r.status == 503).unwrap();
    let last_503 = reqs.iter().rposition(|r| r.status == 503).unwrap();
    let gap = reqs[last_503].at - reqs[first_503].at;
    assert!(
        gap >= Duration::from_millis(200),
        "3 retries within {gap:?}: no backoff?\n{}",
        proxy.log_text()
    );

    // manifests too
    let (proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::ServiceUnavailable {
            times: 2,
            path_contains: "/manifests/".into(),
        },
    );
    check_rootfs(&TestEnv::new(), &image, &[&l1, &l2], &[]);
    assert_eq!(proxy.faults_applied(), 2);
}

#[test]
fn service_unavailable_forever_fails_in_bounded_time() {
    let reg = Registry::start();
    push_sample(&reg, "library/app", &[Compression::Gzip]);
    let (_proxy, image) = proxied(
        &reg,
        "library/app",
        Fault::ServiceUnavailable {
            times: 1_000_000,
            path_contains: "/v2/".into(),
        },
    );
    let start = Instant::now();
    let err = TestEnv::new().rootfs_fails(&image);
    assert_mentions(&err, "503");
    assert!(start.elapsed() < Duration::from_secs(180));
}

// ---------------------------------------------------------------- local sources

#[test]
fn oci_layout_source() {
    let (l1, l2) = sample_layers();
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(dir.path());
    layout.add_image(
        "v1",
        &Image::host(vec![
            l1.build(Compression::Gzip),
            l2.build(Compression::Zstd),
        ]),
    );
    let env = TestEnv::new();
    let src = format!("oci-layout:{}:v1", dir.path().display());
    check_rootfs(&env, &src, &[&l1, &l2], &[]);

    // the only image in a layout needs no tag
    let env = TestEnv::new();
    let src = format!("oci-layout:{}", dir.path().display());
    check_rootfs(&env, &src, &[&l1, &l2], &[]);

    // a multi-arch index in a layout
    layout.add_index(
        "multi",
        &[
            arch_image("amd64", Compression::Gzip),
            arch_image("arm64", Compression::Zstd),
        ],
    );
    let env = TestEnv::new();
    let src = format!("oci-layout:{}:multi", dir.path().display());
    let img = env.rootfs_ok(&src, "arm.sqfs", &["--arch", "arm64"]);
    assert_tree_of(&img, &[&arch_layer("arm64")]);

    // unknown tag
    let err = TestEnv::new().rootfs_fails(&format!("oci-layout:{}:nope", dir.path().display()));
    assert_mentions(&err, "nope");
}

#[test]
fn rootfs_tar_source_plain_gzip_zstd() {
    let (l1, _) = sample_layers();
    let l = l1
        .clone()
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .char_dev("null", 1, 3);
    let tar = l.tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let env = TestEnv::new();
        let file = env.tmp.path().join(format!("rootfs-{c:?}.tar"));
        fs::write(&file, c.compress(&tar)).unwrap();
        let src = format!("rootfs-tar:{}", file.display());
        let img = env.rootfs_ok(&src, "out.sqfs", &[]);
        assert_trees_match(
            &extract_tree(&img),
            &Tree::from_tar_bytes(&tar),
            Compare::default(),
        );
    }
}

//! A real CNCF Distribution registry (Debian's `docker-registry`) on a free
//! loopback port, and skopeo wrappers to push layouts and read manifests.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::oci::OciLayout;
use super::{require_tool, sha256_digest};

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub port: u16,
    /// `(user, password)` when started with htpasswd auth.
    pub creds: Option<(String, String)>,
    dir: TempDir,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::launch(None, None)
    }

    /// A registry that requires HTTP basic auth (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Registry::launch(Some((user.to_string(), pass.to_string())), None)
    }

    /// An anonymous registry serving HTTPS only, with the certificate
    /// and key (PEM files) given.
    pub fn start_tls(cert: &Path, key: &Path) -> Registry {
        Registry::launch(None, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    fn launch(
        creds: Option<(String, String)>,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = &creds {
            require_tool("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            auth = format!(
                "auth: {{htpasswd: {{realm: test-registry, path: {}}}}}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let tls_cfg = tls
            .as_ref()
            .map(|(cert, key)| {
                format!(
                    ", tls: {{certificate: {}, key: {}}}",
                    cert.display(),
                    key.display()
                )
            })
            .unwrap_or_default();
        // A free port can be taken by someone else between probe and bind:
        // retry with a new one when the registry exits early.
        for _attempt in 0..10 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log: {{level: warn, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {host}{tls_cfg}}}\n{auth}",
                dir.path().join("data").display()
            );
            let cfg = dir.path().join("config.yml");
            fs::write(&cfg, config).unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("install docker-registry (apt-get install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = fs::read_to_string(dir.path().join("registry.log")).unwrap();
                    if log.contains("address already in use") {
                        break;
                    }
                    panic!("docker-registry exited with {status}: {log}");
                }
                if let Some(code) = http_status(&host, "/v2/") {
                    // A TLS port answers plain HTTP with 400.
                    if code == 200 || code == 401 || (tls.is_some() && code == 400) {
                        return Registry {
                            child,
                            host,
                            port,
                            creds,
                            dir,
                        };
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry did not answer /v2/ on {host} within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not find a free port for docker-registry");
    }

    /// `127.0.0.1:PORT/REPO:TAG`
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }

    /// `127.0.0.1:PORT/REPO@DIGEST`
    pub fn image_digest(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.host)
    }

    /// Pushes tag `tag` of `layout` to `REPO:tag` here; returns the manifest
    /// (or index) digest the registry serves, which is checked to equal the
    /// layout's.
    pub fn push(&self, layout: &OciLayout, tag: &str, repo: &str) -> String {
        let creds = self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        push_to(layout, tag, &self.host, repo, tag, creds)
    }

    /// The registry's own log (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of `GET path` on `host`, or None if nothing answers.
pub fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:DEST_TAG` (all platforms
/// of an index). Returns the digest of the pushed manifest or index after
/// checking the registry serves exactly the layout's bytes.
pub fn push_to(
    layout: &OciLayout,
    tag: &str,
    host: &str,
    repo: &str,
    dest_tag: &str,
    creds: Option<(&str, &str)>,
) -> String {
    require_tool("skopeo", "skopeo");
    if let Some(list) = layout.docker_list(tag) {
        // skopeo will not push a Docker manifest list unchanged from an OCI
        // layout: push the platform manifests under helper tags, then PUT
        // the list itself.
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        for (i, m) in v["manifests"].as_array().unwrap().iter().enumerate() {
            let child = format!("{tag}-platform-{i}");
            layout.tag(&child, m["digest"].as_str().unwrap());
            push_to(layout, &child, host, repo, &child, creds);
        }
        put_manifest(host, repo, dest_tag, super::oci::DOCKER_LIST, &list, creds);
        let raw = skopeo_inspect_raw(&format!("{host}/{repo}:{dest_tag}"), creds);
        assert_eq!(raw, list, "the registry changed the manifest list");
        return sha256_digest(&raw);
    }
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
    ]);
    // Keep the manifest bytes (and so the digests) exactly as written.
    cmd.arg("--preserve-digests");
    if layout.tag_is_index(tag) {
        cmd.args(["--multi-arch", "all"]);
    }
    if let Some((u, p)) = creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout.dir.display()));
    cmd.arg(format!("docker://{host}/{repo}:{dest_tag}"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {:?}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = skopeo_inspect_raw(&format!("{host}/{repo}:{dest_tag}"), creds);
    let digest = sha256_digest(&raw);
    let local = fs::read(layout.blob_path(&digest));
    assert!(
        local.is_ok(),
        "the registry serves manifest {digest} that is not in the layout {}",
        layout.dir.display()
    );
    digest
}

/// `skopeo inspect --raw` of `HOST/REPO:TAG` (or `@DIGEST`).
pub fn skopeo_inspect_raw(reference: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
    ]);
    if let Some((u, p)) = creds {
        cmd.arg(format!("--creds={u}:{p}"));
    }
    cmd.arg(format!("docker://{reference}"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `skopeo inspect --raw oci:DIR:TAG`: the manifest bytes of a local
/// layout as the reference client reads them.
pub fn skopeo_inspect_oci_raw(dir: &Path, tag: &str) -> Vec<u8> {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--raw"])
        .arg(format!("oci:{}:{tag}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect oci:{}:{tag} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pushes an OCI layout dir with `skopeo` by path (for callers that have no
/// [`OciLayout`]).
pub fn push(layout_dir: &Path, tag: &str, registry: &Registry, repo: &str) -> String {
    registry.push(&OciLayout::create(layout_dir), tag, repo)
}

/// `PUT /v2/REPO/manifests/REFERENCE` with a raw body (basic auth if given).
pub fn put_manifest(
    host: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
    creds: Option<(&str, &str)>,
) {
    use base64::Engine;
    let mut s = TcpStream::connect(host).unwrap();
    let auth = creds
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "PUT /v2/{repo}/manifests/{reference} HTTP/1.1\r\nHost: {host}\r\n{auth}\
         Content-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 201"),
        "PUT manifest {repo}:{reference} failed:\n{text}"
    );
}

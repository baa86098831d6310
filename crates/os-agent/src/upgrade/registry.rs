//! The registry client of the device: the OCI distribution API over
//! HTTPS (rustls with the ring provider, trusting the image's CA bundle)
//! or, for hosts named with `--insecure-registry`, plain HTTP. Basic and
//! bearer-token auth with credentials from
//! `/var/lib/os-agent/registry-auth.json` (Docker's `config.json` format).
//! Only what an upgrade needs: GET of manifests and blobs (blobs from an
//! offset, to resume an interrupted download).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::artifact::{check_digest, Fetched, ACCEPT, MAX_DOCUMENT};
use super::source::{sha256, Source};
use crate::bail;
use crate::error::{Context, Error, Result};
use crate::fsutil::{read_optional, Root};

/// The device's registry credentials (persistent).
pub const AUTH_FILE: &str = "/var/lib/os-agent/registry-auth.json";
/// The CA bundles tried, in order (the image's own trust store).
pub const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// `HOST[:PORT]/PATH[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As written in URLs (`registry-1.docker.io` for Docker Hub).
    pub host: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| {
            Error::msg(format!("{s:?}: {why}; expected HOST/REPOSITORY:TAG or HOST/REPOSITORY@sha256:DIGEST (or oci-layout:DIR)"))
        };
        let s2 = s.strip_prefix("docker://").unwrap_or(s);
        let (rest, digest) = match s2.split_once('@') {
            Some((r, d)) => {
                check_digest(d, s)?;
                (r, Some(d.to_string()))
            }
            None => (s2, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad(&format!("tag {t:?} is not valid")));
            }
        }
        let (host, path) = match name.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), p.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let path = if host == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let ok_path = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            });
        if !ok_path {
            return Err(bad(&format!("repository {path:?} is not valid")));
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("no tag or digest"));
        }
        let host = if host == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            host
        };
        Ok(Reference {
            host,
            path,
            tag,
            digest,
        })
    }

    /// The tag or digest to ask for.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creds {
    Basic {
        user: String,
        pass: String,
    },
    /// A bearer token used as it is (`registrytoken`).
    Token(String),
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// The host part of an `auths` key: `https://host:5000/v1/` → `host:5000`.
fn auth_key_host(k: &str) -> &str {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or(k)
}

/// The credentials for `host` in the auth file's `text`.
pub fn creds_for(text: &str, host: &str, file: &str) -> Result<Option<Creds>> {
    let f: AuthFile = serde_json::from_str(text)
        .with_context(|| format!("{file}: not a Docker config.json document"))?;
    let want = |h: &str| {
        h == host
            || (host == "registry-1.docker.io"
                && matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io"))
    };
    let Some((key, e)) = f.auths.iter().find(|(k, _)| want(auth_key_host(k))) else {
        return Ok(None);
    };
    if let Some(t) = &e.registrytoken {
        return Ok(Some(Creds::Token(t.clone())));
    }
    if let Some(a) = &e.auth {
        let raw = node_config::b64::decode(a)
            .with_context(|| format!("{file}: auths.{key:?}.auth: not base64"))?;
        let s = String::from_utf8(raw)
            .map_err(|_| Error::msg(format!("{file}: auths.{key:?}.auth: not UTF-8")))?;
        let Some((user, pass)) = s.split_once(':') else {
            bail!("{file}: auths.{key:?}.auth: expected base64 of USER:PASSWORD");
        };
        return Ok(Some(Creds::Basic {
            user: user.into(),
            pass: pass.into(),
        }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) => Ok(Some(Creds::Basic {
            user: u.clone(),
            pass: p.clone(),
        })),
        _ => bail!("{file}: auths.{key:?}: no auth, username/password or registrytoken"),
    }
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `key="value"` parameters of a `WWW-Authenticate` challenge.
fn challenge_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(c) => (&after[..c], &after[c..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_string()));
        rest = next;
    }
    out
}

/// One repository on one registry.
pub struct Registry {
    r: Reference,
    agent: ureq::Agent,
    scheme: &'static str,
    creds: Option<Creds>,
    /// The `Authorization` value that worked (or the first to try).
    auth: Option<String>,
}

/// How many times a request is tried when the connection fails or the
/// registry answers 429 or 5xx; waits 1, 2, 4 s in between.
pub const ATTEMPTS: u32 = 4;

fn tls_config(root: &Root) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
    let mut certs = Vec::new();
    let mut used = None;
    for b in CA_BUNDLES {
        let path = root.join(b);
        if let Ok(pem) = std::fs::read(&path) {
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(PemItem::Certificate(c)) = item {
                    certs.push(c);
                }
            }
            used = Some(path);
            break;
        }
    }
    if used.is_none() {
        // Plain HTTP still works; HTTPS will fail naming the bundle.
        eprintln!(
            "os-agent: warning: no CA bundle ({}): HTTPS registries cannot be verified",
            CA_BUNDLES.join(", ")
        );
    }
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// Whether `host` (`HOST` or `HOST:PORT`) is named by `--insecure-registry`.
pub fn insecure(host: &str, list: &[String]) -> bool {
    let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    list.iter().any(|i| i == host || i == bare)
}

impl Registry {
    pub fn new(r: Reference, root: &Root, insecure_hosts: &[String]) -> Result<Registry> {
        let auth_path = root.join(AUTH_FILE);
        let creds = match read_optional(&auth_path)? {
            Some(text) => creds_for(&text, &r.host, &auth_path.display().to_string())?,
            None => None,
        };
        let plain = insecure(&r.host, insecure_hosts);
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!("os-agent/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)));
        if !plain {
            cfg = cfg.tls_config(tls_config(root)?);
        }
        let auth = match &creds {
            Some(Creds::Token(t)) => Some(format!("Bearer {t}")),
            _ => None,
        };
        Ok(Registry {
            r,
            agent: cfg.build().new_agent(),
            scheme: if plain { "http" } else { "https" },
            creds,
            auth,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}://{}/v2/{}/{tail}",
            self.scheme, self.r.host, self.r.path
        )
    }

    /// Meets a 401 challenge: Basic with the credentials, or a bearer token
    /// from the challenge's realm.
    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let who = format!("registry {}", self.r.host);
        let basic = |c: &Option<Creds>| match c {
            Some(Creds::Basic { user, pass }) => Some(format!(
                "Basic {}",
                base64(format!("{user}:{pass}").as_bytes())
            )),
            _ => None,
        };
        if scheme.eq_ignore_ascii_case("basic") {
            self.auth = Some(basic(&self.creds).ok_or_else(|| {
                Error::msg(format!(
                    "{who} asks for a user name and password: put them in {AUTH_FILE}"
                ))
            })?);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("{who}: unsupported authentication scheme {scheme:?}");
        }
        let p = challenge_params(params);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let realm = get("realm")
            .ok_or_else(|| Error::msg(format!("{who}: bearer challenge without a realm")))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            bail!("{who}: token realm {realm:?} is not a URL");
        }
        let scope = get("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.r.path));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(s) = get("service") {
            req = req.query("service", s);
        }
        if let Some(b) = basic(&self.creds) {
            req = req.header("Authorization", &b);
        }
        let mut resp = req
            .call()
            .with_context(|| format!("{who}: asking {realm} for a token"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            bail!(
                "{who}: the token service {realm} answered {status}{}",
                if self.creds.is_none() {
                    format!(" (no credentials for this registry in {AUTH_FILE})")
                } else {
                    String::new()
                }
            );
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .with_context(|| format!("{who}: reading the token from {realm}"))?;
        let t: Token = serde_json::from_slice(&body)
            .with_context(|| format!("{who}: the token service {realm} sent no token JSON"))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::msg(format!("{who}: the token service {realm} sent no token")))?;
        self.auth = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// GET `url`, meeting an auth challenge once and retrying transient
    /// failures. A 404 is returned to the caller; other errors are
    /// errors.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url);
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range_from.filter(|f| *f > 0) {
                req = req.header("Range", &format!("bytes={from}-"));
            }
            let res = req.call();
            let transient = match &res {
                Err(e) => Some(e.to_string()),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    Some(format!("HTTP {}", r.status().as_u16()))
                }
                Ok(_) => None,
            };
            if let Some(why) = transient {
                if attempt >= ATTEMPTS {
                    bail!(
                        "GET {url}: {why} (tried {ATTEMPTS} times): the registry is unreachable or failing"
                    );
                }
                eprintln!("os-agent: GET {url}: {why}; retrying");
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
                continue;
            }
            let mut resp = res.expect("checked above");
            if resp.status().as_u16() == 401 && !challenged {
                challenged = true;
                let ch = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                // Drain the small error body so the connection can be reused.
                let _ = resp.body_mut().with_config().limit(1 << 16).read_to_vec();
                self.authenticate(&ch)?;
                continue;
            }
            return Ok(resp);
        }
    }

    fn fail(url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Error {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 16)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Errs {
            errors: Vec<E>,
        }
        #[derive(Deserialize)]
        struct E {
            code: Option<String>,
            message: Option<String>,
        }
        let why = serde_json::from_slice::<Errs>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| {
                format!(
                    ": {} {}",
                    e.code.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let hint = match status {
            401 | 403 => format!(" (credentials: {AUTH_FILE})"),
            _ => String::new(),
        };
        Error::msg(format!("GET {url}: HTTP {status}{why}{hint}"))
    }

    fn fetch_manifest(&mut self, object: &str, want: Option<&str>) -> Result<Option<Fetched>> {
        let url = self.url(&format!("manifests/{object}"));
        let mut resp = self.get(&url, Some(ACCEPT), None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(Self::fail(&url, resp)),
        }
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let claimed = header("docker-content-digest");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .with_context(|| format!("GET {url}"))?;
        let digest = sha256(&bytes);
        for (what, d) in [
            ("the reference", want),
            ("Docker-Content-Digest", claimed.as_deref()),
        ] {
            if let Some(d) = d {
                if d != digest {
                    bail!("GET {url}: the manifest has digest {digest}, {what} says {d}");
                }
            }
        }
        Ok(Some(Fetched {
            bytes,
            digest,
            media_type,
        }))
    }
}

impl Source for Registry {
    fn describe(&self) -> String {
        self.r.to_string()
    }

    fn repository(&self) -> Option<(String, String)> {
        Some((self.r.host.clone(), self.r.path.clone()))
    }

    fn top(&mut self) -> Result<Fetched> {
        let object = self.r.object().to_string();
        let want = self.r.digest.clone();
        self.fetch_manifest(&object, want.as_deref())?
            .ok_or_else(|| Error::msg(format!("{}: no such manifest (404)", self.r)))
    }

    fn manifest(&mut self, digest: &str) -> Result<Fetched> {
        self.fetch_manifest(digest, Some(digest))?
            .ok_or_else(|| Error::msg(format!("{}: manifest {digest} not found (404)", self.r)))
    }

    fn small_blob(&mut self, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT {
            bail!("blob {digest}: {size} bytes is too large");
        }
        let url = self.url(&format!("blobs/{digest}"));
        let mut resp = self.get(&url, None, None)?;
        if resp.status().as_u16() != 200 {
            return Err(Self::fail(&url, resp));
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(size)
            .read_to_vec()
            .with_context(|| format!("GET {url}"))?;
        let got = sha256(&bytes);
        if got != digest || bytes.len() as u64 != size {
            bail!(
                "GET {url}: {} bytes with digest {got}, expected {size} bytes with {digest}",
                bytes.len()
            );
        }
        Ok(bytes)
    }

    fn open_blob(&mut self, digest: &str, offset: u64) -> Result<(Box<dyn Read + '_>, u64)> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.get(&url, None, Some(offset))?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                // `bytes FROM-TO/TOTAL`: it must start where we asked.
                let from = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if from != Some(offset) {
                    bail!("GET {url}: asked for bytes from {offset}, got Content-Range {from:?}");
                }
                offset
            }
            _ => return Err(Self::fail(&url, resp)),
        };
        Ok((Box::new(resp.into_body().into_reader()), start))
    }

    fn signatures(&mut self, digest: &str) -> Result<Option<Fetched>> {
        let Some(tag) = boot_contract::upgrade::signature_tag(digest) else {
            return Ok(None);
        };
        self.fetch_manifest(&tag, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("10.0.2.2:5000/test/os:v2").unwrap();
        assert_eq!(
            (r.host.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("10.0.2.2:5000", "test/os", Some("v2"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("reg.example/os@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = Reference::parse("debian:12").unwrap();
        assert_eq!(r.host, "registry-1.docker.io");
        assert_eq!(r.path, "library/debian");
        for bad in [
            "reg.example/os",
            "reg.example/OS:v1",
            "reg.example/os:v 1",
            "reg.example/os@sha256:zz",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_from_a_docker_config() {
        let text = r#"{"auths": {
            "https://reg.example:5000/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "other.example": {"username": "u", "password": "p"},
            "tok.example": {"registrytoken": "T"},
            "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="}
        }}"#;
        let c = |h: &str| creds_for(text, h, "f").unwrap();
        assert_eq!(
            c("reg.example:5000"),
            Some(Creds::Basic {
                user: "user".into(),
                pass: "pa:ss".into()
            })
        );
        assert_eq!(
            c("other.example"),
            Some(Creds::Basic {
                user: "u".into(),
                pass: "p".into()
            })
        );
        assert_eq!(c("tok.example"), Some(Creds::Token("T".into())));
        assert!(matches!(
            c("registry-1.docker.io"),
            Some(Creds::Basic { .. })
        ));
        assert_eq!(c("nowhere.example"), None);
        assert!(creds_for("{\"auths\": {\"x\": {}}}", "x", "f").is_err());
        assert!(creds_for("{\"auths\": []}", "x", "f").is_err());
        assert!(creds_for("nonsense", "x", "f").is_err());
    }

    #[test]
    fn base64_and_challenges() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        assert!(insecure("10.0.2.2:5000", &["10.0.2.2".into()]));
        assert!(insecure("10.0.2.2:5000", &["10.0.2.2:5000".into()]));
        assert!(!insecure("10.0.2.2:5000", &["10.0.2.3".into()]));
    }
}

//! A client for the OCI distribution API: requests, auth and the pull side
//! (the push side is [`super::upload`]).
//!
//! HTTPS by default; plain HTTP only for loopback hosts and hosts the user
//! names with `--insecure-registry`. Handles anonymous and credentialed
//! bearer-token flows (pull and push scopes) and basic auth, retries
//! connection failures, 429 and 5xx answers and broken blob transfers with
//! exponential backoff ([`crate::retry`]), and streams blobs into the
//! [`BlobCache`] while verifying their digest.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::auth::{self, Credentials};
use super::manifest::{Descriptor, Digest, MANIFEST_ACCEPT};
use super::reference::{host_without_port, is_loopback_host, Reference};
use crate::cache::{BlobCache, InsertError};
use crate::progress::{short, Event, Reporter};
pub use crate::retry::RetryPolicy;
use crate::retry::{retry, Outcome};
use indicatif::HumanBytes;
use sha2::{Digest as _, Sha256};

pub struct RegistryClient {
    agent: ureq::Agent,
    insecure: Vec<String>,
    retry: RetryPolicy,
    /// `Authorization` header values per (registry, repository).
    tokens: Mutex<HashMap<(String, String), String>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
}

pub(super) const MAX_MANIFEST: u64 = 8 << 20;

/// What a request needs of a repository: to read it, or to write it too
/// (the scope a bearer token is asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A request body.
pub enum ReqBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A file streamed from disk (never read whole into memory), opened
    /// anew for every attempt; `progress` gets the bytes sent so far.
    File {
        path: &'a Path,
        len: u64,
        progress: Option<&'a dyn Fn(u64)>,
        /// Hash what is sent and withhold the last bytes unless the content
        /// has this digest: the request is cut off, so the server never
        /// receives a whole body that does not match.
        verify: Option<&'a Digest>,
    },
}

/// One registry request; sent again as it is when an auth challenge or a
/// transient failure asks for it.
pub struct Request<'a> {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: ReqBody<'a>,
    /// Another repository of the same registry the request reads (the
    /// source of a cross-repository mount): its pull scope is asked for too.
    pub also_pull: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub fn new(method: &'static str, url: String) -> Self {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: ReqBody::Empty,
            also_pull: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: ReqBody<'a>) -> Self {
        self.body = body;
        self
    }
}

/// A file body on its way out: counts what was sent and, when asked,
/// checks its digest before handing over the last bytes.
struct Streamed<'a> {
    file: std::fs::File,
    len: u64,
    done: u64,
    progress: Option<&'a dyn Fn(u64)>,
    verify: Option<(Sha256, &'a Digest)>,
    /// The digest the content had instead, once known.
    mismatch: Option<Digest>,
}

impl Read for Streamed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.done += n as u64;
        if let Some((h, _)) = &mut self.verify {
            h.update(&buf[..n]);
        }
        if self.done >= self.len {
            if let Some((h, want)) = self.verify.take() {
                let got = Digest::from_sha256(&h.finalize());
                if got != *want {
                    self.mismatch = Some(got);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the content does not match its digest",
                    ));
                }
            }
        }
        if let Some(p) = self.progress {
            p(self.done);
        }
        Ok(n)
    }
}

impl RegistryClient {
    /// `insecure` lists `host[:port]` (or bare hosts) that may be reached
    /// over plain HTTP; loopback hosts always may.
    pub fn new(insecure: Vec<String>) -> Self {
        RegistryClient {
            agent: crate::http::agent(),
            insecure,
            retry: RetryPolicy::default(),
            tokens: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    fn scheme(&self, r: &Reference) -> &'static str {
        if self.plain_http_allowed(&r.registry) {
            "http"
        } else {
            "https"
        }
    }

    /// Whether `authority` (`host[:port]`) may be reached over plain HTTP:
    /// a loopback address (parsed, see [`is_loopback_host`]) or a host the
    /// user listed with `--insecure-registry`.
    fn plain_http_allowed(&self, authority: &str) -> bool {
        let host = host_without_port(authority);
        is_loopback_host(host)
            || self
                .insecure
                .iter()
                .any(|h| h == authority || host_without_port(h) == host && !h.contains(':'))
    }

    /// Refuses a token realm that is not an http(s) URL, and a plain-HTTP
    /// realm when credentials would go to it (unless its host may be
    /// reached over plain HTTP anyway): a registry must not be able to
    /// send the user's password across the network in clear text.
    fn check_realm(&self, r: &Reference, realm: &str, with_creds: bool, what: &str) -> Result<()> {
        let lower = realm.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Ok(());
        }
        if !lower.starts_with("http://") {
            bail!(
                "{what}: the bearer challenge of {} names the token service {realm:?}, which is not an https:// URL",
                r.registry
            );
        }
        let rest = &realm["http://".len()..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        if with_creds && !self.plain_http_allowed(authority) {
            bail!(
                "{what}: the token service {realm} of {} is plain HTTP; refusing to send the credentials for {} to it (the realm must be https://, or its host loopback or listed with --insecure-registry)",
                r.registry,
                r.registry
            );
        }
        Ok(())
    }

    /// `scheme://host[:port]` of the registry's API.
    pub fn base(&self, r: &Reference) -> String {
        format!("{}://{}", self.scheme(r), r.api_host())
    }

    /// The URL of `/v2/<repository>/<path>`.
    pub fn url(&self, r: &Reference, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base(r), r.repository)
    }

    /// Resolves a `Location` header (absolute, or relative to the
    /// registry's root as registries send it) into a URL.
    pub fn resolve_location(&self, r: &Reference, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base(r))
        } else {
            format!(
                "{}/v2/{}/blobs/uploads/{location}",
                self.base(r),
                r.repository
            )
        }
    }

    /// Whether `url` goes to the registry itself: credentials are sent
    /// only there, never to another host a `Location` names.
    fn same_origin(&self, r: &Reference, url: &str) -> bool {
        url.strip_prefix(&self.base(r))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn credentials(&self, r: &Reference) -> Result<Option<Credentials>> {
        let mut cache = self.creds.lock().expect("credential cache poisoned");
        if let Some(c) = cache.get(&r.registry) {
            return Ok(c.clone());
        }
        let c = auth::lookup(&r.registry)?;
        cache.insert(r.registry.clone(), c.clone());
        Ok(c)
    }

    /// Sends a GET, answering one auth challenge, retrying transient
    /// failures. Returns a 2xx response or an error naming what failed.
    fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = Request::new("GET", url.to_string());
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = self.request(r, Access::Pull, &req, what)?;
        check_status(resp, r, url, what)
    }

    /// Sends `req` with the credentials `r`'s registry wants, retrying
    /// transient failures (connection trouble, 429, 5xx) with the client's
    /// [`RetryPolicy`]. Any other answer is returned for the caller to
    /// judge (see [`check_status`]).
    pub fn request(
        &self,
        r: &Reference,
        access: Access,
        req: &Request,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        retry(self.retry, what, |_| self.call(r, access, req, what))
    }

    /// One attempt of `req`: with the cached `Authorization` for the
    /// repository, and once more after answering a 401's challenge.
    pub fn call(
        &self,
        r: &Reference,
        access: Access,
        req: &Request,
        what: &str,
    ) -> Result<Outcome<ureq::http::Response<ureq::Body>>> {
        let key = (r.registry.clone(), r.repository.clone());
        let same = self.same_origin(r, &req.url);
        let cached = same
            .then(|| {
                self.tokens
                    .lock()
                    .expect("token cache poisoned")
                    .get(&key)
                    .cloned()
            })
            .flatten();
        let resp = match self.send(req, cached.as_deref())? {
            Ok(resp) => resp,
            Err(e) => return classify_transport(e, &req.url),
        };
        let resp = if resp.status().as_u16() == 401 && same {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(challenge) = challenge else {
                bail!(
                    "{what}: {} answered 401 Unauthorized without an authentication challenge",
                    req.url
                );
            };
            let authz = self.authorize(r, &challenge, access, req.also_pull, what)?;
            self.tokens
                .lock()
                .expect("token cache poisoned")
                .insert(key, authz.clone());
            match self.send(req, Some(&authz))? {
                Ok(resp) => resp,
                Err(e) => return classify_transport(e, &req.url),
            }
        } else {
            resp
        };
        let status = resp.status().as_u16();
        if status == 429 || (500..=599).contains(&status) {
            let body = error_body(resp);
            return Ok(Outcome::Transient(anyhow!(
                "{} {} answered HTTP {status}{body}",
                req.method,
                req.url
            )));
        }
        Ok(Outcome::Ok(resp))
    }

    /// Sends `req` once. The outer error is a local failure (the body's
    /// file cannot be opened), the inner one the transport's.
    fn send(
        &self,
        req: &Request,
        authz: Option<&str>,
    ) -> Result<Result<ureq::http::Response<ureq::Body>, ureq::Error>> {
        let mut b = ureq::http::Request::builder()
            .method(req.method)
            .uri(&req.url);
        for (k, v) in &req.headers {
            b = b.header(*k, v);
        }
        if let Some(a) = authz {
            b = b.header("Authorization", a);
        }
        let bad = |e: ureq::http::Error| anyhow!(e).context(format!("building {}", req.url));
        Ok(match &req.body {
            ReqBody::Empty => self.agent.run(b.body(()).map_err(bad)?),
            ReqBody::Bytes(bytes) => self.agent.run(b.body(*bytes).map_err(bad)?),
            ReqBody::File {
                path,
                len,
                progress,
                verify,
            } => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let actual = file
                    .metadata()
                    .with_context(|| format!("reading the size of {}", path.display()))?
                    .len();
                if actual != *len {
                    bail!(
                        "{}: {actual} bytes, expected {len} (did it change?)",
                        path.display()
                    );
                }
                let mut body = Streamed {
                    file,
                    len: *len,
                    done: 0,
                    progress: *progress,
                    verify: verify.map(|d| (Sha256::new(), d)),
                    mismatch: None,
                };
                let b = b.header("Content-Length", len.to_string());
                let result = self.agent.run(
                    b.body(ureq::SendBody::from_reader(&mut body))
                        .map_err(bad)?,
                );
                if let (Some(got), Some(want)) = (&body.mismatch, verify) {
                    bail!(
                        "{}: content has digest {got}, expected {want}; the upload was cut off before its end, so nothing was stored",
                        path.display()
                    );
                }
                result
            }
        })
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` value.
    fn authorize(
        &self,
        r: &Reference,
        challenge: &str,
        access: Access,
        also_pull: Option<&str>,
        what: &str,
    ) -> Result<String> {
        let (scheme, params) = parse_challenge(challenge);
        let creds = self.credentials(r)?;
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let Some(c) = creds else {
                    bail!(
                        "{what}: {} requires authentication (HTTP 401) and no credentials were found for it in $REGISTRY_AUTH_FILE or ~/.docker/config.json",
                        r.registry
                    );
                };
                Ok(basic(&c))
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    anyhow!("{what}: bearer challenge without a realm: {challenge}")
                })?;
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(service) = params.get("service") {
                    url.push_str(&format!("{sep}service={}", encode(service)));
                    sep = '&';
                }
                for scope in scopes(&params, &r.repository, access, also_pull) {
                    url.push_str(&format!("{sep}scope={}", encode(&scope)));
                    sep = '&';
                }
                self.check_realm(r, realm, creds.is_some(), what)?;
                let authz = creds.as_ref().map(basic);
                let token_what = format!("{what}: requesting a token from {realm}");
                let mut resp = retry(self.retry, &token_what, |_| {
                    let req = Request::new("GET", url.clone());
                    let resp = match self.send(&req, authz.as_deref())? {
                        Ok(resp) => resp,
                        Err(e) => return classify_transport(e, &url),
                    };
                    let status = resp.status().as_u16();
                    if status == 429 || status >= 500 {
                        return Ok(Outcome::Transient(anyhow!(
                            "the token service {realm} answered HTTP {status}"
                        )));
                    }
                    Ok(Outcome::Ok(resp))
                })?;
                let status = resp.status().as_u16();
                if status == 401 || status == 403 {
                    bail!(
                        "{what}: authentication to {} failed: the token service {realm} answered HTTP {status}{}",
                        r.registry,
                        if creds.is_none() { " (no credentials found for this registry)" } else { " (check the credentials)" }
                    );
                }
                if !(200..300).contains(&status) {
                    bail!("{what}: the token service {realm} answered HTTP {status}");
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_MANIFEST)
                    .read_to_vec()
                    .with_context(|| format!("{what}: reading the token from {realm}"))?;
                let t: Token = serde_json::from_slice(&body).with_context(|| {
                    format!("{what}: the token service {realm} sent malformed JSON")
                })?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| anyhow!("{what}: the token service {realm} sent no token"))?;
                Ok(format!("Bearer {token}"))
            }
            other => bail!(
                "{what}: unsupported authentication scheme {other:?} from {}",
                r.registry
            ),
        }
    }

    /// Fetches a manifest or index by tag or digest. Returns the body, the
    /// response's media type and the body's digest (checked against the
    /// reference when it names one).
    pub fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest)> {
        let what = format!(
            "fetching manifest {reference} of {}/{}",
            r.registry, r.repository
        );
        let url = self.url(r, &format!("manifests/{reference}"));
        let mut resp = self.get(r, &url, Some(MANIFEST_ACCEPT), &what)?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .with_context(|| format!("{what}: reading the body"))?;
        let digest = Digest::of(&body);
        if reference.starts_with("sha256:") && digest.as_str() != reference {
            bail!("{what}: the registry sent content with digest {digest}, expected {reference}");
        }
        Ok((body, ct, digest))
    }

    /// Makes sure blob `desc` is in the cache (verified) and returns its path.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        cache: &BlobCache,
        progress: &dyn Reporter,
    ) -> Result<PathBuf> {
        let d = &desc.digest;
        if let Some(p) = cache.get_verified(d, Some(desc.size))? {
            progress.event(Event::Stage {
                message: format!("cached {} ({})", short(d.as_str()), HumanBytes(desc.size)),
            });
            return Ok(p);
        }
        let what = format!("fetching blob {d} of {}/{}", r.registry, r.repository);
        let url = self.url(r, &format!("blobs/{d}"));
        let mut delay = self.retry.first_delay;
        for attempt in 1..=self.retry.attempts {
            let resp = self.get(r, &url, None, &what)?;
            progress.event(Event::Start {
                id: d.to_string(),
                label: format!("download {}", short(d.as_str())),
                total: desc.size,
            });
            let mut reader = resp.into_body().into_reader();
            let result = cache.insert(d, Some(desc.size), &mut reader as &mut dyn Read, &mut |n| {
                progress.event(Event::Advance {
                    id: d.to_string(),
                    done: n,
                })
            });
            let failed = result.is_err();
            progress.event(Event::Finish {
                id: d.to_string(),
                message: (!failed).then(|| {
                    format!(
                        "downloaded {} ({})",
                        short(d.as_str()),
                        HumanBytes(desc.size)
                    )
                }),
            });
            match result {
                Ok(p) => return Ok(p),
                Err(e) if e.is_transient() && attempt < self.retry.attempts => {
                    tracing::warn!(
                        "{what}: {e} (attempt {attempt}/{}); retrying",
                        self.retry.attempts
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e @ InsertError::DigestMismatch { .. }) => {
                    return Err(anyhow!(e).context(format!(
                        "{what}: the registry sent corrupted content; nothing was cached"
                    )))
                }
                Err(e) => return Err(anyhow!(e).context(what)),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

fn classify_transport<T>(e: ureq::Error, url: &str) -> Result<Outcome<T>> {
    let transient = matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    );
    let err = anyhow!(e).context(format!("requesting {url}"));
    if transient {
        Ok(Outcome::Transient(err))
    } else {
        Err(err)
    }
}

/// Turns an answer that is not 2xx into an error naming what failed: the
/// registry's error text, and for 401/403 where credentials come from.
pub fn check_status(
    resp: ureq::http::Response<ureq::Body>,
    r: &Reference,
    url: &str,
    what: &str,
) -> Result<ureq::http::Response<ureq::Body>> {
    let status = resp.status().as_u16();
    match status {
        200..=299 => Ok(resp),
        401 | 403 => {
            let body = error_body(resp);
            bail!(
                "{what}: authentication to {} failed (HTTP {status}{body}); check the credentials for {} in $REGISTRY_AUTH_FILE or ~/.docker/config.json",
                r.registry,
                r.registry
            )
        }
        404 => {
            let body = error_body(resp);
            bail!("{what}: not found at {url} (HTTP 404{body})")
        }
        _ => {
            let body = error_body(resp);
            bail!("{what}: {url} answered HTTP {status}{body}")
        }
    }
}

/// The scopes to ask a token service for: the challenge's (it names what
/// the refused request needed, several separated by spaces), widened to
/// push when pushing, plus pull on a mount's source repository.
fn scopes(
    params: &HashMap<String, String>,
    repository: &str,
    access: Access,
    also_pull: Option<&str>,
) -> Vec<String> {
    let mut v: Vec<String> = params
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let own = format!("repository:{repository}:");
    match v.iter().position(|s| s.starts_with(&own)) {
        None => v.push(format!("{own}{}", access.actions())),
        Some(i) if access == Access::Push && !v[i][own.len()..].split(',').any(|a| a == "push") => {
            v[i] = format!("{own}{}", access.actions());
        }
        Some(_) => {}
    }
    if let Some(from) = also_pull {
        let theirs = format!("repository:{from}:");
        if !v.iter().any(|s| s.starts_with(&theirs)) {
            v.push(format!("{theirs}pull"));
        }
    }
    v
}

fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

pub(super) fn error_body(mut resp: ureq::http::Response<ureq::Body>) -> String {
    let text = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(300).collect::<String>())
    }
}

/// Percent-encodes a query parameter value.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `Bearer realm="…",service="…"` into the scheme and parameters.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/debian:pull");
        let (s, p) = parse_challenge("Basic realm=Registry");
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry");
    }

    #[test]
    fn token_scopes_for_pulls_pushes_and_mounts() {
        let (_, p) = parse_challenge(r#"Bearer realm="r",scope="repository:a/b:pull""#);
        assert_eq!(
            scopes(&p, "a/b", Access::Pull, None),
            ["repository:a/b:pull"]
        );
        assert_eq!(
            scopes(&p, "a/b", Access::Push, None),
            ["repository:a/b:pull,push"]
        );
        let (_, p) = parse_challenge(
            r#"Bearer realm="r",scope="repository:a/b:pull,push repository:c:pull""#,
        );
        assert_eq!(
            scopes(&p, "a/b", Access::Push, Some("c")),
            ["repository:a/b:pull,push", "repository:c:pull"]
        );
        let (_, p) = parse_challenge(r#"Bearer realm="r""#);
        assert_eq!(
            scopes(&p, "a/b", Access::Push, Some("old/x")),
            ["repository:a/b:pull,push", "repository:old/x:pull"]
        );
    }

    #[test]
    fn locations_resolve_and_credentials_stay_with_the_registry() {
        let c = RegistryClient::new(vec![]);
        let r = Reference::parse("127.0.0.1:5000/a/b:1").unwrap();
        assert_eq!(
            c.resolve_location(&r, "/v2/a/b/blobs/uploads/u?_state=x"),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            c.resolve_location(&r, "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u"),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u"
        );
        assert!(c.same_origin(&r, "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u"));
        assert!(!c.same_origin(&r, "http://127.0.0.1:50001/v2/"));
        assert!(!c.same_origin(&r, "https://storage.example/upload"));
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed() {
        let c = RegistryClient::new(vec!["reg.lan:5000".into(), "other.lan".into()]);
        let r = |s: &str| Reference::parse(s).unwrap();
        assert_eq!(c.scheme(&r("127.0.0.1:5000/x")), "http");
        assert_eq!(c.scheme(&r("localhost:5000/x")), "http");
        assert_eq!(c.scheme(&r("[::1]:5000/x")), "http");
        assert_eq!(c.scheme(&r("reg.lan:5000/x")), "http");
        assert_eq!(c.scheme(&r("reg.lan:6000/x")), "https");
        assert_eq!(c.scheme(&r("other.lan:7000/x")), "http");
        assert_eq!(c.scheme(&r("ghcr.io/x")), "https");
        // Loopback is an address, not a prefix.
        assert_eq!(c.scheme(&r("127.1.2.3:5000/x")), "http");
        assert_eq!(c.scheme(&r("127.attacker.example/x")), "https");
        assert_eq!(c.scheme(&r("127.attacker.example:5000/x")), "https");
        assert_eq!(c.scheme(&r("127.0.0.1.nip.io:5000/x")), "https");
        assert_eq!(c.scheme(&r("registry.localhost:5000/x")), "https");
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn credentials_go_only_to_https_or_trusted_realms() {
        let c = RegistryClient::new(vec!["reg.lan".into(), "tok.lan:8080".into()]);
        let r = Reference::parse("ghcr.io/x").unwrap();
        let ok = |realm: &str, creds: bool| c.check_realm(&r, realm, creds, "pull").is_ok();
        assert!(ok("https://ghcr.io/token", true));
        assert!(ok("HTTPS://auth.example/token?x=1", true));
        assert!(ok("http://127.0.0.1:5000/token", true));
        assert!(ok("http://[::1]:5000/token", true));
        assert!(ok("http://localhost/token", true));
        assert!(ok("http://reg.lan:9999/token", true));
        assert!(ok("http://tok.lan:8080/token", true));
        // Anonymous token requests carry nothing worth stealing.
        assert!(ok("http://auth.example/token", false));
        for realm in [
            "http://auth.example/token",
            "http://127.attacker.example/token",
            "http://tok.lan:8081/token",
            "http://localhost.attacker.example/token",
            "http://127.0.0.1@attacker.example/token",
            "http://0.0.0.0:5000/token",
        ] {
            let e = c
                .check_realm(&r, realm, true, "pull")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("refusing to send the credentials for ghcr.io"),
                "{realm}: {e}"
            );
        }
        let e = c
            .check_realm(&r, "ftp://x/token", false, "pull")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an https:// URL"), "{e}");
    }
}

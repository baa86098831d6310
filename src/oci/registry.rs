//! A client for the OCI distribution API (pull side).
//!
//! HTTPS by default; plain HTTP only for loopback hosts and hosts the user
//! names with `--insecure-registry`. Handles anonymous and credentialed
//! bearer-token flows and basic auth, retries connection failures, 429 and
//! 5xx answers and broken blob transfers with exponential backoff, and
//! streams blobs into the [`BlobCache`] while verifying their digest.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::auth::{self, Credentials};
use super::manifest::{Descriptor, Digest, MANIFEST_ACCEPT};
use super::reference::{host_without_port, is_loopback_host, Reference};
use crate::cache::{BlobCache, InsertError};
use crate::progress::{short, Event, Reporter};
use indicatif::HumanBytes;

use crate::retry::Attempt;
pub use crate::retry::RetryPolicy;

pub struct RegistryClient {
    agent: ureq::Agent,
    insecure: Vec<String>,
    retry: RetryPolicy,
    /// `Authorization` header values per (registry, repository).
    tokens: Mutex<HashMap<(String, String), String>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
}

const MAX_MANIFEST: u64 = 8 << 20;

/// What one HTTP exchange gave.
enum Outcome {
    Ok(ureq::http::Response<ureq::Body>),
    /// Worth another try (connection trouble, 429, 5xx).
    Transient(anyhow::Error),
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

    fn url(&self, r: &Reference, path: &str) -> String {
        format!(
            "{}://{}/v2/{}/{path}",
            self.scheme(r),
            r.api_host(),
            r.repository
        )
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
        self.retry.run(what, |_| {
            Ok(match self.get_once(r, url, accept, what)? {
                Outcome::Ok(resp) => Attempt::Done(resp),
                Outcome::Transient(e) => Attempt::Retry(e),
            })
        })
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        authz: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(a) = authz {
            req = req.header("Authorization", a);
        }
        req.call()
    }

    fn get_once(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Outcome> {
        let key = (r.registry.clone(), r.repository.clone());
        let cached = self
            .tokens
            .lock()
            .expect("token cache poisoned")
            .get(&key)
            .cloned();
        let resp = match self.send(url, accept, cached.as_deref()) {
            Ok(resp) => resp,
            Err(e) => return classify_transport(e, url),
        };
        let resp = if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(challenge) = challenge else {
                bail!(
                    "{what}: {url} answered 401 Unauthorized without an authentication challenge"
                );
            };
            let authz = self.authorize(r, &challenge, what)?;
            self.tokens
                .lock()
                .expect("token cache poisoned")
                .insert(key, authz.clone());
            match self.send(url, accept, Some(&authz)) {
                Ok(resp) => resp,
                Err(e) => return classify_transport(e, url),
            }
        } else {
            resp
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(Outcome::Ok(resp)),
            429 | 500..=599 => Ok(Outcome::Transient(anyhow!("{url} answered HTTP {status}"))),
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

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` value.
    fn authorize(&self, r: &Reference, challenge: &str, what: &str) -> Result<String> {
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
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                url.push_str(&format!("{sep}scope={}", encode(&scope)));
                self.check_realm(r, realm, creds.is_some(), what)?;
                let authz = creds.as_ref().map(basic);
                let token_what = format!("{what}: requesting a token from {realm}");
                let resp = self.retry.run(&token_what, |_| {
                    let resp = match self.send(&url, None, authz.as_deref()) {
                        Ok(resp) => resp,
                        Err(e) => return Ok(Attempt::Retry(anyhow!(e))),
                    };
                    let status = resp.status().as_u16();
                    if status == 429 || status >= 500 {
                        return Ok(Attempt::Retry(anyhow!(
                            "the token service {realm} answered HTTP {status}"
                        )));
                    }
                    Ok(Attempt::Done(resp))
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
                let mut resp = resp;
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
        self.retry.run(&what, |_| {
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
                Ok(p) => Ok(Attempt::Done(p)),
                Err(e) if e.is_transient() => Ok(Attempt::Retry(anyhow!(e))),
                Err(e @ InsertError::DigestMismatch { .. }) => Err(anyhow!(e).context(format!(
                    "{what}: the registry sent corrupted content; nothing was cached"
                ))),
                Err(e) => Err(anyhow!(e).context(what.clone())),
            }
        })
    }
}

fn classify_transport(e: ureq::Error, url: &str) -> Result<Outcome> {
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

fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

fn error_body(mut resp: ureq::http::Response<ureq::Body>) -> String {
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
fn encode(s: &str) -> String {
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

//! Registry credentials from the files Docker, Podman and skopeo use.
//!
//! Looked up in order: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`). In each file,
//! `credHelpers.<host>` or `credsStore` name a `docker-credential-<helper>`
//! program; otherwise `auths.<host>.auth` holds base64 `user:password`.

use std::collections::BTreeMap;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::reference::DOCKER_HUB;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The auth files to consult, most specific first.
fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(f) = var("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = var("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Some(d) = var("DOCKER_CONFIG") {
        files.push(PathBuf::from(d).join("config.json"));
    } else if let Some(h) = var("HOME") {
        files.push(PathBuf::from(h).join(".docker/config.json"));
    }
    files
}

/// The key forms a registry may be stored under.
fn normalise_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// Credentials for `registry` (`host[:port]`, `docker.io` for Docker Hub).
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    for path in auth_files() {
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: AuthFile = serde_json::from_slice(&text)
            .with_context(|| format!("parsing registry credentials in {}", path.display()))?;
        if let Some(c) = from_file(&file, registry)
            .with_context(|| format!("credentials for {registry} in {}", path.display()))?
        {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn from_file(file: &AuthFile, registry: &str) -> Result<Option<Credentials>> {
    let helper = file
        .cred_helpers
        .iter()
        .find(|(k, _)| normalise_key(k) == registry)
        .map(|(_, v)| v.clone());
    for (key, entry) in &file.auths {
        if normalise_key(key) != registry {
            continue;
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .context("field auths.*.auth is not valid base64")?;
            let decoded = String::from_utf8(decoded).context("field auths.*.auth is not UTF-8")?;
            let Some((u, p)) = decoded.split_once(':') else {
                bail!("field auths.*.auth does not decode to user:password");
            };
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
    }
    if let Some(h) = helper.or_else(|| file.creds_store.clone()) {
        return run_helper(&h, registry);
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with the server on stdin.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperOut {
        username: String,
        secret: String,
    }
    let prog = format!("docker-credential-{helper}");
    let tool = crate::command::Tool::new(
        &prog,
        format!("the credential helper named for {registry} in the registry auth file"),
    );
    let server = if registry == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let out = tool
        .output(&["get"], server.as_bytes())
        .with_context(|| format!("running credential helper {prog}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        crate::command::check(std::path::Path::new(&prog), &["get"], &out)?;
    }
    let parsed: HelperOut = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing the output of credential helper {prog}"))?;
    Ok(Some(Credentials {
        username: parsed.username,
        password: parsed.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_field_and_key_forms() {
        let file: AuthFile = serde_json::from_str(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                "127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let c = from_file(&file, "docker.io").unwrap().unwrap();
        assert_eq!(c.username, "user");
        assert_eq!(c.password, "pa:ss");
        let c = from_file(&file, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(c.username, "a");
        assert!(from_file(&file, "ghcr.io").unwrap().is_none());
        assert!(!format!("{c:?}").contains('b'));
    }

    #[test]
    fn bad_base64_is_an_error() {
        let file: AuthFile =
            serde_json::from_str(r#"{"auths":{"r.example":{"auth":"%%%"}}}"#).unwrap();
        let err = from_file(&file, "r.example").unwrap_err();
        assert!(format!("{err:#}").contains("base64"));
    }
}

//! Image references: what the user typed, parsed into a registry location or
//! a local source.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Registry(Reference),
    /// An OCI image layout directory, optionally naming a tag from its
    /// `index.json` (`org.opencontainers.image.ref.name`).
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
    /// A tar archive of a root filesystem (plain, gzip or zstd), taken as
    /// a single layer.
    RootfsTar {
        file: PathBuf,
    },
}

impl ImageSource {
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            if rest.is_empty() {
                bail!("image {s:?}: expected oci-layout:DIR[:TAG]");
            }
            // A tag never contains '/', so a last ':' followed by no '/' splits it.
            return Ok(match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
                    ImageSource::OciLayout {
                        dir: dir.into(),
                        tag: Some(tag.to_string()),
                    }
                }
                _ => ImageSource::OciLayout {
                    dir: rest.into(),
                    tag: None,
                },
            });
        }
        if let Some(rest) = s.strip_prefix("rootfs-tar:") {
            if rest.is_empty() {
                bail!("image {s:?}: expected rootfs-tar:FILE");
            }
            return Ok(ImageSource::RootfsTar { file: rest.into() });
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        if rest.is_empty() {
            bail!("image {s:?}: expected REGISTRY/REPOSITORY[:TAG][@DIGEST]");
        }
        Ok(ImageSource::Registry(Reference::parse(rest)?))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(r) => write!(f, "{r}"),
            ImageSource::OciLayout { dir, tag: Some(t) } => {
                write!(f, "oci-layout:{}:{t}", dir.display())
            }
            ImageSource::OciLayout { dir, tag: None } => write!(f, "oci-layout:{}", dir.display()),
            ImageSource::RootfsTar { file } => write!(f, "rootfs-tar:{}", file.display()),
        }
    }
}

/// A registry image reference, normalised like Docker does:
/// `debian` is `docker.io/library/debian:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| anyhow::anyhow!("image reference {s:?}: {why}");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| bad(&e.to_string()))?)),
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !t.starts_with(['.', '-']);
            if !valid {
                return Err(bad(
                    "invalid tag (expected [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            })
        {
            return Err(bad(
                "invalid repository name (lowercase letters, digits, '.', '_', '-' and '/')",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Tag or digest, as used in a manifest URL (the digest wins).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host name without a port.
    pub fn host_name(&self) -> &str {
        host_without_port(&self.registry)
    }
}

/// Strips a `:port` (and IPv6 brackets) from `host[:port]`.
pub fn host_without_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
}

/// Whether `host` (without port or brackets) is this machine: an address
/// in 127.0.0.0/8, `::1` (also as `::ffff:127.x.y.z`), or the name
/// `localhost` exactly. Other names count by what they are, not by how
/// they look: `127.attacker.example` is a name like any other, and
/// `foo.localhost` goes to whatever the resolver says.
pub fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names() {
        let r = Reference::parse("debian").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("rancher/k3s:v1.30.4-k3s1").unwrap();
        assert_eq!(r.repository, "rancher/k3s");
        assert_eq!(r.tag.as_deref(), Some("v1.30.4-k3s1"));
    }

    #[test]
    fn host_port_tag_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/a/b:1.0@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.host_name(), "127.0.0.1");
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.registry, "localhost");
        let r = Reference::parse("[::1]:5000/x:y").unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.host_name(), "::1");
    }

    #[test]
    fn loopback_is_decided_by_address_not_by_look() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
            "localhost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "127.attacker.example",
            "127.0.0.1.nip.io",
            "127.0.0.1x",
            "localhost.example",
            "foo.localhost",
            "localhost.",
            "128.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "10.0.0.1",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "",
            "UPPER/case",
            "a//b",
            "x:",
            "x:-bad",
            "x@sha256:zz",
            "x@md5:abc",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn local_sources() {
        assert_eq!(
            ImageSource::parse("oci-layout:/tmp/lay:v1").unwrap(),
            ImageSource::OciLayout {
                dir: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageSource::parse("oci-layout:./lay").unwrap(),
            ImageSource::OciLayout {
                dir: "./lay".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageSource::parse("rootfs-tar:base.tar.gz").unwrap(),
            ImageSource::RootfsTar {
                file: "base.tar.gz".into()
            }
        );
        assert!(matches!(
            ImageSource::parse("docker://127.0.0.1:5000/x").unwrap(),
            ImageSource::Registry(_)
        ));
    }
}

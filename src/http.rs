//! The HTTP agent every client of this crate (registry, apt) uses: one
//! place for timeouts, the user agent, status handling and TLS roots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// An agent that returns 4xx/5xx answers as responses (callers decide what
/// is transient), with connect and response timeouts but no overall limit
/// (blobs and packages can be large).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent(concat!("build-image/", env!("CARGO_PKG_VERSION")))
        .tls_config(TlsConfig::builder().root_certs(root_certs()).build())
        .build()
        .new_agent()
}

/// Where build hosts keep their CA bundle: `$SSL_CERT_FILE`, then
/// Debian/Ubuntu, Fedora/RHEL and Alpine/macOS paths.
fn bundle_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    v.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    v
}

/// The roots HTTPS servers are checked against: the build host's CA bundle
/// (the first of `bundle_paths` that holds certificates), as curl, apt and
/// skopeo use it, so a host's own CAs (a company's TLS-inspecting proxy)
/// and its distrust of others count; without one, the Mozilla roots built
/// into the binary.
fn root_certs() -> RootCerts {
    roots_from(&bundle_paths())
}

fn roots_from(paths: &[PathBuf]) -> RootCerts {
    for path in paths {
        if let Some(certs) = read_bundle(path) {
            tracing::debug!(
                "TLS roots: {} certificates from {}",
                certs.len(),
                path.display()
            );
            return RootCerts::new_with_certs(&certs);
        }
    }
    tracing::debug!("TLS roots: no CA bundle on this host; using the built-in Mozilla roots");
    RootCerts::WebPki
}

/// The certificates of a PEM bundle; `None` when it is missing or holds
/// none.
fn read_bundle(path: &Path) -> Option<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).ok()?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    (!certs.is_empty()).then_some(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_bundle_is_used_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(matches!(
            roots_from(&[missing.clone(), empty.clone()]),
            RootCerts::WebPki
        ));
        let host = Path::new("/etc/ssl/certs/ca-certificates.crt");
        assert!(
            host.exists(),
            "{} is missing: apt-get install ca-certificates",
            host.display()
        );
        match roots_from(&[missing, empty, host.to_path_buf()]) {
            RootCerts::Specific(certs) => assert!(certs.len() > 10, "{}", certs.len()),
            _ => panic!("the host's bundle was not used"),
        }
    }
}

//! Repository trust: OpenPGP keyrings and signed `InRelease` files.
//!
//! A Release is trusted only when at least one of its signatures verifies
//! with a primary key or a properly bound subkey of the keyring, neither
//! the signature nor the key has expired at `now`, and `Valid-Until` (when
//! present) is still ahead. Fields are parsed from the signed text only.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::packet::Signature;
use pgp::types::KeyDetails;

use super::deb822;

/// OpenPGP public keys trusted to sign repositories.
#[derive(Debug, Clone)]
pub struct Keyring {
    /// Where the keys came from, for messages.
    pub name: String,
    pub keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Loads a binary (`.gpg`) or ASCII-armored (`.asc`) keyring holding one
    /// or more public keys.
    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading keyring {}", path.display()))?;
        Keyring::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Keyring> {
        let (iter, _) =
            SignedPublicKey::from_reader_many(bytes).map_err(|e| anyhow!("keyring {name}: {e}"))?;
        let keys = iter
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("keyring {name}: {e}"))?;
        if keys.is_empty() {
            bail!("keyring {name}: holds no public keys");
        }
        Ok(Keyring {
            name: name.to_string(),
            keys,
        })
    }

    /// Fingerprints (uppercase hex) of the primary keys.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.primary_key.fingerprint().as_bytes()))
            .collect()
    }
}

/// One file listed under `SHA256:` in a Release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The verified content of an `InRelease`.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub origin: Option<String>,
    pub label: Option<String>,
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub version: Option<String>,
    /// Seconds since the epoch.
    pub date: Option<i64>,
    pub valid_until: Option<i64>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub acquire_by_hash: bool,
    /// Path relative to the `dists/SUITE/` directory → size and sha256.
    pub files: BTreeMap<String, ReleaseFile>,
    /// Fingerprints (uppercase hex) of the keys whose signatures verified.
    pub signed_by: Vec<String>,
}

/// Verifies a cleartext-signed `InRelease` and parses the signed fields.
/// `now` is seconds since the epoch; `what` names the file in messages.
pub fn verify_inrelease(bytes: &[u8], keyring: &Keyring, now: i64, what: &str) -> Result<Release> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("{what}: not UTF-8 text"))?;
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| anyhow!("{what}: not an OpenPGP cleartext-signed message: {e}"))?;
    let signed = msg.signed_text();
    let mut signed_by = Vec::new();
    let mut problems = Vec::new();
    for sig in msg.signatures() {
        match check_signature(sig, signed.as_bytes(), keyring, now) {
            Ok(fpr) => signed_by.push(fpr),
            Err(e) => problems.push(e),
        }
    }
    if signed_by.is_empty() {
        let detail = if problems.is_empty() {
            "it carries no signature".to_string()
        } else {
            problems.join("; ")
        };
        bail!(
            "{what}: the signature did not verify with any key of keyring {} ({detail})",
            keyring.name
        );
    }
    signed_by.sort();
    signed_by.dedup();
    let mut release = Release::parse(&signed, what)?;
    release.signed_by = signed_by;
    if let Some(until) = release.valid_until {
        if until < now {
            bail!(
                "{what}: expired: Valid-Until {} is before now ({})",
                format_date(until),
                format_date(now)
            );
        }
    }
    Ok(release)
}

/// Checks one signature against the keyring; returns the fingerprint of the
/// verifying key, or why none did.
fn check_signature(
    sig: &Signature,
    data: &[u8],
    keyring: &Keyring,
    now: i64,
) -> Result<String, String> {
    let issuer = sig
        .issuer_fingerprint()
        .first()
        .map(|f| hex::encode_upper(f.as_bytes()))
        .or_else(|| {
            sig.issuer_key_id()
                .first()
                .map(|k| hex::encode_upper(k.as_ref()))
        })
        .unwrap_or_else(|| "unknown key".into());
    let issued_by = |k: &dyn KeyDetails| {
        let fpr = k.fingerprint();
        let id = k.legacy_key_id();
        let (f, i) = (sig.issuer_fingerprint(), sig.issuer_key_id());
        (f.is_empty() && i.is_empty())
            || f.iter().any(|x| **x == fpr)
            || i.iter().any(|x| **x == id)
    };
    let created = sig.created().map(|t| t.as_secs() as i64);
    if let (Some(c), Some(exp)) = (created, sig.signature_expiration_time()) {
        if exp.as_secs() != 0 && c + exp.as_secs() as i64 <= now {
            return Err(format!(
                "signature by {issuer} expired on {}",
                format_date(c + exp.as_secs() as i64)
            ));
        }
    }
    let mut why = format!("no key {issuer} in the keyring");
    for key in &keyring.keys {
        let primary = &key.primary_key;
        if issued_by(primary) {
            if sig.verify(primary, data).is_err() {
                why = format!("bad signature by {issuer}");
                continue;
            }
            if let Some(exp) = primary_expiry(key) {
                if exp <= now {
                    why = format!("key {issuer} expired on {}", format_date(exp));
                    continue;
                }
            }
            return Ok(hex::encode_upper(primary.fingerprint().as_bytes()));
        }
        for sub in &key.public_subkeys {
            if !issued_by(&sub.key) {
                continue;
            }
            if sig.verify(&sub.key, data).is_err() {
                why = format!("bad signature by {issuer}");
                continue;
            }
            if sub.verify_bindings(primary).is_err() {
                why = format!("subkey {issuer} is not validly bound to its primary key");
                continue;
            }
            let binding = sub
                .signatures
                .iter()
                .filter_map(|s| s.key_expiration_time())
                .next_back();
            if let Some(exp) = binding.filter(|d| d.as_secs() != 0) {
                let until = sub.key.created_at().as_secs() as i64 + exp.as_secs() as i64;
                if until <= now {
                    why = format!("subkey {issuer} expired on {}", format_date(until));
                    continue;
                }
            }
            if primary_expiry(key).is_some_and(|e| e <= now) {
                why = format!("the primary key of subkey {issuer} has expired");
                continue;
            }
            return Ok(hex::encode_upper(primary.fingerprint().as_bytes()));
        }
    }
    Err(why)
}

/// When the primary key expires, from its newest self-signature that says.
fn primary_expiry(key: &SignedPublicKey) -> Option<i64> {
    let id = key.primary_key.legacy_key_id();
    let fpr = key.primary_key.fingerprint();
    let own = |s: &&Signature| {
        s.issuer_key_id().iter().any(|k| **k == id)
            || s.issuer_fingerprint().iter().any(|f| **f == fpr)
    };
    let sigs = key
        .details
        .direct_signatures
        .iter()
        .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()))
        .filter(own)
        .filter(|s| s.key_expiration_time().is_some());
    let newest = sigs.max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))?;
    let exp = newest.key_expiration_time()?.as_secs();
    (exp != 0).then(|| key.primary_key.created_at().as_secs() as i64 + exp as i64)
}

impl Release {
    /// Parses the (already verified) text of a Release file.
    pub fn parse(text: &str, what: &str) -> Result<Release> {
        let stanzas = deb822::parse(text, what)?;
        let [st] = stanzas.as_slice() else {
            bail!("{what}: expected one stanza, found {}", stanzas.len());
        };
        let field = |name: &str| st.get(name).map(|v| v.trim().to_string());
        let date = |name: &str| -> Result<Option<i64>> {
            field(name)
                .map(|v| {
                    parse_date(&v)
                        .ok_or_else(|| anyhow!("{what}: field {name}: cannot parse date {v:?}"))
                })
                .transpose()
        };
        let list = |name: &str| -> Vec<String> {
            field(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let mut files = BTreeMap::new();
        if let Some(v) = st.get("SHA256") {
            for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [sha, size, path] = parts.as_slice() else {
                    bail!("{what}: field SHA256: expected `sha256 size path`, found {line:?}");
                };
                if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
                    bail!("{what}: field SHA256: bad hash {sha:?} for {path}");
                }
                let size = size
                    .parse()
                    .map_err(|_| anyhow!("{what}: field SHA256: bad size {size:?} for {path}"))?;
                files.insert(
                    path.to_string(),
                    ReleaseFile {
                        size,
                        sha256: sha.to_ascii_lowercase(),
                    },
                );
            }
        }
        Ok(Release {
            origin: field("Origin"),
            label: field("Label"),
            suite: field("Suite"),
            codename: field("Codename"),
            version: field("Version"),
            date: date("Date")?,
            valid_until: date("Valid-Until")?,
            architectures: list("Architectures"),
            components: list("Components"),
            acquire_by_hash: field("Acquire-By-Hash").as_deref() == Some("yes"),
            files,
            signed_by: Vec::new(),
        })
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses RFC 2822 dates as Release files use them:
/// `Sat, 11 Jan 2025 10:15:32 UTC` (also `GMT`, `+0000`, `Z`, other offsets).
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.split_once(", ").map_or(s, |(_, rest)| rest);
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 4 {
        return None;
    }
    let day: i64 = parts[0].parse().ok()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(parts[1]))? as i64
        + 1;
    let year: i64 = parts[2].parse().ok()?;
    let hms: Vec<i64> = parts[3]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || *h > 23 || *m > 59 || *sec > 60
    {
        return None;
    }
    let offset = match parts.get(4).copied() {
        None | Some("UTC" | "GMT" | "Z" | "UT") => 0,
        Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let n: i64 = z[1..].parse().ok()?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if z.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        Some(_) => return None,
    };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec - offset)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub use crate::time::civil;

/// `2025-01-11 10:15:32 UTC`, for messages.
pub fn format_date(t: i64) -> String {
    let (y, m, d, h, mi, s) = civil(t);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = parse_date("Sat, 11 Jan 2025 10:15:32 UTC").unwrap();
        assert_eq!(t, 1736590532);
        assert_eq!(format_date(t), "2025-01-11 10:15:32 UTC");
        assert_eq!(parse_date("Sat, 11 Jan 2025 11:15:32 +0100"), Some(t));
        assert_eq!(parse_date("1 Mar 2024 00:00:00 GMT"), Some(1709251200));
        assert_eq!(parse_date("Sat, 11 Foo 2025 10:15:32 UTC"), None);
        assert_eq!(parse_date("garbage"), None);
    }

    #[test]
    fn release_fields() {
        let text = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jan 2025 10:15:32 UTC\n\
                    Valid-Until: Sat, 18 Jan 2025 10:15:32 UTC\nArchitectures: amd64 arm64\n\
                    Components: main contrib\nAcquire-By-Hash: yes\nMD5Sum:\n 00 1 x\nSHA256:\n \
                    0000000000000000000000000000000000000000000000000000000000000000 12 main/binary-arm64/Packages\n \
                    1111111111111111111111111111111111111111111111111111111111111111      345 main/binary-arm64/Packages.xz\n";
        let r = Release::parse(text, "Release").unwrap();
        assert_eq!(r.codename.as_deref(), Some("bookworm"));
        assert_eq!(r.architectures, ["amd64", "arm64"]);
        assert_eq!(r.components, ["main", "contrib"]);
        assert!(r.acquire_by_hash);
        assert_eq!(r.valid_until, Some(1736590532 + 7 * 86400));
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files["main/binary-arm64/Packages.xz"].size, 345);
        let bad = text.replace(" 12 main", " x main");
        let e = Release::parse(&bad, "Release").unwrap_err().to_string();
        assert!(e.contains("SHA256") && e.contains("bad size"), "{e}");
    }
}

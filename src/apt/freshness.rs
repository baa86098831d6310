//! Refusing a Release that is not the one asked for, or older than one
//! seen before.
//!
//! A signature proves who made a Release, not that it is the current one
//! of the suite asked for: a mirror (or anyone between it and the build)
//! can serve another suite's signed Release, or last year's, with the
//! vulnerable packages it listed. Debian's main archive sets no
//! `Valid-Until`, so expiry does not catch the replay. Two checks do:
//!
//! - the Release's `Suite` or `Codename` must be the suite the source
//!   names ([`check_suite`]; `bookworm-updates` is the Codename of
//!   `stable-updates`, Ubuntu's `noble-updates` the Suite of `noble`);
//! - its `Date` must not be older than the newest Date seen before for the
//!   same repository and suite: in the cache (`CACHE/apt/releases/`,
//!   updated by every build that sees a newer one, [`check_cached`]) and
//!   in the lock file the build replaces ([`check_seen`]), which records
//!   each source's Release as a [`ReleaseStamp`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::fetch::Source;
use super::release::{format_date, parse_date, Release};
use crate::cache::BlobCache;

/// One source's Release as a build saw it: what the lock file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStamp {
    /// Repository root, as the source names it.
    pub url: String,
    /// The suite the source asked for.
    pub suite: String,
    pub codename: Option<String>,
    /// The Release's `Date`, seconds since the epoch.
    pub date: Option<i64>,
}

impl ReleaseStamp {
    pub fn new(source: &Source, release: &Release) -> ReleaseStamp {
        ReleaseStamp {
            url: source.url.trim_end_matches('/').to_string(),
            suite: source.suite.clone(),
            codename: release.codename.clone(),
            date: release.date,
        }
    }

    /// The lock file's form: `{"url", "suite", "codename", "date"}`, the
    /// date as a Release writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "url": self.url,
            "suite": self.suite,
            "codename": self.codename,
            "date": self.date.map(rfc2822),
        })
    }

    /// The stamps of a lock file's `repositories` (none when the file does
    /// not exist or predates them). A lock file that is not one is an
    /// error naming it: the record it should hold cannot be checked.
    pub fn read_lock(path: &Path) -> Result<Vec<ReleaseStamp>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let bad = |why: String| {
            anyhow!(
                "{}: {why}; it records the Release dates this build must not go back from (remove it to build without that record)",
                path.display()
            )
        };
        let doc: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a lock file: {e}")))?;
        let Some(repos) = doc.get("repositories") else {
            return Ok(Vec::new());
        };
        let repos = repos
            .as_array()
            .ok_or_else(|| bad("field repositories: expected a list".into()))?;
        repos
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
                let date = match text("date") {
                    None => None,
                    Some(d) => Some(parse_date(&d).ok_or_else(|| {
                        bad(format!("field repositories[{i}].date: cannot parse {d:?}"))
                    })?),
                };
                Ok(ReleaseStamp {
                    url: text("url")
                        .ok_or_else(|| bad(format!("field repositories[{i}].url: missing")))?,
                    suite: text("suite")
                        .ok_or_else(|| bad(format!("field repositories[{i}].suite: missing")))?,
                    codename: text("codename"),
                    date,
                })
            })
            .collect()
    }
}

/// The stamps of the lock file a build replaces, with its path.
#[derive(Debug, Clone, Default)]
pub struct LockRecord {
    pub path: PathBuf,
    pub stamps: Vec<ReleaseStamp>,
}

impl LockRecord {
    /// Reads `path` (see [`ReleaseStamp::read_lock`]).
    pub fn read(path: &Path) -> Result<LockRecord> {
        Ok(LockRecord {
            path: path.to_path_buf(),
            stamps: ReleaseStamp::read_lock(path)?,
        })
    }

    /// Refuses `release` when this lock recorded a newer one for `source`.
    pub fn check(&self, source: &Source, release: &Release, what: &str) -> Result<()> {
        check_seen(
            source,
            release,
            &self.stamps,
            &self.path.display().to_string(),
            what,
        )
    }
}

/// Refuses a Release whose `Suite` and `Codename` both differ from the
/// suite the source asked for; `what` names the InRelease.
pub fn check_suite(release: &Release, wanted: &str, what: &str) -> Result<()> {
    let matches = |f: &Option<String>| f.as_deref() == Some(wanted);
    if matches(&release.suite) || matches(&release.codename) {
        return Ok(());
    }
    let show = |f: &Option<String>| f.as_deref().unwrap_or("(none)").to_string();
    bail!(
        "{what}: this Release is for suite {} (codename {}), but the source asks for {wanted}; a signed Release of another suite is refused",
        show(&release.suite),
        show(&release.codename)
    )
}

/// Refuses `release` when it is older than `seen` (or has no Date while
/// `seen` has one); `whence` says where `seen` was recorded.
fn check_not_older(release: &Release, seen: i64, what: &str, whence: &str) -> Result<()> {
    match release.date {
        Some(d) if d >= seen => Ok(()),
        Some(d) => bail!(
            "{what}: this Release is dated {}, older than the one seen before ({}, recorded in {whence}); an old signed Release is refused (a stale mirror, or a replay)",
            format_date(d),
            format_date(seen)
        ),
        None => bail!(
            "{what}: this Release has no Date, but one dated {} was seen before (recorded in {whence}); it cannot be told from an older one",
            format_date(seen)
        ),
    }
}

/// Refuses `release` when a lock stamp for the same repository and suite
/// is newer; `lock` names the lock file.
pub fn check_seen(
    source: &Source,
    release: &Release,
    seen: &[ReleaseStamp],
    lock: &str,
    what: &str,
) -> Result<()> {
    let url = source.url.trim_end_matches('/');
    for s in seen {
        if s.url == url && s.suite == source.suite {
            if let Some(date) = s.date {
                check_not_older(release, date, what, lock)?;
            }
        }
    }
    Ok(())
}

/// Where the cache keeps the newest Date seen for a source.
fn record_path(cache: &BlobCache, source: &Source) -> PathBuf {
    let key = format!("{} {}", source.url.trim_end_matches('/'), source.suite);
    cache.root().join("apt/releases").join(format!(
        "{}.json",
        hex::encode(Sha256::digest(key.as_bytes()))
    ))
}

/// Refuses `release` when the cache recorded a newer Date for the source;
/// otherwise records its Date when it is newer than the record.
pub fn check_cached(
    cache: &BlobCache,
    source: &Source,
    release: &Release,
    what: &str,
) -> Result<()> {
    let path = record_path(cache, source);
    let recorded = match std::fs::read(&path) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a Release record", path.display()))?;
            Some(
                v.get("date")
                    .and_then(Value::as_str)
                    .and_then(parse_date)
                    .ok_or_else(|| {
                        anyhow!("{}: field date: missing or not a date", path.display())
                    })?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(seen) = recorded {
        check_not_older(release, seen, what, &path.display().to_string())?;
    }
    let Some(date) = release.date else {
        return Ok(());
    };
    if recorded.is_some_and(|r| r >= date) {
        return Ok(());
    }
    let dir = path.parent().expect("a file in apt/releases");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = ReleaseStamp::new(source, release).to_json();
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, &stamp)?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Sat, 11 Jan 2025 10:15:32 UTC`, as a Release's `Date`.
pub fn rfc2822(t: i64) -> String {
    let (y, m, d, h, mi, s) = super::release::civil(t);
    format!(
        "{}, {d:02} {} {y:04} {h:02}:{mi:02}:{s:02} UTC",
        DAYS[t.div_euclid(86400).rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(suite: Option<&str>, codename: Option<&str>, date: Option<&str>) -> Release {
        Release {
            suite: suite.map(str::to_string),
            codename: codename.map(str::to_string),
            date: date.map(|d| parse_date(d).unwrap()),
            ..Release::default()
        }
    }

    fn source(suite: &str) -> Source {
        Source {
            url: "https://deb.debian.org/debian/".into(),
            suite: suite.into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
        }
    }

    #[test]
    fn dates_round_trip() {
        for d in [
            "Sat, 11 Jan 2025 10:15:32 UTC",
            "Thu, 01 Jan 1970 00:00:00 UTC",
            "Sun, 29 Feb 2032 23:59:59 UTC",
        ] {
            assert_eq!(rfc2822(parse_date(d).unwrap()), d);
        }
    }

    #[test]
    fn suite_or_codename_must_be_the_one_asked_for() {
        let bookworm = release(Some("stable"), Some("bookworm"), None);
        check_suite(&bookworm, "bookworm", "x").unwrap();
        check_suite(&bookworm, "stable", "x").unwrap();
        let updates = release(Some("stable-updates"), Some("bookworm-updates"), None);
        check_suite(&updates, "bookworm-updates", "x").unwrap();
        let noble = release(Some("noble-updates"), Some("noble"), None);
        check_suite(&noble, "noble-updates", "x").unwrap();
        let e = check_suite(&bookworm, "bookworm-security", "U/InRelease")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("U/InRelease: ")
                && e.contains("suite stable (codename bookworm)")
                && e.contains("asks for bookworm-security"),
            "{e}"
        );
        let none = release(None, None, None);
        let e = check_suite(&none, "bookworm", "x").unwrap_err().to_string();
        assert!(e.contains("suite (none) (codename (none))"), "{e}");
    }

    #[test]
    fn lock_stamps_round_trip_and_refuse_older_releases() {
        let r = release(
            Some("stable"),
            Some("bookworm"),
            Some("Sat, 11 Jan 2025 10:15:32 UTC"),
        );
        let stamp = ReleaseStamp::new(&source("bookworm"), &r);
        assert_eq!(stamp.url, "https://deb.debian.org/debian");
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("build-image.lock");
        assert_eq!(ReleaseStamp::read_lock(&lock).unwrap(), []);
        std::fs::write(&lock, json!({"kind": "BuildLock"}).to_string()).unwrap();
        assert_eq!(ReleaseStamp::read_lock(&lock).unwrap(), []);
        std::fs::write(
            &lock,
            json!({"repositories": [stamp.to_json()]}).to_string(),
        )
        .unwrap();
        let seen = ReleaseStamp::read_lock(&lock).unwrap();
        assert_eq!(seen, std::slice::from_ref(&stamp));

        check_seen(&source("bookworm"), &r, &seen, "L", "x").unwrap();
        let newer = release(
            Some("stable"),
            Some("bookworm"),
            Some("Sat, 11 Jan 2025 10:15:33 UTC"),
        );
        check_seen(&source("bookworm"), &newer, &seen, "L", "x").unwrap();
        let older = release(
            Some("stable"),
            Some("bookworm"),
            Some("Fri, 10 Jan 2025 10:15:32 UTC"),
        );
        let e = check_seen(
            &source("bookworm"),
            &older,
            &seen,
            "OUT/build-image.lock",
            "U/InRelease",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("dated 2025-01-10 10:15:32 UTC, older than the one seen before (2025-01-11 10:15:32 UTC, recorded in OUT/build-image.lock)"),
            "{e}"
        );
        // Other suites and repositories are not compared.
        check_seen(&source("bookworm-updates"), &older, &seen, "L", "x").unwrap();
        let undated = release(Some("stable"), Some("bookworm"), None);
        assert!(check_seen(&source("bookworm"), &undated, &seen, "L", "x").is_err());

        std::fs::write(&lock, "{not json").unwrap();
        let e = ReleaseStamp::read_lock(&lock).unwrap_err().to_string();
        assert!(e.contains("build-image.lock: not a lock file"), "{e}");
        std::fs::write(
            &lock,
            r#"{"repositories":[{"url":"u","suite":"s","date":"yesterday"}]}"#,
        )
        .unwrap();
        let e = ReleaseStamp::read_lock(&lock).unwrap_err().to_string();
        assert!(e.contains("repositories[0].date"), "{e}");
    }

    #[test]
    fn the_cache_keeps_the_newest_date() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let at = |d: &str| release(Some("stable"), Some("bookworm"), Some(d));
        let src = source("bookworm");
        check_cached(&cache, &src, &at("Sat, 11 Jan 2025 10:15:32 UTC"), "x").unwrap();
        check_cached(&cache, &src, &at("Sun, 12 Jan 2025 10:15:32 UTC"), "x").unwrap();
        check_cached(&cache, &src, &at("Sun, 12 Jan 2025 10:15:32 UTC"), "x").unwrap();
        let e = check_cached(
            &cache,
            &src,
            &at("Sat, 11 Jan 2025 10:15:32 UTC"),
            "U/InRelease",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("older than the one seen before (2025-01-12 10:15:32 UTC, recorded in "),
            "{e}"
        );
        assert!(e.contains("apt/releases/"), "{e}");
        // Another suite of the same repository has its own record.
        check_cached(
            &cache,
            &source("bookworm-updates"),
            &at("Sat, 11 Jan 2025 10:15:32 UTC"),
            "x",
        )
        .unwrap();
    }
}

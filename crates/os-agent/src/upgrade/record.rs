//! What the agent remembers about upgrades, in `state.json`: one record
//! per slot (what was written there, when, and whether it proved good or
//! bad), the latest upgrade's result, and the digests whose trial failed
//! (never tried again automatically). `status` turns them into the slot
//! states `active|passive|trial|bad|empty`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::Root;
use crate::state::{self, State};

/// A slot's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// `writing` (being written, or interrupted), `written` (complete and
    /// verified), `good` (booted and committed), `bad` (see `reason`).
    pub state: String,
    pub version: Option<String>,
    /// The upgrade's manifest digest (none for the image the disk was
    /// made with).
    pub digest: Option<String>,
    /// The reference it was written from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// RFC 3339 UTC.
    pub written_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub const WRITING: &str = "writing";
pub const WRITTEN: &str = "written";
pub const GOOD: &str = "good";
pub const BAD: &str = "bad";

/// The latest `upgrade` and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    pub reference: String,
    pub digest: Option<String>,
    pub version: Option<String>,
    /// The slot it went to.
    pub slot: Option<String>,
    /// `writing` (in progress; `interrupted` in `status` when no upgrade
    /// runs), `armed` (written, the trial armed), `committed`,
    /// `rolled_back`, `failed`, `refused`.
    pub result: String,
    pub reason: Option<String>,
    /// When the result was recorded (RFC 3339 UTC).
    pub at: String,
    /// The boot (`bootCount`) it was recorded at.
    pub boot_count: u64,
}

pub const ARMED: &str = "armed";
pub const COMMITTED: &str = "committed";
pub const ROLLED_BACK: &str = "rolled_back";
pub const FAILED: &str = "failed";
pub const REFUSED: &str = "refused";
pub const INTERRUPTED: &str = "interrupted";

/// A digest whose trial failed: `upgrade` refuses it unless told
/// `--retry-failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BadDigest {
    pub digest: String,
    pub version: Option<String>,
    /// Failed trials of it.
    pub failures: u32,
    /// The latest failure (RFC 3339 UTC) and its reason.
    pub at: String,
    pub reason: String,
}

/// The upgrade part of [`State`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Records {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, Slot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<Upgrade>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_digests: Vec<BadDigest>,
}

impl Records {
    pub fn bad(&self, digest: &str) -> Option<&BadDigest> {
        self.bad_digests.iter().find(|b| b.digest == digest)
    }

    /// Records the failed trial of `slot`: the slot is bad, its digest is
    /// not tried again, the latest upgrade (when it was this one) rolled
    /// back.
    pub fn trial_failed(&mut self, slot: &str, reason: &str, boot_count: u64) {
        let now = now();
        let rec = self.slots.get_mut(slot);
        let (digest, version) = match rec {
            Some(r) => {
                r.state = BAD.into();
                r.reason = Some(format!("trial failed: {reason}"));
                (r.digest.clone(), r.version.clone())
            }
            None => (None, None),
        };
        if let Some(d) = &digest {
            match self.bad_digests.iter_mut().find(|b| &b.digest == d) {
                Some(b) => {
                    b.failures += 1;
                    b.at = now.clone();
                    b.reason = reason.into();
                }
                None => self.bad_digests.push(BadDigest {
                    digest: d.clone(),
                    version: version.clone(),
                    failures: 1,
                    at: now.clone(),
                    reason: reason.into(),
                }),
            }
        }
        if let Some(u) = &mut self.last_upgrade {
            if u.slot.as_deref() == Some(slot) && u.digest == digest && u.result == ARMED {
                u.result = ROLLED_BACK.into();
                u.reason = Some(reason.into());
                u.at = now;
                u.boot_count = boot_count;
            }
        }
    }

    /// Records that `slot` is committed (a healthy boot of the default
    /// slot); returns whether a record changed.
    pub fn trial_committed(&mut self, slot: &str, boot_count: u64) -> bool {
        let mut changed = false;
        let digest = match self.slots.get_mut(slot) {
            Some(r) => {
                if r.state != GOOD {
                    r.state = GOOD.into();
                    r.reason = None;
                    changed = true;
                }
                r.digest.clone()
            }
            None => None,
        };
        if let Some(u) = &mut self.last_upgrade {
            if u.slot.as_deref() == Some(slot) && u.digest == digest && u.result == ARMED {
                u.result = COMMITTED.into();
                u.reason = None;
                u.at = now();
                u.boot_count = boot_count;
                changed = true;
            }
        }
        changed
    }
}

/// Hook for `health`: a trial of `slot` failed (reported, never fatal:
/// the rollback matters more than its record).
pub fn note_trial_failed(root: &Root, slot: &str, reason: &str) {
    let res = state::load(root).and_then(|mut st: State| {
        let n = st.boot_count;
        st.records.trial_failed(slot, reason, n);
        state::save(root, &st)
    });
    if let Err(e) = res {
        eprintln!("os-agent: recording the failed trial of slot {slot}: {e}");
    }
}

/// Hook for `health` and `mark-good`: `slot` is the committed default
/// and healthy (also after a power cut cut the commit short: the record
/// is settled at the next healthy boot).
pub fn note_trial_committed(root: &Root, slot: &str) {
    let res = state::load(root).and_then(|mut st: State| {
        let n = st.boot_count;
        if st.records.trial_committed(slot, n) {
            state::save(root, &st)?;
        }
        Ok(())
    });
    if let Err(e) = res {
        eprintln!("os-agent: recording the commit of slot {slot}: {e}");
    }
}

/// Saves `st` with `f` applied.
pub fn update(root: &Root, f: impl FnOnce(&mut State)) -> Result<State> {
    let mut st = state::load(root)?;
    f(&mut st);
    state::save(root, &st)?;
    Ok(st)
}

/// The time now as RFC 3339 UTC (`2026-01-31T12:00:00Z`).
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    fn armed(slot: &str, digest: &str) -> Records {
        let mut r = Records::default();
        r.slots.insert(
            slot.into(),
            Slot {
                state: WRITTEN.into(),
                version: Some("2".into()),
                digest: Some(digest.into()),
                reference: None,
                written_at: Some(now()),
                reason: None,
            },
        );
        r.last_upgrade = Some(Upgrade {
            reference: "r".into(),
            digest: Some(digest.into()),
            version: Some("2".into()),
            slot: Some(slot.into()),
            result: ARMED.into(),
            reason: None,
            at: now(),
            boot_count: 1,
        });
        r
    }

    #[test]
    fn a_failed_trial_marks_the_digest_bad_and_counts() {
        let mut r = armed("b", "sha256:x");
        r.trial_failed("b", "failed_units=1 (k3s.service)", 2);
        assert_eq!(r.slots["b"].state, BAD);
        let u = r.last_upgrade.clone().unwrap();
        assert_eq!((u.result.as_str(), u.boot_count), (ROLLED_BACK, 2));
        assert_eq!(r.bad("sha256:x").unwrap().failures, 1);
        r.trial_failed("b", "again", 3);
        assert_eq!(r.bad("sha256:x").unwrap().failures, 2);
        assert_eq!(r.bad_digests.len(), 1);
        // A slot the agent never wrote: nothing to mark but the failure.
        r.trial_failed("a", "x", 3);
        assert_eq!(r.bad_digests.len(), 1);
    }

    #[test]
    fn a_commit_settles_the_armed_upgrade() {
        let mut r = armed("a", "sha256:y");
        assert!(r.trial_committed("a", 4));
        assert!(!r.trial_committed("a", 5));
        assert_eq!(r.slots["a"].state, GOOD);
        assert_eq!(r.last_upgrade.unwrap().result, COMMITTED);
    }
}

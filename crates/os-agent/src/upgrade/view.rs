//! The slots and the latest upgrade as `status` shows them: the records
//! of state.json checked against what the boot environment and the
//! partitions say now, so a power cut at any point leaves a truthful
//! report.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;

use boot_contract::boot_env::SLOTS;

use super::record::{self, Records, Upgrade};
use crate::bootenv::BootEnv;
use crate::fsutil::Root;

/// One slot in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotView {
    /// `active` (running, committed), `trial` (running as a trial, or
    /// armed to be tried at the next boot), `passive` (holds an image that
    /// is not running), `bad` (a failed or interrupted write, a failed
    /// trial), `empty` (never written).
    pub state: String,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub written_at: Option<String>,
    pub reason: Option<String>,
}

/// The SquashFS superblock magic at the start of a slot holding a root.
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// Whether the partition of `slot` starts with a SquashFS; None when it
/// cannot be read.
fn holds_squashfs(root: &Root, slot: &str) -> Option<bool> {
    let mut f = std::fs::File::open(super::target::slot_device(root, slot).ok()?).ok()?;
    let mut m = [0u8; 4];
    f.read_exact(&mut m).ok()?;
    Some(&m == SQUASHFS_MAGIC)
}

/// The slots as they are now.
pub fn slots(
    root: &Root,
    records: &Records,
    running: Option<&str>,
    trial_boot: bool,
    running_version: Option<&str>,
    env: Option<&BootEnv>,
) -> BTreeMap<String, SlotView> {
    let mut out = BTreeMap::new();
    let armed = env.map(|e| e.trial_slot()).unwrap_or("");
    for s in SLOTS {
        let rec = records.slots.get(s);
        let mut v = SlotView {
            state: String::new(),
            version: rec.and_then(|r| r.version.clone()),
            digest: rec.and_then(|r| r.digest.clone()),
            written_at: rec.and_then(|r| r.written_at.clone()),
            reason: rec.and_then(|r| r.reason.clone()),
        };
        let recorded = rec.map(|r| r.state.as_str());
        v.state = if running == Some(s) {
            v.version = running_version.map(str::to_string).or(v.version);
            v.reason = None;
            if trial_boot { "trial" } else { "active" }.into()
        } else if armed == s {
            "trial".into()
        } else if recorded == Some(record::BAD) {
            "bad".into()
        } else if recorded == Some(record::WRITING) {
            if v.reason.is_none() {
                v.reason = Some("the write was interrupted".into());
            }
            "bad".into()
        } else if recorded.is_some() {
            "passive".into()
        } else {
            match holds_squashfs(root, s) {
                Some(true) => "passive",
                _ => "empty",
            }
            .into()
        };
        out.insert(s.to_string(), v);
    }
    out
}

/// The latest upgrade, its result made to fit what happened since: a
/// `writing` no process is doing any more was interrupted, an `armed`
/// whose trial the boot environment does not hold (and that is not
/// running) was cut off before it was armed.
pub fn last_upgrade(
    root: &Root,
    records: &Records,
    running: Option<&str>,
    env: Option<&BootEnv>,
) -> Option<Upgrade> {
    let mut u = records.last_upgrade.clone()?;
    let slot = u.slot.clone().unwrap_or_default();
    if u.result == record::WRITING {
        let idle = matches!(super::try_lock(root), Ok(Some(_)));
        if idle {
            u.result = record::INTERRUPTED.into();
            u.reason
                .get_or_insert_with(|| "the write of the slot was interrupted".into());
        }
    } else if u.result == record::ARMED {
        if let Some(env) = env {
            let pending = env.trial_slot() == slot
                || env.trial_booted() == Some(slot.as_str())
                || running == Some(slot.as_str());
            if !pending {
                u.result = record::INTERRUPTED.into();
                u.reason = Some(
                    "written, but stopped before the trial was armed in the boot environment"
                        .into(),
                );
            }
        }
    }
    Some(u)
}

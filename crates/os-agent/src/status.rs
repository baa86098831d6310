//! `os-agent status`: the boot state, image and counters, for people or
//! (with `--json`) machines. The JSON document is versioned by its
//! `apiVersion` and documented in docs/os-agent.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use boot_contract::boot_env::{LIVE_SLOT, SLOTS};

use crate::bootenv::{self, Esp};
use crate::error::Result;
use crate::fsutil::Root;
use crate::state::API_VERSION;
use crate::{k3s, state, system};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub api_version: String,
    /// The running slot from `bi.slot=`: `a`, `b`, `live`, or null.
    pub slot: Option<String>,
    pub default_slot: Option<String>,
    /// "" when no trial is armed.
    pub trial_slot: Option<String>,
    /// `committed`, `trial`, `live` or `unknown`.
    pub boot_state: String,
    pub version: Option<String>,
    pub flavor: Option<String>,
    pub arch: Option<String>,
    pub k3s_version: Option<String>,
    /// `server`, `agent`, or null when k3s does not run on this boot.
    pub k3s_role: Option<String>,
    pub boot_count: u64,
    /// The latest trial that failed its health check and was rolled back.
    pub last_rollback: Option<state::Rollback>,
    /// Why the boot environment could not be read, when it could not.
    pub boot_env_error: Option<String>,
    /// A copy of the boot environment that is unusable while the other
    /// one serves (the next commit or `health` repairs it).
    pub boot_env_warning: Option<String>,
    /// `ok`, `off` or `degraded` (os-init's record of this boot); null
    /// when there is none.
    pub persist: Option<String>,
    /// Why persist is `off` or `degraded`.
    pub persist_reason: Option<String>,
    /// Slots `a` and `b`: state, image, when written
    /// ([`crate::upgrade::view`]).
    pub slots: std::collections::BTreeMap<String, crate::upgrade::view::SlotView>,
    /// The latest `upgrade` and how it ended.
    pub last_upgrade: Option<crate::upgrade::record::Upgrade>,
    /// Digests whose trial failed: not tried again automatically.
    pub bad_digests: Vec<crate::upgrade::record::BadDigest>,
}

pub fn gather(root: &Root, esp: Option<&PathBuf>) -> Result<Status> {
    let slot = system::running_slot(root)?;
    let info = system::image_info(root)?;
    let st = state::load(root)?;
    let mut status = Status {
        api_version: API_VERSION.to_string(),
        slot: slot.clone(),
        default_slot: None,
        trial_slot: None,
        boot_state: "unknown".into(),
        version: info.version,
        flavor: info.flavor,
        arch: info.arch,
        k3s_version: info.k3s_version,
        k3s_role: k3s::enabled_unit(root).map(|u| {
            if u == k3s::SERVER_UNIT {
                "server"
            } else {
                "agent"
            }
            .to_string()
        }),
        boot_count: st.boot_count,
        last_rollback: st.last_rollback,
        boot_env_error: None,
        boot_env_warning: None,
        persist: None,
        persist_reason: None,
        slots: Default::default(),
        last_upgrade: None,
        bad_digests: st.records.bad_digests.clone(),
    };
    let ps = system::persist_status(root);
    status.persist = ps.state;
    status.persist_reason = ps.reason;
    if slot.as_deref() == Some(LIVE_SLOT) {
        status.boot_state = "live".into();
        return Ok(status);
    }
    let env = match esp {
        Some(d) => bootenv::read(d),
        None => Esp::locate(root, false).and_then(|e| bootenv::read(e.dir())),
    };
    {
        use crate::upgrade::view;
        let e = env.as_ref().ok();
        let trial = e.is_some_and(|e| slot.is_some() && e.default_slot() != slot.as_deref());
        status.slots = view::slots(
            root,
            &st.records,
            slot.as_deref(),
            trial,
            status.version.as_deref(),
            e,
        );
        status.last_upgrade = view::last_upgrade(root, &st.records, slot.as_deref(), e);
    }
    match env {
        Ok(env) => {
            let default = env.default_slot().map(str::to_string);
            status.boot_state = match (slot.as_deref(), default.as_deref()) {
                (Some(s), Some(d)) if SLOTS.contains(&s) && s == d => "committed",
                (Some(s), _) if SLOTS.contains(&s) => "trial",
                _ => "unknown",
            }
            .into();
            status.default_slot = default;
            status.trial_slot = Some(env.trial_slot().to_string());
            let damaged = env.damaged();
            if !damaged.is_empty() {
                status.boot_env_warning = Some(damaged.join("; "));
            }
        }
        Err(e) => status.boot_env_error = Some(e.to_string()),
    }
    Ok(status)
}

impl Status {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("status serializes")
    }

    pub fn to_text(&self) -> String {
        let o = |v: &Option<String>| match v.as_deref() {
            None | Some("") => "-".to_string(),
            Some(s) => s.to_string(),
        };
        let mut t = String::new();
        let _ = writeln!(t, "slot:          {}", o(&self.slot));
        let _ = writeln!(t, "boot state:    {}", self.boot_state);
        let _ = writeln!(t, "default slot:  {}", o(&self.default_slot));
        let _ = writeln!(t, "trial slot:    {}", o(&self.trial_slot));
        let _ = writeln!(t, "version:       {}", o(&self.version));
        let _ = writeln!(t, "flavor:        {}", o(&self.flavor));
        let _ = writeln!(t, "arch:          {}", o(&self.arch));
        let _ = writeln!(
            t,
            "k3s:           {}{}",
            o(&self.k3s_version),
            self.k3s_role
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        let _ = writeln!(t, "boot count:    {}", self.boot_count);
        if let Some(r) = &self.last_rollback {
            let _ = writeln!(
                t,
                "last rollback: slot {} (version {}) at boot {}, back to slot {}: {}",
                r.slot, r.version, r.boot_count, r.to, r.reason
            );
        }
        for (name, v) in &self.slots {
            let _ = writeln!(
                t,
                "slot {name}:        {}{}{}{}{}",
                v.state,
                v.version
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default(),
                v.digest
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default(),
                v.written_at
                    .as_deref()
                    .map(|x| format!(" written {x}"))
                    .unwrap_or_default(),
                v.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default(),
            );
        }
        if let Some(u) = &self.last_upgrade {
            let _ = writeln!(
                t,
                "last upgrade:  {} {} to slot {} at {}{}",
                u.result,
                u.version.as_deref().unwrap_or(&u.reference),
                u.slot.as_deref().unwrap_or("-"),
                u.at,
                u.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default(),
            );
        }
        for b in &self.bad_digests {
            let _ = writeln!(
                t,
                "bad digest:    {} (version {}) failed {} time(s), latest {}: {}",
                b.digest,
                b.version.as_deref().unwrap_or("unknown"),
                b.failures,
                b.at,
                b.reason
            );
        }
        if let Some(p) = &self.persist {
            let _ = writeln!(
                t,
                "persist:       {p}{}",
                self.persist_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        if let Some(w) = &self.boot_env_warning {
            let _ = writeln!(t, "boot env:      damaged copy: {w}");
        }
        if let Some(e) = &self.boot_env_error {
            let _ = writeln!(t, "boot env:      unreadable: {e}");
        }
        t
    }
}

//! The agent's persistent state, /var/lib/os-agent/state.json (on the
//! persistent partition).

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};
use crate::fsutil::{create_dirs, read_optional, write_atomic, Owner, Root};

pub const STATE_DIR: &str = "/var/lib/os-agent";
pub const STATE_FILE: &str = "/var/lib/os-agent/state.json";
pub const API_VERSION: &str = "os-agent/v1alpha1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub api_version: String,
    /// Boots since the persistent partition was created, counted by
    /// `os-agent boot-config`.
    #[serde(default)]
    pub boot_count: u64,
    /// Slot and image version of the latest boot.
    #[serde(default)]
    pub last_slot: Option<String>,
    #[serde(default)]
    pub last_version: Option<String>,
    /// The latest trial that failed its health check and was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<Rollback>,
    /// What `upgrade` wrote to each slot and how its latest run ended.
    #[serde(flatten)]
    pub records: crate::upgrade::record::Records,
    /// Fields of a newer agent, kept as they are (a rollback to an older
    /// agent must not drop them).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A trial slot that failed its health check: os-agent rebooted into the
/// default slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// The slot that failed, and the image version in it.
    pub slot: String,
    pub version: String,
    /// The slot booted instead (the default).
    pub to: String,
    /// The boot (by [`State::boot_count`]) of the failed trial.
    pub boot_count: u64,
    /// The health check's findings, as on its console line.
    pub reason: String,
}

impl Default for State {
    fn default() -> Self {
        State {
            api_version: API_VERSION.to_string(),
            boot_count: 0,
            last_slot: None,
            last_version: None,
            last_rollback: None,
            records: Default::default(),
            other: Default::default(),
        }
    }
}

/// Reads the state; a missing file is the initial state.
pub fn load(root: &Root) -> Result<State> {
    let path = root.join(STATE_FILE);
    match read_optional(&path)? {
        None => Ok(State::default()),
        Some(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "reading {}: not a valid state document (delete it to start counting anew)",
                path.display()
            )
        }),
    }
}

/// Writes the state: temporary file, fsync, rename, fsync of the directory.
pub fn save(root: &Root, state: &State) -> Result<()> {
    create_dirs(&root.join(STATE_DIR))?;
    let mut text = serde_json::to_string_pretty(state).expect("state serializes");
    text.push('\n');
    write_atomic(
        &root.join(STATE_FILE),
        text.as_bytes(),
        Some(Owner::root(0o644)),
    )
}

/// Counts this boot; returns the new state.
pub fn record_boot(root: &Root, slot: Option<&str>, version: Option<&str>) -> Result<State> {
    let mut st = load(root)?;
    st.api_version = API_VERSION.to_string();
    st.boot_count += 1;
    st.last_slot = slot.map(str::to_string);
    st.last_version = version.map(str::to_string);
    save(root, &st)?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        create_dirs(&root.join(STATE_DIR)).unwrap();
        std::fs::write(
            root.join(STATE_FILE),
            r#"{"apiVersion":"os-agent/v1alpha1","bootCount":3,"fromANewerAgent":{"x":[1]},
               "slots":{"b":{"state":"good","version":"2","digest":null,"writtenAt":null}}}"#,
        )
        .unwrap();
        let st = record_boot(&root, Some("a"), Some("1")).unwrap();
        assert_eq!(st.boot_count, 4);
        assert_eq!(st.records.slots["b"].state, "good");
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(back["fromANewerAgent"]["x"][0], 1);
        assert_eq!(back["slots"]["b"]["version"], "2");
        assert!(back.get("lastUpgrade").is_none());
    }
}

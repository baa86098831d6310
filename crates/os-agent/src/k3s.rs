//! k3s: its configuration file and the role markers its units check.
//!
//! Scheme: the image's `k3s.service` carries
//! `ConditionPathExists=/run/os-agent/k3s-server` and `k3s-agent.service`
//! `ConditionPathExists=/run/os-agent/k3s-agent`. The agent creates exactly
//! one of these empty files for the configured role and removes the other;
//! with k3s disabled or not configured it removes both, so neither unit
//! starts. `/run` is a tmpfs: the markers exist only for the current boot.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{K3s, Role};
use crate::error::{Context, Result};
use crate::fsutil::{create_dirs, remove_optional, touch, write_atomic, Owner, Root};

pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
pub const MARKER_DIR: &str = "/run/os-agent";
pub const SERVER_MARKER: &str = "/run/os-agent/k3s-server";
pub const AGENT_MARKER: &str = "/run/os-agent/k3s-agent";
pub const SERVER_UNIT: &str = "k3s.service";
pub const AGENT_UNIT: &str = "k3s-agent.service";

pub use node_config::args_to_config;

/// The content of /etc/rancher/k3s/config.yaml: `config`, then the keys
/// from `args` (replacing the same keys), then `token` and `server`.
pub fn config_map(k: &K3s) -> BTreeMap<String, Value> {
    let mut map = k.config.clone().unwrap_or_default();
    if let Some(args) = &k.args {
        // Validated when the file was parsed.
        map.extend(args_to_config(args).unwrap_or_default());
    }
    if let Some(t) = &k.token {
        map.insert("token".into(), Value::String(t.clone()));
    }
    if let Some(s) = &k.server {
        map.insert("server".into(), Value::String(s.clone()));
    }
    map
}

/// Writes the k3s config file and the role marker; with k3s absent or
/// disabled removes both markers (and leaves /etc/rancher alone).
pub fn apply(root: &Root, k3s: Option<&K3s>) -> Result<Option<Role>> {
    let server = root.join(SERVER_MARKER);
    let agent = root.join(AGENT_MARKER);
    let Some(k) = k3s.filter(|k| k.is_enabled()) else {
        remove_optional(&server)?;
        remove_optional(&agent)?;
        return Ok(None);
    };
    let yaml = serde_saphyr::to_string(&config_map(k))
        .with_context(|| format!("encoding {CONFIG_FILE} as YAML"))?;
    let text = format!("# Written by os-agent from its configuration at every boot.\n{yaml}");
    let path = root.join(CONFIG_FILE);
    create_dirs(path.parent().expect("constant path has a parent"))?;
    // The token is a secret: root only.
    write_atomic(&path, text.as_bytes(), Some(Owner::root(0o600)))?;
    create_dirs(&root.join(MARKER_DIR))?;
    let role = k.role();
    let (keep, drop) = match role {
        Role::Server => (&server, &agent),
        Role::Agent => (&agent, &server),
    };
    remove_optional(drop)?;
    touch(keep)?;
    Ok(Some(role))
}

/// The k3s unit this boot starts, from the markers.
pub fn enabled_unit(root: &Root) -> Option<&'static str> {
    if root.join(SERVER_MARKER).exists() {
        Some(SERVER_UNIT)
    } else if root.join(AGENT_MARKER).exists() {
        Some(AGENT_UNIT)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_become_keys() {
        let args: Vec<String> = [
            "--disable=traefik",
            "--disable=servicelb",
            "--cluster-init",
            "--node-label=a=b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = args_to_config(&args).unwrap();
        assert_eq!(m["disable"], json!(["traefik", "servicelb"]));
        assert_eq!(m["cluster-init"], json!(true));
        assert_eq!(m["node-label"], json!("a=b"));
        assert!(args_to_config(&["traefik".into()])
            .unwrap_err()
            .contains("args[0]"));
        assert!(args_to_config(&["--=x".into()]).is_err());
    }

    #[test]
    fn fields_win_over_args_and_config() {
        let k = K3s {
            token: Some("field".into()),
            args: Some(vec![
                "--token=arg".into(),
                "--write-kubeconfig-mode=0640".into(),
            ]),
            config: Some(BTreeMap::from([
                ("token".to_string(), json!("map")),
                ("write-kubeconfig-mode".to_string(), json!("0600")),
                ("tls-san".to_string(), json!(["x"])),
            ])),
            ..K3s::default()
        };
        let m = config_map(&k);
        assert_eq!(m["token"], json!("field"));
        assert_eq!(m["write-kubeconfig-mode"], json!("0640"));
        assert_eq!(m["tls-san"], json!(["x"]));
    }
}

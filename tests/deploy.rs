//! deploy/: the system-upgrade-controller Plan and the node config that
//! docs/kubernetes.md describes — what can be checked without a cluster.
//! The Plan's command runs on a booted node in tests/boot_upgrade.rs.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_plan_moves_labelled_nodes_one_at_a_time_through_the_hosts_agent() {
    let text = read("deploy/system-upgrade/os-upgrade-plan.yaml");
    let plan: serde_json::Value = serde_saphyr::from_str(&text).expect("valid YAML");
    assert_eq!(plan["apiVersion"], "upgrade.cattle.io/v1");
    assert_eq!(plan["kind"], "Plan");
    assert_eq!(plan["metadata"]["namespace"], "system-upgrade");
    let spec = &plan["spec"];
    assert_eq!(spec["concurrency"], 1);
    assert_eq!(spec["cordon"], true);
    assert_eq!(spec["drain"]["force"], true);
    assert_eq!(spec["serviceAccountName"], "system-upgrade");
    assert!(
        spec["version"].is_string(),
        "version must be a string: {spec}"
    );
    assert!(spec["jobActiveDeadlineSecs"].as_u64().unwrap() >= 1200);
    let sel = &spec["nodeSelector"]["matchExpressions"][0];
    assert_eq!(
        (&sel["key"], &sel["operator"], &sel["values"][0]),
        (
            &"build-image.dev/os-upgrade".into(),
            &"In".into(),
            &"enabled".into()
        )
    );
    let up = &spec["upgrade"];
    // A tagged image: the controller adds the plan's version as a tag only
    // to an image without one.
    let image = up["image"].as_str().unwrap();
    assert!(
        image.rsplit('/').next().unwrap().contains(':'),
        "{image} has no tag"
    );
    let command: Vec<&str> = up["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"]
    );
    let args: Vec<&str> = up["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&args[..3], ["/usr/bin/os-agent", "upgrade", "--reboot"]);
    assert!(args.contains(&"--wait-trial"), "{args:?}");
    assert_eq!(
        args.last(),
        Some(&"$(OS_IMAGE):$(SYSTEM_UPGRADE_PLAN_LATEST_VERSION)")
    );
    // The reference's variable comes from the container's environment.
    assert_eq!(up["envs"][0]["name"], "OS_IMAGE");
    // The arguments are os-agent's own.
    let argv: Vec<String> = args[1..]
        .iter()
        .map(|a| {
            a.replace("$(OS_IMAGE)", "reg.example/os")
                .replace("$(SYSTEM_UPGRADE_PLAN_LATEST_VERSION)", "1.5.0")
        })
        .collect();
    let a = os_agent::cli::parse(&argv).unwrap();
    assert_eq!(a.cmd, os_agent::cli::Cmd::Upgrade);
    assert_eq!(a.reference.as_deref(), Some("reg.example/os:1.5.0"));
    assert!(a.reboot && a.json);
    assert!(a.wait_trial >= std::time::Duration::from_secs(600));
}

#[test]
fn the_node_config_is_valid_and_its_key_is_a_p256_key() {
    use p256::pkcs8::DecodePublicKey;
    let text = read("deploy/os-agent/config.yaml");
    let cfg = node_config::parse(&text, Path::new("deploy/os-agent/config.yaml")).unwrap();
    node_config::validate_merged(&cfg).unwrap();
    assert_eq!(cfg.hostname.as_deref(), Some("edge-01"));
    let k3s = cfg.k3s.unwrap();
    let conf = k3s.config.unwrap();
    assert_eq!(conf["node-name"], "edge-01");
    assert!(conf["node-label"][0]
        .as_str()
        .unwrap()
        .starts_with("build-image.dev/os-upgrade="));
    let keys = cfg.upgrade.unwrap().public_keys;
    assert_eq!(keys.len(), 1);
    p256::PublicKey::from_public_key_pem(keys[0].trim()).expect("a P-256 public key");
    let auth: serde_json::Value =
        serde_json::from_str(&read("deploy/os-agent/registry-auth.json")).unwrap();
    assert!(auth["auths"]
        .as_object()
        .unwrap()
        .values()
        .all(|e| e["auth"].is_string()));
}

//! `os-agent mark-good` and `status` against GRUB environment blocks made
//! and read back by the real `grub-editenv`.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn status_json(root: &Path, esp: &Path) -> serde_json::Value {
    let o = agent(&[
        "status",
        "--json",
        "--root",
        root.to_str().unwrap(),
        "--esp",
        esp.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "status: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("status --json prints one JSON document")
}

fn mark_good(root: &Path, esp: &Path) -> std::process::Output {
    agent(&[
        "mark-good",
        "--root",
        root.to_str().unwrap(),
        "--esp",
        esp.to_str().unwrap(),
    ])
}

#[test]
fn mark_good_commits_a_trial_in_both_copies() {
    let root = debian_root("b");
    let esp = tempfile::tempdir().unwrap();
    // GRUB cleared trial_slot in the primary before booting the trial; the
    // backup still names it.
    grub_env(esp.path(), "a", "");
    editenv(&esp.path().join("grubenv.bak"), &["set", "trial_slot=b"]);
    editenv(&esp.path().join("grubenv"), &["set", "other=kept\\value"]);

    let s = status_json(root.path(), esp.path());
    assert_eq!(
        (
            s["slot"].as_str(),
            s["defaultSlot"].as_str(),
            s["bootState"].as_str()
        ),
        (Some("b"), Some("a"), Some("trial"))
    );

    let o = mark_good(root.path(), esp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "os-agent: slot b is now the default (was a)\n");
    for name in ["grubenv", "grubenv.bak"] {
        let f = esp.path().join(name);
        assert_eq!(fs::metadata(&f).unwrap().len(), 1024, "{name}");
        let list = editenv(&f, &["list"]);
        assert!(
            list.lines().any(|l| l == "default_slot=b"),
            "{name}: {list}"
        );
        assert!(list.lines().any(|l| l == "trial_slot="), "{name}: {list}");
    }
    assert!(editenv(&esp.path().join("grubenv"), &["list"]).contains("other=kept\\value"));

    let s = status_json(root.path(), esp.path());
    assert_eq!(
        (
            s["defaultSlot"].as_str(),
            s["trialSlot"].as_str(),
            s["bootState"].as_str()
        ),
        (Some("b"), Some(""), Some("committed"))
    );

    // Again: nothing to do, nothing written.
    let before = fs::read(esp.path().join("grubenv")).unwrap();
    let o = mark_good(root.path(), esp.path());
    assert!(o.status.success());
    assert_eq!(stdout(&o), "os-agent: slot b is already the default\n");
    assert_eq!(fs::read(esp.path().join("grubenv")).unwrap(), before);
}

#[test]
fn armed_trial_for_the_other_slot_is_kept() {
    let root = debian_root("a");
    let esp = tempfile::tempdir().unwrap();
    grub_env(esp.path(), "a", "b");
    let o = mark_good(root.path(), esp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(editenv(&esp.path().join("grubenv"), &["list"]).contains("trial_slot=b"));
}

/// A way to break one environment block file.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn a_malformed_copy_is_repaired_from_the_good_one_and_two_are_refused() {
    let root = debian_root("b");
    let esp = tempfile::tempdir().unwrap();
    let cases: [(&str, Damage, &str); 4] = [
        (
            "grubenv",
            Box::new(|f: &Path| {
                let mut b = fs::read(f).unwrap();
                b[2] = b'X';
                fs::write(f, b).unwrap();
            }),
            "does not start with",
        ),
        (
            "grubenv.bak",
            Box::new(|f: &Path| {
                let b = fs::read(f).unwrap();
                fs::write(f, &b[..1000]).unwrap();
            }),
            "is 1000 bytes, expected a 1024-byte",
        ),
        (
            "grubenv",
            Box::new(|f: &Path| {
                let mut b = fs::read(f).unwrap();
                let at = b.iter().position(|&c| c == b'=').unwrap();
                b[at] = b'-';
                fs::write(f, b).unwrap();
            }),
            "expected name=value",
        ),
        (
            "grubenv.bak",
            Box::new(|f: &Path| fs::remove_file(f).unwrap()),
            "opening",
        ),
    ];
    for (name, damage, want) in cases {
        // One torn copy: status names it, and a commit repairs it from the
        // other (grub-editenv reads both back).
        grub_env(esp.path(), "a", "");
        damage(&esp.path().join(name));
        let s = status_json(root.path(), esp.path());
        assert!(s["bootEnvWarning"].as_str().unwrap().contains(want), "{s}");
        assert_eq!(s["defaultSlot"], "a", "{s}");
        assert!(s["bootEnvError"].is_null(), "{s}");
        let o = mark_good(root.path(), esp.path());
        assert!(o.status.success(), "{name}/{want}: {}", stderr(&o));
        assert!(stderr(&o).contains("repaired"), "{}", stderr(&o));
        for n in ["grubenv", "grubenv.bak"] {
            let f = esp.path().join(n);
            assert_eq!(fs::metadata(&f).unwrap().len(), 1024, "{n}");
            let list = editenv(&f, &["list"]);
            assert!(list.lines().any(|l| l == "default_slot=b"), "{n}: {list}");
        }
        assert!(status_json(root.path(), esp.path())["bootEnvWarning"].is_null());

        // Both torn: refused, neither copy changes, status names both.
        grub_env(esp.path(), "a", "");
        damage(&esp.path().join(name));
        let other = if name == "grubenv" {
            "grubenv.bak"
        } else {
            "grubenv"
        };
        fs::write(esp.path().join(other), [b'#'; 1024]).unwrap();
        let before: Vec<Option<Vec<u8>>> = ["grubenv", "grubenv.bak"]
            .iter()
            .map(|n| fs::read(esp.path().join(n)).ok())
            .collect();
        let o = mark_good(root.path(), esp.path());
        assert!(!o.status.success(), "{name}/{want}: commit must be refused");
        let err = stderr(&o);
        assert!(
            err.contains(&esp.path().join(name).display().to_string()),
            "{err}"
        );
        assert!(err.contains(want), "{want}: {err}");
        let after: Vec<Option<Vec<u8>>> = ["grubenv", "grubenv.bak"]
            .iter()
            .map(|n| fs::read(esp.path().join(n)).ok())
            .collect();
        assert_eq!(before, after, "{name}/{want}: neither copy may change");
        let s = status_json(root.path(), esp.path());
        assert!(s["bootEnvError"].as_str().unwrap().contains(want), "{s}");
        assert!(s["defaultSlot"].is_null());
    }
}

#[test]
fn status_json_shape() {
    let root = debian_root("a");
    let esp = tempfile::tempdir().unwrap();
    grub_env(esp.path(), "a", "");
    write(
        root.path(),
        "/var/lib/os-agent/state.json",
        "{\"apiVersion\":\"os-agent/v1alpha1\",\"bootCount\":7}\n",
    );
    write(root.path(), "/run/os-agent/k3s-agent", "");
    write(
        root.path(),
        "/run/os/persist.status",
        "state=degraded\nreason=/dev/vda4 has no ext4 superblock\n",
    );
    let s = status_json(root.path(), esp.path());
    assert_eq!(
        s,
        serde_json::json!({
            "apiVersion": "os-agent/v1alpha1",
            "slot": "a",
            "defaultSlot": "a",
            "trialSlot": "",
            "bootState": "committed",
            "version": "1.2.3",
            "flavor": "debian",
            "arch": "amd64",
            "k3sVersion": "v1.31.2+k3s1",
            "k3sRole": "agent",
            "bootCount": 7,
            "lastRollback": null,
            "bootEnvError": null,
            "bootEnvWarning": null,
            "persist": "degraded",
            "persistReason": "/dev/vda4 has no ext4 superblock",
            "slots": {
                "a": {"state": "active", "version": "1.2.3", "digest": null,
                      "writtenAt": null, "reason": null},
                "b": {"state": "empty", "version": null, "digest": null,
                      "writtenAt": null, "reason": null}
            },
            "lastUpgrade": null,
            "badDigests": []
        })
    );
    let o = agent(&[
        "status",
        "--root",
        root.path().to_str().unwrap(),
        "--esp",
        esp.path().to_str().unwrap(),
    ]);
    let text = stdout(&o);
    assert!(text.contains("boot state:    committed"), "{text}");
    assert!(
        text.contains("k3s:           v1.31.2+k3s1 (agent)"),
        "{text}"
    );
    assert!(text.contains("boot count:    7"), "{text}");
    assert!(
        text.contains("persist:       degraded (/dev/vda4 has no ext4 superblock)"),
        "{text}"
    );
}

#[test]
fn live_boot_has_no_slot_to_commit() {
    let root = debian_root("live");
    let esp = tempfile::tempdir().unwrap();
    let s = status_json(root.path(), esp.path());
    assert_eq!(s["bootState"], "live");
    let o = mark_good(root.path(), esp.path());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("live boot (bi.slot=live)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn env_commands_need_an_esp_with_a_root() {
    let root = debian_root("a");
    let o = agent(&["mark-good", "--root", root.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--esp DIR is needed with --root"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn crash_between_the_copies_leaves_both_valid_and_a_rerun_finishes() {
    let root = debian_root("b");
    let esp = tempfile::tempdir().unwrap();
    grub_env(esp.path(), "a", "");
    let o = std::process::Command::new(bin())
        .args(["mark-good", "--root", root.path().to_str().unwrap()])
        .args(["--esp", esp.path().to_str().unwrap()])
        .env("OS_AGENT_FAULT", "commit-after-primary")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(134),
        "the fault point must stop the process"
    );
    assert!(stderr(&o).contains("fault point commit-after-primary reached"));
    // The primary is new, the backup old, both valid for GRUB.
    let primary = editenv(&esp.path().join("grubenv"), &["list"]);
    let backup = editenv(&esp.path().join("grubenv.bak"), &["list"]);
    assert!(primary.contains("default_slot=b"), "{primary}");
    assert!(backup.contains("default_slot=a"), "{backup}");
    let o = mark_good(root.path(), esp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(editenv(&esp.path().join("grubenv.bak"), &["list"]).contains("default_slot=b"));
}

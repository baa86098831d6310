//! The env block codec against GRUB's own `grub-editenv` (package
//! grub-common): each reads what the other writes.

use std::process::Command;

use boot_contract::grubenv::{GrubEnv, BLOCK_SIZE};

fn editenv(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .expect("grub-editenv not found: apt-get install grub-common");
    assert!(
        out.status.success(),
        "grub-editenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn we_read_what_grub_editenv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    editenv(&f, &["create"]);
    editenv(&f, &["set", "default_slot=b", "trial_slot=a", "note=x\\y"]);
    let block = std::fs::read(&f).unwrap();
    assert_eq!(block.len(), BLOCK_SIZE);
    let env = GrubEnv::parse(&block).unwrap();
    assert_eq!(env.get("default_slot"), Some("b"));
    assert_eq!(env.get("trial_slot"), Some("a"));
    assert_eq!(env.get("note"), Some("x\\y"));
    editenv(&f, &["unset", "trial_slot"]);
    let env = GrubEnv::parse(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(env.get("trial_slot"), None);
}

#[test]
fn grub_editenv_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    env.set("trial_slot", "b").unwrap();
    env.set("path", "C:\\boot").unwrap();
    std::fs::write(&f, env.encode().unwrap()).unwrap();
    assert_eq!(editenv(&f, &["list"]), env.to_string());
    // grub-editenv rewrites it in place; the size stays 1024.
    editenv(&f, &["set", "trial_slot="]);
    let block = std::fs::read(&f).unwrap();
    assert_eq!(block.len(), BLOCK_SIZE);
    let back = GrubEnv::parse(&block).unwrap();
    assert_eq!(back.get("trial_slot"), Some(""));
    assert_eq!(back.get("path"), Some("C:\\boot"));
}

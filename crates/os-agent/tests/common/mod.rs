//! Shared helpers for the os-agent integration tests: a Debian-like root
//! made from this machine's real account files, and running the binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_os-agent")
}

/// Runs `os-agent ARGS...`.
pub fn agent(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("running the os-agent binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temporary root holding copies of the host's /etc/passwd, /etc/shadow,
/// /etc/group and /etc/gshadow (modes and owners kept), an image.json,
/// an os-release and a kernel command line naming `slot`.
pub fn debian_root(slot: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    for f in ["passwd", "shadow", "group", "gshadow"] {
        let src = Path::new("/etc").join(f);
        let dst = r.join("etc").join(f);
        fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        let m = fs::metadata(&src).unwrap();
        std::os::unix::fs::chown(&dst, Some(m.uid()), Some(m.gid())).unwrap();
    }
    write(r, "/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nIMAGE_ID=edge\nIMAGE_VERSION=\"1.2.3\"\n");
    write(
        r,
        "/usr/lib/build-image/image.json",
        r#"{"apiVersion":"build-image/v1alpha1","flavor":"debian","arch":"amd64","version":"1.2.3","buildImageVersion":"0.1.0","k3sVersion":"v1.31.2+k3s1"}"#,
    );
    write(
        r,
        "/proc/cmdline",
        &format!("BOOT_IMAGE=/{slot}/vmlinuz bi.root=root_{slot} bi.slot={slot} console=ttyS0\n"),
    );
    dir
}

/// Writes `content` at device path `abs` inside `root`.
pub fn write(root: &Path, abs: &str, content: &str) {
    let p = root.join(abs.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
}

pub fn read(root: &Path, abs: &str) -> String {
    let p = root.join(abs.trim_start_matches('/'));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Every file, directory and symlink under `root` with its content (files),
/// mode and owner: what "the same files" means for idempotency.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (content, m.mode(), m.uid(), m.gid()),
            );
        }
    }
    out
}

/// The colon-separated entry `name` of a database file.
pub fn entry(text: &str, name: &str) -> Option<Vec<String>> {
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(|l| l.split(':').map(str::to_string).collect())
}

/// The first id from 1000 used neither as a uid in `passwd` nor as a gid
/// in `group` (the allocation rule the agent documents).
pub fn first_free_id(passwd: &str, group: &str) -> u32 {
    let used: Vec<u32> = passwd
        .lines()
        .chain(group.lines())
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (1000..).find(|id| !used.contains(id)).unwrap()
}

/// Creates both GRUB environment copies in `esp` with the real
/// `grub-editenv`, holding `default_slot` and `trial_slot`.
pub fn grub_env(esp: &Path, default_slot: &str, trial_slot: &str) {
    for name in ["grubenv", "grubenv.bak"] {
        let f = esp.join(name);
        let _ = fs::remove_file(&f);
        editenv(&f, &["create"]);
        editenv(
            &f,
            &[
                "set",
                &format!("default_slot={default_slot}"),
                &format!("trial_slot={trial_slot}"),
            ],
        );
    }
}

/// Runs `grub-editenv FILE ARGS...` (package grub-common) and returns its
/// stdout.
pub fn editenv(file: &Path, args: &[&str]) -> String {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .expect("running grub-editenv (install the grub-common package)");
    assert!(
        out.status.success(),
        "grub-editenv {} {args:?}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

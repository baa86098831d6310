//! `grub-mkimage` (Debian package grub-common): the reference the
//! in-process core.img assembler is compared with. The build itself never
//! runs it.

use std::path::Path;
use std::process::Command;

use super::require_tool;

pub const TOOL: &str = "grub-mkimage";
pub const PACKAGE: &str = "grub-common";

/// The upstream GRUB version of the host's tool ("2.06" of
/// "grub-mkimage (GRUB) 2.06-13+deb12u2").
pub fn version() -> String {
    require_tool(TOOL, PACKAGE);
    let out = Command::new(TOOL).arg("--version").output().unwrap();
    assert!(out.status.success(), "{TOOL} --version failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let full = text.split_whitespace().last().unwrap_or_default();
    let full = full.split_once(':').map_or(full, |(_, rest)| rest);
    full.rsplit_once('-').map_or(full, |(up, _)| up).to_string()
}

/// `grub-mkimage -O FORMAT -d DIR -c CONFIG -p PREFIX MODULES…` (no `-c`
/// for an empty config): the image it writes. Panics with the argv and
/// the tool's stderr on failure.
pub fn run(format: &str, dir: &Path, config: &str, prefix: &str, modules: &[&str]) -> Vec<u8> {
    require_tool(TOOL, PACKAGE);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("early.cfg");
    std::fs::write(&cfg, config).unwrap();
    let out = tmp.path().join("core.img");
    let mut cmd = Command::new(TOOL);
    cmd.args(["-O", format, "-d"]).arg(dir);
    if !config.is_empty() {
        cmd.arg("-c").arg(&cfg);
    }
    cmd.args(["-p", prefix, "-o"]).arg(&out).args(modules);
    let res = cmd.output().unwrap();
    assert!(
        res.status.success(),
        "{cmd:?} failed ({}):\n{}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::read(&out).unwrap()
}

//! The one host tool of the BIOS path: `grub-mkimage` (Debian package
//! grub-common), which assembles GRUB's i386-pc core.img from the target's
//! own modules. Every run goes through [`run`]: the argv is logged, a
//! missing tool names the package to install, and a failure carries the
//! tail of the tool's stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The tool and the Debian package that ships it.
pub const TOOL: &str = "grub-mkimage";
pub const PACKAGE: &str = "grub-common";

/// Lines of stderr kept in an error.
const STDERR_TAIL_LINES: usize = 20;

/// Finds `grub-mkimage` on `PATH`, or says which package to install.
pub fn find() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(TOOL))
        .find(|p| is_executable(p))
        .with_context(|| {
            format!(
                "{TOOL} not found on PATH: install {PACKAGE} (it assembles GRUB's BIOS \
                 core.img from the image's grub-pc-bin modules)"
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The upstream GRUB version of the host tool ("2.06" of
/// "grub-mkimage (GRUB) 2.06-13+deb12u2").
pub fn version() -> Result<String> {
    let out = run(&[OsString::from("--version")])?;
    let text = String::from_utf8_lossy(&out);
    let full = text
        .split_whitespace()
        .last()
        .with_context(|| format!("{TOOL} --version printed nothing"))?;
    Ok(upstream_version(full).to_string())
}

/// "2.06" of "2.06-13+deb12u2" (the Debian revision dropped).
pub fn upstream_version(v: &str) -> &str {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    v.rsplit_once('-').map_or(v, |(up, _)| up)
}

/// Runs `grub-mkimage ARGS` and returns its stdout.
pub fn run(args: &[OsString]) -> Result<Vec<u8>> {
    let tool = find()?;
    let argv: Vec<String> = std::iter::once(tool.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    tracing::info!("running {}", argv.join(" "));
    let out = Command::new(&tool)
        .args(args)
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            stderr_tail(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "no output on stderr".into();
    }
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream_version("2.06-13+deb12u2"), "2.06");
        assert_eq!(upstream_version("1:2.12-1"), "2.12");
        assert_eq!(upstream_version("2.06"), "2.06");
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let many: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let t = stderr_tail(many.as_bytes());
        assert!(t.starts_with("line 10\n") && t.ends_with("line 29"), "{t}");
        assert_eq!(stderr_tail(b"\n"), "no output on stderr");
    }
}

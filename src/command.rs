//! The one way build-image runs another program. A build needs no host
//! tool; what remains are programs the user configured (a registry
//! credential helper). Every run goes through [`Tool::run`]: the program is
//! looked up on `PATH` first (a missing one names the package or the
//! setting that asked for it), the argv is logged, and a failure carries the
//! exit status and the tail of the program's stderr.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Lines of stderr kept in an error.
const STDERR_TAIL_LINES: usize = 20;

/// A program to run, and what to tell the user when it is missing.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    /// Where it comes from: `install grub-common`, `credsStore in
    /// ~/.docker/config.json`, …
    pub hint: String,
}

impl Tool {
    pub fn new(name: impl Into<String>, hint: impl Into<String>) -> Tool {
        Tool {
            name: name.into(),
            hint: hint.into(),
        }
    }

    /// The program's path on `PATH` (or `name` itself when it holds a `/`).
    pub fn find(&self) -> Result<PathBuf> {
        if self.name.contains('/') {
            let p = PathBuf::from(&self.name);
            if is_executable(&p) {
                return Ok(p);
            }
            bail!("{}: not an executable file ({})", self.name, self.hint);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(&self.name))
            .find(|p| is_executable(p))
            .with_context(|| format!("{} not found on PATH ({})", self.name, self.hint))
    }

    /// Runs the program with `args`, `stdin` on its standard input;
    /// returns its output whatever the exit status (see [`check`]).
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S], stdin: &[u8]) -> Result<Output> {
        let prog = self.find()?;
        let argv = argv(&prog, args);
        tracing::info!("running {argv}");
        let mut child = Command::new(&prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {argv}"))?;
        // A program that exits without reading its input closes the pipe;
        // what it printed still tells why.
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        child
            .wait_with_output()
            .with_context(|| format!("running {argv}"))
    }

    /// [`output`](Self::output), failing unless the program exited 0;
    /// returns its stdout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S], stdin: &[u8]) -> Result<Vec<u8>> {
        let out = self.output(args, stdin)?;
        check(&self.find()?, args, &out)?;
        Ok(out.stdout)
    }
}

/// An error naming the argv, the exit status and the tail of stderr, unless
/// `out` is a success.
pub fn check<S: AsRef<OsStr>>(prog: &Path, args: &[S], out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{} failed ({}): {}",
        argv(prog, args),
        out.status,
        stderr_tail(&out.stderr)
    )
}

fn argv<S: AsRef<OsStr>>(prog: &Path, args: &[S]) -> String {
    std::iter::once(prog.display().to_string())
        .chain(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last lines of a program's stderr, for an error message.
pub fn stderr_tail(stderr: &[u8]) -> String {
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
    fn runs_finds_and_reports() {
        let sh = Tool::new("sh", "install dash");
        let out = sh.run(&["-c", "cat; echo out"], b"in ").unwrap();
        assert_eq!(out, b"in out\n");
        let e = sh
            .run(&["-c", "echo one >&2; echo two >&2; exit 3"], b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sh -c") && e.contains("exit status: 3"), "{e}");
        assert!(e.ends_with("one\ntwo"), "{e}");
        let e = Tool::new("no-such-tool-here", "install nothing")
            .find()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-tool-here not found on PATH (install nothing)"),
            "{e}"
        );
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(long.as_bytes());
        assert!(tail.starts_with("line 30") && tail.ends_with("line 49"));
    }
}

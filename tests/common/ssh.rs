//! An SSH client for reaching a booted guest through QEMU's forwarded port:
//! a fresh key pair per test, no known_hosts, batch mode (no password
//! prompts, so a refused key fails instead of waiting).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::require_tool;

/// An ed25519 key pair made with ssh-keygen in `dir`.
pub struct Key {
    pub private: PathBuf,
    pub public: String,
}

impl Key {
    pub fn generate(dir: &Path, name: &str) -> Key {
        require_tool("ssh-keygen", "openssh-client");
        let private = dir.join(name);
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{name}@build-image-test"))
            .arg("-f")
            .arg(&private)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        Key { private, public }
    }
}

/// A guest's sshd on 127.0.0.1:`port`.
pub struct Ssh {
    pub port: u16,
}

impl Ssh {
    /// Runs `command` as `user` with `key`, feeding it `input`.
    pub fn run(&self, key: &Key, user: &str, command: &str, input: &[u8]) -> Output {
        require_tool("ssh", "openssh-client");
        let mut child = Command::new("ssh")
            .arg("-i")
            .arg(&key.private)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                // A guest that reboots under the session (a power-cut
                // test) ends it within half a minute.
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=6",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Waits until `user` with `key` can run `true` (sshd is up and the
    /// key is accepted); after `timeout`, the last error. (An error, not a
    /// panic: the caller has a guest to stop first.)
    pub fn wait(&self, key: &Key, user: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let o = self.run(key, user, "true", b"");
            if o.status.success() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "ssh {user}@127.0.0.1:{}: not reachable within {timeout:?}: {}",
                    self.port,
                    text(&o)
                ));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The text of an [`Output`], stdout then stderr, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

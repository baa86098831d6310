//! A local signed apt repository served over HTTP on 127.0.0.1, with real
//! `.deb`s from Debian (downloaded once with `apt-get download` into
//! target/test-fixtures/debs-ARCH/) and a throwaway signing key.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::apt::{self, Keyring};
use build_image::oci::Digest;

use super::fixtures::{debian_package_deb, host_debian_arch};

/// A throwaway GnuPG home with one ed25519 signing key.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::tempdir().unwrap();
        let g = Gpg { home };
        g.run(
            &[
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Test Repo <repo@example.org>",
                "ed25519",
                "sign",
                "0",
            ],
            b"",
        );
        g
    }

    pub fn run(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--quiet", "--no-tty", "--pinentry-mode", "loopback"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gpg is needed: apt-get install gpg");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.run(&["--armor", "--export"], b"")
    }

    pub fn clearsign(&self, text: &str) -> Vec<u8> {
        self.run(
            &[
                "--batch",
                "--passphrase",
                "",
                "--digest-algo",
                "SHA256",
                "--clearsign",
            ],
            text.as_bytes(),
        )
    }
}

pub const DEBS: &[&str] = &["hello", "sl", "libncurses6"];

/// Real .debs of the host's architecture from Debian, downloaded once
/// (see [`debian_package_deb`]).
pub fn real_debs() -> Vec<PathBuf> {
    let arch = host_debian_arch();
    DEBS.iter().map(|n| debian_package_deb(n, &arch)).collect()
}

/// Serves `root` over HTTP/1.1 on 127.0.0.1; returns the base URL.
pub fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = root.join(path.trim_start_matches('/'));
            let resp = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&resp);
        }
    });
    format!("http://{addr}")
}

/// The Date of every Release [`Repo::publish`] writes.
pub const RELEASE_DATE: &str = "Sat, 11 Jul 2026 10:16:37 UTC";

/// The fields of a published Release that say which one it is.
pub struct Head<'a> {
    pub suite: &'a str,
    pub codename: &'a str,
    pub date: &'a str,
}

pub struct Repo {
    pub dir: tempfile::TempDir,
    pub gpg: Gpg,
    pub arch: String,
}

impl Repo {
    /// A repository with the real debs; `tweak` may edit each index stanza.
    pub fn new(debs: &[PathBuf]) -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
            gpg: Gpg::new(),
            arch: host_debian_arch(),
        };
        let pool = repo.dir.path().join("pool/main");
        std::fs::create_dir_all(&pool).unwrap();
        for d in debs {
            std::fs::copy(d, pool.join(d.file_name().unwrap())).unwrap();
        }
        repo
    }

    /// Writes dists/SUITE with a Packages.gz for the pool (stanzas passed
    /// through `tweak`) and a signed InRelease (then `tamper`ed) whose
    /// Suite and Codename are SUITE and whose Date is [`RELEASE_DATE`].
    pub fn publish(
        &self,
        suite: &str,
        valid_until: &str,
        tweak: impl Fn(&str, String) -> String,
        tamper: impl Fn(Vec<u8>) -> Vec<u8>,
    ) {
        let head = Head {
            suite,
            codename: suite,
            date: RELEASE_DATE,
        };
        self.publish_as(suite, &head, valid_until, tweak, tamper)
    }

    /// [`Repo::publish`] into dists/`dir` with the Release fields of `head`.
    pub fn publish_as(
        &self,
        dir: &str,
        head: &Head<'_>,
        valid_until: &str,
        tweak: impl Fn(&str, String) -> String,
        tamper: impl Fn(Vec<u8>) -> Vec<u8>,
    ) {
        let mut index = String::new();
        let pool = self.dir.path().join("pool/main");
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&pool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        debs.sort();
        for deb in debs {
            let bytes = std::fs::read(&deb).unwrap();
            let control = apt::read_deb(&bytes[..], "deb", |_| Ok(()))
                .unwrap()
                .control;
            let name = control.get("Package").unwrap().to_string();
            let stanza = format!(
                "{}Filename: pool/main/{}\nSize: {}\nSHA256: {}\n",
                control.render(),
                deb.file_name().unwrap().to_string_lossy(),
                bytes.len(),
                Digest::of(&bytes).hex()
            );
            index.push_str(&tweak(&name, stanza));
            index.push('\n');
        }
        let rel = format!("main/binary-{}/Packages.gz", self.arch);
        let dists = self.dir.path().join("dists").join(dir);
        std::fs::create_dir_all(dists.join(format!("main/binary-{}", self.arch))).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(index.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(dists.join(&rel), &gz).unwrap();
        let release = format!(
            "Origin: Test\nSuite: {}\nCodename: {}\nDate: {}\n\
             Valid-Until: {valid_until}\nArchitectures: {}\nComponents: main\nSHA256:\n {} {} {rel}\n",
            head.suite,
            head.codename,
            head.date,
            self.arch,
            Digest::of(&gz).hex(),
            gz.len()
        );
        std::fs::write(
            dists.join("InRelease"),
            tamper(self.gpg.clearsign(&release)),
        )
        .unwrap();
    }

    pub fn keyring(&self) -> Keyring {
        Keyring::from_bytes(&self.gpg.public_key(), "test keyring").unwrap()
    }
}

//! Shared harness of the integration tests: a real registry, layer and OCI
//! layout writers, a fault-injecting proxy, the Debian fixture, the binary
//! runner and the unsquashfs-based comparer.
//!
//! Every test binary uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod abdisk;
pub mod aptrepo;
pub mod boot;
pub mod fixtures;
pub mod grub_mkimage;
pub mod images;
pub mod layer;
pub mod oci;
pub mod proxy;
pub mod qemu;
pub mod registry;
pub mod session;
pub mod squash;
pub mod ssh;
pub mod tree;
pub mod upgrade;

pub use fixtures::{debian_layout, debian_minbase, trixie_tools, TrixieTools};
pub use layer::{Compression, Layer, LayerBuilder, DEFAULT_MTIME};
pub use oci::{host_arch, other_arch, Image, ImageDigests, IndexDigests, OciLayout};
pub use proxy::{Fault, Proxy};
pub use registry::{push, skopeo_inspect_oci_raw, skopeo_inspect_raw, Registry};
pub use squash::{extract, extract_tree, unsquashfs_listing, unsquashfs_stat};
pub use tree::{assert_trees_match, Compare, Tree};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_build-image");

/// How long one run of the binary may take before it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:HEX`
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Copies `src` to `dst` leaving all-zero 1 MiB blocks as holes, as
/// `cp --sparse=always` does. Disk images are mostly empty: a plain copy
/// allocates every byte of their nominal size.
pub fn sparse_copy(src: &Path, dst: &Path) {
    let len = std::fs::metadata(src).unwrap().len();
    sparse_copy_range(src, 0, len, dst);
}

/// Copies `len` bytes of `src` from byte `off` (a partition of a disk
/// image) into a new file `dst`, leaving all-zero MiBs as holes.
pub fn sparse_copy_range(src: &Path, off: u64, len: u64, dst: &Path) {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut from = std::fs::File::open(src).unwrap();
    from.seek(SeekFrom::Start(off)).unwrap();
    let to = std::fs::File::create(dst).unwrap();
    to.set_len(len).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        from.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..n], at).unwrap();
        }
        at += n as u64;
    }
}

/// Panics with an install hint when `tool` is not on PATH: a missing tool
/// fails the test, it never skips it.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found: install {package} (apt-get install {package})"
    );
}

/// A per-test environment for the binary: its own cache dir, HOME,
/// DOCKER_CONFIG and XDG dirs inside one temp dir, and an output dir.
pub struct TestEnv {
    pub tmp: TempDir,
    pub cache: PathBuf,
    pub home: PathBuf,
    pub docker_config: PathBuf,
    /// Where tests put `-o` files.
    pub out: PathBuf,
    envs: Vec<(String, String)>,
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("build-image-test-")
            .tempdir()
            .unwrap();
        let cache = tmp.path().join("cache");
        let home = tmp.path().join("home");
        let docker_config = tmp.path().join("docker");
        let out = tmp.path().join("out");
        for d in [&home, &docker_config, &out] {
            std::fs::create_dir_all(d).unwrap();
        }
        TestEnv {
            tmp,
            cache,
            home,
            docker_config,
            out,
            envs: Vec::new(),
        }
    }

    /// Adds an environment variable for every later run.
    pub fn env(&mut self, k: &str, v: &str) -> &mut TestEnv {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// `OUT/name`
    pub fn out_path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// The path of a cached blob.
    pub fn cached_blob(&self, digest: &str) -> PathBuf {
        self.cache
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Writes `DOCKER_CONFIG/config.json` with credentials for `host`.
    pub fn login(&self, host: &str, user: &str, pass: &str) {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let cfg = serde_json::json!({"auths": {host: {"auth": auth}}});
        std::fs::write(
            self.docker_config.join("config.json"),
            serde_json::to_vec_pretty(&cfg).unwrap(),
        )
        .unwrap();
    }

    /// The binary with a clean environment pointing into the temp dir (no
    /// arguments yet; `--cache-dir` is not added).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        for k in [
            "BUILD_IMAGE_CACHE_DIR",
            "REGISTRY_AUTH_FILE",
            "SOURCE_DATE_EPOCH",
            "RUST_LOG",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("HOME", &self.home)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_RUNTIME_DIR", self.tmp.path().join("run"))
            .env("TMPDIR", self.tmp.path())
            .env("NO_COLOR", "1")
            .current_dir(&self.out);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `build-image --cache-dir CACHE ARGS…`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.arg("--cache-dir").arg(&self.cache).args(args);
        run_cmd(cmd)
    }

    /// Like [`TestEnv::run`], also returning the peak RSS in bytes (see
    /// [`run_cmd_peak_rss`]).
    pub fn run_peak_rss(&self, args: &[&str], kill_above: u64) -> (Output, u64) {
        let mut cmd = self.command();
        cmd.arg("--cache-dir").arg(&self.cache).args(args);
        run_cmd_peak_rss(cmd, kill_above)
    }

    /// Runs `build-image ARGS…` without adding `--cache-dir`.
    pub fn run_raw(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_cmd(cmd)
    }

    /// `build-image rootfs IMAGE -o OUT/name EXTRA…`; returns the output path
    /// and the process output.
    pub fn rootfs(&self, image: &str, name: &str, extra: &[&str]) -> (PathBuf, Output) {
        let out = self.out_path(name);
        let mut args = vec!["rootfs", image, "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        (out, o)
    }

    /// Like [`TestEnv::rootfs`] but asserts success.
    pub fn rootfs_ok(&self, image: &str, name: &str, extra: &[&str]) -> PathBuf {
        let (out, o) = self.rootfs(image, name, extra);
        assert_ok(&o);
        assert!(out.is_file(), "exit 0 but no output file {}", out.display());
        out
    }

    /// Like [`TestEnv::rootfs`] (into `x.sqfs`) but expects a runtime
    /// failure: asserts exit code 1 and an output dir left empty (see
    /// [`TestEnv::assert_out_empty`]); returns stderr.
    #[track_caller]
    pub fn rootfs_fails(&self, image: &str) -> String {
        let (_, o) = self.rootfs(image, "x.sqfs", &[]);
        let err = assert_fails(&o);
        self.assert_out_empty();
        err
    }

    /// Asserts that nothing is in the output dir: a failed run left
    /// neither its output nor a partial file next to it.
    #[track_caller]
    pub fn assert_out_empty(&self) {
        let left = list_files(&self.out);
        assert!(
            left.is_empty(),
            "the output dir {} holds {left:?}",
            self.out.display()
        );
    }
}

/// Runs `build-image ARGS…` in a throwaway [`TestEnv`].
pub fn run(args: &[&str]) -> Output {
    TestEnv::new().run(args)
}

/// Runs a command with [`RUN_TIMEOUT`], capturing stdout and stderr.
pub fn run_cmd(mut cmd: Command) -> Output {
    let mut c = Captured::spawn(&mut cmd);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = c.child.kill();
            let _ = c.child.wait();
            panic!("{cmd:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    c.output(status)
}

/// Runs `cmd` like [`run_cmd`] and returns, with its output, the child's
/// peak resident set size in bytes as the kernel accounts it (`wait4`'s
/// `ru_maxrss`, covering the child's whole life and only this child). A
/// child whose peak passes `kill_above` is killed at once rather than left
/// to exhaust the machine; its peak is then reported as at least that.
#[allow(clippy::zombie_processes)] // reaped by `wait4`, not `Child::wait`
pub fn run_cmd_peak_rss(mut cmd: Command, kill_above: u64) -> (Output, u64) {
    let mut c = Captured::spawn(&mut cmd);
    let pid = c.child.id() as i32;
    let start = Instant::now();
    let (status, maxrss) = loop {
        if let Some(done) = wait4(pid, libc::WNOHANG) {
            break done;
        }
        // VmHWM: the peak so far, in kB.
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        if hwm * 1024 > kill_above || start.elapsed() > RUN_TIMEOUT {
            let _ = c.child.kill();
            let (status, maxrss) = wait4(pid, 0).expect("wait4 on a killed child");
            if start.elapsed() > RUN_TIMEOUT {
                panic!("{cmd:?} did not finish within {RUN_TIMEOUT:?}");
            }
            break (status, maxrss.max(kill_above + 1));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (c.output(status), maxrss)
}

/// A child with stdin closed whose stdout and stderr two threads read to
/// the end, so that a chatty child never blocks on a full pipe.
struct Captured {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Captured {
    fn spawn(cmd: &mut Command) -> Captured {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = r.read_to_end(&mut b);
                b
            })
        };
        let stdout = read_all(Box::new(child.stdout.take().unwrap()));
        let stderr = read_all(Box::new(child.stderr.take().unwrap()));
        Captured {
            child,
            stdout,
            stderr,
        }
    }

    /// The output, once the child has ended with `status`.
    fn output(self, status: std::process::ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout.join().unwrap(),
            stderr: self.stderr.join().unwrap(),
        }
    }
}

/// `wait4(pid, options)`: the exit status and peak RSS (bytes) of a child
/// that has ended, `None` while it runs (with `WNOHANG`).
#[allow(unsafe_code)]
fn wait4(pid: i32, options: i32) -> Option<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: `rusage` is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals of the right types.
    let r = unsafe { libc::wait4(pid, &mut status, options, &mut ru) };
    assert!(r >= 0, "wait4({pid}): {}", std::io::Error::last_os_error());
    (r == pid).then(|| {
        (
            std::process::ExitStatus::from_raw(status),
            ru.ru_maxrss as u64 * 1024,
        )
    })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a reference tool (`unsquashfs`, `mcopy`, `sgdisk`, …) and returns
/// its stdout; panics, showing the command and both streams, unless it
/// exits 0.
#[track_caller]
pub fn tool_stdout(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pseudo-random bytes (xorshift64*) from a nonzero `seed`: incompressible
/// file contents, the same for the same seed.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts exit code 0, showing stdout and stderr otherwise.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "build-image failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts exit code 1 (a runtime failure, not a usage error) and returns
/// stderr.
#[track_caller]
pub fn assert_fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit code 1, got {}:\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

/// Asserts `haystack` contains `needle` (case-insensitively).
#[track_caller]
pub fn assert_mentions(haystack: &str, needle: &str) {
    assert!(
        haystack.to_lowercase().contains(&needle.to_lowercase()),
        "expected the message to mention {needle:?}; it was:\n{haystack}"
    );
}

/// Asserts `haystack` contains at least one of `needles` (case-insensitively).
#[track_caller]
pub fn assert_mentions_any(haystack: &str, needles: &[&str]) {
    let h = haystack.to_lowercase();
    assert!(
        needles.iter().any(|n| h.contains(&n.to_lowercase())),
        "expected the message to mention one of {needles:?}; it was:\n{haystack}"
    );
}

/// The first entry of `dir` whose name starts with `prefix` and ends with
/// `suffix`; `None` when there is none (or no `dir`).
pub fn file_named(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(prefix) && n.ends_with(suffix)
            })
        })
}

/// All files (recursively) under `dir`, relative.
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// An image with the given layers for the host arch, written to a fresh
/// layout, pushed to `registry` as `repo:latest`; returns the reference and
/// the digests.
pub fn push_layers(registry: &Registry, repo: &str, layers: Vec<Layer>) -> (String, ImageDigests) {
    push_image(registry, repo, &Image::host(layers))
}

/// `image` written to a fresh layout and pushed to `registry` as
/// `repo:latest`, checked to keep its manifest digest; returns the
/// reference and the digests.
pub fn push_image(registry: &Registry, repo: &str, image: &Image) -> (String, ImageDigests) {
    let dir = layout_dir();
    let layout = OciLayout::create(dir.path());
    let d = layout.add_image("latest", image);
    assert_eq!(registry.push(&layout, "latest", repo), d.manifest);
    (registry.image(repo, "latest"), d)
}

/// Like [`push_image`], for an index of `images` (one per platform).
pub fn push_index(registry: &Registry, repo: &str, images: &[Image]) -> (String, IndexDigests) {
    let dir = layout_dir();
    let layout = OciLayout::create(dir.path());
    let idx = layout.add_index("latest", images);
    assert_eq!(registry.push(&layout, "latest", repo), idx.index);
    (registry.image(repo, "latest"), idx)
}

fn layout_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("layout-")
        .tempdir()
        .unwrap()
}

/// `bmaptool copy` of `image` (through `image.bmap` beside it) onto the new
/// file `to` gives the image back: every mapped block copied and checked,
/// the holes left reading as zeros. `to` is removed after.
pub fn assert_bmap_copy_equals(image: &Path, to: &Path) {
    require_tool("bmaptool", "bmap-tools");
    let mut bmap = image.as_os_str().to_owned();
    bmap.push(".bmap");
    let b = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(image)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        b.status.success(),
        "bmaptool copy {}: {}",
        image.display(),
        String::from_utf8_lossy(&b.stderr)
    );
    let cmp = Command::new("cmp").arg(image).arg(to).output().unwrap();
    assert!(
        cmp.status.success(),
        "the bmaptool copy of {} differs: {}",
        image.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
    std::fs::remove_file(to).unwrap();
}

//! `os-agent upgrade` against the floor `curl BLOB | dd of=PARTITION` on
//! the same artifact, over loopback from Debian's docker-registry, into
//! the same partition: a loop device over a file in the temp directory
//! (a regular file when `losetup` is not allowed).
//!
//! Run with `cargo test --release --bench upgrade -- --nocapture` (a plain
//! test that times things, as `benches/push.rs`). The artifact has an
//! incompressible root of `UPGRADE_BENCH_MB` MiB (default 256), an 8 MiB
//! kernel and a 12 MiB initrd, or is the layout `UPGRADE_BENCH_LAYOUT`
//! names (e.g. `out/debian-bookworm-amd64.upgrade`). `UPGRADE_BENCH_RUNS`
//! (default 3) interleaved runs of each; best and median count.
//!
//! - os-agent (the static musl build of `cargo xtask components`) runs with
//!   `--root` on a device tree whose `root_b` is the loop device, and does
//!   all of its work: resolve, preflight (no keys), stream and hash the root
//!   into the partition, sync, drop the partition's pages from the page
//!   cache and read it back and hash it, kernel and initrd to the ESP
//!   directory, record, arm.
//! - the floor: `curl -s URL | dd of=PARTITION bs=1M iflag=fullblock
//!   conv=fsync` of the root blob alone (no hash, no read-back, no boot
//!   files).
//!
//! Peak RSS is GNU time's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::oci::OciLayout;
use common::upgrade::{self as up, Device, Spec};
use common::{require_tool, Registry};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_noise(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

#[derive(Clone, Copy, Default)]
struct Usage {
    wall: Duration,
    rss_kib: u64,
}

fn timed(cmd: Command) -> Usage {
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "usage=%M"]).arg(cmd.get_program());
    t.args(cmd.get_args());
    let start = Instant::now();
    let out = t.output().unwrap();
    let wall = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{err}",
        cmd,
        String::from_utf8_lossy(&out.stdout)
    );
    let rss_kib = err
        .lines()
        .find_map(|l| l.strip_prefix("usage="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Usage { wall, rss_kib }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A loop device over `file`, detached on drop; None when not allowed.
struct Loop(Option<String>);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output();
        Loop(match o {
            Ok(o) if o.status.success() => {
                Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            _ => None,
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
    }
}

#[test]
fn upgrade_against_curl_into_dd() {
    require_tool("docker-registry", "docker-registry");
    require_tool("curl", "curl");
    assert!(
        Path::new("/usr/bin/time").is_file(),
        "install GNU time (apt-get install time)"
    );
    let work = tempfile::Builder::new()
        .prefix("upgrade-bench-")
        .tempdir()
        .unwrap();
    let agent = up::agent_binary();
    let layout_dir: PathBuf = match std::env::var_os("UPGRADE_BENCH_LAYOUT") {
        Some(d) => PathBuf::from(d),
        None => {
            let root = work.path().join("root.squashfs");
            write_noise(&root, env_num("UPGRADE_BENCH_MB", 256));
            let mut spec = Spec::new("2.0.0", &root);
            let (k, i) = (work.path().join("kernel"), work.path().join("initrd"));
            write_noise(&k, 8);
            write_noise(&i, 12);
            spec.kernel = std::fs::read(&k).unwrap();
            spec.initrd = std::fs::read(&i).unwrap();
            let l = OciLayout::create(work.path().join("bench.upgrade"));
            up::write(&l, "2.0.0", &spec);
            l.dir
        }
    };
    let spec = up::spec_of(&layout_dir);
    let root_digest = format!("sha256:{}", common::sha256_file(&spec.rootfs));
    let size = std::fs::metadata(&spec.rootfs).unwrap().len();
    let reg = Registry::start();
    let layout = OciLayout::create(&layout_dir);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout_dir.join("index.json")).unwrap()).unwrap();
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string();
    reg.push(&layout, &tag, "bench/os");

    // The partition: 2 × the root, on a loop device when allowed.
    let dev = Device::new(
        &work.path().join("dev"),
        "a",
        "1.0.0",
        (size * 2).max(64 << 20),
    );
    let backing = work.path().join("partition.img");
    std::fs::rename(dev.slot("b"), &backing).unwrap();
    let lo = Loop::attach(&backing);
    let target =
        lo.0.clone()
            .unwrap_or_else(|| backing.display().to_string());
    std::os::unix::fs::symlink(&target, dev.slot("b")).unwrap();
    let url = format!("http://{}/v2/bench/os/blobs/{root_digest}", reg.host);
    let reference = reg.image("bench/os", &tag);

    let runs = env_num("UPGRADE_BENCH_RUNS", 3);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for run in 0..runs {
        dev.set_env("a", "");
        let _ = std::fs::remove_file(dev.file("var/lib/os-agent/state.json"));
        let mut cmd = Command::new(&agent);
        cmd.args([
            "upgrade",
            &reference,
            "--insecure-registry",
            &reg.host,
            "--root",
        ])
        .arg(&dev.root)
        .arg("--esp")
        .arg(&dev.esp);
        ours.push(timed(cmd));
        let (p, _) = dev.env();
        assert_eq!(p.get("trial_slot"), Some("b"), "run {run}: not armed");

        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "curl -sf {url} | dd of={target} bs=1M iflag=fullblock conv=fsync status=none"
        ));
        floor.push(timed(cmd));
        eprintln!(
            "run {}: os-agent upgrade {:.2} s ({} MiB RSS), curl | dd {:.2} s",
            run + 1,
            ours[run].wall.as_secs_f64(),
            ours[run].rss_kib / 1024,
            floor[run].wall.as_secs_f64(),
        );
    }
    let walls = |v: &[Usage]| v.iter().map(|u| u.wall).collect::<Vec<_>>();
    let best = |v: &[Usage]| *walls(v).iter().min().unwrap();
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "\nroot {mib:.0} MiB into {} ({}), {runs} runs each",
        target,
        if lo.0.is_some() {
            "loop device"
        } else {
            "file"
        }
    );
    println!("| pipeline | best (s) | median (s) | MiB/s (best) | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("os-agent upgrade", &ours),
        ("curl | dd conv=fsync", &floor),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.1} |",
            best(v).as_secs_f64(),
            median(walls(v)).as_secs_f64(),
            mib / best(v).as_secs_f64(),
            v.iter().map(|u| u.rss_kib).max().unwrap() as f64 / 1024.0
        );
    }
    let ratio = best(&ours).as_secs_f64() / best(&floor).as_secs_f64();
    let ratio_median = median(walls(&ours)).as_secs_f64() / median(walls(&floor)).as_secs_f64();
    let rss = ours.iter().map(|u| u.rss_kib).max().unwrap() as f64 / 1024.0;
    println!(
        "\nos-agent / curl | dd, wall: {ratio:.2}× (best), {ratio_median:.2}× (median); target ≤ 1.1×\n\
         os-agent peak RSS: {rss:.1} MiB; target ≤ 32 MiB"
    );
    assert!(rss <= 32.0, "os-agent peak RSS {rss:.1} MiB");
}

//! `build-image push` against `skopeo copy oci:… docker://…` on the same
//! upgrade layout, over loopback to Debian's docker-registry.
//!
//! Run with `cargo test --release --bench push -- --nocapture` (a plain
//! test that times things, as `benches/iso.rs`). The layout is an upgrade
//! artifact written by the library with an incompressible root of
//! `PUSH_BENCH_MB` MiB (default 256), or the one `PUSH_BENCH_LAYOUT` names
//! (e.g. `out/debian-bookworm-amd64.upgrade` from a real build).
//! `PUSH_BENCH_RUNS` (default 3) interleaved runs of each; the best and the
//! median count.
//!
//! Every run pushes into a registry of its own, started empty on a new
//! port: neither tool can skip or mount a blob, and skopeo's blob-info
//! cache (`/var/lib/containers/cache/blob-info-cache-v1.sqlite`), keyed by
//! registry host and port, has nothing to offer it. build-image gets an
//! empty `--cache-dir` (no mount hints either). Peak RSS is GNU time's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boot_contract::upgrade::{Config, CONFIG_FORMAT};
use build_image::oci::Digest;
use build_image::upgrade::{read_layout, write_layout, Annotations, ArtifactFiles};
use common::{require_tool, Registry, BIN};

const TAG: &str = "1.0.0";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Incompressible bytes (xorshift), written in 1 MiB pieces.
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

/// The layout to push and its tag.
fn layout(work: &Path) -> (PathBuf, String) {
    if let Some(dir) = std::env::var_os("PUSH_BENCH_LAYOUT") {
        let dir = PathBuf::from(dir);
        let l = read_layout(&dir).unwrap();
        return (dir, l.config.version);
    }
    let mib = env_num("PUSH_BENCH_MB", 256);
    let rootfs = work.join("root.squashfs");
    write_noise(&rootfs, mib);
    let (digest, size) = build_image::cache::hash_file(&rootfs).unwrap();
    let config = Config {
        format: CONFIG_FORMAT,
        version: TAG.into(),
        flavor: "debian".into(),
        release: "bookworm".into(),
        arch: "amd64".into(),
        kernel: "6.1.0-28-amd64".into(),
        k3s_version: None,
        rootfs_size: size,
        rootfs_digest: digest.to_string(),
        min_slot_size: size.next_multiple_of(1 << 20),
        min_agent_version: "0.1.0".into(),
        lock_digest: Digest::of(b"lock").to_string(),
        created: "2025-10-09T08:53:20Z".into(),
    };
    let dir = work.join("bench.upgrade");
    std::fs::create_dir(&dir).unwrap();
    // A kernel and an initrd of realistic sizes.
    let (k, i) = (work.join("kernel"), work.join("initrd"));
    write_noise(&k, 8);
    write_noise(&i, 12);
    let (kernel, initrd) = (std::fs::read(&k).unwrap(), std::fs::read(&i).unwrap());
    write_layout(
        &dir,
        &config,
        &ArtifactFiles {
            rootfs: &rootfs,
            kernel: &kernel,
            initrd: &initrd,
        },
        &Annotations {
            version: TAG.into(),
            created: config.created.clone(),
            revision: None,
            source: None,
        },
    )
    .unwrap();
    (dir, TAG.to_string())
}

/// What GNU time saw of one run.
#[derive(Clone, Copy, Default)]
struct Usage {
    wall: Duration,
    /// User + system CPU seconds.
    cpu: f64,
    rss_kib: u64,
}

/// Runs `cmd` under GNU time.
fn timed(cmd: Command) -> Usage {
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "usage=%M %U %S"]).arg(cmd.get_program());
    t.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let start = Instant::now();
    let out = t.output().unwrap();
    let wall = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} failed:\n{err}", cmd);
    let fields: Vec<f64> = err
        .lines()
        .find_map(|l| l.strip_prefix("usage="))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Usage {
        wall,
        rss_kib: fields.first().copied().unwrap_or(0.0) as u64,
        cpu: fields.get(1).copied().unwrap_or(0.0) + fields.get(2).copied().unwrap_or(0.0),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn push_against_skopeo_copy() {
    require_tool("skopeo", "skopeo");
    require_tool("docker-registry", "docker-registry");
    assert!(
        Path::new("/usr/bin/time").is_file(),
        "install GNU time (apt-get install time)"
    );
    let work = tempfile::Builder::new()
        .prefix("push-bench-")
        .tempdir()
        .unwrap();
    let (dir, tag) = layout(work.path());
    let l = read_layout(&dir).unwrap();
    let bytes: u64 = l.blobs.iter().map(|b| b.desc.size).sum();
    let runs = env_num("PUSH_BENCH_RUNS", 3);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let reg = Registry::start();
        let cache = work.path().join(format!("cache-{run}"));
        let mut cmd = Command::new(BIN);
        cmd.arg("--quiet")
            .arg("--cache-dir")
            .arg(&cache)
            .arg("push")
            .arg(&dir)
            .arg(reg.image("bench/os", &tag));
        ours.push(timed(cmd));
        drop(reg);

        let reg = Registry::start();
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(format!("docker://{}", reg.image("bench/os", &tag)));
        theirs.push(timed(cmd));
        eprintln!(
            "run {}: build-image push {:.2} s ({:.2} s CPU), skopeo copy {:.2} s ({:.2} s CPU)",
            run + 1,
            ours[run].wall.as_secs_f64(),
            ours[run].cpu,
            theirs[run].wall.as_secs_f64(),
            theirs[run].cpu,
        );
    }
    let walls = |v: &[Usage]| v.iter().map(|u| u.wall).collect::<Vec<_>>();
    let best = |v: &[Usage]| *walls(v).iter().min().unwrap();
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "\nupgrade layout: {mib:.0} MiB in {} blobs, {runs} runs each",
        l.blobs.len()
    );
    println!("| tool | best (s) | median (s) | MiB/s (best) | CPU, median (s) | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, v) in [
        ("build-image push", &ours),
        ("skopeo copy oci: docker://", &theirs),
    ] {
        let mut cpu: Vec<f64> = v.iter().map(|u| u.cpu).collect();
        cpu.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} |",
            best(v).as_secs_f64(),
            median(walls(v)).as_secs_f64(),
            mib / best(v).as_secs_f64(),
            cpu[cpu.len() / 2],
            v.iter().map(|u| u.rss_kib).max().unwrap() as f64 / 1024.0
        );
    }
    let ratio = best(&ours).as_secs_f64() / best(&theirs).as_secs_f64();
    let ratio_median = median(walls(&ours)).as_secs_f64() / median(walls(&theirs)).as_secs_f64();
    println!(
        "\nbuild-image / skopeo, wall: {ratio:.2}× (best), {ratio_median:.2}× (median); target ≤ 1.0×"
    );
}

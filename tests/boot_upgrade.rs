//! A/B upgrades end to end, booted for real: images built by build-image
//! (v1 as a disk, v2 and v3 as upgrade artifacts only), pushed with
//! `build-image push --sign-key` to a registry behind htpasswd, applied by
//! `os-agent upgrade` in a QEMU guest (OVMF, GRUB try-once) that reaches
//! the registry at 10.0.2.2, checked over SSH with `os-agent status --json`
//! at each step. Each machine keeps running across its own reboots
//! (power cuts included), so many checks share one boot.
//!
//! - `happy_path_refusals_and_power_cuts`: refusals before writing (wrong
//!   architecture, too big, unsigned, wrongly signed, a downgrade), a
//!   corrupt download (fault proxy: digest mismatch) and a registry gone
//!   mid-stream arm nothing; a power cut (`OS_AGENT_FAULT=…:reboot`) in the
//!   middle of the stream, after it, after the boot files, between the two
//!   environment copies of the arm, and during the trial's commit — the
//!   machine boots a good slot every time, `status` tells what happened,
//!   and the last of them ends on v2 in slot b, committed; then v3, signed
//!   only with the key baked into v2, through the command of the Kubernetes
//!   Plan (deploy/) run from another mount namespace, goes to slot a
//!   (`boot ok slot=a version=3.0.0-test`) and stays after a reboot.
//! - `failed_trials_come_back_and_reset_empties_persist`: a v2 whose k3s
//!   fails its health check, one whose initrd makes the kernel panic, one
//!   whose root is corrupt each come back on slot a with the failure
//!   recorded; the same digest again is refused; `reset --keep-config` and
//!   `reset` empty persist, keeping the host name and SSH host keys only
//!   with `--keep-config`.
//! - `arm64_happy_path`: v1 → v2 on arm64 under AAVMF.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::images::{self, cached_build, node_config};
use common::oci::OciLayout;
use common::qemu::{fresh_vars, Vm, AAVMF_VARS, OVMF_VARS};
use common::registry::Registry;
use common::session::Session;
use common::ssh::{free_port, text as ssh_text, Key, Ssh};
use common::upgrade::{self as up, Spec};
use common::{require_tool, sparse_copy, Fault, Proxy, TestEnv};

const USER: &str = "fleet";
const PASS: &str = "fleet-pass";
const V1: &str = images::VERSION;
const V2: &str = "2.0.0-test";
const V3: &str = "3.0.0-test";
/// A boot of the full image under TCG on 2 busy cores takes one to three
/// minutes; past this something hangs.
const BOOT: Duration = Duration::from_secs(900);

/// Signing keys, fixed so cached builds stay valid: 1 is trusted through
/// the ESP's node config, 2 is baked into v2 and v3 (`--upgrade-key`), 3
/// is trusted by nobody.
fn keys() -> [(PathBuf, PathBuf); 3] {
    let dir = common::fixtures::fixtures_dir().join("upgrade-keys");
    fs::create_dir_all(&dir).unwrap();
    [1u8, 2, 3].map(|n| up::key_files(&dir, n))
}

fn v2_amd64() -> PathBuf {
    let k2 = &keys()[1].1;
    let out = cached_build(
        "amd64-v2",
        "amd64",
        &[
            "--format",
            "upgrade",
            "--image-version",
            V2,
            "--upgrade-key",
            k2.to_str().unwrap(),
        ],
        &node_config(),
        &[k2],
    );
    images::output(&out, images::DEFAULT_FLAVOR, "amd64", "upgrade")
}

fn v3_amd64() -> PathBuf {
    let k2 = &keys()[1].1;
    let out = cached_build(
        "amd64-v3",
        "amd64",
        &[
            "--format",
            "upgrade",
            "--image-version",
            V3,
            "--upgrade-key",
            k2.to_str().unwrap(),
        ],
        &node_config(),
        &[k2],
    );
    images::output(&out, images::DEFAULT_FLAVOR, "amd64", "upgrade")
}

/// A v2 whose k3s fails: its config tells the k3s stand-in to fail a unit.
fn v2_unhealthy_amd64() -> PathBuf {
    let config = node_config().replace(
        "  token: test-token\n",
        "  token: test-token\n  config:\n    standin-fail: true\n",
    );
    assert!(config.contains("standin-fail"));
    let out = cached_build(
        "amd64-v2bad",
        "amd64",
        &["--format", "upgrade", "--image-version", "2.1.0-test"],
        &config,
        &[],
    );
    images::output(&out, images::DEFAULT_FLAVOR, "amd64", "upgrade")
}

/// The registry the guests pull from, and build-image pushing to it.
struct Fleet {
    env: TestEnv,
    reg: Registry,
    keys: [(PathBuf, PathBuf); 3],
}

impl Fleet {
    fn new() -> Fleet {
        let env = TestEnv::new();
        let reg = Registry::start_with_auth(USER, PASS);
        fs::write(
            env.docker_config.join("config.json"),
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
                reg.host,
                up::base64_pair(USER, PASS)
            ),
        )
        .unwrap();
        Fleet {
            env,
            reg,
            keys: keys(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self.env.run(args);
        assert!(
            o.status.success(),
            "build-image {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// `build-image push LAYOUT REF [--sign-key KEY]`; the pushed digest.
    fn push(&self, layout: &Path, tag: &str, key: Option<usize>) -> String {
        let r = self.reg.image("test/os", tag);
        let mut args = vec!["push", layout.to_str().unwrap(), &r];
        let k;
        if let Some(i) = key {
            k = self.keys[i].0.display().to_string();
            args.extend(["--sign-key", &k]);
        }
        let o = self.run(&args);
        let d = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(d.starts_with("sha256:"), "push printed {d:?}");
        d
    }

    /// An artifact made from the built `layout` with `edit` applied (same
    /// root unless `root` is given), pushed as `tag`, signed with key
    /// `key` by `build-image sign`.
    fn derive(
        &self,
        work: &Path,
        layout: &Path,
        tag: &str,
        root: Option<PathBuf>,
        edit: impl FnOnce(&mut Spec),
        key: Option<usize>,
    ) -> String {
        let mut spec = up::spec_of(layout);
        if let Some(r) = root {
            spec.rootfs = r;
        }
        edit(&mut spec);
        let dest = OciLayout::create(work.join("derived"));
        let w = up::write(&dest, tag, &spec);
        self.reg.push(&dest, tag, "test/os");
        if let Some(i) = key {
            let r = format!("{}/test/os@{}", self.reg.host, w.manifest);
            self.run(&["sign", "--key", self.keys[i].0.to_str().unwrap(), &r]);
        }
        w.manifest
    }
}

/// `build-image`'s ESP config for the test disks: root's SSH key, key 1
/// trusted for upgrades.
fn esp_config(disk: &Path, work: &Path, key: &Key, pem: &str) {
    require_tool("mcopy", "mtools");
    let off = partition_offset(disk, "ESP");
    let image = format!("{}@@{off}", disk.display());
    let pem: String = pem.lines().map(|l| format!("      {l}\n")).collect();
    let text = format!(
        "users:\n  - name: root\n    ssh_authorized_keys: [\"{}\"]\nupgrade:\n  public_keys:\n    - |\n{pem}",
        key.public
    );
    let file = work.join("config.yaml");
    fs::write(&file, text).unwrap();
    let _ = Command::new("mmd")
        .args(["-i", &image, "::/build-image"])
        .output();
    let o = Command::new("mcopy")
        .args([
            "-i",
            &image,
            "-o",
            file.to_str().unwrap(),
            "::/build-image/config.yaml",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn partition_offset(disk: &Path, name: &str) -> u64 {
    let p = Command::new("sgdisk").arg("-p").arg(disk).output().unwrap();
    let table = String::from_utf8_lossy(&p.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("no partition {name}:\n{table}"));
    row.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 512
}

/// A copy of the built disk with 1 GiB for persist and the ESP config.
fn node_disk(built: &Path, work: &Path, key: &Key, pem: &str) -> PathBuf {
    let disk = work.join("disk.raw");
    sparse_copy(built, &disk);
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(f.metadata().unwrap().len() + (1 << 30)).unwrap();
    drop(f);
    esp_config(&disk, work, key, pem);
    disk
}

/// A guest in a [`Session`], reached over SSH.
struct Node {
    vm: Session,
    started: Instant,
    ssh: Ssh,
    key: Key,
    /// `--insecure-registry` and the registry as the guest sees them.
    registry: String,
}

impl Node {
    /// Waits for the next boot line; returns it.
    fn boot(&mut self, what: &str) -> String {
        let line = self.vm.expect("os-agent: boot ", BOOT);
        let line = line[line.find("os-agent: boot ").unwrap()..].to_string();
        eprintln!(
            "[{} +{}s] {what}: {line}",
            self.vm.name,
            self.started.elapsed().as_secs()
        );
        line
    }

    fn boot_ok(&mut self, what: &str, prefix: &str) {
        let line = self.boot(what);
        assert!(
            line.starts_with(prefix) && line.contains("failed_units=0"),
            "{what}: {line}\n{}",
            common::qemu::tail(&self.vm.console(), 60)
        );
    }

    fn sh(&self, cmd: &str) -> Output {
        if let Err(e) = self.ssh.wait(&self.key, "root", Duration::from_secs(300)) {
            panic!("{e}\n{}", common::qemu::tail(&self.vm.console(), 60));
        }
        self.ssh.run(&self.key, "root", cmd, b"")
    }

    fn ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(o.status.success(), "{cmd}: {}", ssh_text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.ok("os-agent status --json");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `os-agent upgrade TAG --json` (extra arguments and environment
    /// before it); the exit code and the result line.
    fn upgrade(&self, tag: &str, extra: &str, env: &str) -> (i32, serde_json::Value, String) {
        let host = &self.registry;
        let cmd = format!(
            "{env} os-agent upgrade {host}/test/os:{tag} --json --insecure-registry {host} {extra}"
        );
        let o = self.sh(&cmd);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let result = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "result")
            .unwrap_or(serde_json::Value::Null);
        (o.status.code().unwrap_or(-1), result, ssh_text(&o))
    }

    /// `upgrade TAG --reboot`: armed, and the machine goes down (the
    /// connection may die before the command's exit status arrives).
    fn upgrade_and_reboot(&self, tag: &str) -> serde_json::Value {
        let (code, r, text) = self.upgrade(tag, "--reboot", "");
        assert!(
            r["result"] == "armed" && (code == 0 || code == 255),
            "{tag}: {text}"
        );
        r
    }

    fn refused(&self, tag: &str, want: &str) {
        let (code, r, text) = self.upgrade(tag, "", "");
        assert_eq!(code, 3, "{tag}: {text}");
        assert!(
            r["reason"].as_str().unwrap_or("").contains(want),
            "{tag}: want {want:?}: {text}"
        );
        self.nothing_armed(tag);
    }

    /// Both environment copies (read by the agent) arm nothing.
    fn nothing_armed(&self, what: &str) {
        let s = self.status();
        assert_eq!(s["trialSlot"], "", "{what}: {s}");
        let env = self.ok(
            "d=$(mktemp -d) && mount -o ro /dev/disk/by-partlabel/ESP $d && \
             cat $d/grubenv $d/grubenv.bak | tr -d '#'; umount $d",
        );
        assert!(
            !env.contains("trial_slot=a") && !env.contains("trial_slot=b"),
            "{what}: {env}"
        );
    }

    /// Starts an upgrade that the fault point `point` cuts short with a
    /// reboot; returns when the machine is back up (its boot line).
    fn power_cut(&mut self, tag: &str, point: &str) -> String {
        let (code, _, text) = self.upgrade(tag, "", &format!("OS_AGENT_FAULT={point}:reboot"));
        // The connection dies with the machine.
        assert!(code != 0, "{point}: the upgrade finished: {text}");
        self.boot(&format!("after a power cut at {point}"))
    }
}

fn start_node(name: &str, vm: Vm, key: Key, reg: &Registry, ssh_port: u16) -> Node {
    Node {
        vm: Session::start(&vm, name),
        started: Instant::now(),
        ssh: Ssh { port: ssh_port },
        key,
        registry: format!("10.0.2.2:{}", reg.port),
    }
}

/// A node booted (under OVMF, 2 CPUs, SSH forwarded) from a copy of the
/// amd64 disk of the build `v1` whose ESP trusts `pem` and carries a
/// config with a fresh key `key_name`.
fn amd64_node(
    name: &str,
    key_name: &str,
    v1: &Path,
    work: &Path,
    pem: &str,
    reg: &Registry,
) -> Node {
    let key = Key::generate(work, key_name);
    let disk = node_disk(
        &images::output(v1, images::DEFAULT_FLAVOR, "amd64", "raw"),
        work,
        &key,
        pem,
    );
    let vars = work.join("VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    let port = free_port();
    let vm = Vm::x86_64(1536)
        .args(["-smp", "2"])
        .ovmf(&vars)
        .virtio_disk(&disk)
        .nic_ssh(port)
        .allow_reboot();
    start_node(name, vm, key, reg, port)
}

fn guest_auth(node: &Node, hosts: &[String]) {
    let auths: Vec<String> = hosts
        .iter()
        .map(|h| format!(r#""{h}":{{"auth":"{}"}}"#, up::base64_pair(USER, PASS)))
        .collect();
    node.ok(&format!(
        "printf '%s' '{{\"auths\":{{{}}}}}' > /var/lib/os-agent/registry-auth.json && chmod 600 /var/lib/os-agent/registry-auth.json",
        auths.join(",")
    ));
}

#[test]
fn happy_path_refusals_and_power_cuts() {
    let fleet = Fleet::new();
    let v1 = images::default_amd64();
    let v2 = v2_amd64();
    let v3 = v3_amd64();
    let work = fleet.env.tmp.path().join("a");
    fs::create_dir_all(&work).unwrap();
    let d_v2 = fleet.push(&v2, "v2", Some(0));
    fleet.push(&v3, "v3", Some(1));
    let pem1 = fs::read_to_string(&fleet.keys[0].1).unwrap();
    let arm = fleet.derive(
        &work,
        &v2,
        "arm",
        None,
        |s| s.arch = common::other_arch().into(),
        Some(0),
    );
    fleet.derive(
        &work,
        &v2,
        "big",
        None,
        |s| s.min_slot_size = Some(64 << 30),
        Some(0),
    );
    fleet.derive(
        &work,
        &v2,
        "unsigned",
        None,
        |s| s.version = "2.0.1-test".into(),
        None,
    );
    fleet.derive(
        &work,
        &v2,
        "stranger",
        None,
        |s| s.version = "2.0.2-test".into(),
        Some(2),
    );
    fleet.derive(
        &work,
        &v2,
        "old",
        None,
        |s| s.version = "0.9.0-test".into(),
        Some(0),
    );
    fleet.derive(
        &work,
        &v3,
        "v3-unsigned",
        None,
        |s| s.version = "3.0.1-test".into(),
        None,
    );
    let _ = arm;
    let rootfs_v2 = up::spec_of(&v2).rootfs;
    let d_root = format!("sha256:{}", common::sha256_file(&rootfs_v2));

    let mut node = amd64_node("amd64", "node-a", &v1, &work, &pem1, &fleet.reg);
    let started = Instant::now();

    // Boot 1: v1 in slot a, nothing else.
    node.boot_ok("v1", &format!("os-agent: boot ok slot=a version={V1}"));
    let proxy = Proxy::start(
        &fleet.reg.host,
        Fault::CorruptBlob {
            digest: d_root.clone(),
        },
    );
    let via = format!("10.0.2.2:{}", proxy.host.rsplit(':').next().unwrap());
    guest_auth(&node, &[node.registry.clone(), via.clone()]);
    let s = node.status();
    assert_eq!(
        (&s["slots"]["a"]["state"], &s["slots"]["a"]["version"]),
        (&"active".into(), &V1.into()),
        "{s}"
    );
    assert_eq!(s["slots"]["b"]["state"], "empty", "{s}");

    // Refused before a byte is written.
    node.refused("arm", "wrong architecture");
    node.refused("big", "too big");
    node.refused("unsigned", "not signed by a trusted key");
    node.refused("stranger", "signed by none of the trusted keys");
    node.refused("old", "a downgrade");
    assert_eq!(node.status()["slots"]["b"]["state"], "empty");

    // A corrupt download and a registry that goes away arm nothing.
    let through_proxy = |node: &Node, env: &str| {
        let o = node.sh(&format!(
            "{env} os-agent upgrade {via}/test/os:v2 --json --insecure-registry {via}"
        ));
        (o.status.code().unwrap_or(-1), ssh_text(&o))
    };
    let (code, text) = through_proxy(&node, "");
    assert_eq!(code, 4, "{text}");
    assert!(text.contains(&format!("expected {d_root}")), "{text}");
    node.nothing_armed("corrupt download");
    assert_eq!(node.status()["slots"]["b"]["state"], "bad");
    proxy.set_fault(Fault::TruncateBlobThenGone {
        digest: d_root.clone(),
    });
    let (code, text) = through_proxy(&node, "");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("nothing armed"), "{text}");
    node.nothing_armed("registry gone");
    let s = node.status();
    assert_eq!(s["lastUpgrade"]["result"], "failed", "{s}");

    // Power cuts: in the middle of the stream, after it, after the boot
    // files. Each time slot a boots and status says what happened.
    for (point, slot_b, result) in [
        ("upgrade-mid-stream", "bad", "interrupted"),
        ("upgrade-after-stream", "bad", "interrupted"),
        ("upgrade-before-arm", "passive", "interrupted"),
    ] {
        let line = node.power_cut("v2", point);
        assert!(
            line.starts_with("os-agent: boot ok slot=a"),
            "{point}: {line}"
        );
        let s = node.status();
        assert_eq!(
            (&s["slot"], &s["bootState"]),
            (&"a".into(), &"committed".into()),
            "{point}: {s}"
        );
        assert_eq!(s["slots"]["b"]["state"], slot_b, "{point}: {s}");
        assert_eq!(s["lastUpgrade"]["result"], result, "{point}: {s}");
        node.nothing_armed(point);
    }

    // A power cut between the two copies of the arm: GRUB reads the
    // primary, which arms the trial; in the trial, a power cut between the
    // two copies of the commit (planted for health with the one-shot file).
    node.ok("echo commit-after-primary:reboot > /var/lib/os-agent/fault-once && sync");
    let (code, _, text) = node.upgrade("v2", "", "OS_AGENT_FAULT=commit-after-primary:reboot");
    assert!(code != 0, "{text}");
    node.vm.expect("os-init: trial boot", BOOT);
    node.vm.expect(
        "os-agent: fault point commit-after-primary reached (reboot)",
        BOOT,
    );
    // The commit's primary copy names b: b boots as the default.
    node.boot_ok(
        "after the cut commit",
        &format!("os-agent: boot ok slot=b version={V2}"),
    );
    let s = node.status();
    assert_eq!(
        (&s["slot"], &s["defaultSlot"], &s["bootState"]),
        (&"b".into(), &"b".into(), &"committed".into()),
        "{s}"
    );
    assert_eq!(
        (&s["slots"]["a"]["state"], &s["slots"]["a"]["version"]),
        (&"passive".into(), &V1.into()),
        "{s}"
    );
    assert_eq!(
        (&s["slots"]["b"]["state"], &s["slots"]["b"]["digest"]),
        (&"active".into(), &d_v2.clone().into()),
        "{s}"
    );
    assert_eq!(s["lastUpgrade"]["result"], "committed", "{s}");
    assert!(s["bootEnvWarning"].is_null(), "{s}");
    assert!(!node.ok("ls /var/lib/os-agent").contains("fault-once"));

    // v2 carries key 2: an unsigned v3 is refused; v3 signed with key 2
    // only is taken, through the Plan's command from another mount
    // namespace (the agent, its state and the ESP are the host's).
    node.refused("v3-unsigned", "not signed by a trusted key (2 keys)");
    let argv = up::plan_command(&format!("{}/test/os", node.registry), "v3");
    let inner = format!(
        "mount -t tmpfs none /var/lib/os-agent && mount -t tmpfs none /usr/bin && exec /run/ctr-nsenter {} --insecure-registry {}",
        argv[1..].join(" "),
        node.registry
    );
    assert_eq!(argv[0], "nsenter", "{argv:?}");
    let o = node.sh(&format!(
        "cp /usr/bin/nsenter /run/ctr-nsenter && unshare --mount --propagation private sh -c '{inner}'"
    ));
    let text = ssh_text(&o);
    assert!(text.contains("\"result\":\"armed\""), "{text}");
    node.vm.expect("os-init: trial boot", BOOT);
    node.boot_ok(
        "v3 trial",
        &format!("os-agent: boot ok slot=a version={V3}"),
    );
    assert!(node
        .vm
        .console()
        .contains("os-agent: committed slot a as default (was b)"));
    let s = node.status();
    assert_eq!(
        (&s["slot"], &s["bootState"]),
        (&"a".into(), &"committed".into()),
        "{s}"
    );
    assert_eq!(
        (&s["slots"]["a"]["version"], &s["slots"]["b"]["state"]),
        (&V3.into(), &"passive".into()),
        "{s}"
    );
    // Committed: it stays after a reboot.
    let _ = node.sh("systemctl reboot");
    node.boot_ok(
        "after v3",
        &format!("os-agent: boot ok slot=a version={V3}"),
    );
    assert_eq!(node.status()["bootState"], "committed");
    eprintln!("happy path: {:?} of boots", started.elapsed());
}

#[test]
fn failed_trials_come_back_and_reset_empties_persist() {
    let fleet = Fleet::new();
    let v1 = images::default_amd64();
    let v2 = v2_amd64();
    let bad = v2_unhealthy_amd64();
    let work = fleet.env.tmp.path().join("b");
    fs::create_dir_all(&work).unwrap();
    let d_bad = fleet.push(&bad, "v2-unhealthy", Some(0));
    fleet.push(&v2, "v2", Some(0));
    let spec = up::spec_of(&v2);
    fleet.derive(
        &work,
        &v2,
        "v2-panics",
        None,
        |s| {
            s.version = "2.2.0-test".into();
            s.initrd = b"not an initramfs\n".repeat(64);
        },
        Some(0),
    );
    let corrupt = work.join("corrupt.squashfs");
    fs::copy(&spec.rootfs, &corrupt).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&corrupt).unwrap();
        f.write_all_at(&[0u8; 4096], 0).unwrap();
    }
    fleet.derive(
        &work,
        &v2,
        "v2-corrupt",
        Some(corrupt),
        |s| s.version = "2.3.0-test".into(),
        Some(0),
    );
    let pem1 = fs::read_to_string(&fleet.keys[0].1).unwrap();

    let mut node = amd64_node("failures", "node-b", &v1, &work, &pem1, &fleet.reg);

    node.boot_ok("v1", &format!("os-agent: boot ok slot=a version={V1}"));
    guest_auth(&node, &[node.registry.clone()]);
    node.ok("printf 'hostname: node-kept\\n' > /var/lib/os-agent/config.yaml");

    // A trial whose health check fails: rolled back, recorded, its digest
    // refused from then on.
    node.upgrade_and_reboot("v2-unhealthy");
    let line = node.boot("unhealthy trial");
    assert!(
        line.starts_with("os-agent: boot degraded slot=b version=2.1.0-test"),
        "{line}"
    );
    node.vm.expect("os-agent: trial of slot b (version 2.1.0-test) failed its health check: rebooting into slot a", BOOT);
    node.boot_ok("back on a", "os-agent: boot ok slot=a");
    let s = node.status();
    assert_eq!(
        (&s["lastRollback"]["slot"], &s["lastRollback"]["to"]),
        (&"b".into(), &"a".into()),
        "{s}"
    );
    assert!(
        s["lastRollback"]["reason"]
            .as_str()
            .unwrap()
            .contains("k3s-standin-fault"),
        "{s}"
    );
    assert_eq!(s["lastUpgrade"]["result"], "rolled_back", "{s}");
    assert_eq!(s["slots"]["b"]["state"], "bad", "{s}");
    assert_eq!(s["badDigests"][0]["digest"], d_bad.as_str(), "{s}");
    assert_eq!(node.ok("hostname").trim(), "node-kept");
    node.refused("v2-unhealthy", "failed its trial 1 time");

    // A trial whose kernel panics (no usable initramfs): panic=10 reboots,
    // GRUB already took the trial back; the next health records it.
    node.upgrade_and_reboot("v2-panics");
    node.vm.expect("Kernel panic", BOOT);
    node.boot_ok("after the panic", "os-agent: boot ok slot=a");
    let s = node.status();
    assert!(
        s["lastRollback"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no_health_verdict"),
        "{s}"
    );
    assert_eq!(s["lastRollback"]["version"], "2.2.0-test", "{s}");
    assert_eq!(s["lastUpgrade"]["result"], "rolled_back", "{s}");

    // A trial whose root cannot be mounted: os-init reboots.
    node.upgrade_and_reboot("v2-corrupt");
    node.vm.expect("os-init: error", BOOT);
    node.boot_ok("after the corrupt root", "os-agent: boot ok slot=a");
    let s = node.status();
    assert_eq!(
        (&s["lastRollback"]["version"], &s["lastUpgrade"]["result"]),
        (&"2.3.0-test".into(), &"rolled_back".into()),
        "{s}"
    );
    assert_eq!(s["badDigests"].as_array().unwrap().len(), 3, "{s}");

    // reset --keep-config: persist is emptied but for the device's config
    // and SSH host keys.
    let host_key = node.ok("cat /etc/ssh/ssh_host_ed25519_key.pub");
    node.ok("echo before-reset > /root/probe && sync");
    let _ = node.sh("os-agent reset --keep-config --reboot");
    node.vm.expect("persist reset (keep-config)", BOOT);
    node.boot_ok("after reset --keep-config", "os-agent: boot ok slot=a");
    assert_eq!(
        node.sh("test -e /root/probe").status.code(),
        Some(1),
        "the probe survived"
    );
    assert_eq!(node.ok("hostname").trim(), "node-kept");
    assert_eq!(node.ok("cat /etc/ssh/ssh_host_ed25519_key.pub"), host_key);
    let s = node.status();
    assert_eq!(s["bootCount"], 1, "{s}");
    assert!(s["lastUpgrade"].is_null(), "{s}");

    // reset: nothing kept.
    node.ok("echo before-reset > /root/probe && sync");
    let _ = node.sh("os-agent reset --reboot");
    node.vm.expect("persist reset (all)", BOOT);
    node.boot_ok("after reset", "os-agent: boot ok slot=a");
    assert_eq!(node.sh("test -e /root/probe").status.code(), Some(1));
    assert_eq!(node.ok("hostname").trim(), "node-test");
    assert_ne!(node.ok("cat /etc/ssh/ssh_host_ed25519_key.pub"), host_key);
}

#[test]
fn arm64_happy_path() {
    let fleet = Fleet::new();
    let v1 = cached_build(
        "arm64-v1",
        "arm64",
        &["--format", "disk", "--image-version", "1.0.0-arm"],
        &node_config(),
        &[],
    );
    let v2 = images::output(
        &cached_build(
            "arm64-v2",
            "arm64",
            &["--format", "upgrade", "--image-version", "2.0.0-arm"],
            &node_config(),
            &[],
        ),
        images::DEFAULT_FLAVOR,
        "arm64",
        "upgrade",
    );
    fleet.push(&v2, "v2", Some(0));
    let work = fleet.env.tmp.path().join("arm");
    fs::create_dir_all(&work).unwrap();
    let key = Key::generate(&work, "node-arm");
    let pem1 = fs::read_to_string(&fleet.keys[0].1).unwrap();
    let disk = node_disk(
        &images::output(&v1, images::DEFAULT_FLAVOR, "arm64", "raw"),
        &work,
        &key,
        &pem1,
    );
    let vars = work.join("VARS.fd");
    fresh_vars(AAVMF_VARS, &vars);
    let port = free_port();
    let vm = Vm::aarch64(1536)
        .args(["-smp", "2"])
        .aavmf(&vars)
        .virtio_pci_disk(&disk)
        .nic_ssh(port)
        .allow_reboot();
    let mut node = start_node("arm64", vm, key, &fleet.reg, port);
    node.boot_ok("arm64 v1", "os-agent: boot ok slot=a version=1.0.0-arm");
    guest_auth(&node, &[node.registry.clone()]);
    let r = node.upgrade_and_reboot("v2");
    assert_eq!(r["slot"], "b", "{r}");
    node.boot_ok("arm64 v2", "os-agent: boot ok slot=b version=2.0.0-arm");
    assert!(node
        .vm
        .console()
        .contains("os-agent: committed slot b as default (was a)"));
    let s = node.status();
    assert_eq!(
        (&s["bootState"], &s["lastUpgrade"]["result"]),
        (&"committed".into(), &"committed".into()),
        "{s}"
    );
}

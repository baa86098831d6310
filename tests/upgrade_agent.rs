//! `os-agent upgrade`, `rollback` and `reset` as the device runs them
//! (the static musl build of `cargo xtask components`), on a device tree
//! (`--root`: the slots are files under dev/disk/by-partlabel, the ESP a
//! directory) against a real registry: htpasswd basic auth, a bearer
//! token service, HTTPS with the image's CA bundle, and the
//! fault-injecting proxy for corrupt and broken downloads. Artifacts and
//! signatures are made to the contract of `boot_contract::upgrade` and
//! cosign's storage format (tests/common/upgrade.rs); the QEMU tests
//! (tests/boot_upgrade.rs) use the builder's own.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::oci::OciLayout;
use common::registry::Registry;
use common::upgrade::{self as up, Device, Spec};
use common::{require_tool, sha256_file, Fault, Proxy};

const MIB: u64 = 1 << 20;
const USER: &str = "fleet";
const PASS: &str = "s3cret";

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The JSON result line of `upgrade --json`.
fn result_of(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result line:\n{}", text(o)));
    line
}

fn auth_file(dev: &Device, host: &str) {
    let auth = up::base64_pair(USER, PASS);
    dev.write(
        "var/lib/os-agent/registry-auth.json",
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#).as_bytes(),
    );
}

fn trust(dev: &Device, pem: &str) {
    let indented: String = pem.lines().map(|l| format!("      {l}\n")).collect();
    dev.write(
        "etc/os-agent/config.yaml",
        format!("upgrade:\n  public_keys:\n    - |\n{indented}").as_bytes(),
    );
}

fn sha256_prefix(p: &Path, len: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    std::io::copy(&mut fs::File::open(p).unwrap().take(len), &mut h).unwrap();
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The fixture every test starts from: a v2 artifact (a real 8 MiB
/// SquashFS) signed with key 1, pushed with its signature to a registry
/// behind htpasswd; a device running v1 on slot a that trusts key 1 and
/// has the registry's credentials.
struct Bed {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    reg: Registry,
    layout: OciLayout,
    v2: up::Written,
    v2_spec: Spec,
    dev: Device,
    pem: String,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let bin = up::agent_binary();
        let reg = Registry::start_with_auth(USER, PASS);
        let layout = OciLayout::create(tmp.path().join("layout"));
        let root = up::squashfs(tmp.path(), "v2", 8, 2);
        let v2_spec = Spec::new("2.0.0", &root);
        let v2 = up::write(&layout, "v2", &v2_spec);
        let (key, pem) = up::key(1);
        let repo_ref = format!("{}/test/os", reg.host);
        let sig = up::sign_into(
            &layout,
            &v2.manifest,
            &up::payload(&repo_ref, &v2.manifest),
            &key,
        );
        reg.push(&layout, "v2", "test/os");
        reg.push(&layout, &sig, "test/os");
        let dev = Device::new(&tmp.path().join("dev"), "a", "1.0.0", 64 * MIB);
        auth_file(&dev, &reg.host);
        trust(&dev, &pem);
        Bed {
            tmp,
            bin,
            reg,
            layout,
            v2,
            v2_spec,
            dev,
            pem,
        }
    }

    fn reference(&self, tag: &str) -> String {
        self.reg.image("test/os", tag)
    }

    fn upgrade(&self, reference: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec![
            "upgrade",
            reference,
            "--json",
            "--insecure-registry",
            &self.reg.host,
        ];
        args.extend(extra);
        self.dev.agent(&self.bin, &args, env)
    }

    /// Pushes `spec` as `tag`, signed with `key` (None: unsigned).
    fn push(&self, tag: &str, spec: &Spec, key: Option<&p256::ecdsa::SigningKey>) -> up::Written {
        let w = up::write(&self.layout, tag, spec);
        self.reg.push(&self.layout, tag, "test/os");
        if let Some(k) = key {
            let repo_ref = format!("{}/test/os", self.reg.host);
            let sig = up::sign_into(
                &self.layout,
                &w.manifest,
                &up::payload(&repo_ref, &w.manifest),
                k,
            );
            self.reg.push(&self.layout, &sig, "test/os");
        }
        w
    }

    /// Slot b, the ESP's b/ and both env copies are as the device started.
    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            sha256_prefix(&self.dev.slot("b"), 16 * MIB),
            sha256_prefix(&self.tmp.path().join("zeros"), 16 * MIB),
            "{what}: slot b was written"
        );
        assert!(!self.dev.esp.join("b").exists(), "{what}: the ESP has b/");
        let (p, b) = self.dev.env();
        for e in [p, b] {
            assert_eq!(
                (e.get("default_slot"), e.get("trial_slot")),
                (Some("a"), Some("")),
                "{what}: {e:?}"
            );
        }
    }
}

fn zeros(bed: &Bed) {
    let f = fs::File::create(bed.tmp.path().join("zeros")).unwrap();
    f.set_len(16 * MIB).unwrap();
}

#[test]
fn an_upgrade_streams_into_the_passive_slot_arms_a_trial_and_is_committed() {
    let bed = Bed::new();
    let dev = &bed.dev;
    let o = bed.upgrade(&bed.reference("v2"), &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = result_of(&o);
    assert_eq!(
        (
            &r["result"],
            &r["slot"],
            &r["digest"],
            &r["version"],
            &r["exitCode"]
        ),
        (
            &"armed".into(),
            &"b".into(),
            &bed.v2.manifest.clone().into(),
            &"2.0.0".into(),
            &0.into()
        ),
        "{r}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    for phase in [
        "resolve",
        "preflight",
        "rootfs",
        "verify",
        "boot-files",
        "record",
        "arm",
    ] {
        assert!(
            out.contains(&format!("\"phase\":\"{phase}\"")),
            "no {phase} event:\n{out}"
        );
    }
    assert!(out.contains("\"event\":\"progress\""), "{out}");
    assert!(out.contains("signature: sha256:"), "{out}");

    // The slot holds the root, the ESP the kernel and initrd, both env
    // copies arm b.
    assert_eq!(
        sha256_prefix(&dev.slot("b"), bed.v2.rootfs_size),
        bed.v2.rootfs
    );
    assert_eq!(
        fs::read(dev.esp.join("b/vmlinuz")).unwrap(),
        bed.v2_spec.kernel
    );
    assert_eq!(
        fs::read(dev.esp.join("b/initrd")).unwrap(),
        bed.v2_spec.initrd
    );
    assert!(!dev.esp.join("b/vmlinuz.new").exists());
    let (p, b) = dev.env();
    assert_eq!(p, b);
    assert_eq!(
        (p.get("default_slot"), p.get("trial_slot")),
        (Some("a"), Some("b"))
    );
    let s = dev.status(&bed.bin);
    assert_eq!(s["slots"]["a"]["state"], "active", "{s}");
    assert_eq!(s["slots"]["a"]["version"], "1.0.0", "{s}");
    assert_eq!(s["slots"]["b"]["state"], "trial", "{s}");
    assert_eq!(s["slots"]["b"]["version"], "2.0.0", "{s}");
    assert_eq!(s["slots"]["b"]["digest"], bed.v2.manifest.as_str(), "{s}");
    assert!(
        s["slots"]["b"]["writtenAt"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{s}"
    );
    assert_eq!(s["lastUpgrade"]["result"], "armed", "{s}");

    // Asked again before the reboot: already armed, nothing written.
    let o = bed.upgrade(&bed.reference("v2"), &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"result\":\"armed\""));

    // The trial boots (GRUB consumed trial_slot in the primary copy) and
    // is committed: slot b is good, a passive, the upgrade committed.
    dev.write("proc/cmdline", b"bi.root=root_b bi.slot=b bi.trial=1\n");
    dev.write(
        "usr/lib/build-image/image.json",
        br#"{"flavor":"debian","version":"2.0.0"}"#,
    );
    // The same upgrade asked again on the trial (a Kubernetes Job started
    // again after the reboot): refused at once, or with --wait-trial it
    // waits for health's commit and then has nothing to do.
    let o = bed.upgrade(&bed.reference("v2"), &[], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let r = bed.reference("v2");
    let waiting = Command::new(&bed.bin)
        .args([
            "upgrade",
            &r,
            "--json",
            "--insecure-registry",
            &bed.reg.host,
        ])
        .args(["--wait-trial", "120", "--root"])
        .arg(&dev.root)
        .arg("--esp")
        .arg(&dev.esp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let o = dev.agent(&bed.bin, &["mark-good"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["result"], "up_to_date", "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("waiting up to 120 s"));
    let s = dev.status(&bed.bin);
    assert_eq!(
        (&s["slots"]["a"]["state"], &s["slots"]["b"]["state"]),
        (&"passive".into(), &"active".into()),
        "{s}"
    );
    assert_eq!(s["lastUpgrade"]["result"], "committed", "{s}");
    assert_eq!(dev.state()["slots"]["b"]["state"], "good");

    // Without credentials the registry's 401 is named with the file.
    fs::remove_file(dev.file("var/lib/os-agent/registry-auth.json")).unwrap();
    let o = bed.upgrade(&bed.reference("v2"), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/var/lib/os-agent/registry-auth.json"),
        "{}",
        text(&o)
    );
}

#[test]
fn refusals_come_before_any_write() {
    let bed = Bed::new();
    zeros(&bed);
    let (k1, _) = up::key(1);
    let (k2, _) = up::key(2);
    let root = bed.v2_spec.rootfs.clone();
    let refused = |o: &Output, want: &str| {
        assert_eq!(o.status.code(), Some(3), "{want}: {}", text(o));
        let r = result_of(o);
        assert_eq!(r["result"], "refused", "{r}");
        assert!(
            r["reason"].as_str().unwrap().contains(want),
            "want {want:?}: {r}"
        );
        bed.assert_untouched(want);
        let s = bed.dev.status(&bed.bin);
        assert_eq!(s["lastUpgrade"]["result"], "refused", "{s}");
        assert_eq!(s["slots"]["b"]["state"], "empty", "{s}");
    };

    // Another architecture.
    let mut spec = Spec::new("2.0.0", &root);
    spec.arch = common::other_arch().into();
    bed.push("arch", &spec, Some(&k1));
    refused(
        &bed.upgrade(&bed.reference("arch"), &[], &[]),
        "wrong architecture",
    );

    // Larger than the slot.
    let mut spec = Spec::new("2.0.1", &root);
    spec.min_slot_size = Some(bed.dev.slot_size + 1);
    bed.push("big", &spec, Some(&k1));
    refused(&bed.upgrade(&bed.reference("big"), &[], &[]), "too big");

    // Unsigned, signed by another key, a signature of another digest.
    bed.push("unsigned", &Spec::new("2.0.2", &root), None);
    refused(
        &bed.upgrade(&bed.reference("unsigned"), &[], &[]),
        "not signed by a trusted key",
    );
    bed.push("otherkey", &Spec::new("2.0.3", &root), Some(&k2));
    refused(
        &bed.upgrade(&bed.reference("otherkey"), &[], &[]),
        "signed by none of the trusted keys",
    );
    let w = bed.push("swapped", &Spec::new("2.0.4", &root), None);
    let repo_ref = format!("{}/test/os", bed.reg.host);
    // A valid signature, but of v2's digest, stored as this one's.
    let payload = up::payload(&repo_ref, &bed.v2.manifest);
    let sig = up::sign_into(&bed.layout, &w.manifest, &payload, &k1);
    bed.reg.push(&bed.layout, &sig, "test/os");
    refused(
        &bed.upgrade(&bed.reference("swapped"), &[], &[]),
        "not sha256:",
    );

    // Older than what runs; then allowed.
    bed.push("old", &Spec::new("0.9.0", &root), Some(&k1));
    refused(&bed.upgrade(&bed.reference("old"), &[], &[]), "a downgrade");

    // Needs a newer agent.
    let mut spec = Spec::new("2.0.5", &root);
    spec.min_agent_version = "99.0.0".into();
    bed.push("newagent", &spec, Some(&k1));
    refused(
        &bed.upgrade(&bed.reference("newagent"), &[], &[]),
        "needs os-agent 99.0.0",
    );

    // A key baked into the image is enough to refuse an unsigned one.
    fs::remove_file(bed.dev.file("etc/os-agent/config.yaml")).unwrap();
    let (_, pem3) = up::key(3);
    bed.dev
        .write("etc/os-agent/upgrade-keys/build.pub", pem3.as_bytes());
    refused(
        &bed.upgrade(&bed.reference("unsigned"), &[], &[]),
        "not signed by a trusted key (1 key)",
    );
    fs::remove_file(bed.dev.file("etc/os-agent/upgrade-keys/build.pub")).unwrap();

    // A digest whose trial failed.
    let mut st = bed.dev.state();
    st["badDigests"] = serde_json::json!([{"digest": bed.v2.manifest, "version": "2.0.0",
        "failures": 1, "at": "2026-01-01T00:00:00Z", "reason": "failed_units=1 (k3s.service)"}]);
    bed.dev.write(
        "var/lib/os-agent/state.json",
        serde_json::to_string(&st).unwrap().as_bytes(),
    );
    refused(
        &bed.upgrade(&bed.reference("v2"), &[], &[]),
        "failed its trial 1 time",
    );

    // A running trial: the passive slot is the default.
    bed.dev.set_env("b", "");
    let o = bed.upgrade(&bed.reference("v2"), &["--retry-failed"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(result_of(&o)["reason"]
        .as_str()
        .unwrap()
        .contains("runs as a trial"));
    bed.dev.set_env("a", "");

    // Without keys anything goes, with --allow-downgrade an older one,
    // with --retry-failed a failed one.
    let o = bed.upgrade(&bed.reference("old"), &["--allow-downgrade"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["version"], "0.9.0");
    let o = bed.upgrade(&bed.reference("v2"), &["--retry-failed"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["result"], "armed");
}

#[test]
fn corrupt_and_broken_downloads_arm_nothing_and_the_next_attempt_works() {
    let bed = Bed::new();
    zeros(&bed);
    let proxy = Proxy::start(
        &bed.reg.host,
        Fault::CorruptBlob {
            digest: bed.v2.rootfs.clone(),
        },
    );
    auth_file(&bed.dev, &proxy.host);
    let via = format!("{}/test/os:v2", proxy.host);
    let upgrade = |extra: &[&str]| {
        let mut a = vec![
            "upgrade",
            &via,
            "--json",
            "--insecure-registry",
            &proxy.host,
        ];
        a.extend(extra);
        bed.dev.agent(&bed.bin, &a, &[])
    };
    let armed = |what: &str| {
        let (p, b) = bed.dev.env();
        (p.get("trial_slot") == Some("b")) && p == b || panic!("{what}: {p:?} {b:?}")
    };

    // The root arrives with one flipped byte: digest mismatch, the slot
    // is marked bad, nothing armed.
    let o = upgrade(&[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let r = result_of(&o);
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("expected {}", bed.v2.rootfs)),
        "{r}"
    );
    let (p, _) = bed.dev.env();
    assert_eq!(p.get("trial_slot"), Some(""));
    assert!(!bed.dev.esp.join("b/vmlinuz").exists());
    let s = bed.dev.status(&bed.bin);
    assert_eq!(s["slots"]["b"]["state"], "bad", "{s}");
    assert_eq!(s["lastUpgrade"]["result"], "failed", "{s}");

    // Half the root, then the connection drops: resumed with a Range
    // request from where it stopped.
    proxy.set_fault(Fault::TruncateBlob {
        digest: bed.v2.rootfs.clone(),
        times: 1,
    });
    proxy.clear_log();
    let o = upgrade(&[]);
    assert!(o.status.success(), "{}", text(&o));
    armed("resumed");
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.path.ends_with(&bed.v2.rootfs)
                && r.range
                    .as_deref()
                    .is_some_and(|x| x.starts_with("bytes=") && x != "bytes=0-")),
        "no resumed request:\n{}",
        proxy.log_text()
    );
    assert_eq!(
        sha256_prefix(&bed.dev.slot("b"), bed.v2.rootfs_size),
        bed.v2.rootfs
    );

    // Asked again while armed: nothing to write.
    let o = upgrade(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["result"], "armed");

    // The registry goes away mid-stream: a clean error, nothing armed.
    bed.dev.set_env("a", "");
    proxy.set_fault(Fault::TruncateBlobThenGone {
        digest: bed.v2.rootfs.clone(),
    });
    let o = upgrade(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("slot b is marked bad, nothing armed"), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    let (p, b) = bed.dev.env();
    assert_eq!(
        (p.get("trial_slot"), b.get("trial_slot")),
        (Some(""), Some(""))
    );
    let s = bed.dev.status(&bed.bin);
    assert_eq!(s["slots"]["b"]["state"], "bad", "{s}");
    // It comes back; the next attempt works.
    proxy.set_fault(Fault::PassThrough);
    let o = upgrade(&[]);
    assert!(o.status.success(), "{}", text(&o));
    armed("after the registry came back");
}

#[test]
fn a_stop_at_any_step_leaves_a_truthful_status() {
    let bed = Bed::new();
    // (fault point, slot b state, last upgrade result, trial armed in the
    // primary copy, in the backup)
    let cases = [
        ("upgrade-mid-stream", "bad", "interrupted", "", ""),
        ("upgrade-after-stream", "bad", "interrupted", "", ""),
        ("upgrade-before-arm", "passive", "interrupted", "", ""),
        ("commit-after-primary", "trial", "armed", "b", ""),
    ];
    for (point, slot_state, result, primary, backup) in cases {
        bed.dev.set_env("a", "");
        let o = bed.upgrade(&bed.reference("v2"), &[], &[("OS_AGENT_FAULT", point)]);
        assert_eq!(o.status.code(), Some(134), "{point}: {}", text(&o));
        let (p, b) = bed.dev.env();
        assert_eq!(
            (p.get("trial_slot"), b.get("trial_slot")),
            (Some(primary), Some(backup)),
            "{point}"
        );
        assert_eq!(p.get("default_slot"), Some("a"), "{point}");
        let s = bed.dev.status(&bed.bin);
        assert_eq!(s["slots"]["a"]["state"], "active", "{point}: {s}");
        assert_eq!(s["slots"]["b"]["state"], slot_state, "{point}: {s}");
        assert_eq!(s["lastUpgrade"]["result"], result, "{point}: {s}");
    }
    // The torn arm: GRUB reads the primary, so the trial boots; the next
    // write of the environment makes both copies agree.
    bed.dev.set_env("a", "");
    let o = bed.upgrade(&bed.reference("v2"), &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(bed.dev.status(&bed.bin)["slots"]["b"]["state"], "trial");
}

#[test]
fn sources_layout_https_bearer_and_a_multi_arch_index() {
    require_tool("openssl", "openssl");
    let bed = Bed::new();
    let dev = &bed.dev;

    // An OCI layout on disk (no registry).
    let lay = format!("oci-layout:{}:v2", bed.layout.dir.display());
    let o = dev.agent(&bed.bin, &["upgrade", &lay, "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["digest"], bed.v2.manifest.as_str());

    // HTTPS with the image's CA bundle; without the CA, refused by TLS.
    let pki = bed.tmp.path().join("pki");
    let (ca, cert, key) = make_pki(&pki);
    let tls = Registry::start_tls(&cert, &key);
    tls.push(&bed.layout, "v2", "test/os");
    let sig = up::sign_into(
        &bed.layout,
        &bed.v2.manifest,
        &up::payload(&format!("{}/test/os", tls.host), &bed.v2.manifest),
        &up::key(1).0,
    );
    tls.push(&bed.layout, &sig, "test/os");
    dev.set_env("a", "");
    let r = tls.image("test/os", "v2");
    let o = dev.agent(&bed.bin, &["upgrade", &r, "--json"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("UnknownIssuer"),
        "{}",
        text(&o)
    );
    dev.write("etc/ssl/certs/ca-certificates.crt", &fs::read(&ca).unwrap());
    let o = dev.agent(&bed.bin, &["upgrade", &r, "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));

    // A token service: the challenge's realm gets the credentials, the
    // registry the token.
    let anon = Registry::start();
    anon.push(&bed.layout, "v2", "test/os");
    let proxy = Proxy::start(
        &anon.host,
        Fault::BearerToken {
            creds: Some((USER.into(), PASS.into())),
        },
    );
    let sig = up::sign_into(
        &bed.layout,
        &bed.v2.manifest,
        &up::payload(&format!("{}/test/os", proxy.host), &bed.v2.manifest),
        &up::key(1).0,
    );
    anon.push(&bed.layout, &sig, "test/os");
    auth_file(dev, &proxy.host);
    dev.set_env("a", "");
    let r = format!("{}/test/os:v2", proxy.host);
    let o = dev.agent(
        &bed.bin,
        &["upgrade", &r, "--json", "--insecure-registry", &proxy.host],
        &[],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), proxy.log_text());
    assert!(proxy.log_text().contains("/token"), "{}", proxy.log_text());

    // A multi-arch index signed as a whole: the device picks its platform
    // and accepts the index's signature.
    let mut arm = bed.v2_spec.clone();
    arm.arch = common::other_arch().into();
    let arm = up::write(&bed.layout, "arm", &arm);
    let index = up::index(&bed.layout, "multi", &[&bed.v2, &arm]);
    bed.reg.push(&bed.layout, "multi", "test/multi");
    let sig = up::sign_into(
        &bed.layout,
        &index,
        &up::payload(&format!("{}/test/multi", bed.reg.host), &index),
        &up::key(1).0,
    );
    bed.reg.push(&bed.layout, &sig, "test/multi");
    auth_file(dev, &bed.reg.host);
    dev.set_env("a", "");
    let o = bed.upgrade(&bed.reg.image("test/multi", "multi"), &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result_of(&o)["digest"], bed.v2.manifest.as_str());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("signature: {index}")), "{out}");
    let _ = &bed.pem;
}

/// A CA and a server certificate for 127.0.0.1 (openssl): (ca, cert, key).
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=os-agent test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.crt"), dir.join("srv.crt"), dir.join("srv.key"))
}

#[test]
fn rollback_and_reset() {
    let bed = Bed::new();
    let dev = &bed.dev;
    // Nothing in slot b: refused.
    let o = dev.agent(&bed.bin, &["rollback"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("holds no root filesystem"));

    // v2 in b, committed; back to a by hand.
    assert!(bed.upgrade(&bed.reference("v2"), &[], &[]).status.success());
    dev.write("proc/cmdline", b"bi.slot=b\n");
    dev.write(
        "usr/lib/build-image/image.json",
        br#"{"flavor":"debian","version":"2.0.0"}"#,
    );
    assert!(dev.agent(&bed.bin, &["mark-good"], &[]).status.success());
    let o = dev.agent(&bed.bin, &["rollback"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("slot a (1.0.0) is now the default"));
    let (p, b) = dev.env();
    assert_eq!(
        (p.get("default_slot"), b.get("default_slot")),
        (Some("a"), Some("a"))
    );
    let s = dev.status(&bed.bin);
    assert_eq!(s["lastRollback"]["reason"], "os-agent rollback", "{s}");
    assert_eq!(
        s["badDigests"][0]["digest"],
        bed.v2.manifest.as_str(),
        "{s}"
    );

    // A trial given up: the default boots next, the trial is recorded.
    dev.set_env("a", "");
    dev.write("proc/cmdline", b"bi.slot=b bi.trial=1\n");
    let o = dev.agent(&bed.bin, &["rollback"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("is given up"));
    assert_eq!(dev.state()["slots"]["b"]["state"], "bad");

    // reset: only with persist in use; the marker os-init acts on.
    let o = dev.agent(&bed.bin, &["reset"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("persist is not in use"));
    dev.write("run/os/persist.status", b"state=ok\n");
    fs::create_dir_all(dev.file("run/os/persist")).unwrap();
    let o = dev.agent(&bed.bin, &["reset", "--keep-config"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(dev.file("run/os/persist/reset")).unwrap(),
        "keep-config\n"
    );
    let o = dev.agent(&bed.bin, &["reset"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(dev.file("run/os/persist/reset")).unwrap(),
        "all\n"
    );
    let _ = sha256_file;
}

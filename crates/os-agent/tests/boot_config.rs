//! `os-agent boot-config` on a Debian-like root: users, files, hostname,
//! k3s, SSH host keys, the boot counter; idempotency; refused configs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

const HASH: &str = "$6$Hy0p8S9cQz1$4bD1kQ7m3Yp3wqgkK0aQbQe7Hq1Yq6u9yqQd2G0y0lJ6c1cZ9kFzj1Xq0k7a8pYwq3b6fW2T1oVwZb8x5fJtS.";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1b2Y0aW1hZ2VidWlsZGVyZXhhbXBsZWtleTAw admin@laptop";

fn config() -> String {
    format!(
        r#"hostname: node1
users:
  - name: admin
    passwd: "{HASH}"
    ssh_authorized_keys: ["{KEY}"]
    groups: [sudo, adm]
    shell: /bin/bash
  - name: ops
write_files:
  - path: /etc/motd
    content: "aGVsbG8gZnJvbSBiNjQK"
    encoding: b64
  - path: /etc/app/secret.conf
    content: "token=abc\n"
    permissions: "0640"
    owner: "admin:adm"
k3s:
  enabled: true
  role: server
  token: "cluster-secret"
  args: ["--disable=traefik", "--disable=servicelb", "--cluster-init"]
  config:
    write-kubeconfig-mode: "0644"
    node-label: ["zone=a"]
install: {{device: auto, reboot: true}}
"#
    )
}

fn run_ok(root: &Path) -> String {
    let o = agent(&["boot-config", "--root", root.to_str().unwrap()]);
    assert!(o.status.success(), "boot-config failed: {}", stderr(&o));
    stdout(&o)
}

/// Runs `boot-config` expecting it to refuse the configuration with a
/// message that holds `want`; returns stderr.
#[track_caller]
fn run_refused(root: &Path, want: &str) -> String {
    let o = agent(&["boot-config", "--root", root.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "boot-config accepted it: {err}");
    assert!(err.contains(want), "no {want:?} in: {err}");
    err
}

#[test]
fn applies_a_full_config_to_a_debian_root() {
    let dir = debian_root("a");
    let r = dir.path();
    write(r, "/etc/os-agent/config.yaml", &config());
    let expect_id = first_free_id(&read(r, "/etc/passwd"), &read(r, "/etc/group"));
    let out = run_ok(r);
    assert!(out.contains("boot_count=1"), "{out}");

    // Hostname.
    assert_eq!(read(r, "/etc/hostname"), "node1\n");
    assert!(read(r, "/etc/hosts")
        .lines()
        .any(|l| l == "127.0.1.1\tnode1"));

    // Users: the next free id, a private group, the hash, groups appended.
    let passwd = read(r, "/etc/passwd");
    let admin = entry(&passwd, "admin").expect("admin in /etc/passwd");
    let uid = expect_id.to_string();
    assert_eq!(
        admin,
        ["admin", "x", &uid, &uid, "", "/home/admin", "/bin/bash"]
    );
    let ops = entry(&passwd, "ops").expect("ops in /etc/passwd");
    assert_eq!(ops[6], "/bin/sh");
    assert!(ops[2].parse::<u32>().unwrap() > expect_id);
    let shadow = read(r, "/etc/shadow");
    assert_eq!(entry(&shadow, "admin").unwrap()[1], HASH);
    assert_eq!(
        entry(&shadow, "ops").unwrap()[1],
        "*",
        "no default password"
    );
    assert_eq!(entry(&shadow, "admin").unwrap().len(), 9);
    let group = read(r, "/etc/group");
    assert_eq!(entry(&group, "admin").unwrap(), ["admin", "x", &uid, ""]);
    for g in ["sudo", "adm"] {
        let members = &entry(&group, g).unwrap()[3];
        assert!(members.split(',').any(|m| m == "admin"), "{g}: {members}");
        let gs = entry(&read(r, "/etc/gshadow"), g).unwrap();
        assert!(
            gs[3].split(',').any(|m| m == "admin"),
            "gshadow {g}: {gs:?}"
        );
    }
    // The databases keep their modes and owners (shadow stays 0640).
    let host = fs::metadata("/etc/shadow").unwrap();
    let ours = fs::metadata(r.join("etc/shadow")).unwrap();
    assert_eq!(
        (ours.mode() & 0o7777, ours.gid()),
        (host.mode() & 0o7777, host.gid())
    );
    // shadow's own checkers agree the databases are consistent (pwck also
    // lists homes and shells missing from this bare tree: only those).
    let o = Command::new("/usr/sbin/grpck")
        .args(["-r", "-R"])
        .arg(r)
        .output()
        .unwrap();
    assert!(o.status.success(), "grpck: {}{}", stdout(&o), stderr(&o));
    let o = Command::new("/usr/sbin/pwck")
        .args(["-r", "-R"])
        .arg(r)
        .output()
        .unwrap();
    let complaints: Vec<String> = (stdout(&o) + &stderr(&o))
        .lines()
        .filter(|l| !l.ends_with("does not exist") && *l != "pwck: no changes")
        .map(str::to_string)
        .collect();
    assert!(complaints.is_empty(), "pwck: {complaints:?}");

    // Home and keys.
    let home = fs::metadata(r.join("home/admin")).unwrap();
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o700, expect_id, expect_id)
    );
    let ssh = fs::metadata(r.join("home/admin/.ssh")).unwrap();
    assert_eq!((ssh.mode() & 0o7777, ssh.uid()), (0o700, expect_id));
    let ak = r.join("home/admin/.ssh/authorized_keys");
    let m = fs::metadata(&ak).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o600, expect_id, expect_id)
    );
    assert_eq!(fs::read_to_string(&ak).unwrap(), format!("{KEY}\n"));
    assert!(r.join("home/ops").is_dir());
    assert!(!r.join("home/ops/.ssh").exists());

    // Files.
    assert_eq!(read(r, "/etc/motd"), "hello from b64\n");
    let m = fs::metadata(r.join("etc/motd")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o644, 0, 0));
    let m = fs::metadata(r.join("etc/app/secret.conf")).unwrap();
    let adm: u32 = entry(&group, "adm").unwrap()[2].parse().unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o640, expect_id, adm)
    );

    // k3s: config file (read back as YAML) and the role marker.
    let k3s = r.join("etc/rancher/k3s/config.yaml");
    assert_eq!(fs::metadata(&k3s).unwrap().mode() & 0o7777, 0o600);
    let v: serde_json::Value = serde_saphyr::from_str(&fs::read_to_string(&k3s).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "cluster-init": true,
            "disable": ["traefik", "servicelb"],
            "node-label": ["zone=a"],
            "token": "cluster-secret",
            "write-kubeconfig-mode": "0644"
        })
    );
    assert!(r.join("run/os-agent/k3s-server").is_file());
    assert_eq!(
        fs::metadata(r.join("run/os-agent/k3s-server"))
            .unwrap()
            .len(),
        0
    );
    assert!(!r.join("run/os-agent/k3s-agent").exists());

    // Boot counter.
    let st: serde_json::Value =
        serde_json::from_str(&read(r, "/var/lib/os-agent/state.json")).unwrap();
    assert_eq!(st["apiVersion"], "os-agent/v1alpha1");
    assert_eq!(st["bootCount"], 1);
    assert_eq!(st["lastSlot"], "a");
    assert_eq!(st["lastVersion"], "1.2.3");
}

#[test]
fn applying_twice_changes_nothing_but_the_boot_counter() {
    let dir = debian_root("a");
    let r = dir.path();
    write(r, "/etc/os-agent/config.yaml", &config());
    run_ok(r);
    let mut first = snapshot(r);
    let out = run_ok(r);
    assert!(out.contains("boot_count=2"), "{out}");
    let mut second = snapshot(r);
    let state = Path::new("var/lib/os-agent/state.json");
    let (a, b) = (first.remove(state).unwrap(), second.remove(state).unwrap());
    assert_ne!(a.0, b.0);
    assert_eq!(
        first, second,
        "a second run must leave every other file as it was"
    );
    assert_eq!(
        read(r, "/etc/group").matches("admin").count(),
        3,
        "{}",
        read(r, "/etc/group")
    );
}

#[test]
fn device_config_merges_over_the_image_config() {
    let dir = debian_root("b");
    let r = dir.path();
    write(r, "/etc/os-agent/config.yaml", &config());
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "hostname: edge-7\nk3s:\n  role: agent\n  server: https://10.0.0.1:6443\n  args: []\nwrite_files:\n  - path: /etc/motd\n    content: device wins\n",
    );
    run_ok(r);
    assert_eq!(read(r, "/etc/hostname"), "edge-7\n");
    assert_eq!(read(r, "/etc/motd"), "device wins");
    assert!(r.join("run/os-agent/k3s-agent").is_file());
    assert!(!r.join("run/os-agent/k3s-server").exists());
    let v: serde_json::Value =
        serde_saphyr::from_str(&read(r, "/etc/rancher/k3s/config.yaml")).unwrap();
    assert_eq!(v["server"], "https://10.0.0.1:6443");
    assert_eq!(v["token"], "cluster-secret");
    assert!(
        v.get("disable").is_none(),
        "device args replace image args: {v}"
    );
    assert_eq!(v["node-label"], serde_json::json!(["zone=a"]));

    // Disabling k3s on the device removes the marker.
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "k3s: {enabled: false}\n",
    );
    run_ok(r);
    assert!(!r.join("run/os-agent/k3s-agent").exists());
    assert!(!r.join("run/os-agent/k3s-server").exists());
}

#[test]
fn invalid_config_is_refused_and_nothing_is_applied() {
    let dir = debian_root("a");
    let r = dir.path();
    write(r, "/etc/os-agent/config.yaml", "hostname: node1\n");
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "hostname: node2\nusers:\n  - name: admin\n    password: \"x\"\n",
    );
    let passwd = read(r, "/etc/passwd");
    let err = run_refused(r, "unknown field `password`");
    let file = r.join("var/lib/os-agent/config.yaml");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("line 4 column 5"), "{err}");
    assert!(err.contains("unknown field `password`"), "{err}");
    assert!(!r.join("etc/hostname").exists());
    assert_eq!(read(r, "/etc/passwd"), passwd);

    // A group that does not exist is named with its field.
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "users:\n  - name: admin\n    groups: [wheel]\n",
    );
    run_refused(
        r,
        "users[0].groups[0] (user admin): group wheel does not exist",
    );

    // An agent without a server.
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "k3s:\n  role: agent\n  token: t\n",
    );
    run_refused(r, "k3s.server: required");
}

#[test]
fn existing_user_gets_hash_and_keys_but_keeps_its_ids() {
    let dir = debian_root("a");
    let r = dir.path();
    write(
        r,
        "/etc/os-agent/config.yaml",
        &format!("users:\n  - name: root\n    passwd: \"{HASH}\"\n    ssh_authorized_keys: [\"{KEY}\"]\n"),
    );
    let before = entry(&read(r, "/etc/passwd"), "root").unwrap();
    run_ok(r);
    assert_eq!(entry(&read(r, "/etc/passwd"), "root").unwrap(), before);
    assert_eq!(entry(&read(r, "/etc/shadow"), "root").unwrap()[1], HASH);
    let home = &before[5];
    assert_eq!(
        read(r, &format!("{home}/.ssh/authorized_keys")),
        format!("{KEY}\n")
    );
}

/// base-passwd's master files hold "*" in /etc/passwd itself; a hash in
/// /etc/shadow only counts once the passwd field says "x".
#[test]
fn a_hash_for_a_user_locked_in_passwd_itself_moves_the_lookup_to_shadow() {
    let dir = debian_root("a");
    let r = dir.path();
    let passwd = read(r, "/etc/passwd");
    let locked: String = passwd
        .lines()
        .map(|l| match l.strip_prefix("root:x:") {
            Some(rest) => format!("root:*:{rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(locked, passwd);
    write(r, "/etc/passwd", &locked);
    write(
        r,
        "/etc/os-agent/config.yaml",
        &format!("users:\n  - name: root\n    passwd: \"{HASH}\"\n"),
    );
    run_ok(r);
    let root = entry(&read(r, "/etc/passwd"), "root").unwrap();
    assert_eq!(root[1], "x");
    assert_eq!(root[2], "0");
    assert_eq!(entry(&read(r, "/etc/shadow"), "root").unwrap()[1], HASH);
}

#[test]
fn sudo_rules_go_to_sudoers_d_and_need_sudo_in_the_image() {
    let dir = debian_root("a");
    let r = dir.path();
    write(
        r,
        "/etc/os-agent/config.yaml",
        "users:\n  - name: ops\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n  - name: dev\n",
    );
    // Without sudo in the image: refused, naming the field.
    run_refused(
        r,
        "users[0].sudo (user ops): the image has no /usr/bin/sudo",
    );
    write(r, "/usr/bin/sudo", "");
    run_ok(r);
    let path = r.join("etc/sudoers.d/90-os-agent");
    let text = read(r, "/etc/sudoers.d/90-os-agent");
    let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules, ["ops ALL=(ALL) NOPASSWD:ALL"]);
    let m = fs::metadata(&path).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o440, 0, 0));

    // The rule gone from the config: the file goes too.
    write(r, "/etc/os-agent/config.yaml", "users:\n  - name: ops\n");
    run_ok(r);
    assert!(!path.exists());

    // A rule that is not one sudoers line is a config error.
    write(
        r,
        "/etc/os-agent/config.yaml",
        "users:\n  - name: ops\n    sudo: \"yes\"\n",
    );
    run_refused(r, "users[0].sudo (user ops)");
}

#[test]
fn generates_ssh_host_keys_once() {
    let dir = debian_root("a");
    let r = dir.path();
    let keygen = Path::new("/usr/bin/ssh-keygen");
    assert!(
        keygen.exists(),
        "this test needs ssh-keygen (package openssh-client)"
    );
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::copy(keygen, r.join("usr/bin/ssh-keygen")).unwrap();
    let out = run_ok(r);
    assert!(out.contains("ssh_host_keys=generated"), "{out}");
    let key = r.join("etc/ssh/ssh_host_ed25519_key");
    let pubkey = fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    assert!(pubkey.starts_with("ssh-ed25519 "), "{pubkey}");
    assert_eq!(
        fs::metadata(&key).unwrap().mode() & 0o077,
        0,
        "private key is private"
    );
    let out = run_ok(r);
    assert!(out.contains("ssh_host_keys=kept"), "{out}");
    assert_eq!(
        fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        pubkey
    );

    // The next boot's /etc is the image's again (here: a new image with
    // another sshd_config and no keys): the device's keys come back from
    // the persistent copy, private and root's, and the new config stays.
    let kept = r.join("var/lib/os-agent/ssh");
    assert_eq!(fs::metadata(&kept).unwrap().mode() & 0o777, 0o700);
    fs::remove_dir_all(r.join("etc/ssh")).unwrap();
    write(r, "/etc/ssh/sshd_config", "PasswordAuthentication no\n");
    let out = run_ok(r);
    assert!(out.contains("ssh_host_keys=kept"), "{out}");
    assert_eq!(
        fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        pubkey
    );
    let m = fs::metadata(&key).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));
    assert_eq!(
        read(r, "/etc/ssh/sshd_config"),
        "PasswordAuthentication no\n"
    );
    for t in ["rsa", "ecdsa"] {
        assert!(
            r.join(format!("etc/ssh/ssh_host_{t}_key")).exists(),
            "{t} key not restored"
        );
    }
}

/// Keys an image carries are shared by every device built from it: the
/// first boot replaces them with the device's own.
#[test]
fn host_keys_baked_into_an_image_are_replaced_on_first_boot() {
    let dir = debian_root("a");
    let r = dir.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::copy("/usr/bin/ssh-keygen", r.join("usr/bin/ssh-keygen")).unwrap();
    write(r, "/etc/ssh/ssh_host_ed25519_key", "baked into the image");
    write(
        r,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 BAKED image",
    );
    let out = run_ok(r);
    assert!(out.contains("ssh_host_keys=generated"), "{out}");
    let pubkey = read(r, "/etc/ssh/ssh_host_ed25519_key.pub");
    assert!(!pubkey.contains("BAKED"), "{pubkey}");
    assert_eq!(
        read(r, "/var/lib/os-agent/ssh/ssh_host_ed25519_key.pub"),
        pubkey
    );
}

/// sshd's password logins: off by a drop-in read before the image's own
/// settings (Debian's sshd allows them), on only when a configuration
/// file says `ssh: {password_authentication: true}`, and off again when
/// the configuration is refused.
#[test]
fn ssh_password_logins_are_off_unless_the_config_allows_them() {
    const DROP_IN: &str = "/etc/ssh/sshd_config.d/00-os-agent.conf";
    let dir = debian_root("a");
    let r = dir.path();

    // No sshd in the image: nothing to say.
    let out = run_ok(r);
    assert!(out.contains("ssh_passwords=none"), "{out}");
    assert!(!r.join(DROP_IN.trim_start_matches('/')).exists());

    write(r, "/usr/sbin/sshd", "");
    write(
        r,
        "/etc/ssh/sshd_config",
        "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n",
    );
    let out = run_ok(r);
    assert!(out.contains("ssh_passwords=off"), "{out}");
    let off = read(r, DROP_IN);
    let settings: Vec<&str> = off.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        settings,
        [
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no"
        ]
    );
    let m = fs::metadata(r.join(DROP_IN.trim_start_matches('/'))).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o644, 0));

    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "ssh:\n  password_authentication: true\n",
    );
    let out = run_ok(r);
    assert!(out.contains("ssh_passwords=on"), "{out}");
    assert!(read(r, DROP_IN).contains("\nPasswordAuthentication yes\n"));

    // A refused configuration leaves passwords off, whatever it asked.
    write(
        r,
        "/var/lib/os-agent/config.yaml",
        "ssh:\n  password_authentication: true\nhostnme: typo\n",
    );
    run_refused(r, "hostnme");
    assert_eq!(read(r, DROP_IN), off);

    // An sshd_config that does not read the drop-ins is pointed out.
    write(r, "/var/lib/os-agent/config.yaml", "");
    write(r, "/etc/ssh/sshd_config", "UsePAM yes\n");
    let o = agent(&["boot-config", "--root", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not include sshd_config.d"),
        "{}",
        stderr(&o)
    );
}

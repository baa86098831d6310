//! The node configuration (YAML, snake_case keys, cloud-config style):
//! its types, the rules a file must follow, and how several files merge.
//! See docs/config.md. One definition for both programs that read it:
//! `build-image --config` checks a file at build time with exactly the
//! rules `os-agent` applies on the device.
//!
//! Sources, in the order they apply (later wins, see [`merge`]):
//! 1. [`IMAGE_CONFIG`], baked into the image by `build-image --config`;
//! 2. [`ESP_CONFIG`] on the ESP, put there by `os-agent install --config`
//!    (read on an A/B boot only, not on the live system);
//! 3. [`DEVICE_CONFIG`], the device's own, on the persistent partition.
//!
//! A missing file (or a missing ESP) is skipped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub mod b64;

/// Why a configuration was refused: names the file (when there is one),
/// the line and column for a syntax or type error, and the field by its
/// path in the document (`users[0].passwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub type Result<T> = std::result::Result<T, ConfigError>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(ConfigError(format!($($arg)*)))
    };
}

/// The configuration baked into the image by `build-image --config`.
pub const IMAGE_CONFIG: &str = "/etc/os-agent/config.yaml";
/// The configuration `os-agent install --config` put on the ESP (path
/// relative to the ESP's root).
pub const ESP_CONFIG: &str = "build-image/config.yaml";
/// The device's own configuration, on the persistent partition.
pub const DEVICE_CONFIG: &str = "/var/lib/os-agent/config.yaml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hostname: Option<String>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    pub k3s: Option<K3s>,
    pub install: Option<Install>,
    pub ssh: Option<Ssh>,
    pub upgrade: Option<Upgrade>,
}

/// `upgrade:`, what `os-agent upgrade` trusts:
///
/// ```yaml
/// upgrade:
///   public_keys:
///     - |
///       -----BEGIN PUBLIC KEY-----
///       MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE...
///       -----END PUBLIC KEY-----
/// ```
///
/// P-256 public keys (SPKI PEM, as `build-image keygen` and `cosign
/// generate-key-pair` write them) whose cosign signatures an upgrade must
/// carry, besides the keys baked into the image (`build-image
/// --upgrade-key`). The lists of all files are joined.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    #[serde(default)]
    pub public_keys: Vec<String>,
}

/// The PEM label of an upgrade public key.
pub const PUBLIC_KEY_PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
pub const PUBLIC_KEY_PEM_END: &str = "-----END PUBLIC KEY-----";

/// Whether `text` has the shape of one SPKI PEM public key (the key
/// itself is parsed by whoever uses it).
pub fn looks_like_public_key_pem(text: &str) -> bool {
    let t = text.trim();
    t.starts_with(PUBLIC_KEY_PEM_BEGIN)
        && t.ends_with(PUBLIC_KEY_PEM_END)
        && t.matches(PUBLIC_KEY_PEM_BEGIN).count() == 1
        && t[PUBLIC_KEY_PEM_BEGIN.len()..t.len() - PUBLIC_KEY_PEM_END.len()]
            .split_whitespace()
            .all(|l| {
                l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            })
}

/// `ssh:`, the SSH server's policy:
///
/// ```yaml
/// ssh:
///   password_authentication: true   # default false: keys only
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Let sshd accept passwords; off unless true.
    pub password_authentication: Option<bool>,
}

impl Config {
    /// Whether sshd may accept passwords: only when a file says so.
    pub fn ssh_passwords_allowed(&self) -> bool {
        self.ssh
            .as_ref()
            .and_then(|s| s.password_authentication)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash (`$6$...`, `$y$...`); never a plain password.
    pub passwd: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: Option<String>,
    /// A sudoers rule for the user (`ALL=(ALL) NOPASSWD:ALL`), written to
    /// [`SUDOERS`].
    pub sudo: Option<String>,
}

/// Where the users' `sudo` rules go (0440, root's; /etc is the image's
/// again at every boot, so it always holds the current rules).
pub const SUDOERS: &str = "/etc/sudoers.d/90-os-agent";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Plain,
    #[serde(alias = "base64")]
    B64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    pub path: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
    /// Octal mode as a string, e.g. "0644".
    pub permissions: Option<String>,
    /// `user:group` (names or numbers).
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    pub enabled: Option<bool>,
    pub role: Option<Role>,
    pub token: Option<String>,
    pub server: Option<String>,
    pub args: Option<Vec<String>>,
    pub config: Option<BTreeMap<String, serde_json::Value>>,
}

impl K3s {
    /// k3s runs when the section is present and `enabled` is not false.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The role, `server` unless given.
    pub fn role(&self) -> Role {
        self.role.unwrap_or(Role::Server)
    }
}

/// `install:`, read by `os-agent install` on the live system (the
/// `os-agent-install.service` runs `os-agent install --unattended` there):
///
/// ```yaml
/// install:
///   device: auto        # or /dev/sda, /dev/nvme0n1, ...
///   reboot: true        # reboot after a successful install (default false)
///   overwrite: false    # also over a disk holding an installed system's
///                       # data on persist (default false: refused)
/// ```
///
/// `auto` picks the one fixed disk that is large enough, not in use, not
/// the live medium and (unless `overwrite`) not holding an installed
/// system's data, and fails when there is none or more than one. Unknown
/// fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// Target disk (`/dev/...`) or `auto`.
    pub device: Option<String>,
    /// Reboot after a successful install; false unless given.
    pub reboot: Option<bool>,
    /// Install over a disk whose `persist` holds an installed system's
    /// data (lost then); false unless given. Without it an unattended
    /// install that the firmware starts again after installing refuses.
    pub overwrite: Option<bool>,
}

/// Parses one configuration file's text; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config> {
    let cfg: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_saphyr::from_str::<Option<Config>>(text)
            .map_err(|e| ConfigError(format!("{}: {}", file.display(), one_line(&e.to_string()))))?
            .unwrap_or_default()
    };
    validate(&cfg).map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;
    Ok(cfg)
}

/// serde-saphyr's message without its source snippet (which names the
/// input `<input>` and could echo secrets): `line L column C: what`.
fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

fn is_crypt_hash(h: &str) -> bool {
    // $id$[params$]salt$hash — at least three '$'-separated fields after
    // the leading '$', nothing that would break /etc/shadow.
    h.starts_with('$')
        && h.split('$').filter(|p| !p.is_empty()).count() >= 3
        && h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'\\')
}

pub fn valid_user_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().enumerate().all(|(i, &c)| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == b'_'
                || c == b'-'
                || (c == b'$' && i == b.len() - 1)
        })
}

pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Parses an octal mode string such as "0644" or "600".
pub fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// Checks what the types cannot: formats of names, hashes, paths, modes.
/// Errors name the field by its path in the document (`users[0].passwd`).
fn validate(cfg: &Config) -> std::result::Result<(), String> {
    if let Some(h) = &cfg.hostname {
        if !valid_hostname(h) {
            return Err(format!(
                "hostname: {h:?} is not a valid host name (letters, digits, '-' and '.', labels of 1-63 characters, at most 64 in all)"
            ));
        }
    }
    for (i, u) in cfg.users.iter().enumerate() {
        if !valid_user_name(&u.name) {
            return Err(format!(
                "users[{i}].name: {:?} is not a valid user name (lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32)",
                u.name
            ));
        }
        if let Some(p) = &u.passwd {
            if !is_crypt_hash(p) {
                return Err(format!(
                    "users[{i}].passwd (user {}): expected a crypt(3) hash such as \"$6$salt$hash\" (make one with `mkpasswd -m sha-512`), not a plain-text password",
                    u.name
                ));
            }
        }
        for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
            if key.trim().is_empty() || key.contains('\n') || key.contains('\r') {
                return Err(format!(
                    "users[{i}].ssh_authorized_keys[{k}] (user {}): expected one key on one line",
                    u.name
                ));
            }
        }
        for (g, group) in u.groups.iter().enumerate() {
            if !valid_user_name(group) {
                return Err(format!(
                    "users[{i}].groups[{g}] (user {}): {group:?} is not a valid group name",
                    u.name
                ));
            }
        }
        if let Some(s) = &u.shell {
            if !s.starts_with('/') || s.contains(':') || s.contains('\n') {
                return Err(format!(
                    "users[{i}].shell (user {}): {s:?} is not an absolute path",
                    u.name
                ));
            }
        }
        if let Some(rule) = &u.sudo {
            if rule.trim().is_empty() || rule.contains(['\n', '\r']) || !rule.contains('=') {
                return Err(format!(
                    "users[{i}].sudo (user {}): {rule:?} is not a sudoers rule on one line, such as \"ALL=(ALL) NOPASSWD:ALL\"",
                    u.name
                ));
            }
        }
        if cfg.users[..i].iter().any(|o| o.name == u.name) {
            return Err(format!("users[{i}].name: user {} is listed twice", u.name));
        }
    }
    for (i, f) in cfg.write_files.iter().enumerate() {
        check_abs_path(&f.path)
            .map_err(|why| format!("write_files[{i}].path: {:?} {why}", f.path))?;
        if let Some(p) = &f.permissions {
            if parse_mode(p).is_none() {
                return Err(format!(
                    "write_files[{i}].permissions ({}): {p:?} is not an octal mode such as \"0644\"",
                    f.path
                ));
            }
        }
        if let Some(o) = &f.owner {
            let ok = o
                .split_once(':')
                .map(|(u, g)| !u.is_empty() && !g.is_empty())
                .unwrap_or(!o.is_empty());
            if !ok {
                return Err(format!(
                    "write_files[{i}].owner ({}): {o:?} is not \"user:group\" or \"user\"",
                    f.path
                ));
            }
        }
        if f.encoding == Encoding::B64 {
            b64::decode(&f.content).map_err(|e| {
                format!(
                    "write_files[{i}].content ({}): not valid base64: {e}",
                    f.path
                )
            })?;
        }
    }
    if let Some(u) = &cfg.upgrade {
        for (i, k) in u.public_keys.iter().enumerate() {
            if !looks_like_public_key_pem(k) {
                return Err(format!(
                    "upgrade.public_keys[{i}]: expected one PEM public key \
                     (\"{PUBLIC_KEY_PEM_BEGIN}\" ... \"{PUBLIC_KEY_PEM_END}\"), \
                     as `build-image keygen` writes it"
                ));
            }
        }
    }
    if let Some(k) = &cfg.k3s {
        if let Some(s) = &k.server {
            if !(s.starts_with("https://") || s.starts_with("http://")) {
                return Err(format!(
                    "k3s.server: {s:?} is not a URL such as \"https://10.0.0.1:6443\""
                ));
            }
        }
        if let Some(args) = &k.args {
            args_to_config(args).map_err(|e| format!("k3s.{e}"))?;
        }
    }
    Ok(())
}

/// Checks what only the merged configuration can tell (an agent needs a
/// server and a token, whichever file gave them).
pub fn validate_merged(cfg: &Config) -> Result<()> {
    if let Some(k) = &cfg.k3s {
        if k.is_enabled() && k.role() == Role::Agent {
            let from_map = |key: &str| k.config.as_ref().is_some_and(|m| m.contains_key(key));
            if k.server.is_none() && !from_map("server") {
                bail!("k3s.server: required when k3s.role is agent (the server's URL, e.g. \"https://10.0.0.1:6443\")");
            }
            if k.token.is_none() && !from_map("token") {
                bail!("k3s.token: required when k3s.role is agent (the cluster's join token)");
            }
        }
    }
    Ok(())
}

/// Merges `over` (a later file) onto `base`. The rule, documented in
/// docs/config.md:
/// - `hostname`: the later file's value wins when it sets one;
/// - `users`: by name; a later entry for the same name replaces the whole
///   earlier entry, new names are appended in order;
/// - `write_files`: concatenated, applied in order (the later file's entry
///   for a path is written last and wins);
/// - `upgrade.public_keys`: joined (every file's keys are trusted);
/// - `k3s`, `install`, `ssh`: field by field, the later file's fields win;
///   within `k3s.config` key by key; `k3s.args` as a whole list.
pub fn merge(base: Config, over: Config) -> Config {
    let mut out = base;
    if over.hostname.is_some() {
        out.hostname = over.hostname;
    }
    for u in over.users {
        match out.users.iter_mut().find(|o| o.name == u.name) {
            Some(slot) => *slot = u,
            None => out.users.push(u),
        }
    }
    out.write_files.extend(over.write_files);
    out.k3s = match (out.k3s, over.k3s) {
        (None, o) => o,
        (b, None) => b,
        (Some(b), Some(o)) => Some(K3s {
            enabled: o.enabled.or(b.enabled),
            role: o.role.or(b.role),
            token: o.token.or(b.token),
            server: o.server.or(b.server),
            args: o.args.or(b.args),
            config: match (b.config, o.config) {
                (None, c) | (c, None) => c,
                (Some(mut bc), Some(oc)) => {
                    bc.extend(oc);
                    Some(bc)
                }
            },
        }),
    };
    out.install = match (out.install, over.install) {
        (None, o) => o,
        (b, None) => b,
        (Some(b), Some(o)) => Some(Install {
            device: o.device.or(b.device),
            reboot: o.reboot.or(b.reboot),
            overwrite: o.overwrite.or(b.overwrite),
        }),
    };
    out.ssh = match (out.ssh, over.ssh) {
        (None, o) => o,
        (b, None) => b,
        (Some(b), Some(o)) => Some(Ssh {
            password_authentication: o.password_authentication.or(b.password_authentication),
        }),
    };
    out.upgrade = match (out.upgrade, over.upgrade) {
        (None, o) => o,
        (b, None) => b,
        (Some(mut b), Some(o)) => {
            for k in o.public_keys {
                if !b.public_keys.contains(&k) {
                    b.public_keys.push(k);
                }
            }
            Some(b)
        }
    };
    out
}

/// Turns `--name=value` / `--name` flags into k3s config keys: `name:
/// value` (a bare flag is `true`); a flag given more than once becomes a
/// list. Errors name `args[i]`.
pub fn args_to_config(
    args: &[String],
) -> std::result::Result<BTreeMap<String, serde_json::Value>, String> {
    let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (i, a) in args.iter().enumerate() {
        let Some(flag) = a.strip_prefix("--") else {
            return Err(format!(
                "args[{i}]: {a:?} is not a flag; write flags as \"--name=value\" or \"--name\""
            ));
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, serde_json::Value::String(v.to_string())),
            None => (flag, serde_json::Value::Bool(true)),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("args[{i}]: {a:?} has no valid flag name"));
        }
        match out.get_mut(name) {
            None => {
                out.insert(name.to_string(), value);
            }
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(prev) => {
                let first = prev.take();
                *prev = serde_json::Value::Array(vec![first, value]);
            }
        }
    }
    Ok(out)
}

/// Checks that `path` is absolute, has no `..` and no `.` components and
/// names a file (not `/`).
pub fn check_abs_path(path: &str) -> std::result::Result<(), &'static str> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("must be an absolute path");
    }
    if path.ends_with('/') {
        return Err("must name a file, not end with '/'");
    }
    // Path::components() drops "." silently: look at the text.
    if path[1..]
        .split('/')
        .any(|c| c == "." || c == ".." || c.is_empty())
    {
        return Err("must not contain '.', '..' or empty components");
    }
    if path.contains('\0') {
        return Err("must not contain NUL");
    }
    if p.parent().is_none() {
        return Err("must name a file below /");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config> {
        parse(text, Path::new("/etc/os-agent/config.yaml"))
    }

    const FULL: &str = r#"
hostname: node1
users:
  - name: admin
    passwd: "$6$saltsalt$hashhashhash"
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3Nza admin@laptop"]
    groups: [sudo]
    shell: /bin/bash
write_files:
  - path: /etc/motd
    content: "aGVsbG8K"
    encoding: b64
    permissions: "0644"
    owner: "root:root"
k3s:
  enabled: true
  role: agent
  token: "secret"
  server: "https://10.0.0.1:6443"
  args: ["--disable=traefik"]
  config:
    node-label: ["zone=a"]
install: {device: auto, reboot: true}
"#;

    #[test]
    fn absolute_paths() {
        assert!(check_abs_path("/etc/motd").is_ok());
        assert!(check_abs_path("etc/motd").is_err());
        assert!(check_abs_path("/etc/../shadow").is_err());
        assert!(check_abs_path("/etc/./x").is_err());
        assert!(check_abs_path("/").is_err());
        assert!(check_abs_path("/etc/").is_err());
    }

    #[test]
    fn parses_full_example() {
        let c = p(FULL).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node1"));
        assert_eq!(c.users[0].groups, vec!["sudo"]);
        assert_eq!(c.write_files[0].encoding, Encoding::B64);
        let k = c.k3s.as_ref().unwrap();
        assert_eq!(k.role(), Role::Agent);
        assert_eq!(
            k.config.as_ref().unwrap()["node-label"],
            serde_json::json!(["zone=a"])
        );
        assert_eq!(c.install.as_ref().unwrap().reboot, Some(true));
        validate_merged(&c).unwrap();
    }

    #[test]
    fn empty_documents_are_empty_configs() {
        assert_eq!(p("").unwrap(), Config::default());
        assert_eq!(p("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = p("hostname: x\nusers:\n  - name: a\n    pasword: \"$6$a$b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/os-agent/config.yaml: "), "{e}");
        assert!(e.contains("pasword"), "{e}");
        assert!(e.contains("line 4 column 5"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn plain_password_is_refused() {
        let e = p("users:\n  - name: a\n    passwd: hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("users[0].passwd"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the error must not echo the password: {e}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        for (doc, field) in [
            ("hostname: -bad\n", "hostname"),
            ("users:\n  - name: Root\n", "users[0].name"),
            ("write_files:\n  - path: etc/x\n", "write_files[0].path"),
            (
                "write_files:\n  - path: /x\n    permissions: \"999\"\n",
                "write_files[0].permissions",
            ),
            (
                "write_files:\n  - path: /x\n    encoding: b64\n    content: \"@@\"\n",
                "write_files[0].content",
            ),
            ("k3s:\n  server: 10.0.0.1\n", "k3s.server"),
            ("k3s:\n  args: [\"disable\"]\n", "k3s.args[0]"),
        ] {
            let e = p(doc).unwrap_err().to_string();
            assert!(e.contains(field), "{doc:?}: {e}");
        }
        let e = p("k3s:\n  role: worker\n").unwrap_err().to_string();
        assert!(e.contains("worker") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn agent_needs_server_and_token() {
        let c = p("k3s:\n  role: agent\n  token: t\n").unwrap();
        assert!(validate_merged(&c)
            .unwrap_err()
            .to_string()
            .contains("k3s.server"));
        let c = p("k3s:\n  role: agent\n  server: https://s:6443\n").unwrap();
        assert!(validate_merged(&c)
            .unwrap_err()
            .to_string()
            .contains("k3s.token"));
    }

    #[test]
    fn ssh_passwords_are_off_unless_a_file_allows_them() {
        assert!(!Config::default().ssh_passwords_allowed());
        assert!(!p("ssh: {}\n").unwrap().ssh_passwords_allowed());
        assert!(!p("ssh: {password_authentication: false}\n")
            .unwrap()
            .ssh_passwords_allowed());
        let on = p("ssh:\n  password_authentication: true\n").unwrap();
        assert!(on.ssh_passwords_allowed());
        // Field by field: a later file without the field keeps the value,
        // a later file with it decides.
        let m = merge(on.clone(), p("ssh: {}\n").unwrap());
        assert!(m.ssh_passwords_allowed());
        let m = merge(on, p("ssh: {password_authentication: false}\n").unwrap());
        assert!(!m.ssh_passwords_allowed());
        for doc in [
            "ssh: {password_authentication: yes please}\n",
            "ssh: {PasswordAuthentication: true}\n",
            "ssh: {passwords: true}\n",
        ] {
            let e = p_err(doc);
            assert!(e.contains("line 1"), "{doc:?}: {e}");
        }
        assert!(p_err("ssh: {passwords: true}\n").contains("passwords"));
    }

    fn p_err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn merge_rule() {
        let image = p(FULL).unwrap();
        let device = p(r#"
hostname: node2
users:
  - name: admin
    ssh_authorized_keys: ["ssh-ed25519 BBBB other"]
  - name: ops
write_files:
  - path: /etc/motd
    content: "device"
k3s:
  token: "t2"
  config:
    node-name: n2
install: {reboot: false}
"#)
        .unwrap();
        let m = merge(image, device);
        assert_eq!(m.hostname.as_deref(), Some("node2"));
        assert_eq!(m.users.len(), 2);
        assert_eq!(
            m.users[0].passwd, None,
            "a later user entry replaces the whole entry"
        );
        assert_eq!(m.users[1].name, "ops");
        assert_eq!(m.write_files.len(), 2);
        assert_eq!(m.write_files[1].content, "device");
        let k = m.k3s.unwrap();
        assert_eq!(k.token.as_deref(), Some("t2"));
        assert_eq!(k.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(k.role(), Role::Agent);
        let cfg = k.config.unwrap();
        assert!(cfg.contains_key("node-label") && cfg.contains_key("node-name"));
        let i = m.install.unwrap();
        assert_eq!((i.device.as_deref(), i.reboot), (Some("auto"), Some(false)));
    }

    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEl8G1Qnq4cVXkU7gqMAtyuJSXlDo0
Zb3c1jWq2yPbkzS2vAXp8m1QjZ5BNu1eVaZ0E7vqkQmCQmSjTz3vAqjTqQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn upgrade_keys_are_checked_and_joined() {
        let one = format!("upgrade:\n  public_keys:\n    - |\n{}", indent(KEY));
        let c = p(&one).unwrap();
        assert_eq!(
            c.upgrade.as_ref().unwrap().public_keys,
            vec![KEY.to_string()]
        );
        let other = KEY.replace("Zb3c", "Zb3d");
        let two = p(&format!(
            "upgrade:\n  public_keys:\n    - |\n{}    - |\n{}",
            indent(&other),
            indent(KEY)
        ))
        .unwrap();
        let m = merge(c, two);
        assert_eq!(m.upgrade.unwrap().public_keys, vec![KEY.to_string(), other]);
        for bad in [
            "upgrade: {public_keys: [\"ssh-ed25519 AAAA\"]}\n",
            "upgrade: {public_keys: [\"-----BEGIN PUBLIC KEY-----\\nno*base64\\n-----END PUBLIC KEY-----\"]}\n",
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("upgrade.public_keys[0]: expected one PEM public key"), "{e}");
        }
        let e = p("upgrade: {keys: []}\n").unwrap_err().to_string();
        assert!(e.contains("keys"), "{e}");
    }

    fn indent(t: &str) -> String {
        t.lines().map(|l| format!("      {l}\n")).collect()
    }
}

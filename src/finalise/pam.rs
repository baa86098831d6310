//! What `pam-auth-update` (libpam-runtime's postinst) writes:
//! `/etc/pam.d/common-{auth,account,password,session,session-noninteractive}`
//! from the templates in `/usr/share/pam` and the profiles in
//! `/usr/share/pam-configs` that say `Default: yes`.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::tree::edit::Editor;

/// One `/usr/share/pam-configs` profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    pub default: bool,
    pub priority: i64,
    pub interactive_only: bool,
    /// `Auth-Type` etc. (lowercase type) → `Primary`/`Additional`.
    pub kinds: BTreeMap<String, String>,
    /// `auth` / `auth-initial` → lines.
    pub lines: BTreeMap<String, Vec<String>>,
}

pub fn parse_profile(name: &str, text: &str) -> Profile {
    let mut p = Profile {
        name: name.to_string(),
        ..Default::default()
    };
    let mut field: Option<String> = None;
    for raw in text.lines() {
        if raw.starts_with(char::is_whitespace) {
            if let Some(f) = &field {
                let l = raw.trim();
                if !l.is_empty() {
                    p.lines.entry(f.clone()).or_default().push(l.to_string());
                }
            }
            continue;
        }
        let Some((k, v)) = raw.split_once(':') else {
            field = None;
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim();
        match k.as_str() {
            "default" => p.default = v.eq_ignore_ascii_case("yes"),
            "priority" => p.priority = v.parse().unwrap_or(0),
            "session-interactive-only" => p.interactive_only = v.eq_ignore_ascii_case("yes"),
            _ if k.ends_with("-type") => {
                p.kinds
                    .insert(k.trim_end_matches("-type").to_string(), v.to_string());
            }
            _ => {
                if !v.is_empty() {
                    p.lines.entry(k.clone()).or_default().push(v.to_string());
                }
                field = Some(k);
                continue;
            }
        }
        field = None;
    }
    p
}

/// The primary and additional blocks of one type, as pam-auth-update
/// renders them: the first module of a block uses its `-Initial` lines,
/// `success=end` jumps past the rest of the primary block and the
/// fallback `pam_deny` line, and an empty primary block is a
/// `[default=1] pam_permit.so` line that jumps past that fallback (without
/// it every stack of that type ends in `pam_deny`: no session opens).
pub fn blocks(profiles: &[Profile], ty: &str) -> (String, String) {
    let kind_of = if ty == "session-noninteractive" {
        "session"
    } else {
        ty
    };
    let mut out = Vec::new();
    for want in ["Primary", "Additional"] {
        let members: Vec<&Profile> = profiles
            .iter()
            .filter(|p| !(ty == "session-noninteractive" && p.interactive_only))
            .filter(|p| p.kinds.get(kind_of).map(String::as_str) == Some(want))
            .collect();
        let mut lines: Vec<String> = Vec::new();
        for (i, p) in members.iter().enumerate() {
            let variant = |suffix: &str| p.lines.get(&format!("{kind_of}-{suffix}"));
            let body = match (variant("initial"), variant("final")) {
                (Some(first), _) if i == 0 => first,
                (_, Some(last)) if i + 1 == members.len() => last,
                _ => match p.lines.get(kind_of) {
                    Some(l) => l,
                    None => continue,
                },
            };
            lines.extend(body.iter().cloned());
        }
        let n = lines.len();
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l = if want == "Primary" {
                    l.replace("=end", &format!("={}", n - i))
                } else {
                    l.clone()
                };
                format!("{kind_of}\t{l}\n")
            })
            .collect();
        out.push(text);
    }
    let additional = out.pop().unwrap_or_default();
    let mut primary = out.pop().unwrap_or_default();
    if primary.is_empty() {
        primary = format!("{kind_of}\t[default=1]\t\t\tpam_permit.so\n");
    }
    (primary, additional)
}

/// The `/etc/pam.d/common-*` stacks pam-auth-update writes.
pub const TYPES: [&str; 5] = [
    "auth",
    "account",
    "password",
    "session",
    "session-noninteractive",
];

/// Writes the common-* files; the number written.
pub fn write_common(ed: &mut Editor<'_>) -> Result<usize> {
    let mut profiles = Vec::new();
    for name in ed.list("usr/share/pam-configs") {
        if let Some(t) = ed.read_string(&format!("usr/share/pam-configs/{name}"))? {
            let p = parse_profile(&name, &t);
            if p.default {
                profiles.push(p);
            }
        }
    }
    profiles.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut n = 0;
    for ty in TYPES {
        let dst = format!("etc/pam.d/common-{ty}");
        if ed.exists(&dst) {
            continue;
        }
        let Some(template) = ed.read_string(&format!("usr/share/pam/common-{ty}"))? else {
            continue;
        };
        let (primary, additional) = blocks(&profiles, ty);
        // The templates' placeholders: $auth_primary … $session_nonint_primary.
        let var = if ty == "session-noninteractive" {
            "session_nonint".to_string()
        } else {
            ty.to_string()
        };
        let text = template
            .replace(&format!("${var}_primary\n"), &primary)
            .replace(&format!("${var}_additional\n"), &additional);
        ed.write(&dst, text.as_bytes(), 0o644)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{ContentStore, FsTree};

    const UNIX: &str = "Name: Unix authentication\nDefault: yes\nPriority: 256\nAuth-Type: Primary\nAuth:\n\t[success=end default=ignore]\tpam_unix.so nullok try_first_pass\nAuth-Initial:\n\t[success=end default=ignore]\tpam_unix.so nullok\nSession-Type: Additional\nSession:\n\trequired\tpam_unix.so\n";
    const SYSTEMD: &str = "Name: Register user sessions in the systemd control group hierarchy\nDefault: yes\nPriority: 0\nSession-Interactive-Only: yes\nSession-Type: Additional\nSession:\n\toptional\t\t\tpam_systemd.so\n";

    #[test]
    fn renders_like_pam_auth_update() {
        let profiles = vec![
            parse_profile("unix", UNIX),
            parse_profile("systemd", SYSTEMD),
        ];
        let (p, a) = blocks(&profiles, "auth");
        assert_eq!(p, "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n");
        assert_eq!(a, "");
        let (p, a) = blocks(&profiles, "session");
        assert_eq!(p, "session\t[default=1]\t\t\tpam_permit.so\n");
        assert_eq!(
            a,
            "session\trequired\tpam_unix.so\nsession\toptional\t\t\tpam_systemd.so\n"
        );
        let (_, a) = blocks(&profiles, "session-noninteractive");
        assert_eq!(a, "session\trequired\tpam_unix.so\n");
    }

    /// The host's /etc/pam.d/common-* as its pam-auth-update wrote them
    /// from its /usr/share/pam templates and /usr/share/pam-configs
    /// profiles: rendering the same inputs gives the same stacks.
    #[test]
    fn renders_what_the_hosts_pam_auth_update_rendered() {
        let host = std::path::Path::new("/usr/share/pam-configs");
        assert!(
            host.is_dir(),
            "/usr/share/pam-configs missing: install libpam-runtime"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut store = ContentStore::new_in(dir.path()).unwrap();
        let mut tree = FsTree::new();
        let mut ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime: 0,
        };
        let mut compared = 0;
        for d in ["/usr/share/pam-configs", "/usr/share/pam"] {
            for e in std::fs::read_dir(d).unwrap() {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                ed.write(&path.to_string_lossy()[1..], &data, 0o644)
                    .unwrap();
            }
        }
        assert_eq!(write_common(&mut ed).unwrap(), 5);
        // Module lines only: pam-auth-update also keeps comments and
        // leaves a trailing space after each module it writes.
        let stack = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect()
        };
        for ty in TYPES {
            let host = std::fs::read_to_string(format!("/etc/pam.d/common-{ty}")).unwrap();
            if !host.contains("pam-auth-update") {
                continue; // edited by hand on this machine
            }
            let ours = ed
                .read_string(&format!("etc/pam.d/common-{ty}"))
                .unwrap()
                .unwrap();
            assert_eq!(stack(&ours), stack(&host), "common-{ty}:\n{ours}");
            compared += 1;
        }
        assert!(
            compared >= 3,
            "the host's common-* files are all hand-edited"
        );
    }
}

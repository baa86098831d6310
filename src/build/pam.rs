//! What `pam-auth-update` (libpam-runtime's postinst) writes:
//! `/etc/pam.d/common-{auth,account,password,session,session-noninteractive}`
//! from the templates in `/usr/share/pam` and the profiles in
//! `/usr/share/pam-configs` that say `Default: yes`.

use std::collections::BTreeMap;

use anyhow::Result;

use super::fs::Editor;

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
/// and `success=end` jumps past the rest of the primary block and the
/// fallback `pam_deny` line.
pub fn blocks(profiles: &[Profile], ty: &str) -> (String, String) {
    let kind_of = if ty == "session-noninteractive" {
        "session"
    } else {
        ty
    };
    let mut out = Vec::new();
    for want in ["Primary", "Additional"] {
        let mut lines: Vec<String> = Vec::new();
        for p in profiles {
            if ty == "session-noninteractive" && p.interactive_only {
                continue;
            }
            if p.kinds.get(kind_of).map(String::as_str) != Some(want) {
                continue;
            }
            let initial = p.lines.get(&format!("{kind_of}-initial"));
            let body = match (lines.is_empty(), initial) {
                (true, Some(i)) => i.clone(),
                _ => p.lines.get(kind_of).cloned().unwrap_or_default(),
            };
            lines.extend(body);
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
    let primary = out.pop().unwrap_or_default();
    (primary, additional)
}

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
    for ty in [
        "auth",
        "account",
        "password",
        "session",
        "session-noninteractive",
    ] {
        let dst = format!("etc/pam.d/common-{ty}");
        if ed.exists(&dst) {
            continue;
        }
        let Some(template) = ed.read_string(&format!("usr/share/pam/common-{ty}"))? else {
            continue;
        };
        let (primary, additional) = blocks(&profiles, ty);
        let var = ty.replace('-', "_");
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
        assert_eq!(p, "");
        assert_eq!(
            a,
            "session\trequired\tpam_unix.so\nsession\toptional\t\t\tpam_systemd.so\n"
        );
        let (_, a) = blocks(&profiles, "session-noninteractive");
        assert_eq!(a, "session\trequired\tpam_unix.so\n");
    }
}

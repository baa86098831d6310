//! systemd unit enablement without running systemctl: presets decide which
//! units are enabled, the `[Install]` sections say where the symlinks go —
//! what `systemctl preset-all` does, computed over the image tree.
//!
//! Preset files are read from `/usr/lib/systemd/system-preset`,
//! `/lib/systemd/system-preset` and `/etc/systemd/system-preset` (a file in
//! /etc overrides one of the same name), in file name order; the first
//! matching line wins, and a unit no line matches stays disabled (as
//! upstream's `99-default.preset` says). Unit files come from
//! `/etc/systemd/system`, `/usr/lib/systemd/system` and `/lib/systemd/system`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};

use crate::tree::edit::Editor;

const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];
const PRESET_DIRS: [&str; 3] = [
    "usr/lib/systemd/system-preset",
    "lib/systemd/system-preset",
    "etc/systemd/system-preset",
];

/// One preset line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub enable: bool,
    pub pattern: String,
    /// For templates: the instances to enable (empty: DefaultInstance).
    pub instances: Vec<String>,
}

/// Parses a preset file's lines.
pub fn parse_presets(text: &str) -> Vec<Preset> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let enable = match w.next()? {
                "enable" => true,
                "disable" => false,
                _ => return None,
            };
            Some(Preset {
                enable,
                pattern: w.next()?.to_string(),
                instances: w.map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Shell-style glob with `*` and `?`, as preset patterns use.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// The `[Install]` section of a unit file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

impl Install {
    pub fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

pub fn parse_install(text: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let words = || v.split_whitespace().map(str::to_string);
        match k.trim() {
            "WantedBy" => inst.wanted_by.extend(words()),
            "RequiredBy" => inst.required_by.extend(words()),
            "Alias" => inst.alias.extend(words()),
            "Also" => inst.also.extend(words()),
            "DefaultInstance" => inst.default_instance = Some(v.trim().to_string()),
            _ => {}
        }
    }
    inst
}

/// What [`apply_presets`] did.
#[derive(Debug, Default)]
pub struct Enabled {
    /// Unit names (with instance) enabled, sorted.
    pub units: BTreeSet<String>,
    /// Symlinks created: path → target.
    pub links: BTreeMap<String, String>,
}

/// Finds unit files: name → (directory, text). /etc wins over /usr/lib.
fn unit_files(ed: &Editor<'_>) -> Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for dir in UNIT_DIRS {
        for name in ed.list(dir) {
            if out.contains_key(&name) || !is_unit_name(&name) {
                continue;
            }
            // Symlinks in /etc are enablement or aliases, not units.
            let is_link = ed.lookup(&format!("{dir}/{name}")).is_some_and(|id| {
                matches!(
                    ed.tree.inode(id).kind,
                    crate::tree::InodeKind::Symlink { .. }
                )
            });
            if dir.starts_with("etc/") && is_link {
                continue;
            }
            if let Some(bytes) = ed.read_following(&format!("{dir}/{name}"))? {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                out.insert(name, (dir.to_string(), text));
            }
        }
    }
    Ok(out)
}

fn is_unit_name(n: &str) -> bool {
    [
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".automount",
        ".swap",
    ]
    .iter()
    .any(|s| n.ends_with(s))
}

/// Applies the image's presets to every unit with an `[Install]` section.
pub fn apply_presets(ed: &mut Editor<'_>) -> Result<Enabled> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for dir in PRESET_DIRS {
        for name in ed.list(dir) {
            if !name.ends_with(".preset") {
                continue;
            }
            if let Some(b) = ed.read_following(&format!("{dir}/{name}"))? {
                files.insert(name, String::from_utf8_lossy(&b).into_owned());
            }
        }
    }
    let presets: Vec<Preset> = files.values().flat_map(|t| parse_presets(t)).collect();
    let units = unit_files(ed)?;
    let mut done = Enabled::default();
    for name in units.keys() {
        // Instances of a template are matched by the template name.
        if let Some(p) = presets.iter().find(|p| glob(&p.pattern, name)) {
            if p.enable {
                enable(ed, &units, &presets, name, &p.instances, &mut done)
                    .with_context(|| format!("enabling {name}"))?;
            }
        }
    }
    Ok(done)
}

/// Enables one unit (and its `Also=`), as `systemctl enable` would.
fn enable(
    ed: &mut Editor<'_>,
    units: &BTreeMap<String, (String, String)>,
    presets: &[Preset],
    name: &str,
    instances: &[String],
    done: &mut Enabled,
) -> Result<()> {
    let Some((dir, text)) = units.get(name) else {
        return Ok(());
    };
    let inst = parse_install(text);
    if inst.is_empty() {
        return Ok(());
    }
    let target = format!("/{dir}/{name}");
    let names: Vec<String> = match name.split_once("@.") {
        Some((stem, ext)) => {
            let list: Vec<String> = if instances.is_empty() {
                inst.default_instance.iter().cloned().collect()
            } else {
                instances.to_vec()
            };
            list.iter().map(|i| format!("{stem}@{i}.{ext}")).collect()
        }
        None => vec![name.to_string()],
    };
    for n in &names {
        if !done.units.insert(n.clone()) {
            continue;
        }
        for (by, kind) in inst
            .wanted_by
            .iter()
            .map(|t| (t, "wants"))
            .chain(inst.required_by.iter().map(|t| (t, "requires")))
        {
            let link = format!("etc/systemd/system/{by}.{kind}/{n}");
            ed.symlink(&link, &target)?;
            done.links.insert(link, target.clone());
        }
    }
    for alias in &inst.alias {
        let link = format!("etc/systemd/system/{alias}");
        ed.symlink(&link, &target)?;
        done.links.insert(link, target.clone());
    }
    for also in &inst.also {
        // A unit a preset disables by name stays disabled even when
        // another unit's Also= names it (e.g. networkd's wait-online).
        let disabled = presets
            .iter()
            .find(|p| glob(&p.pattern, also))
            .is_some_and(|p| !p.enable && p.pattern == *also);
        if !disabled && !done.units.contains(also) {
            enable(ed, units, presets, also, &[], done)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "a.service"));
        assert!(glob("getty@.service", "getty@.service"));
        assert!(glob("systemd-*.service", "systemd-resolved.service"));
        assert!(!glob("systemd-*.service", "ssh.service"));
        assert!(glob("k3s?.service", "k3sx.service"));
    }

    #[test]
    fn presets_and_install() {
        let p = parse_presets("# c\nenable getty@.service tty1 tty2\ndisable *\nbogus x\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].instances, ["tty1", "tty2"]);
        assert!(!p[1].enable);
        let i = parse_install(
            "[Unit]\nWantedBy=no\n[Install]\nWantedBy=multi-user.target  graphical.target\nAlias=sshd.service\nAlso=ssh.socket\nDefaultInstance=tty1\n",
        );
        assert_eq!(i.wanted_by, ["multi-user.target", "graphical.target"]);
        assert_eq!(i.alias, ["sshd.service"]);
        assert_eq!(i.also, ["ssh.socket"]);
        assert_eq!(i.default_instance.as_deref(), Some("tty1"));
    }
}

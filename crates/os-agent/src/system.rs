//! Facts about the running system: the slot from the kernel command line,
//! and the image's identity from /usr/lib/build-image/image.json and
//! /etc/os-release.

use serde::Deserialize;

use boot_contract::boot_env::CMDLINE_SLOT;

use crate::error::{Context, Result};
use crate::fsutil::{read_optional, Root};

pub const IMAGE_JSON: &str = "/usr/lib/build-image/image.json";
pub const OS_RELEASE: &str = "/etc/os-release";
pub const CMDLINE: &str = "/proc/cmdline";

/// The value of `key=` on a kernel command line.
pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The running slot (`a`, `b` or `live`) from `bi.slot=`; None when the
/// command line has none (not booted by build-image's boot loader).
pub fn running_slot(root: &Root) -> Result<Option<String>> {
    let path = root.join(CMDLINE);
    let text = read_optional(&path)?.unwrap_or_default();
    Ok(cmdline_param(&text, CMDLINE_SLOT).map(str::to_string))
}

/// What os-init did with the persistent partition this boot
/// ([`boot_contract::persist::STATUS_FILE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistStatus {
    /// `ok`, `off`, `degraded`; None without a record (not booted by
    /// os-init, or an os-init that writes none).
    pub state: Option<String>,
    pub reason: Option<String>,
}

pub fn parse_persist_status(text: &str) -> PersistStatus {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    PersistStatus {
        state: field("state"),
        reason: field("reason"),
    }
}

/// Reads the record; an unreadable one counts as none.
pub fn persist_status(root: &Root) -> PersistStatus {
    match read_optional(&root.join(boot_contract::persist::STATUS_FILE)) {
        Ok(Some(t)) => parse_persist_status(&t),
        _ => PersistStatus::default(),
    }
}

/// /usr/lib/build-image/image.json, written by the builder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub api_version: Option<String>,
    pub flavor: Option<String>,
    pub arch: Option<String>,
    pub version: Option<String>,
    pub build_image_version: Option<String>,
    pub k3s_version: Option<String>,
}

/// Reads image.json, falling back to `IMAGE_VERSION`/`IMAGE_ID` of
/// /etc/os-release for the version when image.json lacks it or is missing.
pub fn image_info(root: &Root) -> Result<ImageInfo> {
    let path = root.join(IMAGE_JSON);
    let mut info = match read_optional(&path)? {
        Some(text) => serde_json::from_str::<ImageInfo>(&text)
            .with_context(|| format!("reading {}", path.display()))?,
        None => ImageInfo::default(),
    };
    if info.version.is_none() {
        if let Some(osr) = read_optional(&root.join(OS_RELEASE))? {
            info.version = os_release_field(&osr, "IMAGE_VERSION");
        }
    }
    Ok(info)
}

/// A field of os-release, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_slot() {
        let c = "BOOT_IMAGE=/a/vmlinuz bi.root=root_b bi.slot=b console=ttyS0\n";
        assert_eq!(cmdline_param(c, "bi.slot"), Some("b"));
        assert_eq!(cmdline_param(c, "bi.root"), Some("root_b"));
        assert_eq!(cmdline_param("xbi.slot=a", "bi.slot"), None);
        assert_eq!(
            cmdline_param("bi.slot=a bi.slot=live", "bi.slot"),
            Some("live")
        );
    }

    #[test]
    fn os_release() {
        let t = "NAME=\"Debian GNU/Linux\"\nIMAGE_ID=edge\nIMAGE_VERSION=\"1.2.3\"\n";
        assert_eq!(
            os_release_field(t, "IMAGE_VERSION").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(os_release_field(t, "IMAGE_ID").as_deref(), Some("edge"));
        assert_eq!(os_release_field(t, "IMAGE"), None);
    }
}

//! k3s from its OCI image (`rancher/k3s:<version>`): the binary, the
//! kubectl/crictl/ctr links and the server and agent units. Which of the
//! two runs is the node's config (os-agent writes the marker the units'
//! conditions check).

use anyhow::{bail, Context, Result};

use crate::tree::edit::Editor;
use crate::tree::{ContentStore, FsTree, InodeKind};

pub const DEFAULT_IMAGE: &str = "docker.io/rancher/k3s:v1.31.4-k3s1";
const SERVER_UNIT: &str = include_str!("../../units/k3s.service");
const AGENT_UNIT: &str = include_str!("../../units/k3s-agent.service");

/// The k3s version a tag names: `v1.31.4-k3s1` → `v1.31.4+k3s1` (image
/// tags cannot hold `+`).
pub fn version_from_tag(tag: &str) -> Option<String> {
    let (v, suffix) = tag.rsplit_once("-k3s")?;
    if !v.starts_with('v') || suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{v}+k3s{suffix}"))
}

/// The k3s binary of the k3s image's tree.
pub fn binary(k3s: &FsTree, store: &ContentStore, what: &str) -> Result<Vec<u8>> {
    let id = ["bin/k3s", "usr/local/bin/k3s", "usr/bin/k3s"]
        .iter()
        .find_map(|p| k3s.lookup_path(p.as_bytes()))
        .with_context(|| format!("{what}: no /bin/k3s in the image"))?;
    let InodeKind::File { content } = &k3s.inode(id).kind else {
        bail!("{what}: /bin/k3s is not a regular file");
    };
    let data = store
        .read_all(content)
        .with_context(|| format!("{what}: reading /bin/k3s"))?;
    if data.len() < 4 {
        bail!("{what}: /bin/k3s is empty");
    }
    Ok(data)
}

/// Installs the k3s binary, its links and both units.
pub fn layer(ed: &mut Editor<'_>, data: &[u8]) -> Result<()> {
    ed.write("usr/local/bin/k3s", data, 0o755)?;
    for link in ["kubectl", "crictl", "ctr"] {
        ed.symlink(&format!("usr/local/bin/{link}"), "k3s")?;
    }
    ed.write(
        "usr/lib/systemd/system/k3s.service",
        SERVER_UNIT.as_bytes(),
        0o644,
    )?;
    ed.write(
        "usr/lib/systemd/system/k3s-agent.service",
        AGENT_UNIT.as_bytes(),
        0o644,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            version_from_tag("v1.31.4-k3s1").as_deref(),
            Some("v1.31.4+k3s1")
        );
        assert_eq!(version_from_tag("latest"), None);
        assert_eq!(version_from_tag("v1.31.4-k3sx"), None);
    }
}

//! The stages that fill the root filesystem's tree: the base, the
//! flavor's packages, os-agent/os-init and k3s, the node config, and
//! finalisation.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::inputs::Inputs;
use super::lock::{BuildLock, LockedBase, LockedImage, LockedPackage};
use super::plan::BuildPlan;
use crate::apt;
use crate::assemble::assemble_into;
use crate::finalise::{self, k3s};
use crate::flavor::Flavor;
use crate::kmod::ModuleIndex;
use crate::oci::{ImageSource, Puller};
use crate::progress::{Event, Reporter};
use crate::tree::edit::Editor;
use crate::tree::{ContentStore, FsTree};

/// The root filesystem being built: its tree and the spool holding its
/// file contents.
pub struct Root {
    pub tree: FsTree,
    pub store: ContentStore,
    /// The mtime of files the build creates.
    pub mtime: i64,
}

impl Root {
    /// An empty root whose contents spool into `spool`.
    pub fn new(spool: &Path, mtime: i64) -> Result<Root> {
        Ok(Root {
            tree: FsTree::new(),
            store: ContentStore::new_in(spool)?,
            mtime,
        })
    }

    pub fn edit(&mut self) -> Editor<'_> {
        Editor {
            tree: &mut self.tree,
            store: &mut self.store,
            mtime: self.mtime,
        }
    }
}

fn stage(reporter: &dyn Reporter, message: String) {
    reporter.event(Event::Stage { message });
}

/// The base: the layers of the base image, or the merged-/usr skeleton an
/// archive bootstrap starts from.
pub fn add_base(
    plan: &BuildPlan,
    inputs: &Inputs,
    puller: &Puller<'_>,
    root: &mut Root,
    lock: &mut BuildLock,
) -> Result<()> {
    match &inputs.base {
        None => {
            stage(
                puller.reporter,
                format!(
                    "bootstrapping a {} {} base from the package archive",
                    plan.flavor.name, plan.flavor.release
                ),
            );
            merged_usr(&mut root.edit(), &plan.arch)?;
            lock.base = LockedBase::Archive { archive: true };
        }
        Some(img) => {
            stage(
                puller.reporter,
                format!("merging the base image {}", img.source),
            );
            assemble_into(puller, img, &mut root.tree, &mut root.store)
                .with_context(|| format!("assembling the base image {}", img.source))?;
            check_base_release(&root.edit(), &plan.flavor, &img.source.to_string())?;
            lock.base = LockedBase::Image(LockedImage::of(img));
        }
    }
    Ok(())
}

/// The flavor's packages and their dependencies, resolved against what the
/// base has installed. Returns the sources' Releases, for the lock file.
pub fn add_packages(
    plan: &BuildPlan,
    inputs: &Inputs,
    repositories: Vec<apt::Repository>,
    fetcher: &apt::Fetcher,
    puller: &Puller<'_>,
    root: &mut Root,
    lock: &mut BuildLock,
) -> Result<Vec<apt::ReleaseStamp>> {
    stage(
        puller.reporter,
        format!(
            "installing {} packages and their dependencies",
            inputs.packages.len()
        ),
    );
    let installed = apt::install_packages(
        fetcher,
        &repositories,
        &apt::InstallRequest {
            packages: &inputs.packages,
            required: inputs.base.is_none(),
            mtime: plan.mtime,
        },
        &puller.cache,
        &mut root.tree,
        &mut root.store,
    )
    .with_context(|| format!("installing the {} flavor's packages", plan.flavor.name))?;
    lock.packages = installed.packages.iter().map(LockedPackage::of).collect();
    Ok(installed.releases)
}

/// os-agent and os-init with their units, k3s, and the node config.
/// Returns the k3s version.
pub fn add_components(
    plan: &BuildPlan,
    inputs: &Inputs,
    puller: &Puller<'_>,
    root: &mut Root,
    lock: &mut BuildLock,
) -> Result<Option<String>> {
    let comp = &inputs.components;
    stage(
        puller.reporter,
        format!("adding os-agent and os-init from {}", comp.source),
    );
    assemble_into(puller, comp, &mut root.tree, &mut root.store)
        .with_context(|| format!("adding the components image {}", comp.source))?;
    for (path, what) in [
        ("usr/bin/os-agent", "os-agent"),
        ("usr/lib/build-image/os-init", "os-init"),
    ] {
        if !root.edit().exists(path) {
            anyhow::bail!("components image {}: no /{path} ({what})", comp.source);
        }
    }
    lock.components = Some(LockedImage::of(comp));

    let mut k3s_version = None;
    if let Some(img) = &inputs.k3s {
        stage(puller.reporter, format!("adding k3s from {}", img.source));
        let mut k3s_tree = FsTree::new();
        assemble_into(puller, img, &mut k3s_tree, &mut root.store)
            .with_context(|| format!("reading the k3s image {}", img.source))?;
        let bin = k3s::binary(&k3s_tree, &root.store, &img.source.to_string())?;
        k3s::layer(&mut root.edit(), &bin)?;
        k3s_version = match &img.source {
            ImageSource::Registry(r) => r.tag.as_deref().and_then(k3s::version_from_tag),
            _ => None,
        };
        lock.k3s = Some(LockedImage {
            version: k3s_version.clone(),
            ..LockedImage::of(img)
        });
    }
    if let Some(text) = &plan.config {
        root.edit()
            .write("etc/os-agent/config.yaml", text.as_bytes(), 0o600)?;
    }
    let keys_dir = boot_contract::upgrade::KEYS_DIR.trim_start_matches('/');
    for k in &plan.upgrade_keys {
        root.edit()
            .write(&format!("{keys_dir}/{}", k.name), k.pem.as_bytes(), 0o644)?;
    }
    Ok(k3s_version)
}

/// Module indexes, then what maintainer scripts would have done
/// (docs/finalisation.md); clamps mtimes for a reproducible build. Returns
/// the kernel version the image boots.
pub fn finalise(
    plan: &BuildPlan,
    k3s_version: Option<String>,
    reporter: &dyn Reporter,
    root: &mut Root,
    lock: &mut BuildLock,
) -> Result<String> {
    let kver = ModuleIndex::versions(&root.tree)
        .last()
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "no kernel modules in the image: the flavor's kernel package did not install \
                 /lib/modules/VERSION"
            )
        })?;
    stage(reporter, format!("kernel {kver}: module indexes"));
    let depmod = crate::kmod::depmod::write_indexes(&mut root.tree, &mut root.store, &kver)
        .with_context(|| format!("writing the module indexes of kernel {kver}"))?;
    tracing::info!("module indexes: {depmod:?}");

    stage(reporter, "finalising the root filesystem".into());
    let info = finalise::ImageInfo {
        flavor: plan.flavor.name.clone(),
        release: plan.flavor.release.clone(),
        arch: plan.arch.clone(),
        version: plan.version.clone(),
        k3s_version,
    };
    let report = finalise::finalise(&mut root.edit(), &info)?;
    for s in &report.steps {
        tracing::info!("finalise: {s}");
    }
    if let Some(e) = plan.epoch {
        root.tree.clamp_mtimes(e);
    }
    lock.kernel = Some(kver.clone());
    Ok(kver)
}

/// The merged-/usr symlinks a bootstrap starts from (as debootstrap and
/// mmdebstrap make them), so packages' /bin, /sbin and /lib paths land
/// under /usr.
/// Refuses a base image of another release than the flavor's: packages of
/// one release over the libraries of another make a system nobody tested
/// (a bookworm base under trixie's systemd, say). The release is the
/// base's `VERSION_CODENAME` in `/etc/os-release` (or
/// `/usr/lib/os-release`), as the distribution's `base-files` writes it.
pub fn check_base_release(ed: &Editor<'_>, flavor: &Flavor, base: &str) -> Result<()> {
    let want = &flavor.release;
    let which = format!("flavor {} builds {} {want}", flavor.id, flavor.name);
    let mut found = None;
    for path in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(text) = ed.read_following(path)? {
            found = Some((path, String::from_utf8_lossy(&text).into_owned()));
            break;
        }
    }
    let Some((path, text)) = found else {
        bail!(
            "the base image {base} has no /etc/os-release or /usr/lib/os-release, so its \
             release is unknown; {which}: use a base image of {want}"
        );
    };
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim().trim_matches(['"', '\'']).to_string())
        })
    };
    let Some(codename) = field("VERSION_CODENAME").filter(|c| !c.is_empty()) else {
        bail!(
            "the base image {base} names no release (no VERSION_CODENAME in /{path}); {which}: \
             use a base image of {want}"
        );
    };
    if codename != *want {
        let pretty = field("PRETTY_NAME").unwrap_or_else(|| codename.clone());
        bail!(
            "the base image {base} is {pretty} (VERSION_CODENAME={codename} in /{path}), but \
             {which}: use a base image of {want}, or the flavor of {codename}"
        );
    }
    Ok(())
}

fn merged_usr(ed: &mut Editor<'_>, arch: &str) -> Result<()> {
    let mut dirs = vec!["bin", "sbin", "lib"];
    if arch == "amd64" {
        dirs.push("lib64");
    }
    for d in dirs {
        ed.mkdir(&format!("usr/{d}"), 0o755)?;
        ed.symlink(d, &format!("usr/{d}"))?;
    }
    for d in [
        "etc", "var", "tmp", "root", "dev", "proc", "sys", "run", "home",
    ] {
        ed.mkdir(d, 0o755)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(os_release: Option<&str>) -> (tempfile::TempDir, Root) {
        let tmp = tempfile::tempdir().unwrap();
        let mut root = Root::new(tmp.path(), 0).unwrap();
        if let Some(text) = os_release {
            let mut ed = root.edit();
            ed.write("usr/lib/os-release", text.as_bytes(), 0o644)
                .unwrap();
            ed.symlink("etc/os-release", "../usr/lib/os-release")
                .unwrap();
        }
        (tmp, root)
    }

    const BOOKWORM: &str =
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                            VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";

    #[test]
    fn a_base_of_another_release_is_refused_naming_both() {
        let trixie = Flavor::load("debian-13").unwrap();
        let (_t, mut root) = root_with(Some(BOOKWORM));
        let e = check_base_release(&root.edit(), &trixie, "127.0.0.1:5000/debian:bookworm")
            .unwrap_err()
            .to_string();
        for want in [
            "127.0.0.1:5000/debian:bookworm",
            "Debian GNU/Linux 12 (bookworm)",
            "VERSION_CODENAME=bookworm in /etc/os-release",
            "flavor debian-13 builds debian trixie",
        ] {
            assert!(e.contains(want), "{want:?} missing: {e}");
        }
        let bookworm = Flavor::load("debian-12").unwrap();
        check_base_release(&root.edit(), &bookworm, "b").unwrap();
    }

    #[test]
    fn a_base_that_names_no_release_is_refused() {
        let trixie = Flavor::load("debian-13").unwrap();
        let (_t, mut root) = root_with(None);
        let e = check_base_release(&root.edit(), &trixie, "base")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no /etc/os-release") && e.contains("trixie"),
            "{e}"
        );
        let (_t, mut root) = root_with(Some(
            "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux forky/sid\"\n",
        ));
        let e = check_base_release(&root.edit(), &trixie, "base")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no VERSION_CODENAME in /etc/os-release") && e.contains("trixie"),
            "{e}"
        );
        // /usr/lib/os-release alone is read too, quoted values unquoted.
        let tmp = tempfile::tempdir().unwrap();
        let mut root = Root::new(tmp.path(), 0).unwrap();
        root.edit()
            .write("usr/lib/os-release", b"VERSION_CODENAME='trixie'\n", 0o644)
            .unwrap();
        check_base_release(&root.edit(), &trixie, "base").unwrap();
    }
}

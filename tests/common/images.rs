//! Full images built once per target dir and shared by test binaries: the
//! amd64 image of a flavor is what tests/build_image.rs's `build` makes (the
//! flavor release's Debian minbase from a local registry, the archive's
//! packages, the k3s stand-in, the components of `cargo xtask
//! components`, the test node config), stored under
//! `target/test-fixtures/images/FLAVOR-amd64-KEY/` (FLAVOR as resolved:
//! `debian-13` for `debian`). KEY hashes everything the build reads that a
//! change in this repository can change: the build-image binary, the
//! components layout, the k3s stand-in's source, the config, the base and
//! the arguments, the flavor among them. A newer key replaces older ones of
//! the same flavor (a build is ~1 GiB of sparse files).
//!
//! Output file names follow the flavor's release (`debian-trixie-amd64.raw`):
//! take them from [`output`], not from a literal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::fixtures::{debian_layout_of, fixtures_dir, lock};
use super::layer::{Compression, LayerBuilder};
use super::oci::{Image, OciLayout};
use super::registry::Registry;
use super::{TestEnv, BIN};

pub const K3S_TAG: &str = "v1.31.4-k3s1";
/// What a build without `--flavor` builds: Debian's current stable release.
pub const DEFAULT_FLAVOR: &str = "debian";
/// `--image-version` of the default image.
pub const VERSION: &str = "1.0.0-test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo xtask components` into the fixtures directory.
pub fn components() -> PathBuf {
    let out = fixtures_dir().join("components");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["xtask", "components", "--output"])
        .arg(&out)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo xtask components failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A k3s image whose /bin/k3s is tests/fixtures/k3s-standin.rs built for
/// `arch`.
pub fn k3s_standin_layout(arch: &str, dir: &Path) -> OciLayout {
    let triple = match arch {
        "amd64" => "x86_64-unknown-linux-musl",
        _ => "aarch64-unknown-linux-musl",
    };
    let bin = dir.join(format!("k3s-{arch}"));
    let o = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "--target",
            triple,
            "-C",
            "linker=rust-lld",
        ])
        .arg(root().join("tests/fixtures/k3s-standin.rs"))
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building the k3s stand-in (needs `rustup target add {triple}`):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let layer = LayerBuilder::new()
        .dir("bin")
        .file("bin/k3s", fs::read(&bin).unwrap())
        .mode(0o755)
        .symlink("bin/kubectl", "k3s")
        .build(Compression::Gzip);
    let layout = OciLayout::create(dir.join(format!("k3s-layout-{arch}")));
    layout.add_image(K3S_TAG, &Image::new(arch, vec![layer]));
    layout
}

/// A well-formed public key whose private half does not exist.
pub const NO_SUCH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildImageTestKeyOnlyForTestsAAAAAAAAAAA test@build-image";

/// The node config of the test images.
pub fn node_config() -> String {
    r#"hostname: node-test
users:
  - name: admin
    ssh_authorized_keys:
      - "ADMIN_KEY"
    groups: [sudo]
write_files:
  - path: /etc/motd
    content: "build-image test node\n"
    permissions: "0644"
k3s:
  enabled: true
  role: server
  token: test-token
"#
    .replace("ADMIN_KEY", NO_SUCH_KEY)
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().to_vec()
}

/// The built-in flavor `flavor` names (`debian` → `debian-13`).
pub fn flavor(flavor: &str) -> build_image::flavor::Flavor {
    build_image::flavor::Flavor::load(flavor).unwrap()
}

/// `{name}-{release}-{arch}`, the stem of a build's output files
/// (`debian-trixie-amd64`).
pub fn stem(flavor_name: &str, arch: &str) -> String {
    let f = flavor(flavor_name);
    format!("{}-{}-{arch}", f.name, f.release)
}

/// The output file `{stem}.{ext}` of a build of `flavor` for `arch` in
/// `dir` (`ext`: `raw`, `squashfs`, `iso`).
pub fn output(dir: &Path, flavor: &str, arch: &str, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}", stem(flavor, arch)))
}

/// The output directory of the default amd64 build ([`DEFAULT_FLAVOR`],
/// version [`VERSION`]): `debian-trixie-amd64.raw`, `.squashfs`, `.iso`,
/// `build-image.lock` ([`output`] names them). Built on first use; later
/// calls (from any test binary) reuse it. Treat it as read-only: boot
/// copies of it.
pub fn default_amd64() -> PathBuf {
    amd64(DEFAULT_FLAVOR)
}

/// [`default_amd64`] for another built-in flavor (`debian-12`).
pub fn amd64(flavor_name: &str) -> PathBuf {
    let f = flavor(flavor_name);
    cached_build_of(
        flavor_name,
        &format!("{}-amd64", f.id),
        "amd64",
        &["--image-version", VERSION],
        &node_config(),
        &[],
    )
}

/// A build of the test inputs for [`DEFAULT_FLAVOR`] (the release's
/// Debian minbase from a local registry for amd64, from the archive for arm64; the k3s stand-in; the components of
/// `cargo xtask components`) for `arch` with `args` and the node config
/// `config`, cached under `target/test-fixtures/images/PREFIX-KEY/`. KEY
/// hashes everything the build reads that a change in this repository can
/// change, `inputs` (files `args` name) included; a newer build of the
/// same PREFIX replaces older ones (a build is up to ~1 GiB of sparse
/// files). Treat the directory as read-only.
pub fn cached_build(
    prefix: &str,
    arch: &str,
    args: &[&str],
    config: &str,
    inputs: &[&Path],
) -> PathBuf {
    cached_build_of(DEFAULT_FLAVOR, prefix, arch, args, config, inputs)
}

/// [`cached_build`] of the built-in flavor `flavor_name`.
pub fn cached_build_of(
    flavor_name: &str,
    prefix: &str,
    arch: &str,
    args: &[&str],
    config: &str,
    inputs: &[&Path],
) -> PathBuf {
    let f = flavor(flavor_name);
    let comps = components();
    let mut h = Sha256::new();
    h.update(sha256_file(Path::new(BIN)));
    h.update(fs::read(comps.join("index.json")).unwrap());
    h.update(fs::read(root().join("tests/fixtures/k3s-standin.rs")).unwrap());
    h.update(config);
    for i in inputs {
        h.update(fs::read(i).unwrap());
    }
    let registry_base = arch == super::oci::host_arch();
    let base_digest = if registry_base {
        let (_, digests) = debian_layout_of(&f.release);
        digests.manifest
    } else {
        "archive".to_string()
    };
    h.update(&base_digest);
    let all: Vec<&str> = ["--flavor", f.id.as_str(), "--arch", arch]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    h.update(all.join("\0"));
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let images = fixtures_dir().join("images");
    fs::create_dir_all(&images).unwrap();
    let out = images.join(format!("{prefix}-{key}"));
    let _lock = lock(&images.join("build"), Duration::from_secs(1800));
    if out.join("build-image.lock").is_file() {
        return out;
    }
    // Older builds of this kind go: only the current one is kept.
    for e in fs::read_dir(&images).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let same_kind = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|r| r.len() == 16 && r.bytes().all(|b| b.is_ascii_hexdigit()));
        if p.is_dir() && p != out && same_kind {
            let _ = fs::remove_dir_all(&p);
        }
    }
    let env = TestEnv::new();
    let reg = Registry::start();
    let base_ref = if registry_base {
        let (base, _) = debian_layout_of(&f.release);
        reg.push(&base, &f.release, "library/debian");
        reg.image("library/debian", &f.release)
    } else {
        "archive".to_string()
    };
    let k3s = k3s_standin_layout(arch, env.tmp.path());
    reg.push(&k3s, K3S_TAG, "rancher/k3s");
    let config_file = env.tmp.path().join("node.yaml");
    fs::write(&config_file, config).unwrap();
    let partial = out.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let cache = fixtures_dir().join("build-cache");
    let comps = format!("oci-layout:{}", comps.display());
    let k3s_ref = reg.image("rancher/k3s", K3S_TAG);
    let mut full: Vec<&str> = vec!["--cache-dir", cache.to_str().unwrap(), "--json"];
    full.extend(all);
    full.extend([
        "--base",
        &base_ref,
        "--k3s-image",
        &k3s_ref,
        "--components",
        &comps,
        "--config",
        config_file.to_str().unwrap(),
        "--output",
        partial.to_str().unwrap(),
    ]);
    let started = std::time::Instant::now();
    let o = env.run_raw(&full);
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "built {prefix} ({}) in {:.0} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    fs::rename(&partial, &out).unwrap();
    out
}

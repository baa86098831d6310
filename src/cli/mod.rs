//! The `build-image` command line: argument definitions, dispatch and the
//! one way results are printed (text, or one JSON document per line with
//! `--json`; docs/cli.md).

pub mod build;
mod inspect;
pub mod push;
mod rootfs;
pub mod sign;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::Serialize;

use crate::cache::BlobCache;
use crate::oci::{Puller, RegistryClient, WantedPlatform};
use crate::progress::Reporter;

/// Turn a Linux distribution's OCI image into a bootable, immutable,
/// A/B-upgradable OS image.
///
/// Without a subcommand, builds the image (the same as `build-image
/// build`): `build-image --flavor debian --arch arm64` writes an A/B disk
/// image, a live/installer ISO, the root filesystem and build-image.lock to
/// ./out.
#[derive(Debug, Parser)]
#[command(name = "build-image", version, term_width = 80)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub build: build::BuildArgs,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Blob cache directory [default: $XDG_CACHE_HOME/build-image]
    #[arg(long, global = true, env = "BUILD_IMAGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print nothing but errors and results
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print the result (or the error) as one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The image puller every command uses: the blob cache of
    /// `--cache-dir` and a registry client allowing plain HTTP to
    /// `insecure` hosts (and loopback).
    pub fn puller<'a>(
        &self,
        insecure: &[String],
        reporter: &'a dyn Reporter,
    ) -> Result<Puller<'a>> {
        Ok(Puller {
            client: RegistryClient::new(insecure.to_vec()),
            cache: BlobCache::open(&self.cache_dir()?)?,
            reporter,
        })
    }

    /// `--cache-dir`, or the default cache directory.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        match &self.cache_dir {
            Some(d) => Ok(d.clone()),
            None => BlobCache::default_dir(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the system image (what running without a subcommand does)
    Build(Box<build::BuildArgs>),
    /// Write the merged layers of an image as a SquashFS, nothing added
    Rootfs(rootfs::RootfsArgs),
    /// Show an image's platforms, digests, layers and config, or what an
    /// ISO that build-image wrote holds
    Inspect(inspect::InspectArgs),
    /// Push upgrade artifacts (`{stem}.upgrade` layouts) to a registry,
    /// several architectures as one index; print the pushed digest
    Push(push::PushArgs),
    /// Sign a pushed image by digest, as cosign does (ECDSA P-256,
    /// stored as the tag sha256-<hex>.sig)
    Sign(sign::SignArgs),
    /// Write a P-256 key pair for signing: PREFIX.key and PREFIX.pub
    Keygen(sign::KeygenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell)
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (build-image.1 and one per subcommand) to DIR
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

impl Cli {
    /// Parses `args` like [`Parser::try_parse_from`], and refuses build
    /// options given with another subcommand (they would be ignored):
    /// `build-image --flavor ubuntu rootfs IMG -o x` is a usage error.
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches;
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        if let Some((sub, _)) = matches.subcommand() {
            let build_ids = build::BuildArgs::augment_args(clap::Command::new("build"));
            let given = build_ids.get_arguments().find(|a| {
                matches.value_source(a.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
            });
            if let Some(arg) = given {
                let name = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| arg.get_id().to_string());
                return Err(cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{name} is an option of the build; it cannot be used with `{sub}` \
                         (give it after `build`, or leave the subcommand out)"
                    ),
                ));
            }
        }
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }
}

/// Options shared by every command that reads an image.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Target architecture: amd64, arm64 (or x86_64, aarch64, arm64/v8)
    /// [default: the host's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT); loopback
    /// registries always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl SourceArgs {
    pub fn platform(&self) -> Result<WantedPlatform> {
        match &self.arch {
            Some(a) => WantedPlatform::parse(a),
            None => Ok(WantedPlatform::host()),
        }
    }
}

/// A command's result document: printed as text, or with `--json` as one
/// compact JSON object on one line carrying `apiVersion` and `kind`.
pub trait Output: Serialize {
    fn kind(&self) -> &'static str;
    /// The text form (what stdout gets without `--json`).
    fn text(&self) -> String;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// The JSON form of a result: one line.
pub fn to_json<T: Output>(doc: &T) -> Result<String> {
    Ok(serde_json::to_string(&Envelope {
        api_version: crate::API_VERSION,
        kind: doc.kind(),
        body: doc,
    })?)
}

fn print<T: Output>(g: &Global, doc: &T) -> Result<()> {
    if g.json {
        println!("{}", to_json(doc)?);
    } else {
        print!("{}", doc.text());
    }
    Ok(())
}

/// What `--json` prints on stdout when a command fails (`kind: Error`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDoc {
    /// The whole message, causes joined by `: ` (as stderr shows it).
    pub message: String,
    /// The outermost context first, the root cause last.
    pub causes: Vec<String>,
    /// The exit code: 1 for a failed command, 2 for a bad command line.
    pub exit_code: i32,
}

impl Output for ErrorDoc {
    fn kind(&self) -> &'static str {
        "Error"
    }
    fn text(&self) -> String {
        format!("error: {}\n", self.message)
    }
}

impl ErrorDoc {
    pub fn of(e: &anyhow::Error, exit_code: i32) -> Self {
        ErrorDoc {
            message: format!("{e:#}"),
            causes: e.chain().map(|c| c.to_string()).collect(),
            exit_code,
        }
    }
}

/// Parses `131072`, `128K`, `512M`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: expected a size like 131072, 128K, 512M or 2G"))
}

/// `SOURCE_DATE_EPOCH`, if set.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970")),
        _ => Ok(None),
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, reporter: &dyn Reporter) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        None => print(g, &crate::pipeline::run(g, cli.build, reporter)?),
        Some(Command::Build(a)) => print(g, &crate::pipeline::run(g, *a, reporter)?),
        Some(Command::Rootfs(a)) => print(g, &rootfs::run(g, a, reporter)?),
        Some(Command::Inspect(a)) => print(g, &inspect::run(g, a, reporter)?),
        Some(Command::Push(a)) => print(g, &push::run(g, a, reporter)?),
        Some(Command::Sign(a)) => print(g, &sign::run_sign(g, a, reporter)?),
        Some(Command::Keygen(a)) => print(g, &sign::run_keygen(a)?),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "build-image",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Some(Command::Manpages { dir }) => write_man_pages(&dir),
    }
}

/// `build-image.1` and `build-image-SUBCOMMAND.1` for each visible
/// subcommand.
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("build-image".to_string(), cmd.clone())];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("build-image-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_rootfs() {
        let cli = Cli::try_parse_checked([
            "build-image",
            "--quiet",
            "rootfs",
            "127.0.0.1:5000/x:1",
            "-o",
            "out.sqfs",
            "--arch",
            "arm64",
            "--compression",
            "xz",
            "--block-size",
            "1M",
            "--insecure-registry",
            "reg.lan",
        ])
        .unwrap();
        assert!(cli.global.quiet);
        let Some(Command::Rootfs(a)) = cli.command else {
            panic!("expected rootfs");
        };
        assert_eq!(a.block_size, 1 << 20);
        assert_eq!(a.source.arch.as_deref(), Some("arm64"));
        assert!(Cli::try_parse_checked(["build-image", "rootfs", "x"]).is_err());
    }

    #[test]
    fn parses_build() {
        let cli = Cli::try_parse_checked([
            "build-image",
            "--flavor",
            "debian",
            "--arch",
            "arm64",
            "--format",
            "disk",
            "--without",
            "k3s",
            "-o",
            "dist",
            "--slot-size",
            "2G",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.build.arch.as_deref(), Some("arm64"));
        assert_eq!(cli.build.slot_size, Some(2 << 30));
        assert_eq!(cli.build.without, [build::Optional::K3s]);
        assert_eq!(cli.build.output, PathBuf::from("dist"));
        let cli = Cli::try_parse_checked(["build-image"]).unwrap();
        assert_eq!(cli.build.flavor, "debian");
        assert!(Cli::try_parse_checked(["build-image", "--format", "floppy"]).is_err());
        assert!(Cli::try_parse_checked(["build-image", "--without", "kernel"]).is_err());
        // The same as a subcommand.
        let cli = Cli::try_parse_checked(["build-image", "build", "--arch", "arm64"]).unwrap();
        let Some(Command::Build(b)) = cli.command else {
            panic!("expected build");
        };
        assert_eq!(b.arch.as_deref(), Some("arm64"));
    }

    #[test]
    fn parses_push_sign_keygen_and_build_with_push() {
        let cli = Cli::try_parse_checked([
            "build-image",
            "push",
            "out-amd64/x.upgrade",
            "out-arm64/x.upgrade",
            "reg.lan/os/debian:1.0",
            "--sign-key",
            "k.key",
            "--insecure-registry",
            "reg.lan",
        ])
        .unwrap();
        let Some(Command::Push(a)) = cli.command else {
            panic!("expected push");
        };
        assert_eq!(
            a.layouts,
            [
                PathBuf::from("out-amd64/x.upgrade"),
                PathBuf::from("out-arm64/x.upgrade")
            ]
        );
        assert_eq!(a.reference, "reg.lan/os/debian:1.0");
        assert_eq!(a.sign_key, Some(PathBuf::from("k.key")));
        // A layout and a reference, at least.
        assert!(Cli::try_parse_checked(["build-image", "push", "reg/x:1"]).is_err());

        let cli =
            Cli::try_parse_checked(["build-image", "sign", "--key", "k", "r/x@sha256:ab"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Sign(_))));
        assert!(Cli::try_parse_checked(["build-image", "sign", "r/x@sha256:ab"]).is_err());
        let cli = Cli::try_parse_checked(["build-image", "keygen"]).unwrap();
        let Some(Command::Keygen(k)) = cli.command else {
            panic!("expected keygen");
        };
        assert_eq!(k.output, PathBuf::from("build-image"));

        let cli = Cli::try_parse_checked([
            "build-image",
            "--push",
            "reg/os:1",
            "--sign-key",
            "k.key",
            "--revision",
            "abc123",
            "--format",
            "upgrade",
        ])
        .unwrap();
        assert_eq!(cli.build.push.as_deref(), Some("reg/os:1"));
        assert_eq!(cli.build.revision.as_deref(), Some("abc123"));
        assert_eq!(cli.build.format, [build::Format::Upgrade]);
        // --sign-key signs what --push pushes.
        assert!(Cli::try_parse_checked(["build-image", "--sign-key", "k.key"]).is_err());
    }

    #[test]
    fn build_options_do_not_mix_with_other_subcommands() {
        let e = Cli::try_parse_checked([
            "build-image",
            "--flavor",
            "ubuntu",
            "--format",
            "iso",
            "rootfs",
            "img",
            "-o",
            "x",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        // Global options still go anywhere.
        Cli::try_parse_checked(["build-image", "--json", "rootfs", "img", "-o", "x"]).unwrap();
        Cli::try_parse_checked(["build-image", "rootfs", "img", "-o", "x", "--json"]).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("131072"), Ok(131072));
        assert_eq!(parse_size("128K"), Ok(131072));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn json_documents_are_one_line_with_api_version_and_kind() {
        let e = anyhow::anyhow!("root cause").context("outer");
        let line = to_json(&ErrorDoc::of(&e, 1)).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["apiVersion"], crate::API_VERSION);
        assert_eq!(v["kind"], "Error");
        assert_eq!(v["message"], "outer: root cause");
        assert_eq!(v["causes"], serde_json::json!(["outer", "root cause"]));
        assert_eq!(v["exitCode"], 1);
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command();
        cmd.build();
        for line in cmd.render_long_help().to_string().lines() {
            assert!(line.chars().count() <= 80, "build-image: {line:?}");
        }
        for sub in [
            "build",
            "rootfs",
            "inspect",
            "push",
            "sign",
            "keygen",
            "completions",
        ] {
            let mut cmd = Cli::command();
            cmd.build();
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{sub}: {line:?}");
            }
        }
    }

    #[test]
    fn man_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "build-image-build.1",
                "build-image-completions.1",
                "build-image-inspect.1",
                "build-image-keygen.1",
                "build-image-push.1",
                "build-image-rootfs.1",
                "build-image-sign.1",
                "build-image.1"
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("build-image-rootfs.1")).unwrap();
        assert!(page.contains(".TH build-image-rootfs"), "{page}");
        assert!(page.contains("block\\-size"), "{page}");
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "build-image",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--insecure-registry") && bash.contains("rootfs"));
    }
}

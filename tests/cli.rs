//! The command line: help, usage errors, bad references and bad local
//! inputs. None of these needs a registry.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use common::*;

/// Writes `bytes` to `TMP/name`; returns its path and the `rootfs-tar:`
/// source naming it.
fn tar_source(env: &TestEnv, name: &str, bytes: &[u8]) -> (PathBuf, String) {
    let file = env.tmp.path().join(name);
    fs::write(&file, bytes).unwrap();
    let src = format!("rootfs-tar:{}", file.display());
    (file, src)
}

/// Runs `build-image FLAG rootfs` of a one-file tar into `OUT/out.sqfs`;
/// returns that path and the output.
fn small_rootfs(env: &TestEnv, flag: &str) -> (PathBuf, Output) {
    let tar = LayerBuilder::new().dir("etc").file("etc/a", "a").tar();
    let (_, src) = tar_source(env, "r.tar", &tar);
    let out = env.out_path("out.sqfs");
    let o = rootfs(env, &[flag], &src, out.to_str().unwrap());
    (out, o)
}

/// Runs `build-image FLAGS… rootfs SRC -o OUT`.
fn rootfs(env: &TestEnv, flags: &[&str], src: &str, out: &str) -> Output {
    let mut args = flags.to_vec();
    args.extend(["rootfs", src, "-o", out]);
    env.run(&args)
}

fn help_lines_fit(args: &[&str]) {
    let env = TestEnv::new();
    let mut cmd = env.command();
    cmd.env_remove("COLUMNS").args(args);
    let o = run_cmd(cmd);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(!text.trim().is_empty(), "{args:?} printed nothing");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{args:?}: line longer than 80 columns ({}):\n{line}",
            line.chars().count()
        );
    }
}

#[test]
fn help_works_and_fits_80_columns() {
    help_lines_fit(&["--help"]);
    help_lines_fit(&["rootfs", "--help"]);
    help_lines_fit(&["inspect", "--help"]);
    help_lines_fit(&["push", "--help"]);
    help_lines_fit(&["sign", "--help"]);
    help_lines_fit(&["keygen", "--help"]);
    help_lines_fit(&["help", "rootfs"]);
}

#[test]
fn help_names_the_subcommands_and_options() {
    let o = TestEnv::new().run_raw(&["--help"]);
    assert_ok(&o);
    let text = stdout(&o);
    for word in ["rootfs", "inspect", "--cache-dir", "--json", "--quiet"] {
        assert_mentions(&text, word);
    }
    let o = TestEnv::new().run_raw(&["rootfs", "--help"]);
    assert_ok(&o);
    let text = stdout(&o);
    for word in [
        "--arch",
        "--compression",
        "--block-size",
        "--insecure-registry",
        "oci-layout:",
        "rootfs-tar:",
    ] {
        assert_mentions(&text, word);
    }
}

/// Without a subcommand, build-image builds: its flags are checked before
/// anything is fetched or written.
#[test]
fn no_subcommand_builds_and_names_a_bad_flavor() {
    let env = TestEnv::new();
    let out = env.out.join("dist");
    let o = env.run(&["--flavor", "no-such-flavor", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_mentions(&stderr(&o), "no-such-flavor");
    assert!(!out.exists(), "the output directory was created");
    // A release that has no flavor: the message lists the ones there are,
    // the alias with the release it stands for.
    let o = env.run(&["--flavor", "debian-11", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = stderr(&o);
    let alias = build_image::flavor::ALIASES
        .iter()
        .find(|(a, _)| *a == "debian")
        .unwrap()
        .1;
    for want in [
        "\"debian-11\"".to_string(),
        format!("debian ({alias})"),
        "debian-12".into(),
        "debian-13".into(),
        "ubuntu".into(),
    ] {
        assert_mentions(&err, &want);
    }
    assert!(!out.exists(), "the output directory was created");
}

/// `--config` is checked with os-agent's own rules before anything is
/// fetched: an unknown field (file, line, column and field named), a bad
/// value (the field's path), an agent without a server.
#[test]
fn a_bad_node_config_fails_the_build_at_once() {
    let env = TestEnv::new();
    let out = env.out.join("dist");
    for (text, want) in [
        (
            "hostname: edge-1\nusers:\n  - name: admin\n    ssh_keys: [x]\n",
            &["node.yaml", "line 4", "ssh_keys"][..],
        ),
        (
            "users:\n  - name: admin\n    passwd: hunter2\n",
            &["node.yaml", "users[0].passwd", "crypt"][..],
        ),
        (
            "k3s: {role: agent, token: t}\n",
            &["node.yaml", "k3s.server"][..],
        ),
    ] {
        let cfg = env.tmp.path().join("node.yaml");
        fs::write(&cfg, text).unwrap();
        let o = env.run(&[
            "--components",
            "oci-layout:/nonexistent",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let err = stderr(&o);
        for w in want {
            assert_mentions(&err, w);
        }
        assert!(
            !err.contains("components"),
            "the config is checked before any input is resolved:\n{err}"
        );
        assert!(list_files(&out).is_empty());
    }
}

/// `--push` and `--sign-key` mistakes stop the build before anything is
/// fetched or written.
#[test]
fn push_options_are_checked_before_the_build() {
    let env = TestEnv::new();
    let out = env.out.join("dist");
    let out_s = out.to_str().unwrap();
    let o = env.run(&["--format", "disk", "--push", "127.0.0.1:1/x:1", "-o", out_s]);
    assert_mentions(&assert_fails(&o), "add upgrade to --format");
    let digest = format!("127.0.0.1:1/x@sha256:{}", "a".repeat(64));
    let o = env.run(&["--push", &digest, "-o", out_s]);
    assert_mentions(&assert_fails(&o), "give a tag");
    let key = env.out.join("not-a.key");
    fs::write(&key, "hello\n").unwrap();
    let o = env.run(&[
        "--push",
        "127.0.0.1:1/x:1",
        "--sign-key",
        key.to_str().unwrap(),
        "-o",
        out_s,
    ]);
    let e = assert_fails(&o);
    assert_mentions(&e, "--sign-key");
    assert_mentions(&e, key.to_str().unwrap());
    assert_mentions(&e, "not a PEM file");
    assert!(!out.exists(), "the output directory was created");
    // push checks its key before it reads a layout.
    let o = env.run(&[
        "push",
        "no-such.upgrade",
        "127.0.0.1:1/x:1",
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert_mentions(&assert_fails(&o), "not a PEM file");
}

#[test]
fn rootfs_without_output_is_a_usage_error() {
    let env = TestEnv::new();
    let o = env.run(&["rootfs", "127.0.0.1:1/x:latest"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_mentions_any(&stderr(&o), &["-o", "--output"]);
    env.assert_out_empty();
}

#[test]
fn unknown_option_is_a_usage_error() {
    let o = run(&["rootfs", "x", "-o", "y", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_mentions(&stderr(&o), "--no-such-flag");
}

/// Exit 1 or 2, a message naming one of `what` (`|`-separated), no panic,
/// no output file.
fn assert_rejected(env: &TestEnv, args: &[&str], what: &str) {
    let o = env.run(args);
    let code = o.status.code();
    assert!(
        code == Some(1) || code == Some(2),
        "{args:?}: expected exit 1 or 2, got {}:\n{}",
        o.status,
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    assert_mentions_any(&err, &what.split('|').collect::<Vec<_>>());
    let left = list_files(&env.out);
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn bad_image_references_are_rejected() {
    for image in [
        "127.0.0.1:5000/UPPER/case:tag",
        "127.0.0.1:5000/repo:bad tag",
        "127.0.0.1:5000/repo@sha256:nothex",
        "127.0.0.1:5000/repo@sha256:abcd",
        "127.0.0.1:5000/repo:tag:extra",
        "127.0.0.1:5000//repo",
        "docker://",
    ] {
        let env = TestEnv::new();
        let what = if image == "docker://" {
            "docker://|empty"
        } else {
            image
        };
        assert_rejected(&env, &["rootfs", image, "-o", "out.sqfs"], what);
    }
    let env = TestEnv::new();
    let o = env.run(&["rootfs", "", "-o", "out.sqfs"]);
    assert!(matches!(o.status.code(), Some(1) | Some(2)), "{o:?}");
    assert!(!env.out_path("out.sqfs").exists());
    // A path that is not there is said to be missing, not read as a
    // registry reference.
    for missing in [
        "/nonexistent/debian-trixie-arm64-rpi.img",
        "./out/x.raw",
        "x.iso",
    ] {
        let env = TestEnv::new();
        assert_rejected(&env, &["inspect", missing], "no such file");
    }
}

#[test]
fn bad_option_values_are_rejected() {
    for (args, what) in [
        (&["--arch", "sparc"][..], "sparc"),
        (&["--compression", "lz5"][..], "lz5"),
        (&["--compression", "zstd:99"][..], "99"),
        (&["--compression", "gzip:0"][..], "gzip:0"),
        (&["--block-size", "1000"][..], "1000|block size"),
        (&["--block-size", "2M"][..], "2M|2097152"),
    ] {
        let env = TestEnv::new();
        let (_, src) = tar_source(&env, "r.tar", &LayerBuilder::new().file("a", "a").tar());
        let mut a = vec!["rootfs", src.as_str(), "-o", "out.sqfs"];
        a.extend_from_slice(args);
        assert_rejected(&env, &a, what);
    }
}

#[test]
fn rootfs_tar_missing_file() {
    let env = TestEnv::new();
    let o = rootfs(&env, &[], "rootfs-tar:/nonexistent/rootfs.tar", "out.sqfs");
    let err = assert_fails(&o);
    assert_mentions(&err, "/nonexistent/rootfs.tar");
    env.assert_out_empty();
}

#[test]
fn rootfs_tar_garbage_file() {
    let env = TestEnv::new();
    let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let (file, src) = tar_source(&env, "garbage.tar", &junk);
    let err = assert_fails(&rootfs(&env, &[], &src, "out.sqfs"));
    assert_mentions(&err, file.to_str().unwrap());
    env.assert_out_empty();
}

#[test]
fn rootfs_tar_truncated_leaves_no_partial_output() {
    let env = TestEnv::new();
    let layer = LayerBuilder::new()
        .dir("data")
        .file("data/a", vec![b'a'; 2_000_000])
        .file(
            "data/b",
            (0..2_000_000u32)
                .map(|i| (i % 241) as u8)
                .collect::<Vec<u8>>(),
        );
    for (name, bytes) in [
        ("cut.tar", {
            let t = layer.tar();
            t[..t.len() * 3 / 4].to_vec()
        }),
        ("cut.tar.gz", {
            let t = Compression::Gzip.compress(&layer.tar());
            t[..t.len() * 3 / 4].to_vec()
        }),
        ("cut.tar.zst", {
            let t = Compression::Zstd.compress(&layer.tar());
            t[..t.len() * 3 / 4].to_vec()
        }),
    ] {
        let (file, src) = tar_source(&env, name, &bytes);
        let err = assert_fails(&rootfs(&env, &[], &src, "out.sqfs"));
        assert_mentions(&err, file.to_str().unwrap());
        let left = list_files(&env.out);
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}

#[test]
fn output_onto_a_directory_fails_cleanly() {
    let env = TestEnv::new();
    let (_, src) = tar_source(&env, "r.tar", &LayerBuilder::new().file("a", "a").tar());
    let dir = env.out_path("a-directory");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("keep"), "keep").unwrap();
    let err = assert_fails(&rootfs(&env, &[], &src, dir.to_str().unwrap()));
    assert_mentions(&err, dir.to_str().unwrap());
    assert_eq!(fs::read(dir.join("keep")).unwrap(), b"keep");
    let left = list_files(&env.out);
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn quiet_success_prints_nothing_on_stderr() {
    let env = TestEnv::new();
    let (out, o) = small_rootfs(&env, "--quiet");
    assert_ok(&o);
    assert!(out.is_file());
    assert_eq!(stderr(&o), "", "--quiet printed on stderr");
}

#[test]
fn rootfs_tar_json_result() {
    let env = TestEnv::new();
    let (out, o) = small_rootfs(&env, "--json");
    assert_ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)));
    assert_eq!(j["apiVersion"], "build-image/v1alpha1");
    assert_eq!(j["kind"], "RootfsResult");
    assert_eq!(
        j["artifacts"][0]["digest"],
        format!("sha256:{}", sha256_file(&out))
    );
    assert_eq!(j["artifacts"][0]["size"], fs::metadata(&out).unwrap().len());
    assert_eq!(j["artifacts"][0]["format"], "squashfs");
}

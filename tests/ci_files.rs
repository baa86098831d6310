//! The release workflow and the Containerfile that docs/ci.md documents:
//! what can be checked without a GitHub runner or a container engine.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The step names docs/ci.md lists in its table (bold cells), in order.
fn documented_steps() -> Vec<String> {
    let doc = read("docs/ci.md");
    let mut steps = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        if let Some(start) = line.find("| **") {
            let rest = &line[start + 4..];
            let end = rest.find("**").expect("closing **");
            steps.push(rest[..end].to_string());
        }
    }
    steps
}

#[test]
fn the_release_workflow_is_valid_yaml_with_the_documented_steps() {
    let text = read(".github/workflows/release.yml");
    let wf: serde_json::Value = serde_saphyr::from_str(&text).expect("valid YAML");
    assert_eq!(wf["name"], "release");
    // `on` must stay a key (YAML 1.1 would read a bare on as true).
    assert!(wf["on"]["push"]["tags"][0] == "v*", "{}", wf["on"]);
    let jobs = wf["jobs"].as_object().expect("jobs");
    assert_eq!(
        jobs.keys().cloned().collect::<BTreeSet<_>>(),
        ["image", "release"].map(String::from).into()
    );
    assert_eq!(
        wf["jobs"]["image"]["strategy"]["matrix"]["arch"],
        serde_json::json!(["amd64", "arm64"])
    );
    assert_eq!(wf["jobs"]["release"]["needs"], "image");

    let mut names = Vec::new();
    let mut commands = String::new();
    for job in ["image", "release"] {
        for step in wf["jobs"][job]["steps"].as_array().expect("steps") {
            let name = step["name"].as_str().expect("every step is named");
            assert!(
                step.get("run").is_some() ^ step.get("uses").is_some(),
                "step {name}: exactly one of run and uses"
            );
            names.push(name.to_string());
            if let Some(run) = step["run"].as_str() {
                commands.push_str(run);
            }
        }
    }
    assert_eq!(
        names,
        documented_steps(),
        "docs/ci.md and the workflow differ"
    );
    for cmd in [
        "cargo xtask components",
        "cargo build --release --locked",
        "SOURCE_DATE_EPOCH=",
        "./target/release/build-image --json",
        "--arch \"${{ matrix.arch }}\"",
        "sha256sum",
        "build-image --json push dist/*.upgrade",
        "gh release create",
    ] {
        assert!(commands.contains(cmd), "the workflow does not run {cmd:?}");
    }
}

/// A Containerfile's instructions, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (kw, args) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
                out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
                cur.clear();
            }
        }
    }
    assert!(cur.is_empty(), "the Containerfile ends in a continuation");
    out
}

#[test]
fn the_containerfile_parses_and_copies_what_exists() {
    let text = read("Containerfile");
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "ENTRYPOINT",
        "CMD",
        "USER",
        "LABEL",
        "EXPOSE",
        "VOLUME",
        "SHELL",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ONBUILD",
    ];
    let mut stages: Vec<String> = Vec::new();
    let mut env = String::new();
    let mut entrypoint = None;
    let instrs = instructions(&text);
    assert_eq!(instrs[0].0, "FROM", "the first instruction is FROM");
    for (kw, args) in &instrs {
        assert!(known.contains(&kw.as_str()), "unknown instruction {kw}");
        match kw.as_str() {
            "FROM" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                assert!(words[0].contains(':'), "FROM {args}: pin a tag");
                if words.len() == 3 {
                    assert_eq!(words[1].to_ascii_uppercase(), "AS", "FROM {args}");
                    stages.push(words[2].to_string());
                } else {
                    assert_eq!(words.len(), 1, "FROM {args}");
                }
            }
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (from, rest) = match words[0].strip_prefix("--from=") {
                    Some(stage) => (Some(stage), &words[1..]),
                    None => (None, &words[..]),
                };
                assert!(rest.len() >= 2, "COPY {args}: a source and a destination");
                match from {
                    Some(stage) => assert!(
                        stages.iter().any(|s| s == stage),
                        "COPY --from={stage}: no earlier stage of that name"
                    ),
                    None => {
                        for src in &rest[..rest.len() - 1] {
                            assert!(
                                root().join(src).exists(),
                                "COPY {src}: not in the repository"
                            );
                        }
                    }
                }
            }
            "ENV" => env.push_str(args),
            "ENTRYPOINT" => {
                let v: Vec<String> = serde_json::from_str(args).expect("ENTRYPOINT in JSON form");
                entrypoint = Some(v);
            }
            _ => {}
        }
    }
    assert_eq!(stages, ["build"]);
    assert!(text.contains("cargo xtask components --output /out/components"));
    assert!(env.contains("BUILD_IMAGE_COMPONENTS=oci-layout:/usr/share/build-image/components"));
    assert_eq!(
        entrypoint.as_deref(),
        Some(&["build-image".to_string()][..])
    );
    // What the build stage copies must not include the host's target/.
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}

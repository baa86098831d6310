//! Dependency resolution: the packages to install so that every requested
//! package has its `Pre-Depends` and `Depends` met, given what the image
//! already has installed.
//!
//! For each dependency group: an installed (or already chosen) package that
//! satisfies any alternative wins; otherwise the alternatives are tried in
//! order, each with real packages before virtual providers and the highest
//! version first, backtracking when a choice's own dependencies cannot be
//! met. The result is ordered dependencies-first, ties broken by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::depends::{Dep, Relation};
use super::packages::{MultiArch, Package};
use super::version;

/// What to resolve for.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Target architecture (`arm64`); packages of arch `all` always fit.
    pub arch: String,
    /// Names the repository in messages (`bookworm main`).
    pub source: String,
}

/// Why a request cannot be installed: the chain of dependencies that led
/// to the failure, then the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ResolveError {
    /// The requested package, then `depends on X (>= 1)` steps.
    pub chain: Vec<String>,
    pub reason: String,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot install {}: ",
            self.chain.first().map_or("", |s| s)
        )?;
        for step in self.chain.iter().skip(1) {
            write!(f, "{step} → ")?;
        }
        f.write_str(&self.reason)
    }
}

/// Name → packages, and provided name → (provider, its Provides entry).
struct Index<'a> {
    by_name: HashMap<&'a str, Vec<&'a Package>>,
    providers: HashMap<&'a str, Vec<(&'a Package, &'a Dep)>>,
}

impl<'a> Index<'a> {
    fn new(pkgs: impl Iterator<Item = &'a Package>) -> Self {
        let mut by_name: HashMap<&str, Vec<&Package>> = HashMap::new();
        let mut providers: HashMap<&str, Vec<(&Package, &Dep)>> = HashMap::new();
        for p in pkgs {
            by_name.entry(&p.name).or_default().push(p);
            for d in &p.provides {
                providers.entry(&d.name).or_default().push((p, d));
            }
        }
        Index { by_name, providers }
    }
}

#[derive(Clone, Default)]
struct State<'a> {
    chosen: BTreeMap<&'a str, &'a Package>,
    /// Chosen package → chosen packages it needs.
    edges: BTreeMap<&'a str, BTreeSet<&'a str>>,
}

struct Resolver<'a> {
    opts: &'a ResolveOptions,
    avail: Index<'a>,
    installed: Index<'a>,
    state: State<'a>,
}

/// Who satisfies a dependency already.
enum Have<'a> {
    Installed,
    Chosen(&'a str),
}

/// Resolves `requests` (package names, optionally `name=version`) against
/// `available` (the repository's packages for the target arch and `all`)
/// and `installed` (from the image's dpkg status). Returns the packages to
/// install, dependencies before dependents.
pub fn resolve<'a>(
    requests: &[String],
    available: impl IntoIterator<Item = &'a Package>,
    installed: &'a [Package],
    opts: &'a ResolveOptions,
) -> Result<Vec<Package>, ResolveError> {
    let arch = opts.arch.as_str();
    let mut r = Resolver {
        opts,
        avail: Index::new(
            available
                .into_iter()
                .filter(|p| p.architecture == arch || p.architecture == "all"),
        ),
        installed: Index::new(installed.iter()),
        state: State::default(),
    };
    let mut sorted: Vec<&String> = requests.iter().collect();
    sorted.sort();
    sorted.dedup();
    for req in sorted {
        let (name, version) = match req.split_once('=') {
            Some((n, v)) => (n.trim(), Some((Relation::Eq, v.trim().to_string()))),
            None => (req.trim(), None),
        };
        let dep = Dep {
            name: name.to_string(),
            arch_qual: None,
            version,
            arches: Vec::new(),
        };
        let chain = vec![req.clone()];
        r.group(None, &[dep], &chain, "")?;
    }
    r.check_conflicts(installed)?;
    Ok(r.order())
}

impl<'a> Resolver<'a> {
    fn err(&self, chain: &[String], reason: String) -> ResolveError {
        ResolveError {
            chain: chain.to_vec(),
            reason,
        }
    }

    /// Whether `p` can satisfy `d` as far as architecture goes.
    fn arch_ok(&self, d: &Dep, p: &Package) -> bool {
        let native = p.architecture == self.opts.arch || p.architecture == "all";
        match d.arch_qual.as_deref() {
            None | Some("native") => native || p.multi_arch == MultiArch::Foreign,
            Some("any") => {
                native || matches!(p.multi_arch, MultiArch::Allowed | MultiArch::Foreign)
            }
            Some(a) => p.architecture == a,
        }
    }

    fn real_ok(&self, d: &Dep, p: &Package) -> bool {
        self.arch_ok(d, p) && d.version_ok(&p.version)
    }

    /// A Provides entry satisfies `d` when unversioned `d`, or `(= v)`
    /// provides with `v` in range.
    fn provide_ok(&self, d: &Dep, p: &Package, prov: &Dep) -> bool {
        if !self.arch_ok(
            &Dep {
                arch_qual: d.arch_qual.clone(),
                ..prov.clone()
            },
            p,
        ) {
            return false;
        }
        match (&d.version, &prov.version) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some((_, v))) => d.version_ok(v),
        }
    }

    fn satisfied(&self, d: &Dep) -> Option<Have<'a>> {
        if let Some(p) = self.state.chosen.get(d.name.as_str()) {
            if self.real_ok(d, p) {
                return Some(Have::Chosen(&p.name));
            }
        }
        for (name, p) in &self.state.chosen {
            if p.provides
                .iter()
                .any(|prov| prov.name == d.name && self.provide_ok(d, p, prov))
            {
                return Some(Have::Chosen(name));
            }
        }
        let upgraded = |p: &Package| self.state.chosen.contains_key(p.name.as_str());
        if let Some(ps) = self.installed.by_name.get(d.name.as_str()) {
            if ps.iter().any(|p| !upgraded(p) && self.real_ok(d, p)) {
                return Some(Have::Installed);
            }
        }
        if let Some(ps) = self.installed.providers.get(d.name.as_str()) {
            if ps
                .iter()
                .any(|(p, prov)| !upgraded(p) && self.provide_ok(d, p, prov))
            {
                return Some(Have::Installed);
            }
        }
        None
    }

    /// Candidates for `d` in preference order, or why there is none.
    fn candidates(&self, d: &Dep) -> Result<Vec<&'a Package>, String> {
        let mut real: Vec<&Package> = self
            .avail
            .by_name
            .get(d.name.as_str())
            .map(|ps| ps.iter().copied().filter(|p| self.real_ok(d, p)).collect())
            .unwrap_or_default();
        real.sort_by(|a, b| version::compare(&b.version, &a.version));
        let mut virt: Vec<&Package> = self
            .avail
            .providers
            .get(d.name.as_str())
            .map(|ps| {
                ps.iter()
                    .filter(|(p, prov)| self.provide_ok(d, p, prov))
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
        virt.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(version::compare(&b.version, &a.version))
        });
        let mut out = real;
        out.extend(virt);
        // One version per name: drop candidates clashing with a choice.
        out.retain(|p| {
            self.state
                .chosen
                .get(p.name.as_str())
                .is_none_or(|c| std::ptr::eq(*c, *p))
        });
        if !out.is_empty() {
            return Ok(out);
        }
        let source = &self.opts.source;
        let arch = &self.opts.arch;
        if let Some(c) = self.state.chosen.get(d.name.as_str()) {
            return Err(format!(
                "{} {} is already selected and does not satisfy {d}",
                c.name, c.version
            ));
        }
        let versions: Vec<&str> = self
            .avail
            .by_name
            .get(d.name.as_str())
            .map(|ps| ps.iter().map(|p| p.version.as_str()).collect())
            .unwrap_or_default();
        if !versions.is_empty() {
            return Err(format!(
                "no version of {} in {source} satisfies {d} for {arch} (available: {})",
                d.name,
                versions.join(", ")
            ));
        }
        if self.avail.providers.contains_key(d.name.as_str()) {
            return Err(format!(
                "{} is a virtual package and no provider in {source} satisfies {d}",
                d.name
            ));
        }
        Err(format!("no package {} for {arch} in {source}", d.name))
    }

    /// Meets one dependency group of `from` (None for a request).
    fn group(
        &mut self,
        from: Option<&'a str>,
        alts: &[Dep],
        chain: &[String],
        label: &str,
    ) -> Result<(), ResolveError> {
        let alts: Vec<&Dep> = alts
            .iter()
            .filter(|d| d.applies_to(&self.opts.arch))
            .collect();
        if alts.is_empty() {
            return Ok(());
        }
        let mut chain = chain.to_vec();
        if !label.is_empty() {
            let text: Vec<String> = alts.iter().map(|d| d.to_string()).collect();
            chain.push(format!("{label} {}", text.join(" | ")));
        }
        for d in &alts {
            if let Some(have) = self.satisfied(d) {
                if let (Some(from), Have::Chosen(to)) = (from, have) {
                    self.state.edges.entry(from).or_default().insert(to);
                }
                return Ok(());
            }
        }
        let mut first_err = None;
        for d in &alts {
            let cands = match self.candidates(d) {
                Ok(c) => c,
                Err(reason) => {
                    first_err.get_or_insert_with(|| self.err(&chain, reason));
                    continue;
                }
            };
            for cand in cands {
                let snapshot = self.state.clone();
                match self.choose(cand, &chain) {
                    Ok(()) => {
                        if let Some(from) = from {
                            self.state.edges.entry(from).or_default().insert(&cand.name);
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        self.state = snapshot;
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| self.err(&chain, "no candidate".into())))
    }

    fn choose(&mut self, p: &'a Package, chain: &[String]) -> Result<(), ResolveError> {
        if self.state.chosen.contains_key(p.name.as_str()) {
            return Ok(());
        }
        self.state.chosen.insert(&p.name, p);
        self.state.edges.entry(&p.name).or_default();
        let mut chain = chain.to_vec();
        if chain.len() > 1 || chain.first() != Some(&p.name) {
            // Name the version chosen when it is not obvious.
            if let Some(last) = chain.last_mut() {
                if !last.contains(&p.name) || last.contains('|') {
                    last.push_str(&format!(" (chose {} {})", p.name, p.version));
                }
            }
        }
        for g in &p.pre_depends {
            self.group(Some(&p.name), g, &chain, "pre-depends on")?;
        }
        for g in &p.depends {
            self.group(Some(&p.name), g, &chain, "depends on")?;
        }
        Ok(())
    }

    /// Conflicts and Breaks among the chosen packages and what stays
    /// installed.
    fn check_conflicts(&self, installed: &[Package]) -> Result<(), ResolveError> {
        let staying = installed
            .iter()
            .filter(|p| !self.state.chosen.contains_key(p.name.as_str()));
        let all: Vec<&Package> = self.state.chosen.values().copied().chain(staying).collect();
        for p in self.state.chosen.values() {
            for (field, groups) in [("conflicts with", &p.conflicts), ("breaks", &p.breaks)] {
                for d in groups
                    .iter()
                    .flatten()
                    .filter(|d| d.applies_to(&self.opts.arch))
                {
                    for q in &all {
                        if q.name == p.name {
                            continue;
                        }
                        let hit = (q.name == d.name && self.real_ok(d, q))
                            || q.provides
                                .iter()
                                .any(|prov| prov.name == d.name && self.provide_ok(d, q, prov));
                        if hit {
                            return Err(self.err(
                                std::slice::from_ref(&p.name),
                                format!(
                                    "{} {} {field} {d}, which {} {} satisfies",
                                    p.name, p.version, q.name, q.version
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Dependencies first; among the ready ones, by name; a cycle is broken
    /// at its smallest name.
    fn order(&self) -> Vec<Package> {
        let mut pending: BTreeMap<&str, BTreeSet<&str>> = self
            .state
            .edges
            .iter()
            .map(|(k, v)| (*k, v.iter().copied().filter(|d| d != k).collect()))
            .collect();
        let mut out = Vec::new();
        while !pending.is_empty() {
            let batch = match pending.iter().find(|(_, deps)| deps.is_empty()) {
                Some((k, _)) => vec![*k],
                None => sink_cycle(&pending),
            };
            for next in batch {
                pending.remove(next);
                for deps in pending.values_mut() {
                    deps.remove(next);
                }
                out.push(self.state.chosen[next].clone());
            }
        }
        out
    }
}

/// When every pending package waits for another: the members (in name
/// order) of a cycle that depends on no other pending cycle — a sink of the
/// graph of strongly connected components, so it can be installed whole.
fn sink_cycle<'a>(pending: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<&'a str> {
    let reach = |from: &'a str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            for d in pending.get(n).into_iter().flatten() {
                if seen.insert(*d) {
                    stack.push(d);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<&str>> = pending.keys().map(|k| (*k, reach(k))).collect();
    for (k, r) in &reaches {
        if r.contains(k)
            && r.iter()
                .all(|u| reaches.get(u).is_some_and(|ru| ru.contains(k)))
        {
            return r.iter().copied().collect();
        }
    }
    pending.keys().next().copied().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::packages::parse_index;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// `name version arch [field: value]…` lines, `;`-separated fields.
    fn index(spec: &str) -> Vec<Package> {
        let mut text = String::new();
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut parts = line.split(';');
            let mut head = parts.next().unwrap().split_whitespace();
            let (n, v, a) = (
                head.next().unwrap(),
                head.next().unwrap(),
                head.next().unwrap(),
            );
            text += &format!("Package: {n}\nVersion: {v}\nArchitecture: {a}\nFilename: pool/{n}.deb\nSize: 1\nSHA256: {SHA}\n");
            for f in parts {
                text += f.trim();
                text += "\n";
            }
            text += "\n";
        }
        parse_index(&text, "test").unwrap()
    }

    fn run(req: &[&str], avail: &str, installed: &str) -> Result<Vec<String>, String> {
        let opts = ResolveOptions {
            arch: "arm64".into(),
            source: "bookworm main".into(),
        };
        let reqs: Vec<String> = req.iter().map(|s| s.to_string()).collect();
        resolve(&reqs, &index(avail), &index(installed), &opts)
            .map(|v| {
                v.iter()
                    .map(|p| format!("{}={}", p.name, p.version))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn closure_order_and_installed() {
        let avail = "
            app 1 arm64; Depends: libfoo (>= 2), libc6
            libfoo 1 arm64
            libfoo 2 arm64; Depends: libc6 (>= 2.36)
            libc6 2.36 arm64; Depends: libgcc-s1
            libgcc-s1 12 arm64; Depends: libc6 (>= 2.35)
            other 1 amd64";
        assert_eq!(
            run(&["app"], avail, "").unwrap(),
            ["libc6=2.36", "libgcc-s1=12", "libfoo=2", "app=1"]
        );
        // libc6 installed: not reinstalled.
        assert_eq!(
            run(
                &["app"],
                avail,
                "libc6 2.36 arm64; Status: install ok installed"
            )
            .unwrap(),
            ["libfoo=2", "app=1"]
        );
        // Installed but too old: upgraded.
        assert_eq!(
            run(&["libfoo"], avail, "libc6 2.30 arm64").unwrap(),
            ["libc6=2.36", "libgcc-s1=12", "libfoo=2"]
        );
        // Requested and already installed: nothing to do.
        assert!(run(&["libc6"], avail, "libc6 2.36 arm64")
            .unwrap()
            .is_empty());
        let e = run(&["other"], avail, "").unwrap_err();
        assert_eq!(
            e,
            "cannot install other: no package other for arm64 in bookworm main"
        );
    }

    #[test]
    fn alternatives_and_virtual() {
        let avail = "
            app 1 all; Depends: missing | mta, awk
            exim 4 arm64; Provides: mta
            postfix 3 arm64; Provides: mta
            mawk 1.3 arm64; Provides: awk
            gawk 5 arm64
            awk-real 1 arm64; Provides: awk";
        // Virtual: providers by name order.
        assert_eq!(
            run(&["app"], avail, "").unwrap(),
            ["awk-real=1", "exim=4", "app=1"]
        );
        // Installed provider wins.
        assert_eq!(
            run(&["app"], avail, "postfix 3 arm64; Provides: mta").unwrap(),
            ["awk-real=1", "app=1"]
        );
        // Real package over virtual.
        let avail2 = "app 1 all; Depends: gawk\ngawk 5 arm64\nother 1 arm64; Provides: gawk";
        assert_eq!(run(&["app"], avail2, "").unwrap(), ["gawk=5", "app=1"]);
    }

    #[test]
    fn versioned_provides() {
        let avail = "
            app 1 all; Depends: api (>= 2)
            old 1 arm64; Provides: api (= 1)
            new 1 arm64; Provides: api (= 3)
            plain 1 arm64; Provides: api";
        assert_eq!(run(&["app"], avail, "").unwrap(), ["new=1", "app=1"]);
        let e = run(
            &["app"],
            "app 1 all; Depends: api (>= 2)\nold 1 arm64; Provides: api (= 1)",
            "",
        )
        .unwrap_err();
        assert!(
            e.contains("api is a virtual package and no provider"),
            "{e}"
        );
    }

    #[test]
    fn backtracks_over_alternatives_and_reports_chain() {
        let avail = "
            app 1 all; Depends: a | b
            a 1 arm64; Depends: nothere
            b 1 arm64";
        assert_eq!(run(&["app"], avail, "").unwrap(), ["b=1", "app=1"]);
        let avail = "
            linux-image-arm64 6.1.119-1 arm64; Depends: linux-image-6.1.0-28-arm64 (= 6.1.119-1)
            linux-image-6.1.0-28-arm64 6.1.119-1 arm64; Depends: kmod, initramfs-tools | linux-initramfs-tool
            initramfs-tools 1 all";
        let e = run(&["linux-image-arm64"], avail, "").unwrap_err();
        assert_eq!(
            e,
            "cannot install linux-image-arm64: depends on linux-image-6.1.0-28-arm64 (= 6.1.119-1) \
             → depends on kmod → no package kmod for arm64 in bookworm main"
        );
    }

    #[test]
    fn constraint_conflicts() {
        let avail = "
            app 1 all; Depends: x (>= 2), y
            y 1 all; Depends: x (<< 2)
            x 1 arm64
            x 2 arm64";
        let e = run(&["app"], avail, "").unwrap_err();
        assert!(
            e.starts_with(
                "cannot install app: depends on y → depends on x (<< 2) → x 2 is already selected"
            ),
            "{e}"
        );
        let e = run(
            &["app"],
            "app 1 all; Depends: x (>= 3)\nx 1 arm64\nx 2 arm64",
            "",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "no version of x in bookworm main satisfies x (>= 3) for arm64 (available: 1, 2)"
            ),
            "{e}"
        );
        // Conflicts with an installed package.
        let e = run(&["app"], "app 1 all; Conflicts: bad", "bad 1 arm64").unwrap_err();
        assert!(
            e.contains("app 1 conflicts with bad, which bad 1 satisfies"),
            "{e}"
        );
    }

    #[test]
    fn multiarch_and_arch_restrictions() {
        let avail = "
            app 1 arm64; Depends: perl:any, tool, only-amd64 [amd64], py:native
            perl 5 arm64; Multi-Arch: allowed
            py 3 arm64";
        let installed = "tool 1 amd64; Multi-Arch: foreign";
        assert_eq!(
            run(&["app"], avail, installed).unwrap(),
            ["perl=5", "py=3", "app=1"]
        );
        let e = run(&["app"], avail, "tool 1 amd64").unwrap_err();
        assert!(e.contains("no package tool for arm64"), "{e}");
    }

    #[test]
    fn deterministic_regardless_of_request_order() {
        let avail = "a 1 all; Depends: c\nb 1 all; Depends: c\nc 1 all\nd 1 all";
        let x = run(&["d", "b", "a"], avail, "").unwrap();
        let y = run(&["a", "b", "d"], avail, "").unwrap();
        assert_eq!(x, y);
        assert_eq!(x, ["c=1", "a=1", "b=1", "d=1"]);
        assert_eq!(run(&["c=1"], avail, "").unwrap(), ["c=1"]);
    }
}

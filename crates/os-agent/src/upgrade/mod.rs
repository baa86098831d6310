//! `os-agent upgrade REF|oci-layout:DIR`: moves the device to a new image
//! through its passive slot, in this order (docs/os-agent.md):
//!
//! 1. resolve REF to a digest and the device's platform, read the config;
//! 2. preflight, before anything is written: architecture and flavor,
//!    the agent version it needs, the size of the passive slot, a
//!    signature by a trusted key (when the device has keys), not a
//!    downgrade, not a digest whose trial failed, the running slot
//!    committed (the passive slot is never the running or the default
//!    one);
//! 3. the root filesystem streamed into the passive slot while hashed,
//!    synced, read back and hashed again; a mismatch marks the slot bad
//!    and arms nothing;
//! 4. kernel and initrd to the ESP (temporary names, synced, renamed),
//!    the record in state.json;
//! 5. the trial armed in both GRUB environment copies (primary first),
//!    and with `--reboot` a reboot. `health` commits the trial or rolls
//!    it back.

pub mod artifact;
pub mod progress;
pub mod record;
pub mod registry;
pub mod source;
pub mod target;
pub mod verify;
pub mod view;
pub mod write;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde_json::json;

use boot_contract::boot_env::{SLOTS, TRIAL_SLOT};

use crate::error::{Context, Error, Result};
use crate::fsutil::{create_dirs, Root};
use crate::{bail, bootenv, config, fault, install, state, system};
use progress::Reporter;
use record::{Slot, Upgrade};

/// Exit code: the upgrade was refused before anything was written.
pub const EXIT_REFUSED: i32 = 3;
/// Exit code: what was written did not match its digest; the slot is
/// marked bad, nothing is armed.
pub const EXIT_CORRUPT: i32 = 4;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub reference: String,
    /// `--esp DIR`.
    pub esp: Option<PathBuf>,
    pub reboot: bool,
    pub json: bool,
    /// `--insecure-registry HOST`: plain HTTP.
    pub insecure: Vec<String>,
    pub allow_downgrade: bool,
    /// Try a digest whose trial failed before.
    pub retry_failed: bool,
    /// On a trial boot, how long to wait for health to commit it before
    /// refusing (`--wait-trial SECS`; zero: refuse at once).
    pub wait_trial: std::time::Duration,
}

/// The lock that keeps two upgrades apart (and tells `status` whether an
/// upgrade is running).
pub const LOCK_FILE: &str = "/run/os-agent/upgrade.lock";

/// Holds [`LOCK_FILE`] while alive.
pub struct Lock(#[allow(dead_code)] std::fs::File);

/// Takes the upgrade lock; None when another process holds it.
pub fn try_lock(root: &Root) -> Result<Option<Lock>> {
    let path = root.join(LOCK_FILE);
    if let Some(d) = path.parent() {
        create_dirs(d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Lock(f))),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => bail!("locking {}: {e}", path.display()),
    }
}

/// What the preflight found: all an upgrade needs to go ahead.
struct Plan {
    digest: String,
    version: String,
    layers: artifact::Layers,
    signed: String,
}

/// Everything before the first write: resolution and preflight.
/// `Ok(Err(why))` is a refusal.
fn resolve(
    root: &Root,
    o: &Options,
    src: &mut dyn source::Source,
    slot_dev: &Path,
    esp: &Path,
    st: &state::State,
    rep: &mut Reporter,
) -> Result<std::result::Result<Plan, String>> {
    let arch = install::machine_arch();
    let top = src.top()?;
    let top_doc = top.parse("manifest")?;
    let (manifest, doc) = if top.is_index(&top_doc) {
        let d = match artifact::pick_platform(&top_doc, &top.digest, arch) {
            Ok(d) => d.digest.clone(),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let m = src.manifest(&d)?;
        let doc = m.parse("manifest")?;
        (m, doc)
    } else {
        (top.clone(), top_doc)
    };
    let (config_desc, layers) = match artifact::upgrade_layers(&doc, &manifest.digest) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let config_bytes = src.small_blob(&config_desc.digest, config_desc.size)?;
    let cfg = match artifact::parse_config(&config_bytes, &config_desc.digest) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    rep.step(
        "resolve",
        &format!(
            "{} is {} ({} {} {} {})",
            src.describe(),
            manifest.digest,
            cfg.flavor,
            cfg.release,
            cfg.arch,
            cfg.version
        ),
    );
    let info = system::image_info(root)?;
    let me = env!("CARGO_PKG_VERSION");
    if cfg.arch != arch {
        return Ok(Err(format!(
            "{} is for {}, this device is {arch}: wrong architecture",
            manifest.digest, cfg.arch
        )));
    }
    if let Some(f) = info.flavor.as_deref() {
        if f != cfg.flavor {
            return Ok(Err(format!(
                "{} is a {} image, this device runs {f}",
                manifest.digest, cfg.flavor
            )));
        }
    }
    if !verify::at_least(me, &cfg.min_agent_version) {
        return Ok(Err(format!(
            "{} needs os-agent {} or later; this is {me}",
            manifest.digest, cfg.min_agent_version
        )));
    }
    if layers.rootfs.digest != cfg.rootfs_digest || layers.rootfs.size != cfg.rootfs_size {
        return Ok(Err(format!(
            "{}: its config names root {} ({} bytes), its layer is {} ({} bytes)",
            manifest.digest,
            cfg.rootfs_digest,
            cfg.rootfs_size,
            layers.rootfs.digest,
            layers.rootfs.size
        )));
    }
    let room = write::slot_size(slot_dev)?;
    let need = cfg.min_slot_size.max(layers.rootfs.size);
    if need > room {
        return Ok(Err(format!(
            "{} needs a root slot of {need} bytes ({} MiB); {} has {room} bytes ({} MiB): too big",
            manifest.digest,
            need.div_ceil(1 << 20),
            slot_dev.display(),
            room >> 20
        )));
    }

    // Signature: the keys of the image and of the node config.
    let node = config::load(root, Some(esp))?.0;
    let config_keys = node.upgrade.map(|u| u.public_keys).unwrap_or_default();
    let keys = verify::load_keys(root, &config_keys)?;
    let signed = if keys.is_empty() {
        "not checked (no upgrade keys on this device)".to_string()
    } else {
        let mut digests = vec![manifest.digest.as_str()];
        if top.digest != manifest.digest {
            digests.push(top.digest.as_str());
        }
        match verify::check_signature(src, &keys, &digests)? {
            Ok(s) => format!("{} by {}", s.digest, s.key),
            Err(why) => {
                return Ok(Err(format!(
                    "{} is not signed by a trusted key ({} key{}): {why}",
                    manifest.digest,
                    keys.len(),
                    if keys.len() == 1 { "" } else { "s" }
                )))
            }
        }
    };

    if let Some(b) = st.records.bad(&manifest.digest) {
        if !o.retry_failed {
            return Ok(Err(format!(
                "{} (version {}) failed its trial {} time{} (latest {}: {}): not tried again; \
                 --retry-failed tries it anyway",
                b.digest,
                b.version.as_deref().unwrap_or("unknown"),
                b.failures,
                if b.failures == 1 { "" } else { "s" },
                b.at,
                b.reason
            )));
        }
    }
    if !o.allow_downgrade {
        if let Some(current) = info.version.as_deref() {
            if verify::compare_versions(&cfg.version, current) == Ordering::Less {
                return Ok(Err(format!(
                    "{} is version {}, older than the running {current}: a downgrade \
                     (--allow-downgrade to do it)",
                    manifest.digest, cfg.version
                )));
            }
        }
    }
    Ok(Ok(Plan {
        digest: manifest.digest,
        version: cfg.version,
        layers,
        signed,
    }))
}

/// What a run ended with, for the result line.
fn result_json(
    result: &str,
    o: &Options,
    slot: &str,
    plan: Option<&Plan>,
    reason: Option<&str>,
    code: i32,
) -> serde_json::Value {
    json!({
        "result": result,
        "reference": o.reference,
        "slot": slot,
        "digest": plan.map(|p| p.digest.clone()),
        "version": plan.map(|p| p.version.clone()),
        "reason": reason,
        "exitCode": code,
    })
}

/// The whole `upgrade` command; returns the exit code.
pub fn run(root: &Root, o: &Options) -> Result<i32> {
    let mut rep = Reporter::new(o.json);
    let Some(_lock) = try_lock(root)? else {
        bail!(
            "another os-agent upgrade is running ({} is locked)",
            LOCK_FILE
        );
    };
    let running = match system::running_slot(root)? {
        Some(s) if SLOTS.contains(&s.as_str()) => s,
        other => bail!(
            "upgrades need an A/B boot (bi.slot=a or b on the kernel command line), this is {}",
            other.as_deref().unwrap_or("none")
        ),
    };
    let passive = target::other(&running);
    let disk = target::locate(root, o.esp.as_deref(), true)?;
    let env = bootenv::read(disk.esp.dir())?;
    let mut st = state::load(root)?;
    // The armed upgrade whose trial is still to come, if there is one.
    let trial_pending = st.records.last_upgrade.as_ref().is_some_and(|u| {
        let slot = u.slot.as_deref();
        u.result == record::ARMED
            && (slot == Some(env.trial_slot())
                || slot == env.trial_booted()
                || slot == Some(running.as_str()))
    });
    let refuse = |st: &mut state::State,
                  rep: &mut Reporter,
                  plan: Option<&Plan>,
                  why: &str|
     -> Result<i32> {
        // A refusal does not replace the record of an armed upgrade whose
        // trial is still to come: its outcome is recorded there.
        if !trial_pending {
            st.records.last_upgrade = Some(Upgrade {
                reference: o.reference.clone(),
                digest: plan.map(|p| p.digest.clone()),
                version: plan.map(|p| p.version.clone()),
                slot: Some(passive.to_string()),
                result: record::REFUSED.into(),
                reason: Some(why.to_string()),
                at: record::now(),
                boot_count: st.boot_count,
            });
            state::save(root, st)?;
        }
        rep.result(
            result_json(record::REFUSED, o, passive, plan, Some(why), EXIT_REFUSED),
            &format!("os-agent: upgrade refused: {why}"),
        );
        Ok(EXIT_REFUSED)
    };
    let mut env = env;
    if env.default_slot() != Some(running.as_str()) && !o.wait_trial.is_zero() {
        // A job started again after the reboot into its own trial: wait
        // for health's verdict (a failed trial reboots, ending this too).
        rep.step(
            "trial",
            &format!(
                "slot {running} runs as a trial: waiting up to {} s for health to commit it",
                o.wait_trial.as_secs()
            ),
        );
        let until = std::time::Instant::now() + o.wait_trial;
        while env.default_slot() != Some(running.as_str()) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_secs(5));
            env = bootenv::read(disk.esp.dir())?;
        }
        st = state::load(root)?;
    }
    if env.default_slot() != Some(running.as_str()) {
        let why = format!(
            "slot {running} runs as a trial (the default is {}): let health commit it or roll it back first",
            env.default_slot().unwrap_or("unset")
        );
        return refuse(&mut st, &mut rep, None, &why);
    }

    rep.step("resolve", &format!("resolving {}", o.reference));
    let mut src = source::open(&o.reference, root, &o.insecure)?;
    let slot_dev = disk.slot(passive).to_path_buf();
    let plan = match resolve(
        root,
        o,
        src.as_mut(),
        &slot_dev,
        disk.esp.dir(),
        &st,
        &mut rep,
    )? {
        Ok(p) => p,
        Err(why) => return refuse(&mut st, &mut rep, None, &why),
    };
    rep.step("preflight", &format!("signature: {}", plan.signed));

    // Nothing to do: the running slot holds it, or the passive slot holds
    // it and is armed.
    let holds = |s: &str| {
        st.records.slots.get(s).and_then(|r| r.digest.as_deref()) == Some(plan.digest.as_str())
    };
    if holds(&running) {
        rep.result(
            result_json("up_to_date", o, &running, Some(&plan), None, 0),
            &format!(
                "os-agent: slot {running} already runs {} ({})",
                plan.version, plan.digest
            ),
        );
        return Ok(0);
    }
    let info_version = system::image_info(root)?.version;
    if !o.allow_downgrade && info_version.as_deref() == Some(plan.version.as_str()) {
        rep.result(
            result_json("up_to_date", o, &running, Some(&plan), None, 0),
            &format!(
                "os-agent: slot {running} already runs version {} (--allow-downgrade to write {} anyway)",
                plan.version, plan.digest
            ),
        );
        return Ok(0);
    }
    let armed_already = holds(passive)
        && st
            .records
            .slots
            .get(passive)
            .is_some_and(|r| r.state == record::WRITTEN)
        && env.trial_slot() == passive;
    if armed_already {
        rep.result(
            result_json(record::ARMED, o, passive, Some(&plan), None, 0),
            &format!(
                "os-agent: {} is already written to slot {passive} and armed{}",
                plan.version,
                if o.reboot {
                    ": rebooting"
                } else {
                    "; reboot to try it"
                }
            ),
        );
        if o.reboot {
            install::reboot()?;
        }
        return Ok(0);
    }

    // From here on the passive slot changes. A trial still armed for it
    // goes first: it would boot a half-written slot.
    if env.trial_slot() == passive {
        bootenv::update(disk.esp.dir(), |e| {
            e.set(TRIAL_SLOT, "").map_err(Error::msg)
        })?;
    }
    let info = system::image_info(root)?;
    st.records.slots.entry(running.clone()).or_insert(Slot {
        state: record::GOOD.into(),
        version: info.version.clone(),
        digest: None,
        reference: None,
        written_at: None,
        reason: None,
    });
    let writing = Slot {
        state: record::WRITING.into(),
        version: Some(plan.version.clone()),
        digest: Some(plan.digest.clone()),
        reference: Some(src.describe()),
        written_at: Some(record::now()),
        reason: None,
    };
    st.records.slots.insert(passive.to_string(), writing);
    st.records.last_upgrade = Some(Upgrade {
        reference: o.reference.clone(),
        digest: Some(plan.digest.clone()),
        version: Some(plan.version.clone()),
        slot: Some(passive.to_string()),
        result: record::WRITING.into(),
        reason: None,
        at: record::now(),
        boot_count: st.boot_count,
    });
    state::save(root, &st)?;

    let fail = |st: &mut state::State, why: &str, result: &str| -> Result<()> {
        if let Some(s) = st.records.slots.get_mut(passive) {
            s.state = record::BAD.into();
            s.reason = Some(why.to_string());
        }
        if let Some(u) = &mut st.records.last_upgrade {
            u.result = result.into();
            u.reason = Some(why.to_string());
            u.at = record::now();
        }
        state::save(root, st)
    };

    rep.step(
        "rootfs",
        &format!(
            "writing {} ({} MiB) to slot {passive} ({})",
            plan.layers.rootfs.digest,
            plan.layers.rootfs.size >> 20,
            slot_dev.display()
        ),
    );
    let written = write::open_slot(&slot_dev).and_then(|(mut f, _)| {
        write::stream_rootfs(
            src.as_mut(),
            &plan.layers.rootfs,
            &mut f,
            &slot_dev,
            &mut rep,
        )
    });
    match written {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            fail(&mut st, &why, record::FAILED)?;
            rep.result(
                result_json(
                    record::FAILED,
                    o,
                    passive,
                    Some(&plan),
                    Some(&why),
                    EXIT_CORRUPT,
                ),
                &format!(
                    "os-agent: upgrade failed: {why}; slot {passive} is marked bad, nothing armed"
                ),
            );
            return Ok(EXIT_CORRUPT);
        }
        Err(e) => {
            let why = format!("writing slot {passive}: {e}");
            fail(&mut st, &why, record::FAILED)?;
            return Err(Error::msg(format!(
                "{why}; slot {passive} is marked bad, nothing armed"
            )));
        }
    }
    fault::point(fault::UPGRADE_AFTER_STREAM);

    rep.step(
        "boot-files",
        &format!("writing the kernel and initrd of slot {passive} to the ESP"),
    );
    let dir = disk.esp.dir().join(passive);
    let mut files = vec![
        (&plan.layers.kernel, dir.join("vmlinuz")),
        (&plan.layers.initrd, dir.join("initrd")),
    ];
    for (name, l) in &plan.layers.devicetrees {
        files.push((l, dir.join(name)));
    }
    for (layer, dest) in files {
        match write::boot_file(src.as_mut(), layer, &dest) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                fail(&mut st, &why, record::FAILED)?;
                rep.result(
                    result_json(
                        record::FAILED,
                        o,
                        passive,
                        Some(&plan),
                        Some(&why),
                        EXIT_CORRUPT,
                    ),
                    &format!("os-agent: upgrade failed: {why}; nothing armed"),
                );
                return Ok(EXIT_CORRUPT);
            }
            Err(e) => {
                let why = format!("writing {}: {e}", dest.display());
                fail(&mut st, &why, record::FAILED)?;
                return Err(Error::msg(format!("{why}; nothing armed")));
            }
        }
    }

    // The renames must be on the disk before anything names the slot.
    write::sync_filesystem(disk.esp.dir())?;

    rep.step("record", "recording the upgrade in state.json");
    if let Some(s) = st.records.slots.get_mut(passive) {
        s.state = record::WRITTEN.into();
        s.written_at = Some(record::now());
    }
    if let Some(u) = &mut st.records.last_upgrade {
        u.result = record::ARMED.into();
        u.at = record::now();
    }
    state::save(root, &st)?;
    fault::point(fault::UPGRADE_BEFORE_ARM);

    rep.step("arm", &format!("arming a trial of slot {passive}"));
    bootenv::update(disk.esp.dir(), |e| {
        e.set(TRIAL_SLOT, passive).map_err(Error::msg)
    })?;
    rep.result(
        result_json(record::ARMED, o, passive, Some(&plan), None, 0),
        &format!(
            "os-agent: {} ({}) written to slot {passive} and armed{}",
            plan.version,
            plan.digest,
            if o.reboot {
                ": rebooting into the trial"
            } else {
                "; the next boot tries it"
            }
        ),
    );
    drop(disk);
    if o.reboot {
        rep.step("reboot", "rebooting");
        install::reboot()?;
    }
    Ok(0)
}

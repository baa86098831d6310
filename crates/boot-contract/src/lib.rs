//! The on-disk contracts that the builder (`build-image`), the device agent
//! (`os-agent`) and the initramfs init (`os-init`) share. Each is defined
//! here once; the three programs depend on this crate and nothing heavier,
//! so the device binaries stay small.

pub mod boot_disk;
pub mod fat;
pub mod gpt;
pub mod grubenv;
pub mod mbr;
pub mod upgrade;

/// GPT partition names of the A/B disk layout. The agent and init find
/// partitions by these names.
pub mod partition {
    pub const BIOS_GRUB: &str = "bios_grub";
    pub const ESP: &str = "ESP";
    pub const ROOT_A: &str = "root_a";
    pub const ROOT_B: &str = "root_b";
    pub const PERSIST: &str = "persist";
}

/// The persistent partition: where os-init mounts it and which paths of
/// the read-only root it makes persistent by bind mounts.
pub mod persist {
    /// Where the `persist` filesystem is mounted on the running system.
    pub const MOUNT: &str = "/run/os/persist";
    /// Directory on `persist` holding one directory per persistent path
    /// (`state/var/log` is bound over `/var/log`).
    pub const STATE_DIR: &str = "state";
    /// The machine-id (32 lowercase hex digits and a newline) on `persist`,
    /// copied to `/etc/machine-id` on every boot.
    pub const MACHINE_ID: &str = "machine-id";
    /// Filesystem label of `persist`.
    pub const LABEL: &str = "persist";
    /// The smallest `persist` os-init creates: a disk needs this much
    /// free space after the root slots.
    pub const MIN_SIZE: u64 = 32 << 20;
    /// The first bytes of a `persist` partition that an image carries
    /// unformatted (a Raspberry Pi card's, created small by build-image):
    /// os-init formats a partition that starts with them and has no
    /// filesystem as a new one, wiping first what an earlier use of the
    /// card left in the space it grew into. mkfs overwrites them.
    pub const FRESH_MARKER: &[u8; 32] = b"build-image: persist unformatted";

    /// What os-init did with `persist` this boot, for `os-agent status`
    /// and `health`: `key=value` lines, `state=` one of the `STATE_*`
    /// values below, `reason=` (one line) when it is not [`STATE_OK`].
    /// On the running system's `/run` (a tmpfs: one boot only).
    pub const STATUS_FILE: &str = "/run/os/persist.status";
    /// `persist` is mounted from its partition.
    pub const STATE_OK: &str = "ok";
    /// `persist` is off by design (`bi.persist=off`, a live boot, no room
    /// on the disk): a tmpfs stands in for it.
    pub const STATE_OFF: &str = "off";
    /// `persist` should be there but could not be used (a filesystem
    /// e2fsck cannot repair, a failing mkfs or resize, the partition not
    /// appearing): a tmpfs stands in for it, and the data on the disk is
    /// left untouched for someone to repair.
    pub const STATE_DEGRADED: &str = "degraded";

    /// A factory reset requested by `os-agent reset`, at the root of
    /// `persist`: os-init acts on it at the next boot, before anything
    /// uses `persist`, and removes it last. Its content is one word,
    /// [`RESET_ALL`] or [`RESET_KEEP_CONFIG`].
    pub const RESET_MARKER: &str = "reset";
    /// Empty `persist` entirely.
    pub const RESET_ALL: &str = "all";
    /// Empty `persist` but keep [`KEEP_ON_RESET`].
    pub const RESET_KEEP_CONFIG: &str = "keep-config";
    /// Where os-init keeps a copy of [`KEEP_ON_RESET`] while it empties
    /// `persist` (on `persist`, so a power cut cannot lose it; removed
    /// once the files are back in place).
    pub const RESET_KEEP_DIR: &str = "reset.keep";
    /// What `reset --keep-config` keeps, relative to `persist`: the
    /// device's node config, its registry credentials (how it reaches its
    /// upgrades) and its SSH host keys.
    pub const KEEP_ON_RESET: &[&str] = &[
        "state/var/lib/os-agent/config.yaml",
        "state/var/lib/os-agent/registry-auth.json",
        "state/var/lib/os-agent/ssh",
    ];

    /// A path of the root made persistent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Path {
        pub path: &'static str,
        /// On first creation, the persistent copy starts as a copy of the
        /// image's directory (configuration the system needs to work).
        pub seed: bool,
    }

    const fn p(path: &'static str, seed: bool) -> Path {
        Path { path, seed }
    }

    /// The paths bind-mounted from `persist`, in mount order.
    pub const PATHS: &[Path] = &[
        p("/var/lib/os-agent", false),
        p("/var/lib/rancher", false),
        p("/var/lib/kubelet", false),
        p("/var/lib/cni", false),
        p("/var/lib/containerd", false),
        p("/var/log", false),
        p("/home", false),
        p("/root", true),
        p("/etc/rancher", false),
    ];
}

/// The try-once boot state: where the GRUB environment blocks live on the
/// ESP, the variables in them, and how the kernel command line names the
/// running slot. `bootloader/grub.cfg` uses the same names.
pub mod boot_env {
    /// The primary environment block, at the root of the ESP.
    pub const PRIMARY: &str = "grubenv";
    /// The backup copy, written after the primary.
    pub const BACKUP: &str = "grubenv.bak";
    /// Variable: the slot GRUB boots normally (`a` or `b`).
    pub const DEFAULT_SLOT: &str = "default_slot";
    /// Variable: a slot to boot once (`a`, `b` or empty).
    pub const TRIAL_SLOT: &str = "trial_slot";
    /// Variable: the trial slot GRUB took out of `trial_slot` and booted
    /// (`a`, `b` or empty). GRUB sets it in the same write that clears
    /// `trial_slot`; os-agent clears it (and the trial in both copies) once
    /// the trial's outcome is known: committed, rolled back by `health`,
    /// or, when a later boot runs another slot, failed before `health`
    /// could decide (it did not load, panicked or hung).
    pub const TRIAL_BOOTED: &str = "trial_booted";
    /// The A/B slot names.
    pub const SLOTS: [&str; 2] = ["a", "b"];
    /// Kernel command line parameter naming the running slot: `a`, `b` or
    /// [`LIVE_SLOT`].
    pub const CMDLINE_SLOT: &str = "bi.slot";
    /// `bi.slot` value of a live boot (ISO), which has no A/B state.
    pub const LIVE_SLOT: &str = "live";
    /// Kernel command line flag GRUB adds when it boots a trial slot
    /// (`bi.trial=1`): os-init arms the hardware watchdog for it.
    pub const CMDLINE_TRIAL: &str = "bi.trial";
    /// Kernel command line parameter carrying the partition UUID of the ESP
    /// GRUB was started from (`bi.esp=` and GRUB's `probe --part-uuid`,
    /// lowercase): os-init and os-agent use the slots, the ESP and
    /// `persist` of the disk holding that partition, and no other disk's.
    pub const CMDLINE_ESP: &str = "bi.esp";
    /// Variable: `1` once GRUB has booted from this disk. GRUB sets it on a
    /// disk's first boot; os-init uses it to tell apart disks written from
    /// one image (same partition UUIDs) before it gives the booted disk
    /// its own identity.
    pub const DISK_BOOTED: &str = "disk_booted";
}

/// The hardware watchdog: a hung trial must reset the machine, so GRUB's
/// try-once logic brings back the default slot.
pub mod watchdog {
    /// The watchdog device os-init arms on a trial boot.
    pub const DEVICE: &str = "/dev/watchdog0";
    /// `bi.watchdog=off` on the kernel command line: os-init leaves the
    /// watchdog alone on a trial (for a machine whose watchdog cannot be
    /// used, such as QEMU's Raspberry Pi models, which reset the moment it
    /// starts); with `systemd.watchdog_sec=off` nothing starts it.
    pub const CMDLINE_OFF: &str = "bi.watchdog";
    /// The timeout os-init sets (seconds): systemd takes the device over
    /// well within it and sets its own ([`RUNTIME_SEC`]).
    pub const TRIAL_TIMEOUT_SEC: u32 = 60;
    /// systemd's `RuntimeWatchdogSec=`: systemd pings the device while it
    /// runs, so a hung PID 1 or kernel resets the machine.
    pub const RUNTIME_SEC: u32 = 30;
    /// The drop-in build-image writes (relative to the root).
    pub const SYSTEMD_DROPIN: &str = "etc/systemd/system.conf.d/10-build-image-watchdog.conf";
}

/// The live/installer ISO: how os-init finds and mounts it, and the files
/// `os-agent install` reads from it.
pub mod live {
    /// Kernel command line parameter naming the ISO's volume label
    /// (`bi.live=DEBIAN_AMD64_...`): os-init looks for an ISO 9660 volume
    /// with this label on every block device and boots from it.
    pub const CMDLINE_LABEL: &str = "bi.live";
    /// Where os-init mounts the ISO 9660 volume; it stays mounted on the
    /// live system.
    pub const MOUNT: &str = "/run/os/live";
    /// The root filesystem on the ISO (also what `install` writes to
    /// `root_a`).
    pub const ROOTFS: &str = "rootfs.squashfs";
    /// The install manifest on the ISO (JSON, see [`MANIFEST_FORMAT`]).
    pub const MANIFEST: &str = "install/install.json";
    /// `format` value of the install manifest.
    pub const MANIFEST_FORMAT: &str = "build-image-install/1";
    /// Byte offset of the primary volume descriptor's volume identifier
    /// (32 bytes, space padded) in an ISO 9660 image.
    pub const VOLUME_ID_OFFSET: u64 = 32768 + 40;
    /// Magic of the primary volume descriptor, at byte 32768.
    pub const PVD_MAGIC: &[u8; 6] = b"\x01CD001";
}

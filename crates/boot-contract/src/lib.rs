//! The on-disk contracts that the builder (`build-image`), the device agent
//! (`os-agent`) and the initramfs init (`os-init`) share. Each is defined
//! here once; the three programs depend on this crate and nothing heavier,
//! so the device binaries stay small.

pub mod grubenv;

/// GPT partition names of the A/B disk layout. The agent and init find
/// partitions by these names.
pub mod partition {
    pub const BIOS_GRUB: &str = "bios_grub";
    pub const ESP: &str = "ESP";
    pub const ROOT_A: &str = "root_a";
    pub const ROOT_B: &str = "root_b";
    pub const PERSIST: &str = "persist";
}

//! Boot loaders: GRUB for UEFI (the distro's signed image on the ESP) and
//! for BIOS (core.img in `bios_grub`, boot.img in the MBR).

pub mod bios;
pub mod esp;
pub mod rpi;

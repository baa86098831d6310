//! build-image: turn a Linux distribution's OCI image into a bootable,
//! immutable, A/B-upgradable OS image.
//!
//! The pipeline has one module per stage; see docs/architecture.md:
//! [`oci`] fetches images, [`cache`] keeps verified blobs, [`assemble`]
//! merges layers into a [`tree`], [`squashfs`] writes it out.

pub mod apt;
pub mod assemble;
pub mod bootloader;
pub mod cache;
pub mod cli;
pub mod disk;
pub mod fat;
pub mod finalise;
pub mod flavor;
pub mod http;
pub mod initramfs;
pub mod iso;
pub mod kmod;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod squashfs;
pub mod tree;

/// The `apiVersion` of every JSON document this tool prints.
pub const API_VERSION: &str = "build-image/v1alpha1";

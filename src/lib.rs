//! build-image: turn a Linux distribution's OCI image into a bootable,
//! immutable, A/B-upgradable OS image.
//!
//! One module per stage or format; docs/architecture.md has the diagram.
//!
//! - the command line: [`cli`] (definitions, dispatch, JSON output);
//! - the main build: [`pipeline`] (plan → inputs → root → boot files →
//!   media → lock), with [`staging`] for its outputs;
//! - sources: [`oci`] (registries, layouts) and [`cache`] (blobs by
//!   digest), [`apt`] (signed package archives), [`flavor`] (what a
//!   distribution needs), [`http`] and [`retry`] (one backoff loop);
//! - the root filesystem: [`tree`] (in memory), [`assemble`] (layers into
//!   it), [`finalise`] (maintainer-script effects), [`kmod`] (module
//!   indexes and closures);
//! - formats: [`squashfs`], [`initramfs`] (cpio), [`fat`], [`disk`] (GPT),
//!   [`iso`], and [`bootloader`] (ESP contents, BIOS GRUB);
//! - the upgrade artifact: [`upgrade`] (its OCI layout, `push`) and
//!   [`sign`] (cosign-compatible signatures, P-256 keys);
//! - [`progress`]: how stages report; [`command`]: the one way another
//!   program is run.

pub mod apt;
pub mod assemble;
pub mod bootloader;
pub mod cache;
pub mod cli;
pub mod command;
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
pub mod retry;
pub mod sign;
pub mod squashfs;
pub mod staging;
pub mod tree;
pub mod upgrade;

/// The `apiVersion` of every JSON document this tool prints.
pub const API_VERSION: &str = "build-image/v1alpha1";

//! The upgrade artifact (docs/upgrade.md): what `--format upgrade` writes
//! and `build-image push` sends to a registry, for `os-agent upgrade` to
//! apply. Media types and the config document are the shared contract in
//! [`boot_contract::upgrade`].
//!
//! - [`layout`]: the artifact as an OCI image layout directory, written
//!   and read back with every blob checked;
//! - [`push`]: layouts into a registry, one index over several
//!   architectures, signed with [`crate::sign`].

pub mod layout;
pub mod push;

pub use layout::{read_layout, write_layout, Annotations, ArtifactFiles, UpgradeLayout};
pub use push::{push, BlobLocations, PushResult};

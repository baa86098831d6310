//! The native apt client: trusted repository metadata, dependency
//! resolution and `.deb` installation into an [`FsTree`](crate::tree::FsTree),
//! without running anything from the target.
//!
//! - [`release`]: [`Keyring::load`] and [`verify_inrelease`] — OpenPGP trust.
//! - [`packages`]: `Packages` indexes and the dpkg `status` file.
//! - [`version`] / [`depends`]: Debian version order and dependency grammar.
//! - [`resolve`]: the closure of requested packages over an index.
//! - [`deb`]: reading `.deb` archives (ar + control/data tars).
//! - [`install`]: extraction into the tree and the dpkg database.
//! - [`fetch`]: HTTP with retries into the blob cache.
//! - [`load_repositories`] then [`install_packages`]: a build's whole
//!   `apt-get update && apt-get install`.
//! - [`freshness`]: a Release of the suite asked for, never an older one.
//!
//! See docs/apt.md.

mod client;
pub mod deb;
pub mod deb822;
pub mod depends;
pub mod fetch;
pub mod freshness;
pub mod install;
mod md5;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod version;

pub use client::{check_available, install_packages, load_repositories, InstallRequest, Installed};
pub use deb::{read_deb, DebControl};
pub use depends::{Alternatives, Dep, Relation};
pub use fetch::{Fetcher, Repository, Source};
pub use freshness::{LockRecord, ReleaseStamp};
pub use install::{install_debs, installed_packages, verify_deb, InstallOptions, InstallReport};
pub use packages::{parse_index, parse_status, MultiArch, Package};
pub use release::{verify_inrelease, Keyring, Release, ReleaseFile};
pub use resolve::{resolve, ResolveError, ResolveOptions};
pub use version::Version;

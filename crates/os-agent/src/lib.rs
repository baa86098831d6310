//! `os-agent`, the on-device agent of build-image systems.
//!
//! - `boot-config` ([`apply`]): applies the image's and the device's
//!   configuration files ([`config`]) at every boot: hostname, users
//!   ([`users`]), files, k3s ([`k3s`]), SSH host keys, the boot counter
//!   ([`state`]).
//! - `health` ([`health`]): waits for the boot to finish, commits a healthy
//!   trial slot ([`bootenv`]) and reports one line on the console.
//! - `status` ([`status`]) and `mark-good`.
//! - `install` ([`install`]): writes the A/B disk from the live ISO to a
//!   disk.
//! - `upgrade` ([`upgrade`]): writes an upgrade from a registry to the
//!   passive slot and arms a trial; `rollback` ([`rollback`]), `reset`
//!   ([`reset`]).
//!
//! Every path goes through [`fsutil::Root`], so the same code runs on a
//! directory tree in tests (`--root DIR`).

pub mod error;

pub mod apply;
pub mod bootdisk;
pub mod bootenv;
pub mod cli;
pub mod config;
pub mod fault;
pub mod fsutil;
pub mod health;
pub mod install;
pub mod k3s;
pub mod reset;
pub mod rollback;
pub mod state;
pub mod status;
pub mod system;
pub mod upgrade;
pub mod users;

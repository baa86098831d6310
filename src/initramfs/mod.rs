//! The initramfs stage: the archive the kernel unpacks before `os-init`
//! runs. [`cpio::write`] turns an [`FsTree`](crate::tree::FsTree) into the
//! reproducible newc archive the kernel reads.

pub mod cpio;

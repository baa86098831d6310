//! The agent's error type is the device binaries' one
//! ([`device_error`]): a message that names what was being done and to
//! what, with its cause kept (`reading /etc/passwd: No such file or
//! directory`). The binary prints it once and exits non-zero.

pub use device_error::{Context, Error, Result};

/// Returns early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::msg(format!($($arg)*)))
    };
}

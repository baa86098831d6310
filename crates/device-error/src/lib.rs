//! The one error type of the device binaries (`os-init`, `os-agent`): a
//! message that names what was being done and to what, with the error that
//! caused it kept as its [`source`](std::error::Error::source).
//!
//! Their errors end up as one line on a serial console, in a journal or in
//! a JSON `reason` field, so [`Display`](fmt::Display) prints the message
//! and then its cause (`reading /etc/passwd: No such file or directory`); code that must tell causes apart walks
//! [`Error::chain`] or uses [`Error::find`] (an `io::ErrorKind`, an
//! `Errno`) instead of matching text. Dependency-free, so the static
//! binaries stay small.

use std::error::Error as StdError;
use std::fmt;

/// A cause of any error type this crate keeps.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// A message and the error that caused it, if any.
#[derive(Debug)]
pub struct Error {
    msg: String,
    cause: Option<Cause>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with no cause.
    pub fn msg(msg: impl fmt::Display) -> Self {
        Error {
            msg: msg.to_string(),
            cause: None,
        }
    }

    /// `msg`, caused by `cause`.
    pub fn with_cause(msg: impl fmt::Display, cause: impl Into<Cause>) -> Self {
        Error {
            msg: msg.to_string(),
            cause: Some(cause.into()),
        }
    }

    /// This error's own message, without its causes.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// This error and its causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let mut next: Option<&(dyn StdError + 'static)> = Some(self);
        std::iter::from_fn(move || {
            let e = next?;
            next = e.source();
            Some(e)
        })
    }

    /// The first error of type `E` in the chain (an `std::io::Error`, to
    /// ask for its kind).
    pub fn find<E: StdError + 'static>(&self) -> Option<&E> {
        self.chain().find_map(|e| e.downcast_ref::<E>())
    }
}

impl fmt::Display for Error {
    /// The message, then the cause as it displays itself (one of ours
    /// includes its own causes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

/// Adds what was being done to an error: displayed as
/// `"{context}: {cause}"`, the cause kept as the source.
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Cause>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::with_cause(context, e))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::with_cause(f(), e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(context))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::msg(f()))
    }
}

/// Returns early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::msg(format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn open(p: &str) -> Result<std::fs::File> {
        std::fs::File::open(p).with_context(|| format!("opening {p}"))
    }

    #[test]
    fn the_message_names_the_action_and_the_cause_is_kept() {
        let e = open("/nonexistent/x")
            .context("reading the config")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading the config: opening /nonexistent/x: No such file or directory (os error 2)"
        );
        assert_eq!(e.message(), "reading the config");
        assert_eq!(e.chain().count(), 3);
        assert_eq!(
            e.find::<io::Error>().unwrap().kind(),
            io::ErrorKind::NotFound
        );
        let inner = e.source().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.message(), "opening /nonexistent/x");
    }

    #[test]
    fn strings_options_and_bail() {
        let r: std::result::Result<(), String> = Err("bad magic".into());
        assert_eq!(
            r.context("sda1").unwrap_err().to_string(),
            "sda1: bad magic"
        );
        assert_eq!(
            None::<u8>.context("no ESP").unwrap_err().to_string(),
            "no ESP"
        );
        fn f(n: u32) -> Result<()> {
            if n > 1 {
                bail!("{n} is too many");
            }
            Ok(())
        }
        let e = f(2).unwrap_err();
        assert_eq!(e.to_string(), "2 is too many");
        assert!(e.source().is_none());
    }
}

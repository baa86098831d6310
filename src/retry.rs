//! Retrying with exponential backoff: one policy and one loop for every
//! network client of this crate.
//!
//! An operation reports each attempt as [`Outcome::Ok`], as
//! [`Outcome::Transient`] (worth another try: a connection that failed or
//! broke, 429, 5xx) or as an error (fatal: retrying cannot help).

use std::time::Duration;

use anyhow::{anyhow, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(250),
        }
    }
}

/// What one attempt gave.
pub enum Outcome<T> {
    Ok(T),
    /// Worth another try; the error says what went wrong.
    Transient(anyhow::Error),
}

/// Runs `op` until it succeeds, fails fatally, or `policy.attempts`
/// transient failures have passed, sleeping `first_delay`, then twice as
/// long after each failure. `op` gets the attempt number (from 1). The
/// final error is the last transient one, with "`what`: giving up after N
/// attempts" as context.
pub fn retry<T>(
    policy: RetryPolicy,
    what: &str,
    mut op: impl FnMut(u32) -> Result<Outcome<T>>,
) -> Result<T> {
    let attempts = policy.attempts.max(1);
    let mut delay = policy.first_delay;
    let mut last = None;
    for attempt in 1..=attempts {
        match op(attempt)? {
            Outcome::Ok(v) => return Ok(v),
            Outcome::Transient(e) => {
                tracing::warn!("{what}: {e:#} (attempt {attempt}/{attempts})");
                last = Some(e);
            }
        }
        if attempt < attempts {
            std::thread::sleep(delay);
            delay *= 2;
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no attempt made"))
        .context(format!("{what}: giving up after {attempts} attempts")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(10),
        }
    }

    #[test]
    fn retries_transient_failures_with_growing_delays() {
        let start = Instant::now();
        let mut seen = Vec::new();
        let v = retry(quick(4), "t", |n| {
            seen.push(n);
            Ok(if n < 3 {
                Outcome::Transient(anyhow!("flaky"))
            } else {
                Outcome::Ok(n * 10)
            })
        })
        .unwrap();
        assert_eq!(v, 30);
        assert_eq!(seen, [1, 2, 3]);
        // 10 ms + 20 ms of backoff.
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn gives_up_after_the_last_attempt_with_the_last_error() {
        let mut n = 0;
        let e = retry::<()>(quick(3), "fetching x", |_| {
            n += 1;
            Ok(Outcome::Transient(anyhow!("HTTP 503 #{n}")))
        })
        .unwrap_err();
        assert_eq!(n, 3);
        assert_eq!(
            format!("{e:#}"),
            "fetching x: giving up after 3 attempts: HTTP 503 #3"
        );
    }

    #[test]
    fn a_fatal_error_stops_at_once() {
        let mut n = 0;
        let e = retry::<()>(quick(5), "t", |_| {
            n += 1;
            Err(anyhow!("404"))
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert_eq!(e.to_string(), "404");
    }
}

//! The one retry loop: every network operation that may fail for a
//! moment (a connection reset, HTTP 429 or 5xx, a download that breaks
//! off) goes through [`RetryPolicy::run`], which retries with exponential
//! backoff and logs each retry. What is not worth another try (a 404, bad
//! credentials, content with the wrong digest) ends the loop at once.

use std::time::Duration;

use anyhow::{anyhow, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 0.25 s, 0.5 s, 1 s and 2 s apart.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(250),
        }
    }
}

/// What one attempt gave.
#[derive(Debug)]
pub enum Attempt<T> {
    Done(T),
    /// A transient failure: worth another attempt.
    Retry(anyhow::Error),
}

impl RetryPolicy {
    /// Runs `f` (given the attempt number, from 1) until it is done, fails
    /// for good (`Err`), or has asked for a retry on every attempt; sleeps
    /// `first_delay`, then twice as long each time, between attempts. The
    /// last transient error is returned with `what` and the number of
    /// attempts.
    pub fn run<T>(&self, what: &str, mut f: impl FnMut(u32) -> Result<Attempt<T>>) -> Result<T> {
        let attempts = self.attempts.max(1);
        let mut delay = self.first_delay;
        let mut last = None;
        for attempt in 1..=attempts {
            match f(attempt)? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry(e) => {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(1),
        }
    }

    #[test]
    fn retries_transient_failures_then_gives_up_naming_the_count() {
        let mut seen = Vec::new();
        let v = quick(3)
            .run("fetching x", |n| {
                seen.push(n);
                Ok(if n < 3 {
                    Attempt::Retry(anyhow!("reset"))
                } else {
                    Attempt::Done(n)
                })
            })
            .unwrap();
        assert_eq!((v, seen), (3, vec![1, 2, 3]));
        let e = quick(2)
            .run::<()>("fetching x", |_| Ok(Attempt::Retry(anyhow!("503"))))
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "fetching x: giving up after 2 attempts: 503"
        );
    }

    #[test]
    fn a_hard_failure_ends_the_loop_at_once() {
        let mut calls = 0;
        let e = quick(5)
            .run::<()>("x", |_| {
                calls += 1;
                Err(anyhow!("404"))
            })
            .unwrap_err();
        assert_eq!((calls, e.to_string()), (1, "404".to_string()));
    }
}

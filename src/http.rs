//! The HTTP agent every client of this crate (registry, apt) uses: one
//! place for timeouts, the user agent and status handling.

use std::time::Duration;

/// An agent that returns 4xx/5xx answers as responses (callers decide what
/// is transient), with connect and response timeouts but no overall limit
/// (blobs and packages can be large).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent(concat!("build-image/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

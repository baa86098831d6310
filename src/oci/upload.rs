//! The push side of the distribution API: blobs (checked with `HEAD`,
//! mounted from another repository, or uploaded streaming from disk) and
//! manifests.
//!
//! An upload is `POST /v2/<name>/blobs/uploads/` (which also meets any
//! auth challenge before a byte of the blob is sent) followed by one
//! monolithic `PUT <location>?digest=…` whose body streams from the file
//! with a `Content-Length`. A failed attempt starts over with a new POST.
//! The registry checks the digest; so does the caller, before (see
//! `upgrade::layout`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::manifest::{Descriptor, Digest};
use super::reference::Reference;
use super::registry::{
    check_status, encode, error_body, Access, RegistryClient, ReqBody, Request, MAX_MANIFEST,
};
use crate::progress::{short, Event, Reporter};
use crate::retry::{retry, Outcome};

/// Where a blob's bytes come from.
#[derive(Clone, Copy)]
pub enum BlobSource<'a> {
    /// A file, streamed; `verified: false` has it hashed on the way, and
    /// the upload cut off before its end if it does not match.
    File {
        path: &'a Path,
        verified: bool,
    },
    Bytes(&'a [u8]),
}

/// What pushing one blob took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had it already.
    Existed,
    /// Linked from another repository of the registry (no bytes sent).
    Mounted {
        from: String,
    },
    Uploaded,
}

/// Unwraps an attempt's success or hands a transient failure to the
/// retry loop.
macro_rules! attempt {
    ($e:expr) => {
        match $e? {
            Outcome::Ok(v) => v,
            Outcome::Transient(e) => return Ok(Outcome::Transient(e)),
        }
    };
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl RegistryClient {
    /// Whether the repository of `r` holds blob `d` (`HEAD`). Blobs are
    /// linked per repository: one held by another repository counts as
    /// missing here.
    pub fn blob_exists(&self, r: &Reference, d: &Digest) -> Result<bool> {
        let what = format!("checking blob {d} in {}/{}", r.registry, r.repository);
        let url = self.url(r, &format!("blobs/{d}"));
        let resp = self.request(r, Access::Push, &Request::new("HEAD", url.clone()), &what)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => check_status(resp, r, &url, &what).map(|_| false),
        }
    }

    /// Makes sure the repository of `r` holds blob `desc`: skipped when it
    /// does (`HEAD`), mounted from one of `mount_from` (repositories of the
    /// same registry believed to hold it) when that works, else uploaded
    /// from `src`, streaming. Transient failures start the upload over.
    pub fn push_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        src: BlobSource,
        mount_from: &[String],
        reporter: &dyn Reporter,
    ) -> Result<BlobPush> {
        let d = &desc.digest;
        if self.blob_exists(r, d)? {
            return Ok(BlobPush::Existed);
        }
        let what = format!("uploading blob {d} to {}/{}", r.registry, r.repository);
        let mut location = None;
        for from in mount_from.iter().filter(|f| **f != r.repository) {
            match self.try_mount(r, d, from, &what)? {
                Mount::Done => return Ok(BlobPush::Mounted { from: from.clone() }),
                Mount::Upload(loc) => {
                    location = Some(loc);
                    break;
                }
                Mount::Refused => {}
            }
        }
        let id = d.to_string();
        reporter.event(Event::Start {
            id: id.clone(),
            label: format!("upload {}", short(d.as_str())),
            total: desc.size,
        });
        let progress = |done: u64| {
            reporter.event(Event::Advance {
                id: id.clone(),
                done,
            })
        };
        let result = retry(self.retry_policy(), &what, |attempt| {
            // A mount that fell back to an upload gave us a session for
            // the first attempt; later ones open their own.
            let loc = match location.take() {
                Some(loc) if attempt == 1 => loc,
                _ => attempt!(self.start_upload(r, None, &what)).ok_or_else(|| {
                    anyhow!("{what}: the registry mounted a blob nobody asked to mount")
                })?,
            };
            self.finish_upload(r, desc, src, &loc, &progress, &what)
        });
        reporter.event(Event::Finish {
            id: id.clone(),
            message: result.is_ok().then(|| {
                format!(
                    "uploaded {} ({})",
                    short(d.as_str()),
                    indicatif::HumanBytes(desc.size)
                )
            }),
        });
        result.map(|()| BlobPush::Uploaded)
    }

    /// `POST …/blobs/uploads/` (with `?mount=&from=` for a mount): the
    /// upload URL, or `None` when the registry mounted the blob.
    fn start_upload(
        &self,
        r: &Reference,
        mount: Option<(&Digest, &str)>,
        what: &str,
    ) -> Result<Outcome<Option<String>>> {
        let mut url = self.url(r, "blobs/uploads/");
        if let Some((d, from)) = mount {
            url.push_str(&format!(
                "?mount={}&from={}",
                encode(d.as_str()),
                encode(from)
            ));
        }
        // An empty body, so that a Content-Length: 0 goes with the POST
        // (proxies in front of registries may want one).
        let mut req = Request::new("POST", url.clone()).body(ReqBody::Bytes(b""));
        req.also_pull = mount.map(|(_, from)| from);
        let resp = attempt!(self.call(r, Access::Push, &req, what));
        match resp.status().as_u16() {
            201 if mount.is_some() => Ok(Outcome::Ok(None)),
            202 => {
                let loc = header(&resp, "location").ok_or_else(|| {
                    anyhow!("{what}: {url} answered 202 Accepted without a Location")
                })?;
                Ok(Outcome::Ok(Some(self.resolve_location(r, &loc))))
            }
            _ => check_status(resp, r, &url, what).and_then(|resp| {
                bail!(
                    "{what}: {url} answered HTTP {} (expected 202 Accepted)",
                    resp.status().as_u16()
                )
            }),
        }
    }

    fn try_mount(&self, r: &Reference, d: &Digest, from: &str, what: &str) -> Result<Mount> {
        match self.start_upload(r, Some((d, from)), what) {
            Ok(Outcome::Ok(None)) => Ok(Mount::Done),
            Ok(Outcome::Ok(Some(loc))) => Ok(Mount::Upload(loc)),
            // A mount is only a shortcut: any trouble means uploading.
            Ok(Outcome::Transient(e)) | Err(e) => {
                tracing::debug!("{what}: mounting from {from} failed: {e:#}");
                Ok(Mount::Refused)
            }
        }
    }

    /// `PUT <location>&digest=D` with the whole blob as the body.
    fn finish_upload(
        &self,
        r: &Reference,
        desc: &Descriptor,
        src: BlobSource,
        location: &str,
        progress: &dyn Fn(u64),
        what: &str,
    ) -> Result<Outcome<()>> {
        let d = &desc.digest;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", encode(d.as_str()));
        let body = match src {
            BlobSource::File { path, verified } => ReqBody::File {
                path,
                len: desc.size,
                progress: Some(progress),
                verify: (!verified).then_some(d),
            },
            BlobSource::Bytes(b) => ReqBody::Bytes(b),
        };
        let req = Request::new("PUT", url.clone())
            .header("Content-Type", "application/octet-stream")
            .body(body);
        let resp = attempt!(self.call(r, Access::Push, &req, what));
        let status = resp.status().as_u16();
        match status {
            201 => {
                if let Some(got) = header(&resp, "docker-content-digest") {
                    if got != d.as_str() {
                        bail!("{what}: the registry stored the blob as {got}, expected {d}");
                    }
                }
                Ok(Outcome::Ok(()))
            }
            // The upload session expired or got lost: start over.
            404 => Ok(Outcome::Transient(anyhow!(
                "{what}: the upload session is gone (HTTP 404{})",
                error_body(resp)
            ))),
            400 => {
                let body = error_body(resp);
                if body.contains("DIGEST_INVALID") || body.contains("SIZE_INVALID") {
                    bail!(
                        "{what}: the registry received content that does not match {d} ({} bytes){body}; did the file change while it was sent?",
                        desc.size
                    );
                }
                bail!("{what}: {url} answered HTTP 400{body}")
            }
            _ => check_status(resp, r, &url, what).and_then(|resp| {
                bail!(
                    "{what}: {url} answered HTTP {} (expected 201 Created)",
                    resp.status().as_u16()
                )
            }),
        }
    }

    /// `PUT /v2/<name>/manifests/<reference>` (a tag or the digest);
    /// checks the registry stored exactly these bytes.
    pub fn put_manifest(
        &self,
        r: &Reference,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Digest> {
        let digest = Digest::of(body);
        let what = format!(
            "pushing manifest {digest} to {}/{}:{reference}",
            r.registry, r.repository
        );
        let url = self.url(r, &format!("manifests/{reference}"));
        let req = Request::new("PUT", url.clone())
            .header("Content-Type", media_type)
            .body(ReqBody::Bytes(body));
        let resp = self.request(r, Access::Push, &req, &what)?;
        if resp.status().as_u16() == 400 {
            let body = error_body(resp);
            bail!("{what}: the registry refused it (HTTP 400{body})");
        }
        let resp = check_status(resp, r, &url, &what)?;
        if let Some(got) = header(&resp, "docker-content-digest") {
            if got != digest.as_str() {
                bail!("{what}: the registry stored it as {got}");
            }
        }
        Ok(digest)
    }

    /// A manifest by tag or digest, or `None` when the repository has no
    /// such tag (or no such repository).
    pub fn manifest_if_exists(
        &self,
        r: &Reference,
        reference: &str,
        accept: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let what = format!(
            "fetching manifest {reference} of {}/{}",
            r.registry, r.repository
        );
        let url = self.url(r, &format!("manifests/{reference}"));
        let req = Request::new("GET", url.clone()).header("Accept", accept);
        let resp = self.request(r, Access::Pull, &req, &what)?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let mut resp = check_status(resp, r, &url, &what)?;
        let ct = header(&resp, "content-type");
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .with_context(|| format!("{what}: reading the body"))?;
        Ok(Some((body, ct)))
    }
}

enum Mount {
    Done,
    /// Not mounted, but the answer opened an upload session: use it.
    Upload(String),
    Refused,
}

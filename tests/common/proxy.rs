//! A fault-injecting HTTP/1.1 proxy in front of a real registry.
//!
//! Every request is forwarded on its own upstream connection with
//! `Connection: close`; the answer is read whole, optionally tampered with,
//! and sent back before the client connection is closed. Every request is
//! logged so tests can count what the client fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to the traffic.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward everything unchanged.
    PassThrough,
    /// In every `GET …/blobs/DIGEST` answer, replace the first occurrence of
    /// `find` by `replace` (same length), so the body keeps its length and
    /// stays a valid tar but no longer matches the digest.
    ReplaceInBlob {
        digest: String,
        find: Vec<u8>,
        replace: Vec<u8>,
    },
    /// In every successful `GET …/manifests/…` answer, replace the first
    /// occurrence of `find` by `replace` (same length).
    ReplaceInManifest { find: Vec<u8>, replace: Vec<u8> },
    /// In every `GET …/blobs/DIGEST` answer, flip the bits of the last byte.
    CorruptBlob { digest: String },
    /// The first `times` full `GET …/blobs/DIGEST` answers announce the full
    /// `Content-Length` but send only half of the body, then close.
    TruncateBlob { digest: String, times: usize },
    /// The first full `GET …/blobs/DIGEST` answer sends half of the body,
    /// then the registry is gone: every later connection is closed before
    /// anything is read or sent (until [`Proxy::set_fault`]).
    TruncateBlobThenGone { digest: String },
    /// Answer the first `times` requests whose path contains `path_contains`
    /// with `503 Service Unavailable` without forwarding them.
    ServiceUnavailable { times: usize, path_contains: String },
    /// Emulate a token-auth registry (Docker Hub style) in front of an
    /// anonymous one: `/v2/…` requires `Authorization: Bearer TOKEN`, the
    /// challenge points at `/token` on the proxy, which hands out a token
    /// (anonymously, or only for the given basic-auth credentials).
    BearerToken { creds: Option<(String, String)> },
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Which fault was applied to it, if any.
    pub fault: Option<&'static str>,
    pub range: Option<String>,
    pub at: Instant,
}

struct State {
    fault: Fault,
    applied: usize,
    /// [`Fault::TruncateBlobThenGone`] struck: nobody answers.
    gone: bool,
    log: Vec<Logged>,
    /// `host:port` the bearer challenge's realm names instead of the
    /// proxy's own address.
    realm_host: Option<String>,
}

/// The proxy; stops accepting on drop.
pub struct Proxy {
    /// `127.0.0.1:PORT`
    pub host: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

const TOKEN: &str = "test-token-3f1c";

impl Proxy {
    pub fn start(upstream: &str, fault: Fault) -> Proxy {
        Proxy::start_on("127.0.0.1", upstream, fault)
    }

    /// Listens on `ip` (any loopback address, e.g. 127.0.0.2).
    pub fn start_on(ip: &str, upstream: &str, fault: Fault) -> Proxy {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            fault,
            applied: 0,
            gone: false,
            log: Vec::new(),
            realm_host: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, up, me) = (
            state.clone(),
            stop.clone(),
            upstream.to_string(),
            host.clone(),
        );
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, up, me) = (st.clone(), up.clone(), me.clone());
                thread::spawn(move || {
                    let _ = handle(conn, &up, &me, &st);
                });
            }
        });
        Proxy { host, state, stop }
    }

    /// `HOST/REPO:TAG` through the proxy.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }

    /// Makes the bearer challenge name `http://HOST_PORT/token` as its realm
    /// (a token service somewhere else than the registry).
    pub fn set_realm_host(&self, host_port: &str) {
        self.state.lock().unwrap().realm_host = Some(host_port.to_string());
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Whether any request in the log satisfies `f`.
    pub fn any_request(&self, f: impl Fn(&Logged) -> bool) -> bool {
        self.state.lock().unwrap().log.iter().any(f)
    }

    /// Changes the fault (and brings a gone registry back).
    pub fn set_fault(&self, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.fault = fault;
        s.applied = 0;
        s.gone = false;
    }

    /// How many times the fault was applied.
    pub fn faults_applied(&self) -> usize {
        self.state.lock().unwrap().applied
    }

    /// GET requests for blobs (any digest).
    pub fn blob_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
            .count()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// The request log as text, for assertion messages.
    pub fn log_text(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} -> {}{}{}\n",
                    r.method,
                    r.path,
                    r.status,
                    r.range
                        .as_ref()
                        .map(|x| format!(" (range {x})"))
                        .unwrap_or_default(),
                    r.fault.map(|f| format!(" [{f}]")).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.host);
    }
}

struct Request {
    method: String,
    path: String,
    head: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &TcpStream) -> std::io::Result<Request> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            break;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            head.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        path,
        head,
        body: Vec::new(),
    };
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(req)
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn log(state: &Mutex<State>, req: &Request, status: u16, fault: Option<&'static str>) {
    state.lock().unwrap().log.push(Logged {
        method: req.method.clone(),
        path: req.path.clone(),
        status,
        fault,
        range: req.header("range").map(str::to_string),
        at: Instant::now(),
    });
}

fn is_blob_get(req: &Request, digest: &str) -> bool {
    req.method == "GET" && req.path.ends_with(&format!("/blobs/{digest}"))
}

fn handle(
    mut conn: TcpStream,
    upstream: &str,
    me: &str,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    if state.lock().unwrap().gone {
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    // A TLS ClientHello (a client trying HTTPS): log it and hang up.
    let mut first = [0u8; 1];
    if conn.peek(&mut first)? == 1 && first[0] == 0x16 {
        state.lock().unwrap().log.push(Logged {
            method: "TLS".into(),
            path: String::new(),
            status: 0,
            fault: None,
            range: None,
            at: Instant::now(),
        });
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    let req = read_request(&conn)?;
    let fault = state.lock().unwrap().fault.clone();

    // Faults decided before forwarding.
    match &fault {
        Fault::ServiceUnavailable {
            times,
            path_contains,
        } if req.path.contains(path_contains.as_str()) => {
            let mut s = state.lock().unwrap();
            if s.applied < *times {
                s.applied += 1;
                drop(s);
                log(state, &req, 503, Some("503"));
                respond(&mut conn, "503 Service Unavailable", &[], b"");
                return Ok(());
            }
        }
        Fault::BearerToken { creds } => {
            if req.path.starts_with("/token") {
                let ok = match creds {
                    None => true,
                    Some((u, p)) => {
                        use base64::Engine;
                        let want = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                        );
                        req.header("authorization") == Some(want.as_str())
                    }
                };
                if ok {
                    log(state, &req, 200, Some("token"));
                    let body = format!(
                        r#"{{"token":"{TOKEN}","access_token":"{TOKEN}","expires_in":300}}"#
                    );
                    respond(
                        &mut conn,
                        "200 OK",
                        &[("Content-Type", "application/json".into())],
                        body.as_bytes(),
                    );
                } else {
                    log(state, &req, 401, Some("token"));
                    respond(&mut conn, "401 Unauthorized", &[], b"");
                }
                return Ok(());
            }
            if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
                // scope like Docker Hub: repository:NAME:pull
                let scope = req
                    .path
                    .strip_prefix("/v2/")
                    .and_then(|p| {
                        ["/manifests/", "/blobs/", "/tags/"]
                            .iter()
                            .find_map(|m| p.find(m).map(|i| &p[..i]))
                    })
                    .map(|repo| format!(",scope=\"repository:{repo}:pull\""))
                    .unwrap_or_default();
                log(state, &req, 401, Some("bearer-challenge"));
                let realm_host = state.lock().unwrap().realm_host.clone();
                let realm_host = realm_host.as_deref().unwrap_or(me);
                respond(
                    &mut conn,
                    "401 Unauthorized",
                    &[
                        (
                            "WWW-Authenticate",
                            format!(
                                "Bearer realm=\"http://{realm_host}/token\",service=\"test-registry\"{scope}"
                            ),
                        ),
                        ("Content-Type", "application/json".into()),
                    ],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
                return Ok(());
            }
        }
        _ => {}
    }

    // Forward.
    let mut up = TcpStream::connect(upstream)?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.head {
        let skip = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
            || (matches!(fault, Fault::BearerToken { .. })
                && k.eq_ignore_ascii_case("authorization"));
        if !skip {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&req.body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(resp.len());
    let (head, body) = resp.split_at(split);
    let head_text = String::from_utf8_lossy(head).to_string();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut head_out = String::new();
    for (i, line) in head_text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0 {
            let name = line.split(':').next().unwrap_or("");
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
        }
        head_out.push_str(line);
        head_out.push_str("\r\n");
    }
    head_out.push_str("Connection: close\r\n\r\n");
    let mut body = body.to_vec();

    let mut applied = None;
    match &fault {
        Fault::ReplaceInBlob {
            digest,
            find,
            replace,
        } if is_blob_get(&req, digest) && status == 200 => {
            assert_eq!(find.len(), replace.len());
            if let Some(i) = body.windows(find.len()).position(|w| w == &find[..]) {
                body[i..i + find.len()].copy_from_slice(replace);
                applied = Some("replace");
            }
        }
        Fault::ReplaceInManifest { find, replace }
            if req.method == "GET" && req.path.contains("/manifests/") && status == 200 =>
        {
            assert_eq!(find.len(), replace.len());
            if let Some(i) = body.windows(find.len()).position(|w| w == &find[..]) {
                body[i..i + find.len()].copy_from_slice(replace);
                applied = Some("replace-manifest");
            }
        }
        Fault::CorruptBlob { digest } if is_blob_get(&req, digest) && status == 200 => {
            if let Some(b) = body.last_mut() {
                *b ^= 0xff;
                applied = Some("corrupt");
            }
        }
        Fault::TruncateBlobThenGone { digest } if is_blob_get(&req, digest) && status == 200 => {
            let mut s = state.lock().unwrap();
            if !s.gone {
                s.applied += 1;
                s.gone = true;
                drop(s);
                log(state, &req, status, Some("truncate-then-gone"));
                conn.write_all(head_out.as_bytes())?;
                conn.write_all(&body[..body.len() / 2])?;
                conn.flush()?;
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        Fault::TruncateBlob { digest, times } if is_blob_get(&req, digest) && status == 200 => {
            let mut s = state.lock().unwrap();
            if s.applied < *times {
                s.applied += 1;
                drop(s);
                log(state, &req, status, Some("truncate"));
                conn.write_all(head_out.as_bytes())?;
                conn.write_all(&body[..body.len() / 2])?;
                conn.flush()?;
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        _ => {}
    }
    if applied.is_some() {
        state.lock().unwrap().applied += 1;
    }
    log(state, &req, status, applied);
    conn.write_all(head_out.as_bytes())?;
    conn.write_all(&body)?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

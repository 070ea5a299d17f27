//! Test support: real S3 servers on loopback (moto_server, s3s-fs) and a fault-injecting proxy.
//!
//! Every server and proxy listens on 127.0.0.1 only, on a free port, and is killed when its
//! handle is dropped. All waits are bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::Client;
use super::config::{RetryPolicy, S3Config, Timeouts};

pub const KEY: &str = "imsctl-test-key";
pub const SECRET: &str = "imsctl-test-secret";

/// A running S3 server.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    _dir: Option<tempfile::TempDir>,
    /// How to start it again on the same port and data (s3s-fs keeps its data on disk).
    command: Option<(PathBuf, Vec<std::ffi::OsString>)>,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client config for this server (or for a proxy in front of it), with fast retries.
    pub fn config_via(&self, endpoint: &str) -> S3Config {
        let mut config = S3Config::for_endpoint(endpoint, KEY, SECRET).expect("config");
        config.retry = RetryPolicy {
            budget: Duration::from_secs(10),
            attempts: 8,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        };
        config.timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        };
        config.part_size = 5 << 20;
        config.concurrency = 4;
        // Loopback round trips are well under a millisecond.
        config.lease_settle = Duration::from_millis(300);
        config
    }

    /// Multipart uploads still open on the server, counted from its data directory (s3s-fs,
    /// which cannot list them: its `.upload-*` files); None for other servers.
    pub fn open_uploads_on_disk(&self) -> Option<usize> {
        let dir = self._dir.as_ref()?;
        let entries = std::fs::read_dir(dir.path()).ok()?;
        Some(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
                .count(),
        )
    }

    pub fn config(&self) -> S3Config {
        self.config_via(&self.endpoint())
    }

    /// A client for a fresh bucket (created).
    pub fn fresh_bucket(&self) -> (String, Client) {
        let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
        let client = Client::new(&self.config(), &bucket).expect("client");
        client.create_bucket().expect("create bucket");
        (bucket, client)
    }
}

impl Server {
    /// Stop the server, wait `down`, start it again on the same port with the same data: a
    /// server restart in the middle of whatever the caller runs meanwhile. Only for servers that
    /// keep their data on disk (s3s-fs); false for the others.
    pub fn restart_after(&mut self, down: Duration) -> bool {
        let Some((program, args)) = self.command.clone() else {
            return false;
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(down);
        let Ok(child) = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = child;
        wait_listening(self.addr, &mut self.child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(extra) = std::env::var_os("IMSCTL_S3S_FS") {
        return Some(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn wait_listening(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// moto_server on a free loopback port; None (with a note) when it is not installed.
pub fn moto() -> Option<Server> {
    let Some(program) = find_program("moto_server") else {
        imsctl_testkit::not_run!(
            "note: moto_server not installed; skipping the moto run (pip install 'moto[server]')"
        );
        return None;
    };
    let port = free_port();
    let mut child = Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !wait_listening(addr, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        imsctl_testkit::not_run!(
            "note: moto_server did not start on {addr}; skipping the moto run"
        );
        return None;
    }
    Some(Server {
        name: "moto",
        addr,
        child,
        _dir: None,
        command: None,
    })
}

/// s3s-fs on a free loopback port, verifying signatures with KEY/SECRET; None (with a note)
/// when it is not installed.
pub fn s3s_fs() -> Option<Server> {
    let Some(program) = find_program("s3s-fs") else {
        imsctl_testkit::not_run!(
            "note: s3s-fs not installed; skipping the s3s-fs run \
             (cargo install s3s-fs@0.14.1 --features binary --locked)"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let args: Vec<std::ffi::OsString> = [
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--access-key",
        KEY,
        "--secret-key",
        SECRET,
    ]
    .iter()
    .map(Into::into)
    .chain([dir.path().as_os_str().to_owned()])
    .collect();
    let mut child = Command::new(&program)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !wait_listening(addr, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        imsctl_testkit::not_run!("note: s3s-fs did not start on {addr}; skipping the s3s-fs run");
        return None;
    }
    Some(Server {
        name: "s3s-fs",
        addr,
        child,
        _dir: Some(dir),
        command: Some((program, args)),
    })
}

/// Every server available here.
pub fn servers() -> Vec<Server> {
    [moto(), s3s_fs()].into_iter().flatten().collect()
}

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Answer 500 without asking the server.
    Status500,
    /// Forward this many body bytes, then reset both connections.
    ResetAfter(u64),
    /// Accept the request, then say nothing for this long (the client must time out).
    Stall(Duration),
    /// Wait this long, then pass the request on (slows an upload down).
    Delay(Duration),
    /// Answer at once with this status and S3 error code, without reading the request body,
    /// and close: as Garage refuses a PUT on a read-only key (and as AWS answers a request
    /// signed for the wrong region, naming the bucket's region).
    Reject(u16, &'static str),
}

/// The region `Fault::Reject` names for `AuthorizationHeaderMalformed`.
pub const REJECT_REGION: &str = "eu-north-1";

/// The start of a request, as the fault plan sees it.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub method: String,
    /// Path and query.
    pub target: String,
}

impl RequestInfo {
    pub fn is_part_upload(&self) -> bool {
        self.method == "PUT" && self.target.contains("partNumber=")
    }
}

type Plan = dyn Fn(&RequestInfo, u64) -> Fault + Send + Sync;

/// Counters of what went through the proxy.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Request body bytes forwarded to the server.
    pub body_bytes_up: AtomicU64,
    /// Part uploads the server answered with 200.
    pub parts_ok: AtomicU64,
    pub faults: AtomicU64,
}

/// A loopback TCP proxy that forces one request per connection (it adds `Connection: close`),
/// so it can decide a fault per request.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    plan: Arc<Mutex<Arc<Plan>>>,
    stop: Arc<AtomicBool>,
    /// Drop `If-None-Match` from every request: a server that ignores conditional writes.
    strip_conditions: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let pass: Arc<Plan> = Arc::new(|_: &RequestInfo, _: u64| Fault::Pass);
        let plan = Arc::new(Mutex::new(pass));
        let stop = Arc::new(AtomicBool::new(false));
        let strip_conditions = Arc::new(AtomicBool::new(false));
        {
            let (counters, plan, stop) = (counters.clone(), plan.clone(), stop.clone());
            let strip = strip_conditions.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (counters, plan, strip) = (counters.clone(), plan.clone(), strip.clone());
                    thread::spawn(move || {
                        let strip = strip.load(Ordering::Relaxed);
                        let _ = handle(conn, upstream, &counters, &plan, strip);
                    });
                }
            });
        }
        FaultProxy {
            addr,
            counters,
            plan,
            stop,
            strip_conditions,
        }
    }

    /// A proxy that passes everything but `If-None-Match`: the server behind it then behaves
    /// like one that ignores conditional writes (Garage, older MinIO and Ceph).
    pub fn without_conditional_writes(upstream: SocketAddr) -> FaultProxy {
        let proxy = FaultProxy::start(upstream);
        proxy.strip_conditions.store(true, Ordering::Relaxed);
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace the fault plan: `plan(request, request_number)` (numbers start at 1).
    pub fn set_plan(&self, plan: impl Fn(&RequestInfo, u64) -> Fault + Send + Sync + 'static) {
        if let Ok(mut p) = self.plan.lock() {
            *p = Arc::new(plan);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    counters: &Counters,
    plan: &Mutex<Arc<Plan>>,
    strip_conditions: bool,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut content_length = 0u64;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:")
            || (strip_conditions && lower.starts_with("if-none-match:"))
        {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        headers.push(line.to_string());
    }
    let info = RequestInfo { method, target };
    let n = counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let plan = plan
        .lock()
        .map(|p| p.clone())
        .map_err(|_| std::io::Error::other("plan"))?;
    let fault = plan(&info, n);
    if !matches!(fault, Fault::Pass | Fault::Delay(_)) {
        counters.faults.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Fault::Status500 => {
            // As a server would: take the whole request, then fail it.
            let mut left = content_length.saturating_sub(rest.len() as u64);
            let mut sink = [0u8; 64 << 10];
            while left > 0 {
                let want = usize::try_from(left.min(sink.len() as u64)).unwrap_or(sink.len());
                match client.read(&mut sink[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n as u64,
                }
            }
            let body = "<Error><Code>InternalError</Code><Message>injected</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        Fault::Stall(d) => {
            thread::sleep(d);
            return Ok(());
        }
        Fault::Reject(status, code) => {
            let region = format!("<Region>{REJECT_REGION}</Region>");
            let body = format!(
                "<Error><Code>{code}</Code><Message>refused by the test proxy</Message>{}</Error>",
                if code == "AuthorizationHeaderMalformed" {
                    region.as_str()
                } else {
                    ""
                }
            );
            // AWS names the bucket's region in a header too (the only place a HEAD has).
            let region_header = match code {
                "AuthorizationHeaderMalformed" => {
                    format!("x-amz-bucket-region: {REJECT_REGION}\r\n")
                }
                _ => String::new(),
            };
            let body = if info.method == "HEAD" {
                String::new()
            } else {
                body
            };
            let _ = write!(
                client,
                "HTTP/1.1 {status} Refused\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\
                 {region_header}Connection: close\r\n\r\n{body}",
                body.len()
            );
            // Hang up without reading the body: closing a socket with unread data sends a
            // reset, so a client still sending its body sees its send break (EPIPE, reset).
            let _ = client.shutdown(Shutdown::Write);
            return Ok(());
        }
        Fault::Delay(d) => thread::sleep(d),
        _ => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    let mut new_head = format!("{request_line}\r\n");
    for h in &headers {
        new_head.push_str(h);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");
    server.write_all(new_head.as_bytes())?;

    // Request body: what was read with the head, then the rest, counted; maybe cut short.
    let limit = match fault {
        Fault::ResetAfter(n) => Some(n),
        _ => None,
    };
    let mut forwarded = 0u64;
    let mut pending = rest;
    let mut buf = vec![0u8; 64 << 10];
    while forwarded < content_length {
        if pending.is_empty() {
            let got = client.read(&mut buf)?;
            if got == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..got]);
        }
        let take =
            usize::try_from((content_length - forwarded).min(pending.len() as u64)).unwrap_or(0);
        let take = match limit {
            Some(l) if forwarded + take as u64 > l => usize::try_from(l - forwarded).unwrap_or(0),
            _ => take,
        };
        server.write_all(&pending[..take])?;
        forwarded += take as u64;
        counters
            .body_bytes_up
            .fetch_add(take as u64, Ordering::Relaxed);
        pending.drain(..take);
        if limit.is_some_and(|l| forwarded >= l) {
            reset(&client);
            reset(&server);
            return Ok(());
        }
    }
    // Response: pipe until the server closes (it was told to).
    let mut first = true;
    loop {
        let got = server.read(&mut buf)?;
        if got == 0 {
            break;
        }
        if first {
            first = false;
            if info.is_part_upload() && buf[..got].starts_with(b"HTTP/1.1 200") {
                counters.parts_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        client.write_all(&buf[..got])?;
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Read up to the end of the request head; returns (head without the blank line, bytes after).
fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data[pos + 4..].to_vec();
            data.truncate(pos);
            return Ok((data, rest));
        }
        if data.len() > 1 << 20 {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "closed before the request head ended",
            ));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// A plain TCP relay on loopback (no HTTP parsing, connections kept alive) that counts the
/// connections it accepts and can go down for a while: connections refused and open ones cut,
/// as when a server is stopped and started again.
pub struct Relay {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let relay = Relay {
            addr,
            connections: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Mutex::new(Vec::new())),
        };
        let (connections, down, stop, live) = (
            relay.connections.clone(),
            relay.down.clone(),
            relay.stop.clone(),
            relay.live.clone(),
        );
        thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop.load(Ordering::Relaxed) {
                if down.load(Ordering::Relaxed) {
                    // Closed: connecting is refused, as with a stopped server.
                    listener = None;
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let Some(l) = listener.as_ref() else {
                    listener = TcpListener::bind(addr).ok();
                    if let Some(l) = &listener {
                        let _ = l.set_nonblocking(true);
                    }
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = l.set_nonblocking(true);
                match l.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        connections.fetch_add(1, Ordering::Relaxed);
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        if let (Ok(a), Ok(b), Ok(mut all)) =
                            (conn.try_clone(), server.try_clone(), live.lock())
                        {
                            all.push(a);
                            all.push(b);
                        }
                        spawn_pipe(&conn, &server);
                        spawn_pipe(&server, &conn);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        relay
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Go down now for `length` (returns at once).
    pub fn outage(&self, length: Duration) {
        self.down.store(true, Ordering::Relaxed);
        if let Ok(mut all) = self.live.lock() {
            for stream in all.drain(..) {
                reset(&stream);
            }
        }
        let down = self.down.clone();
        thread::spawn(move || {
            thread::sleep(length);
            down.store(false, Ordering::Relaxed);
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Run `test` against every server installed here (moto, s3s-fs); none is a test not run.
pub fn for_each_server(test: impl Fn(&Server)) {
    let servers = servers();
    if servers.is_empty() {
        imsctl_testkit::not_run!("no S3 server installed (moto_server, s3s-fs)");
    }
    for server in &servers {
        eprintln!("-- against {}", server.name);
        test(server);
    }
}

/// A file of `len` pseudo-random bytes (seeded: reproducible, incompressible).
pub fn random_file(dir: &std::path::Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("write");
    path
}

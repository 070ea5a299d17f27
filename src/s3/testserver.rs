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
        eprintln!(
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
        eprintln!("note: moto_server did not start on {addr}; skipping the moto run");
        return None;
    }
    Some(Server {
        name: "moto",
        addr,
        child,
        _dir: None,
    })
}

/// s3s-fs on a free loopback port, verifying signatures with KEY/SECRET; None (with a note)
/// when it is not installed.
pub fn s3s_fs() -> Option<Server> {
    let Some(program) = find_program("s3s-fs") else {
        eprintln!(
            "note: s3s-fs not installed; skipping the s3s-fs run \
             (cargo install s3s-fs@0.14.1 --features binary --locked)"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !wait_listening(addr, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("note: s3s-fs did not start on {addr}; skipping the s3s-fs run");
        return None;
    }
    Some(Server {
        name: "s3s-fs",
        addr,
        child,
        _dir: Some(dir),
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
}

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
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let pass: Arc<Plan> = Arc::new(|_: &RequestInfo, _: u64| Fault::Pass);
        let plan = Arc::new(Mutex::new(pass));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (counters, plan, stop) = (counters.clone(), plan.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (counters, plan) = (counters.clone(), plan.clone());
                    thread::spawn(move || {
                        let _ = handle(conn, upstream, &counters, &plan);
                    });
                }
            });
        }
        FaultProxy {
            addr,
            counters,
            plan,
            stop,
        }
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
        if lower.starts_with("connection:") {
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

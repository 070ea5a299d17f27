//! The SSH protocol side of a job's server (russh): public-key authentication against the one
//! key of the job, and session channels (shell, exec, sftp) whose processes run inside the job's
//! sandbox through `imsctl internal-enter` (see [`crate::sandbox::enter`]). What it offers is
//! [`super::config`]'s; who may connect, [`super::throttle`]'s.
//!
//! Each session channel is one task: it collects the pty and environment requests, starts the
//! process on the first shell/exec/subsystem request, then pumps bytes both ways and ends with
//! the exit status, EOF and close, in that order, as sshd does.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use nix::pty::Winsize;
use russh::keys::{Algorithm, Certificate, PrivateKey, PublicKey};
use russh::server::{Auth, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::accept::{self, Serving};
use super::throttle::{Limits, Startup, Throttle};
use super::{config, keys};
use crate::sandbox::enter::encode_winsize;

/// How session processes are started: which sandbox, and as which view.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// This executable, run as `internal-enter`.
    pub exe: PathBuf,
    /// The holding session, the view and the confinement of its processes.
    pub target: crate::sandbox::enter::Target,
    /// What every session's environment holds for the job (IMS's IMS_JOB_ID, IMS_ARCH, ...).
    pub job_env: Vec<(String, String)>,
}

/// What a channel asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Shell,
    Exec(String),
    Sftp,
}

/// Requests that precede the start.
#[derive(Debug, Default)]
struct Setup {
    pty: Option<(String, Winsize)>,
    env: Vec<(String, String)>,
}

/// How many session channels are open, and since when that number last changed: lets the
/// server close after a signal file once the client's trailing work is done (Ansible still
/// cleans its temp dir after the task that wrote the complete file).
#[derive(Debug)]
pub struct Activity {
    open: std::sync::atomic::AtomicUsize,
    changed: std::sync::Mutex<std::time::Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open: Default::default(),
            changed: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }
}

impl Activity {
    fn touch(&self) {
        if let Ok(mut at) = self.changed.lock() {
            *at = std::time::Instant::now();
        }
    }

    /// Counts a channel as open until the guard is dropped.
    fn channel_opened(self: &Arc<Self>) -> ChannelGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.touch();
        ChannelGuard(self.clone())
    }

    /// How long no session channel has been open; None while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        self.changed.lock().ok().map(|at| at.elapsed())
    }
}

struct ChannelGuard(Arc<Activity>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.touch();
    }
}

/// One client connection.
pub struct Connection {
    accepted: Arc<PublicKey>,
    spawner: Arc<Spawner>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    local: SocketAddr,
    /// Where authentication results go: the throttle counts and penalises by them.
    startup: Arc<Startup>,
}

/// Makes a [`Connection`] per client.
#[derive(Clone)]
pub struct Server {
    pub accepted: Arc<PublicKey>,
    pub spawner: Arc<Spawner>,
    pub activity: Arc<Activity>,
    pub local: SocketAddr,
}

impl Server {
    /// Serve on `listener` with the job's host key, until stopped (see [`accept::serve`]).
    pub fn serve(self, listener: tokio::net::TcpListener, host_key: PrivateKey) -> Serving {
        let config = Arc::new(config::server_config(host_key));
        let throttle = Throttle::new(Limits::default());
        accept::serve(listener, config, throttle, move |peer, startup| {
            self.connection(peer, startup)
        })
    }

    fn connection(&self, peer: SocketAddr, startup: Arc<Startup>) -> Connection {
        eprintln!("imsctl ssh: connection from {peer}");
        Connection {
            accepted: self.accepted.clone(),
            spawner: self.spawner.clone(),
            activity: self.activity.clone(),
            peer,
            local: self.local,
            startup,
        }
    }
}

/// A refusal that lists publickey as the only way on, whatever was tried.
fn refuse() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(config::methods()),
        partial_success: false,
    }
}

impl Connection {
    /// The job's key, signed with an accepted algorithm.
    fn is_accepted(&self, key: &PublicKey, algorithm: &Algorithm) -> bool {
        keys::same_key(key, &self.accepted) && config::accepts_signature(algorithm)
    }

    fn judge(&self, user: &str, key: &PublicKey, algorithm: &Algorithm) -> Auth {
        if self.is_accepted(key, algorithm) {
            Auth::Accept
        } else {
            eprintln!(
                "imsctl ssh: refused key {} ({algorithm}) for user {user} from {}",
                keys::fingerprint(key),
                self.peer
            );
            self.failed()
        }
    }

    /// An authentication attempt failed: counted against the source if none succeeds.
    fn failed(&self) -> Auth {
        self.startup.failed();
        refuse()
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        // What clients send first to learn the methods: not an attempt.
        Ok(refuse())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        eprintln!(
            "imsctl ssh: refused password authentication for user {user} from {}",
            self.peer
        );
        Ok(self.failed())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        eprintln!(
            "imsctl ssh: refused keyboard-interactive authentication for user {user} from {}",
            self.peer
        );
        Ok(self.failed())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a probe: refused keys are logged once their owner signs (auth_publickey).
        Ok(if self.is_accepted(offer.public_key, offer.algorithm) {
            Auth::Accept
        } else {
            self.failed()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.judge(user, key.public_key, key.algorithm))
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        // The job trusts one key, no certificate authority.
        Ok(self.failed())
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.startup.authenticated();
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let handle = session.handle();
        let spawner = self.spawner.clone();
        let connection = connection_env(self.peer, self.local);
        let guard = self.activity.channel_opened();
        tokio::spawn(async move {
            run_channel(channel, handle, spawner, connection).await;
            drop(guard);
        });
        Ok(())
    }

    // Replies go out here, in request order, where russh knows whether the client wants one;
    // the channel's task sees the same requests and acts on them.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if accepted_env(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// What a login as root sets (PATH is the sandbox's, set by `internal-enter` when absent).
pub fn login_env() -> Vec<(String, String)> {
    [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Client-sent variables passed in, as sshd's default AcceptEnv (LANG, LC_*) plus TERM and TZ.
pub fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "TZ"
}

/// SSH_CLIENT and SSH_CONNECTION, as sshd sets them.
fn connection_env(peer: SocketAddr, local: SocketAddr) -> Vec<(String, String)> {
    vec![
        (
            "SSH_CLIENT".into(),
            format!("{} {} {}", peer.ip(), peer.port(), local.port()),
        ),
        (
            "SSH_CONNECTION".into(),
            format!(
                "{} {} {} {}",
                peer.ip(),
                peer.port(),
                local.ip(),
                local.port()
            ),
        ),
    ]
}

/// A channel's whole life: requests, the process, the pumping, the end.
async fn run_channel(
    channel: Channel<Msg>,
    handle: Handle,
    spawner: Arc<Spawner>,
    connection: Vec<(String, String)>,
) {
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let mut setup = Setup::default();
    let start = loop {
        match rx.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            }) => setup.pty = Some((term, winsize(col_width, row_height, pix_width, pix_height))),
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if accepted_env(&variable_name) => setup.env.push((variable_name, variable_value)),
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            }) => {
                if let Some((_, size)) = &mut setup.pty {
                    *size = winsize(col_width, row_height, pix_width, pix_height);
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break Start::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Start::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Start::Sftp,
            Some(_) => {}
        }
    };
    let mut env = session_env(&setup, &connection);
    env.extend(spawner.job_env.iter().cloned());
    let pty = if start == Start::Sftp {
        None // the SFTP protocol needs a clean 8-bit channel
    } else {
        setup.pty.take()
    };
    if let Some((term, _)) = &pty {
        env.push(("TERM".into(), term.clone()));
    }
    let size = pty.map(|(_, size)| size);
    let outcome = run_session(&spawner, &start, env, size, &mut rx, &tx).await;
    finish_channel(id, &handle, &tx, outcome).await;
}

fn winsize(cols: u32, rows: u32, xpixel: u32, ypixel: u32) -> Winsize {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    Winsize {
        ws_row: clamp(rows),
        ws_col: clamp(cols),
        ws_xpixel: clamp(xpixel),
        ws_ypixel: clamp(ypixel),
    }
}

/// The session's environment: a clean one, as a login gives (nothing of the server's own,
/// e.g. S3 credentials, leaks in).
fn session_env(setup: &Setup, connection: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = login_env();
    env.extend(connection.iter().cloned());
    env.extend(setup.env.iter().cloned());
    env
}

/// How a session's process ended, for the client.
enum Outcome {
    Exited(u32),
    Signalled(Sig),
    /// The process could not be started: the message goes to the client's stderr.
    NotStarted(String),
    /// The client went away first; the process was killed.
    ClientGone,
}

fn command_for(spawner: &Spawner, start: &Start) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spawner.exe);
    cmd.arg("internal-enter").args(spawner.target.args());
    match start {
        Start::Shell => {
            cmd.arg("--login-shell");
        }
        Start::Exec(command) => {
            cmd.arg("--command").arg(command);
        }
        Start::Sftp => {
            cmd.arg("--sftp");
        }
    }
    cmd.env_clear().kill_on_drop(true);
    cmd
}

/// Run the session's process and pump its streams. With a terminal, `internal-enter` opens it
/// inside the sandbox and relays it over the same pipes; window sizes go down a control pipe.
async fn run_session(
    spawner: &Spawner,
    start: &Start,
    env: Vec<(String, String)>,
    pty: Option<Winsize>,
    rx: &mut russh::ChannelReadHalf,
    tx: &russh::ChannelWriteHalf<Msg>,
) -> Outcome {
    let mut cmd = command_for(spawner, start);
    cmd.envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let control = match pty.map(|size| with_terminal(&mut cmd, &size)).transpose() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::NotStarted(format!("imsctl: failed to set up the terminal: {e}\n"));
        }
    };
    let spawned = cmd.spawn();
    // The session has its own copy of the control pipe's read end now.
    let mut control = control.map(|(read, write)| {
        drop(read);
        std::fs::File::from(write)
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(spawn_error(spawner, &e)),
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Outcome::NotStarted("imsctl: session streams are missing\n".into());
    };
    // Input goes through a queue to its own task, so that a process that does not read its
    // standard input never stops this loop from seeing its exit, a close or a signal.
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut input = child.stdin.take().map(|stdin| {
        let (queue, pending) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(feed_stdin(stdin, pending, queued.clone()));
        queue
    });
    let out = tokio::spawn(copy_out(stdout, tx.make_writer()));
    let err = tokio::spawn(copy_out(stderr, tx.make_writer_ext(Some(1))));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    use std::sync::atomic::Ordering;
                    let sent = input.as_ref().is_some_and(|queue| {
                        queued.fetch_add(data.len(), Ordering::SeqCst);
                        queue.send(data.to_vec()).is_ok()
                    });
                    if !sent || queued.load(Ordering::SeqCst) > MAX_QUEUED_INPUT {
                        // The process stopped reading (or exited): what comes is dropped.
                        input = None;
                    }
                }
                Some(ChannelMsg::Eof) => input = None,
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    if let Some(pipe) = control.as_mut() {
                        let size = winsize(col_width, row_height, pix_width, pix_height);
                        // Non-blocking: a busy relay misses a size rather than stalling the server.
                        match std::io::Write::write(pipe, &encode_winsize(&size)) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => control = None,
                        }
                    }
                }
                Some(ChannelMsg::Signal { signal }) => forward_signal(child.id(), &signal),
                None | Some(ChannelMsg::Close) => {
                    let _ = child.kill().await;
                    return Outcome::ClientGone;
                }
                Some(_) => {}
            }
        }
    };
    drop(input);
    // All output before the exit status, as sshd does.
    let _ = out.await;
    let _ = err.await;
    outcome_of(status)
}

/// Input held for a process that does not read it, at most; then its standard input closes.
const MAX_QUEUED_INPUT: usize = 64 << 20;

async fn feed_stdin(
    mut stdin: tokio::process::ChildStdin,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    while let Some(data) = pending.recv().await {
        let failed = stdin.write_all(&data).await.is_err();
        queued.fetch_sub(data.len(), std::sync::atomic::Ordering::SeqCst);
        if failed {
            break;
        }
    }
    // Dropping stdin here is the process's EOF.
}

async fn copy_out(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// Ask `internal-enter` for a terminal of `size`, and hand it the read end of a control pipe
/// as descriptor 3. Returns both ends: the read end must stay open until the spawn.
fn with_terminal(
    cmd: &mut tokio::process::Command,
    size: &Winsize,
) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Only our end is non-blocking (8-byte records are written whole or not at all).
    let flags = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        &write,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )?;
    cmd.arg("--pty")
        .arg(format!(
            "{}x{}x{}x{}",
            size.ws_row, size.ws_col, size.ws_xpixel, size.ws_ypixel
        ))
        .arg("--control-fd")
        .arg("3");
    let raw = read.as_raw_fd();
    // SAFETY: dup2/fcntl only, between fork and exec; `read` stays open until after the spawn
    // (the caller drops it), so the number refers to it.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                // Already in place: only its close-on-exec flag must go.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((read, write))
}

/// The client's signal request goes to `internal-enter`, which passes it to the process.
fn forward_signal(pid: Option<u32>, signal: &Sig) {
    let sig = match signal {
        Sig::INT => nix::sys::signal::Signal::SIGINT,
        Sig::TERM => nix::sys::signal::Signal::SIGTERM,
        Sig::HUP => nix::sys::signal::Signal::SIGHUP,
        Sig::QUIT => nix::sys::signal::Signal::SIGQUIT,
        Sig::KILL => nix::sys::signal::Signal::SIGKILL,
        _ => return,
    };
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn spawn_error(spawner: &Spawner, e: &std::io::Error) -> String {
    format!(
        "imsctl: failed to start the session with {}: {e}\n",
        spawner.exe.display()
    )
}

fn outcome_of(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Outcome::Exited(code as u32),
            (None, Some(sig)) => Outcome::Signalled(sig_of(sig)),
            _ => Outcome::Exited(255),
        },
        Err(e) => Outcome::NotStarted(format!("imsctl: failed to wait for the session: {e}\n")),
    }
}

fn sig_of(raw: i32) -> Sig {
    match raw {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        other => Sig::Custom(format!("SIG{other}")),
    }
}

async fn finish_channel(
    id: ChannelId,
    handle: &Handle,
    tx: &russh::ChannelWriteHalf<Msg>,
    outcome: Outcome,
) {
    match outcome {
        Outcome::ClientGone => return,
        Outcome::Exited(code) => {
            let _ = tx.exit_status(code).await;
        }
        Outcome::Signalled(sig) => {
            let _ = handle
                .exit_signal_request(id, sig, false, String::new(), String::new())
                .await;
        }
        Outcome::NotStarted(message) => {
            eprint!("{message}");
            let _ = tx.extended_data_bytes(1, message.into_bytes()).await;
            let _ = tx.exit_status(127).await;
        }
    }
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::client::{self, AuthResult, KeyboardInteractiveAuthResponse};
    use russh::keys::PrivateKeyWithHashAlg;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::{MethodKind, MethodSet};
    use std::time::Duration;

    struct TrustAnyHost;

    impl client::Handler for TrustAnyHost {
        type Error = russh::Error;

        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A job's server accepting key(1), on a loopback port; sessions would fail to start.
    async fn serve_job() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local = listener.local_addr().expect("address");
        let server = Server {
            accepted: Arc::new(key(1).public_key().clone()),
            spawner: Arc::new(Spawner {
                exe: PathBuf::from("/nonexistent"),
                target: crate::sandbox::enter::Target {
                    holder: 0,
                    jailed: false,
                    confinement: crate::sandbox::Confinement::default(),
                },
                job_env: Vec::new(),
            }),
            activity: Arc::default(),
            local,
        };
        tokio::spawn(server.serve(listener, key(2)));
        local
    }

    async fn connect(addr: SocketAddr) -> Result<client::Handle<TrustAnyHost>, russh::Error> {
        client::connect(Arc::new(client::Config::default()), addr, TrustAnyHost).await
    }

    fn only_publickey() -> MethodSet {
        MethodSet::from(&[MethodKind::PublicKey][..])
    }

    fn refused_naming_only_publickey(result: AuthResult) {
        match result {
            AuthResult::Failure {
                remaining_methods, ..
            } => assert_eq!(remaining_methods, only_publickey()),
            AuthResult::Success => panic!("accepted"),
        }
    }

    #[tokio::test]
    async fn everything_but_the_jobs_key_is_refused_naming_only_publickey_and_costs_its_source() {
        let addr = serve_job().await;
        // The job's key gets in, and costs its source nothing.
        let mut client = connect(addr).await.expect("connect");
        let right = PrivateKeyWithHashAlg::new(Arc::new(key(1)), None);
        assert!(matches!(
            client.authenticate_publickey("root", right).await,
            Ok(AuthResult::Success)
        ));
        drop(client);
        for _ in 0..4 {
            let mut client = connect(addr).await.expect("connect");
            refused_naming_only_publickey(client.authenticate_none("root").await.expect("none"));
            let password = client.authenticate_password("root", "root").await;
            refused_naming_only_publickey(password.expect("password"));
            let interactive = client
                .authenticate_keyboard_interactive_start("root", None)
                .await
                .expect("keyboard-interactive");
            match interactive {
                KeyboardInteractiveAuthResponse::Failure {
                    remaining_methods, ..
                } => assert_eq!(remaining_methods, only_publickey()),
                _ => panic!("keyboard-interactive went on"),
            }
            let other = PrivateKeyWithHashAlg::new(Arc::new(key(3)), None);
            let other = client.authenticate_publickey("root", other).await;
            refused_naming_only_publickey(other.expect("other key"));
            let _ = client
                .disconnect(russh::Disconnect::ByApplication, "", "")
                .await;
            drop(client);
        }
        // Four connections that failed to authenticate, about a second each (the constant
        // rejection time): 20 s of penalty less the 3 s run down, over the 15 s minimum. The
        // source is refused once the last connection's end is accounted for.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(connect(addr).await.is_err(), "the source is penalised");
    }
}

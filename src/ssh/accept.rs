//! The accept loop of a job's SSH server: every connection is admitted by the [`Throttle`]
//! first, must authenticate within the login grace time, and is told why when the server stops.
//!
//! It replaces russh's `run_on_socket`, which starts a key exchange for every connection, lets
//! one that never authenticates (or never sends its version) stay forever, and ends the whole
//! server on any accept error, running out of descriptors included.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::Disconnect;
use russh::server::{Config, Handler, RunningSession, run_stream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::throttle::{Refusal, Startup, Throttle};

/// How long a closing connection gets to send its disconnect message and end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The pause after an accept error that may clear by itself (out of descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The running server: a future that ends once it has stopped (or failed to accept).
pub struct Serving {
    task: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
    stop: Arc<watch::Sender<Option<String>>>,
}

/// Stops the server from outside its future.
#[derive(Clone)]
pub struct StopHandle(Arc<watch::Sender<Option<String>>>);

impl StopHandle {
    /// Stop accepting, and disconnect every client with `reason`. Await the [`Serving`] to
    /// know the messages are out.
    pub fn shutdown(&self, reason: String) {
        self.0.send_replace(Some(reason));
    }
}

impl Serving {
    pub fn handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }
}

impl Future for Serving {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.task.as_mut().poll(cx)
    }
}

/// Serve SSH on `listener`; `new_handler` makes the handler of each admitted connection, which
/// reports authentication to the connection's [`Startup`].
pub fn serve<H, F>(
    listener: TcpListener,
    config: Arc<Config>,
    throttle: Arc<Throttle>,
    mut new_handler: F,
) -> Serving
where
    H: Handler + Send + 'static,
    H::Error: Display,
    F: FnMut(SocketAddr, Arc<Startup>) -> H + Send + 'static,
{
    let stop = Arc::new(watch::Sender::new(None));
    let mut stopping = stop.subscribe();
    let grace = throttle.limits().login_grace;
    let task = async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped(&mut stopping) => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => match throttle.admit(peer.ip()) {
                        Ok(startup) => {
                            let handler = new_handler(peer, startup.clone());
                            let connection = Connection {
                                peer,
                                startup,
                                deadline: Instant::now() + grace,
                                stop: stopping.clone(),
                            };
                            connections.spawn(connection.run(socket, config.clone(), handler));
                        }
                        Err(refusal) => refuse(&socket, peer, refusal),
                    },
                    Err(e) if is_transient(&e) => {
                        eprintln!("imsctl ssh: failed to accept a connection: {e}; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    Err(e) => return Err(e),
                },
                Some(_) = connections.join_next() => {}
            }
        }
        // Every connection sends its disconnect message (bounded by CLOSE_WAIT each).
        while connections.join_next().await.is_some() {}
        Ok(())
    };
    Serving {
        task: Box::pin(task),
        stop,
    }
}

/// Tell the client why, as sshd does, and close. Refusals of a penalised source are not
/// logged: the log says once when its penalty starts.
fn refuse(socket: &TcpStream, peer: SocketAddr, refusal: Refusal) {
    if refusal != Refusal::Penalised {
        eprintln!(
            "imsctl ssh: refused a connection from {peer}: {}",
            refusal.describe()
        );
    }
    // Best effort, and never waits (a new socket's send buffer is empty).
    let _ = socket.try_write(refusal.line());
}

/// accept(2) errors that concern one connection or a passing shortage, not the listener (see
/// its manual page: network errors of the new connection surface there).
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPERM
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Resolves with the stop reason once the server stops (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<Option<String>>) -> String {
    match stop.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the server is stopping".into(),
    }
}

/// One admitted connection, as the accept loop watches it.
struct Connection {
    peer: SocketAddr,
    startup: Arc<Startup>,
    /// The end of its login grace time.
    deadline: Instant,
    stop: watch::Receiver<Option<String>>,
}

impl Connection {
    async fn run<H>(mut self, socket: TcpStream, config: Arc<Config>, handler: H)
    where
        H: Handler + Send + 'static,
        H::Error: Display,
    {
        if config.nodelay {
            let _ = socket.set_nodelay(true);
        }
        // A second descriptor of the socket, to cut it if the session does not end when told.
        let cutoff = socket.as_fd().try_clone_to_owned().ok();
        // The version exchange happens here; a client that never sends its version waits for
        // nothing longer than the grace time.
        let started = tokio::select! {
            started = timeout_at(self.deadline, run_stream(config, socket, handler)) => started,
            _ = stopped(&mut self.stop) => return,
        };
        let mut session = match started {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return log_error(&e),
            Err(_) => return self.grace_exceeded(),
        };
        let mut grace_pending = true;
        loop {
            tokio::select! {
                ended = &mut session => {
                    if let Err(e) = ended {
                        log_error(&e);
                    }
                    return;
                }
                () = sleep_until(self.deadline), if grace_pending => {
                    grace_pending = false;
                    if !self.startup.is_authenticated() {
                        self.grace_exceeded();
                        close(&mut session, cutoff, "login grace time exceeded".into()).await;
                        return;
                    }
                }
                reason = stopped(&mut self.stop) => {
                    close(&mut session, cutoff, reason).await;
                    return;
                }
            }
        }
    }

    fn grace_exceeded(&self) {
        self.startup.grace_exceeded();
        eprintln!(
            "imsctl ssh: closing the connection from {}: it did not authenticate within the login grace time",
            self.peer
        );
    }
}

fn log_error(e: &impl Display) {
    eprintln!("imsctl ssh: session ended with an error: {e}");
}

/// Tell the client why, give the session a moment to end, then cut the socket: a client that
/// does not read must not keep its session (and its handler) alive.
async fn close<H: Handler>(
    session: &mut RunningSession<H>,
    cutoff: Option<OwnedFd>,
    reason: String,
) {
    let handle = session.handle();
    let said = handle.disconnect(Disconnect::ByApplication, reason, String::new());
    let _ = timeout(CLOSE_WAIT, said).await;
    if timeout(CLOSE_WAIT, &mut *session).await.is_err() {
        if let Some(fd) = cutoff {
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        let _ = timeout(CLOSE_WAIT, session).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::throttle::{Limits, Penalties};
    use std::io::{Read, Write};

    /// A handler that accepts nothing: connections stay unauthenticated.
    struct Nobody;

    impl Handler for Nobody {
        type Error = russh::Error;
    }

    fn host_key() -> russh::keys::PrivateKey {
        use russh::keys::ssh_key::private::Ed25519Keypair;
        russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&[7u8; 32]))
    }

    /// A server on a loopback port with these limits, in a runtime of its own thread.
    fn start(limits: Limits) -> (SocketAddr, StopHandle, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("register");
                let config = Arc::new(crate::ssh::config::server_config(host_key()));
                let serving = serve(listener, config, Throttle::new(limits), |_, _| Nobody);
                tx.send(serving.handle()).expect("send");
                serving.await.expect("serve");
            });
        });
        (addr, rx.recv().expect("stop handle"), thread)
    }

    /// What the server says first: its version, or sshd's refusal line; "" if it closes.
    fn first_line(stream: &mut std::net::TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = stream.read(&mut byte) {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        String::from_utf8_lossy(&line).trim_end().to_string()
    }

    fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
        stream.set_read_timeout(Some(limit)).expect("timeout");
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn a_client_that_does_not_authenticate_is_closed_after_the_grace_time_and_penalised() {
        let defaults = Limits::default();
        let limits = Limits {
            login_grace: Duration::from_millis(300),
            penalties: Penalties {
                min: Duration::from_secs(10),
                no_auth: Duration::ZERO,
                ..defaults.penalties
            },
            ..defaults
        };
        let (addr, stop, thread) = start(limits);
        // One sends its version and then nothing; one sends nothing at all.
        let mut silent_after_version = std::net::TcpStream::connect(addr).expect("connect");
        assert!(first_line(&mut silent_after_version).starts_with("SSH-2.0-"));
        silent_after_version
            .write_all(b"SSH-2.0-test\r\n")
            .expect("write");
        let mut silent = std::net::TcpStream::connect(addr).expect("connect");
        let started = std::time::Instant::now();
        assert!(closed_within(
            &mut silent_after_version,
            Duration::from_secs(5)
        ));
        assert!(closed_within(&mut silent, Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(3));
        // 2 × 10 s of grace-exceeded: the source is refused now (the accounting follows the
        // close by a moment; probes cost nothing here).
        let refused = (0..30).any(|_| {
            let mut next = std::net::TcpStream::connect(addr).expect("connect");
            let line = first_line(&mut next);
            std::thread::sleep(Duration::from_millis(100));
            line == "Not allowed at this time"
        });
        assert!(refused, "the source is penalised");
        stop.shutdown("test over".into());
        thread.join().expect("server thread");
    }

    #[test]
    fn past_its_cap_a_source_reads_sshds_refusal_and_no_key_exchange_starts() {
        let limits = Limits {
            per_source_startups: 3,
            ..Limits::default()
        };
        let (addr, stop, thread) = start(limits);
        let mut held: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        for s in &mut held {
            assert!(first_line(s).starts_with("SSH-2.0-"));
        }
        let mut fourth = std::net::TcpStream::connect(addr).expect("connect");
        assert_eq!(first_line(&mut fourth), "Exceeded MaxStartups");
        assert!(closed_within(&mut fourth, Duration::from_secs(5)));
        // Stopping disconnects the held ones and ends the server.
        stop.shutdown("test over".into());
        for s in &mut held {
            assert!(closed_within(s, Duration::from_secs(5)));
        }
        thread.join().expect("server thread");
    }
}

//! The interactive shell's terminal: a pty of the sandbox's own devpts (made inside, its master
//! sent out over a socket) whose slave becomes the shell's controlling terminal,
//! the host terminal in raw mode (restored on every exit path), bytes copied both ways and the
//! window size forwarded on SIGWINCH.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::Winsize;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use super::error::{Error, Result};
use super::process::Running;

static WINCH: AtomicBool = AtomicBool::new(false);
/// Also re-check the window size this often, in case SIGWINCH went to another thread.
const POLL_MS: libc::c_int = 250;

/// A new pty from this mount namespace's /dev/ptmx, sized `size`: the master and the slave's
/// path (inside a sandbox, a pty of its own devpts, which `tty` there can name).
pub(super) fn open_pty(size: Option<&Winsize>) -> Result<(OwnedFd, std::path::PathBuf)> {
    let ptmx = Path::new("/dev/ptmx");
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("open", ptmx, e))?;
    nix::pty::grantpt(&master).map_err(|e| Error::sys("grant pty of", ptmx, e))?;
    nix::pty::unlockpt(&master).map_err(|e| Error::sys("unlock pty of", ptmx, e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| Error::sys("name pty of", ptmx, e))?;
    let master: OwnedFd = master.into();
    if let Some(ws) = size {
        set_window_size(master.as_fd(), ws);
    }
    Ok((master, name.into()))
}

/// In the sandbox: open a pty of its devpts, send the master over `channel`, return the slave.
pub fn open_inside(channel: &OwnedFd, size: Option<&Winsize>) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let (master, name) = open_pty(size)?;
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"M")];
    sendmsg::<()>(
        channel.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::sys("send the pty master over", "socket", e))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys("open terminal", &name, e))?;
    Ok(slave)
}

/// Outside: the master [`open_inside`] sends; an error when the command ended before sending.
pub fn receive_master(channel: &OwnedFd) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::sys("receive the pty master over", "socket", e))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| Error::sys("read the message of", "socket", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(Error::Setup(
        "the shell ended before its terminal was set up".into(),
    ))
}

/// The window size of the terminal `fd`, if it is one.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<Winsize> {
    window_size(fd)
}

/// The host terminal in raw mode; the original settings come back when dropped.
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    pub fn enter(fd: BorrowedFd<'a>) -> Result<RawMode<'a>> {
        let saved =
            tcgetattr(fd).map_err(|e| Error::sys("read terminal settings of", "stdin", e))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSADRAIN, &raw)
            .map_err(|e| Error::sys("set raw mode on", "stdin", e))?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

fn window_size(fd: BorrowedFd<'_>) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a struct winsize.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws as *mut Winsize) };
    (rc == 0).then_some(ws)
}

/// O_NONBLOCK on a pty master.
pub(super) fn set_nonblocking(master: &OwnedFd) -> Result<()> {
    let ptmx = Path::new("/dev/ptmx");
    let flags =
        fcntl(master, FcntlArg::F_GETFL).map_err(|e| Error::sys("read flags of", ptmx, e))?;
    fcntl(
        master,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| Error::sys("set non-blocking on", ptmx, e))?;
    Ok(())
}

pub(super) fn set_window_size(fd: BorrowedFd<'_>, ws: &Winsize) {
    // SAFETY: TIOCSWINSZ reads a struct winsize; the kernel then signals the pty's foreground group.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const Winsize) };
}

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::Relaxed);
}

/// SIGWINCH handler installed for the session; the previous one comes back when dropped.
struct WinchHandler(SigAction);

impl WinchHandler {
    fn install() -> Option<WinchHandler> {
        let action = SigAction::new(
            SigHandler::Handler(on_winch),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(Signal::SIGWINCH, &action) }
            .ok()
            .map(WinchHandler)
    }
}

impl Drop for WinchHandler {
    fn drop(&mut self) {
        // SAFETY: restoring the disposition that was there before.
        let _ = unsafe { sigaction(Signal::SIGWINCH, &self.0) };
    }
}

/// Copy between the host terminal and the pty master until the session reports its end.
pub fn relay(
    term_in: BorrowedFd<'_>,
    term_out: BorrowedFd<'_>,
    master: &OwnedFd,
    running: &mut Running,
) -> Result<()> {
    let ptmx = Path::new("/dev/ptmx");
    set_nonblocking(master)?;
    let _winch = WinchHandler::install();
    let mut last_size = window_size(term_in);
    let mut to_child: Vec<u8> = Vec::new();
    let mut input_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let size = window_size(term_in);
        if WINCH.swap(false, Ordering::Relaxed) || size != last_size {
            if let Some(ws) = size.as_ref() {
                set_window_size(master.as_fd(), ws);
            }
            last_size = size;
        }
        let mut fds = [
            pollfd(running.reports_fd().as_raw_fd(), libc::POLLIN),
            pollfd(
                master.as_raw_fd(),
                libc::POLLIN
                    | if to_child.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
            ),
            pollfd(
                if input_open && to_child.len() < 65536 {
                    term_in.as_raw_fd()
                } else {
                    -1
                },
                libc::POLLIN,
            ),
        ];
        // SAFETY: poll on an array of valid pollfds (fd -1 entries are ignored).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if rc < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(Error::sys("poll terminal and", ptmx, Errno::last()));
        }
        if fds[1].revents & libc::POLLIN != 0 && !copy_out(master, term_out, &mut buf)? {
            break;
        }
        if fds[1].revents & libc::POLLOUT != 0 {
            match nix::unistd::write(master, &to_child) {
                Ok(n) => drop(to_child.drain(..n)),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(Errno::EIO) => break,
                Err(e) => return Err(Error::sys("write to", ptmx, e)),
            }
        }
        if fds[2].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            match nix::unistd::read(term_in, &mut buf) {
                Ok(0) => input_open = false,
                Ok(n) => to_child.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => input_open = false,
            }
        }
        if fds[0].revents != 0 && running.session_over() {
            break; // the shell has exited and pid 1 is reporting
        }
        if fds[1].revents & libc::POLLHUP != 0 && fds[1].revents & libc::POLLIN == 0 {
            break;
        }
    }
    // Whatever the shell wrote last is still in the pty's buffer.
    while copy_out(master, term_out, &mut buf)? {}
    Ok(())
}

/// Copy one read of the master to the terminal; false when nothing more can come.
fn copy_out(master: &OwnedFd, term_out: BorrowedFd<'_>, buf: &mut [u8]) -> Result<bool> {
    match nix::unistd::read(master, buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            write_all(term_out, &buf[..n])?;
            Ok(true)
        }
        Err(Errno::EINTR) => Ok(true),
        // EAGAIN: drained for now; EIO: every slave descriptor is closed.
        Err(_) => Ok(false),
    }
}

pub(super) fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(e) => return Err(Error::sys("write to", "stdout", e)),
        }
    }
    Ok(())
}

pub(super) fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

//! What the sandbox's processes tell each other, as types.
//!
//! Two channels, both pipes (youki's `process/message.rs` + `channel.rs` are the model):
//!
//! - **Reports** flow up from C1 (the holder) and pid 1 to imsctl, as many as happen:
//!   [`Report`]. Each is one `write` of at most `PIPE_BUF` bytes, so the two writers cannot
//!   interleave; a reader decodes whatever complete reports it has and ignores a cut-off tail.
//! - **The id-mapping handshake** of a rootless session: the child that unshared its user
//!   namespace says [`Handshake::Unshared`]; the side that writes the id maps answers
//!   [`Handshake::Go`] or [`Handshake::Abort`] (its own error says why).
//!
//! The encoding is private to this module: tag byte, little-endian u32 length, payload.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// A report from the sandbox's processes to imsctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// Setting the sandbox up failed; the command did not run (or could not be executed).
    SetupError(String),
    /// Tearing down failed after the command ran.
    CleanupError(String),
    /// The command's wait status, raw (`ExitStatus::from_raw`).
    Status(i32),
    /// pid 1's pid as the host sees it (sent by C1).
    Pid(i32),
    /// A holding session has its mounts in place.
    Ready,
    /// pid 1 put the image's own resolv.conf back: the host may forget the swap's state file.
    ResolvRestored,
}

/// Each message stays within PIPE_BUF (4096) so concurrent writers cannot interleave; longer
/// error texts are cut.
const MAX_PAYLOAD: usize = 3800;
const HEADER: usize = 5;

impl Report {
    fn tag(&self) -> u8 {
        match self {
            Report::SetupError(_) => b'E',
            Report::CleanupError(_) => b'C',
            Report::Status(_) => b'S',
            Report::Pid(_) => b'P',
            Report::Ready => b'R',
            Report::ResolvRestored => b'V',
        }
    }

    fn encode(&self) -> Vec<u8> {
        let payload: &[u8] = match self {
            Report::SetupError(text) | Report::CleanupError(text) => text.as_bytes(),
            Report::Status(n) | Report::Pid(n) => &n.to_le_bytes(),
            Report::Ready | Report::ResolvRestored => &[],
        };
        let payload = &payload[..floor_char_boundary(payload, MAX_PAYLOAD)];
        let mut msg = Vec::with_capacity(HEADER + payload.len());
        msg.push(self.tag());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        msg
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Report> {
        let text = || String::from_utf8_lossy(payload).into_owned();
        let number = || <[u8; 4]>::try_from(payload).ok().map(i32::from_le_bytes);
        Some(match tag {
            b'E' => Report::SetupError(text()),
            b'C' => Report::CleanupError(text()),
            b'S' => Report::Status(number()?),
            b'P' => Report::Pid(number()?),
            b'R' => Report::Ready,
            b'V' => Report::ResolvRestored,
            _ => return None,
        })
    }

    /// Every complete report in `bytes`, in order; a cut-off tail and unknown tags are skipped.
    pub(crate) fn decode_all(mut bytes: &[u8]) -> Vec<Report> {
        let mut out = Vec::new();
        while bytes.len() >= HEADER {
            let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            let Some(payload) = bytes.get(HEADER..HEADER + len) else {
                break;
            };
            out.extend(Report::decode(bytes[0], payload));
            bytes = &bytes[HEADER + len..];
        }
        out
    }
}

/// The longest prefix of `bytes` within `max` that does not cut a UTF-8 character in two.
fn floor_char_boundary(bytes: &[u8], max: usize) -> usize {
    let mut end = bytes.len().min(max);
    while end > 0 && end < bytes.len() && (bytes[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    end
}

/// Send `report` up the report pipe. Best effort: a reader that is gone cannot be told.
pub(crate) fn send(fd: RawFd, report: &Report) {
    let _ = write_all(fd, &report.encode());
}

/// The rootless id-mapping handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The child has unshared its user namespace: map its ids now.
    Unshared,
    /// The ids are mapped: go on.
    Go,
    /// Mapping failed: stop (the mapping side reports why).
    Abort,
}

impl Handshake {
    fn byte(self) -> u8 {
        match self {
            Handshake::Unshared => b'R',
            Handshake::Go => b'G',
            Handshake::Abort => b'X',
        }
    }

    /// Tell the other side.
    pub(crate) fn signal(self, fd: impl AsFd) -> nix::Result<()> {
        write_all(fd.as_fd().as_raw_fd(), &[self.byte()])
    }

    /// Wait for the other side; None when it closed the pipe first (it died or failed).
    pub(crate) fn wait_for(fd: &OwnedFd) -> Option<Handshake> {
        let byte = read_byte(fd)?;
        [Handshake::Unshared, Handshake::Go, Handshake::Abort]
            .into_iter()
            .find(|h| h.byte() == byte)
    }
}

pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> nix::Result<()> {
    // SAFETY: borrowing a descriptor the caller keeps open for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(1) => return Some(b[0]),
            Err(Errno::EINTR) => continue,
            _ => return None,
        }
    }
}

/// Everything until every writer has closed (or a read fails).
pub(crate) fn read_to_end(fd: impl AsFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(_) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    #[test]
    fn reports_round_trip_and_a_cut_off_tail_is_ignored() {
        let (r, w) = pipe();
        let sent = [
            Report::SetupError("failed to mount x on /y: EPERM".into()),
            Report::Status(3 << 8),
            Report::Pid(4242),
            Report::Ready,
            Report::ResolvRestored,
            Report::CleanupError("failed to unmount /z: EBUSY".into()),
        ];
        for report in &sent {
            send(w.as_raw_fd(), report);
        }
        drop(w);
        let mut bytes = read_to_end(&r);
        bytes.extend_from_slice(&[b'C', 50, 0, 0, 0, b'x']);
        assert_eq!(Report::decode_all(&bytes), sent);
    }

    #[test]
    fn a_number_of_the_wrong_width_or_an_unknown_tag_is_skipped() {
        let mut bytes = vec![b'S', 2, 0, 0, 0, 1, 2];
        bytes.extend_from_slice(&[b'?', 0, 0, 0, 0]);
        bytes.extend(Report::Ready.encode());
        assert_eq!(Report::decode_all(&bytes), [Report::Ready]);
    }

    #[test]
    fn long_messages_stay_within_pipe_buf_and_whole_characters() {
        let (r, w) = pipe();
        send(w.as_raw_fd(), &Report::SetupError("é".repeat(5000)));
        drop(w);
        let bytes = read_to_end(&r);
        assert!(bytes.len() <= 4096);
        let [Report::SetupError(text)] = &Report::decode_all(&bytes)[..] else {
            panic!("one setup error");
        };
        assert_eq!(text.len(), MAX_PAYLOAD);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_handshake_reads_what_was_signalled_and_none_after_a_close() {
        let (r, w) = pipe();
        Handshake::Unshared.signal(&w).expect("signal");
        Handshake::Abort.signal(&w).expect("signal");
        drop(w);
        assert_eq!(Handshake::wait_for(&r), Some(Handshake::Unshared));
        assert_eq!(Handshake::wait_for(&r), Some(Handshake::Abort));
        assert_eq!(Handshake::wait_for(&r), None);
    }
}

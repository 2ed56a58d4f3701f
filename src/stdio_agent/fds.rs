//! The agent's stdin and stdout as async streams, read and written on the
//! runtime's own event loop when they are pipes or sockets.
//!
//! `tokio::io::stdin()` and `stdout()` do every read and write on a thread of
//! the blocking pool: two thread hand-offs per call (the request read, the
//! answer written), and with them most of the context switches of a call
//! through `airlock stdio` (about 11 per call with the pool, 2 without;
//! `scripts/stdio_cost_per_call.py`). Clients that spawn servers give them pipes
//! (Python's `subprocess`) or UNIX socket pairs (Node's `child_process`, so
//! Claude Desktop), both of which epoll can watch; for those, a duplicate of
//! the descriptor is registered with the runtime instead.
//!
//! That needs `O_NONBLOCK`, which lives on the open file description and so is
//! shared with anything else holding the same end. The agent holds the other
//! end; the cases that share ours are handled: a descriptor is driven by the
//! event loop only when none of the other two standard descriptors is the
//! same pipe or socket (`2>&1`, or one socket for all three as socat or
//! systemd's socket activation give: our log writes, and the other direction,
//! must not meet `EAGAIN` on a blocking path), and each end that was blocking
//! is put back in blocking mode when Airlock is done with it (a wrapper shell
//! that ran Airlock without `exec` keeps using them; stdout is not, when
//! shutdown gives up on a writer the agent stopped reading). Anything else (a
//! terminal, a file) takes tokio's blocking-pool path, as before.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

/// The agent's stdin.
pub enum Stdin {
    Pipe(pipe::Receiver, Restore),
    Socket(UnixStream, Restore),
    Blocking(tokio::io::Stdin),
}

/// The agent's stdout.
pub enum Stdout {
    Pipe(pipe::Sender, Restore),
    Socket(UnixStream, Restore),
    Blocking(tokio::io::Stdout),
}

/// Whether the descriptor was blocking before Airlock drove it (and so is
/// put back that way).
#[derive(Clone, Copy)]
pub struct Restore(bool);

/// What a descriptor is, as far as choosing how to drive it goes.
#[derive(PartialEq)]
enum Kind {
    Pipe,
    Socket,
    Other,
}

/// One standard descriptor: its duplicate, what it is, and which file.
struct Probe {
    fd: OwnedFd,
    kind: Kind,
    file: (u64, u64),
    restore: Restore,
}

fn probe(fd: BorrowedFd<'_>) -> io::Result<Probe> {
    let fd = fd.try_clone_to_owned()?;
    let meta = File::from(fd.try_clone()?).metadata()?;
    let ty = meta.file_type();
    let kind = if ty.is_fifo() {
        Kind::Pipe
    } else if ty.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    Ok(Probe {
        fd,
        kind,
        file: (meta.dev(), meta.ino()),
        restore: Restore(!flags.contains(OFlag::O_NONBLOCK)),
    })
}

/// `target`, if it is a pipe or socket that no other standard descriptor
/// shares (a closed one cannot: Rust opens /dev/null in its place).
fn drivable(target: BorrowedFd<'_>, others: [BorrowedFd<'_>; 2]) -> io::Result<Option<Probe>> {
    let p = probe(target)?;
    if p.kind == Kind::Other {
        return Ok(None);
    }
    for other in others {
        if probe(other)?.file == p.file {
            return Ok(None);
        }
    }
    Ok(Some(p))
}

fn socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

/// Must be called inside the runtime.
pub fn stdin() -> Stdin {
    let driven = || -> io::Result<Option<Stdin>> {
        let (out, err) = (io::stdout(), io::stderr());
        let Some(p) = drivable(io::stdin().as_fd(), [out.as_fd(), err.as_fd()])? else {
            return Ok(None);
        };
        Ok(Some(match p.kind {
            Kind::Pipe => Stdin::Pipe(pipe::Receiver::from_owned_fd(p.fd)?, p.restore),
            _ => Stdin::Socket(socket(p.fd)?, p.restore),
        }))
    };
    match driven() {
        Ok(Some(stdin)) => stdin,
        Ok(None) => Stdin::Blocking(tokio::io::stdin()),
        Err(e) => {
            tracing::debug!("stdin stays on the blocking pool: {e}");
            Stdin::Blocking(tokio::io::stdin())
        }
    }
}

/// Must be called inside the runtime.
pub fn stdout() -> Stdout {
    let driven = || -> io::Result<Option<Stdout>> {
        let (input, err) = (io::stdin(), io::stderr());
        let Some(p) = drivable(io::stdout().as_fd(), [input.as_fd(), err.as_fd()])? else {
            return Ok(None);
        };
        Ok(Some(match p.kind {
            Kind::Pipe => Stdout::Pipe(pipe::Sender::from_owned_fd(p.fd)?, p.restore),
            _ => Stdout::Socket(socket(p.fd)?, p.restore),
        }))
    };
    match driven() {
        Ok(Some(stdout)) => stdout,
        Ok(None) => Stdout::Blocking(tokio::io::stdout()),
        Err(e) => {
            tracing::debug!("stdout stays on the blocking pool: {e}");
            Stdout::Blocking(tokio::io::stdout())
        }
    }
}

/// Puts a socket end back in blocking mode (dropping the duplicate).
fn socket_blocking(s: UnixStream) -> io::Result<()> {
    s.into_std()?.set_nonblocking(false)
}

impl Stdin {
    /// Puts the descriptor back in blocking mode for whoever shares it, if it
    /// was blocking when Airlock started.
    pub fn restore(self) {
        let restored = match self {
            Stdin::Pipe(p, Restore(true)) => p.into_blocking_fd().map(drop),
            Stdin::Socket(s, Restore(true)) => socket_blocking(s),
            _ => Ok(()),
        };
        if let Err(e) = restored {
            tracing::debug!("could not put stdin back in blocking mode: {e}");
        }
    }
}

impl Stdout {
    /// Puts the descriptor back in blocking mode for whoever shares it, if it
    /// was blocking when Airlock started.
    pub fn restore(self) {
        let restored = match self {
            Stdout::Pipe(p, Restore(true)) => p.into_blocking_fd().map(drop),
            Stdout::Socket(s, Restore(true)) => socket_blocking(s),
            _ => Ok(()),
        };
        if let Err(e) = restored {
            tracing::debug!("could not put stdout back in blocking mode: {e}");
        }
    }
}

impl AsyncRead for Stdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdin::Pipe(p, _) => Pin::new(p).poll_read(cx, buf),
            Stdin::Socket(s, _) => Pin::new(s).poll_read(cx, buf),
            Stdin::Blocking(b) => Pin::new(b).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stdout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stdout::Pipe(p, _) => Pin::new(p).poll_write(cx, buf),
            Stdout::Socket(s, _) => Pin::new(s).poll_write(cx, buf),
            Stdout::Blocking(b) => Pin::new(b).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Pipe(p, _) => Pin::new(p).poll_flush(cx),
            Stdout::Socket(s, _) => Pin::new(s).poll_flush(cx),
            Stdout::Blocking(b) => Pin::new(b).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Pipe(p, _) => Pin::new(p).poll_shutdown(cx),
            Stdout::Socket(s, _) => Pin::new(s).poll_shutdown(cx),
            Stdout::Blocking(b) => Pin::new(b).poll_shutdown(cx),
        }
    }
}

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

/// One of the agent's standard streams: on the event loop (a pipe end or a
/// socket, with whether to put it back in blocking mode), or tokio's
/// blocking-pool stream `B`.
pub enum End<P, B> {
    Pipe(P, Restore),
    Socket(UnixStream, Restore),
    Blocking(B),
}

/// The agent's stdin.
pub type Stdin = End<pipe::Receiver, tokio::io::Stdin>;
/// The agent's stdout.
pub type Stdout = End<pipe::Sender, tokio::io::Stdout>;

/// Whether the descriptor was blocking before Airlock drove it (and so is
/// put back that way).
#[derive(Clone, Copy)]
pub struct Restore(bool);

/// tokio's two pipe ends, which share these two calls but no trait.
pub trait PipeEnd: Sized {
    fn from_fd(fd: OwnedFd) -> io::Result<Self>;
    fn into_blocking(self) -> io::Result<OwnedFd>;
}

impl PipeEnd for pipe::Receiver {
    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        pipe::Receiver::from_owned_fd(fd)
    }
    fn into_blocking(self) -> io::Result<OwnedFd> {
        self.into_blocking_fd()
    }
}

impl PipeEnd for pipe::Sender {
    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        pipe::Sender::from_owned_fd(fd)
    }
    fn into_blocking(self) -> io::Result<OwnedFd> {
        self.into_blocking_fd()
    }
}

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

/// `target` on the event loop if it can be, else `blocking()`.
fn open<P: PipeEnd, B>(
    name: &str,
    target: BorrowedFd<'_>,
    others: [BorrowedFd<'_>; 2],
    blocking: fn() -> B,
) -> End<P, B> {
    let driven = || -> io::Result<Option<End<P, B>>> {
        let Some(p) = drivable(target, others)? else {
            return Ok(None);
        };
        Ok(Some(match p.kind {
            Kind::Pipe => End::Pipe(P::from_fd(p.fd)?, p.restore),
            _ => End::Socket(socket(p.fd)?, p.restore),
        }))
    };
    match driven() {
        Ok(Some(end)) => end,
        Ok(None) => End::Blocking(blocking()),
        Err(e) => {
            tracing::debug!("{name} stays on the blocking pool: {e}");
            End::Blocking(blocking())
        }
    }
}

/// Must be called inside the runtime.
pub fn stdin() -> Stdin {
    let (input, out, err) = (io::stdin(), io::stdout(), io::stderr());
    open(
        "stdin",
        input.as_fd(),
        [out.as_fd(), err.as_fd()],
        tokio::io::stdin,
    )
}

/// Must be called inside the runtime.
pub fn stdout() -> Stdout {
    let (input, out, err) = (io::stdin(), io::stdout(), io::stderr());
    open(
        "stdout",
        out.as_fd(),
        [input.as_fd(), err.as_fd()],
        tokio::io::stdout,
    )
}

impl<P: PipeEnd, B> End<P, B> {
    /// Puts the descriptor back in blocking mode for whoever shares it, if it
    /// was blocking when Airlock started.
    pub fn restore(self) {
        let restored = match self {
            End::Pipe(p, Restore(true)) => p.into_blocking().map(drop),
            End::Socket(s, Restore(true)) => s.into_std().and_then(|s| s.set_nonblocking(false)),
            _ => Ok(()),
        };
        if let Err(e) = restored {
            tracing::debug!("could not put a standard stream back in blocking mode: {e}");
        }
    }
}

impl<P: AsyncRead + Unpin, B: AsyncRead + Unpin> AsyncRead for End<P, B> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            End::Pipe(p, _) => Pin::new(p).poll_read(cx, buf),
            End::Socket(s, _) => Pin::new(s).poll_read(cx, buf),
            End::Blocking(b) => Pin::new(b).poll_read(cx, buf),
        }
    }
}

impl<P: AsyncWrite + Unpin, B: AsyncWrite + Unpin> AsyncWrite for End<P, B> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            End::Pipe(p, _) => Pin::new(p).poll_write(cx, buf),
            End::Socket(s, _) => Pin::new(s).poll_write(cx, buf),
            End::Blocking(b) => Pin::new(b).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            End::Pipe(p, _) => Pin::new(p).poll_flush(cx),
            End::Socket(s, _) => Pin::new(s).poll_flush(cx),
            End::Blocking(b) => Pin::new(b).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            End::Pipe(p, _) => Pin::new(p).poll_shutdown(cx),
            End::Socket(s, _) => Pin::new(s).poll_shutdown(cx),
            End::Blocking(b) => Pin::new(b).poll_shutdown(cx),
        }
    }
}

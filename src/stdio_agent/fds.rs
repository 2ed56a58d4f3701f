//! The agent's stdin and stdout as async streams, read and written on the
//! runtime's own event loop when they are pipes or sockets.
//!
//! `tokio::io::stdin()` and `stdout()` do every read and write on a thread of
//! the blocking pool: two thread hand-offs per call (the request read, the
//! answer written), which were about a quarter of the context switches of a
//! call through `airlock stdio`. Clients that spawn servers give them pipes
//! (Python's `subprocess`) or UNIX socket pairs (Node's `child_process`, so
//! Claude Desktop), both of which epoll can watch; for those, a duplicate of
//! the descriptor is registered with the runtime instead.
//!
//! That needs `O_NONBLOCK`, which lives on the open file description and so is
//! shared with anything else holding the same end. The agent holds the other
//! end; the cases that share ours are handled: stdout is left to the blocking
//! pool when stderr is the same pipe or socket (`2>&1`: our log writes must
//! not fail with `EAGAIN`), and each end is put back in blocking mode when
//! Airlock is done with it (a wrapper shell that ran Airlock without `exec`
//! keeps using them). Anything else (a terminal, a file) takes tokio's
//! blocking-pool path, as before.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

/// The agent's stdin.
pub enum Stdin {
    Pipe(pipe::Receiver),
    Socket(UnixStream),
    Blocking(tokio::io::Stdin),
}

/// The agent's stdout.
pub enum Stdout {
    Pipe(pipe::Sender),
    Socket(UnixStream),
    Blocking(tokio::io::Stdout),
}

/// What a descriptor is, as far as choosing how to drive it goes.
enum Kind {
    Pipe,
    Socket,
    Other,
}

fn kind(fd: &OwnedFd) -> io::Result<(Kind, u64, u64)> {
    let meta = File::from(fd.try_clone()?).metadata()?;
    let ty = meta.file_type();
    let kind = if ty.is_fifo() {
        Kind::Pipe
    } else if ty.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    Ok((kind, meta.dev(), meta.ino()))
}

fn socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

/// Must be called inside the runtime.
pub fn stdin() -> Stdin {
    let driven = || -> io::Result<Option<Stdin>> {
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        Ok(match kind(&fd)?.0 {
            Kind::Pipe => Some(Stdin::Pipe(pipe::Receiver::from_owned_fd(fd)?)),
            Kind::Socket => Some(Stdin::Socket(socket(fd)?)),
            Kind::Other => None,
        })
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
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        let (kind, dev, ino) = kind(&fd)?;
        let stderr = io::stderr().as_fd().try_clone_to_owned()?;
        let (_, err_dev, err_ino) = self::kind(&stderr)?;
        if (dev, ino) == (err_dev, err_ino) {
            return Ok(None); // stderr is the same pipe: keep our logs blocking
        }
        Ok(match kind {
            Kind::Pipe => Some(Stdout::Pipe(pipe::Sender::from_owned_fd(fd)?)),
            Kind::Socket => Some(Stdout::Socket(socket(fd)?)),
            Kind::Other => None,
        })
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
    /// Puts the descriptor back in blocking mode for whoever shares it.
    pub fn restore(self) {
        let restored = match self {
            Stdin::Pipe(p) => p.into_blocking_fd().map(drop),
            Stdin::Socket(s) => socket_blocking(s),
            Stdin::Blocking(_) => Ok(()),
        };
        if let Err(e) = restored {
            tracing::debug!("could not put stdin back in blocking mode: {e}");
        }
    }
}

impl Stdout {
    /// Puts the descriptor back in blocking mode for whoever shares it.
    pub fn restore(self) {
        let restored = match self {
            Stdout::Pipe(p) => p.into_blocking_fd().map(drop),
            Stdout::Socket(s) => socket_blocking(s),
            Stdout::Blocking(_) => Ok(()),
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
            Stdin::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            Stdin::Socket(s) => Pin::new(s).poll_read(cx, buf),
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
            Stdout::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            Stdout::Socket(s) => Pin::new(s).poll_write(cx, buf),
            Stdout::Blocking(b) => Pin::new(b).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Pipe(p) => Pin::new(p).poll_flush(cx),
            Stdout::Socket(s) => Pin::new(s).poll_flush(cx),
            Stdout::Blocking(b) => Pin::new(b).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            Stdout::Socket(s) => Pin::new(s).poll_shutdown(cx),
            Stdout::Blocking(b) => Pin::new(b).poll_shutdown(cx),
        }
    }
}

//! The request body under `[server] body_timeout`.
//!
//! The watchdog stops timing a connection once its headers are in (a held
//! call may take an hour to answer), so the body needs a clock of its own:
//! otherwise headers saying `Content-Length: 100000` followed by a byte
//! every few seconds would hold a connection, and its permit, for days.
//! The clock starts when the headers are complete and is only consulted
//! while the body is being waited for: a body read to its end in time, or
//! never read at all, is unaffected.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::metrics::LISTENER;

/// A request body that had not arrived within `body_timeout`. Handlers see
/// it as a failed body read; the connection then closes after the response,
/// since its request was not read to the end.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?} (server.body_timeout)")]
pub struct BodyTimeout(Duration);

/// True if `error`, or an error it wraps, is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// hyper's body with a deadline on its arrival.
pub(super) struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Armed the first time the body is waited for: most bodies are empty
    /// or already buffered, and need no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl TimedBody {
    /// `inner`, which must arrive within `timeout` from now.
    pub(super) fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
            timed_out: false,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timed_out = true;
                LISTENER.body_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.timed_out && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

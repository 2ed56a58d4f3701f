//! A connection's wakes of itself, handled inside its own poll.
//!
//! hyper polls the request's handler inside the connection's task, and its
//! HTTP/1 body is a one-slot channel between the two: when the handler takes
//! the body's chunk, the channel wakes the dispatcher that sent it, which is
//! the task being polled. tokio treats a task woken during its own poll as a
//! yield: it re-queues it behind others and wakes a parked worker thread to
//! come and help (a futex call, and often the connection moved to the other
//! core), once per request with a body. [`InlineWakes`] catches those wakes:
//! the wrapped future is polled with a waker of its own, and a wake that
//! arrives while that poll runs makes it poll the future again at once,
//! instead of asking the scheduler. A wake while it is not being polled
//! (the upstream's answer, a timer, the socket) goes to the task's waker as
//! usual.
//!
//! Bounded on both sides: at most [`MAX_POLLS`] polls per task poll, and
//! none once tokio's cooperative budget is spent, so a future that keeps
//! waking itself still yields to the scheduler as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Most polls of the inner future within one poll of the task.
const MAX_POLLS: usize = 4;

/// The inner future is not being polled.
const IDLE: u8 = 0;
/// The inner future is being polled.
const POLLING: u8 = 1;
/// The inner future is being polled and was woken meanwhile.
const WOKEN: u8 = 2;

/// `F`, with its wakes of itself handled inline (see the module doc).
pub(super) struct InlineWakes<F> {
    inner: F,
    shared: Arc<Shared>,
    waker: Waker,
}

/// What the inner waker and the poll share.
struct Shared {
    state: AtomicU8,
    /// The task's waker, for wakes that come while the inner future is idle.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state {
                // The poll that runs will see it and poll again.
                POLLING => match self.state.compare_exchange_weak(
                    POLLING,
                    WOKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(now) => state = now,
                },
                WOKEN => return,
                _ => return self.task.wake(),
            }
        }
    }
}

impl<F: Future> InlineWakes<F> {
    pub(super) fn new(inner: F) -> InlineWakes<F> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        InlineWakes {
            inner,
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl<F: Future + Unpin> Future for InlineWakes<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before polling: a wake after the poll finds the waker.
        this.shared.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_POLLS {
            this.shared.state.store(POLLING, Ordering::SeqCst);
            if let Poll::Ready(output) = Pin::new(&mut this.inner).poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Ordering::SeqCst);
                return Poll::Ready(output);
            }
            let woken = this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            if !woken {
                return Poll::Pending;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Woken during the last poll allowed: the scheduler takes it from here.
        this.shared.state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Wakes itself `wakes` times, then is ready; counts its polls.
    struct SelfWaking {
        wakes: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for SelfWaking {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.wakes == 0 {
                return Poll::Ready(());
            }
            self.wakes -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Counts the wakes of the task's waker.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future + Unpin>(
        future: &mut InlineWakes<F>,
        task: &Arc<CountingWaker>,
    ) -> Poll<F::Output> {
        let waker = Waker::from(task.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_the_task_waker() {
        let polls = Arc::new(AtomicUsize::new(0));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut future = InlineWakes::new(SelfWaking {
            wakes: 2,
            polls: polls.clone(),
        });
        assert!(poll_once(&mut future, &task).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        let polls = Arc::new(AtomicUsize::new(0));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut future = InlineWakes::new(SelfWaking {
            wakes: 100,
            polls: polls.clone(),
        });
        assert!(poll_once(&mut future, &task).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), MAX_POLLS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let (tx, rx) = futures::channel::oneshot::channel::<u8>();
        let mut future = InlineWakes::new(rx);
        assert!(poll_once(&mut future, &task).is_pending());
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        tx.send(7).unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut future, &task), Poll::Ready(Ok(7)));
    }

    /// Wakes from another thread racing the poll are never lost: either the
    /// poll sees them (and polls again) or the task's waker gets them.
    #[test]
    fn no_wake_is_lost_to_a_race_with_the_poll() {
        use std::sync::atomic::AtomicBool;

        /// Ready once `flag` is set; wakes nobody itself.
        struct Flag {
            flag: Arc<AtomicBool>,
            waker: Arc<futures::task::AtomicWaker>,
        }
        impl Future for Flag {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.waker.register(cx.waker());
                if self.flag.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }

        for _ in 0..2_000 {
            let flag = Arc::new(AtomicBool::new(false));
            let inner_waker = Arc::new(futures::task::AtomicWaker::new());
            let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
            let mut future = InlineWakes::new(Flag {
                flag: flag.clone(),
                waker: inner_waker.clone(),
            });
            let setter = {
                let (flag, inner_waker) = (flag.clone(), inner_waker.clone());
                std::thread::spawn(move || {
                    flag.store(true, Ordering::SeqCst);
                    inner_waker.wake();
                })
            };
            let mut done = poll_once(&mut future, &task).is_ready();
            setter.join().unwrap();
            if !done {
                // Pending: then the set flag's wake must have reached the task.
                assert_eq!(task.0.load(Ordering::SeqCst), 1);
                done = poll_once(&mut future, &task).is_ready();
            }
            assert!(done);
        }
    }
}

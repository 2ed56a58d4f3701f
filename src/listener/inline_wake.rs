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
//! waking itself still yields to the scheduler, only later. (tokio's own
//! `yield_now` and budget exhaustion defer their wakes until the task's poll
//! has ended, so they reach the scheduler as before; hyper's fairness yield
//! after 16 rounds of its loop is an immediate self-wake, so it now comes
//! after up to 4 × 16 rounds.)

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
            // The poll that runs will see it and poll again. Written back
            // even when already WOKEN: the release of a read-modify-write is
            // what makes this waker's news visible to that next poll (which
            // acquires when it swaps in POLLING), as tokio's own
            // `transition_to_notified_by_ref` does.
            let marked = match state {
                POLLING | WOKEN => self.state.compare_exchange_weak(
                    state,
                    WOKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ),
                _ => return self.task.wake(),
            };
            match marked {
                Ok(_) => return,
                Err(now) => state = now,
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
            this.shared.state.swap(POLLING, Ordering::AcqRel);
            if let Poll::Ready(output) = Pin::new(&mut this.inner).poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Ordering::Release);
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
        // (hyper's own fairness yield, a self-wake after 16 rounds of its
        // loop, lands here at the latest.)
        this.shared.state.store(IDLE, Ordering::Release);
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

    /// One poll of a [`SelfWaking`] future that wakes itself `wakes` times:
    /// what it gave, how often the inner future was polled, and how often
    /// the task's waker was woken.
    fn poll_self_waking(wakes: usize) -> (Poll<()>, usize, usize) {
        let polls = Arc::new(AtomicUsize::new(0));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut future = InlineWakes::new(SelfWaking {
            wakes,
            polls: polls.clone(),
        });
        let polled = poll_once(&mut future, &task);
        (
            polled,
            polls.load(Ordering::SeqCst),
            task.0.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_the_task_waker() {
        assert_eq!(poll_self_waking(2), (Poll::Ready(()), 3, 0));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        assert_eq!(poll_self_waking(100), (Poll::Pending, MAX_POLLS, 1));
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

    /// A wake from another thread that lands while the inner future is
    /// being polled (made certain with barriers) is answered by polling
    /// again at once, not lost and not sent to the task.
    #[test]
    fn a_wake_from_another_thread_during_the_poll_polls_again() {
        use std::sync::Barrier;
        use std::sync::atomic::AtomicBool;

        /// First poll: registers, reads the flag (unset), lets the other
        /// thread set it and wake, waits until it has, and is Pending.
        struct WaitsInside {
            flag: Arc<AtomicBool>,
            waker: Arc<futures::task::AtomicWaker>,
            barrier: Arc<Barrier>,
            polls: usize,
        }
        impl Future for WaitsInside {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.polls += 1;
                self.waker.register(cx.waker());
                if self.flag.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                if self.polls == 1 {
                    self.barrier.wait(); // the other thread may set and wake
                    self.barrier.wait(); // it has
                }
                Poll::Pending
            }
        }

        let flag = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(futures::task::AtomicWaker::new());
        let barrier = Arc::new(Barrier::new(2));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut future = InlineWakes::new(WaitsInside {
            flag: flag.clone(),
            waker: inner_waker.clone(),
            barrier: barrier.clone(),
            polls: 0,
        });
        let setter = std::thread::spawn(move || {
            barrier.wait();
            flag.store(true, Ordering::SeqCst);
            inner_waker.wake();
            barrier.wait();
        });
        assert!(poll_once(&mut future, &task).is_ready());
        setter.join().unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    /// Once tokio's cooperative budget is spent, a self-wake goes to the
    /// scheduler after the first poll instead of polling again.
    #[tokio::test]
    async fn no_poll_again_once_the_budget_is_spent() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..1_000 {
            tx.send(()).unwrap();
        }
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let inner = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            // Takes items until the budget stops it (128 per task poll).
            while let Poll::Ready(Some(())) = rx.poll_recv(cx) {}
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let mut future = InlineWakes::new(Box::pin(inner));
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await;
        assert!(polled.is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
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

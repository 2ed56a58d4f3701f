//! Gives freed heap memory back to the operating system after a burst.
//!
//! mimalloc (the global allocator, `src/main.rs`) keeps the pages a thread
//! freed in that thread's heap until the thread allocates or frees again,
//! and a tokio worker that has gone idle after a load spike (a thousand
//! sessions, ten thousand holds) does neither: the process would stay near
//! its high-water mark although the memory is free. So each worker, when it
//! parks (has nothing to run), collects its own heap — at most once per
//! [`INTERVAL`], which keeps the hot path free of it: a busy worker rarely
//! parks, and a check of the clock is all a park costs otherwise. The
//! freed pages go back to the OS after mimalloc's purge delay.
//!
//! Threads that are not workers (the audit writer, the blocking pool) collect
//! through [`collect_now`] where they go idle.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections by the same thread.
const INTERVAL: Duration = Duration::from_secs(2);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `tokio::runtime::Builder::on_thread_park`: collects this thread's
/// heap if it has not done so for [`INTERVAL`].
pub fn collect_when_idle() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < INTERVAL => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect_now();
    }
}

/// Frees this thread's empty pages (and those other threads freed into it).
#[allow(unsafe_code)]
pub fn collect_now() {
    // SAFETY: no arguments; mimalloc collects only the calling thread's heap
    // and is safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

//! Gives freed heap memory back to the operating system after a burst.
//!
//! glibc's allocator keeps memory it has handed out once: after a load spike
//! (a thousand sessions, ten thousand holds) the process would stay at its
//! high-water mark although the memory is free. Every few seconds this task
//! asks how much sits free inside the allocator and, when that has grown by
//! more than a threshold since the last trim, has it returned
//! (`malloc_trim`). A trim does not change the allocator's count of free
//! bytes (the pages go back, the free chunks stay), so growth, not the
//! level, is what triggers the next one. Other platforms and allocators: a
//! no-op.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the free memory is looked at (a look walks the allocator's free
/// lists: about a millisecond after a burst of a thousand sessions).
const INTERVAL: Duration = Duration::from_secs(5);
/// Newly freed bytes inside the allocator worth a trim.
const THRESHOLD: usize = 8 * 1024 * 1024;

/// Runs until shutdown.
pub async fn release_freed_memory(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Free bytes right after the last trim, or the lowest seen since.
    let mut baseline = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(free) = free_bytes() else {
            return; // not glibc: nothing to do, ever
        };
        if free > baseline + THRESHOLD {
            let started = std::time::Instant::now();
            trim();
            tracing::debug!(
                free_bytes = free,
                took_us = started.elapsed().as_micros() as u64,
                "returned freed heap memory to the OS"
            );
            baseline = free;
        } else {
            baseline = baseline.min(free);
        }
    }
}

/// Bytes free inside the allocator (in chunks it keeps), if it can tell.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn free_bytes() -> Option<usize> {
    // SAFETY: a plain glibc call without pointer arguments; it takes the
    // allocator's own locks and is safe from any thread.
    Some(unsafe { libc::mallinfo2() }.fordblks)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: as above.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> Option<usize> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

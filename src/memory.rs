//! Gives freed heap memory back to the operating system after a burst.
//!
//! glibc's allocator keeps memory it has handed out once: after a load spike
//! (a thousand sessions, ten thousand holds) the process would stay at its
//! high-water mark although the memory is free. Every few seconds this task
//! asks how much sits free inside the allocator and, past a threshold, has
//! it returned (`malloc_trim`). Other platforms and allocators: a no-op.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the free memory is looked at.
const INTERVAL: Duration = Duration::from_secs(5);
/// Free bytes inside the allocator worth a trim (a trim walks the heap, so
/// it is not done for small amounts).
const THRESHOLD: usize = 8 * 1024 * 1024;

/// Runs until shutdown.
pub async fn release_freed_memory(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(freed) = trim(THRESHOLD) {
            tracing::debug!(free_bytes = freed, "returned freed heap memory to the OS");
        }
    }
}

/// Trims when more than `threshold` bytes are free; returns the free amount
/// when it did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim(threshold: usize) -> Option<usize> {
    // SAFETY: both are plain glibc calls without pointer arguments; they take
    // the allocator's own locks and are safe to call from any thread.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free < threshold {
        return None;
    }
    // SAFETY: as above.
    unsafe { libc::malloc_trim(0) };
    Some(free)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim(_threshold: usize) -> Option<usize> {
    None
}

use std::process::ExitCode;

use clap::Parser;

// glibc's malloc was a fifth of Airlock's user-space CPU per allowed call
// (docs/benchmarks.md, "CPU per allowed call"); mimalloc's thread-local
// free lists make the many small per-request allocations cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = airlock::cli::Cli::parse();
    airlock::app::init_tracing();
    // What `Runtime::new()` builds, plus: an idle worker hands freed memory
    // back (src/memory.rs).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(airlock::memory::collect_when_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            airlock::app::complain(format_args!("airlock: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(airlock::app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            airlock::app::complain(format_args!("airlock: {e:#}"));
            ExitCode::FAILURE
        }
    };
    // Don't wait for blocking reads still parked on stdin (stdio mode).
    runtime.shutdown_background();
    code
}

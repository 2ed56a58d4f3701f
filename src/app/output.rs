//! Where the gateway's words go: log lines on stderr, the start-up text on
//! stdout. Neither may fail a running gateway: a service whose stderr is a
//! closed pipe (`airlock serve … 2>&1 | head -5`) must still log (into the
//! void), serve and — above all — stop on SIGTERM. `eprintln!` and
//! `println!` panic when the write fails, and so does tracing's own report
//! of a failed write; nothing that runs after start-up uses them.

use std::io::Write;

/// Logs to stderr (stdout belongs to the protocol in stdio mode); `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("airlock=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // Its report of a failed write is an `eprintln!`, which panics when
        // stderr is gone.
        .log_internal_errors(false)
        .init();
}

/// Stderr that drops what it cannot write (closed pipe, full disk) instead of
/// reporting an error that someone up the stack would turn into a panic.
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Writes one line to stdout, or nothing when stdout is gone.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
}

/// Writes one line to stderr, or nothing when stderr is gone.
pub fn complain(line: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(line).and_then(|()| err.write_all(b"\n"));
}

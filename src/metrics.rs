//! Prometheus metrics, kept as atomics (no lock on the hot path) and
//! rendered as text at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Outcomes counted in `airlock_calls_total{outcome=…}`.
pub const OUTCOMES: [&str; 10] = [
    "allowed",
    "denied",
    "rate_limited",
    "hidden",
    "approval_requested",
    "approved",
    "denied_by_human",
    "timed_out",
    "cancelled",
    "abandoned",
];

/// Upstream child processes started and not yet reaped (process-wide).
pub static UPSTREAM_CHILDREN: AtomicUsize = AtomicUsize::new(0);

/// The HTTP listener's connections (process-wide: one listener per process).
pub static LISTENER: ListenerMetrics = ListenerMetrics {
    open: AtomicUsize::new(0),
    limit_waits: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    idle_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
};

/// Counted by [`crate::listener`].
pub struct ListenerMetrics {
    /// Connections accepted and not yet closed (upgraded websockets included).
    pub open: AtomicUsize,
    /// Times the accept loop waited because `max_connections` were open.
    pub limit_waits: AtomicU64,
    /// Failed accepts other than a peer giving up (EMFILE, ENFILE, ENOBUFS…).
    pub accept_errors: AtomicU64,
    /// Connections closed for not sending a request's headers in time.
    pub header_timeouts: AtomicU64,
    /// Keep-alive connections closed for waiting too long for their next request.
    pub idle_timeouts: AtomicU64,
    /// Requests whose body did not arrive within `body_timeout`.
    pub body_timeouts: AtomicU64,
    /// Connections cut because a write took no byte for `write_timeout`.
    pub write_timeouts: AtomicU64,
}

impl ListenerMetrics {
    fn render(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP airlock_http_connections_open HTTP connections open (websockets included).\n# TYPE airlock_http_connections_open gauge\nairlock_http_connections_open {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP airlock_http_connection_limit_waits_total Times a new connection had to wait because max_connections were open.\n# TYPE airlock_http_connection_limit_waits_total counter\nairlock_http_connection_limit_waits_total {}",
            get(&self.limit_waits)
        );
        let _ = writeln!(
            out,
            "# HELP airlock_http_accept_errors_total Failed accepts (e.g. out of file descriptors); the listener backs off and retries.\n# TYPE airlock_http_accept_errors_total counter\nairlock_http_accept_errors_total {}",
            get(&self.accept_errors)
        );
        let _ = writeln!(
            out,
            "# HELP airlock_http_connections_timed_out_total Connections closed by the listener, by reason (header_timeout, idle_timeout, body_timeout, write_timeout).\n# TYPE airlock_http_connections_timed_out_total counter\nairlock_http_connections_timed_out_total{{reason=\"header\"}} {}\nairlock_http_connections_timed_out_total{{reason=\"idle\"}} {}\nairlock_http_connections_timed_out_total{{reason=\"body\"}} {}\nairlock_http_connections_timed_out_total{{reason=\"write\"}} {}",
            get(&self.header_timeouts),
            get(&self.idle_timeouts),
            get(&self.body_timeouts),
            get(&self.write_timeouts)
        );
    }
}

/// What the process holds right now, for `/metrics`: the figures a leak
/// would make grow (tasks, file descriptors, child processes).
#[derive(Debug, Clone, Copy)]
pub struct Resources {
    pub tasks: usize,
    pub open_fds: Option<usize>,
    pub upstream_children: usize,
}

impl Resources {
    pub fn now() -> Resources {
        Resources {
            tasks: tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_alive_tasks())
                .unwrap_or(0),
            // Linux only; elsewhere the gauge is left out.
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count()),
            upstream_children: UPSTREAM_CHILDREN.load(Ordering::Relaxed),
        }
    }
}

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

pub struct Metrics {
    calls: [AtomicU64; OUTCOMES.len()],
    pub approval_wait: Histogram,
    pub upstream_latency: Histogram,
    pub notification_failures: AtomicU64,
    /// JSON reads of agents' messages (`airlock_body_parses_total`): the
    /// edges parse each message once and hand that one view down.
    pub body_parses: crate::jsonrpc::ParseMeter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: Default::default(),
            approval_wait: Histogram::new(&[
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
            ]),
            upstream_latency: Histogram::new(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
            notification_failures: AtomicU64::new(0),
            body_parses: Default::default(),
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.calls[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn calls(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map(|i| self.calls[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(
        &self,
        pending: usize,
        sessions: usize,
        audit_healthy: bool,
        audit_rows: u64,
        checkpoint_refusals: u64,
        resources: Resources,
    ) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP airlock_calls_total tools/call outcomes.\n# TYPE airlock_calls_total counter\n",
        );
        for (outcome, count) in OUTCOMES.iter().zip(&self.calls) {
            let _ = writeln!(
                out,
                "airlock_calls_total{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP airlock_pending Calls waiting for a human.\n# TYPE airlock_pending gauge\nairlock_pending {pending}"
        );
        let _ = writeln!(
            out,
            "# HELP airlock_sessions Open handshake-era agent sessions.\n# TYPE airlock_sessions gauge\nairlock_sessions {sessions}"
        );
        let _ = writeln!(
            out,
            "# HELP airlock_audit_healthy 1 when the audit store can be written.\n# TYPE airlock_audit_healthy gauge\nairlock_audit_healthy {}",
            u8::from(audit_healthy)
        );
        let _ = writeln!(
            out,
            "# HELP airlock_audit_rows_written_total Rows written to the audit store.\n# TYPE airlock_audit_rows_written_total counter\nairlock_audit_rows_written_total {audit_rows}"
        );
        let _ = writeln!(
            out,
            "# HELP airlock_audit_checkpoint_refused_total Heads not signed because the history signed before was changed.\n# TYPE airlock_audit_checkpoint_refused_total counter\nairlock_audit_checkpoint_refused_total {checkpoint_refusals}"
        );
        let _ = writeln!(
            out,
            "# HELP airlock_notification_failures_total Failed notification deliveries (e.g. Slack).\n# TYPE airlock_notification_failures_total counter\nairlock_notification_failures_total {}",
            self.notification_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP airlock_runtime_tasks Tasks alive in the async runtime (connections, holds, streams, workers).\n# TYPE airlock_runtime_tasks gauge\nairlock_runtime_tasks {}",
            resources.tasks
        );
        if let Some(fds) = resources.open_fds {
            let _ = writeln!(
                out,
                "# HELP airlock_open_fds Open file descriptors (sockets, pipes, files).\n# TYPE airlock_open_fds gauge\nairlock_open_fds {fds}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP airlock_upstream_children Upstream child processes running (not yet reaped).\n# TYPE airlock_upstream_children gauge\nairlock_upstream_children {}",
            resources.upstream_children
        );
        let _ = writeln!(
            out,
            "# HELP airlock_body_parses_total JSON reads of agents' messages (the edge's one parse, plus any later re-read of the same bytes; one per message when parse-once holds).\n# TYPE airlock_body_parses_total counter\nairlock_body_parses_total {}",
            self.body_parses.get()
        );
        LISTENER.render(&mut out);
        self.approval_wait.render(
            "airlock_approval_wait_seconds",
            "Time from hold to human decision.",
            &mut out,
        );
        self.upstream_latency.render(
            "airlock_upstream_latency_seconds",
            "Time for the upstream to start answering an allowed call.",
            &mut out,
        );
        out
    }
}

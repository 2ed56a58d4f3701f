//! A stdio child process speaking newline-delimited JSON-RPC.
//!
//! Requests are routed back by id: each in-flight request owns a channel in
//! `routes`. In shared mode (stateless-era requests from many agents on one
//! child) ids and progress tokens are rewritten to gateway-unique values and
//! mapped back, because two agents may both use id `1`.
//!
//! The child runs in its own process group so that `npx`-style launchers and
//! their grandchildren are ended together (no orphans).
//!
//! Stdout is read as bytes, one line at a time ([`LineDecoder`]), so no line
//! ends the reader: a line that is not UTF-8, not JSON-RPC or over the size
//! limit is a protocol error. It fails the request whose `id` can still be
//! read from it ([`lenient_id`]); in shared mode nothing else (other agents'
//! calls are not theirs to lose), in a session's own child every waiting
//! call. A line that is not UTF-8 or over the limit also stops a session's
//! child: its session ends with an error saying why (see docs/reliability.md).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::{Event, Health, Reply, ReplyBody, UpstreamError, UpstreamSpec};
use crate::jsonrpc::{self, Id, Kind, Message, code, line};

/// Queue depth of one request's reply stream.
const ROUTE_QUEUE: usize = 64;

/// How much of an over-long line is kept to look for its `id`.
const TOO_LONG_HEAD: usize = 16 * 1024;

/// A running child process and the requests waiting on it.
pub struct StdioChild {
    command: String,
    /// Lines to the child's stdin; taken (closing stdin) on shutdown.
    writer: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// Upstream request id → where its messages go.
    routes: DashMap<Id, Route>,
    /// Progress token as sent upstream → upstream request id.
    progress: DashMap<Arc<str>, Id>,
    /// The handshake-era GET stream of the owning session, if open.
    unsolicited: Mutex<Option<mpsc::Sender<Event>>>,
    /// The most recent in-flight request, for server requests that carry no routing hint.
    last_route: Mutex<Option<Id>>,
    /// Rewrite ids and progress tokens (several agents on one child).
    shared: bool,
    next_id: AtomicU64,
    /// Cancelled once the child has exited and every route has been failed.
    dead: CancellationToken,
    exit_status: OnceLock<String>,
    /// Set when Airlock stopped the child for breaking the protocol: what it did.
    broken: OnceLock<String>,
    /// The upstream's protocol-error counts, shared with its other links.
    health: Arc<Health>,
    max_line: usize,
    pid: Option<u32>,
}

/// A line from the child that is not a JSON-RPC message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    NotUtf8,
    TooLong,
    NotJsonRpc,
}

struct Route {
    tx: mpsc::Sender<Event>,
    /// The agent's own id (differs from the key in shared mode).
    original_id: Id,
    /// (token sent upstream, agent's raw token) when the token was rewritten.
    token: Option<(Arc<str>, Arc<str>)>,
}

impl StdioChild {
    /// Starts the child. `shared` turns on id and progress-token remapping;
    /// protocol errors are counted in `health`.
    pub fn spawn(
        spec: &UpstreamSpec,
        shared: bool,
        max_line: usize,
        health: Arc<Health>,
    ) -> Result<Arc<StdioChild>, UpstreamError> {
        let UpstreamSpec::Stdio {
            command,
            args,
            env,
            env_remove,
        } = spec
        else {
            unreachable!("StdioChild::spawn is only called for stdio upstreams");
        };
        let mut cmd = tokio::process::Command::new(command);
        for name in env_remove {
            cmd.env_remove(name);
        }
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| UpstreamError::Spawn {
            command: spec.describe(),
            reason: e.to_string(),
        })?;
        crate::metrics::UPSTREAM_CHILDREN.fetch_add(1, Ordering::Relaxed);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (writer_tx, writer_rx) = mpsc::channel::<Bytes>(256);
        let this = Arc::new(StdioChild {
            command: spec.describe(),
            writer: Mutex::new(Some(writer_tx)),
            routes: DashMap::new(),
            progress: DashMap::new(),
            unsolicited: Mutex::new(None),
            last_route: Mutex::new(None),
            shared,
            next_id: AtomicU64::new(1),
            dead: CancellationToken::new(),
            exit_status: OnceLock::new(),
            broken: OnceLock::new(),
            health,
            max_line,
            pid: child.id(),
        });
        tokio::spawn(write_lines(stdin, writer_rx));
        let weak = Arc::downgrade(&this);
        let lines = FramedRead::new(stdout, LineDecoder::new(max_line));
        tokio::spawn(read_until_exit(weak, lines, child));
        tracing::debug!(command = %this.command, pid = this.pid, "started upstream child");
        Ok(this)
    }

    /// The child's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Exited, or stopped for breaking the protocol (it may still be exiting).
    pub fn is_dead(&self) -> bool {
        self.dead.is_cancelled() || self.broken.get().is_some()
    }

    /// Why requests to this child fail now.
    pub(crate) fn exited_error(&self) -> UpstreamError {
        if let Some(what) = self.broken.get() {
            return UpstreamError::Broken { what: what.clone() };
        }
        UpstreamError::Exited {
            status: self
                .exit_status
                .get()
                .cloned()
                .unwrap_or_else(|| "status unknown".into()),
        }
    }

    async fn write(&self, line: Bytes) -> Result<(), UpstreamError> {
        let writer = self.writer.lock().expect("writer lock").clone();
        match writer {
            Some(tx) if tx.send(line).await.is_ok() => Ok(()),
            _ => Err(self.exited_error()),
        }
    }

    /// Sends a request and waits for its first message; see [`Reply`].
    pub async fn request(self: &Arc<Self>, message: Message) -> Result<Reply, UpstreamError> {
        if self.is_dead() {
            return Err(self.exited_error());
        }
        let Some(original_id) = message.id().cloned() else {
            return Err(UpstreamError::BadReply {
                reason: "only requests (with an id) can be sent as requests".into(),
            });
        };
        let (mut outgoing, upstream_id) = if self.shared {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = Id::from_raw(&format!("\"airlock-{n}\""));
            (message.with_id(&id), id)
        } else {
            (message, original_id.clone())
        };
        let mut token = None;
        // The progress token as the edge's one parse recorded it (the id
        // rewrite above moved the recorded ranges, it did not parse again).
        if let Some(raw) = crate::era::peek(&outgoing)
            .meta
            .and_then(|m| m.progress_token.map(|t| Arc::<str>::from(t.get())))
        {
            if self.shared {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                let ours: Arc<str> = Arc::from(format!("\"airlock-p-{n}\"").as_str());
                outgoing = outgoing.with_progress_token(&ours);
                token = Some((ours.clone(), raw));
                self.progress.insert(ours, upstream_id.clone());
            } else {
                self.progress.insert(raw, upstream_id.clone());
            }
        }
        let (tx, mut rx) = mpsc::channel(ROUTE_QUEUE);
        self.routes.insert(
            upstream_id.clone(),
            Route {
                tx,
                original_id,
                token,
            },
        );
        *self.last_route.lock().expect("last_route lock") = Some(upstream_id.clone());
        let guard = RouteGuard {
            child: Arc::downgrade(self),
            id: upstream_id.clone(),
        };
        self.write(outgoing.raw().clone()).await?;
        // The guard removes the route (and tells the child) if the agent goes away.
        let first = rx.recv().await.ok_or_else(|| self.exited_error())?;
        if let Some(answer) = first
            .message
            .as_ref()
            .filter(|m| m.kind() == Kind::Response)
        {
            return Ok(Reply::json(answer.clone())); // dispatch removed the route: the guard is a no-op
        }
        let (out_tx, out_rx) = mpsc::channel(ROUTE_QUEUE);
        tokio::spawn(async move {
            let _guard = guard;
            let mut next = Some(first);
            while let Some(event) = next {
                let done = event.is_response();
                if out_tx.send(event).await.is_err() {
                    return; // agent gone: the guard cancels upstream
                }
                if done {
                    return;
                }
                next = rx.recv().await;
            }
        });
        Ok(Reply {
            status: 200,
            headers: Default::default(),
            body: ReplyBody::Stream(out_rx.into()),
        })
    }

    /// Sends a notification or a response to a server request.
    pub async fn send(&self, message: Message) -> Result<(), UpstreamError> {
        if self.is_dead() {
            return Err(self.exited_error());
        }
        if self.shared && message.method() == Some("notifications/cancelled") {
            // Ids are per agent in shared mode; cancellation is by closing the stream.
            return Ok(());
        }
        self.write(message.raw().clone()).await
    }

    /// Opens (or replaces) the stream of unsolicited server messages.
    pub fn listen(&self) -> Reply {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        *self.unsolicited.lock().expect("unsolicited lock") = Some(tx);
        Reply {
            status: 200,
            headers: Default::default(),
            body: ReplyBody::Stream(rx.into()),
        }
    }

    /// Ends the child: close stdin, then SIGTERM, then SIGKILL the process group.
    pub async fn shutdown(&self) {
        self.writer.lock().expect("writer lock").take();
        if tokio::time::timeout(Duration::from_secs(2), self.dead.cancelled())
            .await
            .is_ok()
        {
            return;
        }
        for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
            if let Some(pid) = self.pid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
            }
            if tokio::time::timeout(Duration::from_secs(2), self.dead.cancelled())
                .await
                .is_ok()
            {
                return;
            }
        }
        tracing::warn!(command = %self.command, "upstream child did not exit after SIGKILL");
    }

    /// Routes one line from the child.
    async fn dispatch(&self, message: Message) {
        match message.kind() {
            Kind::Response => {
                let Some(id) = message.id() else {
                    tracing::warn!(command = %self.command, "upstream sent a response without an id: {message:?}");
                    return;
                };
                let Some((_, route)) = self.routes.remove(id) else {
                    tracing::debug!(command = %self.command, id = id.raw(), "response for a request nobody waits for");
                    return;
                };
                if let Some((ours, _)) = &route.token {
                    self.progress.remove(ours);
                } else {
                    self.progress.retain(|_, v| v != id);
                }
                let message = if self.shared {
                    message.with_id(&route.original_id)
                } else {
                    message
                };
                // Never wait on one agent here: this task reads for everyone.
                send_without_blocking(route.tx, Event::new(message));
            }
            _ if message.method() == Some("notifications/progress") => self.route_progress(message),
            Kind::Notification if self.shared && self.route_subscription(&message) => {}
            _ => self.route_unsolicited(message).await,
        }
    }

    /// A stateless-era `subscriptions/listen` stream's notifications name
    /// their subscription (the listen request's id) in `_meta`: deliver them
    /// on that request's stream, with the agent's own id put back. False when
    /// the message names no open subscription.
    fn route_subscription(&self, message: &Message) -> bool {
        const SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(rename = "_meta", borrow)]
            meta: Option<M<'a>>,
        }
        #[derive(Deserialize)]
        struct M<'a> {
            #[serde(rename = "io.modelcontextprotocol/subscriptionId", borrow)]
            subscription: Option<&'a RawValue>,
        }
        let Some(id) = message
            .params::<P<'_>>()
            .and_then(|p| p.meta?.subscription)
            .map(|raw| Id::from_raw(raw.get()))
        else {
            return false;
        };
        let Some(route) = self.routes.get(&id) else {
            return false;
        };
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(message.text()) else {
            return false;
        };
        let original: serde_json::Value =
            serde_json::from_str(route.original_id.raw()).unwrap_or(serde_json::Value::Null);
        // `M` also reads an array positionally: only an object's key is replaced.
        let Some(meta) = value
            .pointer_mut("/params/_meta")
            .and_then(serde_json::Value::as_object_mut)
        else {
            return false;
        };
        meta.insert(SUBSCRIPTION.to_owned(), original);
        send_without_blocking(route.tx.clone(), Event::new(Message::from_value(&value)));
        true
    }

    fn route_progress(&self, message: Message) {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(rename = "progressToken", borrow)]
            progress_token: &'a RawValue,
        }
        let Some(token) = message
            .params::<P<'_>>()
            .map(|p| p.progress_token.get().to_owned())
        else {
            return;
        };
        let Some(id) = self.progress.get(token.as_str()).map(|e| e.value().clone()) else {
            return;
        };
        let Some(route) = self.routes.get(&id) else {
            return;
        };
        let message = match &route.token {
            Some((_, original)) => message.with_progress_token(original),
            None => message,
        };
        if route.tx.try_send(Event::new(message)).is_err() {
            tracing::debug!(command = %self.command, "dropped a progress notification: agent is slow");
        }
    }

    /// Server requests and notifications that name no request of ours.
    async fn route_unsolicited(&self, message: Message) {
        if self.shared {
            if let Some(id) = message.id().filter(|_| message.is_request()) {
                // Stateless-era servers must not send requests; answer so the child does not hang.
                let error = jsonrpc::error_response(
                    id,
                    code::METHOD_NOT_FOUND,
                    "no client to route this request to (stateless-era requests share this process)",
                );
                let _ = self.write(error.raw().clone()).await;
            }
            return;
        }
        let listener = self.unsolicited.lock().expect("unsolicited lock").clone();
        let in_flight = {
            let last = self.last_route.lock().expect("last_route lock").clone();
            last.and_then(|id| self.routes.get(&id).map(|r| r.tx.clone()))
                .or_else(|| self.routes.iter().next().map(|r| r.tx.clone()))
        };
        // Requests (sampling, elicitation, roots) ride on the POST stream of the
        // call that caused them when there is one; notifications prefer the GET stream.
        let target = if message.is_request() {
            in_flight.or(listener)
        } else {
            listener.or(in_flight)
        };
        match target {
            Some(tx) => {
                send_without_blocking(tx, Event::new(message));
            }
            None => tracing::debug!(command = %self.command, "no open stream for {message:?}"),
        }
    }

    /// Called once the child has exited: fail every waiting request.
    fn fail_all(&self, status: String) {
        let _ = self.exit_status.set(status);
        let reason = self.exited_error().to_string();
        self.fail_routes(None, &reason);
        self.progress.clear();
        self.unsolicited.lock().expect("unsolicited lock").take();
        self.dead.cancel();
    }

    /// Handles a line that is not a JSON-RPC message: fails the call it can
    /// be traced to, else (in a session's own child) every waiting call; a
    /// session's child that wrote bytes no reader can frame is stopped.
    fn protocol_error(self: &Arc<Self>, fault: Fault, line: &[u8], detail: &str) {
        let what = fault.describe(self.max_line, detail);
        let fatal = !self.shared && fault != Fault::NotJsonRpc;
        self.health.protocol_error(&what, fatal);
        let id = lenient_id(line);
        tracing::warn!(command = %self.command, id = id.as_ref().map(Id::raw), shared = self.shared, "upstream protocol error: it {what}");
        if fatal {
            self.break_link(what);
            return;
        }
        let reason = format!("upstream server broke the protocol: it {what}");
        let attributed = id.is_some_and(|id| self.fail_routes(Some(&id), &reason) > 0);
        if attributed {
            return;
        }
        if self.shared {
            // Which agent's call it was cannot be told: failing them all
            // would let one agent's call take the others down.
            tracing::warn!(command = %self.command, "no call could be matched to the bad line; none failed");
        } else {
            self.fail_routes(None, &reason); // one agent's link: all its calls
        }
    }

    /// Stops a child that can no longer be trusted to answer: every waiting
    /// call fails now, later requests fail at once, and the process group ends.
    fn break_link(self: &Arc<Self>, what: String) {
        if self.broken.set(what).is_err() {
            return;
        }
        let reason = self.exited_error().to_string();
        self.fail_routes(None, &reason);
        let this = self.clone();
        tokio::spawn(async move { this.shutdown().await });
    }

    /// Answers the waiting request `only` (or every one) with an error;
    /// returns how many there were.
    fn fail_routes(&self, only: Option<&Id>, reason: &str) -> usize {
        let ids: Vec<Id> = match only {
            Some(id) => vec![id.clone()],
            None => self.routes.iter().map(|r| r.key().clone()).collect(),
        };
        let mut failed = 0;
        for id in ids {
            let Some((_, route)) = self.routes.remove(&id) else {
                continue;
            };
            match &route.token {
                Some((ours, _)) => {
                    self.progress.remove(ours);
                }
                None => self.progress.retain(|_, v| v != &id),
            }
            let error = jsonrpc::error_response(&route.original_id, code::UPSTREAM_ERROR, reason);
            send_without_blocking(route.tx, Event::new(error));
            failed += 1;
        }
        failed
    }
}

impl Fault {
    /// What the upstream did, after "it" (for errors, logs and `/healthz`).
    fn describe(self, max_line: usize, detail: &str) -> String {
        match self {
            Fault::NotUtf8 => "wrote a line to stdout that is not UTF-8".into(),
            Fault::TooLong => format!(
                "wrote a line to stdout over the {} MiB limit",
                max_line / (1024 * 1024)
            ),
            Fault::NotJsonRpc => format!("wrote invalid JSON-RPC to stdout ({detail})"),
        }
    }
}

/// The top-level `id` of a line that is not a valid message, read
/// leniently: bytes that are not UTF-8 are replaced, and only the members
/// before `id` must parse (a truncated or garbled `result` after it does not
/// matter). Only a string or a number counts.
fn lenient_id(line: &[u8]) -> Option<Id> {
    struct FindId<'a>(&'a mut Option<Box<RawValue>>);
    impl<'de> Visitor<'de> for FindId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    *self.0 = Some(map.next_value()?);
                    // Stop here: what follows may be the garbage.
                    return Err(de::Error::custom("found the id"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let text = String::from_utf8_lossy(line);
    let mut found = None;
    let mut reader = serde_json::Deserializer::from_str(&text);
    let _ = de::Deserializer::deserialize_map(&mut reader, FindId(&mut found));
    let raw = found?;
    let raw = raw.get();
    matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')).then(|| Id::from_raw(raw))
}

/// Queues an event for one agent; if its queue is full, a small task waits
/// for room so that the shared reader never does.
fn send_without_blocking(tx: mpsc::Sender<Event>, event: Event) {
    match tx.try_send(event) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(event)) => {
            tokio::spawn(async move {
                let _ = tx.send(event).await;
            });
        }
    }
}

/// Removes a route whose agent went away, and tells the child to stop working on it.
struct RouteGuard {
    child: Weak<StdioChild>,
    id: Id,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let Some(child) = self.child.upgrade() else {
            return;
        };
        if child.routes.remove(&self.id).is_none() {
            return; // answered already
        }
        child.progress.retain(|_, v| v != &self.id);
        let cancel = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":"the client went away"}}}}"#,
            self.id.raw()
        );
        if let Some(tx) = child.writer.lock().expect("writer lock").as_ref() {
            let _ = tx.try_send(Bytes::from(cancel));
        }
    }
}

/// The only place bytes reach the child's stdin. Invariant: one message, one
/// line — each message goes through [`line::to_terminated_line`], so a line
/// break the gateway read as JSON whitespace can never split it into two
/// messages for the child (see `jsonrpc::line`), and the message and its
/// newline go out in one write.
async fn write_lines(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(message) = rx.recv().await {
        let line = line::to_terminated_line(&message);
        let ok = stdin.write_all(&line).await.is_ok() && stdin.flush().await.is_ok();
        if !ok {
            break;
        }
    }
    // Dropping stdin closes it: well-behaved servers exit on EOF.
}

async fn read_until_exit(
    child_ref: Weak<StdioChild>,
    mut lines: FramedRead<tokio::process::ChildStdout, LineDecoder>,
    mut process: tokio::process::Child,
) {
    while let Some(line) = lines.next().await {
        let Some(child) = child_ref.upgrade() else {
            break;
        };
        if child.broken.get().is_some() {
            continue; // stopping: nobody is waiting for what it writes
        }
        match line {
            Ok(Line::Complete(line)) if line.iter().all(u8::is_ascii_whitespace) => {}
            Ok(Line::Complete(line)) => {
                let line = line.freeze();
                match Message::parse(line.clone()) {
                    Ok(message) => {
                        // This task reads for every agent of the child: a bug in
                        // routing one message must not end it (calls would hang).
                        let routed = std::panic::AssertUnwindSafe(child.dispatch(message))
                            .catch_unwind()
                            .await;
                        if routed.is_err() {
                            tracing::error!(command = %child.command, "routing a message from the upstream panicked; dropped it");
                            child.protocol_error(
                                Fault::NotJsonRpc,
                                &line,
                                "Airlock could not route it",
                            );
                        }
                    }
                    Err(jsonrpc::FrameError::NotUtf8) => {
                        child.protocol_error(Fault::NotUtf8, &line, "")
                    }
                    Err(e) => child.protocol_error(Fault::NotJsonRpc, &line, &e.to_string()),
                }
            }
            Ok(Line::TooLong { head }) => child.protocol_error(Fault::TooLong, &head, ""),
            Err(e) => {
                tracing::warn!(command = %child.command, "reading upstream stdout failed: {e}");
                child.break_link(format!("could not be read from ({e})"));
                break;
            }
        }
    }
    // Stdout is closed: a child that keeps running can never answer again.
    let status = match tokio::time::timeout(Duration::from_secs(5), process.wait()).await {
        Ok(waited) => waited,
        Err(_) => {
            if let Some(pid) = process.id() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::SIGKILL);
            }
            process.wait().await
        }
    };
    let status = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    crate::metrics::UPSTREAM_CHILDREN.fetch_sub(1, Ordering::Relaxed);
    if let Some(child) = child_ref.upgrade() {
        tracing::info!(command = %child.command, %status, "upstream child exited");
        child.fail_all(status);
    }
}

/// One line of the child's stdout.
#[derive(Debug, PartialEq)]
enum Line {
    /// Without its `\n` (and a `\r` before it).
    Complete(BytesMut),
    /// A line over the limit, discarded up to its end; `head` is its start.
    TooLong { head: Bytes },
}

/// Splits stdout into lines of bytes. Unlike `LinesCodec` it never fails on
/// content (after a codec error `FramedRead` stops reading for good): UTF-8
/// is checked by the parser, and a line over `max` is reported once as
/// [`Line::TooLong`] and skipped to its newline, and reading goes on.
struct LineDecoder {
    max: usize,
    /// Where to resume looking for `\n` (bytes before it have none).
    searched: usize,
    /// Inside an over-long line: drop bytes up to the next `\n`.
    discarding: bool,
}

impl LineDecoder {
    fn new(max: usize) -> LineDecoder {
        LineDecoder {
            max,
            searched: 0,
            discarding: false,
        }
    }

    fn too_long(&mut self, buf: &mut BytesMut, upto: usize) -> Line {
        let head = Bytes::copy_from_slice(&buf[..upto.min(TOO_LONG_HEAD)]);
        buf.advance(upto);
        Line::TooLong { head }
    }
}

impl Decoder for LineDecoder {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            let newline = buf[self.searched..].iter().position(|b| *b == b'\n');
            let Some(offset) = newline else {
                if self.discarding {
                    buf.clear();
                    self.searched = 0;
                    return Ok(None);
                }
                if buf.len() > self.max {
                    self.discarding = true;
                    self.searched = 0;
                    let all = buf.len();
                    return Ok(Some(self.too_long(buf, all)));
                }
                self.searched = buf.len();
                return Ok(None);
            };
            let end = self.searched + offset;
            self.searched = 0;
            if self.discarding {
                self.discarding = false;
                buf.advance(end + 1);
                continue;
            }
            if end > self.max {
                let line = self.too_long(buf, end);
                buf.advance(1);
                return Ok(Some(line));
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            return Ok(Some(Line::Complete(line)));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if self.discarding || buf.is_empty() {
            buf.clear();
            return Ok(None);
        }
        // A last line without its newline.
        self.searched = 0;
        let line = buf.split();
        Ok(Some(Line::Complete(line)))
    }
}

#[cfg(test)]
mod tests;

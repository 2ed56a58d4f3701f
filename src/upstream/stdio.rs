//! A stdio child process speaking newline-delimited JSON-RPC.
//!
//! Requests are routed back by id: each in-flight request owns a channel in
//! `routes`. In shared mode (stateless-era requests from many agents on one
//! child) ids and progress tokens are rewritten to gateway-unique values and
//! mapped back, because two agents may both use id `1`.
//!
//! The child runs in its own process group so that `npx`-style launchers and
//! their grandchildren are ended together (no orphans).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::{Event, Reply, ReplyBody, UpstreamError, UpstreamSpec};
use crate::jsonrpc::{self, Id, Kind, Message, code, line};

/// Queue depth of one request's reply stream.
const ROUTE_QUEUE: usize = 64;

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
    pid: Option<u32>,
}

struct Route {
    tx: mpsc::Sender<Event>,
    /// The agent's own id (differs from the key in shared mode).
    original_id: Id,
    /// (token sent upstream, agent's raw token) when the token was rewritten.
    token: Option<(Arc<str>, Arc<str>)>,
}

#[derive(Deserialize)]
struct ProgressPeek<'a> {
    #[serde(rename = "progressToken", borrow)]
    progress_token: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaPeek<'a> {
    #[serde(rename = "_meta", borrow)]
    meta: Option<ProgressPeek<'a>>,
}

impl StdioChild {
    /// Starts the child. `shared` turns on id and progress-token remapping.
    pub fn spawn(
        spec: &UpstreamSpec,
        shared: bool,
        max_line: usize,
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
            pid: child.id(),
        });
        tokio::spawn(write_lines(stdin, writer_rx));
        let weak = Arc::downgrade(&this);
        let lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max_line));
        tokio::spawn(read_until_exit(weak, lines, child));
        tracing::info!(command = %this.command, pid = ?this.pid, "started upstream child");
        Ok(this)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    fn exited_error(&self) -> UpstreamError {
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
        if let Some(raw) = outgoing
            .params::<MetaPeek<'_>>()
            .and_then(|p| p.meta?.progress_token.map(|t| Arc::<str>::from(t.get())))
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
        if first.message.kind() == Kind::Response {
            return Ok(Reply::json(first.message)); // dispatch removed the route: the guard is a no-op
        }
        let (out_tx, out_rx) = mpsc::channel(ROUTE_QUEUE);
        tokio::spawn(async move {
            let _guard = guard;
            let mut next = Some(first);
            while let Some(event) = next {
                let done = event.message.kind() == Kind::Response;
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
                    tracing::debug!(command = %self.command, ?id, "response for a request nobody waits for");
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
                send_without_blocking(route.tx, Event { id: None, message });
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
        if let Some(meta) = value.pointer_mut("/params/_meta") {
            meta[SUBSCRIPTION] = original;
        }
        send_without_blocking(
            route.tx.clone(),
            Event {
                id: None,
                message: Message::from_value(&value),
            },
        );
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
        if route.tx.try_send(Event { id: None, message }).is_err() {
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
                send_without_blocking(tx, Event { id: None, message });
            }
            None => tracing::debug!(command = %self.command, "no open stream for {message:?}"),
        }
    }

    /// Called once the child has exited: fail every waiting request.
    fn fail_all(&self, status: String) {
        self.progress.clear();
        let _ = self.exit_status.set(status);
        let reason = self.exited_error().to_string();
        let ids: Vec<Id> = self.routes.iter().map(|r| r.key().clone()).collect();
        for id in ids {
            if let Some((_, route)) = self.routes.remove(&id) {
                let error =
                    jsonrpc::error_response(&route.original_id, code::UPSTREAM_ERROR, &reason);
                let _ = route.tx.try_send(Event {
                    id: None,
                    message: error,
                });
            }
        }
        self.unsolicited.lock().expect("unsolicited lock").take();
        self.dead.cancel();
    }

    /// Fails every waiting request because the child wrote something unreadable.
    fn fail_in_flight(&self, reason: &str) {
        self.progress.clear();
        let ids: Vec<Id> = self.routes.iter().map(|r| r.key().clone()).collect();
        for id in ids {
            if let Some((_, route)) = self.routes.remove(&id) {
                let error =
                    jsonrpc::error_response(&route.original_id, code::UPSTREAM_ERROR, reason);
                let _ = route.tx.try_send(Event {
                    id: None,
                    message: error,
                });
            }
        }
    }
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
/// line — each message goes through [`line::to_line`], so a line break the
/// gateway read as JSON whitespace can never split it into two messages for
/// the child (see `jsonrpc::line`).
async fn write_lines(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(message) = rx.recv().await {
        let line = line::to_line(&message);
        let ok = stdin.write_all(&line).await.is_ok()
            && stdin.write_all(b"\n").await.is_ok()
            && stdin.flush().await.is_ok();
        if !ok {
            break;
        }
    }
    // Dropping stdin closes it: well-behaved servers exit on EOF.
}

async fn read_until_exit(
    child_ref: Weak<StdioChild>,
    mut lines: FramedRead<tokio::process::ChildStdout, LinesCodec>,
    mut process: tokio::process::Child,
) {
    while let Some(line) = lines.next().await {
        let Some(child) = child_ref.upgrade() else {
            break;
        };
        match line {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => match Message::parse(Bytes::from(line)) {
                Ok(message) => child.dispatch(message).await,
                Err(e) => {
                    tracing::warn!(command = %child.command, "upstream wrote invalid JSON-RPC to stdout: {e}");
                    child.fail_in_flight(&format!(
                        "upstream server wrote invalid JSON-RPC to stdout ({e})"
                    ));
                }
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                tracing::warn!(command = %child.command, "upstream wrote a line over the size limit");
                child.fail_in_flight("upstream server wrote a message over the size limit");
            }
            Err(LinesCodecError::Io(e)) => {
                tracing::warn!(command = %child.command, "reading upstream stdout failed: {e}");
                break;
            }
        }
    }
    let status = match process.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    crate::metrics::UPSTREAM_CHILDREN.fetch_sub(1, Ordering::Relaxed);
    if let Some(child) = child_ref.upgrade() {
        tracing::info!(command = %child.command, %status, "upstream child exited");
        child.fail_all(status);
    }
}

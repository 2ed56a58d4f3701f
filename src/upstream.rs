//! The upstream side: a stdio child process or a Streamable HTTP server.
//!
//! Both are driven through [`Link`], which forwards one agent message and
//! hands back a [`Reply`]: an HTTP-like status plus either nothing, one JSON
//! message, or a stream of messages that ends with the response.

pub mod http;
pub mod stdio;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tokio::sync::mpsc;

use crate::jsonrpc::Message;

/// How to reach an upstream MCP server (from the config or the command line).
#[derive(Debug, Clone)]
pub enum UpstreamSpec {
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        /// Variables of Airlock's own environment the child must not inherit
        /// (approver and agent tokens, other secrets).
        env_remove: Vec<String>,
    },
    Http {
        url: String,
        /// Extra headers sent on every request (e.g. `Authorization` from an env var).
        headers: Vec<(String, String)>,
    },
}

impl UpstreamSpec {
    /// A short human description for logs and errors (never includes header values).
    pub fn describe(&self) -> String {
        match self {
            UpstreamSpec::Stdio { command, args, .. } => {
                let mut s = command.clone();
                for a in args {
                    s.push(' ');
                    s.push_str(a);
                }
                s
            }
            UpstreamSpec::Http { url, .. } => url.clone(),
        }
    }
}

/// Why the upstream could not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream server failed to start (`{command}`): {reason}")]
    Spawn { command: String, reason: String },
    #[error("upstream server exited ({status}) before answering")]
    Exited { status: String },
    #[error("upstream server is unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("upstream server did not answer within {seconds} s")]
    Timeout { seconds: u64 },
    #[error("upstream server sent an unreadable answer: {reason}")]
    BadReply { reason: String },
    /// A stdio child that wrote something no JSON-RPC reader can frame (a
    /// line that is not UTF-8 or over the size limit); Airlock stopped it.
    #[error("upstream server broke the protocol: it {what}; Airlock stopped it")]
    Broken { what: String },
}

/// How long a protocol error keeps an upstream `degraded` in `/healthz`.
const DEGRADED_FOR: Duration = Duration::from_secs(600);

/// How one upstream's links have behaved, shared by all of them (every
/// session's child and the shared one), for `/healthz` and `/metrics`.
#[derive(Default)]
pub struct Health {
    protocol_errors: AtomicU64,
    broken_links: AtomicU64,
    /// When the last protocol error happened and what the upstream did.
    last: Mutex<Option<(Instant, String)>>,
}

impl Health {
    /// Counts a line the upstream should not have written; `broke_link`
    /// when Airlock stopped the child because of it.
    pub fn protocol_error(&self, what: &str, broke_link: bool) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if broke_link {
            self.broken_links.fetch_add(1, Ordering::Relaxed);
        }
        *self.last.lock().expect("health lock") = Some((Instant::now(), what.to_owned()));
    }

    /// Lines that were not UTF-8, not JSON-RPC or over the size limit.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }

    /// Children stopped because of a protocol error.
    pub fn broken_links(&self) -> u64 {
        self.broken_links.load(Ordering::Relaxed)
    }

    /// `"ok"`, or `"degraded: …"` naming the last protocol error while it is
    /// recent (ten minutes).
    pub fn summary(&self) -> String {
        let last = self.last.lock().expect("health lock").clone();
        match last {
            Some((at, what)) if at.elapsed() < DEGRADED_FOR => format!(
                "degraded: {} s ago it {what} (protocol errors: {}, children stopped: {})",
                at.elapsed().as_secs(),
                self.protocol_errors(),
                self.broken_links()
            ),
            _ => "ok".into(),
        }
    }
}

/// One item of a streamed reply, in SSE terms.
#[derive(Debug, Clone)]
pub struct Event {
    /// The SSE event id: the upstream's, passed through, or one Airlock
    /// issued for a stream of its own (a held call), so that `Last-Event-ID`
    /// resumption works (docs/protocol.md, "Resumable streams").
    pub id: Option<String>,
    /// The SSE `retry` field (milliseconds before a client reconnects).
    pub retry: Option<u64>,
    /// `None` for an event without data: a priming event that only carries
    /// an id (and maybe `retry`) for the client to resume from.
    pub message: Option<Message>,
}

impl Event {
    /// An event that carries one message and nothing else.
    pub fn new(message: Message) -> Event {
        Event {
            id: None,
            retry: None,
            message: Some(message),
        }
    }

    /// An event without data: a cursor to resume from, and a reconnect delay.
    pub fn priming(id: String, retry: Option<u64>) -> Event {
        Event {
            id: Some(id),
            retry,
            message: None,
        }
    }

    /// Whether this event carries a JSON-RPC response (the end of a request's stream).
    pub fn is_response(&self) -> bool {
        self.message
            .as_ref()
            .is_some_and(|m| m.kind() == crate::jsonrpc::Kind::Response)
    }
}

/// What the agent gets back for one forwarded message.
pub struct Reply {
    pub status: u16,
    /// Upstream headers worth passing on (e.g. `Mcp-Session-Id` is handled by the caller).
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    /// No body (202 Accepted, 405, …).
    Empty,
    /// A single JSON-RPC message.
    Json(Message),
    /// A non-JSON-RPC body from an HTTP upstream, passed through as is.
    Other {
        content_type: String,
        bytes: bytes::Bytes,
    },
    /// Messages that relate to the request, ending with its response.
    Stream(Events),
}

/// The messages of one streamed reply, in order.
pub enum Events {
    /// From an upstream (or any producer that streams many messages).
    Queue(mpsc::Receiver<Event>),
    /// From a held call: a few progress notes, then the answer. A separate
    /// kind because a held call waits for minutes and there may be thousands:
    /// tokio's queue allocates 32 slots up front (~3 KiB here), futures'
    /// allocates per message.
    Held(HeldEvents),
    /// Another stream whose messages are shown to a function as they pass
    /// (e.g. to remember an MRTR `requestState` from a streamed answer).
    Tapped(Box<Events>, Box<dyn FnMut(&Message) + Send>),
}

/// The agent's end of a held call's stream; dropping it (the agent went
/// away) tells the waiting task through `_gone`.
pub struct HeldEvents {
    rx: futures::channel::mpsc::Receiver<Event>,
    _gone: tokio::sync::oneshot::Sender<()>,
}

/// The waiting task's end of a held call's stream.
pub struct HeldSender {
    pub tx: futures::channel::mpsc::Sender<Event>,
    /// Resolves (with an error) once the agent's end is dropped.
    pub gone: tokio::sync::oneshot::Receiver<()>,
}

/// A stream for a held call, with room for `buffer` waiting messages.
pub fn held_channel(buffer: usize) -> (HeldSender, Events) {
    let (tx, rx) = futures::channel::mpsc::channel(buffer);
    let (gone_tx, gone) = tokio::sync::oneshot::channel();
    (
        HeldSender { tx, gone },
        Events::Held(HeldEvents { rx, _gone: gone_tx }),
    )
}

impl Events {
    pub async fn recv(&mut self) -> Option<Event> {
        futures::StreamExt::next(self).await
    }

    /// This stream, plus `notice()` each time `trigger` changes — from the
    /// start, or only once a message of the stream satisfies `armed_by`.
    /// Ends with this stream or when the reader goes away (one small task).
    pub fn with_notices<T: Send + Sync + 'static>(
        mut self,
        mut trigger: tokio::sync::watch::Receiver<T>,
        notice: impl Fn() -> Message + Send + 'static,
        armed_by: Option<fn(&Message) -> bool>,
    ) -> Events {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut armed = armed_by.is_none();
            let mut watching = true;
            loop {
                let event = tokio::select! {
                    event = self.recv() => match event {
                        Some(event) => {
                            armed = armed || event.message.as_ref().is_some_and(|m| armed_by.is_some_and(|arms| arms(m)));
                            event
                        }
                        None => return,
                    },
                    changed = trigger.changed(), if watching => {
                        if changed.is_err() {
                            watching = false; // the source is gone (shutdown)
                            continue;
                        }
                        if !armed {
                            continue;
                        }
                        Event::new(notice())
                    }
                    _ = tx.closed() => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Events::Queue(rx)
    }
}

impl ReplyBody {
    /// Shows every JSON-RPC message of this reply to `tap`: a single answer
    /// at once, a stream's messages as the agent reads them.
    pub fn tap(self, mut tap: impl FnMut(&Message) + Send + 'static) -> ReplyBody {
        match self {
            ReplyBody::Json(message) => {
                tap(&message);
                ReplyBody::Json(message)
            }
            ReplyBody::Stream(events) => {
                ReplyBody::Stream(Events::Tapped(Box::new(events), Box::new(tap)))
            }
            other => other,
        }
    }
}

impl From<mpsc::Receiver<Event>> for Events {
    fn from(rx: mpsc::Receiver<Event>) -> Events {
        Events::Queue(rx)
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        match self.get_mut() {
            Events::Queue(rx) => rx.poll_recv(cx),
            Events::Held(held) => futures::StreamExt::poll_next_unpin(&mut held.rx, cx),
            Events::Tapped(inner, tap) => {
                let polled = futures::StreamExt::poll_next_unpin(inner.as_mut(), cx);
                if let std::task::Poll::Ready(Some(Event {
                    message: Some(message),
                    ..
                })) = &polled
                {
                    tap(message);
                }
                polled
            }
        }
    }
}

impl Reply {
    pub fn accepted() -> Reply {
        Reply {
            status: 202,
            headers: HeaderMap::new(),
            body: ReplyBody::Empty,
        }
    }

    pub fn json(message: Message) -> Reply {
        Reply {
            status: 200,
            headers: HeaderMap::new(),
            body: ReplyBody::Json(message),
        }
    }
}

/// A connection to one upstream, owned by one agent session or shared by
/// stateless-era requests.
#[derive(Clone)]
pub enum Link {
    Stdio(Arc<stdio::StdioChild>),
    Http(Arc<http::HttpSession>),
}

impl Link {
    /// Forwards a request; `headers` are the agent's (HTTP agents) or `None` (stdio agents).
    pub async fn request(
        &self,
        message: Message,
        headers: Option<&HeaderMap>,
    ) -> Result<Reply, UpstreamError> {
        match self {
            Link::Stdio(child) => child.request(message).await,
            Link::Http(session) => session.post(&message, headers).await,
        }
    }

    /// Forwards a notification or a response to a server request.
    pub async fn notify(
        &self,
        message: Message,
        headers: Option<&HeaderMap>,
    ) -> Result<Reply, UpstreamError> {
        match self {
            Link::Stdio(child) => child.send(message).await.map(|()| Reply::accepted()),
            Link::Http(session) => session.post(&message, headers).await,
        }
    }

    /// Opens the stream of server messages not tied to a request (handshake era).
    pub async fn listen(&self, headers: Option<&HeaderMap>) -> Result<Reply, UpstreamError> {
        match self {
            Link::Stdio(child) => Ok(child.listen()),
            Link::Http(session) => session.listen(headers).await,
        }
    }

    /// Ends the upstream side of a session: kills the child or DELETEs the HTTP session.
    pub async fn close(&self) {
        match self {
            Link::Stdio(child) => child.shutdown().await,
            Link::Http(session) => session.close().await,
        }
    }

    /// Whether the upstream is gone for good (a dead or stopped child).
    pub fn is_dead(&self) -> bool {
        match self {
            Link::Stdio(child) => child.is_dead(),
            Link::Http(_) => false,
        }
    }

    /// Why a dead link is dead, as the agent is told (see [`Link::is_dead`]).
    pub fn dead_error(&self) -> Option<UpstreamError> {
        match self {
            Link::Stdio(child) if child.is_dead() => Some(child.exited_error()),
            _ => None,
        }
    }
}

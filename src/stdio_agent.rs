//! The agent side over stdio (`airlock stdio`): newline-delimited JSON-RPC on
//! stdin/stdout, so a client that spawns its servers (Claude Desktop) can
//! spawn Airlock in their place. Logs go to stderr only.
//!
//! One stdio agent is one session with its own upstream connection. If the
//! upstream dies, requests get an error saying so, and the next `initialize`
//! starts a fresh upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::era::{self, Era};
use crate::gate;
use crate::gateway::{CallContext, Exchange, Gateway, UpstreamRuntime};
use crate::jsonrpc::{self, Id, Kind, Message, code};
use crate::upstream::{Link, ReplyBody, UpstreamError};

mod fds;

/// Runs until stdin closes (or shutdown), then ends the upstream.
pub async fn run(gw: Gateway, upstream: Arc<UpstreamRuntime>) -> anyhow::Result<()> {
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(256);
    let writer = tokio::spawn(write_stdout(out_rx));
    let reloads = upstream.policy_reloads();
    let agent = StdioAgent {
        gw: gw.clone(),
        upstream,
        link: Mutex::new(None),
        out: out_tx,
        name: Mutex::new(None),
        session_key: format!("stdio:{}", std::process::id()),
        handshake: AtomicBool::new(false),
    };
    let agent = Arc::new(agent);
    tokio::spawn(announce_reloads(Arc::downgrade(&agent), reloads));
    let mut stdin = tokio::io::BufReader::new(fds::stdin());
    let limit = gw.config.max_body_bytes;
    loop {
        let line = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            line = read_line(&mut stdin, limit) => line,
        };
        match line {
            Ok(Line::Eof) => break,
            Ok(Line::TooLong) => {
                agent
                    .emit(jsonrpc::error_response(
                        &Id::null(),
                        code::INVALID_REQUEST,
                        &format!("message exceeds the {limit}-byte limit"),
                    ))
                    .await;
            }
            Ok(Line::Text(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => {}
            Ok(Line::Text(bytes)) => agent.clone().handle_line(bytes).await,
            Err(e) => {
                tracing::warn!("reading stdin failed: {e}");
                break;
            }
        }
    }
    stdin.into_inner().restore();
    tracing::info!("stdin closed; ending the upstream");
    crate::hold::agent_gone(&gw, &agent.session_key).await;
    let link = agent.link.lock().expect("link lock").take();
    if let Some(link) = link {
        link.close().await;
    }
    drop(agent);
    // Answer tasks still hold the writer; give them a moment to flush.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(())
}

struct StdioAgent {
    gw: Gateway,
    upstream: Arc<UpstreamRuntime>,
    link: Mutex<Option<Link>>,
    out: mpsc::Sender<Bytes>,
    /// The agent's `clientInfo`, once seen.
    name: Mutex<Option<String>>,
    session_key: String,
    /// Set by `initialize`: a handshake-era client, which may be sent
    /// notifications outside of a request.
    handshake: AtomicBool,
}

/// Tells a handshake-era agent, at each policy reload, that the tool list may
/// have changed; ends with the agent.
async fn announce_reloads(
    agent: std::sync::Weak<StdioAgent>,
    mut reloads: tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
) {
    while reloads.changed().await.is_ok() {
        let Some(agent) = agent.upgrade() else {
            return;
        };
        if agent.handshake.load(Ordering::Relaxed) {
            agent.emit(gate::list_changed()).await;
        }
    }
}

impl StdioAgent {
    async fn emit(&self, message: Message) {
        let _ = self.out.send(message.raw().clone()).await;
    }

    /// The live upstream link; a dead one is replaced only by `initialize`.
    fn link_for(self: &Arc<Self>, message: &Message) -> Result<Link, UpstreamError> {
        let mut slot = self.link.lock().expect("link lock");
        match slot.as_ref() {
            Some(link) if !link.is_dead() => return Ok(link.clone()),
            Some(link)
                if message.method() != Some("initialize")
                    && message.method() != Some("server/discover") =>
            {
                return Err(match link.dead_error() {
                    Some(broken @ UpstreamError::Broken { .. }) => broken,
                    _ => UpstreamError::Exited {
                        status: "it can be restarted by a new initialize".into(),
                    },
                });
            }
            _ => {}
        }
        let link = self.upstream.session_link()?;
        *slot = Some(link.clone());
        if let Link::Stdio(_) = &link {
            self.pump_unsolicited(link.clone());
        }
        Ok(link)
    }

    /// Forwards server messages that belong to no request (logs, list changes).
    fn pump_unsolicited(self: &Arc<Self>, link: Link) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(reply) = link.listen(None).await
                && let ReplyBody::Stream(mut rx) = reply.body
            {
                while let Some(event) = rx.recv().await {
                    if let Some(message) = event.message {
                        this.emit(message).await;
                    }
                }
            }
        });
    }

    async fn handle_line(self: Arc<Self>, line: Vec<u8>) {
        let message = match Message::parse_metered(Bytes::from(line), &self.gw.metrics.body_parses)
        {
            Ok(m) => m,
            Err(e) => {
                self.emit(jsonrpc::error_response(
                    e.id().unwrap_or(&Id::null()),
                    e.code(),
                    &e.to_string(),
                ))
                .await;
                return;
            }
        };
        let link = match self.link_for(&message) {
            Ok(link) => link,
            Err(e) => {
                if let Some(id) = message.id().filter(|_| message.is_request()) {
                    self.emit(jsonrpc::error_response(
                        id,
                        code::UPSTREAM_ERROR,
                        &e.to_string(),
                    ))
                    .await;
                }
                return;
            }
        };
        let peek = era::peek(&message);
        let era = if era::stateless_version(&peek).is_some() {
            Era::Stateless
        } else {
            Era::Handshake
        };
        if message.method() == Some("initialize") {
            self.handshake.store(true, Ordering::Relaxed);
            self.gw
                .holds
                .elicit
                .note_initialize(&self.session_key, &message);
        }
        let client = peek
            .client_info
            .as_ref()
            .or_else(|| peek.meta.as_ref()?.client_info.as_ref())
            .map(|c| c.label());
        drop(peek);
        if let Some(client) = client {
            *self.name.lock().expect("name lock") = Some(client);
        }
        let agent = self
            .name
            .lock()
            .expect("name lock")
            .clone()
            .unwrap_or_else(|| "stdio agent".into());
        let ctx = CallContext {
            upstream: self.upstream.clone(),
            link,
            era,
            session_key: self.session_key.clone(),
            agent,
        };
        match message.kind() {
            Kind::Request => {
                // Requests run concurrently: a held call must not block the next one.
                tokio::spawn(async move { self.answer(ctx, message).await });
            }
            Kind::Notification | Kind::Response => {
                if crate::hold::intercept_notification(&self.gw, &ctx, &message).is_some() {
                    return;
                }
                if let Err(e) = ctx.link.notify(message, None).await {
                    tracing::warn!("could not pass a message upstream: {e}");
                }
            }
        }
    }

    async fn answer(self: Arc<Self>, ctx: CallContext, message: Message) {
        let id = message.id().cloned().unwrap_or_else(Id::null);
        let is_initialize = message.method() == Some("initialize");
        let exchange = match self.gw.forward(&ctx, message, None).await {
            Ok(exchange) => exchange,
            Err(e) => {
                self.emit(jsonrpc::error_response(
                    &id,
                    code::UPSTREAM_ERROR,
                    &e.to_string(),
                ))
                .await;
                return;
            }
        };
        let Exchange { reply, list_filter } = exchange;
        let filter = |m: Message| match &list_filter {
            Some(filter) if m.kind() == Kind::Response => filter.apply(m),
            _ => m,
        };
        // An HTTP upstream may answer errors with `"id": null` (it could not
        // tie them to a request); over stdio the agent needs its own id back.
        let filter = |m: Message| {
            let m = filter(m);
            if m.kind() == Kind::Response && m.id().is_none() {
                m.with_id(&id)
            } else {
                m
            }
        };
        match reply.body {
            ReplyBody::Json(m) => self.emit(filter(m)).await,
            ReplyBody::Stream(mut rx) => {
                while let Some(event) = rx.recv().await {
                    if let Some(message) = event.message {
                        self.emit(filter(message)).await;
                    }
                }
            }
            ReplyBody::Empty | ReplyBody::Other { .. } => {
                let text = format!(
                    "upstream answered HTTP {} without a JSON-RPC message",
                    reply.status
                );
                self.emit(jsonrpc::error_response(&id, code::UPSTREAM_ERROR, &text))
                    .await;
            }
        }
        if is_initialize && let Link::Http(_) = &ctx.link {
            // An HTTP upstream's standalone stream carries its unsolicited messages.
            self.pump_unsolicited(ctx.link.clone());
        }
    }
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one newline-terminated line of at most `limit` bytes. A longer line
/// is skipped to its end and reported, so one bad line never ends the session
/// (invalid UTF-8 is left to the JSON-RPC parser, which answers it).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Line> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::Eof
            } else {
                Line::Text(line)
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > limit {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(available.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

/// The only place bytes reach the agent's stdin (our stdout). One message,
/// one line: an upstream's answer (an HTTP upstream may pretty-print) goes
/// through [`crate::jsonrpc::line::to_terminated_line`] so the agent never reads it as several
/// messages, and reaches stdout in one write.
async fn write_stdout(mut rx: mpsc::Receiver<Bytes>) {
    let mut stdout = fds::stdout();
    while let Some(message) = rx.recv().await {
        let line = crate::jsonrpc::line::to_terminated_line(&message);
        let ok = stdout.write_all(&line).await.is_ok() && stdout.flush().await.is_ok();
        if !ok {
            break;
        }
    }
    stdout.restore();
}

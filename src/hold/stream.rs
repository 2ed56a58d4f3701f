//! A held call's stream to the agent, resumable in the handshake era.
//!
//! In the 2025-11-25 transport a disconnection "SHOULD NOT be interpreted as
//! the client cancelling its request": a client that saw an event id may
//! come back with `GET` and `Last-Event-ID`. So a held call's stream in a
//! handshake-era HTTP session opens with a priming event (an id, `retry`,
//! empty data), every event Airlock writes on it gets an id of Airlock's own
//! (`airlock-<pending id>-<n>`), and the events are kept in a short log. When
//! the agent's stream drops, the hold waits [`GRACE`] for a resume before it
//! is cancelled; a resume replays the log after the given id and carries on.
//! Events relayed from the upstream (after approval) keep the upstream's own
//! ids: resuming from one of those goes to the upstream, which replays.
//!
//! The stateless era (2026-07-28) has no resumption ("Resumable SSE streams
//! via `Last-Event-ID` are not supported"): there a held stream carries no
//! ids and a closed stream cancels the hold, as before.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc::Sender;
use tokio::sync::{Notify, oneshot};

use crate::jsonrpc::Message;
use crate::upstream::{Event, Events, held_channel};

/// The reconnect delay Airlock asks for (the SSE `retry` field), in ms.
pub const RETRY_MS: u64 = 1000;

/// How long a hold whose agent stream dropped waits for a resume, and how
/// long a finished held stream stays resumable (to replay its answer).
pub const GRACE: Duration = Duration::from_secs(30);

/// Events kept for replay (a held call writes a few progress notes, then
/// its answer; the oldest progress notes go first).
const LOG: usize = 32;

const PREFIX: &str = "airlock-";

/// The agent-facing stream of one held call.
pub struct HeldStream {
    pending_id: String,
    /// The handshake-era session that may resume it; `None`: not resumable.
    session: Option<String>,
    state: Mutex<State>,
    /// Wakes the waiting task when an agent re-attached (see [`HeldStream::resume`]).
    pub attached: Notify,
}

struct State {
    next: u64,
    log: VecDeque<(u64, Event)>,
    tx: Option<Sender<Event>>,
    /// The current attachment's "agent went away" signal, for the waiter.
    gone: Option<oneshot::Receiver<()>>,
    finished: bool,
}

/// Why a `Last-Event-ID` of Airlock's own cannot be resumed.
#[derive(Debug, thiserror::Error)]
#[error(
    "nothing to resume for Last-Event-ID `{0}`: the held call ended longer ago than `[approval] resume_grace`, or belongs to another session"
)]
pub struct NotResumable(pub String);

impl HeldStream {
    /// A stream for a held call; `session` when it may be resumed. Returns
    /// the agent's first attachment.
    pub fn open(pending_id: &str, session: Option<String>) -> (HeldStream, Events) {
        let (sender, events) = held_channel(4);
        let stream = HeldStream {
            pending_id: pending_id.to_owned(),
            session,
            state: Mutex::new(State {
                next: 0,
                log: VecDeque::new(),
                tx: Some(sender.tx),
                gone: Some(sender.gone),
                finished: false,
            }),
            attached: Notify::new(),
        };
        if stream.resumable() {
            stream.push(None, None, Some(RETRY_MS));
        }
        (stream, events)
    }

    pub fn resumable(&self) -> bool {
        self.session.is_some()
    }

    /// The next event of the stream, logged for replay when resumable: with
    /// the upstream's id if it has one, else (resumable) an id of Airlock's.
    fn stamp(
        &self,
        state: &mut State,
        message: Option<Message>,
        upstream_id: Option<String>,
        retry: Option<u64>,
    ) -> Event {
        let seq = state.next;
        state.next += 1;
        let id = upstream_id.or_else(|| {
            self.resumable()
                .then(|| format!("{PREFIX}{}-{seq}", self.pending_id))
        });
        let event = Event { id, retry, message };
        if self.resumable() {
            if state.log.len() == LOG {
                state.log.pop_front();
            }
            state.log.push_back((seq, event.clone()));
        }
        event
    }

    /// Queues an event without waiting (a priming event).
    pub fn push(&self, message: Option<Message>, upstream_id: Option<String>, retry: Option<u64>) {
        let mut state = self.state.lock().expect("held stream lock");
        let event = self.stamp(&mut state, message, upstream_id, retry);
        if let Some(tx) = state.tx.as_mut() {
            let _ = tx.try_send(event);
        }
    }

    /// The current attachment's "agent went away" signal (once per attachment).
    pub fn take_gone(&self) -> Option<oneshot::Receiver<()>> {
        self.state.lock().expect("held stream lock").gone.take()
    }

    /// Sends one message (see [`HeldStream::stamp`] for its id). False when
    /// the agent is gone and cannot come back.
    pub async fn send(
        &self,
        message: Message,
        upstream_id: Option<String>,
        retry: Option<u64>,
    ) -> bool {
        let (event, tx) = {
            let mut state = self.state.lock().expect("held stream lock");
            let event = self.stamp(&mut state, Some(message), upstream_id, retry);
            (event, state.tx.clone())
        };
        let delivered = match tx {
            Some(mut tx) => futures::SinkExt::send(&mut tx, event).await.is_ok(),
            None => false,
        };
        delivered || self.resumable()
    }

    /// Ends the stream: the attached agent sees it close.
    pub fn finish(&self) {
        let mut state = self.state.lock().expect("held stream lock");
        state.finished = true;
        state.tx = None;
        state.gone = None;
    }

    /// A new attachment after `Last-Event-ID` = `after`: replays what came
    /// after it, then carries on (or ends, if the call is over).
    fn attach(&self, after: u64) -> Events {
        let mut state = self.state.lock().expect("held stream lock");
        let replay: Vec<Event> = state
            .log
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(_, e)| e.clone())
            .collect();
        let (mut sender, events) = held_channel(replay.len() + 4);
        for event in replay {
            let _ = sender.tx.try_send(event);
        }
        if !state.finished {
            state.tx = Some(sender.tx);
            state.gone = Some(sender.gone);
            self.attached.notify_one();
        }
        events
    }
}

/// `Some((pending id, n))` when `id` is an event id Airlock issued.
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    let rest = id.strip_prefix(PREFIX)?;
    let (pending, n) = rest.rsplit_once('-')?;
    Some((pending, n.parse().ok()?))
}

/// Resumes a held call's stream for `Last-Event-ID` = `last_event_id` in
/// session `session`; `None` when the id is not one of Airlock's.
pub fn resume(
    holds: &super::Holds,
    session: &str,
    last_event_id: &str,
) -> Option<Result<Events, NotResumable>> {
    let (pending, after) = parse_id(last_event_id)?;
    let stream = holds.streams.get(pending).map(|s| s.clone());
    Some(match stream {
        Some(stream) if stream.session.as_deref() == Some(session) => {
            tracing::info!(pending = %pending, after, "held call stream resumed");
            Ok(stream.attach(after))
        }
        _ => Err(NotResumable(last_event_id.to_owned())),
    })
}

//! Delivery: the task that talks to Slack, so holds never wait for it.
//!
//! The notifier only queues ([`Outbox::push`], a bounded channel; a full
//! queue is a recorded failure, never a wait). A dispatcher task starts one
//! small conversation per held call: post the message, then, once the call is
//! decided, post the follow-up (webhook) or edit the message (`chat.update`).
//! Each post is retried with exponential backoff and jitter, honouring
//! `Retry-After` on 429, until `slack.give_up_after`. Every failed attempt is
//! counted in `airlock_notification_failures_total`; the first failure of a
//! message and the giving-up are recorded in the audit history as
//! `notification_failed`. Webhook URLs and tokens never reach a log line:
//! errors are reported by status code, and transport errors without their URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::links::{Actions, LinkKey};
use super::message::{self, Buttons};
use crate::audit::Record;
use crate::config::SlackConfig;
use crate::gateway::Gateway;
use crate::hold::{PendingItem, Resolution};

/// Jobs waiting for the dispatcher; beyond this, new jobs are failures.
const QUEUE: usize = 1024;
/// HTTP requests to Slack in flight at once.
const PARALLEL: usize = 4;
/// Limit on one HTTP attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// After shutdown, jobs are still taken this long (the "gateway shut down" follow-ups).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Something to tell Slack.
pub enum Job {
    Held(PendingItem),
    Resolved(PendingItem, Resolution),
    /// A reply to a Slack-app interaction through its `response_url`.
    Respond {
        url: String,
        body: Value,
        item: Option<PendingItem>,
    },
    /// A message about no held call (a changed tool definition), posted once.
    Notice {
        what: &'static str,
        body: Value,
    },
}

impl Job {
    fn item(&self) -> Option<&PendingItem> {
        match self {
            Job::Held(item) | Job::Resolved(item, _) => Some(item),
            Job::Respond { item, .. } => item.as_ref(),
            Job::Notice { .. } => None,
        }
    }
}

/// The notifier's end of the queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Job>,
    gw: Gateway,
}

impl Outbox {
    /// Queues a job without waiting; a full queue counts and records a failure.
    pub fn push(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            let job = e.into_inner();
            self.gw
                .metrics
                .notification_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Slack queue is full; a message was dropped");
            let record = failure_record(
                job.item(),
                "not queued: the Slack queue is full (Slack has been failing for a while)".into(),
            );
            let gw = self.gw.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { gw.audit.record(record).await });
            }
        }
    }
}

/// Starts the dispatcher; returns the queue's sending end.
pub fn start(gw: &Gateway, config: SlackConfig, key: Arc<LinkKey>) -> Outbox {
    let (tx, rx) = mpsc::channel(QUEUE);
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .build()
        .expect("building the Slack HTTP client");
    let courier = Arc::new(Courier {
        gw: gw.clone(),
        public_url: gw.config.public_url.clone(),
        config,
        key,
        client,
        permits: Semaphore::new(PARALLEL),
        rate_limited_until: std::sync::Mutex::new(None),
    });
    tokio::spawn(courier.dispatch(rx));
    Outbox { tx, gw: gw.clone() }
}

/// Where one message goes.
#[derive(Clone, Copy)]
enum Target<'a> {
    Webhook(&'a str),
    /// A Web API method (`chat.postMessage`, `chat.update`) with the bot token.
    Api(&'static str),
    ResponseUrl(&'a str),
}

/// Why an attempt failed.
struct Failure {
    why: String,
    retry_after: Option<Duration>,
    /// Retrying cannot help (e.g. the webhook was revoked).
    permanent: bool,
    /// Not sent at all: Slack asked every request to wait (an earlier 429).
    deferred: bool,
}

/// How a retried delivery ended.
enum Delivery {
    /// Slack accepted it; the Web API's answer (or null).
    Sent(Value),
    GaveUp,
    /// The call was decided before Slack accepted its message.
    Overtaken(Resolution),
    /// The dispatcher is gone (shutdown).
    Stopped,
}

/// Sends to Slack; shared by every conversation.
struct Courier {
    gw: Gateway,
    public_url: String,
    config: SlackConfig,
    key: Arc<LinkKey>,
    client: reqwest::Client,
    permits: Semaphore,
    /// After a 429, no request goes to Slack before this instant: Slack's
    /// limits are per app and webhook, not per message, so every
    /// conversation waits (a burst of holds must not become a burst of 429s).
    rate_limited_until: std::sync::Mutex<Option<Instant>>,
}

impl Courier {
    /// Takes jobs until the queue closes, or shortly after shutdown.
    async fn dispatch(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        let mut open: HashMap<String, oneshot::Sender<Resolution>> = HashMap::new();
        let shutdown = self.gw.shutdown.clone();
        let mut grace: Option<Instant> = None;
        loop {
            let job = tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                _ = shutdown.cancelled(), if grace.is_none() => {
                    grace = Some(Instant::now() + SHUTDOWN_GRACE);
                    continue;
                }
                _ = tokio::time::sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => return,
            };
            match job {
                Job::Held(item) => {
                    let (tx, rx) = oneshot::channel();
                    open.insert(item.id.clone(), tx);
                    tokio::spawn(self.clone().conversation(item, rx));
                }
                Job::Resolved(item, resolution) => match open.remove(&item.id) {
                    Some(tx) => {
                        let _ = tx.send(resolution);
                    }
                    None => {
                        tokio::spawn(self.clone().announce(item, resolution, None));
                    }
                },
                Job::Notice { what, body } => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let target = if me.config.bot_token.is_some() {
                            Target::Api("chat.postMessage")
                        } else {
                            Target::Webhook(me.config.webhook_url.as_deref().unwrap_or_default())
                        };
                        me.deliver(what, None, target, body, None).await;
                    });
                }
                Job::Respond { url, body, item } => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.deliver(
                            "reply",
                            item.as_ref(),
                            Target::ResponseUrl(&url),
                            body,
                            None,
                        )
                        .await;
                    });
                }
            }
        }
    }

    /// One held call: its message, then what became of it.
    async fn conversation(
        self: Arc<Self>,
        item: PendingItem,
        mut decided: oneshot::Receiver<Resolution>,
    ) {
        let body = message::held(&item, &self.buttons(&item));
        let target = if self.config.bot_token.is_some() {
            Target::Api("chat.postMessage")
        } else {
            Target::Webhook(self.config.webhook_url.as_deref().unwrap_or_default())
        };
        let (posted, early) = match self
            .deliver(
                "held-call message",
                Some(&item),
                target,
                body,
                Some(&mut decided),
            )
            .await
        {
            Delivery::Sent(reply) => (Some(reply), None),
            Delivery::GaveUp => (None, None),
            Delivery::Overtaken(r) => (None, Some(r)),
            Delivery::Stopped => return,
        };
        let resolution = match early {
            Some(r) => r,
            None => match decided.await {
                Ok(r) => r,
                Err(_) => return, // dispatcher gone (shutdown)
            },
        };
        self.announce(item, resolution, posted).await;
    }

    fn buttons(&self, item: &PendingItem) -> Buttons {
        let details = format!("{}/", self.public_url);
        if self.config.signing_secret.is_some() {
            return Buttons::Interactive { details };
        }
        let expires = chrono::DateTime::parse_from_rfc3339(&item.expires_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now());
        let link = |actions| {
            format!(
                "{}/approve/{}",
                self.public_url,
                self.key.sign(&item.id, actions, expires)
            )
        };
        Buttons::Links {
            approve: link(Actions::ApproveOrDeny),
            deny: link(Actions::DenyOnly),
            details,
        }
    }

    /// Tells Slack what became of a call: edits the bot's message, or posts a
    /// follow-up. Calls decided with Slack's own buttons were already
    /// updated through `response_url`.
    async fn announce(
        self: Arc<Self>,
        item: PendingItem,
        resolution: Resolution,
        posted: Option<Value>,
    ) {
        if resolution.channel == "slack" {
            return;
        }
        let posted_ts = posted
            .as_ref()
            .and_then(|p| Some((p.get("channel")?.as_str()?, p.get("ts")?.as_str()?)));
        let (target, body) = match (&self.config.bot_token, posted_ts) {
            (Some(_), Some((channel, ts))) => {
                let mut body = message::decided(&item, &resolution);
                body["channel"] = channel.into();
                body["ts"] = ts.into();
                (Target::Api("chat.update"), body)
            }
            (Some(_), None) => (
                Target::Api("chat.postMessage"),
                message::followup(&item, &resolution),
            ),
            (None, _) => (
                Target::Webhook(self.config.webhook_url.as_deref().unwrap_or_default()),
                message::followup(&item, &resolution),
            ),
        };
        self.deliver("follow-up", Some(&item), target, body, None)
            .await;
    }

    /// Sends with retries until Slack accepts, the time is up, or (for a
    /// held-call message) the call is decided.
    async fn deliver(
        &self,
        what: &str,
        item: Option<&PendingItem>,
        target: Target<'_>,
        body: Value,
        mut decided: Option<&mut oneshot::Receiver<Resolution>>,
    ) -> Delivery {
        let started = Instant::now();
        let deadline = started + self.config.give_up_after;
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        let mut failures = 0u32;
        loop {
            let failure = match self.attempt(target, &body).await {
                Ok(reply) => return Delivery::Sent(reply),
                Err(f) => f,
            };
            let id = item.map(|i| i.id.as_str()).unwrap_or("-");
            let wait = if failure.deferred {
                // Another conversation was told to slow down: this message
                // waits without being sent (not a failure of its own).
                if last.is_empty() {
                    last = failure.why;
                }
                failure.retry_after.unwrap_or(FIRST_BACKOFF)
            } else {
                failures += 1;
                self.gw
                    .metrics
                    .notification_failures
                    .fetch_add(1, Ordering::Relaxed);
                let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                last = failure.why;
                if failure.permanent {
                    break;
                }
                failure.retry_after.unwrap_or(jittered)
            };
            if Instant::now() + wait > deadline {
                break;
            }
            if failure.deferred {
                tracing::debug!(pending = %id, "Slack {what}: rate limited; waiting {} ms", wait.as_millis());
            } else {
                tracing::warn!(pending = %id, "Slack {what}: {last}; retrying in {} ms (attempt {failures})", wait.as_millis());
                if failures == 1 {
                    self.record(item, format!("Slack {what}: {last}; retrying"));
                }
            }
            let sleep = tokio::time::sleep(wait);
            match decided.as_deref_mut() {
                Some(rx) => tokio::select! {
                    _ = sleep => {}
                    r = rx => match r {
                        Ok(r) => {
                            self.record(item, format!("Slack {what} not delivered before the call was decided ({last})"));
                            return Delivery::Overtaken(r);
                        }
                        Err(_) => return Delivery::Stopped,
                    },
                },
                None => sleep.await,
            }
        }
        let id = item.map(|i| i.id.as_str()).unwrap_or("-");
        let waited = started.elapsed().as_secs();
        tracing::error!(pending = %id, "Slack {what} not delivered: gave up after {waited} s ({last})");
        self.record(
            item,
            format!("Slack {what} not delivered: gave up after {waited} s ({last})"),
        );
        Delivery::GaveUp
    }

    /// How long every request must still wait after a 429.
    fn rate_limit_left(&self) -> Duration {
        let until = *self.rate_limited_until.lock().expect("rate limit lock");
        until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// Holds every request back for `wait` (never shortens an earlier pause).
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut current = self.rate_limited_until.lock().expect("rate limit lock");
        if current.is_none_or(|t| t < until) {
            *current = Some(until);
        }
    }

    /// One HTTP request.
    async fn attempt(&self, target: Target<'_>, body: &Value) -> Result<Value, Failure> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore is never closed");
        // Looked at once the permit is held: requests queued behind it when
        // a 429 arrived must not all go out anyway.
        let paused = self.rate_limit_left();
        if !paused.is_zero() {
            return Err(Failure {
                why: "Slack rate limit (429)".into(),
                retry_after: Some(paused),
                permanent: false,
                deferred: true,
            });
        }
        let request = match target {
            Target::Webhook(url) | Target::ResponseUrl(url) => self.client.post(url),
            Target::Api(method) => {
                let mut body = body.clone();
                if body.get("channel").is_none() {
                    body["channel"] = self.config.channel.clone().unwrap_or_default().into();
                }
                let token = self.config.bot_token.as_deref().unwrap_or_default();
                let request = self
                    .client
                    .post(format!("{}/{method}", self.config.api_url))
                    .bearer_auth(token);
                return self.finish(request.json(&body), true).await;
            }
        };
        self.finish(request.json(body), false).await
    }

    async fn finish(
        &self,
        request: reqwest::RequestBuilder,
        web_api: bool,
    ) -> Result<Value, Failure> {
        let response = request.send().await.map_err(|e| Failure {
            why: transport_error(e),
            retry_after: None,
            permanent: false,
            deferred: false,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.pause(retry_after.unwrap_or(FIRST_BACKOFF));
        }
        if !status.is_success() {
            let permanent = status.is_client_error()
                && status != StatusCode::TOO_MANY_REQUESTS
                && status != StatusCode::REQUEST_TIMEOUT;
            return Err(Failure {
                why: format!("HTTP {}{}", status.as_u16(), short(&text)),
                retry_after,
                permanent,
                deferred: false,
            });
        }
        if !web_api {
            return Ok(Value::Null);
        }
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(reply);
        }
        let error = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no `ok` in the answer")
            .to_owned();
        if error == "ratelimited" {
            self.pause(retry_after.unwrap_or(FIRST_BACKOFF));
        }
        let transient = matches!(
            error.as_str(),
            "ratelimited"
                | "internal_error"
                | "fatal_error"
                | "service_unavailable"
                | "request_timeout"
        );
        Err(Failure {
            why: format!("Slack API error `{error}`"),
            retry_after,
            permanent: !transient,
            deferred: false,
        })
    }

    /// Records a `notification_failed` row (off the hot path).
    fn record(&self, item: Option<&PendingItem>, reason: String) {
        let record = failure_record(item, reason);
        let gw = self.gw.clone();
        tokio::spawn(async move { gw.audit.record(record).await });
    }
}

/// A transport error with its causes ("error sending request: client error
/// (Connect): tcp connect error: Connection refused"), never its URL: the
/// webhook URL is a secret.
fn transport_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs());
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Slack's short error bodies ("no_service", "invalid_payload") help; long ones do not.
fn short(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.len() > 80 || !text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return String::new();
    }
    format!(" ({text})")
}

fn failure_record(item: Option<&PendingItem>, reason: String) -> Record {
    Record {
        decision: "notification_failed",
        session: item.map(|i| i.session.clone()),
        agent: item.map(|i| i.agent.clone()),
        upstream: item.map(|i| i.upstream.clone()),
        tool: item.map(|i| i.tool.clone()),
        reason: Some(reason),
        pending_id: item.map(|i| i.id.clone()),
        channel: Some("slack".into()),
        ..Default::default()
    }
}

/// The body of an ephemeral reply to one Slack user (through `response_url`).
pub fn ephemeral(text: &str) -> Value {
    json!({ "response_type": "ephemeral", "replace_original": false, "text": text })
}

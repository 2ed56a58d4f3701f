//! The gateway's shared state and the forwarding of one agent message.
//!
//! [`Gateway`] is a cheap-to-clone handle. Both agent transports (HTTP in
//! `http_agent`, stdio in `stdio_agent`) call [`Gateway::forward`], which runs
//! the policy on `tools/call`, marks `tools/list` answers for filtering, and
//! passes everything else through untouched.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use indexmap::IndexMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Record};
use crate::config::Config;
use crate::era::{self, Era};
use crate::events::Events;
use crate::gate::{self, CallDecision};
use crate::hold::Holds;
use crate::jsonrpc::{self, Id, Message, code};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::upstream::http::{HttpSession, HttpUpstream};
use crate::upstream::stdio::StdioChild;
use crate::upstream::{Health, Link, Reply, ReplyBody, UpstreamError, UpstreamSpec};

/// Longest line a stdio upstream may write (one JSON-RPC message).
const MAX_STDIO_LINE: usize = 64 * 1024 * 1024;

/// Cheap-to-clone handle to everything the gateway shares.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub upstreams: IndexMap<String, Arc<UpstreamRuntime>>,
    /// Handshake-era sessions by the `Mcp-Session-Id` Airlock issued.
    pub sessions: DashMap<String, Arc<Session>>,
    pub holds: Holds,
    /// Pending approvals and their decisions (shared by replicas on PostgreSQL).
    pub approvals: crate::approvals::Approvals,
    /// `rate_limit` budgets of stateless-era agents, shared by replicas
    /// (`[store] url`); `None`: every budget is in memory.
    pub budgets: Option<crate::budgets::SharedBudgets>,
    /// `requestState`s of allowed, rate-limited calls that asked for input.
    pub retries: Retries,
    /// Held calls handed to stateless-era clients as tasks.
    pub tasks: crate::tasks::Tasks,
    pub audit: Audit,
    pub events: Arc<Events>,
    pub metrics: Metrics,
    /// Slack (`[slack]`): link key, settings and the outbox its routes use.
    /// Its messages come from a notifier subscribed to `approvals`.
    pub slack: Option<Arc<crate::slack::Slack>>,
    /// Browser logins of approvers.
    pub logins: crate::login::Logins,
    /// Single sign-on (`[oidc]`): the discovered provider.
    pub sso: crate::oidc::Sso,
    /// Every upstream's tools, for the dashboard's Tools page.
    pub catalog: crate::catalog::Catalog,
    /// The pinned definition of every tool seen (rug-pull defence).
    pub pins: crate::pins::Pins,
    /// Standing approvals given with an approval (shared by replicas on PostgreSQL).
    pub grants: crate::grants::Grants,
    /// Approvals counted toward a two-person (or more) rule, and escalations
    /// (shared by replicas on PostgreSQL).
    pub votes: crate::quorum::Votes,
    /// The shared store of grants, votes, escalations and pins (`[store] url`).
    pub power_store: Option<Arc<crate::power_store::SharedPower>>,
    /// Agent requests whose responses are still being sent (shutdown waits for them).
    pub in_flight: AtomicUsize,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// How each upstream answers a call to an unknown tool, per era (see `hidden_answer`).
    unknown_tool: DashMap<(String, bool), UnknownToolAnswer>,
    started: Instant,
}

impl std::ops::Deref for Gateway {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// One configured upstream: how to reach it and its live policy.
pub struct UpstreamRuntime {
    pub name: String,
    pub spec: UpstreamSpec,
    policy: watch::Receiver<Arc<Policy>>,
    /// How the policy file is doing (a refused edit, an unreadable file).
    pub policy_status: Arc<crate::reload::ReloadStatus>,
    http: Option<Arc<HttpUpstream>>,
    /// The child shared by stateless-era requests (stdio upstreams), spawned lazily.
    shared_child: Mutex<Option<Arc<StdioChild>>>,
    /// The session-less HTTP session used by stateless-era requests.
    stateless_http: Option<Arc<HttpSession>>,
    /// Protocol errors of its stdio children (`/healthz`, `/metrics`).
    pub health: Arc<Health>,
    /// Tool annotations its `tools/list` answers declared (policy `annotations`).
    pub hints: Arc<crate::policy::ToolHints>,
}

impl UpstreamRuntime {
    pub fn new(
        name: String,
        spec: UpstreamSpec,
        live: crate::reload::LivePolicy,
    ) -> Result<Arc<UpstreamRuntime>, UpstreamError> {
        let http = match &spec {
            UpstreamSpec::Http { .. } => Some(HttpUpstream::new(&spec)?),
            UpstreamSpec::Stdio { .. } => None,
        };
        let stateless_http = http.as_ref().map(|h| h.session());
        Ok(Arc::new(UpstreamRuntime {
            name,
            spec,
            policy: live.policy,
            policy_status: live.status,
            http,
            shared_child: Mutex::new(None),
            stateless_http,
            health: Arc::default(),
            hints: Arc::default(),
        }))
    }

    /// Connections opened to an HTTP upstream so far; `None` for a stdio upstream.
    pub fn connections_opened(&self) -> Option<u64> {
        self.http.as_ref().map(|h| h.connections_opened())
    }

    /// The policy in force now (a reload swaps it for the next call).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// Resolves at each later policy reload (the current policy counts as seen).
    pub fn policy_reloads(&self) -> watch::Receiver<Arc<Policy>> {
        let mut reloads = self.policy.clone();
        reloads.mark_unchanged();
        reloads
    }

    /// Starts a stdio child and says so: its first answer can take seconds
    /// (`npx` may be downloading it), and the call that started it waits.
    fn start_child(&self, shared: bool) -> Result<Arc<StdioChild>, UpstreamError> {
        let child = StdioChild::spawn(&self.spec, shared, MAX_STDIO_LINE, self.health.clone())?;
        tracing::info!(
            upstream = %self.name,
            pid = child.pid(),
            shared,
            "upstream starting (the call that needs it waits for its first answer)"
        );
        Ok(child)
    }

    /// A fresh upstream connection for one handshake-era agent session.
    pub fn session_link(&self) -> Result<Link, UpstreamError> {
        match &self.http {
            Some(http) => Ok(Link::Http(http.session())),
            None => Ok(Link::Stdio(self.start_child(false)?)),
        }
    }

    /// The connection stateless-era requests share; a dead child is replaced.
    /// A bad line from it fails only the call it names, so it is never
    /// stopped for one (see `upstream::stdio`); one that exits is replaced here.
    pub fn stateless_link(&self) -> Result<Link, UpstreamError> {
        if let Some(session) = &self.stateless_http {
            return Ok(Link::Http(session.clone()));
        }
        let mut shared = self.shared_child.lock().expect("shared child lock");
        match shared.as_ref() {
            Some(child) if !child.is_dead() => Ok(Link::Stdio(child.clone())),
            _ => {
                let child = self.start_child(true)?;
                *shared = Some(child.clone());
                Ok(Link::Stdio(child))
            }
        }
    }

    /// Ends the shared child, if any (shutdown).
    pub async fn close_shared(&self) {
        let child = self.shared_child.lock().expect("shared child lock").take();
        if let Some(child) = child {
            child.shutdown().await;
        }
    }
}

/// A handshake-era agent session and its own upstream connection.
pub struct Session {
    pub id: String,
    pub upstream: Arc<UpstreamRuntime>,
    pub link: Link,
    /// Who the agent is: its configured name, else its `clientInfo`.
    pub agent: String,
    /// The authenticated `[[agent]]` that opened the session; only it may use it.
    pub owner: Option<String>,
    /// Milliseconds since gateway start of the last message (idle reaping).
    last_seen: AtomicU64,
    /// Requests still being answered; a busy session is never reaped.
    pub in_flight: AtomicUsize,
    /// The version the upstream chose in `initialize`, when it answered with JSON.
    protocol_version: std::sync::OnceLock<String>,
    /// The version the upstream chose, however it answered (JSON or SSE):
    /// decides whether held calls get resumable streams. Unlike
    /// `protocol_version` it does not constrain later headers.
    negotiated: std::sync::OnceLock<String>,
}

/// Protocol versions of the handshake era.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

impl Session {
    /// Remembers the version negotiated by `initialize`.
    pub fn remember_protocol_version(&self, answer: &Message) {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        if let Some(v) = answer.result::<R>().and_then(|r| r.protocol_version) {
            let _ = self.negotiated.set(v.clone());
            let _ = self.protocol_version.set(v);
        }
    }

    /// Remembers the version of an `initialize` answered on a stream, for
    /// [`Session::protocol_version`] only.
    pub fn remember_negotiated_version(&self, answer: &Message) {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        if let Some(v) = answer.result::<R>().and_then(|r| r.protocol_version) {
            let _ = self.negotiated.set(v);
        }
    }

    /// The version negotiated by `initialize`, when known.
    pub fn protocol_version(&self) -> Option<&str> {
        self.negotiated.get().map(String::as_str)
    }

    /// Whether a request's `MCP-Protocol-Version` fits this session.
    pub fn accepts_protocol_version(&self, version: &str) -> bool {
        match self.protocol_version.get() {
            Some(negotiated) => negotiated == version,
            None => HANDSHAKE_VERSIONS.contains(&version),
        }
    }

    pub fn touch(&self, gateway: &Gateway) {
        self.last_seen.store(
            gateway.started.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    fn idle_for(&self, gateway: &Gateway) -> Duration {
        let now = gateway.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_seen.load(Ordering::Relaxed)))
    }
}

/// MRTR continuations of allowed calls: `requestState` → (session, tool,
/// arguments hash, until). Kept only for rate-limited tools, so that answering
/// the server's question does not count as a second call. Like an approval's
/// continuation (`Holds::continuation`), it is bound to the arguments: a
/// retry that changes them is a new call and spends budget like one.
#[derive(Default)]
pub struct Retries(DashMap<String, (String, String, String, Instant)>);

impl Retries {
    const TTL: Duration = Duration::from_secs(600);

    fn remember(&self, answer: &Message, session: &str, tool: &str, args_hash: &str) {
        if let Some(state) = era::input_required_state(answer) {
            let until = Instant::now() + Self::TTL;
            let entry = (
                session.to_owned(),
                tool.to_owned(),
                args_hash.to_owned(),
                until,
            );
            self.0.insert(state, entry);
        }
    }

    /// Whether `state` continues an allowed call of this session, tool and
    /// arguments (single use: a mismatch spends the state too).
    fn take(&self, state: &str, session: &str, tool: &str, arguments: Option<&str>) -> bool {
        self.0
            .remove(state)
            .is_some_and(|(_, (s, t, args, until))| {
                s == session
                    && t == tool
                    && args == crate::hold::hash_arguments(arguments)
                    && until > Instant::now()
            })
    }

    fn prune(&self) {
        let now = Instant::now();
        self.0.retain(|_, v| v.3 > now);
    }
}

/// Who is calling and over which connection; built per message by the transports.
pub struct CallContext {
    pub upstream: Arc<UpstreamRuntime>,
    pub link: Link,
    pub era: Era,
    /// The rate-limit and audit key of the agent session (see docs/protocol.md).
    pub session_key: String,
    pub agent: String,
}

impl CallContext {
    /// The key MRTR continuations are bound to: upstream and agent session.
    pub fn scope(&self) -> String {
        format!("{}\u{0}{}", self.upstream.name, self.session_key)
    }
}

/// A reply plus what still has to be done to it on the way to the agent.
pub struct Exchange {
    pub reply: Reply,
    /// Set for `tools/list`: filter the response with this policy and
    /// remember the declared annotations (and pin the definitions).
    pub list_filter: Option<ListFilter>,
}

/// What a `tools/list` answer goes through on its way to the agent.
pub struct ListFilter {
    pub policy: Arc<Policy>,
    pub gw: Gateway,
    pub upstream: Arc<UpstreamRuntime>,
}

impl ListFilter {
    /// With the policy in force now.
    pub fn new(gw: &Gateway, upstream: &Arc<UpstreamRuntime>) -> ListFilter {
        ListFilter {
            policy: upstream.policy(),
            gw: gw.clone(),
            upstream: upstream.clone(),
        }
    }

    /// Pins the tools listed, then drops those the agent may not see (hidden
    /// by the policy, or changed under `on_tool_change: hide`).
    pub fn apply(&self, response: Message) -> Message {
        crate::power::observe_list(&self.gw, &self.upstream, &response);
        let (pins, name) = (&self.gw.pins, &self.upstream.name);
        let policy = &self.policy;
        let hidden = |tool: &str| {
            policy.on_tool_change(tool) == crate::policy::OnToolChange::Hide
                && pins.is_changed(name, tool)
        };
        gate::filter_tools_list_hiding(policy, &self.upstream.hints, &hidden, response)
    }
}

impl Exchange {
    pub(crate) fn plain(reply: Reply) -> Exchange {
        Exchange {
            reply,
            list_filter: None,
        }
    }

    /// A message the gateway answers itself, with the era's HTTP status.
    pub fn answer(message: Message, era: Era) -> Exchange {
        let status = match era {
            Era::Stateless => stateless_status(&message),
            Era::Handshake => 200,
        };
        Exchange::plain(Reply {
            status,
            headers: HeaderMap::new(),
            body: ReplyBody::Json(message),
        })
    }
}

/// The HTTP status a 2026-07-28 server gives a JSON-RPC answer.
pub fn stateless_status(message: &Message) -> u16 {
    match jsonrpc::error_code(message) {
        Some(code::METHOD_NOT_FOUND) => 404,
        Some(code::INVALID_PARAMS | code::INVALID_REQUEST | code::PARSE_ERROR) => 400,
        Some(-32022..=-32020) => 400,
        _ => 200,
    }
}

/// An upstream's answer to a call for a tool it does not have, with the
/// probe's tool name left as a placeholder.
#[derive(Clone)]
struct UnknownToolAnswer {
    status: u16,
    /// The upstream's headers on that answer (as returned to agents), so a
    /// hidden tool's answer does not stand out by lacking them.
    headers: HeaderMap,
    /// Whether the upstream answered as an event stream (replayed the same way).
    streamed: bool,
    text: String,
}

const PROBE_TOOL: &str = "airlock-unknown-tool-probe-3f9c";

/// What a gateway is made of, assembled by `app` at start-up.
pub struct Parts {
    pub config: Config,
    pub upstreams: IndexMap<String, Arc<UpstreamRuntime>>,
    pub audit: Audit,
    pub approvals: crate::approvals::Approvals,
    pub budgets: Option<crate::budgets::SharedBudgets>,
    pub slack: Option<Arc<crate::slack::Slack>>,
    pub events: Arc<Events>,
    pub shutdown: CancellationToken,
    pub pins: crate::pins::Pins,
    pub tasks: crate::tasks::Tasks,
    /// Grants, votes and escalations: in memory, or shared through
    /// PostgreSQL (`[store] url`, see `power_store`).
    pub grants: crate::grants::Grants,
    pub votes: crate::quorum::Votes,
    pub power_store: Option<Arc<crate::power_store::SharedPower>>,
}

impl Gateway {
    pub fn new(parts: Parts) -> Gateway {
        let Parts {
            config,
            upstreams,
            audit,
            approvals,
            budgets,
            slack,
            events,
            shutdown,
            pins,
            tasks,
            grants,
            votes,
            power_store,
        } = parts;
        Gateway(Arc::new(Inner {
            config,
            upstreams,
            sessions: DashMap::new(),
            holds: Holds::default(),
            approvals,
            budgets,
            tasks,
            retries: Default::default(),
            audit,
            events,
            metrics: Metrics::default(),
            slack,
            logins: Default::default(),
            sso: Default::default(),
            catalog: Default::default(),
            pins,
            grants,
            votes,
            power_store,
            in_flight: AtomicUsize::new(0),
            shutdown,
            unknown_tool: DashMap::new(),
            started: Instant::now(),
        }))
    }

    /// A fresh `Mcp-Session-Id`: 32 hex digits; with a shared store
    /// (`[store] url`), prefixed by this replica's id and a dot, so a load
    /// balancer can send the session's later requests to the replica that
    /// holds it (docs/deploy.md).
    fn new_session_id(&self) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if self.config.store.url.is_some() {
            format!("{}.{id}", self.approvals.replica())
        } else {
            id
        }
    }

    /// Registers a new handshake-era session with its own upstream connection.
    pub fn open_session(
        &self,
        upstream: &Arc<UpstreamRuntime>,
        agent: String,
        owner: Option<String>,
    ) -> Result<Arc<Session>, UpstreamError> {
        let link = upstream.session_link()?;
        let session = Arc::new(Session {
            id: self.new_session_id(),
            upstream: upstream.clone(),
            link,
            agent,
            owner,
            last_seen: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            protocol_version: std::sync::OnceLock::new(),
            negotiated: std::sync::OnceLock::new(),
        });
        session.touch(self);
        self.sessions.insert(session.id.clone(), session.clone());
        self.events.publish(
            "agents",
            serde_json::json!({ "agents_connected": self.agents_connected() }),
        );
        Ok(session)
    }

    /// Ends a session: forgets it, cancels its holds, ends its upstream connection.
    pub async fn close_session(&self, id: &str) -> bool {
        let Some((_, session)) = self.sessions.remove(id) else {
            return false;
        };
        crate::hold::agent_gone(self, id).await;
        session.link.close().await;
        self.events.publish(
            "agents",
            serde_json::json!({ "agents_connected": self.agents_connected() }),
        );
        true
    }

    /// Agents with an open session (handshake era) — shown on the dashboard.
    /// Upstreams whose policy file is not the policy in force, and why
    /// (`refused` or `unreadable`); empty when all are in force.
    pub fn policy_problems(&self) -> serde_json::Map<String, serde_json::Value> {
        self.upstreams
            .values()
            .filter_map(|up| {
                let problem = up.policy_status.problem()?;
                Some((up.name.clone(), problem.name().into()))
            })
            .collect()
    }

    pub fn agents_connected(&self) -> usize {
        self.sessions.len()
    }

    /// Tells Slack (when configured) that an approval counted toward a rule
    /// that needs several approvers.
    pub fn notify_vote(&self, item: &crate::hold::PendingItem, approvals: &[String], needed: u32) {
        if let Some(slack) = &self.slack {
            slack.vote(self, item, approvals, needed);
        }
    }

    /// Tells Slack that nobody decided in time and `group` is called in.
    pub fn notify_escalated(&self, item: &crate::hold::PendingItem, group: &str, after_s: u64) {
        if let Some(slack) = &self.slack {
            slack.escalated(self, item, group, after_s);
        }
    }

    /// Tells Slack that a tool's definition changed since it was pinned.
    pub fn notify_tool_changed(
        &self,
        change: &crate::pins::Change,
        mode: crate::policy::OnToolChange,
    ) {
        if let Some(slack) = &self.slack {
            slack.tool_changed(self, change, mode);
        }
    }

    /// Records a policy outcome off the hot path (the writer batches it).
    pub(crate) async fn record_outcome(
        &self,
        ctx: &CallContext,
        decision: &'static str,
        tool: &str,
        arguments: Option<&str>,
        rule: &str,
        reason: Option<&str>,
    ) {
        self.metrics.count(decision);
        log_outcome(ctx, decision, tool, rule, reason);
        if decision == "allowed" && !self.config.audit.record_allowed {
            return;
        }
        self.audit
            .record(Record {
                decision,
                session: Some(ctx.session_key.clone()),
                agent: Some(ctx.agent.clone()),
                upstream: Some(ctx.upstream.name.clone()),
                tool: Some(tool.to_owned()),
                arguments: arguments.map(str::to_owned),
                rule: Some(rule.to_owned()),
                reason: reason.map(str::to_owned),
                ..Default::default()
            })
            .await;
    }

    /// Closes sessions idle longer than the configured timeout; runs until shutdown.
    pub async fn reap_idle_sessions(self) {
        let timeout = self.config.session_idle_timeout;
        let mut tick = tokio::time::interval(
            timeout
                .min(Duration::from_secs(30))
                .max(Duration::from_millis(100)),
        );
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let idle: Vec<String> = self
                .sessions
                .iter()
                .filter(|s| {
                    s.in_flight.load(Ordering::Relaxed) == 0 && s.idle_for(&self) >= timeout
                })
                .map(|s| s.id.clone())
                .collect();
            for id in idle {
                tracing::info!(session = %id, "closing idle session");
                self.close_session(&id).await;
            }
            for upstream in self.upstreams.values() {
                upstream.policy().forget_idle();
            }
            self.holds.prune();
            self.tasks.prune().await;
            self.retries.prune();
        }
    }

    /// Sends a request upstream, bounded by `upstream_timeout` (time to the
    /// first answer) when one is configured. `initialize` and `server/discover`
    /// are exempt: they include the server's start-up.
    pub async fn upstream_request(
        &self,
        link: &Link,
        message: Message,
        headers: Option<&HeaderMap>,
    ) -> Result<Reply, UpstreamError> {
        let starting = matches!(message.method(), Some("initialize" | "server/discover"));
        match self.config.upstream_timeout.filter(|_| !starting) {
            None => link.request(message, headers).await,
            Some(limit) => tokio::time::timeout(limit, link.request(message, headers))
                .await
                .map_err(|_| UpstreamError::Timeout {
                    seconds: limit.as_secs(),
                })?,
        }
    }

    /// Forwards one request after the policy has had its say.
    pub async fn forward(
        &self,
        ctx: &CallContext,
        message: Message,
        headers: Option<&HeaderMap>,
    ) -> Result<Exchange, UpstreamError> {
        match message.method() {
            Some("tools/call") => self.forward_call(ctx, message, headers).await,
            Some("tasks/get" | "tasks/cancel" | "tasks/update") => {
                match Box::pin(crate::tasks::answer(self, ctx, &message)).await {
                    Some(answer) => Ok(answer),
                    None => Ok(Exchange::plain(
                        self.upstream_request(&ctx.link, message, headers).await?,
                    )),
                }
            }
            Some("subscriptions/listen") => {
                let subscription = message.id().cloned().unwrap_or_else(Id::null);
                let mut reply = self.upstream_request(&ctx.link, message, headers).await?;
                // What the agent may list depends on the policy too: once the
                // upstream has agreed to send tool-list changes on this stream,
                // a policy reload is announced on it as well.
                if let ReplyBody::Stream(events) = reply.body {
                    reply.body = ReplyBody::Stream(events.with_notices(
                        ctx.upstream.policy_reloads(),
                        move || gate::list_changed_for(&subscription),
                        Some(gate::acknowledges_tool_list_changes),
                    ));
                }
                Ok(Exchange::plain(reply))
            }
            Some("tools/list") => {
                let policy = ctx.upstream.policy();
                let id = message.id().cloned().unwrap_or_else(Id::null);
                let reply = self.upstream_request(&ctx.link, message, headers).await?;
                if reply.status < 400 && matches!(reply.body, ReplyBody::Other { .. }) {
                    // A list Airlock cannot read cannot be filtered: never pass it on as is.
                    let error = jsonrpc::error_response(
                        &id,
                        code::UPSTREAM_ERROR,
                        "upstream answered tools/list with a body that is not a JSON-RPC message Airlock can read",
                    );
                    return Ok(Exchange::answer(error, ctx.era));
                }
                Ok(Exchange {
                    reply,
                    list_filter: Some(ListFilter {
                        policy,
                        gw: self.clone(),
                        upstream: ctx.upstream.clone(),
                    }),
                })
            }
            _ => Ok(Exchange::plain(
                self.upstream_request(&ctx.link, message, headers).await?,
            )),
        }
    }

    /// Spends an admitted call's `rate_limit` in the shared store (one
    /// statement; only rules with a rate limit pay it), then its window
    /// limits. A store that cannot answer refuses the call.
    async fn spend_shared(
        &self,
        ctx: &CallContext,
        tool: &str,
        admitted: gate::Admitted<'_>,
    ) -> CallDecision {
        let (agent, session) = (ctx.agent.as_str(), ctx.session_key.as_str());
        let (Some((rule, limit)), Some(budgets)) = (admitted.rate, &self.budgets) else {
            let rate = admitted.rate.map_or(Ok(()), |(_, l)| l.check(session));
            return admitted.spend(tool, agent, session, rate);
        };
        let budget = crate::budgets::Budget {
            upstream: &ctx.upstream.name,
            rule,
            subject: session,
        };
        match budgets.take(&budget, limit.max, limit.window).await {
            Ok(rate) => admitted.spend(tool, agent, session, rate),
            Err(e) => {
                tracing::warn!(
                    tool,
                    rule,
                    "call refused: rate-limit budget store unavailable: {e}"
                );
                gate::budget_unavailable(tool, admitted.rule().to_owned())
            }
        }
    }

    async fn forward_call(
        &self,
        ctx: &CallContext,
        message: Message,
        headers: Option<&HeaderMap>,
    ) -> Result<Exchange, UpstreamError> {
        let id = message.id().cloned().unwrap_or_else(Id::null);
        // What the edge's one parse recorded: the tool, its raw arguments
        // (already checked for repeated keys at any depth), the requestState.
        let peek = match era::call_peek(&message) {
            Ok(Some(peek)) => peek,
            outcome => {
                // Never forward a call the policy could not read.
                let why = match outcome {
                    Err(e) => format!("Invalid params: tools/call params cannot be read ({e})"),
                    Ok(_) => {
                        "Invalid params: tools/call needs params with a tool `name`".to_owned()
                    }
                };
                let error = jsonrpc::error_response(&id, code::INVALID_PARAMS, &why);
                return Ok(Exchange::answer(error, ctx.era));
            }
        };
        if let Some(Err(got)) = peek.arguments.map(era::check_arguments_shape) {
            let why =
                format!("Invalid params: tools/call arguments must be a JSON object, got {got}");
            let error = jsonrpc::error_response(&id, code::INVALID_PARAMS, &why);
            return Ok(Exchange::answer(error, ctx.era));
        }
        let tool = peek.name.as_ref();
        let arguments = peek.arguments.map(|a| a.get());
        // The retry of a held call whose user Airlock asked (stateless era):
        // the hold, not the policy, decides it (as for any held call).
        if let Some(state) = peek
            .request_state
            .as_deref()
            .filter(|s| crate::hold::elicit::Elicitations::is_ours(s))
        {
            let (state, tool) = (state.to_owned(), tool.to_owned());
            let arguments = arguments.map(str::to_owned);
            drop(peek);
            // Boxed, like every path that is not an allowed call: the call's
            // future is moved by value a few times per request, and an inline
            // hold or retry state would make it kilobytes larger for all calls.
            return Box::pin(crate::hold::elicit_retry(
                self, ctx, message, headers, &state, &tool, arguments,
            ))
            .await;
        }
        let policy = ctx.upstream.policy();
        // The retry of an allowed call that asked the client for input (MRTR)
        // is the same call continuing: it does not spend rate-limit budget again.
        let retry = peek
            .request_state
            .as_deref()
            .is_some_and(|state| self.retries.take(state, &ctx.scope(), tool, arguments));
        let hints = if policy.annotations.is_empty() {
            None
        } else {
            ctx.upstream.hints.get(tool)
        };
        // Stateless-era agents of replicas spend their `rate_limit` budget in
        // the shared store: that one call awaits PostgreSQL (docs/deploy.md).
        let shared = self.budgets.is_some() && ctx.era == Era::Stateless && !retry;
        let judged = {
            let facts = crate::policy::Facts::new(
                tool,
                arguments,
                &ctx.agent,
                &ctx.upstream.name,
                &ctx.session_key,
            )
            .with_hints(hints);
            if shared {
                gate::judge(&policy, &facts)
            } else if retry {
                Err(gate::decide_retry(&policy, &facts))
            } else {
                Err(gate::decide_call(&policy, &facts))
            }
        };
        let decision = match judged {
            Ok(admitted) => Box::pin(self.spend_shared(ctx, tool, admitted)).await,
            Err(decided) => decided,
        };
        let mut note = None;
        let decision = if self.pins.is_changed(&ctx.upstream.name, tool) {
            let mode = policy.on_tool_change(tool);
            note = Some(format!(
                "the tool's definition changed since it was pinned (on_tool_change: {})",
                mode.as_str()
            ));
            crate::power::changed_call(mode, tool, &decision).unwrap_or(decision)
        } else {
            decision
        };
        // A grant covers calls its rule would hold (never a changed definition).
        let decision = match decision {
            CallDecision::NeedsApproval { ref rule, .. } if rule != crate::power::RULE => {
                let call = crate::grants::Call {
                    upstream: &ctx.upstream.name,
                    tool,
                    rule,
                    agent: &ctx.agent,
                    session: &ctx.session_key,
                    arguments,
                };
                match self.grants.find(&call) {
                    Some(grant) => {
                        self.metrics.count("allowed");
                        log_outcome(ctx, "granted", tool, rule, Some(&grant.id));
                        self.audit
                            .record(Record {
                                decision: "granted",
                                session: Some(ctx.session_key.clone()),
                                agent: Some(ctx.agent.clone()),
                                upstream: Some(ctx.upstream.name.clone()),
                                tool: Some(tool.to_owned()),
                                arguments: arguments.map(str::to_owned),
                                rule: Some(rule.clone()),
                                reason: Some(format!(
                                    "covered by grant {} (approved by {}, until {})",
                                    grant.id,
                                    grant.granted_by,
                                    grant
                                        .expires_at
                                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                                )),
                                decider: Some(grant.granted_by.clone()),
                                channel: Some("grant".into()),
                                pending_id: Some(grant.id.clone()),
                                ..Default::default()
                            })
                            .await;
                        drop(peek);
                        return Ok(Exchange::plain(
                            self.upstream_request(&ctx.link, message, headers).await?,
                        ));
                    }
                    None => decision,
                }
            }
            other => other,
        };
        match decision {
            CallDecision::Allow { rule } => {
                if self.config.audit.fail_closed && !self.audit.is_healthy() {
                    let refusal = gate::Refusal {
                        decision: "audit_unavailable",
                        text: format!(
                            "Airlock refused this call to `{tool}`: the audit store cannot be written and the gateway is configured to fail closed."
                        ),
                        reason: "audit store unavailable".into(),
                        rule,
                        retry_after: None,
                    };
                    log_outcome(
                        ctx,
                        refusal.decision,
                        tool,
                        &refusal.rule,
                        Some(&refusal.reason),
                    );
                    return Ok(Exchange::answer(
                        gate::refusal_response(&id, &refusal, ctx.era),
                        ctx.era,
                    ));
                }
                self.record_outcome(ctx, "allowed", tool, arguments, &rule, note.as_deref())
                    .await;
                let rate_limited = policy
                    .rate_limited(tool)
                    .then(|| (tool.to_owned(), crate::hold::hash_arguments(arguments)));
                drop(peek);
                let started = Instant::now();
                let mut reply = self.upstream_request(&ctx.link, message, headers).await?;
                self.metrics.upstream_latency.observe(started.elapsed());
                if let Some((tool, args_hash)) = rate_limited {
                    // An `input_required` answer (JSON or streamed): its retry
                    // with the same arguments is the same call, not another
                    // one against the limit.
                    let (gw, scope) = (self.clone(), ctx.scope());
                    reply.body = reply.body.tap(move |answer| {
                        if answer.kind() == jsonrpc::Kind::Response {
                            gw.retries.remember(answer, &scope, &tool, &args_hash);
                        }
                    });
                }
                Ok(Exchange::plain(reply))
            }
            // A tool no rule names under `default: deny` is not listed either;
            // answering it like a tool that does not exist keeps agents from
            // telling hidden tools apart from missing ones.
            CallDecision::DeniedByDefault(refusal) => {
                self.record_outcome(
                    ctx,
                    "denied",
                    tool,
                    arguments,
                    &refusal.rule,
                    Some(&refusal.reason),
                )
                .await;
                let tool = tool.to_owned();
                drop(peek);
                Ok(Box::pin(self.hidden_answer(ctx, &message, &tool, headers)).await)
            }
            CallDecision::Refuse(refusal) => {
                self.record_outcome(
                    ctx,
                    refusal.decision,
                    tool,
                    arguments,
                    &refusal.rule,
                    Some(&refusal.reason),
                )
                .await;
                Ok(Exchange::answer(
                    gate::refusal_response(&id, &refusal, ctx.era),
                    ctx.era,
                ))
            }
            CallDecision::Hidden => {
                self.record_outcome(ctx, "hidden", tool, arguments, "hide", note.as_deref())
                    .await;
                let tool = tool.to_owned();
                drop(peek);
                Ok(Box::pin(self.hidden_answer(ctx, &message, &tool, headers)).await)
            }
            CallDecision::NeedsApproval { rule, .. }
                if peek.request_state.as_deref().is_some_and(|state| {
                    self.holds
                        .continuation(state, &ctx.scope(), tool, arguments)
                }) =>
            {
                // The retry of an approved call that asked the client for input (MRTR).
                self.record_outcome(
                    ctx,
                    "allowed",
                    tool,
                    arguments,
                    &rule,
                    Some("input_required retry of an approved call"),
                )
                .await;
                let tool = tool.to_owned();
                let args_hash = crate::hold::hash_arguments(arguments);
                drop(peek);
                let mut reply = self.upstream_request(&ctx.link, message, headers).await?;
                // A further round of questions (JSON or streamed) stays covered by the approval.
                let (gw, scope) = (self.clone(), ctx.scope());
                reply.body = reply.body.tap(move |answer| {
                    if answer.kind() == jsonrpc::Kind::Response {
                        gw.holds
                            .remember_continuation(answer, &scope, &tool, &args_hash);
                    }
                });
                Ok(Exchange::plain(reply))
            }
            CallDecision::NeedsApproval {
                rule,
                reason,
                approval,
            } => {
                let tool = tool.to_owned();
                let arguments = arguments.map(str::to_owned);
                drop(peek);
                Box::pin(crate::hold::hold_call(
                    self, ctx, message, headers, tool, arguments, rule, reason, approval,
                ))
                .await
            }
        }
    }

    /// Answers a call to a hidden tool exactly as the upstream answers a call
    /// to a tool it does not have. The upstream's answer is learnt once per
    /// upstream and era by calling a tool name that cannot exist (with no
    /// arguments); the hidden tool's name and arguments never reach it.
    async fn hidden_answer(
        &self,
        ctx: &CallContext,
        message: &Message,
        tool: &str,
        headers: Option<&HeaderMap>,
    ) -> Exchange {
        let id = message.id().cloned().unwrap_or_else(Id::null);
        let key = (ctx.upstream.name.clone(), ctx.era == Era::Stateless);
        let known = self.unknown_tool.get(&key).map(|a| a.clone());
        let answer = match known {
            Some(answer) => Some(answer),
            None => {
                let learnt = probe_unknown_tool(ctx, message, headers).await;
                if let Some(a) = &learnt {
                    self.unknown_tool.insert(key, a.clone());
                }
                learnt
            }
        };
        let escaped = serde_json::to_string(tool).unwrap_or_default();
        let escaped = &escaped[1..escaped.len() - 1];
        match answer.and_then(|a| {
            let text = a.text.replace(PROBE_TOOL, escaped);
            Message::parse(bytes::Bytes::from(text))
                .ok()
                .map(|m| (a.status, a.headers, a.streamed, m))
        }) {
            Some((status, headers, streamed, m)) => Exchange::plain(Reply {
                status,
                headers,
                body: replayed_body(m.with_id(&id), streamed),
            }),
            None => Exchange::answer(
                jsonrpc::error_response(
                    &id,
                    code::INVALID_PARAMS,
                    &format!("Unknown tool: {tool}"),
                ),
                ctx.era,
            ),
        }
    }
}

/// Calls a tool name that cannot exist and keeps the upstream's answer.
async fn probe_unknown_tool(
    ctx: &CallContext,
    message: &Message,
    headers: Option<&HeaderMap>,
) -> Option<UnknownToolAnswer> {
    // Built from scratch: nothing of the agent's own call (arguments,
    // requestState, task, progress token) may shape the answer all agents get.
    let mut params = serde_json::json!({ "name": PROBE_TOOL, "arguments": {} });
    let meta = era::peek(message).meta.map(|m| {
        let mut meta = serde_json::Map::new();
        if let Some(v) = m.protocol_version {
            meta.insert(era::META_PROTOCOL_VERSION.into(), v.into());
        }
        if let Some(caps) = m
            .client_capabilities
            .and_then(|c| serde_json::from_str(c.get()).ok())
        {
            meta.insert("io.modelcontextprotocol/clientCapabilities".into(), caps);
        }
        meta
    });
    if let Some(meta) = meta.filter(|m| !m.is_empty()) {
        params["_meta"] = serde_json::Value::Object(meta);
    }
    let id = message
        .id()
        .map(|id| id.raw().to_owned())
        .unwrap_or_else(|| "0".into());
    let value = serde_json::json!({
        "jsonrpc": "2.0",
        "id": serde_json::from_str::<serde_json::Value>(&id).unwrap_or(serde_json::Value::Null),
        "method": "tools/call",
        "params": params,
    });
    let probe = Message::from_value(&value);
    let probe_headers = headers.map(|h| {
        let mut h = h.clone();
        h.insert(
            era::NAME_HEADER,
            axum::http::HeaderValue::from_static(PROBE_TOOL),
        );
        h
    });
    let reply = ctx.link.request(probe, probe_headers.as_ref()).await.ok()?;
    let streamed = matches!(reply.body, ReplyBody::Stream(_));
    let answer = match reply.body {
        ReplyBody::Json(m) => m,
        ReplyBody::Stream(mut rx) => loop {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .ok()??;
            if let Some(m) = event
                .message
                .filter(|m| m.kind() == jsonrpc::Kind::Response)
            {
                break m;
            }
        },
        _ => return None,
    };
    // Keep it only if it reads like "no such tool": a JSON-RPC error, or an
    // error result that names the probe.
    let looks_unknown = jsonrpc::error_code(&answer).is_some()
        || (answer.text().contains(PROBE_TOOL) && answer.text().contains("\"isError\":true"));
    looks_unknown.then(|| UnknownToolAnswer {
        status: reply.status,
        headers: reply.headers,
        streamed,
        text: answer.text().to_owned(),
    })
}

/// The replayed unknown-tool answer, framed as the upstream framed the probe's.
fn replayed_body(message: Message, streamed: bool) -> ReplyBody {
    if !streamed {
        return ReplyBody::Json(message);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(crate::upstream::Event::new(message));
    ReplyBody::Stream(crate::upstream::Events::Queue(rx))
}

/// One log line per policy outcome of a `tools/call` (never its arguments:
/// those belong to the audit store, redacted). Allowed calls are the hot
/// path and log at debug; every refusal at info. See docs/operations.md.
pub(crate) fn log_outcome(
    ctx: &CallContext,
    outcome: &str,
    tool: &str,
    rule: &str,
    reason: Option<&str>,
) {
    if outcome == "allowed" {
        tracing::debug!(
            %tool,
            upstream = %ctx.upstream.name,
            agent = %ctx.agent,
            %outcome,
            %rule,
            "tools/call decided"
        );
    } else {
        tracing::info!(
            %tool,
            upstream = %ctx.upstream.name,
            agent = %ctx.agent,
            %outcome,
            %rule,
            reason,
            "tools/call decided"
        );
    }
}

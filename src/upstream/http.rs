//! A Streamable HTTP upstream, reached with reqwest, and a plain-HTTP one's
//! POSTs (every forwarded call) with hyper's pooled client directly (see
//! [`Direct`]).
//!
//! One [`HttpSession`] per handshake-era agent session (it carries the
//! upstream's `Mcp-Session-Id`); stateless-era requests use a session that
//! never gets an id. Agent headers pass through except hop-by-hop ones and
//! the ones the gateway owns (see [`forwardable`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Event, Reply, ReplyBody, UpstreamError, UpstreamSpec};
use crate::era;
use crate::jsonrpc::{self, Message, code};

const SESSION_HEADER: &str = "mcp-session-id";

/// The shared client and fixed settings of one HTTP upstream.
pub struct HttpUpstream {
    client: reqwest::Client,
    url: String,
    /// `url`, parsed once (not on every request).
    target: reqwest::Url,
    /// Plain-HTTP upstreams (no proxy in the environment) get their POSTs,
    /// the hot path, through hyper's pooled client directly: reqwest parses
    /// the URL again twice per request (its redirect layer, its response)
    /// and clones its connector stack: about a sixth of an allowed call's
    /// CPU (docs/benchmarks.md, "CPU per allowed call").
    direct: Option<Direct>,
    /// Configured headers (e.g. `Authorization` from an env var); override agent headers.
    headers: HeaderMap,
    /// TCP connections opened to the upstream (counted by [`CountConnects`]):
    /// a warmed-up sequential client should add none (the pool reuses them).
    connections_opened: Arc<AtomicU64>,
}

/// How long an unused pooled connection to the upstream stays open.
const POOL_IDLE: Duration = Duration::from_secs(15);

impl HttpUpstream {
    pub fn new(spec: &UpstreamSpec) -> Result<Arc<HttpUpstream>, UpstreamError> {
        let UpstreamSpec::Http { url, headers } = spec else {
            unreachable!("HttpUpstream::new is only called for HTTP upstreams");
        };
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let bad = |what: &str| UpstreamError::Spawn {
                command: url.clone(),
                reason: format!("configured header `{name}` has an invalid {what}"),
            };
            let name = HeaderName::try_from(name.as_str()).map_err(|_| bad("name"))?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|_| bad("value"))?;
            map.insert(name, value);
        }
        let connections_opened = Arc::new(AtomicU64::new(0));
        let mut client = reqwest::Client::builder();
        if !proxy_in_env() {
            // reqwest would match every request against an empty proxy list.
            client = client.no_proxy();
        }
        let client = client
            .connector_layer(CountConnectsLayer(connections_opened.clone()))
            .connect_timeout(Duration::from_secs(10))
            // A redirect would send the configured headers (credentials) to
            // wherever the upstream points; the agent sees the 3xx instead.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            // Warm connections for bursts; closed after 15 s unused (a load
            // spike's connections do not stay open for minutes).
            .pool_idle_timeout(POOL_IDLE)
            // reqwest's default, said out loud: a streamed request's last small
            // write must not wait for the upstream's delayed ACK.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| UpstreamError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let target = reqwest::Url::parse(url).map_err(|e| UpstreamError::Unreachable {
            url: url.clone(),
            reason: format!("not a valid URL: {e}"),
        })?;
        let direct = Direct::new(&target, &connections_opened);
        Ok(Arc::new(HttpUpstream {
            client,
            url: url.clone(),
            target,
            direct,
            headers: map,
            connections_opened,
        }))
    }

    /// Connections opened to the upstream so far (`/metrics`).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// A new session with no upstream session id yet.
    pub fn session(self: &Arc<Self>) -> Arc<HttpSession> {
        Arc::new(HttpSession {
            upstream: self.clone(),
            session_id: Mutex::new(None),
            protocol_version: Mutex::new(None),
        })
    }
}

/// One agent session's view of the upstream.
pub struct HttpSession {
    upstream: Arc<HttpUpstream>,
    /// The upstream's `Mcp-Session-Id`, learnt from the `initialize` response;
    /// kept as a header value so each call clones a shared buffer, no copy.
    session_id: Mutex<Option<HeaderValue>>,
    /// The negotiated version, for agents that send no headers (stdio agents).
    protocol_version: Mutex<Option<HeaderValue>>,
}

impl HttpSession {
    fn headers_for(&self, message: Option<&Message>, agent: Option<&HeaderMap>) -> HeaderMap {
        // Room for all of them at once (and the two `post` adds): no regrowth.
        let mut out = HeaderMap::with_capacity(
            agent.map_or(4, HeaderMap::len) + self.upstream.headers.len() + 3,
        );
        match agent {
            Some(agent) => {
                for (name, value) in agent {
                    if forwardable(name) {
                        out.append(name.clone(), value.clone());
                    }
                }
            }
            None => {
                if let Some(message) = message {
                    era::derive_headers(message, &mut out);
                }
                if !out.contains_key(era::PROTOCOL_VERSION_HEADER)
                    && let Some(v) = self.protocol_version.lock().expect("lock").clone()
                {
                    out.insert(era::PROTOCOL_VERSION_HEADER, v);
                }
            }
        }
        if let Some(id) = self.session_id.lock().expect("lock").clone() {
            out.insert(SESSION_HEADER, id);
        }
        for (name, value) in &self.upstream.headers {
            out.insert(name.clone(), value.clone());
        }
        out
    }

    /// Keeps the upstream's session id from its answer to `initialize`.
    fn learn_session<B>(&self, message: &Message, response: &axum::http::Response<B>) {
        if message.method() == Some("initialize")
            && let Some(id) = response.headers().get(SESSION_HEADER)
            // Visible ASCII only, as the spec requires of a session id.
            && id.to_str().is_ok()
        {
            *self.session_id.lock().expect("lock") = Some(id.clone());
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> UpstreamError {
        self.unreachable_because(&e.without_url())
    }

    fn unreachable_because(&self, e: &dyn std::error::Error) -> UpstreamError {
        // The client's own message is generic ("error sending request",
        // "client error (Connect)"); the cause (connection refused, …) is
        // further down the chain.
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        UpstreamError::Unreachable {
            url: self.upstream.url.clone(),
            reason,
        }
    }

    /// POSTs one message and turns the answer into a [`Reply`].
    pub async fn post(
        &self,
        message: &Message,
        agent: Option<&HeaderMap>,
    ) -> Result<Reply, UpstreamError> {
        let mut headers = self.headers_for(Some(message), agent);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static(
                "application/json, text/event-stream",
            ));
        let reply = match &self.upstream.direct {
            Some(direct) => {
                let response = direct
                    .post(headers, message.raw().clone())
                    .await
                    .map_err(|e| self.unreachable_because(&e))?;
                self.learn_session(message, &response);
                self.read_reply(response, Some(message)).await?
            }
            None => {
                // A request built whole, not through `RequestBuilder::headers`,
                // which would re-insert every header into a second map.
                let mut request =
                    reqwest::Request::new(reqwest::Method::POST, self.upstream.target.clone());
                *request.headers_mut() = headers;
                *request.body_mut() = Some(message.raw().clone().into());
                let response = self
                    .upstream
                    .client
                    .execute(request)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let response = axum::http::Response::from(response);
                self.learn_session(message, &response);
                self.read_reply(response, Some(message)).await?
            }
        };
        if message.method() == Some("initialize")
            && let ReplyBody::Json(answer) = &reply.body
        {
            self.remember_version(answer);
        }
        Ok(reply)
    }

    fn remember_version(&self, answer: &Message) {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        if let Some(v) = answer.result::<R>().and_then(|r| r.protocol_version)
            && let Ok(v) = HeaderValue::try_from(v)
        {
            *self.protocol_version.lock().expect("lock") = Some(v);
        }
    }

    /// Opens the upstream's GET stream (handshake era).
    pub async fn listen(&self, agent: Option<&HeaderMap>) -> Result<Reply, UpstreamError> {
        let mut headers = self.headers_for(None, agent);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(last) = agent.and_then(|h| h.get("last-event-id")) {
            headers.insert("last-event-id", last.clone());
        }
        let response = self
            .upstream
            .client
            .get(self.upstream.target.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_reply(response.into(), None).await
    }

    /// Ends the upstream session (DELETE), if it has one.
    pub async fn close(&self) {
        let Some(id) = self.session_id.lock().expect("lock").take() else {
            return;
        };
        let mut headers = self.upstream.headers.clone();
        headers.insert(SESSION_HEADER, id);
        let _ = self
            .upstream
            .client
            .delete(self.upstream.target.clone())
            .headers(headers)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }

    async fn read_reply<B: Answer>(
        &self,
        response: axum::http::Response<B>,
        request: Option<&Message>,
    ) -> Result<Reply, UpstreamError> {
        let status = response.status().as_u16();
        let mut headers = HeaderMap::new();
        // Headers the upstream names in `Connection` are hop-by-hop too.
        let hop_by_hop: Vec<String> = response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in response.headers() {
            if returnable(name) && !hop_by_hop.iter().any(|h| h == name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        // Kept as the header (a shared buffer), lower-cased into a string
        // only when passed on as is (`Other`): no copy per JSON answer.
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let content_type = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let is = |prefix: &str| {
            content_type
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        };
        let body = if is("text/event-stream") {
            ReplyBody::Stream(self.pump_events(response, request).into())
        } else {
            let json = is("application/json");
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|e| self.unreachable_because(&e))?
                .to_bytes();
            let other = |bytes| ReplyBody::Other {
                content_type: content_type.to_ascii_lowercase(),
                bytes,
            };
            if bytes.is_empty() {
                ReplyBody::Empty
            } else if json {
                match Message::parse(bytes.clone()) {
                    Ok(message) => ReplyBody::Json(message),
                    Err(_) => other(bytes),
                }
            } else {
                other(bytes)
            }
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Parses an SSE body into events. Event ids, `retry` and priming events
    /// (an id with empty data) pass through, so the agent can resume with
    /// `Last-Event-ID`. If a request's stream ends without its response, the
    /// agent gets an error response instead of silence — unless the upstream
    /// gave an event id: then the stream was closed for polling (or broke)
    /// and the agent resumes it with a `GET` (2025-11-25 transports,
    /// "Resumability and Redelivery").
    fn pump_events<B: Answer>(
        &self,
        response: axum::http::Response<B>,
        request: Option<&Message>,
    ) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(64);
        let request_id = request
            .filter(|m| m.is_request())
            .and_then(|m| m.id().cloned());
        let url = self.upstream.url.clone();
        tokio::spawn(async move {
            // Bytes the stream may still deliver; lowered to the drain budget
            // once the answer is out (see `drain`).
            let budget = Arc::new(AtomicI64::new(i64::MAX));
            let left = budget.clone();
            let mut events = http_body_util::BodyDataStream::new(response.into_body())
                .take_while(move |chunk| {
                    let n = chunk.as_ref().map_or(0, |b| b.len() as i64);
                    futures::future::ready(left.fetch_sub(n, Ordering::Relaxed) >= n)
                })
                .eventsource();
            let mut answered = false;
            let mut resumable = false;
            let mut failure = None;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                let id = (!event.id.is_empty()).then_some(event.id);
                let retry = event.retry.map(|r| r.as_millis() as u64);
                resumable |= id.is_some();
                let message = if event.data.trim().is_empty() {
                    if id.is_none() && retry.is_none() {
                        continue; // keep-alive: nothing to relay
                    }
                    None // priming event
                } else {
                    match Message::parse(Bytes::from(event.data)) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(%url, "upstream sent an SSE event that is not JSON-RPC: {e}");
                            continue;
                        }
                    }
                };
                let is_answer = request_id.is_some()
                    && message.as_ref().is_some_and(|m| {
                        m.kind() == jsonrpc::Kind::Response && m.id() == request_id.as_ref()
                    });
                if tx.send(Event { id, retry, message }).await.is_err() {
                    return; // agent gone; dropping the body closes the upstream stream
                }
                if is_answer {
                    answered = true;
                    break;
                }
            }
            if answered {
                // The agent has its answer. Upstreams end the stream right
                // after it: wait briefly for that end with the agent's stream
                // still open (as it would be, direct), so the connection is
                // back in the pool before the agent's next call; past the
                // grace, the agent's stream ends and the rest is drained here.
                budget.store(DRAIN_BYTES, Ordering::Relaxed);
                if tokio::time::timeout(END_GRACE, drain(&mut events))
                    .await
                    .is_err()
                {
                    drop(tx);
                    let _ = tokio::time::timeout(DRAIN_TIME, drain(&mut events)).await;
                }
                return;
            }
            if let (Some(id), false, false) = (request_id, answered, resumable) {
                let reason = match failure {
                    Some(e) => format!("upstream stream broke before the answer: {e}"),
                    None => "upstream closed the stream before answering".to_owned(),
                };
                let _ = tx
                    .send(Event::new(jsonrpc::error_response(
                        &id,
                        code::UPSTREAM_ERROR,
                        &reason,
                    )))
                    .await;
            }
        });
        rx
    }
}

/// Reads what is left of an answered event stream to its end, so the
/// connection goes back to the pool: hyper closes a connection whose response
/// body is dropped before its end, and the next call pays a new connect (and
/// the upstream's per-connection setup). Bounded by [`DRAIN_BYTES`] (the byte
/// gate in `pump_events` ends the stream beyond it) and by the caller's
/// timeouts; past either, the connection is dropped. Events after the answer
/// are dropped, as the agent's stream is done.
async fn drain<S: futures::Stream + Unpin>(events: &mut S) {
    while events.next().await.is_some() {}
}

/// How long the agent's stream stays open after its answer, waiting for the
/// upstream's stream to end (it usually ends within microseconds).
const END_GRACE: Duration = Duration::from_millis(20);
/// How long an answered event stream may then take to end for its connection
/// to be kept.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// The most an answered event stream may still send for its connection to
/// be kept.
const DRAIN_BYTES: i64 = 64 * 1024;

/// An upstream answer's body as either client gives it (reqwest's, or
/// hyper's on the direct path).
trait Answer:
    hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
    + Send
    + Unpin
    + 'static
{
}

impl<B> Answer for B where
    B: hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
        + Send
        + Unpin
        + 'static
{
}

/// hyper's pooled HTTP/1.1 client, for POSTs to a plain-HTTP upstream, with
/// the settings the reqwest client has (connect timeout, `TCP_NODELAY`,
/// pool size and idle timeout, no redirects, connections counted).
struct Direct {
    client: hyper_util::client::legacy::Client<
        CountConnects<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
    /// The upstream's URL as the request target, made once.
    uri: axum::http::Uri,
}

impl Direct {
    /// `None` for HTTPS upstreams or when a proxy is configured in the
    /// environment: those stay with reqwest (TLS, proxies).
    fn new(target: &reqwest::Url, opened: &Arc<AtomicU64>) -> Option<Direct> {
        if target.scheme() != "http" || proxy_in_env() {
            return None;
        }
        let uri = axum::http::Uri::try_from(target.as_str()).ok()?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(CountConnects {
                    inner: connector,
                    opened: opened.clone(),
                });
        Some(Direct { client, uri })
    }

    async fn post(
        &self,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>
    {
        let mut request = axum::http::Request::new(http_body_util::Full::new(body));
        *request.method_mut() = axum::http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        self.client.request(request).await
    }
}

/// Whether the environment names a proxy: reqwest reads these variables
/// (set at all, even empty) once, when a client is built, and then checks
/// every request against them; without any, that check is skipped.
fn proxy_in_env() -> bool {
    [
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some())
}

/// A connector layer that counts the connections reqwest opens (reqwest has
/// no other hook for it). Generic over the request and response types, which
/// reqwest keeps unnameable.
#[derive(Clone)]
struct CountConnects<S> {
    inner: S,
    opened: Arc<AtomicU64>,
}

/// Wraps reqwest's connector in [`CountConnects`].
#[derive(Clone)]
struct CountConnectsLayer(Arc<AtomicU64>);

impl<S> tower_layer::Layer<S> for CountConnectsLayer {
    type Service = CountConnects<S>;
    fn layer(&self, inner: S) -> CountConnects<S> {
        CountConnects {
            inner,
            opened: self.0.clone(),
        }
    }
}

impl<S, R> tower_service::Service<R> for CountConnects<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: R) -> Self::Future {
        let connecting = self.inner.call(dst);
        let opened = self.opened.clone();
        Box::pin(async move {
            let conn = connecting.await?;
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(conn)
        })
    }
}

/// Headers that belong to one connection, or frame one body, never to the
/// message: neither direction passes them on.
fn connection_specific(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "content-type"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | SESSION_HEADER
    )
}

/// Upstream response headers that go back to the agent: all but the
/// connection-specific ones (the session id: the gateway issues its own),
/// `Content-Encoding` and `Date` (Airlock frames and dates what it sends),
/// and what would act on the gateway's own origin, which the dashboard
/// shares: cookies, CORS, `Clear-Site-Data`, HSTS, `Alt-Svc`.
fn returnable(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(connection_specific(name)
        || name.starts_with("access-control-")
        || matches!(
            name,
            "content-encoding"
                | "proxy-authenticate"
                | "date"
                | "set-cookie"
                | "clear-site-data"
                | "strict-transport-security"
                | "alt-svc"
        ))
}

/// Agent headers that are forwarded upstream: all but the connection-specific
/// ones (the session id: the gateway maps it), cookies and origin (the
/// gateway checked them) and the like; unknown `Mcp-Param-*` headers pass.
pub(crate) fn forwardable(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(connection_specific(name)
        || matches!(
            name,
            "host"
                | "proxy-authorization"
                | "accept-encoding"
                | "origin"
                | "cookie"
                | "referer"
                | "last-event-id"
        ))
}

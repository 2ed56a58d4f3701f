//! Configuration: `airlock.toml` (serde `RawConfig` → validated [`Config`]),
//! or the quick mode built from command-line flags.
//!
//! Secrets never live in the TOML: tokens and header values come from
//! environment variables (`*_env`) or files (`*_file`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::upstream::UpstreamSpec;

mod oidc;
pub use oidc::OidcConfig;

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base of links in notifications; defaults to `http://{listen}`.
    pub public_url: String,
    /// Whether `public_url` was written in the config file (else it follows
    /// the address Airlock actually listens on).
    pub public_url_set: bool,
    pub max_body_bytes: usize,
    pub session_idle_timeout: Duration,
    /// Per-call limit on how long the upstream may take to answer (None: no limit).
    pub upstream_timeout: Option<Duration>,
    /// Most handshake-era sessions open at once (each may own a child process).
    pub max_sessions: usize,
    /// Extra `Origin` values accepted besides loopback ones and `public_url`'s.
    pub allowed_origins: Vec<String>,
    /// Extra `Host` values accepted besides loopback names and `public_url`'s host.
    pub allowed_hosts: Vec<String>,
    pub upstreams: Vec<UpstreamConfig>,
    pub approvers: Vec<Credential>,
    pub agents: Vec<Credential>,
    pub audit: AuditConfig,
    pub approval: ApprovalConfig,
    /// `[slack]`: announce held calls in Slack (see docs/slack.md).
    pub slack: Option<SlackConfig>,
    /// `[server]`: limits on the HTTP listener's connections.
    pub server: ServerConfig,
    /// `[store]`: where pending approvals live (see docs/deploy.md).
    pub store: StoreConfig,
    /// `[oidc]`: approvers sign in with an OpenID Connect provider (see [`crate::oidc`]).
    pub oidc: Option<OidcConfig>,
    /// Quick mode (`serve --policy … -- cmd`): one upstream served at `/mcp`.
    pub quick: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub spec: UpstreamSpec,
    /// None: allow everything (and say so at start-up).
    pub policy: Option<PathBuf>,
}

/// A named secret token (approver or agent).
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    pub token: String,
    /// What an approver may do (`role` on `[[approver]]`); agents have no
    /// approval rights whatever this says, and keep the default.
    pub role: Role,
    /// Approver groups (`groups` on `[[approver]]`): a policy rule may let
    /// only some groups decide its calls (`approval.groups`).
    pub groups: Vec<String>,
}

/// An approver's role, from least to most: a viewer sees pending calls,
/// history and tools; an approver also decides held calls; an admin also
/// edits policies from the dashboard. The default is `approver`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    #[default]
    Approver,
    Admin,
}

impl Config {
    /// The groups of the approver named `name` (none when not configured).
    pub fn approver_groups(&self, name: &str) -> &[String] {
        self.approvers
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.groups.as_slice())
            .unwrap_or_default()
    }

    /// The approvers in `group`.
    pub fn group_members(&self, group: &str) -> Vec<&Credential> {
        self.approvers
            .iter()
            .filter(|a| a.groups.iter().any(|g| g == group))
            .collect()
    }

    /// The role of the approver named `name` (None: not configured).
    pub fn approver_role(&self, name: &str) -> Option<Role> {
        self.approvers
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.role)
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, [secret])", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Argument keys stored as `"[redacted]"`: `redact` patterns, after the
    /// built-in ones unless `redact_defaults = false` (compiled once).
    pub redact: crate::audit::Redactor,
    /// Signed checkpoints of the chain's head (see docs/audit.md).
    pub checkpoints: CheckpointConfig,
    /// `on_error = "fail_closed"`: refuse allowed calls while the store cannot be written.
    pub fail_closed: bool,
    /// `record_allowed = false`: no row per allowed call (they are still counted in /metrics).
    pub record_allowed: bool,
}

/// `[audit]` keys about signed checkpoints.
#[derive(Clone)]
pub struct CheckpointConfig {
    /// `signing_key_file`: the Ed25519 seed; None: `AIRLOCK_AUDIT_SIGNING_KEY`,
    /// else `<audit>.key` (generated on first start).
    pub signing_key_file: Option<PathBuf>,
    /// `checkpoint_interval`: how often the head is signed when it moved.
    pub interval: Duration,
    /// The URL named by `checkpoint_webhook_url_env`: each checkpoint is POSTed there.
    pub webhook_url: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            signing_key_file: None,
            interval: Duration::from_secs(DEFAULT_CHECKPOINT_INTERVAL),
            webhook_url: None,
        }
    }
}

impl std::fmt::Debug for CheckpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointConfig")
            .field("signing_key_file", &self.signing_key_file)
            .field("interval", &self.interval)
            .field(
                "webhook_url",
                &self.webhook_url.as_ref().map(|_| "[secret]"),
            )
            .finish()
    }
}

/// Seconds between checkpoints unless `checkpoint_interval` says otherwise.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 60;

#[derive(Debug, Clone)]
pub struct ApprovalConfig {
    /// How often a held call with a progressToken gets `notifications/progress`.
    pub progress_interval: Duration,
    /// How long a held call whose resumable stream dropped waits for the
    /// agent to resume it (`Last-Event-ID`) before it is cancelled; zero
    /// cancels at once.
    pub resume_grace: Duration,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            progress_interval: Duration::from_secs(10),
            resume_grace: crate::hold::stream::GRACE,
        }
    }
}

/// `[server]`: what one connection to the HTTP listener may cost (see
/// [`crate::listener`] and docs/reliability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most connections open at once; beyond it new ones wait in the
    /// kernel's backlog until one closes. Each held call keeps one open.
    pub max_connections: usize,
    /// From a connection's accept, or the first byte of its next request,
    /// to the end of that request's headers.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request with
    /// none in flight. Never applies while a response is being answered or
    /// streamed (held calls, event streams, websockets).
    pub idle_timeout: Duration,
    /// From the end of a request's headers to the end of its body: a client
    /// trickling a body byte by byte would otherwise hold its connection
    /// (and its permit) for as long as it likes.
    pub body_timeout: Duration,
    /// Longest a write to a client may stay blocked with no byte taken: a
    /// client that stops reading a response is cut. Held calls and event
    /// streams leave no write pending while they wait, so they are not.
    pub write_timeout: Duration,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest any `[server]` timeout may be: a deadline is `Instant + timeout`,
/// and a huge timeout would overflow it.
pub const MAX_SERVER_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// `[slack]`, validated. Secrets come from environment variables and are
/// never printed (see the `Debug` impl).
#[derive(Clone)]
pub struct SlackConfig {
    /// Incoming-webhook URL (`webhook_url_env`).
    pub webhook_url: Option<String>,
    /// Slack-app signing secret (`signing_secret_env`); enables `POST /slack/interactions`.
    pub signing_secret: Option<String>,
    /// Bot token (`bot_token_env`): post with `chat.postMessage` to `channel`
    /// and edit with `chat.update` instead of using the webhook.
    pub bot_token: Option<String>,
    pub channel: Option<String>,
    /// Base of the Slack Web API (`api_url`, default `https://slack.com/api`).
    pub api_url: String,
    /// Key that signs decision links (`link_key_env`); None: one is generated
    /// once and kept in the audit store, so links survive restarts.
    pub link_key: Option<Vec<u8>>,
    /// Decision links need an approver login (and record that approver).
    pub link_requires_login: bool,
    /// How long an undelivered message is retried before it is given up.
    pub give_up_after: Duration,
    /// Slack user id → approver name, from `slack_user_id` on `[[approver]]`.
    pub users: Vec<(String, String)>,
}

impl SlackConfig {
    /// Every secret value, e.g. to keep them out of upstream children's
    /// environments (an upstream holding the signing secret or the link key
    /// could approve its own calls).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        [&self.webhook_url, &self.signing_secret, &self.bot_token]
            .into_iter()
            .filter_map(|s| s.as_deref())
            .chain(
                self.link_key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok()),
            )
    }
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<String>| if s.is_some() { "[secret]" } else { "none" };
        f.debug_struct("SlackConfig")
            .field("webhook_url", &secret(&self.webhook_url))
            .field("signing_secret", &secret(&self.signing_secret))
            .field("bot_token", &secret(&self.bot_token))
            .field("channel", &self.channel)
            .field("api_url", &self.api_url)
            .field(
                "link_key",
                &if self.link_key.is_some() {
                    "[secret]"
                } else {
                    "generated"
                },
            )
            .field("link_requires_login", &self.link_requires_login)
            .field("give_up_after", &self.give_up_after)
            .field("users", &self.users)
            .finish()
    }
}

pub const DEFAULT_SLACK_API: &str = "https://slack.com/api";
pub const DEFAULT_SLACK_GIVE_UP: Duration = Duration::from_secs(600);

/// `[store]`: the approvals store. Without a URL, approvals live in this
/// process's memory (one gateway); with a PostgreSQL URL, several replicas
/// share pending approvals and decisions.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` (from `url`, `url_env` or `url_file`).
    pub url: Option<String>,
    /// This replica's id; default `<hostname>-<pid>-<random>`.
    pub replica: Option<String>,
    /// Lease renewal interval.
    pub heartbeat: Duration,
    /// A replica silent this long is dead; its holds are abandoned.
    pub lease: Duration,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: None,
            replica: None,
            heartbeat: Duration::from_secs(2),
            lease: Duration::from_secs(10),
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_SESSIONS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    max_body_bytes: Option<usize>,
    session_idle_timeout: Option<u64>,
    upstream_timeout: Option<u64>,
    max_sessions: Option<usize>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    approver: Vec<RawCredential>,
    #[serde(default)]
    agent: Vec<RawCredential>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    approval: RawApproval,
    slack: Option<RawSlack>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    oidc: Option<oidc::RawOidc>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    replica: Option<String>,
    heartbeat: Option<f64>,
    lease: Option<f64>,
}

/// Spanned, so that an error points at the value itself.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<toml::Spanned<u64>>,
    header_timeout: Option<toml::Spanned<u64>>,
    idle_timeout: Option<toml::Spanned<u64>>,
    body_timeout: Option<toml::Spanned<u64>>,
    write_timeout: Option<toml::Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    webhook_url_env: Option<String>,
    webhook_url_file: Option<PathBuf>,
    signing_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
    bot_token_env: Option<String>,
    bot_token_file: Option<PathBuf>,
    channel: Option<String>,
    api_url: Option<String>,
    link_key_env: Option<String>,
    link_key_file: Option<PathBuf>,
    link_requires_login: Option<bool>,
    give_up_after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: IndexMap<String, String>,
    url: Option<String>,
    /// Non-secret headers sent upstream as written.
    #[serde(default)]
    headers: IndexMap<String, String>,
    /// Header name → environment variable holding its value.
    #[serde(default)]
    headers_env: IndexMap<String, String>,
    policy: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    /// Slack-app mode maps Slack users to approvers (see [`SlackConfig::users`]).
    slack_user_id: Option<String>,
    /// `viewer`, `approver` (default) or `admin`; `[[approver]]` only.
    role: Option<String>,
    /// Approver groups; `[[approver]]` only.
    #[serde(default)]
    groups: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
    #[serde(default)]
    redact: Option<Vec<String>>,
    redact_defaults: Option<bool>,
    on_error: Option<String>,
    record_allowed: Option<bool>,
    signing_key_file: Option<PathBuf>,
    checkpoint_interval: Option<u64>,
    checkpoint_webhook_url_env: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    progress_interval: Option<f64>,
    resume_grace: Option<f64>,
}

/// Reads and validates a config file. Relative paths in it are relative to its folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base, &|name| std::env::var(name).ok())
}

/// Parses config text; `env` looks up environment variables (injectable for tests).
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message: explain_toml_error(e.message().trim()),
        }
    })?;
    let invalid = |needle: &str, nth: usize, message: String| {
        let (line, column) = locate(text, needle, nth);
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };

    let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            0,
            format!("listen: `{listen_text}` is not an address like 127.0.0.1:8080"),
        )
    })?;
    let public_url_set = raw.public_url.is_some();
    let public_url = raw
        .public_url
        .unwrap_or_else(|| format!("http://{listen}"))
        .trim_end_matches('/')
        .to_owned();
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(invalid(
            "public_url",
            0,
            format!("public_url: `{public_url}` must start with http:// or https://"),
        ));
    }

    if raw.upstream.is_empty() {
        return Err(invalid("", 0, "no [[upstream]] is configured".into()));
    }
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, up) in raw.upstream.into_iter().enumerate() {
        let err = |m: String| invalid("[[upstream]]", i, m);
        if up.name.is_empty()
            || !up
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(format!(
                "upstream.name `{}` must be non-empty and use only letters, digits, `-` and `_` (it becomes the URL path /mcp/{{name}})",
                up.name
            )));
        }
        if !names.insert(up.name.clone()) {
            return Err(err(format!("upstream.name `{}` is used twice", up.name)));
        }
        let spec = match (up.command, up.url) {
            (Some(command), None) => {
                if !up.headers.is_empty() || !up.headers_env.is_empty() {
                    return Err(err(format!(
                        "upstream `{}`: headers and headers_env only apply to a `url` upstream",
                        up.name
                    )));
                }
                UpstreamSpec::Stdio {
                    command,
                    args: up.args,
                    env: up.env.into_iter().collect(),
                    env_remove: Vec::new(),
                }
            }
            (None, Some(url)) => {
                if !up.args.is_empty() || !up.env.is_empty() {
                    return Err(err(format!(
                        "upstream `{}`: args and env only apply to a `command` upstream",
                        up.name
                    )));
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(err(format!(
                        "upstream `{}`: url `{url}` must start with http:// or https://",
                        up.name
                    )));
                }
                if let Err(e) = reqwest::Url::parse(&url) {
                    return Err(err(format!(
                        "upstream `{}`: url `{url}` is not a valid URL: {e}",
                        up.name
                    )));
                }
                let mut headers: Vec<(String, String)> = up.headers.into_iter().collect();
                for (header, var) in up.headers_env {
                    let value = env(&var).ok_or_else(|| {
                        err(format!(
                            "upstream `{}`: headers_env.{header} names environment variable `{var}`, which is not set",
                            up.name
                        ))
                    })?;
                    headers.push((header, value));
                }
                UpstreamSpec::Http { url, headers }
            }
            (Some(_), Some(_)) => {
                return Err(err(format!(
                    "upstream `{}` sets both `command` and `url`; choose one",
                    up.name
                )));
            }
            (None, None) => {
                return Err(err(format!(
                    "upstream `{}` needs `command` (a stdio server) or `url` (a Streamable HTTP server)",
                    up.name
                )));
            }
        };
        upstreams.push(UpstreamConfig {
            name: up.name,
            spec,
            policy: up.policy.map(|p| base.join(p)),
        });
    }

    let slack_users = slack_users(&raw.approver, text, file)?;
    let approvers = credentials(raw.approver, "approver", text, file, base, env)?;
    let slack = match raw.slack {
        Some(s) => Some(slack(s, slack_users, text, file, base, env)?),
        None => None,
    };
    let agents = credentials(raw.agent, "agent", text, file, base, env)?;
    if let Some(agent) = agents
        .iter()
        .find(|a| approvers.iter().any(|p| p.token == a.token))
    {
        return Err(invalid(
            "[[agent]]",
            0,
            format!(
                "agent `{}` has the same token as an approver: an agent must never be able to approve",
                agent.name
            ),
        ));
    }

    if let Some(on_error) = &raw.audit.on_error
        && on_error != "fail_closed"
        && on_error != "allow"
    {
        return Err(invalid(
            "on_error",
            0,
            format!("audit.on_error must be \"fail_closed\" or \"allow\", got `{on_error}`"),
        ));
    }
    let redact = crate::audit::Redactor::new(
        raw.audit.redact.as_deref().unwrap_or_default(),
        raw.audit.redact_defaults.unwrap_or(true),
    )
    .map_err(|e| invalid("redact", 0, format!("audit.redact: {e}")))?;
    let checkpoint_interval = raw
        .audit
        .checkpoint_interval
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL);
    if !(1..=86_400).contains(&checkpoint_interval) {
        return Err(invalid(
            "checkpoint_interval",
            0,
            format!(
                "audit.checkpoint_interval must be between 1 and 86400 seconds, got {checkpoint_interval}"
            ),
        ));
    }
    let webhook_url = match &raw.audit.checkpoint_webhook_url_env {
        None => None,
        Some(var) => match env(var).filter(|v| !v.trim().is_empty()) {
            Some(url)
                if url.trim().starts_with("http://") || url.trim().starts_with("https://") =>
            {
                Some(url.trim().to_owned())
            }
            Some(_) => {
                return Err(invalid(
                    "checkpoint_webhook_url_env",
                    0,
                    format!(
                        "audit.checkpoint_webhook_url_env: the URL in `{var}` must start with http:// or https://"
                    ),
                ));
            }
            None => {
                return Err(invalid(
                    "checkpoint_webhook_url_env",
                    0,
                    format!(
                        "audit.checkpoint_webhook_url_env names environment variable `{var}`, which is not set"
                    ),
                ));
            }
        },
    };
    let progress_interval = raw.approval.progress_interval.unwrap_or(10.0);
    if !(0.05..=3600.0).contains(&progress_interval) {
        return Err(invalid(
            "progress_interval",
            0,
            format!(
                "approval.progress_interval must be between 0.05 and 3600 seconds, got {progress_interval}"
            ),
        ));
    }

    let resume_grace = raw
        .approval
        .resume_grace
        .unwrap_or(crate::hold::stream::GRACE.as_secs_f64());
    if !(0.0..=3600.0).contains(&resume_grace) {
        return Err(invalid(
            "resume_grace",
            0,
            format!("approval.resume_grace must be between 0 and 3600 seconds, got {resume_grace}"),
        ));
    }

    let server = server(&raw.server, text, file)?;
    let store = store(&raw.store, text, file, base, env)?;
    let oidc = match raw.oidc {
        Some(o) => Some(oidc::oidc(o, text, file, base, env)?),
        None => None,
    };

    Ok(Config {
        listen,
        public_url,
        public_url_set,
        max_body_bytes: raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        session_idle_timeout: Duration::from_secs(match raw.session_idle_timeout {
            Some(0) => {
                return Err(invalid(
                    "session_idle_timeout",
                    0,
                    "session_idle_timeout must be at least 1 (seconds)".into(),
                ));
            }
            other => other.unwrap_or(3600),
        }),
        upstream_timeout: raw
            .upstream_timeout
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        max_sessions: raw.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS).max(1),
        allowed_origins: raw.allowed_origins,
        allowed_hosts: raw.allowed_hosts,
        upstreams,
        approvers,
        agents,
        audit: AuditConfig {
            path: base.join(
                raw.audit
                    .path
                    .unwrap_or_else(|| PathBuf::from("airlock.db")),
            ),
            redact,
            checkpoints: CheckpointConfig {
                signing_key_file: raw.audit.signing_key_file.map(|p| base.join(p)),
                interval: Duration::from_secs(checkpoint_interval),
                webhook_url,
            },
            fail_closed: raw.audit.on_error.as_deref() == Some("fail_closed"),
            record_allowed: raw.audit.record_allowed.unwrap_or(true),
        },
        approval: ApprovalConfig {
            progress_interval: Duration::from_secs_f64(progress_interval),
            resume_grace: Duration::from_secs_f64(resume_grace),
        },
        slack,
        server,
        store,
        oidc,
        quick: false,
    })
}

/// `[store]`: one source for the URL, a PostgreSQL URL, sane lease timing.
fn store(
    raw: &RawStore,
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StoreConfig, ConfigError> {
    let err = |key: &str, message: String| {
        let (line, column) = locate(text, key, 0);
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let sources = [
        raw.url.is_some(),
        raw.url_env.is_some(),
        raw.url_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(err(
            "[store]",
            "store: set one of url, url_env and url_file".into(),
        ));
    }
    let url = match (&raw.url, &raw.url_env, &raw.url_file) {
        (Some(url), _, _) => Some(url.trim().to_owned()),
        (_, Some(var), _) => match env(var).filter(|v| !v.trim().is_empty()) {
            Some(url) => Some(url.trim().to_owned()),
            None => {
                return Err(err(
                    "url_env",
                    format!("store.url_env names environment variable `{var}`, which is not set"),
                ));
            }
        },
        (_, _, Some(path)) => {
            let path = base.join(path);
            match std::fs::read_to_string(&path) {
                Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
                Ok(_) => {
                    return Err(err(
                        "url_file",
                        format!("store.url_file: {} is empty", path.display()),
                    ));
                }
                Err(e) => {
                    return Err(err(
                        "url_file",
                        format!("store.url_file: cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
        _ => None,
    };
    // Never echo the URL: it may hold a password.
    if let Some(url) = &url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        let key = ["url", "url_env", "url_file"][sources.iter().position(|s| *s).unwrap_or(0)];
        return Err(err(
            key,
            "store: the URL must start with postgres:// or postgresql://".into(),
        ));
    }
    let url = match (url, &raw.ca_file) {
        (url, None) => url,
        (None, Some(_)) => {
            return Err(err(
                "ca_file",
                "store.ca_file is set but no url: set url, url_env or url_file".into(),
            ));
        }
        (Some(url), Some(path)) => {
            let path = base.join(path);
            if let Err(e) = std::fs::metadata(&path) {
                return Err(err(
                    "ca_file",
                    format!("store.ca_file: cannot read {}: {e}", path.display()),
                ));
            }
            Some(crate::pgtls::with_ca_file(&url, &path))
        }
    };
    // sslmode and the CA are checked now, not at the first connection.
    if let Some(url) = &url
        && let Err(e) = crate::pgtls::Target::parse(url)
    {
        let key = match raw.ca_file {
            Some(_)
                if matches!(
                    e,
                    crate::pgtls::TlsSetupError::CaUnreadable { .. }
                        | crate::pgtls::TlsSetupError::CaEmpty(_)
                ) =>
            {
                "ca_file"
            }
            _ => ["url", "url_env", "url_file"][sources.iter().position(|s| *s).unwrap_or(0)],
        };
        return Err(err(key, format!("store: {e}")));
    }
    let heartbeat = raw.heartbeat.unwrap_or(2.0);
    if !(0.1..=60.0).contains(&heartbeat) {
        return Err(err(
            "heartbeat",
            format!("store.heartbeat must be between 0.1 and 60 seconds, got {heartbeat}"),
        ));
    }
    let lease = raw.lease.unwrap_or(10.0);
    if !(lease >= 2.0 * heartbeat && lease <= 3600.0) {
        return Err(err(
            "lease",
            format!(
                "store.lease must be at least twice store.heartbeat ({heartbeat} s) and at most 3600 seconds, got {lease}"
            ),
        ));
    }
    if let Some(replica) = &raw.replica
        && (replica.is_empty()
            || replica.len() > 64
            || !replica
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
    {
        return Err(err(
            "replica",
            format!(
                "store.replica `{replica}` must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`"
            ),
        ));
    }
    Ok(StoreConfig {
        url,
        replica: raw.replica.clone(),
        heartbeat: Duration::from_secs_f64(heartbeat),
        lease: Duration::from_secs_f64(lease),
    })
}

/// `[server]`: every limit is at least 1 (0 would refuse every connection
/// or cut every request), and a timeout at most a day (see
/// [`MAX_SERVER_TIMEOUT`]).
fn server(raw: &RawServer, text: &str, file: &str) -> Result<ServerConfig, ConfigError> {
    let invalid = |v: &toml::Spanned<u64>, message: String| {
        let (line, column) = line_col(text, v.span().start);
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let at_least_one = |value: &Option<toml::Spanned<u64>>, key: &str, unit: &str| match value {
        Some(v) if *v.get_ref() == 0 => {
            Err(invalid(v, format!("server.{key} must be at least 1{unit}")))
        }
        other => Ok(other.as_ref().map(|v| *v.get_ref())),
    };
    let defaults = ServerConfig::default();
    let max_connections = at_least_one(&raw.max_connections, "max_connections", "")?
        .map_or(defaults.max_connections, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
    let seconds = |value: &Option<toml::Spanned<u64>>, key: &str, default| {
        let max = MAX_SERVER_TIMEOUT.as_secs();
        match value {
            Some(v) if *v.get_ref() > max => Err(invalid(
                v,
                format!("server.{key} must be at most {max} (seconds: one day)"),
            )),
            _ => at_least_one(value, key, " (seconds)")
                .map(|s| s.map_or(default, Duration::from_secs)),
        }
    };
    Ok(ServerConfig {
        // The semaphore behind the cap holds at most `usize::MAX >> 3` permits.
        max_connections: max_connections.min(tokio::sync::Semaphore::MAX_PERMITS),
        header_timeout: seconds(
            &raw.header_timeout,
            "header_timeout",
            defaults.header_timeout,
        )?,
        idle_timeout: seconds(&raw.idle_timeout, "idle_timeout", defaults.idle_timeout)?,
        body_timeout: seconds(&raw.body_timeout, "body_timeout", defaults.body_timeout)?,
        write_timeout: seconds(&raw.write_timeout, "write_timeout", defaults.write_timeout)?,
    })
}

/// Adds a suggestion to toml's "unknown field" message.
fn explain_toml_error(message: &str) -> String {
    match crate::suggest::parse_unknown(message, "unknown field `") {
        Some((field, expected)) => format!(
            "unknown key `{field}`{} (known keys: {})",
            crate::suggest::suggestion(&field, &expected),
            expected.join(", ")
        ),
        None => message.to_owned(),
    }
}

fn credentials(
    raw: Vec<RawCredential>,
    table: &str,
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Credential>, ConfigError> {
    let mut out = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let err = |message: String| {
            let (line, column) = locate(text, &format!("[[{table}]]"), i);
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                column,
                message,
            }
        };
        if c.name.is_empty() {
            return Err(err(format!("{table}.name must not be empty")));
        }
        let role = match (table, c.role.as_deref()) {
            (_, None) => Role::default(),
            ("agent", Some(_)) => {
                return Err(err(format!(
                    "agent `{}`: role only applies to [[approver]]",
                    c.name
                )));
            }
            (_, Some("viewer")) => Role::Viewer,
            (_, Some("approver")) => Role::Approver,
            (_, Some("admin")) => Role::Admin,
            (_, Some(other)) => {
                return Err(err(format!(
                    "approver `{}`: role `{other}` is not one of viewer, approver, admin",
                    c.name
                )));
            }
        };
        if table == "agent" && c.groups.is_some() {
            return Err(err(format!(
                "agent `{}`: groups only applies to [[approver]]",
                c.name
            )));
        }
        let groups = c.groups.unwrap_or_default();
        if let Some(bad) = groups.iter().find(|g| g.trim().is_empty()) {
            return Err(err(format!(
                "approver `{}`: a group name must not be empty (got {bad:?})",
                c.name
            )));
        }
        if table == "agent" && c.slack_user_id.is_some() {
            return Err(err(format!(
                "agent `{}`: slack_user_id only applies to [[approver]]",
                c.name
            )));
        }
        let token = match (c.token_env, c.token_file) {
            (Some(var), None) => env(&var).ok_or_else(|| {
                err(format!(
                    "{table} `{}`: token_env names environment variable `{var}`, which is not set",
                    c.name
                ))
            })?,
            (None, Some(path)) => {
                let path = base.join(path);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        err(format!(
                            "{table} `{}`: cannot read token_file {}: {e}",
                            c.name,
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned()
            }
            _ => {
                return Err(err(format!(
                    "{table} `{}` needs exactly one of token_env or token_file",
                    c.name
                )));
            }
        };
        if token.len() < 16 {
            return Err(err(format!(
                "{table} `{}`: the token must be at least 16 characters",
                c.name
            )));
        }
        out.push(Credential {
            name: c.name,
            token,
            role,
            groups,
        });
    }
    Ok(out)
}

/// `slack_user_id` of each `[[approver]]`: well-formed and used once.
fn slack_users(
    raw: &[RawCredential],
    text: &str,
    file: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut users: Vec<(String, String)> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let Some(id) = &c.slack_user_id else { continue };
        let err = |message: String| {
            let (line, column) = locate(text, "[[approver]]", i);
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                column,
                message,
            }
        };
        if id.is_empty()
            || !id.starts_with(['U', 'W'])
            || !id
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(err(format!(
                "approver `{}`: slack_user_id `{id}` is not a Slack member ID like U012AB3CD (Profile → ⋮ → Copy member ID)",
                c.name
            )));
        }
        if let Some((_, other)) = users.iter().find(|(u, _)| u == id) {
            return Err(err(format!(
                "approver `{}`: slack_user_id `{id}` is already used by approver `{other}`",
                c.name
            )));
        }
        users.push((id.clone(), c.name.clone()));
    }
    Ok(users)
}

/// The config key a secret's source description starts with (`slack.KEY …`).
fn source_key(source: &str) -> &str {
    source
        .trim_start_matches("slack.")
        .split(' ')
        .next()
        .unwrap_or(source)
}

/// Validates `[slack]` and reads its secrets from the environment or files.
fn slack(
    raw: RawSlack,
    users: Vec<(String, String)>,
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SlackConfig, ConfigError> {
    let err = |key: &str, message: String| {
        let (line, column) = locate(text, key, 0);
        let (line, column) = if line == 1 && column == 1 {
            locate(text, "[slack]", 0)
        } else {
            (line, column)
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    // A secret comes from `{name}_env` or `{name}_file`. Errors name the
    // variable or the file, never the value.
    let secret = |name: &str,
                  var: &Option<String>,
                  path: &Option<PathBuf>|
     -> Result<Option<(String, String)>, ConfigError> {
        let (env_key, file_key) = (format!("{name}_env"), format!("{name}_file"));
        let value = match (var, path) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(err(
                    &file_key,
                    format!("slack: set one of {env_key} and {file_key}, not both"),
                ));
            }
            (Some(var), None) => match env(var) {
                Some(value) if !value.trim().is_empty() => {
                    (value, format!("slack.{env_key} (`{var}`)"))
                }
                _ => {
                    return Err(err(
                        &env_key,
                        format!(
                            "slack.{env_key} names environment variable `{var}`, which is not set"
                        ),
                    ));
                }
            },
            (None, Some(path)) => {
                let path = base.join(path);
                match std::fs::read_to_string(&path) {
                    Ok(value) if !value.trim().is_empty() => {
                        (value, format!("slack.{file_key} ({})", path.display()))
                    }
                    Ok(_) => {
                        return Err(err(
                            &file_key,
                            format!("slack.{file_key}: {} is empty", path.display()),
                        ));
                    }
                    Err(e) => {
                        return Err(err(
                            &file_key,
                            format!("slack.{file_key}: cannot read {}: {e}", path.display()),
                        ));
                    }
                }
            }
        };
        Ok(Some((value.0.trim().to_owned(), value.1)))
    };
    let webhook_url = secret("webhook_url", &raw.webhook_url_env, &raw.webhook_url_file)?;
    let signing_secret = secret(
        "signing_secret",
        &raw.signing_secret_env,
        &raw.signing_secret_file,
    )?;
    let bot_token = secret("bot_token", &raw.bot_token_env, &raw.bot_token_file)?;
    let link_key = secret("link_key", &raw.link_key_env, &raw.link_key_file)?;
    if let Some((url, source)) = &webhook_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(err(
            source_key(source),
            format!("{source} does not hold an https:// URL"),
        ));
    }
    if let Some((key, source)) = &link_key
        && key.len() < 32
    {
        return Err(err(
            source_key(source),
            format!("{source} must hold at least 32 characters"),
        ));
    }
    let [webhook_url, signing_secret, bot_token, link_key] =
        [webhook_url, signing_secret, bot_token, link_key].map(|s| s.map(|(value, _)| value));
    match (&bot_token, &raw.channel) {
        (Some(_), None) => {
            return Err(err(
                "bot_token_env",
                "slack.bot_token_env/bot_token_file needs `channel` (the channel ID to post to)"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "channel",
                "slack.channel is only used with bot_token_env or bot_token_file".into(),
            ));
        }
        _ => {}
    }
    if webhook_url.is_none() && bot_token.is_none() {
        return Err(err(
            "[slack]",
            "[slack] needs webhook_url_env or webhook_url_file (an incoming webhook), or bot_token_env or bot_token_file + channel (a Slack app's bot)".into(),
        ));
    }
    let api_url = raw
        .api_url
        .unwrap_or_else(|| DEFAULT_SLACK_API.to_owned())
        .trim_end_matches('/')
        .to_owned();
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(err(
            "api_url",
            format!("slack.api_url `{api_url}` must start with https://"),
        ));
    }
    let give_up_after = raw
        .give_up_after
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SLACK_GIVE_UP);
    if !(1..=86_400).contains(&give_up_after.as_secs()) {
        return Err(err(
            "give_up_after",
            format!(
                "slack.give_up_after must be between 1 and 86400 seconds, got {}",
                give_up_after.as_secs()
            ),
        ));
    }
    Ok(SlackConfig {
        webhook_url,
        signing_secret,
        bot_token,
        channel: raw.channel,
        api_url,
        link_key: link_key.map(String::into_bytes),
        link_requires_login: raw.link_requires_login.unwrap_or(false),
        give_up_after,
        users,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Line and column of the `nth` occurrence of `needle` (start of file when absent).
fn locate(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    if needle.is_empty() {
        return (1, 1);
    }
    text.match_indices(needle)
        .nth(nth)
        .map(|(i, _)| line_col(text, i))
        .unwrap_or((1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ALICE" => Some("alice-token-0123456789".into()),
            "BOB" => Some("bob-token-0123456789ab".into()),
            "HOOK" => Some("https://hooks.slack.com/services/T0/B0/secretsecret".into()),
            "SIGNING" => Some("slack-signing-secret".into()),
            "NOT_A_URL" => Some("hooks.slack.com/services/T0/B0/secretsecret".into()),
            "AUTH" => Some("Bearer xyz".into()),
            _ => None,
        }
    }

    fn parse_ok(text: &str) -> Config {
        parse(text, "a.toml", Path::new("/etc/airlock"), &env).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn store_ca_file_joins_the_url_and_bad_tls_settings_are_named() {
        let dir = std::env::temp_dir().join(format!("airlock-ca-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let with = |store: &str| {
            format!("[[upstream]]\nname = \"u\"\ncommand = \"true\"\n\n[store]\n{store}\n")
        };
        let parse_in = |text: &str| parse(text, "a.toml", &dir, &env).map_err(|e| e.to_string());
        let e = parse_in(&with(
            "url = \"postgres://a@db/x?sslmode=verify-full\"\nca_file = \"ca.pem\"",
        ))
        .unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = parse_in(&with(
            "url = \"postgres://a@db/x\"\nca_file = \"missing.pem\"",
        ))
        .unwrap_err();
        assert!(e.contains("store.ca_file: cannot read"), "{e}");
        let e = parse_in(&with("ca_file = \"ca.pem\"")).unwrap_err();
        assert!(e.contains("store.ca_file is set but no url"), "{e}");
        let e = parse_in(&with("url = \"postgres://a:pw@db/x?sslmode=allow\"")).unwrap_err();
        assert!(
            e.contains("sslmode `allow` is not one of") && !e.contains("pw"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn parse_err(text: &str) -> String {
        parse(text, "a.toml", Path::new("/etc/airlock"), &env)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    const UP: &str = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";

    #[test]
    fn approver_groups_are_read_and_only_for_approvers() {
        let c = parse_ok(&format!(
            "{UP}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\ngroups = [\"finance\", \"oncall\"]\n[[approver]]\nname = \"bob\"\ntoken_env = \"BOB\"\n"
        ));
        assert_eq!(c.approver_groups("alice"), ["finance", "oncall"]);
        assert!(c.approver_groups("bob").is_empty());
        assert_eq!(c.group_members("oncall").len(), 1);
        let agent = parse_err(&format!(
            "{UP}[[agent]]\nname = \"bot\"\ntoken_env = \"ALICE\"\ngroups = [\"x\"]\n"
        ));
        assert!(
            agent.contains("groups only applies to [[approver]]"),
            "{agent}"
        );
        let empty = parse_err(&format!(
            "{UP}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\ngroups = [\" \"]\n"
        ));
        assert!(empty.contains("a group name must not be empty"), "{empty}");
    }

    #[test]
    fn approver_roles_default_to_approver() {
        let c = parse_ok(&format!(
            "{UP}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\nrole = \"admin\"\n[[approver]]\nname = \"vic\"\ntoken_env = \"BOB\"\nrole = \"viewer\"\n"
        ));
        assert_eq!(c.approver_role("alice"), Some(Role::Admin));
        assert_eq!(c.approver_role("vic"), Some(Role::Viewer));
        let plain = parse_ok(&format!(
            "{UP}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\n"
        ));
        assert_eq!(plain.approver_role("alice"), Some(Role::Approver));
        assert!(Role::Viewer < Role::Approver && Role::Approver < Role::Admin);
        let bad = parse_err(&format!(
            "{UP}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\nrole = \"root\"\n"
        ));
        assert!(
            bad.starts_with("a.toml:4:") && bad.contains("role `root`"),
            "{bad}"
        );
        let agent = parse_err(&format!(
            "{UP}[[agent]]\nname = \"bot\"\ntoken_env = \"ALICE\"\nrole = \"admin\"\n"
        ));
        assert!(
            agent.contains("role only applies to [[approver]]"),
            "{agent}"
        );
    }

    #[test]
    fn audit_redact_adds_globs_to_the_defaults() {
        let c = parse_ok(&format!("{UP}[audit]\nredact = [\"ssn\", \"api_?ey\"]\n"));
        assert!(c.audit.redact.matches("SSN") && c.audit.redact.matches("api_Key"));
        assert!(c.audit.redact.matches("password"), "defaults stay");
        let own = parse_ok(&format!(
            "{UP}[audit]\nredact = [\"ssn\"]\nredact_defaults = false\n"
        ));
        assert!(own.audit.redact.matches("ssn") && !own.audit.redact.matches("password"));
        let bad = parse_err(&format!("{UP}[audit]\nredact = [\"pass[word\"]\n"));
        assert!(
            bad.starts_with("a.toml:5:")
                && bad.contains("audit.redact")
                && bad.contains("pass[word"),
            "{bad}"
        );
    }

    #[test]
    fn approval_resume_grace_defaults_to_30_s_and_zero_turns_it_off() {
        let c = parse_ok(UP);
        assert_eq!(c.approval.resume_grace, Duration::from_secs(30));
        let off = parse_ok(&format!("{UP}[approval]\nresume_grace = 0\n"));
        assert!(off.approval.resume_grace.is_zero());
        let bad = parse_err(&format!("{UP}[approval]\nresume_grace = -1\n"));
        assert!(bad.contains("approval.resume_grace"), "{bad}");
    }

    #[test]
    fn audit_checkpoint_keys() {
        let c = parse_ok(&format!(
            "{UP}[audit]\nsigning_key_file = \"keys/audit.key\"\ncheckpoint_interval = 5\ncheckpoint_webhook_url_env = \"HOOK\"\n"
        ));
        let cp = &c.audit.checkpoints;
        assert_eq!(
            cp.signing_key_file.as_deref(),
            Some(Path::new("/etc/airlock/keys/audit.key"))
        );
        assert_eq!(cp.interval, Duration::from_secs(5));
        assert!(
            cp.webhook_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        );
        assert!(
            !format!("{cp:?}").contains("hooks.slack.com"),
            "the URL is a secret"
        );
        let zero = parse_err(&format!("{UP}[audit]\ncheckpoint_interval = 0\n"));
        assert!(zero.contains("audit.checkpoint_interval"), "{zero}");
        let unset = parse_err(&format!(
            "{UP}[audit]\ncheckpoint_webhook_url_env = \"NOPE\"\n"
        ));
        assert!(
            unset.contains("`NOPE`") && unset.contains("not set"),
            "{unset}"
        );
        let not_url = parse_err(&format!(
            "{UP}[audit]\ncheckpoint_webhook_url_env = \"NOT_A_URL\"\n"
        ));
        assert!(not_url.contains("http://"), "{not_url}");
        assert!(!not_url.contains("hooks.slack.com"), "{not_url}");
    }

    #[test]
    fn the_design_example_loads() {
        let c = parse_ok(
            r#"
listen = "127.0.0.1:9090"
[[upstream]]
name = "everything"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-everything"]
env = { LOG_LEVEL = "warn" }
policy = "policies/everything.json"
[[upstream]]
name = "remote"
url = "http://127.0.0.1:3001/mcp"
headers_env = { Authorization = "AUTH" }
[[approver]]
name = "alice"
token_env = "ALICE"
[audit]
path = "audit.db"
redact = ["password"]
"#,
        );
        assert_eq!(c.listen.port(), 9090);
        assert_eq!(c.public_url, "http://127.0.0.1:9090");
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(
            c.upstreams[0].policy.as_deref(),
            Some(Path::new("/etc/airlock/policies/everything.json"))
        );
        let UpstreamSpec::Http { headers, .. } = &c.upstreams[1].spec else {
            panic!()
        };
        assert_eq!(
            headers,
            &[("Authorization".to_owned(), "Bearer xyz".to_owned())]
        );
        assert_eq!(c.approvers[0].name, "alice");
        assert_eq!(c.audit.path, Path::new("/etc/airlock/audit.db"));
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY);
    }

    #[test]
    fn server_limits_default_and_are_read_from_the_server_table() {
        let upstream = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";
        assert_eq!(parse_ok(upstream).server, ServerConfig::default());
        let c = parse_ok(&format!(
            "{upstream}[server]\nmax_connections = 50\nheader_timeout = 2\nidle_timeout = 30\n\
             body_timeout = 5\nwrite_timeout = 7\n"
        ));
        assert_eq!(c.server.max_connections, 50);
        assert_eq!(c.server.header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.server.body_timeout, Duration::from_secs(5));
        assert_eq!(c.server.write_timeout, Duration::from_secs(7));
    }

    #[test]
    fn a_server_timeout_over_a_day_is_an_error_naming_the_key_and_line() {
        let upstream = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";
        for key in [
            "header_timeout",
            "idle_timeout",
            "body_timeout",
            "write_timeout",
        ] {
            let e = parse_err(&format!(
                "{upstream}[server]\n{key} = 9223372036854775807\n"
            ));
            assert!(e.starts_with("a.toml:5:"), "{e}");
            assert!(
                e.contains(&format!("server.{key} must be at most 86400")),
                "{e}"
            );
            let c = parse_ok(&format!("{upstream}[server]\n{key} = 86400\n"));
            assert!(format!("{:?}", c.server).contains("86400s"));
        }
    }

    #[test]
    fn a_zero_server_limit_is_an_error_naming_the_key_and_line() {
        let upstream = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";
        for key in [
            "max_connections",
            "header_timeout",
            "idle_timeout",
            "body_timeout",
            "write_timeout",
        ] {
            let e = parse_err(&format!("{upstream}[server]\n{key} = 0\n"));
            assert!(e.starts_with("a.toml:5:"), "{e}");
            assert!(
                e.contains(&format!("server.{key} must be at least 1")),
                "{e}"
            );
        }
        let typo = parse_err(&format!("{upstream}[server]\nmax_conections = 5\n"));
        assert!(
            typo.starts_with("a.toml:5:") && typo.contains("max_conections"),
            "{typo}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse_err(
            "listen = \"127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\ncommand = \"x\"\npolcy = \"p.json\"\n",
        );
        assert!(e.starts_with("a.toml:5:"), "{e}");
        assert!(e.contains("polcy"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_entry() {
        let bad_url = parse_err("[[upstream]]\nname = \"a\"\nurl = \"http://exa mple/mcp\"\n");
        assert!(
            bad_url.starts_with("a.toml:") && bad_url.contains("is not a valid URL"),
            "{bad_url}"
        );
        let both = parse_err("[[upstream]]\nname = \"a\"\ncommand = \"x\"\nurl = \"http://h\"\n");
        assert!(both.contains("sets both `command` and `url`"), "{both}");
        let none = parse_err("[[upstream]]\nname = \"a\"\n");
        assert!(none.contains("needs `command`"), "{none}");
        let dup = parse_err(
            "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n[[upstream]]\nname = \"a\"\ncommand = \"y\"\n",
        );
        assert!(
            dup.starts_with("a.toml:4:") && dup.contains("used twice"),
            "{dup}"
        );
        let var = parse_err(
            "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n[[approver]]\nname = \"bob\"\ntoken_env = \"NOPE\"\n",
        );
        assert!(var.contains("`NOPE`, which is not set"), "{var}");
        let listen =
            parse_err("listen = \"nowhere\"\n[[upstream]]\nname = \"a\"\ncommand = \"x\"\n");
        assert!(
            listen.starts_with("a.toml:1:") && listen.contains("not an address"),
            "{listen}"
        );
        let bad_name = parse_err("[[upstream]]\nname = \"a/b\"\ncommand = \"x\"\n");
        assert!(bad_name.contains("only letters, digits"), "{bad_name}");
        let shared = parse_err(
            "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n[[approver]]\nname = \"al\"\ntoken_env = \"ALICE\"\n[[agent]]\nname = \"bot\"\ntoken_env = \"ALICE\"\n",
        );
        assert!(shared.contains("same token as an approver"), "{shared}");
        let empty = parse_err("listen = \"127.0.0.1:1\"\n");
        assert!(empty.contains("no [[upstream]]"), "{empty}");
    }

    const BASE: &str = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";

    #[test]
    fn slack_secrets_come_from_files_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("airlock-slack-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hook"),
            "https://hooks.slack.com/services/T/B/file\n",
        )
        .unwrap();
        std::fs::write(dir.join("signing"), "signing-from-a-file\n").unwrap();
        std::fs::write(dir.join("short-key"), "too short").unwrap();
        let load = |slack: &str| {
            parse(&format!("{BASE}[slack]\n{slack}"), "a.toml", &dir, &env)
                .map_err(|e| e.to_string())
        };
        let c = load("webhook_url_file = \"hook\"\nsigning_secret_file = \"signing\"\n").unwrap();
        let slack = c.slack.expect("[slack]");
        assert_eq!(
            slack.webhook_url.as_deref(),
            Some("https://hooks.slack.com/services/T/B/file")
        );
        assert_eq!(slack.signing_secret.as_deref(), Some("signing-from-a-file"));

        let both = load("webhook_url_env = \"HOOK\"\nwebhook_url_file = \"hook\"\n").unwrap_err();
        assert!(
            both.starts_with("a.toml:6:") && both.contains("not both"),
            "{both}"
        );
        let missing = load("webhook_url_file = \"nope\"\n").unwrap_err();
        assert!(
            missing.contains("slack.webhook_url_file: cannot read") && missing.contains("nope"),
            "{missing}"
        );
        let short =
            load("webhook_url_file = \"hook\"\nlink_key_file = \"short-key\"\n").unwrap_err();
        assert!(
            short.contains("slack.link_key_file") && short.contains("at least 32"),
            "{short}"
        );
        assert!(
            !short.contains("too short"),
            "the secret itself is never printed: {short}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slack_loads_with_secrets_from_env_and_user_mapping() {
        let c = parse_ok(&format!(
            "{BASE}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\nslack_user_id = \"U012AB3CD\"\n[slack]\nwebhook_url_env = \"HOOK\"\nsigning_secret_env = \"SIGNING\"\ngive_up_after = 30\n"
        ));
        let slack = c.slack.expect("[slack]");
        assert_eq!(
            slack.webhook_url.as_deref(),
            Some("https://hooks.slack.com/services/T0/B0/secretsecret")
        );
        assert_eq!(
            slack.signing_secret.as_deref(),
            Some("slack-signing-secret")
        );
        assert_eq!(
            slack.users,
            vec![("U012AB3CD".to_owned(), "alice".to_owned())]
        );
        assert_eq!(slack.give_up_after, Duration::from_secs(30));
        assert!(!slack.link_requires_login);
        assert_eq!(slack.api_url, DEFAULT_SLACK_API);
        assert_eq!(slack.secrets().count(), 2);
        let debug = format!("{slack:?}");
        assert!(
            !debug.contains("secretsecret") && !debug.contains("slack-signing-secret"),
            "{debug}"
        );
        assert!(parse_ok(BASE).slack.is_none());
    }

    #[test]
    fn slack_errors_name_the_key_and_line() {
        let unknown = parse_err(&format!(
            "{BASE}[slack]\nwebhook_url_env = \"HOOK\"\nwebhook_url = \"https://x\"\n"
        ));
        assert!(
            unknown.starts_with("a.toml:6:") && unknown.contains("webhook_url"),
            "{unknown}"
        );
        let unset = parse_err(&format!("{BASE}[slack]\nwebhook_url_env = \"NOPE\"\n"));
        assert!(
            unset.starts_with("a.toml:5:") && unset.contains("`NOPE`, which is not set"),
            "{unset}"
        );
        let not_url = parse_err(&format!("{BASE}[slack]\nwebhook_url_env = \"NOT_A_URL\"\n"));
        assert!(
            not_url.contains("does not hold an https:// URL") && !not_url.contains("secretsecret"),
            "{not_url}"
        );
        let nothing = parse_err(&format!("{BASE}[slack]\nlink_requires_login = true\n"));
        assert!(
            nothing.starts_with("a.toml:4:") && nothing.contains("needs webhook_url_env"),
            "{nothing}"
        );
        let no_channel = parse_err(&format!("{BASE}[slack]\nbot_token_env = \"SIGNING\"\n"));
        assert!(no_channel.contains("needs `channel`"), "{no_channel}");
        let give_up = parse_err(&format!(
            "{BASE}[slack]\nwebhook_url_env = \"HOOK\"\ngive_up_after = 0\n"
        ));
        assert!(
            give_up.starts_with("a.toml:6:") && give_up.contains("give_up_after"),
            "{give_up}"
        );
        let bad_user = parse_err(&format!(
            "{BASE}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\nslack_user_id = \"alice\"\n"
        ));
        assert!(
            bad_user.starts_with("a.toml:4:") && bad_user.contains("not a Slack member ID"),
            "{bad_user}"
        );
        let twice = parse_err(&format!(
            "{BASE}[[approver]]\nname = \"alice\"\ntoken_env = \"ALICE\"\nslack_user_id = \"U1\"\n[[approver]]\nname = \"bob\"\ntoken_env = \"ALICE\"\nslack_user_id = \"U1\"\n"
        ));
        assert!(
            twice.starts_with("a.toml:8:") && twice.contains("already used by approver `alice`"),
            "{twice}"
        );
    }
}

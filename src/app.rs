//! Wiring: config → upstreams and policies → gateway → listeners, and the
//! `check` command. Everything `main` needs, nothing it has to know.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Audit, checkpoint};
use crate::cli::{Cli, Command, ServeArgs};
use crate::config::{self, ApprovalConfig, AuditConfig, Config, Credential, UpstreamConfig};
use crate::gateway::{Gateway, UpstreamRuntime};
use crate::upstream::UpstreamSpec;
use crate::{policy, reload};

mod audit_cmd;
mod login_file;
mod output;
mod replay;

pub use output::{complain, init_tracing};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args, false).await,
        Command::Stdio(args) => serve(args, true).await,
        Command::Check {
            files,
            against: None,
            ..
        } => Ok(check(&files)),
        Command::Check {
            files,
            against: Some(target),
            format,
        } => check_against(&files, &target, format).await,
        Command::Replay {
            policy,
            audit,
            store,
            upstream,
            format,
        } => replay::run(
            &policy,
            &audit_cmd::Source::pick(audit, &store)?,
            upstream.as_deref(),
            format,
        ),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Pending(remote) => crate::remote::pending(remote).await,
        Command::Approve(args) => crate::remote::decide(args, "approve").await,
        Command::Deny(args) => crate::remote::decide(args, "deny").await,
        Command::Tools(command) => crate::remote::tools(command).await,
        Command::Grants(command) => crate::remote::grants(command).await,
        Command::LoginLink { audit, token } => login_file::print(&audit, token),
    }
}

/// Builds the config from `--config`, or quick mode from `--policy` and the command.
fn build_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            if !args.upstream_command.is_empty() {
                bail!("--config and an upstream command (after --) cannot be combined");
            }
            let mut config = config::load(path)?;
            if let Some(name) = &args.upstream {
                config.upstreams.retain(|u| &u.name == name);
                if config.upstreams.is_empty() {
                    bail!(
                        "--upstream {name}: no [[upstream]] with that name in {}",
                        path.display()
                    );
                }
            }
            config
        }
        None => quick_config(args)?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
        if !config.public_url_set {
            config.public_url = format!("http://{listen}");
        }
    }
    if let Some(audit) = &args.audit {
        config.audit.path = audit.clone();
    }
    hide_secrets_from_children(&mut config);
    Ok(config)
}

/// Stdio upstreams must not inherit Airlock's secrets: any `AIRLOCK_*`
/// variable and any variable holding an approver or agent token, a Slack
/// secret or the `[oidc]` client secret is removed
/// from their environment (an upstream could otherwise approve its own calls).
fn hide_secrets_from_children(config: &mut Config) {
    let tokens: std::collections::HashSet<&str> = config
        .approvers
        .iter()
        .chain(&config.agents)
        .map(|c| c.token.as_str())
        .chain(config.slack.iter().flat_map(|s| s.secrets()))
        .chain(config.oidc.iter().map(|o| o.client_secret.as_str()))
        .collect();
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let secret =
                k.starts_with("AIRLOCK_") || v.to_str().is_some_and(|v| tokens.contains(v));
            secret.then_some(k)
        })
        .collect();
    for up in &mut config.upstreams {
        if let UpstreamSpec::Stdio { env_remove, .. } = &mut up.spec {
            env_remove.clone_from(&names);
        }
    }
}

/// The approver token made up at start-up in quick mode (printed, and kept
/// in the login file for `airlock login-link`).
static GENERATED_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn quick_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let spec = match (&args.url, args.upstream_command.split_first()) {
        (Some(url), _) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url `{url}` must start with http:// or https://");
            }
            if let Err(e) = reqwest::Url::parse(url) {
                bail!("--url `{url}` is not a valid URL: {e}");
            }
            UpstreamSpec::Http {
                url: url.clone(),
                headers: Vec::new(),
            }
        }
        (None, Some((command, rest))) => UpstreamSpec::Stdio {
            command: command.clone(),
            args: rest.to_vec(),
            env: Vec::new(),
            env_remove: Vec::new(),
        },
        (None, None) => bail!(
            "no upstream: give a server command after `--` (e.g. `airlock serve --policy p.json -- npx -y @modelcontextprotocol/server-everything`), --url, or --config"
        ),
    };
    let listen: SocketAddr = config::DEFAULT_LISTEN
        .parse()
        .expect("default listen address");
    let token = match std::env::var("AIRLOCK_APPROVER_TOKEN") {
        Ok(token) if token.len() >= 16 => token,
        Ok(_) => bail!("AIRLOCK_APPROVER_TOKEN must be at least 16 characters"),
        Err(_) => {
            let bytes: [u8; 24] = rand::RngExt::random(&mut rand::rng());
            let token = hex::encode(bytes);
            GENERATED_TOKEN.set(token.clone()).ok();
            token
        }
    };
    // The quick-start approver is the operator: it may edit the policy too.
    let approvers = vec![Credential {
        name: "approver".into(),
        token,
        role: config::Role::Admin,
        groups: Vec::new(),
    }];
    Ok(Config {
        listen,
        public_url: format!("http://{listen}"),
        public_url_set: false,
        max_body_bytes: config::DEFAULT_MAX_BODY,
        session_idle_timeout: std::time::Duration::from_secs(3600),
        upstream_timeout: None,
        max_sessions: config::DEFAULT_MAX_SESSIONS,
        allowed_origins: Vec::new(),
        allowed_hosts: Vec::new(),
        upstreams: vec![UpstreamConfig {
            name: "default".into(),
            spec,
            policy: args.policy.clone(),
        }],
        approvers,
        agents: Vec::new(),
        audit: AuditConfig {
            path: PathBuf::from("airlock.db"),
            redact: audit::Redactor::defaults(),
            checkpoints: config::CheckpointConfig::default(),
            fail_closed: false,
            record_allowed: true,
        },
        approval: ApprovalConfig::default(),
        slack: None,
        server: config::ServerConfig::default(),
        store: config::StoreConfig::default(),
        oidc: None,
        quick: true,
    })
}

/// Binds the listener and points `public_url` (when the config leaves it
/// unset) at the address actually bound: links in Slack and the login link
/// must name it (port 0, or a stdio gateway that fell back to a free port).
/// A stdio gateway that cannot listen at all runs without a dashboard.
async fn listen(
    config: &mut Config,
    stdio: bool,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let listener = match bind(config, stdio).await {
        Ok(listener) => listener,
        Err(e) if stdio => {
            tracing::warn!(
                "dashboard not available: cannot listen on {}: {e}",
                config.listen
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", config.listen)),
    };
    if !config.public_url_set {
        config.public_url = format!("http://{}", listener.local_addr()?);
    }
    Ok(Some(listener))
}

/// Each upstream with its live policy; reloads are published as events.
fn open_upstreams(
    config: &Config,
    events: &Arc<crate::events::Events>,
    shutdown: &CancellationToken,
) -> anyhow::Result<IndexMap<String, Arc<UpstreamRuntime>>> {
    let mut upstreams = IndexMap::new();
    for up in &config.upstreams {
        let events = events.clone();
        let on_reload: reload::OnReload = Arc::new(
            move |upstream: &str, outcome: reload::Reload<'_>| match outcome {
                reload::Reload::Loaded => events.publish(
                    "policy.reloaded",
                    serde_json::json!({ "upstream": upstream }),
                ),
                reload::Reload::Failed(error) => events.publish(
                    "policy.reload_failed",
                    serde_json::json!({ "upstream": upstream, "error": error }),
                ),
            },
        );
        if up.policy.is_none() {
            tracing::warn!(upstream = %up.name, "no policy given: every tool is allowed");
        }
        let policy =
            reload::watch_policy(&up.name, up.policy.clone(), shutdown.clone(), on_reload)?;
        let runtime = UpstreamRuntime::new(up.name.clone(), up.spec.clone(), policy)
            .with_context(|| format!("upstream `{}`", up.name))?;
        upstreams.insert(up.name.clone(), runtime);
    }
    Ok(upstreams)
}

/// The approvals service: in memory for one gateway, on PostgreSQL for
/// replicas (`[store] url`).
/// Also returns the database pool with a shared store (for the tasks).
async fn start_approvals(
    store: &config::StoreConfig,
) -> anyhow::Result<(crate::approvals::Approvals, Option<deadpool_postgres::Pool>)> {
    use crate::approvals::{Approvals, MemoryStore, PostgresStore, Store};
    let replica = store.replica.clone().unwrap_or_else(default_replica_id);
    let (backend, pool): (Arc<dyn Store>, _) = match &store.url {
        None => (Arc::new(MemoryStore::new()), None),
        Some(url) => {
            let postgres = PostgresStore::connect(url)
                .await
                .context("cannot open the approvals store ([store] url)")?;
            let pool = postgres.pool();
            (Arc::new(postgres), Some(pool))
        }
    };
    let mut settings = crate::approvals::Config::new(replica.clone());
    settings.heartbeat = store.heartbeat;
    settings.lease = store.lease;
    let approvals = Approvals::start(backend, settings)
        .await
        .context("cannot start the approvals service")?;
    if store.url.is_some() {
        tracing::info!(%replica, "approvals shared through PostgreSQL");
    }
    Ok((approvals, pool))
}

/// Every heartbeat: carries on the tasks of replicas that died.
async fn adopt_orphaned_tasks(gw: Gateway) {
    crate::tasks::settle_leftover_tasks(&gw).await;
    let mut tick = tokio::time::interval(gw.config.store.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tick.tick() => crate::tasks::adopt_orphans(&gw).await,
        }
    }
}

/// Pins, grants, votes and escalations: in memory (pins in a file beside
/// the audit database), or shared through PostgreSQL with `[store] url`.
#[allow(clippy::type_complexity)]
fn power_state(
    config: &Config,
    pool: Option<deadpool_postgres::Pool>,
) -> anyhow::Result<(
    Option<Arc<crate::power_store::SharedPower>>,
    crate::pins::Pins,
    crate::grants::Grants,
    crate::quorum::Votes,
)> {
    let (Some(url), Some(pool)) = (&config.store.url, pool) else {
        let pins = crate::pins::Pins::open(crate::pins::Pins::path_beside(&config.audit.path))?;
        return Ok((None, pins, Default::default(), Default::default()));
    };
    let store = Arc::new(
        crate::power_store::SharedPower::new(pool, url)
            .context("cannot open the grants and pins store ([store] url)")?,
    );
    Ok((
        Some(store.clone()),
        crate::pins::Pins::shared(store.clone()),
        crate::grants::Grants::shared(store.clone(), config.store.lease),
        crate::quorum::Votes::shared(store),
    ))
}

/// `<hostname>-<pid>-<random>`: unique per process, readable in the store.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "airlock".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..6])
}

/// Records the holds an earlier run left open as abandoned. This gateway's
/// turn at start-up lasts until they are dealt with, so two gateways starting
/// at once on one audit file cannot both do it.
async fn settle_leftover_holds(gw: &Gateway) -> anyhow::Result<()> {
    let path = gw.config.audit.path.clone();
    let startup = tokio::task::spawn_blocking(move || crate::audit::users::join(&path)).await?;
    let abandoned = crate::hold::mark_abandoned(gw, startup.company).await?;
    drop(startup);
    if abandoned > 0 {
        tracing::warn!("{abandoned} call(s) left waiting by a previous run recorded as abandoned");
    }
    Ok(())
}

async fn serve(args: ServeArgs, stdio: bool) -> anyhow::Result<ExitCode> {
    let mut config = build_config(&args)?;
    // Bound first: `serve` on a taken port fails before it touches anything.
    let listener = listen(&mut config, stdio).await?;
    if config.approvers.is_empty() && config.oidc.is_none() {
        tracing::warn!("no [[approver]] is configured: held calls can only time out");
    }
    if let Some(oidc) = &config.oidc {
        let callback = oidc
            .redirect_url
            .clone()
            .unwrap_or_else(|| format!("{}{}", config.public_url, crate::oidc::CALLBACK_PATH));
        tracing::info!(
            issuer = %oidc.issuer,
            redirect_url = %callback,
            post_logout_redirect_url = %format!("{}/login", config.public_url),
            "single sign-on with OpenID Connect (register these URLs for client `{}`)",
            oidc.client_id
        );
    }
    let shutdown = CancellationToken::new();
    let events = Arc::new(crate::events::Events::default());
    let upstreams = open_upstreams(&config, &events, &shutdown)?;
    if let Some(dir) = config
        .audit
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // With `[store] url` the audit chain is shared by every replica on that
    // database (docs/audit.md, "Several replicas"); else SQLite at [audit] path.
    let audit = match &config.store.url {
        Some(url) => Audit::open_postgres(url, config.audit.redact.clone())
            .context("cannot open the audit chain in the shared store ([store] url)")?,
        None => Audit::open(&config.audit.path, config.audit.redact.clone())?,
    };
    let checkpoints = start_checkpoints(&config, &audit, &shutdown)?;
    let (approvals, pool) = start_approvals(&config.store).await?;
    let budgets = pool.clone().map(crate::budgets::SharedBudgets::new);
    let (power_store, pins, grants, votes) = power_state(&config, pool.clone())?;
    let tasks = crate::tasks::Tasks::new(pool);
    let slack = crate::slack::prepare(&config, &audit).await?;
    let (slack, inbox) = slack.map_or((None, None), |(s, i)| (Some(s), Some(i)));
    let gw = Gateway::new(crate::gateway::Parts {
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
    });
    if let Some(inbox) = inbox {
        crate::slack::start(&gw, inbox);
    }
    if gw.power_store.is_some() {
        // Before the first call: a replica must not take a changed tool for
        // a first sight, nor hold calls a live grant covers.
        gw.pins
            .refresh()
            .await
            .context("cannot read the tool pins from the shared store")?;
        gw.grants
            .refresh()
            .await
            .context("cannot read the grants from the shared store")?;
    }
    if gw.config.store.url.is_none() {
        // With a shared store, the survivors' lease sweep records a dead
        // replica's holds; an embedded one starts empty, so the audit file
        // says what the previous run left open.
        settle_leftover_holds(&gw).await?;
    } else {
        // A replica restarting under the same `[store] replica` name: what
        // its earlier run left open or decided but did not record.
        let left = gw
            .approvals
            .abandon_leftovers()
            .await
            .context("cannot settle this replica's earlier holds in the shared store")?;
        for resolved in &left {
            crate::hold::record_orphan(&gw, &resolved.approval, &resolved.resolution).await;
        }
        if !left.is_empty() {
            tracing::info!(
                "{} hold(s) left by an earlier run of this replica recorded as abandoned",
                left.len()
            );
        }
    }
    tokio::spawn(crate::hold::follow_approvals(gw.clone()));
    if gw.config.store.url.is_some() {
        tokio::spawn(adopt_orphaned_tasks(gw.clone()));
    }
    tokio::spawn(crate::login::follow_logouts(gw.clone()));
    if let Some(budgets) = gw.budgets.clone() {
        tokio::spawn(budgets.purge_until(gw.shutdown.clone()));
    }
    spawn_signal_handler(gw.shutdown.clone());
    tokio::spawn(gw.clone().reap_idle_sessions());
    tokio::spawn(crate::power::maintain_grants(gw.clone()));
    if gw.config.oidc.is_some() {
        tokio::spawn(crate::oidc::check_provider(gw.clone()));
    }

    let router = crate::server::router(gw.clone());
    let mut login = None;
    let http = match listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            login = write_login_file(&gw);
            announce(&gw, addr, stdio, login.as_ref());
            Some(tokio::spawn(crate::listener::serve(
                listener,
                router,
                gw.config.server,
                gw.shutdown.clone(),
            )))
        }
        None => None,
    };

    if stdio {
        let upstream = gw.upstreams[0].clone();
        // On a worker thread, not in `block_on`'s thread: each request the
        // agent reads is then spawned onto the worker that read it, instead
        // of being handed from the main thread to a worker (a futex wake and
        // a thread hop per message).
        tokio::spawn(crate::stdio_agent::run(gw.clone(), upstream))
            .await
            .map_err(|e| anyhow::anyhow!("the stdio agent stopped: {e}"))??;
        gw.shutdown.cancel();
    } else {
        gw.shutdown.cancelled().await;
    }
    finish(&gw).await;
    if let Some((path, link)) = &login {
        login_file::remove(path, link);
    }
    checkpoints.finish().await;
    if let Some(http) = http {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads (or generates) the signing key, says which public key verifies the
/// checkpoints, and starts signing the chain's head every interval.
fn start_checkpoints(
    config: &Config,
    audit: &Audit,
    shutdown: &CancellationToken,
) -> anyhow::Result<checkpoint::publish::Publisher> {
    let settings = &config.audit.checkpoints;
    let env = std::env::var(checkpoint::KEY_ENV).ok();
    let (signer, source) = checkpoint::load_signer(
        env.as_deref().filter(|v| !v.trim().is_empty()),
        settings.signing_key_file.as_deref(),
        &config.audit.path,
        true,
    )?;
    let file = checkpoint::checkpoints_path(&config.audit.path);
    let publisher = checkpoint::publish::Publisher::new(
        audit.clone(),
        signer,
        file,
        settings.webhook_url.clone(),
    );
    let from = match &source {
        checkpoint::KeySource::Env => checkpoint::KEY_ENV.to_owned(),
        checkpoint::KeySource::File(path) => path.display().to_string(),
        checkpoint::KeySource::Generated(path) => {
            tracing::warn!(
                "generated a new audit signing key in {}; keep its public key off this host",
                path.display()
            );
            path.display().to_string()
        }
    };
    tracing::info!(
        "audit checkpoints: {} (every {} s when the history grew), Ed25519 public key {} (key from {from})",
        publisher.file().display(),
        settings.interval.as_secs(),
        publisher.public_key(),
    );
    publisher.spawn(settings.interval, shutdown.clone());
    Ok(publisher)
}

/// Binds the listen address. Several stdio gateways (one per client-spawned
/// server) cannot share a port, and each still needs a dashboard for its held
/// calls: in stdio mode a taken port falls back to a free one.
async fn bind(config: &Config, stdio: bool) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(config.listen).await {
        Err(e) if stdio => {
            tracing::warn!(
                "cannot listen on {} ({e}); using a free port for the dashboard",
                config.listen
            );
            tokio::net::TcpListener::bind((config.listen.ip(), 0)).await
        }
        other => other,
    }
}

/// Writes the generated token's login link to the login file, so that
/// `airlock login-link` can show it again; returns the file and the link.
fn write_login_file(gw: &Gateway) -> Option<(PathBuf, String)> {
    let token = GENERATED_TOKEN.get()?;
    let path = login_file::path(&gw.config.audit.path);
    let link = login_file::link(&gw.config.public_url, token);
    match login_file::write(&path, &link) {
        Ok(()) => Some((path, link)),
        Err(e) => {
            tracing::warn!(
                "could not write the login link to {}: {e}; set AIRLOCK_APPROVER_TOKEN",
                path.display()
            );
            None
        }
    }
}

/// Prints where to connect; the first line on stdout in serve mode is
/// machine-readable (tests and scripts wait for it).
fn announce(gw: &Gateway, addr: SocketAddr, stdio: bool, login: Option<&(PathBuf, String)>) {
    let base = &gw.config.public_url;
    if stdio {
        // stdout belongs to the protocol and stderr often ends up in log files
        // an agent can read: the generated token is only in the private file.
        match login {
            Some((path, _)) => tracing::info!(
                "dashboard: {base}/ (login link in {}, readable only by you; `airlock login-link` prints it)",
                path.display()
            ),
            None => tracing::info!("dashboard: {base}/"),
        }
        return;
    }
    let paths: Vec<String> = if gw.config.quick {
        vec![format!("http://{addr}/mcp")]
    } else {
        gw.upstreams
            .keys()
            .map(|n| format!("http://{addr}/mcp/{n}"))
            .collect()
    };
    output::say(format_args!("airlock listening on http://{addr}"));
    for p in paths {
        output::say(format_args!("  MCP endpoint: {p}"));
    }
    match (GENERATED_TOKEN.get(), login) {
        (Some(token), login) => {
            output::say(format_args!(
                "  Dashboard:    {}",
                login_file::link(base, token)
            ));
            output::say(format_args!("  Approver token: {token}"));
            let again = match login {
                Some(_) => {
                    let audit = std::fs::canonicalize(&gw.config.audit.path)
                        .unwrap_or_else(|_| gw.config.audit.path.clone());
                    format!(
                        "; `airlock login-link --audit {}` prints the link again, with --token the token alone",
                        audit.display()
                    )
                }
                None => String::new(),
            };
            output::say(format_args!(
                "  (the dashboard link carries the same token{again})"
            ));
        }
        (None, _) => output::say(format_args!("  Dashboard:    {base}/")),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT. Both are hooked before this
/// returns (before the start-up text says the gateway is up), so a signal
/// that follows the first stdout line always means a graceful end.
fn spawn_signal_handler(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot listen for SIGTERM/SIGINT: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        // Cancel first: nothing that happens to the log line may stop the shutdown.
        shutdown.cancel();
        tracing::info!(%signal, "shutting down");
    });
}

/// Graceful end: deny open holds, close every session and shared child (no
/// orphaned processes), and flush the audit writer.
async fn finish(gw: &Gateway) {
    crate::hold::deny_all_for_shutdown(gw).await;
    // Let calls already forwarded finish (bounded) before their upstreams end.
    let grace = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < grace
        && gw.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = gw.sessions.iter().map(|s| s.id.clone()).collect();
    let closing = ids.iter().map(|id| gw.close_session(id));
    futures::future::join_all(closing).await;
    futures::future::join_all(gw.upstreams.values().map(|u| u.close_shared())).await;
    gw.catalog.close().await;
    gw.approvals.shutdown().await;
    gw.audit.flush().await;
}

/// `airlock check`: validates each file; 0 when all are valid.
fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        let is_config = file.extension().is_some_and(|e| e == "toml");
        let result = if is_config {
            check_config(file)
        } else {
            check_policy(file)
        };
        match result {
            Ok(summary) => println!("ok: {}: {summary}", file.display()),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `airlock check POLICY --against TARGET`: the policy's outcome per tool of
/// a live server (see `inspect.rs`).
async fn check_against(
    files: &[PathBuf],
    target: &str,
    format: crate::cli::CheckFormat,
) -> anyhow::Result<ExitCode> {
    let [file] = files else {
        bail!("--against takes exactly one policy file");
    };
    let policy = policy::load_file(file)?;
    for warning in policy::lint(&policy) {
        eprintln!("warning: {}: {warning}", file.display());
    }
    let tools = crate::inspect::list_tools(target).await?;
    let rows = crate::inspect::rows(&policy, &tools);
    match format {
        crate::cli::CheckFormat::Table => println!("{}", crate::inspect::table(&rows)),
        crate::cli::CheckFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&crate::inspect::json_rows(&rows))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn check_policy(file: &Path) -> Result<String, String> {
    let policy = policy::load_file(file).map_err(|e| e.to_string())?;
    for warning in policy::lint(&policy) {
        eprintln!("warning: {}: {warning}", file.display());
    }
    Ok(format!(
        "{}, {} rule(s), default {}",
        policy.format.as_str(),
        policy.rules().len(),
        policy.default.as_str()
    ))
}

/// Groups a policy names (`approval.groups`, `escalate_to`) that no
/// `[[approver]]` of the config is in: nobody could decide those calls.
fn group_warnings(config: &config::Config, policy: &policy::Policy) -> Vec<String> {
    let mut out = Vec::new();
    for rule in policy.rules() {
        let q = &rule.quorum;
        for group in q.groups.iter().chain(&q.escalate_to) {
            if config.group_members(group).is_empty() {
                out.push(format!(
                    "rules.{}.approval names group `{group}`, which no [[approver]] is in: nobody can decide its calls that way",
                    rule.key
                ));
            }
        }
        let deciders = if q.groups.is_empty() {
            config.approvers.len()
        } else {
            config
                .approvers
                .iter()
                .filter(|a| a.groups.iter().any(|g| q.groups.contains(g)))
                .count()
        };
        if q.approvers as usize > deciders {
            out.push(format!(
                "rules.{}.approval.approvers is {} but only {deciders} approver(s) may decide its calls: they can only be denied or time out",
                rule.key, q.approvers
            ));
        }
    }
    out
}

fn check_config(file: &Path) -> Result<String, String> {
    let config = config::load(file).map_err(|e| e.to_string())?;
    for up in &config.upstreams {
        if let Some(path) = &up.policy {
            check_policy(path).map_err(|e| format!("upstream `{}`: {e}", up.name))?;
            if let Ok(policy) = policy::load_file(path) {
                for warning in group_warnings(&config, &policy) {
                    eprintln!("warning: {}: {warning}", path.display());
                }
            }
        }
    }
    let sso = match &config.oidc {
        Some(o) => format!(
            ", single sign-on with {} ({} group(s) mapped)",
            o.issuer,
            o.roles.len()
        ),
        None => String::new(),
    };
    Ok(format!(
        "{} upstream(s), {} approver(s){sso}",
        config.upstreams.len(),
        config.approvers.len()
    ))
}

//! Airlock: an MCP gateway that puts a human in the loop.
//!
//! # Layout
//!
//! - [`cli`], [`app`]: flags and wiring (`main` only parses and calls `app::run`).
//! - [`config`]: `airlock.toml` → validated [`config::Config`].
//! - [`policy`]: Airlock JSON, PolicyLayer JSON and Intercept YAML, compiled
//!   once into one rule set with conditions; [`reload`] swaps it live.
//! - [`jsonrpc`]: message framing; the few typed bits the gateway reads, found
//!   by one pass over the bytes (`jsonrpc/scan.rs`) that every later reader shares.
//! - [`era`]: handshake era vs stateless (2026-07-28) era: detection, header checks.
//! - [`http_agent`], [`stdio_agent`]: the agent side (Streamable HTTP, stdio).
//! - [`upstream`]: the server side (stdio child, Streamable HTTP).
//! - [`gateway`]: shared state, sessions, and the forwarding of one message.
//! - [`gate`]: the interception — `tools/call` decisions, `tools/list` filtering.
//! - [`inspect`]: `airlock check --against`: a policy's outcome per tool of a live server.
//! - [`catalog`]: every upstream's tools (the dashboard's Tools page), with a
//!   risk class read from their annotations.
//! - [`hold`]: calls waiting for a human: holds the agent's request, records
//!   the outcome, releases or refuses the call; asks the agent's own user by
//!   MCP elicitation where the rule says so (`hold::elicit`, `approval.via`).
//! - [`approvals`]: pending approvals as a service behind a store (in memory,
//!   or PostgreSQL shared by replicas with `[store] url`): decisions by
//!   compare-and-set, timeouts, leases; knows nothing of transports or the
//!   gateway (`docs/approvals-service.md`, `docs/deploy.md`).
//! - [`tasks`]: held calls as tasks (2026-07-28 tasks extension); with a
//!   shared store kept in PostgreSQL, answered by any replica and adopted
//!   by a survivor when the replica running one dies.
//! - [`pins`]: every tool definition's fingerprint, pinned at first sight
//!   (rug-pull defence); [`grants`]: standing approvals ("approve for a
//!   while"); [`power`]: what both do to calls, their events and audit rows;
//!   [`quorum`]: who may decide a hold and how many must approve (two-person
//!   rule, approver groups, escalation); [`power_store`]: all four kept in
//!   PostgreSQL and mirrored by every replica (`[store] url`).
//! - [`budgets`]: `rate_limit` budgets of stateless-era agents shared by
//!   replicas (`[store] url`): GCRA in one PostgreSQL statement per call.
//! - [`audit`]: the hash-chained history of every outcome; embedded SQLite,
//!   or one chain in PostgreSQL shared by replicas (`[store] url`).
//! - [`pgtls`]: TLS to PostgreSQL (rustls) as the URL's `sslmode` says.
//! - [`auth`]: Origin/Host checks and constant-time token lookup.
//! - [`login`]: browser logins (signed cookies, CSRF); [`oidc`]: single
//!   sign-on with an OpenID Connect provider, ending in the same kind of login.
//! - [`slack`]: Slack messages per held call (a notifier subscribed to
//!   [`approvals`]), decision links, Slack-app buttons.
//! - [`html`]: the shell and escaper of the server-made pages (Slack's
//!   confirm page, the sign-in pages).
//! - [`server`]: the HTTP routes; [`listener`]: the accept loop serving them
//!   (connection cap, header and idle timeouts, `TCP_NODELAY`).
//!
//! # The path of one `tools/call`
//!
//! `http_agent` reads and frames the body, finds the session (or checks the
//! stateless-era headers against the body), and calls `Gateway::forward`.
//! `gate::decide_call` matches the tool against the live policy (and, when the
//! matched rule has conditions, its arguments, agent, upstream and session): allowed calls
//! go to the upstream `Link` as their original bytes (a stateless-era call
//! under a `rate_limit` rule with `[store] url` first spends its budget in
//! PostgreSQL: `gate::judge`, `budgets`, then `Admitted::spend`); refusals are answered
//! with a `CallToolResult` (`isError: true`); held calls wait in `hold`:
//! `approvals.create` stores the pending approval, `approvals.wait` resolves
//! when anyone decides on any replica (or it times out, or the agent goes
//! away), and the holding replica records the outcome, then forwards the
//! original bytes upstream or refuses.
// The one exception is `memory` (two glibc calls to return freed memory).
#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod era;
pub mod events;
pub mod gate;
pub mod gateway;
pub mod grants;
pub mod hold;
pub mod html;
pub mod http_agent;
pub mod inspect;
pub mod jsonrpc;
pub mod listener;
pub mod login;
pub mod memory;
pub mod metrics;
pub mod oidc;
pub mod pgtls;
pub mod pins;
pub mod policy;
pub mod power;
pub mod power_store;
pub mod quorum;
pub mod reload;
pub mod remote;
pub mod server;
pub mod slack;
pub mod stdio_agent;
pub mod suggest;
pub mod tasks;
pub mod upstream;

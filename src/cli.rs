//! Command-line interface (clap). `main` parses, `app` runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version,
    about = "An MCP gateway that puts a human in the loop",
    long_about = "Airlock sits between AI agents and MCP servers. Every tools/call meets a policy: \
allowed, denied with a reason, rate-limited, hidden, or held until a human approves it.\n\n\
Quick start:\n  airlock serve --policy policies/everything.json -- npx -y @modelcontextprotocol/server-everything"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve agents over Streamable HTTP (at /mcp, or /mcp/{upstream} with --config).
    Serve(ServeArgs),
    /// Serve one agent over stdio (for clients that spawn their servers, e.g. Claude Desktop).
    Stdio(ServeArgs),
    /// Validate policy files and configs; prints errors with file:line:column and warnings.
    Check {
        /// Policy files (.json, .yaml) or configs (.toml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Connect to this MCP server (a command line, split on blanks, or an
        /// http(s) URL), list its tools and show what the policy does to each.
        #[arg(long, value_name = "COMMAND|URL")]
        against: Option<String>,
        /// Output of --against: a table or JSON.
        #[arg(long, value_enum, default_value_t = CheckFormat::Table, requires = "against")]
        format: CheckFormat,
    },
    /// Run a candidate policy against the recorded calls of an audit store and
    /// list those whose outcome would change.
    Replay {
        /// The candidate policy.
        policy: PathBuf,
        #[arg(long, default_value = "airlock.db")]
        audit: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// Only calls to this upstream (policies are per upstream).
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long, value_enum, default_value_t = CheckFormat::Table)]
        format: CheckFormat,
    },
    /// Inspect the audit history (reads the database directly).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List the calls waiting for approval on a running gateway.
    Pending(RemoteArgs),
    /// Approve a held call on a running gateway.
    Approve(DecideArgs),
    /// Deny a held call on a running gateway.
    Deny(DecideArgs),
    /// Pinned tool definitions on a running gateway: list, pin, accept a change.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Standing approvals (grants) on a running gateway: list, revoke.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Print the login link of a gateway running on this machine with a
    /// generated approver token (read from `<audit>.login`, readable only by
    /// the gateway's user).
    LoginLink {
        /// The running gateway's audit database (its --audit).
        #[arg(long, default_value = "airlock.db")]
        audit: PathBuf,
        /// Print only the approver token (e.g. for AIRLOCK_APPROVER_TOKEN).
        #[arg(long)]
        token: bool,
    },
}

/// How `airlock check --against` prints its answer.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first broken row and exits 1 if there is one.
    /// With --checkpoint, also checks the store against signed checkpoints,
    /// which catches rows removed from the end and a re-hashed chain.
    Verify {
        #[arg(long, default_value = "airlock.db")]
        audit: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// A checkpoints file (`<audit>.checkpoints`, or a copy kept elsewhere).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The Ed25519 public key (base64 or hex) the checkpoints must be signed
        /// with (`airlock audit public-key`). --checkpoint needs this,
        /// --public-key-file or --trust-embedded-key.
        #[arg(long, value_name = "KEY", requires = "checkpoint")]
        public_key: Option<String>,
        /// A file holding that public key (e.g. `airlock audit public-key > audit.pub`).
        #[arg(
            long,
            value_name = "FILE",
            requires = "checkpoint",
            conflicts_with = "public_key"
        )]
        public_key_file: Option<PathBuf>,
        /// Check each checkpoint against the public key written in it. This proves
        /// nothing against someone who rewrote the store and re-signed the
        /// checkpoints with a key of their own; it only shows that the file is
        /// consistent with the store.
        #[arg(long, requires = "checkpoint", conflicts_with_all = ["public_key", "public_key_file"])]
        trust_embedded_key: bool,
    },
    /// Print the public key that verifies this store's checkpoints.
    PublicKey {
        #[arg(long, default_value = "airlock.db")]
        audit: PathBuf,
        /// The signing key file [default: AIRLOCK_AUDIT_SIGNING_KEY, else <audit>.key].
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Write the history as JSON lines or CSV to stdout.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::audit::ExportFormat,
        /// Only rows at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only rows before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        matching: ExportMatch,
        #[arg(long, default_value = "airlock.db")]
        audit: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// Where `audit verify|export` and `replay` read the history instead of
/// the `--audit` file: the shared PostgreSQL store (`[store] url`).
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArg {
    /// Read the audit chain in this PostgreSQL store (`postgres://…`, the
    /// gateway's `[store] url`) instead of the --audit file.
    #[arg(long, value_name = "URL", conflicts_with_all = ["store_env", "audit"])]
    pub store: Option<String>,
    /// Like --store, with the URL read from this environment variable (keeps
    /// the password off the command line and out of `ps`).
    #[arg(long, value_name = "NAME", conflicts_with = "audit")]
    pub store_env: Option<String>,
}

/// Column filters of `audit export`: exact, or a glob with `*` / `?`.
#[derive(Args, Debug, Clone, Default)]
pub struct ExportMatch {
    /// Only rows for this tool (exact, or a glob like `delete_*`).
    #[arg(long)]
    pub tool: Option<String>,
    /// Only rows for this upstream.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Only rows of this agent (e.g. `claude-code*`).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only rows with this decision (`allowed`, `denied`, `approved`, …).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only rows decided by this approver.
    #[arg(long)]
    pub decider: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Base URL of the running gateway.
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Approver token (never pass it as a flag: it would show in `ps`).
    #[arg(
        long = "token-env",
        default_value = "AIRLOCK_APPROVER_TOKEN",
        hide = true
    )]
    pub token_env: String,
}

/// `airlock tools …` (talks to a running gateway's API).
#[derive(Subcommand, Debug)]
pub enum ToolsCommand {
    /// Every pinned tool; changed ones with the diff of their definition.
    List {
        /// Only this upstream.
        #[arg(long)]
        upstream: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List an upstream's tools now and pin every current definition (admin).
    Pin {
        upstream: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Accept the changed definition of a tool: it becomes the pin (admin).
    Accept {
        upstream: String,
        tool: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// `airlock grants …` (talks to a running gateway's API).
#[derive(Subcommand, Debug)]
pub enum GrantsCommand {
    /// Live grants, soonest to expire first.
    List(RemoteArgs),
    /// End a grant now.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DecideArgs {
    /// The pending call's id (from `airlock pending`).
    pub id: String,
    /// A note for the agent and the audit history.
    #[arg(long)]
    pub comment: Option<String>,
    /// With `approve`: also let later matching calls pass for this many minutes (a grant).
    #[arg(long, value_name = "MINUTES")]
    pub grant: Option<f64>,
    /// Whom the grant covers: every session of the agent, or only this session.
    #[arg(long, value_parser = ["agent", "session"], default_value = "agent", requires = "grant")]
    pub grant_scope: String,
    /// The grant covers only calls with exactly these arguments.
    #[arg(long, requires = "grant")]
    pub exact_arguments: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Full configuration (airlock.toml); excludes --policy, --url and an upstream command.
    #[arg(long, conflicts_with_all = ["policy", "url"])]
    pub config: Option<PathBuf>,
    /// Policy for the single upstream of quick mode (default: allow everything).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080, or `listen` from the config].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Audit database [default: airlock.db, or `[audit] path` from the config].
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// Streamable HTTP upstream URL (quick mode), instead of a command.
    #[arg(long, conflicts_with = "upstream_command")]
    pub url: Option<String>,
    /// With --config: serve only this [[upstream]] (stdio mode serves the first by default).
    #[arg(long, requires = "config")]
    pub upstream: Option<String>,
    /// The upstream server command (quick mode), after `--`.
    #[arg(last = true, value_name = "UPSTREAM COMMAND")]
    pub upstream_command: Vec<String>,
}

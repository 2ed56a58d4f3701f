//! Held calls as tasks (2026-07-28 `io.modelcontextprotocol/tasks` extension).
//!
//! A stateless-era client that declares the extension gets a task at once
//! instead of an open stream: `status: "working"`, `statusMessage: "waiting
//! for human approval"`. It polls `tasks/get` until the task is `completed`
//! (with the upstream's result, or the refusal — an `isError` result still
//! completes a task) or `failed` (a JSON-RPC error). `tasks/cancel` withdraws
//! the hold. Airlock answers `tasks/*` for its own task ids only; other ids
//! pass through to the upstream.
//!
//! An approved call whose upstream answers `input_required` (MRTR) puts the
//! task in `input_required` with the upstream's `inputRequests`; the agent
//! answers through `tasks/update` (several updates may each answer some of
//! the keys), and once every key is answered Airlock retries the call
//! upstream with the `inputResponses` and the upstream's `requestState`,
//! through the gateway like the agent's own retry would go (so the policy
//! sees it, as the continuation of an approved call), and the task goes on
//! with that answer.
//!
//! With `[store] url` every task is also kept in PostgreSQL ([`shared`]):
//! `tasks/get` and `tasks/cancel` work through any replica, and when the
//! replica that accepted a task dies, a survivor adopts its hold
//! ([`adopt_orphans`]), runs the call once approved, and completes the task.
//! `tasks/update` (answering an upstream's `input_required`) is answered by
//! the replica running the task.

pub mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::approvals::{StoreError, StoredApproval};
use crate::era::ParamsPeek;
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::hold;
use crate::jsonrpc::{self, Id, Message, code};
use crate::upstream::{Reply, ReplyBody};

pub const EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// How often clients are asked to poll.
const POLL_INTERVAL_MS: u64 = 1000;
/// How long a finished task stays readable.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

struct Task {
    pending_id: String,
    session_key: String,
    status: &'static str,
    status_message: String,
    result: Option<Value>,
    error: Option<Value>,
    created_at: String,
    updated_at: String,
    ttl_ms: u64,
    /// When the task may be forgotten (set once it finishes).
    forget_after: Option<Instant>,
    /// When its ttl runs out: a failed write to the shared store is retried
    /// until then at most.
    expires: Instant,
    /// A write of its state to the shared store failed and is being retried
    /// (one retry loop per task; it writes whatever state is newest).
    persist_retrying: bool,
    /// The call as the upstream gets it (without the tasks extension): the
    /// base of a retry with the agent's input.
    request: Message,
    /// While `input_required`: the upstream's questions, its `requestState`,
    /// and the answers the agent gave so far (by key).
    input: Option<Input>,
}

struct Input {
    requests: serde_json::Map<String, Value>,
    request_state: Option<Value>,
    answers: serde_json::Map<String, Value>,
}

impl Input {
    /// The questions still waiting for an answer.
    fn open(&self) -> serde_json::Map<String, Value> {
        self.requests
            .iter()
            .filter(|(key, _)| !self.answers.contains_key(*key))
            .map(|(key, request)| (key.clone(), request.clone()))
            .collect()
    }
}

/// Airlock's own tasks by id: those this replica runs, and with a shared
/// store every replica's in the database. Both behind `Arc`s: a failed
/// write to the store is retried by a task of its own.
#[derive(Default)]
pub struct Tasks {
    local: Arc<DashMap<String, Task>>,
    shared: Option<Arc<shared::TaskStore>>,
    /// Holds this replica adopted whose adoption failed on a store error:
    /// tried again at the next sweep (this replica owns them now, so the
    /// store would not hand them out again). A std mutex: never held
    /// across an await.
    adopt_again: std::sync::Mutex<Vec<StoredApproval>>,
}

/// Why an adopted hold could not be carried on or ended this time.
#[derive(Debug, thiserror::Error)]
enum AdoptError {
    #[error("shared store: {0}")]
    Store(#[from] StoreError),
    #[error("audit history: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// Backoff between retries of a task's state write: from the first to the
/// longest pause, doubling.
const PERSIST_RETRY_FIRST: Duration = Duration::from_millis(200);
const PERSIST_RETRY_LONGEST: Duration = Duration::from_secs(5);

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Marks a task changed: its `updated_at` strictly increases (a change in
/// the same millisecond as the last gets the next one), because the shared
/// store keeps the state with the latest `updated_at` and refuses an older
/// one (a late retry must not undo a newer state).
fn touch(task: &mut Task) {
    let at = Utc::now();
    let last = chrono::DateTime::parse_from_rfc3339(&task.updated_at)
        .map(|t| t.with_timezone(&Utc) + chrono::Duration::milliseconds(1))
        .unwrap_or(at);
    task.updated_at = at.max(last).to_rfc3339_opts(SecondsFormat::Millis, true);
}

/// Whether the request declared the tasks extension in its client capabilities.
pub fn declared(peek: &ParamsPeek<'_>) -> bool {
    #[derive(Deserialize)]
    struct Caps {
        #[serde(default)]
        extensions: serde_json::Map<String, Value>,
    }
    peek.meta
        .as_ref()
        .and_then(|m| m.client_capabilities)
        .and_then(|raw| serde_json::from_str::<Caps>(raw.get()).ok())
        .is_some_and(|c| c.extensions.contains_key(EXTENSION))
}

/// The approved call as the upstream gets it when Airlock answers with its own
/// task: the same request without the tasks extension in its client
/// capabilities, so the upstream answers with a result (which completes
/// Airlock's task) and not with a task of its own. Everything else is kept,
/// key order and numbers included.
pub fn without_extension(message: &Message) -> Message {
    const CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    let Ok(mut value) = serde_json::from_slice::<Value>(message.raw()) else {
        return message.clone();
    };
    let removed = value
        .pointer_mut("/params/_meta")
        .and_then(|meta| meta.get_mut(CAPABILITIES))
        .and_then(|caps| caps.get_mut("extensions"))
        .and_then(Value::as_object_mut)
        .and_then(|extensions| extensions.shift_remove(EXTENSION))
        .is_some();
    if removed {
        Message::from_value(&value)
    } else {
        message.clone()
    }
}

impl Tasks {
    /// Tasks kept in memory and, with a shared store, in its database.
    pub fn new(pool: Option<deadpool_postgres::Pool>) -> Tasks {
        Tasks {
            local: Default::default(),
            shared: pool.map(|pool| Arc::new(shared::TaskStore::new(pool))),
            adopt_again: Default::default(),
        }
    }

    /// Writes a task just created to the shared store (nothing without
    /// one), with what a survivor needs to run its call: the agent, the
    /// upstream and the agent's `Mcp-*` headers. A failure is logged: the
    /// task then lives on this replica only.
    pub async fn share(
        &self,
        task_id: &str,
        pending_id: uuid::Uuid,
        agent: &str,
        upstream: &str,
        headers: Option<&axum::http::HeaderMap>,
    ) {
        let Some(store) = &self.shared else {
            return;
        };
        let Some(row) = self.local.get(task_id).map(|t| shared::TaskRow {
            id: task_id.to_owned(),
            pending_id,
            session_key: t.session_key.clone(),
            agent: agent.to_owned(),
            upstream: upstream.to_owned(),
            request: t.request.text().to_owned(),
            headers: headers.map(shared::mcp_headers),
            status: t.status.to_owned(),
            status_message: t.status_message.clone(),
            result: None,
            error: None,
            created_at: t.created_at.clone(),
            updated_at: t.updated_at.clone(),
            ttl_ms: t.ttl_ms as i64,
        }) else {
            return;
        };
        if let Err(e) = store.insert(&row).await {
            tracing::warn!(task = %task_id, "task not shared with other replicas: {e}");
        }
    }

    /// Writes a task's state to the shared store (after `finish` or
    /// `mark_cancelled`), so every replica's `tasks/get` sees it. A write
    /// that fails (the database briefly away) is retried in the background,
    /// with backoff, until it lands or the task's ttl runs out.
    pub async fn persist(&self, task_id: &str) {
        let Some(store) = &self.shared else {
            return;
        };
        let Err(e) = write_state(store, &self.local, task_id).await else {
            return;
        };
        let start_retrying = self.local.get_mut(task_id).is_some_and(|mut t| {
            let idle = !t.persist_retrying;
            t.persist_retrying = true;
            idle
        });
        tracing::warn!(task = %task_id, "task state not shared with other replicas yet (retrying): {e}");
        if start_retrying {
            let (store, local) = (store.clone(), self.local.clone());
            tokio::spawn(retry_persist(store, local, task_id.to_owned()));
        }
    }

    /// Forgets a task this replica no longer runs (another adopted it).
    pub fn forget_local(&self, task_id: &str) {
        self.local.remove(task_id);
    }

    /// Takes over a task whose hold this replica adopted from a dead one.
    fn adopt(&self, row: &shared::TaskRow, request: Message, timeout: Duration) {
        let task = Task {
            pending_id: row.pending_id.to_string(),
            session_key: row.session_key.clone(),
            status: "working",
            status_message: "waiting for human approval".into(),
            result: None,
            error: None,
            created_at: row.created_at.clone(),
            updated_at: now(),
            ttl_ms: (timeout + KEEP_FINISHED).as_millis() as u64,
            forget_after: None,
            expires: Instant::now() + timeout + KEEP_FINISHED,
            persist_retrying: false,
            request,
            input: None,
        };
        self.local.insert(row.id.clone(), task);
    }

    /// Ends the task of a hold nobody will run any more (abandoned, or
    /// resolved on a replica that died before running it), in the shared
    /// store: the agent's next `tasks/get` reads why. A task already
    /// finished is left as it is.
    pub async fn end_orphaned(&self, pending_id: uuid::Uuid, why: &str) -> Result<(), StoreError> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        let Some(row) = store.of_pending(pending_id).await? else {
            return Ok(());
        };
        let why = match row.status.as_str() {
            "working" => why.to_owned(),
            "input_required" => format!(
                "{why} The upstream was waiting for the agent's input, which no replica can pass on to it now."
            ),
            _ => return Ok(()),
        };
        let result = json!({
            "content": [{ "type": "text", "text": why }],
            "isError": true,
            "_meta": { "airlock.decision": "denied" },
        });
        let update = shared::TaskUpdate {
            status: "completed",
            status_message: "refused",
            result: Some(&result),
            error: None,
            updated_at: &now(),
            forget_after_secs: Some(KEEP_FINISHED.as_secs_f64()),
        };
        store.update(&row.id, &update).await?;
        Ok(())
    }

    /// Keeps an adopted hold whose adoption failed on a store error, for
    /// the next sweep.
    fn adopt_later(&self, stored: StoredApproval) {
        self.adopt_again
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stored);
    }

    /// The adopted holds left for this sweep by the last one.
    fn left_to_adopt(&self) -> Vec<StoredApproval> {
        std::mem::take(&mut *self.adopt_again.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Creates a `working` task for a held call; returns its id and the
    /// `CreateTaskResult` to answer the `tools/call` with.
    pub fn create(
        &self,
        pending_id: &str,
        session_key: &str,
        timeout: Duration,
        request: &Message,
    ) -> (String, Value) {
        let id = uuid::Uuid::new_v4().to_string();
        let at = now();
        let ttl_ms = (timeout + KEEP_FINISHED).as_millis() as u64;
        let task = Task {
            pending_id: pending_id.to_owned(),
            session_key: session_key.to_owned(),
            status: "working",
            status_message: "waiting for human approval".into(),
            result: None,
            error: None,
            created_at: at.clone(),
            updated_at: at,
            ttl_ms,
            forget_after: None,
            expires: Instant::now() + timeout + KEEP_FINISHED,
            persist_retrying: false,
            request: without_extension(request),
            input: None,
        };
        let created = json!({
            "resultType": "task",
            "taskId": id,
            "status": task.status,
            "statusMessage": task.status_message,
            "createdAt": task.created_at,
            "lastUpdatedAt": task.updated_at,
            "ttlMs": ttl_ms,
            "pollIntervalMs": POLL_INTERVAL_MS,
            "_meta": { crate::era::META_SERVER_INFO: crate::era::airlock_server_info() },
        });
        self.local.insert(id.clone(), task);
        (id, created)
    }

    /// Finishes a task with the final JSON-RPC response of the call.
    pub fn finish(&self, task_id: &str, response: &Message) {
        #[derive(Deserialize)]
        struct Final {
            result: Option<Value>,
            error: Option<Value>,
        }
        let Some(mut task) = self.local.get_mut(task_id) else {
            return;
        };
        if task.status == "cancelled" {
            return;
        }
        let parsed: Final = serde_json::from_str(response.text()).unwrap_or(Final {
            result: None,
            error: None,
        });
        touch(&mut task);
        match (parsed.result, parsed.error) {
            (Some(result), _) if is_input_required(&result) => {
                // MRTR: the upstream asks the agent something; the task
                // waits for `tasks/update` (nothing is finished yet).
                task.status = "input_required";
                task.status_message =
                    "the upstream asks for input: answer with tasks/update".into();
                task.input = Some(Input {
                    requests: result
                        .get("inputRequests")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                    request_state: result.get("requestState").cloned(),
                    answers: Default::default(),
                });
                return;
            }
            (Some(result), _) => {
                let refused = result
                    .get("isError")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                task.status = "completed";
                task.status_message = if refused {
                    "refused".into()
                } else {
                    "approved and completed".into()
                };
                task.result = Some(result);
            }
            (None, error) => {
                task.status = "failed";
                task.status_message = "the upstream answered with an error".into();
                task.error = error;
            }
        }
        task.input = None;
        task.forget_after = Some(Instant::now() + KEEP_FINISHED);
    }

    /// Records the agent's answers to an `input_required` task (answers to
    /// keys it was not asked, or already answered, are ignored). Once every
    /// question is answered, returns the retry to send upstream: the call
    /// with `inputResponses` and the upstream's `requestState`; the task is
    /// `working` again meanwhile.
    fn answer_input(
        &self,
        task_id: &str,
        responses: serde_json::Map<String, Value>,
    ) -> Option<Message> {
        let mut task = self.local.get_mut(task_id)?;
        let input = task.input.as_mut()?;
        for (key, response) in responses {
            if input.requests.contains_key(&key) {
                input.answers.entry(key).or_insert(response);
            }
        }
        if !input.open().is_empty() {
            touch(&mut task);
            return None;
        }
        let input = task.input.take()?;
        let retry = with_input(&task.request, input.answers, input.request_state);
        task.status = "working";
        task.status_message = "continuing with the agent's input".into();
        touch(&mut task);
        Some(retry)
    }

    fn is_waiting_for_input(&self, task_id: &str) -> bool {
        self.local
            .get(task_id)
            .is_some_and(|t| t.status == "input_required")
    }

    pub fn mark_cancelled(&self, task_id: &str) {
        if let Some(mut task) = self.local.get_mut(task_id) {
            task.status = "cancelled";
            task.status_message = "cancelled by the agent".into();
            touch(&mut task);
            task.forget_after = Some(Instant::now() + KEEP_FINISHED);
        }
    }

    /// Forgets finished tasks whose time is up.
    pub async fn prune(&self) {
        let now = Instant::now();
        self.local
            .retain(|_, t| t.forget_after.is_none_or(|at| at > now));
        if let Some(store) = &self.shared
            && let Err(e) = store.prune().await
        {
            tracing::debug!("finished tasks not pruned from the store: {e}");
        }
    }

    fn view(task: &Task, id: &str) -> Value {
        let mut v = json!({
            "resultType": "complete",
            "taskId": id,
            "status": task.status,
            "statusMessage": task.status_message,
            "createdAt": task.created_at,
            "lastUpdatedAt": task.updated_at,
            "ttlMs": task.ttl_ms,
            "pollIntervalMs": POLL_INTERVAL_MS,
            "_meta": { crate::era::META_SERVER_INFO: crate::era::airlock_server_info() },
        });
        if let Some(result) = &task.result {
            v["result"] = result.clone();
        }
        if let Some(error) = &task.error {
            v["error"] = error.clone();
        }
        if let Some(input) = task
            .input
            .as_ref()
            .filter(|_| task.status == "input_required")
        {
            v["inputRequests"] = Value::Object(input.open());
        }
        v
    }
}

/// Writes task `task_id`'s state as this replica has it now; returns the
/// `updated_at` written (`None`: no such task here any more).
async fn write_state(
    store: &shared::TaskStore,
    local: &DashMap<String, Task>,
    task_id: &str,
) -> Result<Option<String>, crate::approvals::StoreError> {
    let Some((status, message, result, error, updated_at, finished)) =
        local.get(task_id).map(|t| {
            (
                t.status,
                t.status_message.clone(),
                stored_result(&t),
                t.error.clone(),
                t.updated_at.clone(),
                t.forget_after.is_some(),
            )
        })
    else {
        return Ok(None);
    };
    let update = shared::TaskUpdate {
        status,
        status_message: &message,
        result: result.as_ref(),
        error: error.as_ref(),
        updated_at: &updated_at,
        forget_after_secs: finished.then(|| KEEP_FINISHED.as_secs_f64()),
    };
    store.update(task_id, &update).await?;
    Ok(Some(updated_at))
}

/// Retries the write of a task's state until the newest state landed, the
/// task is gone from this replica, or its ttl ran out. Each attempt writes
/// the state as it is then; the store refuses anything older than what it
/// has, so a slow attempt cannot undo a newer state.
async fn retry_persist(
    store: Arc<shared::TaskStore>,
    local: Arc<DashMap<String, Task>>,
    task_id: String,
) {
    let mut pause = PERSIST_RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PERSIST_RETRY_LONGEST);
        let written = match write_state(&store, &local, &task_id).await {
            Ok(None) => return,
            Ok(Some(written)) => Some(written),
            Err(e) => {
                tracing::debug!(task = %task_id, "task state still not shared: {e}");
                None
            }
        };
        // Done when the newest state is written; given up past the ttl.
        let Some(mut task) = local.get_mut(&task_id) else {
            return;
        };
        let landed = written.as_deref() == Some(task.updated_at.as_str());
        if landed || Instant::now() >= task.expires {
            task.persist_retrying = false;
            if landed {
                tracing::info!(task = %task_id, "task state shared with other replicas after a retry");
            } else {
                tracing::warn!(task = %task_id, "task state never shared with other replicas: its ttl ran out");
            }
            return;
        }
    }
}

/// What the store's `result` column holds: the final result, or while the
/// task waits for input the questions still open (`{"inputRequests": …}`),
/// so `tasks/get` through another replica shows them.
fn stored_result(task: &Task) -> Option<Value> {
    match &task.input {
        Some(input) if task.status == "input_required" => {
            Some(json!({ "inputRequests": input.open() }))
        }
        _ => task.result.clone(),
    }
}

/// Answers `tasks/get|update|cancel` for Airlock's own tasks; `None` passes the request on.
pub async fn answer(gw: &Gateway, ctx: &CallContext, message: &Message) -> Option<Exchange> {
    #[derive(Deserialize)]
    struct P {
        #[serde(rename = "taskId")]
        task_id: String,
    }
    let task_id = message.params::<P>()?.task_id;
    let id = message.id().cloned().unwrap_or_else(Id::null);
    let local = gw
        .tasks
        .local
        .get(&task_id)
        .map(|task| (task.session_key.clone(), task.pending_id.clone()));
    // Not run here: another replica's task, as the shared store has it.
    let elsewhere = match local {
        Some(_) => None,
        None => match gw.tasks.shared.as_ref()?.get(&task_id).await {
            Ok(row) => Some(row?),
            Err(e) => {
                // Most likely the upstream's own task: pass it on rather
                // than fail it because the database is away.
                tracing::warn!(task = %task_id, "task store not read; passing tasks/* on: {e}");
                return None;
            }
        },
    };
    let (owner, pending_id) = match (local, &elsewhere) {
        (Some(found), _) => found,
        (None, Some(row)) => (row.session_key.clone(), row.pending_id.to_string()),
        (None, None) => return None,
    };
    if owner != ctx.session_key {
        // Someone else's task: as unknown as a task that does not exist.
        let error = jsonrpc::error_response(
            &id,
            code::INVALID_PARAMS,
            "Failed to retrieve task: Task not found",
        );
        return Some(Exchange::answer(error, ctx.era));
    }
    let declared = declared(&crate::era::peek(message));
    if !declared {
        // The extension's rule: `tasks/*` only for clients that declare it.
        let error = jsonrpc::error_response_with_data(
            &id,
            code::MISSING_CAPABILITY,
            "Missing required client capability: the io.modelcontextprotocol/tasks extension",
            Some(json!({ "requiredCapabilities": { "extensions": { EXTENSION: {} } } })),
        );
        return Some(Exchange::answer(error, ctx.era));
    }
    if let Some(row) = elsewhere {
        return Some(answer_elsewhere(gw, ctx, message, &id, &row).await);
    }
    let result = match message.method() {
        Some("tasks/get") => gw
            .tasks
            .local
            .get(&task_id)
            .map(|t| Tasks::view(&t, &task_id))?,
        Some("tasks/cancel") => {
            // Cancellation is cooperative (as the extension defines it): a
            // call already decided runs to its end and its task completes.
            // A task waiting for the agent's input has nothing in flight.
            let withdrawn =
                hold::cancel(gw, &pending_id, "cancelled by the agent (tasks/cancel)").await;
            if withdrawn || gw.tasks.is_waiting_for_input(&task_id) {
                gw.tasks.mark_cancelled(&task_id);
                gw.tasks.persist(&task_id).await;
            }
            acknowledged()
        }
        // Answers to an `input_required` task; acknowledged (and otherwise
        // ignored) in any other state, as the extension asks.
        Some("tasks/update") => {
            #[derive(Deserialize)]
            struct Update {
                #[serde(rename = "inputResponses", default)]
                input_responses: serde_json::Map<String, Value>,
            }
            let responses = message
                .params::<Update>()
                .map(|u| u.input_responses)
                .unwrap_or_default();
            let retry = gw.tasks.answer_input(&task_id, responses);
            // Other replicas' tasks/get show the questions still open.
            gw.tasks.persist(&task_id).await;
            if let Some(retry) = retry {
                let ctx = CallContext {
                    upstream: ctx.upstream.clone(),
                    link: ctx.link.clone(),
                    era: ctx.era,
                    session_key: ctx.session_key.clone(),
                    agent: ctx.agent.clone(),
                };
                tokio::spawn(continue_with_input(gw.clone(), ctx, task_id, retry));
            }
            acknowledged()
        }
        _ => return None,
    };
    Some(Exchange::answer(
        jsonrpc::result_response(&id, result),
        ctx.era,
    ))
}

/// Sends the retry of an `input_required` task through the gateway (the
/// policy recognises the continuation of the approved call) and goes on
/// with its answer. Boxed: `Gateway::forward` is what called `answer`.
fn continue_with_input(
    gw: Gateway,
    ctx: CallContext,
    task_id: String,
    retry: Message,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let id = retry.id().cloned().unwrap_or_else(Id::null);
        let response = match gw.forward(&ctx, retry, None).await {
            Ok(exchange) => final_response(exchange.reply, &id).await,
            Err(e) => jsonrpc::error_response(&id, code::UPSTREAM_ERROR, &e.to_string()),
        };
        gw.tasks.finish(&task_id, &response);
        gw.tasks.persist(&task_id).await;
    })
}

/// `tasks/*` for a task another replica runs, from the shared store.
async fn answer_elsewhere(
    gw: &Gateway,
    ctx: &CallContext,
    message: &Message,
    id: &Id,
    row: &shared::TaskRow,
) -> Exchange {
    let answer = match message.method() {
        Some("tasks/get") => jsonrpc::result_response(id, view_of_row(row)),
        Some("tasks/cancel") => {
            // The hold is in the shared approvals store: withdrawn here, its
            // owner's waiter sees it and marks the task cancelled.
            let pending = row.pending_id.to_string();
            hold::cancel(gw, &pending, "cancelled by the agent (tasks/cancel)").await;
            jsonrpc::result_response(id, acknowledged())
        }
        Some("tasks/update") if row.status == "input_required" => jsonrpc::error_response(
            id,
            code::INVALID_PARAMS,
            "Failed to update task: it waits for input on another Airlock replica; send tasks/update to the replica that answered tasks/get with input_required",
        ),
        _ => jsonrpc::result_response(id, acknowledged()),
    };
    Exchange::answer(answer, ctx.era)
}

/// What `tasks/get` answers for a task kept in the shared store.
fn view_of_row(row: &shared::TaskRow) -> Value {
    let mut v = json!({
        "resultType": "complete",
        "taskId": row.id,
        "status": row.status,
        "statusMessage": row.status_message,
        "createdAt": row.created_at,
        "lastUpdatedAt": row.updated_at,
        "ttlMs": row.ttl_ms,
        "pollIntervalMs": POLL_INTERVAL_MS,
        "_meta": { crate::era::META_SERVER_INFO: crate::era::airlock_server_info() },
    });
    match &row.result {
        // While it waits for input the column holds the open questions
        // (`stored_result`), shown as the running replica shows them.
        Some(stored) if row.status == "input_required" => {
            if let Some(open) = stored.get("inputRequests") {
                v["inputRequests"] = open.clone();
            }
        }
        Some(result) => v["result"] = result.clone(),
        None => {}
    }
    if let Some(error) = &row.error {
        v["error"] = error.clone();
    }
    v
}

/// Adopts the task holds of replicas that died (their lease lapsed): this
/// replica becomes their owner, waits for the decision and runs the call
/// like the dead replica would have. Called every heartbeat with a shared
/// store. A hold without a task (its replica died before answering the
/// agent) is ended as abandoned. One whose adoption fails on a store error
/// is tried again at the next sweep, until its approval's timeout.
pub async fn adopt_orphans(gw: &Gateway) {
    let Some(store) = &gw.tasks.shared else {
        return;
    };
    let mut adopted = gw.tasks.left_to_adopt();
    match gw.approvals.adopt_dead().await {
        Ok(new) => adopted.extend(new),
        Err(e) => tracing::warn!("dead replicas' tasks not adopted: {e}"),
    }
    for stored in adopted {
        let Err(e) = adopt_one(gw, store, &stored).await else {
            continue;
        };
        let id = stored.approval.id;
        if Utc::now() < stored.approval.expires_at {
            tracing::warn!(pending = %id, "adopted hold not carried on yet (tried again at the next sweep): {e}");
            gw.tasks.adopt_later(stored);
        } else if stored.resolution.is_none() {
            tracing::warn!(pending = %id, "adopted hold not carried on before its timeout: {e}");
            hold::abandon_adopted(gw, &stored.approval).await;
        } else {
            // Decided and its time is up: its task's row goes with its ttl.
            tracing::warn!(pending = %id, "adopted hold given up: {e}");
        }
    }
}

/// Ends the tasks an earlier run of this replica (same `[store] replica`
/// name) left unfinished after recording their decision: no survivor
/// adopts them, since this replica's lease is alive again. As an adopting
/// survivor would, it says it cannot tell whether the call ran (or that a
/// refused one did not); a failure is retried at the sweeps.
pub async fn settle_leftover_tasks(gw: &Gateway) {
    let Some(store) = &gw.tasks.shared else {
        return;
    };
    let left = match gw.approvals.unfinished_tasks().await {
        Ok(left) => left,
        Err(e) => {
            tracing::warn!("tasks left unfinished by an earlier run not read: {e}");
            return;
        }
    };
    for stored in left {
        if let Err(e) = adopt_one(gw, store, &stored).await {
            tracing::warn!(pending = %stored.approval.id, "task left by an earlier run not ended yet: {e}");
            gw.tasks.adopt_later(stored);
        }
    }
}

/// Carries on, or ends, one adopted hold; `Err` when a store could not be
/// read or written (nothing was started: try again later).
async fn adopt_one(
    gw: &Gateway,
    store: &shared::TaskStore,
    stored: &StoredApproval,
) -> Result<(), AdoptError> {
    let approval = stored.approval.clone();
    if let Some(resolution) = &stored.resolution
        && hold::outcome_recorded(gw, approval.id).await?
    {
        // The dead replica recorded the decision, so it may have run the
        // call too (it may even have died mid-call): running it again could
        // do it twice. A refusal never runs it.
        let why = if resolution.outcome == crate::approvals::Outcome::Allowed {
            format!(
                "Airlock cannot tell whether this call to `{}` ran: the replica running it stopped after its decision was recorded.",
                approval.tool
            )
        } else {
            format!(
                "Airlock did not run this call to `{}`: {} (the replica holding it stopped before saying so).",
                approval.tool,
                resolution.describe()
            )
        };
        gw.tasks.end_orphaned(approval.id, &why).await?;
        gw.approvals.mark_recorded(approval.id).await?;
        return Ok(());
    }
    let row = store.of_pending(approval.id).await?;
    let request = row
        .as_ref()
        .and_then(|r| Message::parse(bytes::Bytes::from(r.request.clone())).ok());
    let (Some(row), Some(request)) = (row, request) else {
        hold::abandon_adopted(gw, &approval).await;
        return Ok(());
    };
    let timeout = (approval.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default();
    gw.tasks.adopt(&row, request.clone(), timeout);
    tracing::warn!(
        pending = %approval.id,
        task = %row.id,
        tool = %approval.tool,
        "adopted a task held by a replica that stopped heartbeating"
    );
    let headers = row.headers.as_ref().map(shared::header_map);
    hold::carry_on(gw, approval, &row.id, request, headers, timeout);
    Ok(())
}

/// The response that ends a reply (the last one on a stream).
async fn final_response(reply: Reply, id: &Id) -> Message {
    match reply.body {
        ReplyBody::Json(message) => message,
        ReplyBody::Stream(mut events) => {
            while let Some(event) = events.recv().await {
                if let Some(message) = event.message
                    && message.kind() == jsonrpc::Kind::Response
                {
                    return message;
                }
            }
            jsonrpc::error_response(
                id,
                code::UPSTREAM_ERROR,
                "upstream closed the stream before answering",
            )
        }
        ReplyBody::Empty | ReplyBody::Other { .. } => jsonrpc::error_response(
            id,
            code::UPSTREAM_ERROR,
            &format!(
                "upstream answered HTTP {} without a JSON-RPC message",
                reply.status
            ),
        ),
    }
}

fn is_input_required(result: &Value) -> bool {
    result.get("resultType").and_then(Value::as_str) == Some("input_required")
}

/// `request` with `inputResponses` and `requestState` (replacing any from an
/// earlier round); everything else kept.
fn with_input(
    request: &Message,
    answers: serde_json::Map<String, Value>,
    request_state: Option<Value>,
) -> Message {
    let Ok(mut value) = serde_json::from_slice::<Value>(request.raw()) else {
        return request.clone();
    };
    if let Some(params) = value.get_mut("params").and_then(Value::as_object_mut) {
        params.insert("inputResponses".into(), Value::Object(answers));
        match request_state {
            Some(state) => {
                params.insert("requestState".into(), state);
            }
            None => {
                params.shift_remove("requestState");
            }
        }
    }
    Message::from_value(&value)
}

/// An empty stateless-era result from Airlock.
fn acknowledged() -> Value {
    json!({
        "resultType": "complete",
        "_meta": { crate::era::META_SERVER_INFO: crate::era::airlock_server_info() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_call_loses_only_the_tasks_extension() {
        let raw = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_record","arguments":{"id":"x","n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{},"other/ext":{"a":1}},"sampling":{}}}}}"#;
        let message = Message::parse(bytes::Bytes::from(raw)).expect("valid");
        let stripped = without_extension(&message);
        assert_eq!(
            stripped.text(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_record","arguments":{"id":"x","n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"other/ext":{"a":1}},"sampling":{}}}}}"#
        );
        assert_eq!(stripped.id(), message.id());
        // Without the extension the message is passed on untouched.
        assert_eq!(without_extension(&stripped).raw(), stripped.raw());
    }

    fn call() -> Message {
        let raw = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"confirm_delete","arguments":{"n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}}}}}"#;
        Message::parse(bytes::Bytes::from(raw)).expect("valid")
    }

    fn response(raw: &str) -> Message {
        Message::parse(bytes::Bytes::from(raw.to_owned())).expect("valid")
    }

    #[test]
    fn an_input_required_answer_waits_for_every_key_then_yields_the_retry() {
        let tasks = Tasks::default();
        let (id, _) = tasks.create("p1", "s1", Duration::from_secs(60), &call());
        tasks.finish(
            &id,
            &response(
                r#"{"jsonrpc":"2.0","id":7,"result":{"resultType":"input_required","inputRequests":{"a":{"method":"elicitation/create"},"b":{"method":"roots/list"}},"requestState":"st"}}"#,
            ),
        );
        let view = |tasks: &Tasks| Tasks::view(&tasks.local.get(&id).expect("task"), &id);
        assert_eq!(view(&tasks)["status"], "input_required");
        assert_eq!(
            view(&tasks)["inputRequests"].as_object().map(|m| m.len()),
            Some(2)
        );
        // A subset, plus a key nobody asked for: still waiting, for `b` only.
        let partial = json!({"a": {"action": "accept"}, "zzz": {}});
        assert!(
            tasks
                .answer_input(&id, partial.as_object().cloned().unwrap())
                .is_none()
        );
        assert_eq!(
            view(&tasks)["inputRequests"],
            json!({"b": {"method": "roots/list"}})
        );
        let rest = json!({"b": {"roots": []}});
        let retry = tasks
            .answer_input(&id, rest.as_object().cloned().unwrap())
            .expect("all answered");
        assert_eq!(
            retry.text(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"confirm_delete","arguments":{"n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{}}},"inputResponses":{"a":{"action":"accept"},"b":{"roots":[]}},"requestState":"st"}}"#
        );
        assert_eq!(view(&tasks)["status"], "working");
        assert!(view(&tasks).get("inputRequests").is_none());
        // The retry's result completes the task.
        tasks.finish(
            &id,
            &response(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":false}}"#),
        );
        assert_eq!(view(&tasks)["status"], "completed");
    }

    #[test]
    fn updates_to_a_task_not_waiting_for_input_change_nothing() {
        let tasks = Tasks::default();
        let (id, _) = tasks.create("p1", "s1", Duration::from_secs(60), &call());
        let answers = json!({"a": {}});
        assert!(
            tasks
                .answer_input(&id, answers.as_object().cloned().unwrap())
                .is_none()
        );
        assert!(!tasks.is_waiting_for_input(&id));
        assert_eq!(tasks.local.get(&id).expect("task").status, "working");
    }
}

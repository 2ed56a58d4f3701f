//! Held calls as tasks (2026-07-28 `io.modelcontextprotocol/tasks` extension).
//!
//! A stateless-era client that declares the extension gets a task at once
//! instead of an open stream: `status: "working"`, `statusMessage: "waiting
//! for human approval"`. It polls `tasks/get` until the task is `completed`
//! (with the upstream's result, or the refusal — an `isError` result still
//! completes a task) or `failed` (a JSON-RPC error). `tasks/cancel` withdraws
//! the hold. Airlock answers `tasks/*` for its own task ids only; other ids
//! pass through to the upstream.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::era::ParamsPeek;
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::hold;
use crate::jsonrpc::{self, Id, Message, code};

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
}

/// Airlock's own tasks by id.
#[derive(Default)]
pub struct Tasks(DashMap<String, Task>);

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
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
    /// Creates a `working` task for a held call; returns its id and the
    /// `CreateTaskResult` to answer the `tools/call` with.
    pub fn create(
        &self,
        pending_id: &str,
        session_key: &str,
        timeout: Duration,
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
        self.0.insert(id.clone(), task);
        (id, created)
    }

    /// Finishes a task with the final JSON-RPC response of the call.
    pub fn finish(&self, task_id: &str, response: &Message) {
        #[derive(Deserialize)]
        struct Final {
            result: Option<Value>,
            error: Option<Value>,
        }
        let Some(mut task) = self.0.get_mut(task_id) else {
            return;
        };
        if task.status == "cancelled" {
            return;
        }
        let parsed: Final = serde_json::from_str(response.text()).unwrap_or(Final {
            result: None,
            error: None,
        });
        match (parsed.result, parsed.error) {
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
        task.updated_at = now();
        task.forget_after = Some(Instant::now() + KEEP_FINISHED);
    }

    pub fn mark_cancelled(&self, task_id: &str) {
        if let Some(mut task) = self.0.get_mut(task_id) {
            task.status = "cancelled";
            task.status_message = "cancelled by the agent".into();
            task.updated_at = now();
            task.forget_after = Some(Instant::now() + KEEP_FINISHED);
        }
    }

    /// Forgets finished tasks whose time is up.
    pub fn prune(&self) {
        let now = Instant::now();
        self.0
            .retain(|_, t| t.forget_after.is_none_or(|at| at > now));
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
        v
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
    let (owner, pending_id) = {
        let task = gw.tasks.0.get(&task_id)?;
        (task.session_key.clone(), task.pending_id.clone())
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
    let declared = message
        .params::<ParamsPeek<'_>>()
        .is_some_and(|peek| declared(&peek));
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
    let result = match message.method() {
        Some("tasks/get") => gw
            .tasks
            .0
            .get(&task_id)
            .map(|t| Tasks::view(&t, &task_id))?,
        Some("tasks/cancel") => {
            // Cancellation is cooperative (as the extension defines it): a
            // call already decided runs to its end and its task completes.
            let withdrawn =
                hold::cancel(gw, &pending_id, "cancelled by the agent (tasks/cancel)").await;
            if withdrawn {
                gw.tasks.mark_cancelled(&task_id);
            }
            acknowledged()
        }
        // Airlock's tasks never ask for input; updates are acknowledged and ignored.
        Some("tasks/update") => acknowledged(),
        _ => return None,
    };
    Some(Exchange::answer(
        jsonrpc::result_response(&id, result),
        ctx.era,
    ))
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
}

#!/usr/bin/env python3
"""An upstream that implements the 2026-07-28 tasks extension (`io.modelcontextprotocol/tasks`,
SEP-2663), for the conformance suite's `tasks-*` scenarios (tests/py/test_conformance_tasks.py).

No registry package implements the extension (the `mcp` 2.3.0 Python SDK and the TypeScript
SDK 2.4.0 have no tasks runtime), so this server adds it to the official Python SDK (`mcp` 2.x)
through the SDK's own extension interface (`mcp.server.extension.Extension`): the extension
advertises itself under `capabilities.extensions`, serves `tasks/get`, `tasks/update` and
`tasks/cancel` (`MethodBinding`), and intercepts `tools/call` for the task-supporting tools.
The SDK provides everything else (stateless era, header checks, MRTR, `resultType`).

The fixtures are the ones the suite's scenarios document:

- `greet` (sync only): `Hello, {name}!`.
- `slow_compute` (task-supporting): sleeps `seconds`, then returns a text; cancellable.
- `failing_job` (task support *required*): a tool error (`isError: true`) after ~1 s.
- `protocol_error_job` (task-supporting): fails with a JSON-RPC error (task `failed`).
- `confirm_delete` (task-supporting): asks one `elicitation/create` through the task's
  `inputRequests`, completes when `tasks/update` answers it.
- `multi_input` (task-supporting): asks two at once (partial fulfilment).
- `test_tool_with_task` (task support required): MRTR round 1 asks for `user_name`
  (`input_required`), round 2 creates a task whose result greets that name.

A task-supporting tool becomes a task only when the request declares the extension in
`_meta["io.modelcontextprotocol/clientCapabilities"].extensions`; otherwise it runs
synchronously (or, for the required ones, is refused with `-32021`). `tasks/*` without the
extension: `-32021`; an unknown task id: `-32602`; `Mcp-Name` disagreeing with `taskId`:
`-32020` (the SDK checks `Mcp-Name` for tools, prompts and resources only).

  python tests/servers/tasks_server.py [--port 0]

Once listening it prints exactly one line `LISTENING http://127.0.0.1:<port>/mcp` (flushed).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    RequestParams,
)
from pydantic import ConfigDict, Field

EXTENSION = "io.modelcontextprotocol/tasks"
CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"
HEADER_MISMATCH = -32020
TTL_MS = 10 * 60 * 1000
POLL_INTERVAL_MS = 100
TERMINAL = {"completed", "failed", "cancelled"}

NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CONFIRM_SCHEMA = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}

# --- tasks ---------------------------------------------------------------------------------


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def elicitation(message: str, schema: dict) -> dict:
    request = ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
    return request.model_dump(by_alias=True, mode="json", exclude_none=True)


@dataclass
class Task:
    id: str
    status: str = "working"
    status_message: str | None = None
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    result: dict | None = None
    error: dict | None = None
    # Open input requests by key, and the answers the job waits for.
    input_requests: dict[str, dict] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task | None = None

    def envelope(self) -> dict:
        out = {
            "taskId": self.id,
            "status": self.status,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.updated_at,
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }
        if self.status_message:
            out["statusMessage"] = self.status_message
        return out

    def detailed(self) -> dict:
        out = {"resultType": "complete", **self.envelope()}
        if self.status == "input_required":
            out["inputRequests"] = dict(self.input_requests)
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out

    def settle(self, status: str, *, result: dict | None = None, error: dict | None = None) -> None:
        if self.status in TERMINAL:
            return
        self.status, self.result, self.error = status, result, error
        self.input_requests.clear()
        self.updated_at = now()

    async def ask(self, requests: dict[str, dict]) -> dict[str, Any]:
        """Parks the task in `input_required` until every request is answered."""
        self.input_requests.update(requests)
        self.status, self.updated_at = "input_required", now()
        while any(key not in self.answers for key in requests):
            self.answered.clear()
            await self.answered.wait()
        self.status, self.updated_at = "working", now()
        return {key: self.answers[key] for key in requests}


def text_result(text: str, *, is_error: bool = False) -> dict:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def accepted(answer: Any, key: str, default: Any) -> Any:
    if isinstance(answer, dict) and answer.get("action") == "accept":
        return (answer.get("content") or {}).get(key, default)
    return default


async def run_job(task: Task, name: str, arguments: dict, gathered: dict) -> None:
    """One task-supporting tool, run in the background; settles `task`."""
    try:
        if name == "slow_compute":
            seconds = float(arguments.get("seconds", 1))
            await asyncio.sleep(seconds)
            task.settle("completed", result=text_result(f"computed {arguments.get('label', '')} after {seconds}s"))
        elif name == "failing_job":
            await asyncio.sleep(1)
            task.settle("completed", result=text_result("failing_job always fails", is_error=True))
        elif name == "protocol_error_job":
            await asyncio.sleep(0.2)
            task.settle("failed", error={"code": INTERNAL_ERROR, "message": "protocol_error_job broke on purpose"})
        elif name == "confirm_delete":
            filename = arguments.get("filename", "")
            answers = await task.ask({"confirm": elicitation(f"Delete {filename}?", CONFIRM_SCHEMA)})
            confirmed = accepted(answers["confirm"], "confirm", False)
            task.settle("completed", result=text_result(f"{'deleted' if confirmed else 'kept'} {filename}"))
        elif name == "multi_input":
            answers = await task.ask({
                "first": elicitation("First name?", NAME_SCHEMA),
                "second": elicitation("Second name?", NAME_SCHEMA),
            })
            names = [accepted(answers[k], "name", "?") for k in ("first", "second")]
            task.settle("completed", result=text_result(f"got {names[0]} and {names[1]}"))
        elif name == "test_tool_with_task":
            await asyncio.sleep(0.2)
            task.settle("completed", result=text_result(f"Hello, {gathered.get('user_name', 'stranger')}!"))
    except asyncio.CancelledError:
        task.settle("cancelled")
        raise
    except Exception as e:  # noqa: BLE001 - a job's crash is the task's protocol error
        task.settle("failed", error={"code": INTERNAL_ERROR, "message": f"{name} crashed: {e}"})


# Task-supporting tools; True where a task is required (no sync fallback).
TASK_TOOLS = {
    "slow_compute": False,
    "failing_job": True,
    "protocol_error_job": False,
    "confirm_delete": False,
    "multi_input": False,
    "test_tool_with_task": True,
}


def missing_extension(what: str) -> MCPError:
    return MCPError(
        code=MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"{what} requires the {EXTENSION} extension in the request's client capabilities",
        data={"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
    )


def declared(ctx: Any) -> bool:
    """Whether this request declared the extension (per request: the 2026-07-28 envelope)."""
    meta = ctx.meta or {}
    caps = meta.get(CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    if isinstance(caps, dict):
        return EXTENSION in (caps.get("extensions") or {})
    session_caps = getattr(ctx.session, "client_capabilities", None)
    return bool(session_caps and session_caps.extensions and EXTENSION in session_caps.extensions)


class TaskParams(RequestParams):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    task_id: str = Field(alias="taskId")


class UpdateParams(TaskParams):
    input_responses: dict[str, Any] = Field(alias="inputResponses", default_factory=dict)


class TasksExtension(Extension):
    identifier = EXTENSION

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", TaskParams, self.get),
            MethodBinding("tasks/update", UpdateParams, self.update),
            MethodBinding("tasks/cancel", TaskParams, self.cancel),
        ]

    def lookup(self, ctx: Any, method: str, params: TaskParams) -> Task:
        if not declared(ctx):
            raise missing_extension(method)
        headers = getattr(ctx.request, "headers", None)
        named = headers.get("mcp-name") if headers is not None else None
        if named is not None and named.strip() != params.task_id:
            raise MCPError(code=HEADER_MISMATCH,
                           message=f"Header mismatch: Mcp-Name header value '{named}' does not match body value "
                                   f"'{params.task_id}'")
        task = self.tasks.get(params.task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to retrieve task: Task not found ({params.task_id})")
        return task

    async def get(self, ctx: Any, params: TaskParams) -> dict:
        return self.lookup(ctx, "tasks/get", params).detailed()

    async def update(self, ctx: Any, params: UpdateParams) -> dict:
        task = self.lookup(ctx, "tasks/update", params)
        for key, answer in params.input_responses.items():
            if key in task.input_requests:  # unknown keys are ignored
                task.answers[key] = answer
                del task.input_requests[key]
        task.updated_at = now()
        task.answered.set()
        return {"resultType": "complete"}

    async def cancel(self, ctx: Any, params: TaskParams) -> dict:
        task = self.lookup(ctx, "tasks/cancel", params)
        if task.status not in TERMINAL:
            task.settle("cancelled")
            if task.runner is not None:
                task.runner.cancel()
        return {"resultType": "complete"}

    async def intercept_tool_call(self, params: CallToolRequestParams, ctx: Any, call_next: Any) -> Any:
        required = TASK_TOOLS.get(params.name)
        if required is None:
            return await call_next(ctx)
        if not declared(ctx):
            if required:
                raise missing_extension(f"tool {params.name!r}")
            return await call_next(ctx)
        gathered: dict = {}
        if params.name == "test_tool_with_task":
            answer = (params.input_responses or {}).get("user_name")
            if answer is None:
                return InputRequiredResult(input_requests={"user_name": ElicitRequest(
                    params=ElicitRequestFormParams(message="What is your name?", requested_schema=NAME_SCHEMA))})
            if isinstance(answer, ElicitResult):
                answer = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
            gathered["user_name"] = accepted(answer, "name", "stranger")
        task = Task(id=str(uuid.uuid4()))
        self.tasks[task.id] = task
        task.runner = asyncio.get_running_loop().create_task(run_job(task, params.name, params.arguments or {},
                                                                      gathered))
        return {"resultType": "task", **task.envelope()}


tasks = TasksExtension()
mcp = MCPServer(name="airlock-tasks-test-server", version="0.1.0", extensions=[tasks])


# --- the tools as a plain (sync) client sees them ------------------------------------------


@mcp.tool()
def greet(name: str) -> str:
    """Sync only: greets `name`."""
    return f"Hello, {name}!"


@mcp.tool()
async def slow_compute(seconds: float = 1, label: str = "") -> str:
    """Task-supporting: sleeps `seconds`, then answers."""
    await asyncio.sleep(seconds)
    return f"computed {label} after {seconds}s"


@mcp.tool()
def failing_job() -> str:
    """Task support required: always ends in a tool error."""
    raise ValueError("failing_job always fails")


@mcp.tool()
def protocol_error_job() -> str:
    """Task-supporting: ends in a protocol (JSON-RPC) error."""
    raise MCPError(code=INTERNAL_ERROR, message="protocol_error_job broke on purpose")


@mcp.tool()
def confirm_delete(ctx: Context, filename: str = "") -> str | InputRequiredResult:
    """Task-supporting: asks for a confirmation before deleting `filename` (MRTR when not a task)."""
    answer = (ctx.input_responses or {}).get("confirm")
    if answer is None:
        return InputRequiredResult(input_requests={"confirm": ElicitRequest.model_validate(
            elicitation(f"Delete {filename}?", CONFIRM_SCHEMA))})
    return f"{'deleted' if mrtr_value(answer, 'confirm', False) else 'kept'} {filename}"


@mcp.tool()
def multi_input(ctx: Context) -> str | InputRequiredResult:
    """Task-supporting: asks two questions at once (MRTR when not a task)."""
    responses = ctx.input_responses or {}
    if "first" not in responses or "second" not in responses:
        return InputRequiredResult(input_requests={
            "first": ElicitRequest.model_validate(elicitation("First name?", NAME_SCHEMA)),
            "second": ElicitRequest.model_validate(elicitation("Second name?", NAME_SCHEMA)),
        })
    return f"got {mrtr_value(responses['first'], 'name', '?')} and {mrtr_value(responses['second'], 'name', '?')}"


def mrtr_value(answer: Any, key: str, default: Any) -> Any:
    if isinstance(answer, ElicitResult):
        answer = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
    return accepted(answer, key, default)


@mcp.tool()
def test_tool_with_task() -> str:
    """Task support required: asks for a name (MRTR), then greets it from a task."""
    return "unreachable: the tasks extension answers this tool"



if __name__ == "__main__":
    import http_main

    sys.exit(http_main.main(mcp.streamable_http_app()))

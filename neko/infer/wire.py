"""The server's wire format: request bodies in, prepared items out; results in, JSON answers out.

Two dialects: neko's own ``POST /v1/correct`` (one item or ``{"items": [...]}``) and the
OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``. Malformed JSON -> 400, wrong
types -> 422, unknown task -> 400 with the known tasks, too many items -> 413, an item over the
``CorrectionOptions`` input limits -> 422 alone or an ``error`` field in a batch; every error has
OpenAI's shape ``{"error": {"message", "type", "code"}}`` so OpenAI clients surface the message.
Deep nesting and huge numbers in JSON are a 400 like any malformed body. Counts are checked before
any per-item work. The ``parse_*`` functions run in the server's preparation thread.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from neko.infer.items import CorrectionResult, PreparedItem
from neko.tasks import TaskRegistry

if TYPE_CHECKING:
    from neko.infer.correct import Corrector

__all__ = [
    "HTTPError",
    "chat_response",
    "completions_response",
    "correct_response",
    "error_body",
    "parse_chat",
    "parse_completions",
    "parse_correct",
]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


# ---- request bodies


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise HTTPError(422, message)


def _parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HTTPError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer over Python's 4300-digit limit
        raise HTTPError(400, f"malformed JSON: {e}") from None
    except RecursionError:
        raise HTTPError(400, "malformed JSON: nested too deeply") from None


def _get_bool(obj: dict, key: str) -> bool:
    v = obj.get(key, False)
    _expect(isinstance(v, bool), f"'{key}': expected true or false, got {type(v).__name__}")
    return v


def _item_fields(obj: Any, where: str, default_task: Any) -> dict[str, Any]:
    _expect(isinstance(obj, dict), f"{where}: expected a JSON object, got {type(obj).__name__}")
    inp = obj.get("input")
    _expect(inp is not None, f"{where}: 'input' is required (a string or a list of strings, best first)")
    _expect(
        isinstance(inp, str) or (isinstance(inp, list) and all(isinstance(h, str) for h in inp)),
        f"{where}.input: expected a string or a list of strings, got {type(inp).__name__}",
    )
    task = obj.get("task", default_task)
    _expect(task is not None, f"{where}: 'task' is required (here or at the top level of the request)")
    _expect(isinstance(task, str), f"{where}.task: expected a string, got {type(task).__name__}")
    row: dict[str, Any] = {"task": task, "input": inp}
    for key in ("id", "source_lang", "target_lang"):
        if obj.get(key) is not None:
            _expect(isinstance(obj[key], (str, int)), f"{where}.{key}: expected a string")
            row[key] = str(obj[key])
    return row


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(t, str) for t in parts):
            return "\n".join(parts)
    raise HTTPError(422, f"{where}: expected a string or a list of text parts")


def _openai_common(body: Any) -> None:
    _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
    if body.get("stream"):
        raise HTTPError(400, "streaming is not supported; send stream=false")
    if body.get("n", 1) != 1:
        raise HTTPError(400, "only n=1 is supported (decoding is deterministic)")


def check_count(n: int, max_items: int) -> None:
    if n > max_items:
        raise HTTPError(413, f"{n} items in one request; the limit is {max_items}")


def _check_task(registry: TaskRegistry, task: str) -> None:
    try:
        registry.get(task)
    except KeyError as e:
        raise HTTPError(400, e.args[0]) from None


def parse_correct(corrector: Corrector, max_items: int, raw: bytes) -> tuple[bool, bool, list[PreparedItem]]:
    """A ``/v1/correct`` body: (a batch request?, details?, its prepared items)."""
    body = _parse_json(raw)
    _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
    details = _get_bool(body, "details")
    batch = "items" in body
    if batch:
        _expect(isinstance(body["items"], list), "'items': expected a list of objects")
        check_count(len(body["items"]), max_items)  # before any per-item work
        rows = [_item_fields(o, f"items[{i}]", body.get("task")) for i, o in enumerate(body["items"])]
    else:
        rows = [_item_fields(body, "request", None)]
    for row in rows:
        _check_task(corrector.registry, row["task"])
    return batch, details, [corrector.prepare(row, index=i) for i, row in enumerate(rows)]


def _prepare_text(corrector: Corrector, text: str, body: dict, index: int) -> PreparedItem:
    # neko extension: with "task", the text is the raw input and the task prompt is applied.
    if body.get("task") is not None:
        _expect(isinstance(body["task"], str), "'task': expected a string")
        _check_task(corrector.registry, body["task"])
        row = {"task": body["task"], "input": text}
        for key in ("source_lang", "target_lang"):
            if isinstance(body.get(key), str):
                row[key] = body[key]
        return corrector.prepare(row, index=index)
    return corrector.prepare_body(text, id=str(index))


def parse_chat(corrector: Corrector, raw: bytes) -> list[PreparedItem]:
    """A ``/v1/chat/completions`` body: its last user message, prepared."""
    body = _parse_json(raw)
    _openai_common(body)
    msgs = body.get("messages")
    _expect(isinstance(msgs, list) and msgs, "'messages': expected a non-empty list of {role, content}")
    users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
    _expect(bool(users), "'messages': needs at least one message with role 'user'")
    return [
        _prepare_text(corrector, _message_text(users[-1].get("content"), "messages[-1].content"), body, 0)
    ]


def parse_completions(corrector: Corrector, max_items: int, raw: bytes) -> list[PreparedItem]:
    """A ``/v1/completions`` body: each of its prompts, prepared."""
    body = _parse_json(raw)
    _openai_common(body)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    _expect(isinstance(prompts, list) and bool(prompts), "'prompt': expected a string or a non-empty list")
    check_count(len(prompts), max_items)  # before any per-item work
    _expect(all(isinstance(p, str) for p in prompts), "'prompt': expected a string or a list of strings")
    return [_prepare_text(corrector, p, body, i) for i, p in enumerate(prompts)]


# ---- answers


def _result_json(r: CorrectionResult) -> dict[str, Any]:
    out: dict[str, Any] = {"id": r.id, "task": r.task, "correction": r.text}
    if r.error is not None:
        out["error"] = r.error
    if r.decision is not None:
        out["decision"] = r.decision
    if r.generated is not None and r.generated != r.text:
        out["generated"] = r.generated
    if r.constrained is not None and r.constrained != r.text:
        out["constrained"] = r.constrained
    if r.details is not None:
        out["details"] = r.details
    return out


def _usage(results: list[CorrectionResult], prepared: list[PreparedItem]) -> dict[str, int]:
    p = sum(len(x.input_ids or ()) for x in prepared)
    c = sum((r.details or {}).get("generated_tokens", 0) for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(r: CorrectionResult) -> str:
    # OpenAI semantics: "length" when the answer was cut by the token limit.
    d = r.details or {}
    return "length" if d.get("generated_tokens", 0) >= d.get("max_new_tokens", float("inf")) else "stop"


def correct_response(model_name: str, batch: bool, results: list[CorrectionResult]) -> dict[str, Any]:
    """A batch answers every item (failed ones with ``error``); a single failed item is a 422."""
    if batch:
        return {"model": model_name, "results": [_result_json(r) for r in results]}
    if results[0].error is not None:
        raise HTTPError(422, results[0].error)
    return _result_json(results[0])


def chat_response(
    model_name: str, results: list[CorrectionResult], prepared: list[PreparedItem]
) -> dict[str, Any]:
    if results[0].error is not None:
        raise HTTPError(422, results[0].error)
    r = results[0]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": _finish_reason(r),
            }
        ],
        "usage": _usage(results, prepared),
    }


def completions_response(
    model_name: str, results: list[CorrectionResult], prepared: list[PreparedItem]
) -> dict[str, Any]:
    bad = [r for r in results if r.error is not None]
    if bad:
        raise HTTPError(422, bad[0].error)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {"index": i, "text": r.text, "finish_reason": _finish_reason(r)} for i, r in enumerate(results)
        ],
        "usage": _usage(results, prepared),
    }

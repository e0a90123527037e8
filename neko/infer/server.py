"""``neko serve``: an HTTP correction service with dynamic batching, back-pressure and limits.

Design choices:
- One background worker owns the model. Request handlers only validate and enqueue; the worker
  takes up to ``max_batch`` queued items (from any number of requests), waiting at most
  ``max_wait_ms`` for a batch to fill, and decodes them with one ``Corrector.run`` in a worker
  thread so the event loop keeps accepting requests. Batching concurrent clients is what turns a
  per-request ``generate`` into the batched throughput measured in bench/bench_correct.py.
- Back-pressure instead of collapse: at most ``max_queue`` items wait; a request that would exceed
  it gets 429 with Retry-After at once. Each request waits at most ``timeout`` s (504); an item whose
  client gave up is dropped before decoding.
- Limits: request bodies over ``max_body_bytes`` -> 413 (checked while reading, not after);
  more than ``max_items`` items in one request -> 413; per-item input limits come from
  ``CorrectionOptions`` (over-long -> 422 for a single item, an ``error`` field in a batch).
- Malformed JSON -> 400, wrong types -> 422, unknown task -> 400 with the known tasks; all errors use
  OpenAI's shape ``{"error": {"message", "type", "code"}}`` so OpenAI clients surface the message.
- Binds 127.0.0.1 unless told otherwise; with an API key every ``/v1`` route needs
  ``Authorization: Bearer KEY`` (compared in constant time); ``/health`` stays open for probes.

Endpoints (docs/serving.md has examples): ``GET /health``, ``POST /v1/correct`` (one item or
``{"items": [...]}``), ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in handler signatures.
import asyncio
import collections
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from neko.infer.correct import CorrectionResult, Corrector, PreparedItem

__all__ = ["ServerConfig", "create_app", "serve", "QueueFullError"]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token required on /v1 routes when set (the CLI also reads $NEKO_API_KEY).
    api_key: str | None = None
    # Most items decoded together; the worker waits up to max_wait_ms for a batch to fill.
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Most items waiting for the model; beyond it requests get 429.
    max_queue: int = 256
    # Seconds a request may wait for its results (queueing + decoding) before 504.
    timeout: float = 30.0
    max_body_bytes: int = 1_000_000
    max_items: int = 64
    model_name: str = "neko"

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_items < 1:
            raise ValueError("max_batch, max_queue and max_items must be >= 1")
        if self.timeout <= 0 or self.max_body_bytes < 1:
            raise ValueError("timeout and max_body_bytes must be positive")


class QueueFullError(Exception):
    pass


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class Batcher:
    """Dynamic batching: one worker drains a bounded queue of (item, details, future) into ``run``."""

    def __init__(self, corrector: Corrector, config: ServerConfig) -> None:
        self.corrector, self.config = corrector, config
        self.queue: collections.deque = collections.deque()
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neko-model")
        self.task: asyncio.Task | None = None
        self.stats = {"requests": 0, "items": 0, "batches": 0, "rejected": 0, "timeouts": 0}

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list[PreparedItem], details: bool) -> list[CorrectionResult]:
        if len(self.queue) + len(items) > self.config.max_queue:
            self.stats["rejected"] += 1
            raise QueueFullError
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in items]
        self.queue.extend((p, details, f) for p, f in zip(items, futs, strict=True))
        self.stats["requests"] += 1
        self.wakeup.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futs), self.config.timeout))
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            for f in futs:
                f.cancel()  # the worker skips cancelled items
            raise

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(self.queue) < self.config.max_batch and loop.time() < deadline:
                await asyncio.sleep(min(0.001, max(0.0, deadline - loop.time())))
            batch = []
            while self.queue and len(batch) < self.config.max_batch:
                item = self.queue.popleft()
                if not item[2].done():
                    batch.append(item)
            if not self.queue:
                self.wakeup.clear()
            if not batch:
                continue
            prepared, details = [b[0] for b in batch], [b[1] for b in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.corrector.run, prepared, details)
            except Exception as e:  # a model failure fails this batch's requests, not the server
                for _, _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.stats["batches"] += 1
            self.stats["items"] += len(batch)
            for (_, _, f), r in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(r)


# ---- request parsing ----


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise HTTPError(422, message)


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


def _result_json(r: CorrectionResult) -> dict[str, Any]:
    out: dict[str, Any] = {"id": r.id, "task": r.task, "correction": r.text}
    if r.error is not None:
        out["error"] = r.error
    if r.guard is not None:
        out["unguarded"] = r.unguarded
        out["guard"] = r.guard
    if r.details is not None:
        out["details"] = r.details
    return out


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(t, str) for t in parts):
            return "\n".join(parts)
    raise HTTPError(422, f"{where}: expected a string or a list of text parts")


def create_app(corrector: Corrector, config: ServerConfig | None = None):
    """The FastAPI app around a loaded corrector (the caller runs it, e.g. with uvicorn)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    config = config or ServerConfig()
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["batcher"] = Batcher(corrector, config)
        state["batcher"].start()
        yield
        await state["batcher"].stop()

    app = FastAPI(title="neko correction server", lifespan=lifespan)

    def error(status: int, message: str, kind: str = "invalid_request_error", headers=None):
        body = {"error": {"message": message, "type": kind, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPError)
    async def _http_error(_req, exc: HTTPError):
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(Exception)
    async def _internal(_req, exc: Exception):
        # A model failure answers this request with a JSON 500; the worker and server keep running.
        return error(500, f"internal error while correcting: {type(exc).__name__}: {exc}", "server_error")

    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise HTTPError(
                401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "authentication_error"
            )

    async def read_json(request: Request) -> Any:
        check_auth(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HTTPError(
                413, f"request body of {declared} bytes exceeds the limit of {config.max_body_bytes}"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise HTTPError(413, f"request body exceeds the limit of {config.max_body_bytes} bytes")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise HTTPError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise HTTPError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None

    def check_task(task: str) -> None:
        try:
            corrector.registry.get(task)
        except KeyError as e:
            raise HTTPError(400, e.args[0]) from None

    async def decode(items: list[PreparedItem], details: bool) -> list[CorrectionResult]:
        if len(items) > config.max_items:
            raise HTTPError(413, f"{len(items)} items in one request; the limit is {config.max_items}")
        ready = [p for p in items if p.error is None]
        try:
            done = iter(await state["batcher"].submit(ready, details) if ready else [])
        except QueueFullError:
            raise HTTPError(
                429, "server busy: the queue is full; retry shortly", "rate_limit_error"
            ) from None
        except asyncio.TimeoutError:
            raise HTTPError(
                504, f"correction took longer than {config.timeout:g} s", "timeout_error"
            ) from None
        return [CorrectionResult(None, p.id, p.task, error=p.error) if p.error else next(done) for p in items]

    def get_bool(obj: dict, key: str) -> bool:
        v = obj.get(key, False)
        _expect(isinstance(v, bool), f"'{key}': expected true or false, got {type(v).__name__}")
        return v

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {
            "status": "ok",
            "model": config.model_name,
            "queue": len(b.queue) if b else 0,
            "max_queue": config.max_queue,
            "tasks": corrector.registry.names(),
            "stats": b.stats if b else {},
        }

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "owned_by": "neko"}]}

    @app.post("/v1/correct")
    async def correct(request: Request):
        body = await read_json(request)
        _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
        details = get_bool(body, "details")
        if "items" in body:
            _expect(isinstance(body["items"], list), "'items': expected a list of objects")
            rows = [_item_fields(o, f"items[{i}]", body.get("task")) for i, o in enumerate(body["items"])]
        else:
            rows = [_item_fields(body, "request", None)]
        for row in rows:
            check_task(row["task"])
        prepared = [corrector.prepare(row, index=i) for i, row in enumerate(rows)]
        results = await decode(prepared, details)
        if "items" in body:
            return {"model": config.model_name, "results": [_result_json(r) for r in results]}
        if results[0].error is not None:
            raise HTTPError(422, results[0].error)
        return _result_json(results[0])

    def openai_common(body: Any) -> None:
        _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
        if body.get("stream"):
            raise HTTPError(400, "streaming is not supported; send stream=false")
        n = body.get("n", 1)
        if n != 1:
            raise HTTPError(400, "only n=1 is supported (decoding is deterministic)")

    def usage(results: list[CorrectionResult], prepared: list[PreparedItem]) -> dict[str, int]:
        p = sum(len(x.input_ids or ()) for x in prepared)
        c = sum((r.details or {}).get("generated_tokens", 0) for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def finish(r: CorrectionResult) -> str:
        # OpenAI semantics: "length" when the answer was cut by the token limit.
        n = (r.details or {}).get("generated_tokens", 0)
        return "length" if n >= corrector.options.max_new_tokens else "stop"

    def from_body_or_task(text: str, body: dict, index: int) -> PreparedItem:
        # neko extension: with "task", the text is the raw input and the task prompt is applied.
        if body.get("task") is not None:
            _expect(isinstance(body["task"], str), "'task': expected a string")
            check_task(body["task"])
            row = {"task": body["task"], "input": text}
            for key in ("source_lang", "target_lang"):
                if isinstance(body.get(key), str):
                    row[key] = body[key]
            return corrector.prepare(row, index=index)
        return corrector.prepare_body(text, id=str(index))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        openai_common(body)
        msgs = body.get("messages")
        _expect(isinstance(msgs, list) and msgs, "'messages': expected a non-empty list of {role, content}")
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        _expect(bool(users), "'messages': needs at least one message with role 'user'")
        prepared = [
            from_body_or_task(_message_text(users[-1].get("content"), "messages[-1].content"), body, 0)
        ]
        results = await decode(prepared, True)
        if results[0].error is not None:
            raise HTTPError(422, results[0].error)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": results[0].text},
                    "finish_reason": finish(results[0]),
                }
            ],
            "usage": usage(results, prepared),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        openai_common(body)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        _expect(
            isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts),
            "'prompt': expected a string or a non-empty list of strings",
        )
        prepared = [from_body_or_task(p, body, i) for i, p in enumerate(prompts)]
        results = await decode(prepared, True)
        bad = [r for r in results if r.error is not None]
        if bad:
            raise HTTPError(422, bad[0].error)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": config.model_name,
            "choices": [
                {"index": i, "text": r.text, "finish_reason": finish(r)} for i, r in enumerate(results)
            ],
            "usage": usage(results, prepared),
        }

    return app


def serve(corrector: Corrector, config: ServerConfig, log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(corrector, config), host=config.host, port=config.port, log_level=log_level)

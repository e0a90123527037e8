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
- Nothing a stranger sends may stall the service: counts and sizes are checked before any per-item
  work; parsing and prompt building run in a preparation thread, decoding in the model thread, so
  the event loop only moves bytes; a client has ``header_timeout`` s to send its headers and
  ``body_timeout`` s for its body (408), at most ``max_connections`` are open at once (more get
  503 and are closed before they hold a file descriptor for long), and a client that disconnects
  has its items dropped before decoding. Deep nesting and huge numbers in JSON are a 400 like any
  malformed body, so the keep-alive connection survives.
- Exposure: binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without an
  API key unless ``insecure``. With a key every route but ``/health`` (``/v1``, ``/docs``,
  ``/openapi.json``) needs ``Authorization: Bearer KEY`` (compared in constant time). Requests
  must say ``Content-Type: application/json`` (415 otherwise: a browser's cross-site "simple"
  request cannot) and name a known host in ``Host`` (400 otherwise: DNS rebinding turns a
  malicious page into a loopback client; a wildcard bind accepts any name).

Endpoints (docs/serving.md has examples): ``GET /health``, ``POST /v1/correct`` (one item or
``{"items": [...]}``), ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in handler signatures.
import asyncio
import collections
import hmac
import ipaddress
import json
import math
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
    # Serve a non-loopback address without an API key (refused otherwise).
    insecure: bool = False
    # Host header names accepted besides the bind address and the loopback names (e.g. a DNS name).
    allowed_hosts: tuple[str, ...] = ()
    # Open connections at once; well under the open-file limit (serve() checks), so a crowd of slow
    # clients cannot exhaust file descriptors.
    max_connections: int = 256
    # Open connections from one client address; so one client holding idle connections cannot take
    # every slot and starve the others (issue 23.5). Behind a reverse proxy every client is the
    # proxy's address: raise it to max_connections there and limit clients at the proxy.
    max_connections_per_client: int = 32
    # Seconds a client has to send a request's headers, and then its body (408 after).
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        counts = (
            self.max_batch,
            self.max_queue,
            self.max_items,
            self.max_connections,
            self.max_connections_per_client,
        )
        if min(counts) < 1:
            raise ValueError(
                "max_batch, max_queue, max_items, max_connections and max_connections_per_client must be >= 1"
            )
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        # NaN passes `x <= 0` (every comparison with NaN is false) and made every request a 504
        # (issue 23.6); inf would never time out. Each must be a finite number above 0 (the batch
        # wait may be 0: decode what is there at once).
        for name in ("timeout", "header_timeout", "body_timeout", "max_wait_ms"):
            value = getattr(self, name)
            low_ok = value >= 0 if name == "max_wait_ms" else value > 0
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok):
                flag = "--" + name.replace("_", "-")
                what = "a finite number >= 0" if name == "max_wait_ms" else "a positive finite number"
                raise ValueError(f"{name} must be {what}, got {value} ({flag})")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if not is_loopback(self.host) and self.api_key is None and not self.insecure:
            raise ValueError(
                f"refusing to serve on {self.host} without an API key: anyone who can reach it could use "
                "the model. Set --api-key (or $NEKO_API_KEY), or pass --insecure to accept that"
            )


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_host_names(config: ServerConfig) -> frozenset[str] | None:
    """Host header names this server answers; None = any (a wildcard bind can be reached by any
    name a client uses, so there only the API key guards it)."""
    if config.host in _WILDCARD and not config.allowed_hosts:
        return None
    return frozenset(h.lower() for h in (*_LOOPBACK_NAMES, config.host, *config.allowed_hosts))


def _host_name(header: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class QueueFullError(Exception):
    pass


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ClientGone(Exception):
    """The client disconnected while its items waited; they were dropped."""


def _error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A whole response for the connection layer, which answers and closes before any request exists."""
    body = _error_body(status, message, "server_error" if status >= 500 else "invalid_request_error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class Batcher:
    """Dynamic batching: one worker drains a bounded queue of (item, details, future) into ``run``."""

    def __init__(self, corrector: Corrector, config: ServerConfig) -> None:
        self.corrector, self.config = corrector, config
        self.queue: collections.deque = collections.deque()
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neko-model")
        self.task: asyncio.Task | None = None
        self.stats = {
            "requests": 0,
            "items": 0,
            "batches": 0,
            "rejected": 0,
            "timeouts": 0,
            "disconnected": 0,
        }

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

    async def submit(
        self, items: list[PreparedItem], details: bool, gone: Any = None
    ) -> list[CorrectionResult]:
        """Queue ``items`` and wait for their results. ``gone``: a function returning an awaitable that
        finishes when the client disconnects; the items are then dropped (ClientGone) instead of
        decoded for nobody."""
        if len(self.queue) + len(items) > self.config.max_queue:
            self.stats["rejected"] += 1
            raise QueueFullError
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in items]
        self.queue.extend((p, details, f) for p, f in zip(items, futs, strict=True))
        self.stats["requests"] += 1
        self.wakeup.set()
        results = asyncio.ensure_future(asyncio.wait_for(asyncio.gather(*futs), self.config.timeout))
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            await asyncio.wait(
                [results] + ([watcher] if watcher else []), return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # this request itself was cancelled (shutdown): its items go too
            results.cancel()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if not results.done():
            results.cancel()
            for f in futs:
                f.cancel()  # the worker skips cancelled items
            self._drop_cancelled()
            self.stats["disconnected"] += 1
            raise ClientGone
        try:
            return list(results.result())
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            for f in futs:
                f.cancel()
            self._drop_cancelled()
            raise

    def _drop_cancelled(self) -> None:
        # Cancelled items leave the queue now, so they neither count against max_queue nor fill a batch.
        self.queue = collections.deque(item for item in self.queue if not item[2].done())

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
    if r.decision is not None:
        out["decision"] = r.decision
    if r.generated is not None and r.generated != r.text:
        out["generated"] = r.generated
    if r.constrained is not None and r.constrained != r.text:
        out["constrained"] = r.constrained
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


class _HostCheck:
    """ASGI middleware: a request whose Host header names no known host gets 400 (DNS rebinding)."""

    def __init__(self, app: Any, allowed: frozenset[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(raw) not in self.allowed:
                body = _error_body(
                    400,
                    f"Host header {raw!r} is not served here; known hosts: {', '.join(sorted(self.allowed))} "
                    "(add a name with --allowed-host)",
                    "invalid_request_error",
                )
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def _client_gone(request: Any) -> None:
    """Returns when the client disconnects. Only called once the body is read: from then on the
    server's receive() has nothing to deliver but the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


def _openai_common(body: Any) -> None:
    _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
    if body.get("stream"):
        raise HTTPError(400, "streaming is not supported; send stream=false")
    if body.get("n", 1) != 1:
        raise HTTPError(400, "only n=1 is supported (decoding is deterministic)")


def _usage(results: list[CorrectionResult], prepared: list[PreparedItem]) -> dict[str, int]:
    p = sum(len(x.input_ids or ()) for x in prepared)
    c = sum((r.details or {}).get("generated_tokens", 0) for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(r: CorrectionResult) -> str:
    # OpenAI semantics: "length" when the answer was cut by the token limit.
    d = r.details or {}
    return "length" if d.get("generated_tokens", 0) >= d.get("max_new_tokens", float("inf")) else "stop"


class _Service:
    """What the routes share: the corrector, the limits, the batcher and the preparation thread.

    Each request goes read_body (cheap checks, bounded read) -> a ``prepare_*`` method in the
    preparation thread (parse, validate, build prompts) -> decode (queue to the batcher)."""

    def __init__(self, corrector: Corrector, config: ServerConfig) -> None:
        self.corrector, self.config = corrector, config
        self.batcher: Batcher | None = None
        self.prep: ThreadPoolExecutor | None = None
        self.preparing = 0

    def start(self) -> None:
        self.batcher = Batcher(self.corrector, self.config)
        self.batcher.start()
        # Parsing and prompt building (tokenization) of one request at a time, off the event loop.
        self.prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neko-prepare")

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.prep is not None:
            self.prep.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        b = self.batcher
        return {
            "status": "ok",
            "model": self.config.model_name,
            "queue": len(b.queue) if b else 0,
            "max_queue": self.config.max_queue,
            "preparing": self.preparing,
            "tasks": self.corrector.registry.names(),
            "stats": b.stats if b else {},
        }

    # ---- checks that cost nothing, then a bounded read

    def check_auth(self, request: Any) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise HTTPError(
                401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "authentication_error"
            )

    async def read_body(self, request: Any) -> bytes:
        """The raw body, after the checks that cost nothing: key, content type, declared size."""
        self.check_auth(request)
        limit = self.config.max_body_bytes
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise HTTPError(415, f"Content-Type must be application/json, got {media or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit}")

        async def collect() -> bytes:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
            return bytes(body)

        try:
            return await asyncio.wait_for(collect(), self.config.body_timeout)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"request body not received within {self.config.body_timeout:g} s") from None

    # ---- preparation (runs in the preparation thread)

    async def off_loop(self, fn: Any, *args: Any) -> Any:
        """Run CPU work (JSON parsing, validation, tokenization) in the preparation thread."""
        self.preparing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.prep, fn, *args)
        finally:
            self.preparing -= 1

    def check_count(self, n: int) -> None:
        if n > self.config.max_items:
            raise HTTPError(413, f"{n} items in one request; the limit is {self.config.max_items}")

    def check_task(self, task: str) -> None:
        try:
            self.corrector.registry.get(task)
        except KeyError as e:
            raise HTTPError(400, e.args[0]) from None

    def prepare_correct(self, raw: bytes) -> tuple[bool, bool, list[PreparedItem]]:
        body = _parse_json(raw)
        _expect(isinstance(body, dict), f"request body: expected a JSON object, got {type(body).__name__}")
        details = _get_bool(body, "details")
        batch = "items" in body
        if batch:
            _expect(isinstance(body["items"], list), "'items': expected a list of objects")
            self.check_count(len(body["items"]))  # before any per-item work
            rows = [_item_fields(o, f"items[{i}]", body.get("task")) for i, o in enumerate(body["items"])]
        else:
            rows = [_item_fields(body, "request", None)]
        for row in rows:
            self.check_task(row["task"])
        return batch, details, [self.corrector.prepare(row, index=i) for i, row in enumerate(rows)]

    def prepare_text(self, text: str, body: dict, index: int) -> PreparedItem:
        # neko extension: with "task", the text is the raw input and the task prompt is applied.
        if body.get("task") is not None:
            _expect(isinstance(body["task"], str), "'task': expected a string")
            self.check_task(body["task"])
            row = {"task": body["task"], "input": text}
            for key in ("source_lang", "target_lang"):
                if isinstance(body.get(key), str):
                    row[key] = body[key]
            return self.corrector.prepare(row, index=index)
        return self.corrector.prepare_body(text, id=str(index))

    def prepare_chat(self, raw: bytes) -> list[PreparedItem]:
        body = _parse_json(raw)
        _openai_common(body)
        msgs = body.get("messages")
        _expect(isinstance(msgs, list) and msgs, "'messages': expected a non-empty list of {role, content}")
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        _expect(bool(users), "'messages': needs at least one message with role 'user'")
        return [self.prepare_text(_message_text(users[-1].get("content"), "messages[-1].content"), body, 0)]

    def prepare_completions(self, raw: bytes) -> list[PreparedItem]:
        body = _parse_json(raw)
        _openai_common(body)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        _expect(
            isinstance(prompts, list) and bool(prompts), "'prompt': expected a string or a non-empty list"
        )
        self.check_count(len(prompts))  # before any per-item work
        _expect(all(isinstance(p, str) for p in prompts), "'prompt': expected a string or a list of strings")
        return [self.prepare_text(p, body, i) for i, p in enumerate(prompts)]

    # ---- decoding

    async def decode(self, items: list[PreparedItem], details: bool, request: Any) -> list[CorrectionResult]:
        self.check_count(len(items))
        ready = [p for p in items if p.error is None]
        assert self.batcher is not None, "the service is not started"
        try:
            done = iter(
                await self.batcher.submit(ready, details, lambda: _client_gone(request)) if ready else []
            )
        except QueueFullError:
            raise HTTPError(
                429, "server busy: the queue is full; retry shortly", "rate_limit_error"
            ) from None
        except asyncio.TimeoutError:
            raise HTTPError(
                504, f"correction took longer than {self.config.timeout:g} s", "timeout_error"
            ) from None
        except ClientGone:
            raise HTTPError(499, "the client closed the request; its items were dropped") from None
        return [CorrectionResult(None, p.id, p.task, error=p.error) if p.error else next(done) for p in items]


def create_app(corrector: Corrector, config: ServerConfig | None = None):
    """The FastAPI app around a loaded corrector (run it with :func:`uvicorn_config`, as ``serve`` does).
    Routes are thin: each reads the body, prepares off the event loop, decodes and shapes the answer."""
    from fastapi import FastAPI, Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import JSONResponse

    config = config or ServerConfig()
    service = _Service(corrector, config)

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        await service.stop()

    # The docs routes are added below, behind the API key like the rest.
    app = FastAPI(
        title="neko correction server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.neko_config = config
    app.add_middleware(_HostCheck, allowed=allowed_host_names(config))

    def error(status: int, message: str, kind: str = "invalid_request_error"):
        body = {"error": {"message": message, "type": kind, "code": status}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(HTTPError)
    async def _http_error(_req, exc: HTTPError):
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(Exception)
    async def _internal(_req, exc: Exception):
        # A model failure answers this request with a JSON 500; the worker and server keep running.
        return error(500, f"internal error while correcting: {type(exc).__name__}: {exc}", "server_error")

    @app.get("/health")
    async def health(request: Request):
        # A probe needs only liveness. Queue depth, task names and traffic counters tell a stranger
        # what is served and how busy it is, so with an API key set they need the key (issue 23.5);
        # without a key everything is open to whoever can reach the server anyway.
        try:
            service.check_auth(request)
        except HTTPError:
            return {"status": "ok"}
        return service.health()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        service.check_auth(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        service.check_auth(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        service.check_auth(request)
        return get_redoc_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/v1/models")
    async def models(request: Request):
        service.check_auth(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "owned_by": "neko"}]}

    @app.post("/v1/correct")
    async def correct(request: Request):
        batch, details, prepared = await service.off_loop(
            service.prepare_correct, await service.read_body(request)
        )
        results = await service.decode(prepared, details, request)
        if batch:
            return {"model": config.model_name, "results": [_result_json(r) for r in results]}
        if results[0].error is not None:
            raise HTTPError(422, results[0].error)
        return _result_json(results[0])

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prepared = await service.off_loop(service.prepare_chat, await service.read_body(request))
        results = await service.decode(prepared, True, request)
        if results[0].error is not None:
            raise HTTPError(422, results[0].error)
        r = results[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": _finish_reason(r),
                }
            ],
            "usage": _usage(results, prepared),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        prepared = await service.off_loop(service.prepare_completions, await service.read_body(request))
        results = await service.decode(prepared, True, request)
        bad = [r for r in results if r.error is not None]
        if bad:
            raise HTTPError(422, bad[0].error)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": config.model_name,
            "choices": [
                {"index": i, "text": r.text, "finish_reason": _finish_reason(r)}
                for i, r in enumerate(results)
            ],
            "usage": _usage(results, prepared),
        }

    return app


def _guarded_protocol(config: ServerConfig) -> type:
    """uvicorn's h11 protocol plus what it lacks against slow or many clients: a deadline for each
    request's headers (uvicorn times only idle keep-alive connections, so a client that sends a few
    header bytes now and then holds its connection forever) and a cap on open connections (beyond
    it a connection is answered 503 and closed at once, before it can pile up file descriptors)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    per_client: dict[str, int] = {}  # open connections per client address, for this server

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _armed_for: Any = None

        _client: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
            per_client[self._client] = per_client.get(self._client, 0) + 1
            # The per-address cap first: an address at its cap is told so even when the server has
            # room, and one address can never hold more than its share of max_connections.
            if per_client[self._client] > config.max_connections_per_client:
                message = "too many connections from your address; close idle ones or retry shortly"
            elif len(self.connections) > config.max_connections:
                message = "too many connections; retry shortly"
            else:
                self._arm()
                return
            transport.write(_raw_response(503, "Service Unavailable", message))
            transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._armed_for:  # a new request's headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # the next request on this connection gets its own deadline
            super().on_response_complete()
            if self.cycle is not self._armed_for or self.transport.is_closing():
                self._disarm()  # a pipelined request was already in, or the connection is done

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._client is not None:
                left = per_client.get(self._client, 1) - 1
                if left > 0:
                    per_client[self._client] = left
                else:
                    per_client.pop(self._client, None)  # the table holds only addresses with connections
                self._client = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle
            self._deadline = self.loop.call_later(config.header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                message = f"request headers not received within {config.header_timeout:g} s"
                self.transport.write(_raw_response(408, "Request Timeout", message))
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app: Any, **overrides: Any) -> Any:
    """The uvicorn config that runs ``app`` with its ServerConfig's connection limits."""
    import uvicorn

    config: ServerConfig = app.state.neko_config
    kwargs = dict(host=config.host, port=config.port, http=_guarded_protocol(config), lifespan="on")
    return uvicorn.Config(app, **{**kwargs, **overrides})


def check_open_file_limit(config: ServerConfig) -> None:
    """max_connections must leave room under the open-file limit for the model's own files."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and config.max_connections > soft - 64:
        raise ValueError(
            f"max_connections={config.max_connections} does not fit the open-file limit of {soft} "
            f"(ulimit -n) minus 64 for the server itself; lower --max-connections or raise ulimit -n"
        )


def serve(corrector: Corrector, config: ServerConfig, log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    check_open_file_limit(config)
    uvicorn.Server(uvicorn_config(create_app(corrector, config), log_level=log_level)).run()

"""``neko serve``: an HTTP correction service; this module is its route table.

Each route reads the body (:mod:`neko.infer.http_guards`: key, content type, size, time), parses and
prepares it in the preparation thread (:mod:`neko.infer.wire`), queues the items for the model
(:mod:`neko.infer.batching`) and shapes the answer (:mod:`neko.infer.wire`). So the event loop only
moves bytes, and a client that disconnects has its items dropped before decoding.

Exposure: binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without an API key
unless ``insecure`` (:class:`neko.infer.options.ServerConfig`). With a key every route but
``/health`` (``/v1``, ``/docs``, ``/openapi.json``) needs ``Authorization: Bearer KEY``.

Endpoints (docs/serving.md has examples): ``GET /health``, ``POST /v1/correct`` (one item or
``{"items": [...]}``), ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in handler signatures.
import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse

from neko.infer import wire
from neko.infer.batching import Batcher, ClientGone, QueueFullError
from neko.infer.correct import Corrector
from neko.infer.http_guards import (
    HostCheck,
    allowed_host_names,
    check_auth,
    check_open_file_limit,
    client_gone,
    guarded_protocol,
    read_body,
)
from neko.infer.items import CorrectionResult, PreparedItem
from neko.infer.options import ServerConfig, is_loopback
from neko.infer.wire import HTTPError

__all__ = [
    "QueueFullError",
    "ServerConfig",
    "allowed_host_names",
    "check_open_file_limit",
    "create_app",
    "is_loopback",
    "serve",
    "uvicorn_config",
]


class _Service:
    """What the routes share: the corrector, the limits, the batcher and the preparation thread."""

    def __init__(self, corrector: Corrector, config: ServerConfig) -> None:
        self.corrector, self.config = corrector, config
        self.batcher: Batcher | None = None
        self.prep: ThreadPoolExecutor | None = None
        self.preparing = 0

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self.batcher = Batcher(self.corrector, self.config)
        self.batcher.start()
        # Parsing and prompt building (tokenization) of one request at a time, off the event loop.
        self.prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neko-prepare")
        yield
        await self.batcher.stop()
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

    def check_auth(self, request: Request) -> None:
        check_auth(self.config.api_key, request)

    async def prepare(self, request: Request, parse: Callable[..., Any], *args: Any) -> Any:
        """The body, read under the guards, then ``parse(corrector, *args, body)`` in the
        preparation thread (JSON parsing, validation, tokenization)."""
        raw = await read_body(request, self.config)
        self.preparing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.prep, parse, self.corrector, *args, raw
            )
        finally:
            self.preparing -= 1

    async def decode(
        self, items: list[PreparedItem], details: bool, request: Request
    ) -> list[CorrectionResult]:
        wire.check_count(len(items), self.config.max_items)
        ready = [p for p in items if p.error is None]
        assert self.batcher is not None, "the service is not started"
        try:
            done = iter(
                await self.batcher.submit(ready, details, lambda: client_gone(request)) if ready else []
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


def _service(request: Request) -> _Service:
    return request.app.state.neko_service


# ---- routes


async def health(request: Request):
    # A probe needs only liveness. Queue depth, task names and traffic counters tell a stranger
    # what is served and how busy it is, so with an API key set they need the key (issue 23.5);
    # without a key everything is open to whoever can reach the server anyway.
    try:
        _service(request).check_auth(request)
    except HTTPError:
        return {"status": "ok"}
    return _service(request).health()


async def openapi(request: Request):
    _service(request).check_auth(request)
    return JSONResponse(request.app.openapi())


async def docs(request: Request):
    _service(request).check_auth(request)
    return get_swagger_ui_html(openapi_url="/openapi.json", title=request.app.title)


async def redoc(request: Request):
    _service(request).check_auth(request)
    return get_redoc_html(openapi_url="/openapi.json", title=request.app.title)


async def models(request: Request):
    service = _service(request)
    service.check_auth(request)
    return {
        "object": "list",
        "data": [{"id": service.config.model_name, "object": "model", "owned_by": "neko"}],
    }


async def correct(request: Request):
    service = _service(request)
    batch, details, prepared = await service.prepare(request, wire.parse_correct, service.config.max_items)
    results = await service.decode(prepared, details, request)
    return wire.correct_response(service.config.model_name, batch, results)


async def chat(request: Request):
    service = _service(request)
    prepared = await service.prepare(request, wire.parse_chat)
    results = await service.decode(prepared, True, request)
    return wire.chat_response(service.config.model_name, results, prepared)


async def completions(request: Request):
    service = _service(request)
    prepared = await service.prepare(request, wire.parse_completions, service.config.max_items)
    results = await service.decode(prepared, True, request)
    return wire.completions_response(service.config.model_name, results, prepared)


# (method, path, handler, in the OpenAPI schema); the docs routes sit behind the API key too.
ROUTES = [
    ("GET", "/health", health, True),
    ("GET", "/openapi.json", openapi, False),
    ("GET", "/docs", docs, False),
    ("GET", "/redoc", redoc, False),
    ("GET", "/v1/models", models, True),
    ("POST", "/v1/correct", correct, True),
    ("POST", "/v1/chat/completions", chat, True),
    ("POST", "/v1/completions", completions, True),
]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status)


async def _http_error(_req: Request, exc: HTTPError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.kind)


async def _internal_error(_req: Request, exc: Exception) -> JSONResponse:
    # A model failure answers this request with a JSON 500; the worker and server keep running.
    return _error(500, f"internal error while correcting: {type(exc).__name__}: {exc}", "server_error")


def create_app(corrector: Corrector, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded corrector (run it with :func:`uvicorn_config`, as ``serve`` does)."""
    config = config or ServerConfig()
    service = _Service(corrector, config)
    app = FastAPI(
        title="neko correction server",
        lifespan=service.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.neko_config = config
    app.state.neko_service = service
    app.add_middleware(HostCheck, allowed=allowed_host_names(config))
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    for method, path, handler, in_schema in ROUTES:
        app.add_api_route(path, handler, methods=[method], include_in_schema=in_schema)
    return app


def uvicorn_config(app: Any, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config that runs ``app`` with its ServerConfig's connection limits."""
    config: ServerConfig = app.state.neko_config
    kwargs = dict(host=config.host, port=config.port, http=guarded_protocol(config), lifespan="on")
    return uvicorn.Config(app, **{**kwargs, **overrides})


def serve(corrector: Corrector, config: ServerConfig, log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    check_open_file_limit(config)
    uvicorn.Server(uvicorn_config(create_app(corrector, config), log_level=log_level)).run()

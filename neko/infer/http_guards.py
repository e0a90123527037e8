"""The server's HTTP guards: nothing a stranger sends may reach the model unchecked or stall the service.

- Host check (:class:`HostCheck`): a request whose ``Host`` header names no known host gets 400, so
  DNS rebinding cannot turn a malicious page into a loopback client (a wildcard bind accepts any).
- Key and body (:func:`check_auth`, :func:`read_body`): ``Authorization: Bearer KEY`` compared in
  constant time; ``Content-Type: application/json`` (415 otherwise: a browser's cross-site "simple"
  request cannot send it); a body over ``max_body_bytes`` is a 413 while it is read, not after; a
  client has ``body_timeout`` s for its body (408).
- Connections (:class:`GuardedH11Protocol`): a client has ``header_timeout`` s to send a request's
  headers (408), at most ``max_connections`` are open at once and ``max_connections_per_client`` from
  one address (more get 503 and are closed before they hold a file descriptor for long).
"""

from __future__ import annotations

import asyncio
import hmac
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from neko.infer.options import ServerConfig
from neko.infer.wire import HTTPError, error_body

__all__ = [
    "GuardedH11Protocol",
    "HostCheck",
    "allowed_host_names",
    "check_auth",
    "check_open_file_limit",
    "client_gone",
    "guarded_protocol",
    "read_body",
]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD = ("0.0.0.0", "::", "")


# ---- host check


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


class HostCheck:
    """ASGI middleware: a request whose Host header names no known host gets 400 (DNS rebinding)."""

    def __init__(self, app: Any, allowed: frozenset[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(raw) not in self.allowed:
                body = error_body(
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


# ---- key and body


def check_auth(api_key: str | None, request: Any) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise HTTPError(
            401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "authentication_error"
        )


async def read_body(request: Any, config: ServerConfig) -> bytes:
    """The raw body, after the checks that cost nothing: key, content type, declared size."""
    check_auth(config.api_key, request)
    limit = config.max_body_bytes
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
        return await asyncio.wait_for(collect(), config.body_timeout)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"request body not received within {config.body_timeout:g} s") from None


async def client_gone(request: Any) -> None:
    """Returns when the client disconnects. Only called once the body is read: from then on the
    server's receive() has nothing to deliver but the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- connections


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A whole response for the connection layer, which answers and closes before any request exists."""
    body = error_body(status, message, "server_error" if status >= 500 else "invalid_request_error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus what it lacks against slow or many clients: a deadline for each
    request's headers (uvicorn times only idle keep-alive connections, so a client that sends a few
    header bytes now and then holds its connection forever) and a cap on open connections (beyond
    it a connection is answered 503 and closed at once, before it can pile up file descriptors).
    Use :func:`guarded_protocol`, which gives each server its limits and connection table."""

    neko_config: ServerConfig
    neko_per_client: dict[str, int]  # open connections per client address, for this server
    _deadline: asyncio.TimerHandle | None = None
    _armed_for: Any = None
    _client: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        config, per_client = self.neko_config, self.neko_per_client
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
            per_client = self.neko_per_client
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
        self._deadline = self.loop.call_later(self.neko_config.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            message = f"request headers not received within {self.neko_config.header_timeout:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", message))
            self.transport.close()


def guarded_protocol(config: ServerConfig) -> type[GuardedH11Protocol]:
    """The protocol class for one server: its limits, and its own table of connections per address."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"neko_config": config, "neko_per_client": {}})


def check_open_file_limit(config: ServerConfig) -> None:
    """max_connections must leave room under the open-file limit for the model's own files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and config.max_connections > soft - 64:
        raise ValueError(
            f"max_connections={config.max_connections} does not fit the open-file limit of {soft} "
            f"(ulimit -n) minus 64 for the server itself; lower --max-connections or raise ulimit -n"
        )

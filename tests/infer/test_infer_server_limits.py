"""What a stranger can send a real server on loopback: it answers with 4xx, stays responsive and
does no work for nobody. Each test states the request; none measures speed."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from infer_helpers import LiveServer, http_exchange, post_bytes, read_until_closed

from neko.infer.server import ServerConfig, create_app

KEY = "k3y"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _poll(url: str, until, what: str, deadline_s: float = 60.0) -> dict:
    """/health until ``until(json)`` holds (a state to reach, not a duration to measure)."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            j = httpx.get(url + "/health", timeout=10).json()
            if until(j):
                return j
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    pytest.fail(f"server never reached: {what}")


@pytest.fixture(scope="module")
def server(corrector):
    with LiveServer(create_app(corrector, ServerConfig())) as s:
        yield s


def test_too_many_items_is_413_before_any_item_is_looked_at(server):
    # 25,000 items, every one invalid: the count decides, not item 0's type error.
    body = json.dumps({"task": "ocr", "items": [{"input": 5}] * 25_000}).encode()
    r = httpx.post(server.url + "/v1/correct", content=body, headers={"Content-Type": "application/json"})
    assert (
        r.status_code == 413 and "25000 items in one request; the limit is 64" in r.json()["error"]["message"]
    )
    r = httpx.post(server.url + "/v1/completions", json={"prompt": [5] * 1000})
    assert r.status_code == 413


def test_preparation_runs_off_the_event_loop(server):
    # 64 long items: tokenizing them is real CPU work. /health must be answered while it runs,
    # which a handler doing that work on the event loop makes impossible.
    items = [{"task": "ocr", "input": f"word{i} " * 2100} for i in range(64)]
    result: list = []
    big = threading.Thread(
        target=lambda: result.append(
            httpx.post(server.url + "/v1/correct", json={"items": items}, timeout=120)
        )
    )
    big.start()
    seen = False
    while big.is_alive() and not seen:
        seen = httpx.get(server.url + "/health", timeout=60).json().get("preparing", 0) > 0
    big.join()
    assert seen, "/health was never answered while a request was being prepared"
    assert result[0].status_code == 200 and all(
        "exceeds the limit" in x["error"] for x in result[0].json()["results"]
    )


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"task": "ocr", "input": "a", "id": ' + b"7" * 5000 + b"}", "digits"),
    ],
    ids=["nested", "huge-int"],
)
def test_deep_nesting_and_huge_numbers_are_400_and_keep_the_connection(server, body, message):
    port = int(server.url.rsplit(":", 1)[1])
    answers = http_exchange(port, [post_bytes(port, "/v1/correct", body), HEALTH])
    assert [status for status, _ in answers] == [400, 200]
    assert message in json.loads(answers[0][1])["error"]["message"]


def test_only_json_bodies_and_known_hosts_are_served(server):
    port = int(server.url.rsplit(":", 1)[1])
    row = b'{"task": "ocr", "input": "speech text"}'
    # a cross-site page can POST text/plain (a "simple request") without any preflight
    for ctype in ("text/plain", "application/x-www-form-urlencoded", ""):
        r = http_exchange(port, [post_bytes(port, "/v1/correct", row, ctype)])
        assert r[0][0] == 415 and b"application/json" in r[0][1]
    r = http_exchange(port, [post_bytes(port, "/v1/correct", row, "application/json; charset=utf-8")])
    assert r[0][0] == 200
    # DNS rebinding: the browser sends the attacker's name in Host
    evil = httpx.get(server.url + "/health", headers={"Host": "evil.example:80"})
    assert evil.status_code == 400 and "evil.example" in evil.json()["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200


def test_docs_and_openapi_need_the_key(corrector):
    with LiveServer(create_app(corrector, ServerConfig(api_key=KEY))) as s:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(s.url + path).status_code == 401
            assert httpx.get(s.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert (
            "/v1/correct"
            in httpx.get(s.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()["paths"]
        )
        assert httpx.get(s.url + "/health").status_code == 200


def test_a_non_loopback_address_needs_a_key_or_insecure():
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(ValueError, match=f"refusing to serve on {host} without an API key"):
            ServerConfig(host=host)
        ServerConfig(host=host, api_key=KEY)
        ServerConfig(host=host, insecure=True)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        ServerConfig(host=host)


def test_slow_headers_and_slow_bodies_get_408_and_are_closed(corrector):
    with LiveServer(create_app(corrector, ServerConfig(header_timeout=1, body_timeout=1))) as s:
        # headers that never end
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
            assert read_until_closed(c).startswith(b"HTTP/1.1 408 ")
        # the same on a keep-alive connection after a first request
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.sendall(HEALTH)
            c.recv(65536)
            c.sendall(b"GET /health HTTP/1.1\r\n")
            assert b"HTTP/1.1 408 " in read_until_closed(c)
        # a body that never arrives in full
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.sendall(post_bytes(s.port, "/v1/correct", b"x" * 100)[:-90])
            answer = read_until_closed(c)
            assert answer.startswith(b"HTTP/1.1 408 ") and b"body not received" in answer
        assert httpx.get(s.url + "/health").status_code == 200


def test_connections_beyond_the_cap_get_503_and_are_closed(corrector):
    with LiveServer(create_app(corrector, ServerConfig(max_connections=3, header_timeout=120))) as s:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", s.port)) as extra:
                answer = read_until_closed(extra)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        finally:
            for c in idle:
                c.close()
        _poll(s.url, lambda j: j["status"] == "ok", "a free connection after the idle ones closed")


def test_items_of_a_client_that_disconnected_are_dropped_not_decoded(corrector):
    # One batch holds two items and the worker waits up to a minute for it to fill, so a lone
    # request stays queued until the test sends more.
    cfg = ServerConfig(max_batch=2, max_wait_ms=60_000)
    with LiveServer(create_app(corrector, cfg)) as s:
        gone = socket.create_connection(("127.0.0.1", s.port))
        gone.sendall(post_bytes(s.port, "/v1/correct", b'{"task": "ocr", "input": "never read"}'))
        _poll(s.url, lambda j: j["queue"] == 1, "the first request queued")
        gone.close()
        j = _poll(s.url, lambda j: j["stats"].get("disconnected") == 1, "the disconnect noticed")
        assert j["queue"] == 0

        async def two():
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as c:
                return await asyncio.gather(
                    *(
                        c.post("/v1/correct", json={"task": "ocr", "input": f"speech text {i}"})
                        for i in range(2)
                    )
                )

        assert [r.status_code for r in asyncio.run(two())] == [200, 200]
        assert httpx.get(s.url + "/health").json()["stats"]["items"] == 2


def _connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))  # any 127.x.y.z is a loopback address of its own: a second client address
    s.connect(("127.0.0.1", port))
    return s


def test_one_client_holding_idle_connections_cannot_starve_the_others(corrector):
    """Issue 23.5: one client holding 256 idle connections made /health and every request 503 for all."""
    cfg = ServerConfig(max_connections=256, max_connections_per_client=8, header_timeout=120)
    with LiveServer(create_app(corrector, cfg)) as s:
        flood = []
        try:
            for _ in range(256):  # bounded: the whole global cap from one address
                flood.append(_connect_from("127.0.0.2", s.port))
            answers = []
            for c in flood[8:12]:
                answers.append(read_until_closed(c))
            assert all(a.startswith(b"HTTP/1.1 503 ") and b"from your address" in a for a in answers), answers
            r = httpx.get(s.url + "/health", timeout=30)  # another address is served
            assert r.status_code == 200 and r.json()["status"] == "ok"
            r = httpx.post(s.url + "/v1/correct", json={"task": "ocr", "input": "teh cat"}, timeout=60)
            assert r.status_code == 200, r.text
        finally:
            for c in flood:
                c.close()
        # the flooder's slots come back once it closes them
        _poll(s.url, lambda j: j["status"] == "ok", "health after the flood")
        with _connect_from("127.0.0.2", s.port) as again:
            again.sendall(
                f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nConnection: close\r\n\r\n".encode()
            )
            assert read_until_closed(again).startswith(b"HTTP/1.1 200 ")


def test_health_without_the_key_shows_only_liveness(corrector):
    with LiveServer(create_app(corrector, ServerConfig(api_key="k"))) as s:
        bare = httpx.get(s.url + "/health", timeout=30)
        assert bare.status_code == 200 and bare.json() == {"status": "ok"}
        full = httpx.get(s.url + "/health", headers={"Authorization": "Bearer k"}, timeout=30).json()
        assert full["status"] == "ok" and "tasks" in full and "stats" in full and "queue" in full


@pytest.mark.parametrize("field", ["timeout", "header_timeout", "body_timeout", "max_wait_ms"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_timeouts_must_be_positive_and_finite(field, value):
    if field == "max_wait_ms" and value == 0.0:
        assert ServerConfig(max_wait_ms=0).max_wait_ms == 0  # no batch wait: decode at once
        return
    with pytest.raises(ValueError, match=rf"{field} must be a (positive )?finite number.*, got {value}"):
        ServerConfig(**{field: value})

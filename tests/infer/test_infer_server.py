from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
from infer_helpers import LiveServer, sample_rows

from neko.infer.correct import Corrector
from neko.infer.server import ServerConfig, create_app

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(corrector):
    with LiveServer(
        create_app(corrector, ServerConfig(api_key=KEY, max_items=8, max_body_bytes=20_000))
    ) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def test_health_is_open(server, client):
    r = httpx.get(server.url + "/health")  # probes need no key, and learn only that it is alive
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert "asr" in client.get("/health").json()["tasks"]


def test_correct_single_and_batch_match_the_library(client, corrector):
    rows = sample_rows(6)
    expected = [c.text for c in corrector.correct(rows)]
    one = client.post("/v1/correct", json={k: rows[1][k] for k in ("id", "task", "input")})
    assert one.status_code == 200, one.text
    assert one.json()["correction"] == expected[1] and one.json()["id"] == "r1"
    batch = client.post(
        "/v1/correct", json={"items": [{"input": r["input"], "task": r["task"]} for r in rows]}
    )
    assert batch.status_code == 200
    assert [x["correction"] for x in batch.json()["results"]] == expected
    # Default task at the top level, a per-item error in a batch, details on request.
    mixed = client.post(
        "/v1/correct",
        json={"task": "ocr", "details": True, "items": [{"input": "speech text"}, {"input": "  "}]},
    ).json()["results"]
    assert mixed[0]["details"]["experts"]["layers"] and "empty" in mixed[1]["error"]


def test_openai_chat_and_completions(client, corrector):
    body = "Fix the spelling mistakes in this text\n'speech tetx'"
    expected = corrector.run([corrector.prepare_body(body)])[0].text
    chat = client.post(
        "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": body}]}
    )
    assert chat.status_code == 200, chat.text
    j = chat.json()
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["content"] == expected
    assert j["usage"]["prompt_tokens"] > 0
    n = j["usage"]["completion_tokens"]
    assert j["choices"][0]["finish_reason"] == ("length" if n == corrector.options.max_new_tokens else "stop")
    parts = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": body}]},
    ]
    assert (
        client.post("/v1/chat/completions", json={"messages": parts}).json()["choices"][0]["message"][
            "content"
        ]
        == expected
    )
    comp = client.post("/v1/completions", json={"prompt": [body, body]}).json()
    assert [c["text"] for c in comp["choices"]] == [expected, expected]
    # neko extension: "task" turns the message into the raw input of that task's prompt.
    task = client.post(
        "/v1/chat/completions", json={"task": "ocr", "messages": [{"role": "user", "content": "speech text"}]}
    )
    assert (
        task.json()["choices"][0]["message"]["content"] == corrector.correct("speech text", task="ocr").text
    )
    assert client.get("/v1/models").json()["data"][0]["object"] == "model"


def test_auth(server):
    body = {"task": "ocr", "input": "speech text"}
    assert httpx.post(server.url + "/v1/correct", json=body).status_code == 401
    bad = httpx.post(server.url + "/v1/correct", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "API key" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload, status, message",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "UTF-8"),
        (b"[1, 2]", 422, "expected a JSON object"),
        (b'{"task": "ocr"}', 422, "'input' is required"),
        (b'{"task": "ocr", "input": 5}', 422, "expected a string or a list of strings"),
        (b'{"task": 3, "input": "a"}', 422, "task: expected a string"),
        (b'{"input": "a"}', 422, "'task' is required"),
        (b'{"task": "asrr", "input": "a"}', 400, "Did you mean 'asr'"),
        (b'{"task": "ocr", "input": "   "}', 422, "empty input"),
        (b'{"task": "ocr", "input": "a", "details": "yes"}', 422, "true or false"),
        (b'{"items": {"input": "a"}}', 422, "'items'"),
        (b'{"task": "ocr", "items": [' + b",".join([b'{"input": "a"}'] * 9) + b"]}", 413, "limit is 8"),
        (b'{"task": "ocr", "input": "' + b"a " * 15_000 + b'"}', 413, "exceeds the limit"),
    ],
)
def test_bad_requests_get_clear_4xx(client, payload, status, message):
    r = client.post("/v1/correct", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_openai_bad_requests(client):
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 422
    r = client.post(
        "/v1/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "a"}]}
    )
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    assert client.post("/v1/completions", json={"prompt": 3}).status_code == 422


def test_flood_gets_429_and_nothing_is_lost(corrector):
    slow = Corrector(
        corrector.model,
        corrector.tokenizer,
        registry=corrector.registry,
        options=dataclasses.replace(corrector.options, max_new_tokens=64),
    )
    cfg = ServerConfig(max_queue=2, max_batch=1, max_wait_ms=0)
    with LiveServer(create_app(slow, cfg)) as s:

        async def flood():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                reqs = [
                    c.post("/v1/correct", json={"task": "ocr", "input": f"speech text {i}"})
                    for i in range(24)
                ]
                return await asyncio.gather(*reqs)

        codes = [r.status_code for r in asyncio.run(flood())]
        assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 2
        busy = next(r for r in asyncio.run(flood()) if r.status_code == 429)
        assert "queue is full" in busy.json()["error"]["message"]
        assert httpx.get(s.url + "/health").json()["stats"]["rejected"] > 0


def test_timeout_gives_504(corrector):
    slow = Corrector(
        corrector.model,
        corrector.tokenizer,
        registry=corrector.registry,
        options=dataclasses.replace(corrector.options, max_new_tokens=200),
    )
    with LiveServer(create_app(slow, ServerConfig(timeout=0.01))) as s:
        r = httpx.post(s.url + "/v1/correct", json={"task": "ocr", "input": "speech text"}, timeout=30)
        assert r.status_code == 504 and "longer than" in r.json()["error"]["message"]
        # The server keeps serving after a timeout.
        assert httpx.get(s.url + "/health").status_code == 200


def test_concurrent_clients_are_batched_together(corrector):
    with LiveServer(create_app(corrector, ServerConfig(max_batch=8, max_wait_ms=50))) as s:

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                reqs = [
                    c.post("/v1/correct", json={"task": "ocr", "input": f"speech text {i}"}) for i in range(8)
                ]
                return await asyncio.gather(*reqs)

        res = asyncio.run(burst())
        assert all(r.status_code == 200 for r in res)
        assert [r.json()["correction"] for r in res] == [
            c.text
            for c in corrector.correct([{"task": "ocr", "input": f"speech text {i}"} for i in range(8)])
        ]
        stats = httpx.get(s.url + "/health").json()["stats"]
        assert stats["items"] == 8 and stats["batches"] < 8

"""Helpers for the infer tests: tiny real models saved exactly like a trained model directory."""

from __future__ import annotations

import json
from pathlib import Path


def make_model_dir(path: Path, kind: str = "mixtral") -> Path:
    from neko.model.tiny import tiny_llama, tiny_mixtral, tiny_tokenizer
    from neko.tasks import save_prompt_config

    # A larger init spread makes random models emit varied tokens instead of one repeated token,
    # so batched-vs-single comparisons are meaningful.
    model = (tiny_mixtral if kind == "mixtral" else tiny_llama)(initializer_range=0.3)
    model.save_pretrained(path)
    tiny_tokenizer(save_dir=path)
    save_prompt_config(path)
    return path


def sample_rows(n: int = 12) -> list[dict]:
    words = "the speech text error correct recognition translation sentence grammar of and to".split()
    rows = []
    for i in range(n):
        ws = [words[(i * 3 + k) % len(words)] for k in range(3 + i % 6)]
        if i % 2:
            rows.append(
                {
                    "id": f"r{i}",
                    "task": "asr",
                    "input": [" ".join(ws), " ".join(ws[:-1])],
                    "output": " ".join(ws),
                }
            )
        else:
            rows.append({"id": f"r{i}", "task": "ocr", "input": " ".join(ws), "output": " ".join(ws)})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class LiveServer:
    """A real uvicorn server on a free loopback port, in a background thread, run with the same
    uvicorn config (connection limits and timeouts) as `neko serve`."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        from neko.infer.server import uvicorn_config

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def http_exchange(port: int, requests: list[bytes], timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """Send raw HTTP/1.1 requests one after another on ONE connection; (status, body) of each answer.

    The list is shorter than ``requests`` when the server closed the connection early, which is
    what a keep-alive client sees as a failed next request."""
    import socket

    out: list[tuple[int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        buf = b""
        for req in requests:
            try:
                s.sendall(req)
            except OSError:
                break
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            n = int(headers.get("content-length", "0"))
            while len(buf) < n:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            out.append((int(lines[0].split()[1]), buf[:n]))
            buf = buf[n:]
    return out


def post_bytes(port: int, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A raw POST request (so tests can send what no well-behaved client library would)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_until_closed(sock, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data

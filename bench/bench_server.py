"""Load test for ``neko serve``: bounded concurrent clients on loopback for a bounded time.

Usage: python bench/bench_server.py [--clients 8] [--seconds 20] [--max-batch 16] [--max-new-tokens 16]

Starts the real server (uvicorn, in-process thread, free loopback port) around a random tiny-but-not-
trivial Mixtral and the tiny tokenizer, then runs ``--clients`` closed-loop clients, each sending
one ``POST /v1/correct`` after another (inputs from data/samples/neko.jsonl) until ``--seconds``
pass. Reports throughput, p50/p99 latency, status codes, failed (non-200) and lost (no response)
requests, and the server's own batching statistics. A second run with one client gives the
unbatched reference in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_model(out: Path, layers: int) -> Path:
    import torch

    from neko.model.tiny import tiny_mixtral, tiny_tokenizer
    from neko.tasks import save_prompt_config

    torch.manual_seed(0)
    model = tiny_mixtral(
        hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=8
    )
    model.save_pretrained(out)
    tiny_tokenizer(save_dir=out)
    save_prompt_config(out)
    return out


class Server:
    def __init__(self, app) -> None:
        import uvicorn

        from neko.infer.server import uvicorn_config

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # what `neko serve` runs: its connection cap and header deadline included
        self.server = uvicorn.Server(uvicorn_config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


async def drive(url: str, rows: list[dict], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    codes: dict[str, int] = {}
    lost = 0
    stop = time.perf_counter() + seconds

    async def client(k: int, c: httpx.AsyncClient) -> None:
        nonlocal lost
        i = k
        while time.perf_counter() < stop:
            row = rows[i % len(rows)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/correct", json={"task": row["task"], "input": row["input"]})
            except httpx.HTTPError:
                lost += 1
                continue
            latencies.append(time.perf_counter() - t0)
            codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1

    limits = httpx.Limits(max_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        before = (await c.get("/health")).json()["stats"]
        await asyncio.gather(*(client(k, c) for k in range(clients)))
        stats = (await c.get("/health")).json()["stats"]
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": len(lat) + lost,
        "ok": codes.get("200", 0),
        "failed": sum(v for k, v in codes.items() if k != "200"),
        "lost": lost,
        "rps": codes.get("200", 0) / wall,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "mean_batch": (stats["items"] - before["items"]) / max(stats["batches"] - before["batches"], 1),
        "codes": codes,
    }


def main() -> None:
    import torch

    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.infer.server import ServerConfig, create_app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument(
        "--max-wait-ms", type=float, default=None, help="server batching wait [default: ServerConfig]"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(x) for x in (REPO / "data/samples/neko.jsonl").read_text().splitlines() if x.strip()]
    print(
        f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(
        f"mixtral {args.layers}L hidden 256, 8 experts top-2; {args.max_new_tokens} new tokens/request; "
        f"{args.seconds:g} s per run; max_batch {args.max_batch}, max_wait_ms {args.max_wait_ms or 'default'}\n"
    )
    header = f"{'clients':>8}{'ok':>7}{'failed':>8}{'lost':>6}{'req/s':>8}{'p50 s':>8}{'p99 s':>8}{'mean batch':>12}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "m", args.layers)
        opts = CorrectionOptions(max_new_tokens=args.max_new_tokens, batch_size=args.max_batch, guard="off")
        corrector = Corrector.from_pretrained(model_dir, opts)
        cfg = ServerConfig(max_batch=args.max_batch, max_queue=4 * args.max_batch, timeout=120)
        if args.max_wait_ms is not None:
            cfg = dataclasses.replace(cfg, max_wait_ms=args.max_wait_ms)
        with Server(create_app(corrector, cfg)) as s:
            for n in (1, args.clients):
                r = asyncio.run(drive(s.url, rows, n, args.seconds))
                print(
                    f"{n:>8}{r['ok']:>7}{r['failed']:>8}{r['lost']:>6}{r['rps']:>8.2f}{r['p50']:>8.2f}"
                    f"{r['p99']:>8.2f}{r['mean_batch']:>12.1f}"
                )


if __name__ == "__main__":
    main()

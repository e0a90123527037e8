"""Dynamic batching for the server: items from many requests decoded together, with back-pressure.

One background worker owns the model. Request handlers only validate and enqueue; the worker takes
up to ``max_batch`` queued items (from any number of requests), waiting at most ``max_wait_ms`` for
a batch to fill, and decodes them with one ``Corrector.run`` in a worker thread so the event loop
keeps accepting requests. Batching concurrent clients is what turns a per-request ``generate`` into
the batched throughput measured in bench/bench_correct.py.

Back-pressure instead of collapse: at most ``max_queue`` items wait; a request that would exceed it
is refused at once (:class:`QueueFullError`, a 429). Each request waits at most ``timeout`` s; an
item whose client gave up (:class:`ClientGone`) or timed out is dropped before decoding.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from neko.infer.items import CorrectionResult, PreparedItem
from neko.infer.options import ServerConfig

if TYPE_CHECKING:
    from neko.infer.correct import Corrector

__all__ = ["Batcher", "ClientGone", "QueueFullError"]


class QueueFullError(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected while its items waited; they were dropped."""


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
        self,
        items: list[PreparedItem],
        details: bool,
        gone: Callable[[], Awaitable[None]] | None = None,
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

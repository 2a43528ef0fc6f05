"""Micro-batching: concurrent requests share one ONNX run (each is still searched and merged on its own).

The first request of a batch waits at most ``max_wait`` seconds for others to join (or until
``max_size`` have), but only while other requests are on their way (between arrival and the
queue, e.g. reading their history): a lone request is dispatched at once, so coalescing costs
nothing at low concurrency. The whole batch then runs in the compute thread pool while the next
batch collects. Whether this raises throughput depends on the per-call overhead it amortises against
the added wait; benchmarks/serving.py measures both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from service import metrics
from service.engine import Engine, Query, Result, Timings


class MicroBatcher:
    def __init__(
        self,
        executor: Executor,
        max_wait: float,
        max_size: int,
        parallel: int = 1,
        active: Callable[[], int] = lambda: 0,
    ):
        self.executor, self.max_wait, self.max_size = executor, max_wait, max_size
        self.active = active  # requests being handled right now (arrived, not yet answered)
        self.running = 0  # requests inside batches that are computing
        self.slots = asyncio.Semaphore(parallel)  # batches in flight (one per compute thread)
        self.queue: asyncio.Queue[tuple[Query, Engine, asyncio.Future[tuple[Result, Timings]]]] = asyncio.Queue()
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, query: Query, engine: Engine) -> tuple[Result, Timings]:
        """Runs ``query`` on ``engine``: the one whose item indices encoded it, even if a reload
        has swapped in another since."""
        future: asyncio.Future[tuple[Result, Timings]] = asyncio.get_running_loop().create_future()
        await self.queue.put((query, engine, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                if self.active() - self.running - len(batch) <= 0:
                    break  # nobody else is coming: do not wait for them
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            groups: dict[int, list[tuple[Query, Engine, asyncio.Future[Any]]]] = {}
            for item in batch:  # only during a reload do two engines meet in one batch
                groups.setdefault(id(item[1]), []).append(item)
            for group in groups.values():
                metrics.BATCH_SIZE.observe(len(group))
                await self.slots.acquire()
                loop.create_task(self._execute(group))

    async def _execute(self, batch: list[tuple[Query, Engine, asyncio.Future[Any]]]) -> None:
        engine = batch[0][1]
        self.running += len(batch)
        try:
            results, timings = await asyncio.get_running_loop().run_in_executor(
                self.executor, engine.recommend, [query for query, _, _ in batch]
            )
        except Exception as exc:  # hand the failure to every waiting request
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.running -= len(batch)
            self.slots.release()
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result((result, timings))

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

from retrieval.engine import Engine
from retrieval.query import Query, Result, Timings
from service import telemetry

Pending = tuple[Query, Engine, asyncio.Future[tuple[Result, Timings]]]  # a request waiting for its batch


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
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None  # the collector
        self.batches: set[asyncio.Task[None]] = set()  # batches computing; held so none is lost or outlives stop()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stops collecting and cancels the batches in flight; every request still waiting gets
        CancelledError rather than waiting forever (the server drains requests before this)."""
        tasks = [t for t in (self.task, *self.batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.task = None
        while not self.queue.empty():
            _, _, future = self.queue.get_nowait()
            future.cancel()

    async def submit(self, query: Query, engine: Engine) -> tuple[Result, Timings]:
        """Runs ``query`` on ``engine``: the one whose item indices encoded it, even if a reload
        has swapped in another since."""
        future: asyncio.Future[tuple[Result, Timings]] = asyncio.get_running_loop().create_future()
        await self.queue.put((query, engine, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            try:
                await self._collect(batch)
                await self._dispatch(batch)
            except asyncio.CancelledError:  # stop(): nobody will answer these requests now
                for _, _, future in batch:
                    future.cancel()  # a no-op for those already answered
                raise

    async def _collect(self, batch: list[Pending]) -> None:
        """Adds requests to ``batch`` while others are on their way, up to max_size and max_wait."""
        loop = asyncio.get_running_loop()
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

    async def _dispatch(self, batch: list[Pending]) -> None:
        """One compute task per engine in the batch, each holding a slot (a compute thread)."""
        groups: dict[int, list[Pending]] = {}
        for item in batch:  # only during a reload do two engines meet in one batch
            groups.setdefault(id(item[1]), []).append(item)
        for group in groups.values():
            telemetry.BATCH_SIZE.observe(len(group))
            await self.slots.acquire()
            task = asyncio.get_running_loop().create_task(self._execute(group))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    async def _execute(self, batch: list[Pending]) -> None:
        engine = batch[0][1]
        self.running += len(batch)
        try:
            results, timings = await asyncio.get_running_loop().run_in_executor(
                self.executor, engine.recommend, [query for query, _, _ in batch]
            )
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
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

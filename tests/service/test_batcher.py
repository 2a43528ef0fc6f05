"""Micro-batching: concurrent requests share a call, each on the engine that encoded it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from retrieval.query import Query, Result, Timings
from service.batcher import MicroBatcher


class RecordingEngine:
    """Stands in for Engine.recommend and records the batches it ran."""

    def __init__(self, name: str):
        self.name, self.batches = name, []

    def recommend(self, queries):
        self.batches.append(len(queries))
        return [Result([self.name], [1.0], [0], False) for _ in queries], Timings()


def run(submissions, active: int):
    async def scenario():
        batcher = MicroBatcher(ThreadPoolExecutor(2), max_wait=0.05, max_size=64, parallel=2, active=lambda: active)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(Query(np.array([1]), 5), e) for e in submissions))
        finally:
            await batcher.stop()

    return asyncio.run(scenario())


def test_concurrent_requests_share_one_call() -> None:
    engine = RecordingEngine("a")
    answers = run([engine] * 5, active=5)
    assert engine.batches == [5] and [r.item_ids for r, _ in answers] == [["a"]] * 5


def test_each_request_runs_on_the_engine_that_encoded_it() -> None:
    """A reload between encoding and computing must not send one model's item indices to another."""
    old, new = RecordingEngine("old"), RecordingEngine("new")
    answers = run([old, new, old], active=3)
    assert [r.item_ids[0] for r, _ in answers] == ["old", "new", "old"]
    assert old.batches == [2] and new.batches == [1]


class SlowEngine(RecordingEngine):
    def recommend(self, queries):
        time.sleep(0.3)
        return super().recommend(queries)


def test_stop_leaves_no_task_behind_and_no_request_waiting() -> None:
    """Shutdown cancels the collector and every batch in flight (all held by the batcher), and
    each request still waiting, computing or queued, is cancelled rather than left hanging."""

    async def scenario():
        batcher = MicroBatcher(ThreadPoolExecutor(1), max_wait=0.0, max_size=1, parallel=1, active=lambda: 3)
        batcher.start()
        engine = SlowEngine("slow")
        waiting = [asyncio.create_task(batcher.submit(Query(np.array([1]), 5), engine)) for _ in range(3)]
        await asyncio.sleep(0.1)  # one batch computing, one waiting for the compute slot, one queued
        assert len(batcher.batches) == 1
        await batcher.stop()
        assert not batcher.batches and batcher.task is None
        return await asyncio.gather(*waiting, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [asyncio.CancelledError] * 3

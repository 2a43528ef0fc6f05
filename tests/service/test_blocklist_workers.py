"""The live blocklist through real `remi serve` processes: several SO_REUSEPORT workers, real Redis.

A block posted to one worker must reach every worker's answers within a second (each polls the
list's version, REMI_BLOCKLIST_POLL_MS = 200 ms), and a restarted server must still apply it.
Requests go on fresh connections so the kernel spreads them over the workers; each answer names
its worker (the X-Remi-Worker header), so the test knows every worker was seen.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.service.conftest import SHARED_REDIS, OwnRedis, start_server, wait_for
from tests.service.test_blocklist import fill_to_maxmemory
from tests.service.tiny_model import TinyModel

TOKEN = {"authorization": "Bearer s3cret"}
WINDOW_S = 1.5  # watch every worker this long after the block; it must be clean from 1 s on
WORKERS = 2


def ask(url: str, body: dict[str, Any]) -> tuple[str, list[str]]:
    """(worker pid, item ids) of one answer, on a new connection (so any worker may take it)."""
    response = httpx.post(f"{url}/recommend", json=body, headers={"connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-remi-worker"], [item["item_id"] for item in response.json()["items"]]


def env(prefix: str, **extra: str) -> dict[str, str]:
    return {"REMI_REDIS_URL": SHARED_REDIS, "REMI_REDIS_PREFIX": prefix, "REMI_ADMIN_TOKEN": "s3cret", **extra}


def test_a_blocked_item_leaves_every_workers_answers_within_a_second(
    tiny_root: Path, tiny_model: TinyModel, redis_prefix: str
) -> None:
    body = {"user_id": "u", "k": 10, "history": tiny_model.item_ids[10:16], "use_stored_history": False}
    server = start_server(tiny_root, None, **env(redis_prefix, REMI_WORKERS=str(WORKERS)))
    try:
        best = ask(server.url, body)[1][0]
        workers: set[str] = set()

        def every_worker_answers_best() -> bool:
            pid, items = ask(server.url, body)
            assert items[0] == best  # workers agree before the block
            workers.add(pid)
            return len(workers) == WORKERS

        wait_for(every_worker_answers_best, timeout=30, interval=0)

        start = time.monotonic()
        blocked = httpx.post(f"{server.url}/admin/items/block", json={"item_ids": [best]}, headers=TOKEN, timeout=10)
        assert blocked.status_code == 200, blocked.text
        last_seen = {pid: 0.0 for pid in workers}  # per worker: when its last answer holding `best` came
        clean_after_1s = {pid: 0 for pid in workers}
        while (elapsed := time.monotonic() - start) < WINDOW_S:
            pid, items = ask(server.url, body)
            assert len(items) == 10
            if best in items:
                last_seen[pid] = time.monotonic() - start
            elif elapsed >= 1.0:
                clean_after_1s[pid] += 1
        print(f"last answer holding the blocked item, per worker (s after the block call): {last_seen}")
        assert all(t < 1.0 for t in last_seen.values()), last_seen
        assert all(n > 0 for n in clean_after_1s.values()), clean_after_1s  # every worker was watched past 1 s
    finally:
        server.stop()


def test_a_restarted_server_still_blocks(tiny_root: Path, tiny_model: TinyModel, redis_prefix: str) -> None:
    body = {"user_id": "u", "k": 10, "history": tiny_model.item_ids[10:16], "use_stored_history": False}
    server = start_server(tiny_root, None, **env(redis_prefix))
    try:
        best = ask(server.url, body)[1][0]
        assert (
            httpx.post(f"{server.url}/admin/items/block", json={"item_ids": [best]}, headers=TOKEN).status_code == 200
        )
        assert best not in ask(server.url, body)[1]
    finally:
        server.stop()
    restarted = start_server(tiny_root, None, **env(redis_prefix))
    try:
        assert best not in ask(restarted.url, body)[1]  # the first answer already: read before serving
        listed = httpx.get(f"{restarted.url}/admin/items/blocked", headers=TOKEN).json()
        assert [item["item_id"] for item in listed["items"]] == [best]
    finally:
        restarted.stop()


def test_a_worker_restarted_while_redis_is_at_maxmemory_still_blocks(
    tiny_root: Path, tiny_model: TinyModel, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """Fail closed (docs/operations.md#blocking-items-without-a-reindex): Redis at maxmemory
    (noeviction), then a worker killed: its replacement must apply the list too (it read nothing and
    served blocked items in 20 of 20 answers)."""
    body = {"user_id": "u", "k": 10, "history": tiny_model.item_ids[10:16], "use_stored_history": False}
    server = start_server(tiny_root, None, REMI_REDIS_URL=own_redis.url, REMI_ADMIN_TOKEN="s3cret", REMI_WORKERS="2")
    try:
        best = ask(server.url, body)[1][0]
        blocked = httpx.post(f"{server.url}/admin/items/block", json={"item_ids": [best]}, headers=TOKEN, timeout=10)
        assert blocked.status_code == 200, blocked.text
        workers: set[str] = set()
        wait_for(lambda: workers.add(ask(server.url, body)[0]) or len(workers) == 2, timeout=30, interval=0)
        fill_to_maxmemory(redis.Redis.from_url(own_redis.url))
        victim = sorted(workers)[0]
        os.kill(int(victim), signal.SIGKILL)
        fresh: list[list[str]] = []

        def replacement_answers() -> bool:
            try:
                pid, items = ask(server.url, body)
            except (httpx.HTTPError, AssertionError):
                return False
            if pid not in workers:
                fresh.append(items)
            return len(fresh) >= 20

        wait_for(replacement_answers, timeout=90, interval=0)
        holding = sum(best in items for items in fresh)
        assert holding == 0, f"{holding} of {len(fresh)} answers of the restarted worker held the blocked item"
    finally:
        server.stop()

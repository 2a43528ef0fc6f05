"""The service under failure: Redis outages, hot reload under load, broken versions, no model."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx

from index.publish import reindex
from remi.contract import INDEX_FILE, read_current, version_dir, write_current
from tests.service.conftest import OwnRedis, start_server, wait_for


def first_items(artifacts: Path, n: int) -> list[str]:
    return (artifacts / "item_ids.txt").read_text().split("\n")[:n]


def test_redis_outage_falls_back_and_recovers(artifacts_dir: Path, own_redis: OwnRedis, tmp_path: Path) -> None:
    server = start_server(tmp_path / "root", artifacts_dir, REMI_REDIS_URL=own_redis.url, REMI_REDIS_TIMEOUT_MS="50")
    try:
        items = first_items(artifacts_dir, 8)
        events = {"events": [{"item_id": i} for i in items[:6]]}
        assert httpx.post(f"{server.url}/users/alice/events", json=events).status_code == 200
        body = httpx.post(f"{server.url}/recommend", json={"user_id": "alice"}).json()
        assert body["fallback"] is None and body["history_len"] == 6

        own_redis.stop()  # Redis goes away mid-test
        down = httpx.post(f"{server.url}/recommend", json={"user_id": "alice"}, timeout=5)
        assert down.status_code == 200 and down.json()["fallback"] == "history_unavailable"
        assert down.json()["items"]  # popularity, still an answer
        with_request_history = httpx.post(f"{server.url}/recommend", json={"user_id": "alice", "history": items[6:]})
        body = with_request_history.json()
        assert with_request_history.status_code == 200 and body["fallback"] == "history_unavailable"
        assert body["history_len"] == 2  # the request's own items were used
        lost = httpx.post(f"{server.url}/users/alice/events", json=events)
        assert lost.status_code == 503 and "not stored" in lost.json()["detail"]
        assert httpx.get(f"{server.url}/users/alice/history").status_code == 503
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200 and ready.json()["history_store"] == "unavailable"
        # many requests during the outage: all answered (the circuit breaker skips Redis)
        with httpx.Client(timeout=5) as client:
            codes = [client.post(f"{server.url}/recommend", json={"user_id": "bob"}).status_code for _ in range(20)]
        assert codes == [200] * 20

        own_redis.start()  # back (empty: it keeps nothing on disk)

        def recovered() -> bool:
            response = httpx.post(f"{server.url}/recommend", json={"user_id": "alice"})
            return response.status_code == 200 and response.json()["fallback"] != "history_unavailable"

        wait_for(recovered, timeout=10)
        assert httpx.post(f"{server.url}/users/alice/events", json=events).status_code == 200
        assert httpx.post(f"{server.url}/recommend", json={"user_id": "alice"}).json()["fallback"] is None
        assert httpx.get(f"{server.url}/readyz").json()["history_store"] == "ok"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'remi_fallbacks_total{reason="history_unavailable"}' in metrics
    finally:
        server.stop()


def test_unreachable_redis_from_the_start_fails_closed_until_it_answers(artifacts_dir: Path, tmp_path: Path) -> None:
    """No blocklist from the store and no copy of it on disk: any answer could hold a blocked item,
    so none is given (docs/operations.md#blocking-items-without-a-reindex; it used to serve,
    blocking nothing); once Redis answers, it serves."""
    dead = OwnRedis()  # a free port nobody listens on
    server = start_server(tmp_path / "root", artifacts_dir, REMI_REDIS_URL=dead.url)
    try:
        response = httpx.post(f"{server.url}/recommend", json={"user_id": "carol"})
        assert response.status_code == 503 and "no blocklist yet" in response.json()["detail"], response.text
        dead.start()
        try:
            wait_for(lambda: httpx.post(f"{server.url}/recommend", json={"user_id": "carol"}).status_code == 200)
            assert httpx.get(f"{server.url}/readyz").json()["blocklist"] == "ok"
        finally:
            dead.stop()
    finally:
        server.stop()


async def _hammer(url: str, stop: asyncio.Event, statuses: list[int], versions: set[str], history: list[str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            response = await client.post(url + "/recommend", json={"user_id": "load", "history": history, "k": 20})
            statuses.append(response.status_code)
            if response.status_code == 200:
                versions.add(response.json()["index_version"])


def test_reload_under_concurrent_requests_fails_none(artifacts_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    server = start_server(root, artifacts_dir)
    try:
        old = read_current(root)
        statuses: list[int] = []
        versions: set[str] = set()
        history = first_items(artifacts_dir, 10)

        async def scenario() -> str:
            stop = asyncio.Event()
            workers = [asyncio.create_task(_hammer(server.url, stop, statuses, versions, history)) for _ in range(8)]
            await asyncio.sleep(0.5)
            new = (await asyncio.to_thread(reindex, artifacts_dir, root, "hnsw", None, 0.95, 3, True)).index_version
            deadline = time.monotonic() + 15
            while new not in versions and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
            return new

        new = asyncio.run(scenario())
        assert new != old and {old, new} <= versions
        assert len(statuses) > 50 and set(statuses) == {200}
        assert httpx.get(server.url + "/readyz").json()["index"] == new
    finally:
        server.stop()


def test_corrupt_new_version_is_refused_and_the_old_keeps_serving(artifacts_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    server = start_server(root, artifacts_dir)
    try:
        good = read_current(root)
        broken = "99990101T000000000000Z-broken"
        shutil.copytree(version_dir(root, good), version_dir(root, broken))
        index_file = version_dir(root, broken) / INDEX_FILE
        index_file.chmod(0o644)  # published files are read-only
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])  # truncated
        write_current(root, broken)

        def refused() -> dict | None:
            ready = httpx.get(server.url + "/readyz").json()
            return ready if ready["last_reload_error"] else None

        ready = wait_for(refused)
        assert broken in ready["last_reload_error"] and "truncated" in ready["last_reload_error"]
        assert ready["index"] == good and ready["status"] == "ready"
        response = httpx.post(server.url + "/recommend", json={"user_id": "dave"})
        assert response.status_code == 200 and response.json()["index_version"] == good
        assert 'remi_reloads_total{result="refused"}' in httpx.get(server.url + "/metrics").text

        fixed = reindex(artifacts_dir, root, kind="flat", force=True).index_version  # a good version heals it
        wait_for(lambda: httpx.get(server.url + "/readyz").json()["index"] == fixed)
        assert httpx.get(server.url + "/readyz").json()["last_reload_error"] is None
    finally:
        server.stop()


def test_broken_artifacts_at_start_do_not_stop_the_process(artifacts_dir: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(artifacts_dir, art)
    (art / "user_tower.onnx").write_bytes(b"garbage")
    server = start_server(tmp_path / "root", art)
    try:
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503 and "user_tower.onnx" in ready.json()["last_reload_error"]
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_two_workers_share_the_port_and_one_metrics_view(artifacts_dir: Path, tmp_path: Path) -> None:
    """SO_REUSEPORT workers: every request answered, and /metrics of either counts all of them."""
    import re
    import uuid

    from tests.service.conftest import SHARED_REDIS, delete_prefix

    prefix = f"remi-test:{uuid.uuid4().hex[:12]}:"
    server = start_server(tmp_path / "root", artifacts_dir, REMI_WORKERS="2", REMI_REDIS_URL=SHARED_REDIS,
                          REMI_REDIS_PREFIX=prefix)  # fmt: skip
    try:
        codes = []
        for i in range(40):  # new connections: the kernel spreads them over both workers
            with httpx.Client(timeout=10) as client:
                codes.append(client.post(f"{server.url}/recommend", json={"user_id": f"w{i}"}).status_code)
        assert codes == [200] * 40
        text = httpx.get(server.url + "/metrics").text
        count = re.search(r'remi_requests_total\{method="POST",route="/recommend",status="200"\} (\S+)', text)
        assert count and float(count.group(1)) == 40
        serving = re.findall(r'remi_version_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0', text)
        assert len(set(serving)) == 2, text  # two live workers, each reporting its pair
    finally:
        server.stop()
        delete_prefix(SHARED_REDIS, prefix)

"""A master of a real 6-node Redis Cluster (3 masters + 3 replicas) killed under load: `remi serve`
answers every request and falls back only while no master owns the slot, and `remi history load`
finishes with no lost and no doubled event.

One cluster per module (about 6 s to create); each test starts from a healthy cluster (a killed
node is started again and rejoins as a replica). The service and the loader connect as the
restricted ACL user of docs/operations.md, Cluster line included, with every node as a seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from service.history import history_key
from tests.service.conftest import start_server
from tests.service.redis_nodes import Cluster, Node, start_cluster, wait_until
from tests.service.test_redis_acl import PASSWORD, apply_acl
from tests.service.tiny_model import TinyModel

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

PREFIX = "remi-cf:"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Other masters' slots keep serving while one has none (the default, yes, stops every slot).
    made = start_cluster(tmp_path_factory.mktemp("cluster"), extra=["--cluster-require-full-coverage", "no"])
    yield made
    made.stop()


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """The module's cluster with every node up, in sync, and the service's ACL user on each node."""
    cluster.restore()
    for node in cluster.nodes:
        apply_acl(cluster.client(node), PREFIX, cluster=True)
    return cluster


def env_for(cluster: Cluster) -> dict[str, str]:
    return {
        "REMI_REDIS_URL": cluster.url(),
        "REMI_REDIS_USERNAME": "remi",
        "REMI_REDIS_PASSWORD": PASSWORD,
        "REMI_REDIS_PREFIX": PREFIX,
    }


def admin_client(cluster: Cluster) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.live()], decode_responses=True)


def owned_slots(cluster: Cluster, node: Node) -> set[int]:
    slots: set[int] = set()
    for start, end, master, *_ in cluster.client(node).execute_command("CLUSTER", "SLOTS"):
        if int(master[1]) == node.port:
            slots.update(range(start, end + 1))
    return slots


class Watch:
    """Kills ``victim`` and records when a live master owns its slots again (polled every 20 ms)."""

    def __init__(self, cluster: Cluster, victim: Node) -> None:
        self.cluster, self.victim = cluster, victim
        self.slot = min(owned_slots(cluster, victim))
        self.killed_at: float | None = None
        self.promoted_at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def kill(self) -> None:
        self.killed_at = time.monotonic()
        self.victim.kill()
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.cluster.owner_of(self.slot) is not None:
                self.promoted_at = time.monotonic()
                return
            time.sleep(0.02)

    def join(self) -> tuple[float, float]:
        self._thread.join(35)
        assert self.killed_at is not None and self.promoted_at is not None, "no replica was promoted"
        return self.killed_at, self.promoted_at


# --- remi history load ------------------------------------------------------------------------------


def test_history_load_survives_a_master_killed_mid_load_with_no_lost_or_doubled_events(
    healthy: Cluster, tmp_path: Path
) -> None:
    users, per, max_len = 20_000, 12, 10
    rng = np.random.default_rng(7)
    ids = [f"user-{i}" for i in range(users)]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(ids, per),
            "item_id": [f"i{x}" for x in rng.integers(0, 5000, users * per)],
            "timestamp": np.tile(np.arange(per), users) + 1_700_000_000,
        }
    )
    csv = tmp_path / "interactions.csv"
    frame.to_csv(csv, index=False)
    admin = admin_client(healthy)
    masters = healthy.masters()
    before = sum(healthy.client(m).dbsize() for m in masters)
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "history",
        "load",
        "--data",
        str(csv),
        "--max-len",
        str(max_len),
        "--rows-per-partition",
        "50000",
        "--no-progress",
    ]
    load = subprocess.Popen(
        cmd, env={**os.environ, **env_for(healthy)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watch = Watch(healthy, masters[0])
    # Kill once a tenth of the users is written: the rest goes through the failover.
    wait_until(
        lambda: load.poll() is not None or sum(healthy.client(m).dbsize() for m in masters) - before > users / 10,
        60,
        "the load under way",
    )
    assert load.poll() is None, "the load finished before the kill: make the data set bigger"
    watch.kill()
    out, err = load.communicate(timeout=120)
    killed, promoted = watch.join()
    assert load.returncode == 0, err
    assert '"users": 20000' in out and '"events": 200000' in out, out

    expected = {
        u: [f"{t}:{i}" for i, t in zip(g.item_id, g.timestamp, strict=True)][-max_len:][::-1]
        for u, g in frame.groupby("user_id", sort=False)
    }
    pipe = admin.pipeline(transaction=False)
    for user in ids:
        pipe.lrange(history_key(PREFIX, user), 0, -1)
    stored = dict(zip(ids, pipe.execute(), strict=True))
    wrong = [u for u in ids if stored[u] != expected[u]]
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[0]}: {stored[wrong[0]]} != {expected[wrong[0]]}"
    # Acknowledged means on the replica too: the masters that kept theirs were asked to WAIT for it.
    survivors = [m for m in masters if m is not watch.victim]
    waits = [healthy.client(m).info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for m in survivors]
    assert all(w > 0 for w in waits), waits
    print(f"history load: failover {promoted - killed:.2f} s after the kill; all {users} users exact")
    admin.close()


# --- remi serve under load --------------------------------------------------------------------------


@dataclass
class Answer:
    route: str
    user: str
    sent: float
    received: float
    status: int
    fallback: str | None = None
    why: str = ""


async def traffic(
    url: str,
    users: list[str],
    items: list[str],
    seconds: float,
    log: list[Answer],
    acked: dict[str, list[tuple[str, float]]],
    kill_after: float,
    watch: Watch,
) -> None:
    """8 clients: /recommend for a random user, and POST /users/{id}/events with a fresh
    Idempotency-Key, each write retried with its key until it is stored (as a client should)."""
    start = time.monotonic()
    counter = iter(range(10**9))

    async def client(n: int) -> None:
        rnd = random.Random(n)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            while time.monotonic() - start < seconds:
                if watch.killed_at is None and time.monotonic() - start > kill_after and n == 0:
                    watch.kill()
                user = rnd.choice(users)
                if rnd.random() < 0.5:
                    sent = time.monotonic()
                    r = await http.post("/recommend", json={"user_id": user, "k": 5})
                    body = r.json() if r.status_code == 200 else {}
                    log.append(Answer("recommend", user, sent, time.monotonic(), r.status_code, body.get("fallback")))
                    continue
                event = f"{items[rnd.randrange(len(items))]}"
                key = f"k{next(counter)}"
                payload = {"events": [{"item_id": event, "timestamp": 1_700_000_000 + next(counter)}]}
                while True:
                    sent = time.monotonic()
                    r = await http.post(f"/users/{user}/events", json=payload, headers={"idempotency-key": key})
                    why = "" if r.status_code == 200 else r.text[:300]
                    log.append(Answer("events", user, sent, time.monotonic(), r.status_code, why=why))
                    if r.status_code == 200:
                        acked.setdefault(user, []).append(
                            (f"{payload['events'][0]['timestamp']}:{event}", time.monotonic())
                        )
                        break
                    assert r.status_code == 503, r.text
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client(n) for n in range(8)))


def test_serve_through_a_master_failover_answers_every_request_and_falls_back_only_while_no_master_owns_the_slot(
    healthy: Cluster, tiny_root: Path, tiny_model: TinyModel, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    server = start_server(root, None, **env_for(healthy))
    victim = healthy.masters()[0]
    watch = Watch(healthy, victim)
    lost_slots = owned_slots(healthy, victim)
    users = [f"cf-user-{i}" for i in range(300)]
    log: list[Answer] = []
    acked: dict[str, list[tuple[str, float]]] = {}
    try:
        asyncio.run(traffic(server.url, users, tiny_model.item_ids, 9.0, log, acked, kill_after=2.0, watch=watch))
    finally:
        server.stop()
    killed, promoted = watch.join()

    def in_lost_slot(user: str) -> bool:
        return key_slot(history_key(PREFIX, user).encode()) in lost_slots

    recommends = [a for a in log if a.route == "recommend"]
    writes = [a for a in log if a.route == "events"]
    assert recommends and all(a.status == 200 for a in recommends), "a /recommend answered other than 200"
    fallbacks = [a for a in recommends if a.fallback == "history_unavailable"]
    refused = [a for a in writes if a.status != 200]
    grace = 0.5  # the answer to a call sent just before the promotion, and one slot-map refresh
    for a in fallbacks + refused:
        assert killed <= a.received and a.sent <= promoted + grace, (
            f"{a.route} failed {a.sent - killed:+.2f} s after the kill, promotion {promoted - killed:+.2f} s: {a.why}"
        )
    assert all(a.status == 503 for a in refused)
    # Users whose master lives are served throughout, but for a connection that the client's
    # slot-map refresh recycled under a call (a few at most).
    collateral = [a for a in fallbacks + refused if not in_lost_slot(a.user)]
    assert len(collateral) <= max(3, len(fallbacks + refused) // 20), [a.why for a in collateral]
    after = [a for a in recommends if a.sent > promoted + grace]
    assert after and all(a.fallback != "history_unavailable" for a in after)

    admin = admin_client(healthy)
    doubled = lost = 0
    for user, events in acked.items():
        stored = admin.lrange(history_key(PREFIX, user), 0, -1)
        doubled += len(stored) - len(set(stored))
        lost += sum(1 for value, at in events if value not in stored and not (killed - 1 < at < killed))
    admin.close()
    assert doubled == 0 and lost == 0, (doubled, lost)
    last = max((a.sent for a in fallbacks + refused), default=killed) - killed
    print(
        f"serve: {len(recommends)} /recommend, {len(fallbacks)} fallbacks, {len(writes)} writes, {len(refused)} 503s, "
        f"{len(collateral)} of these for users of live masters, failover {promoted - killed:.2f} s, "
        f"last failure sent {last:.2f} s after the kill"
    )

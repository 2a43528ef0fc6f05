"""The history store and the loader against a real Redis Sentinel group and a real 3-node Redis
Cluster (own ports; tests/service/redis_nodes.py starts them): every seed of a Cluster URL, and a
Sentinel failover with passwords on the sentinels and on the master.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from remi.errors import RemiError
from service.history import Event, HistoryUnavailable, RedisHistory
from service.history_load import load_history
from service.redis_client import RedisAccess
from tests.service.redis_nodes import Cluster, SentinelGroup, low_free_port, start_cluster, start_sentinels, wait_until

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

MASTER_PW, SENTINEL_PW = "m@ster:pw", "sentinel/pw"
ESCAPED = "m%40ster%3Apw", "sentinel%2Fpw"


async def round_trip(url: str, access: RedisAccess | None = None, prefix: str = "topology-test:") -> None:
    store = RedisHistory(url, prefix=prefix, **({"access": access} if access else {}))
    try:
        for user in ("u1", "u2", "u3", "some user:*"):
            assert (await store.append(user, [Event("a", 1), Event("b:c", 2)])).history_len == 2
        many = await store.get_many(["u1", "u2", "u3", "some user:*", "nobody"], 10)
        assert many[:4] == [[Event("a", 1), Event("b:c", 2)]] * 4 and many[4] == []
        assert await store.get("u2", 1) == [Event("b:c", 2)]
        assert await store.ping()
    finally:
        await store.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = start_sentinels(tmp_path, password=MASTER_PW, sentinel_password=SENTINEL_PW, n=1)
    yield group
    group.stop()


def test_sentinel_passwords_reach_the_sentinels_and_the_master_from_the_url_or_the_settings(
    sentinel: SentinelGroup,
) -> None:
    asyncio.run(round_trip(sentinel.url(auth=f":{ESCAPED[0]}@", query=f"/0?sentinel_password={ESCAPED[1]}")))
    access = RedisAccess(password=MASTER_PW, sentinel_password=SENTINEL_PW)
    asyncio.run(round_trip(sentinel.url(), access, prefix="from-settings:"))

    async def refused(access: RedisAccess) -> HistoryUnavailable:
        store = RedisHistory(sentinel.url(), prefix="topology-test:", timeout_s=1.0, access=access)
        try:
            with pytest.raises(HistoryUnavailable) as caught:
                await store.get("u1", 5)
            return caught.value
        finally:
            await store.close()

    # Without the sentinels' password no sentinel names a master; a wrong master password is refused.
    no_master = asyncio.run(refused(RedisAccess(password=MASTER_PW)))
    assert no_master.reason == "connection_lost" and "No master found" in str(no_master), str(no_master)
    assert asyncio.run(refused(RedisAccess(password="wrong", sentinel_password=SENTINEL_PW))).reason == "auth"


def test_sentinel_failover_with_passwords_keeps_every_history_and_the_loader_waits_for_the_replica(
    tmp_path: Path,
) -> None:
    sentinel = start_sentinels(tmp_path, password=MASTER_PW, sentinel_password=SENTINEL_PW, n=3)
    try:
        failover(sentinel, tmp_path)
    finally:
        sentinel.stop()


def failover(sentinel: SentinelGroup, tmp_path: Path) -> None:
    url = sentinel.url(auth=f":{ESCAPED[0]}@", query=f"?sentinel_password={ESCAPED[1]}")
    csv = tmp_path / "i.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},a,1\n" for u in range(20)))
    report = load_history(csv, url, prefix="sf:", max_len=10, ttl_seconds=None)
    assert report.users == 20
    master = sentinel.master.admin(password=MASTER_PW)
    assert master.info("commandstats")["cmdstat_wait"]["calls"] >= 1  # acknowledged by the replica too
    sentinel_admin = {"password": SENTINEL_PW}

    async def go() -> tuple[float, int]:
        store = RedisHistory(url, prefix="sf:", timeout_s=0.5)
        try:
            sentinel.master.kill()
            killed, failed = time.monotonic(), 0
            for user in (f"u{u}" for u in range(20)):  # each write retried with its key until stored
                while True:
                    try:
                        await store.append(user, [Event("b", 2)], idempotency_key=f"{user}-b")
                        break
                    except HistoryUnavailable:
                        failed += 1
                        assert time.monotonic() - killed < 20, "no new master within 20 s"
                        await asyncio.sleep(0.1)
            recovered = time.monotonic() - killed
            for user in (f"u{u}" for u in range(20)):
                assert await store.get(user, 10) == [Event("a", 1), Event("b", 2)], user
            return recovered, failed
        finally:
            await store.close()

    recovered, failed = asyncio.run(go())
    assert sentinel.master_port(**sentinel_admin) == sentinel.replica.port
    assert failed > 0  # the writes did meet the outage
    print(f"sentinel failover: writes stored again {recovered:.2f} s after the kill ({failed} refused tries)")


def test_sentinel_url_without_a_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="service name"):
        RedisHistory("redis+sentinel://127.0.0.1:26379")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = start_cluster(tmp_path, masters=3, replicas=0)
    yield made
    made.stop()


def test_cluster_url_spreads_users_over_the_nodes_from_any_seed(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{low_free_port()}"  # the first seed is down: the client starts from the next
    asyncio.run(round_trip(f"redis+cluster://{dead},{cluster.seeds()}?health_check_interval=5"))
    keys = [n.admin().dbsize() for n in cluster.nodes]
    assert sum(keys) == 4 and sum(1 for k in keys if k) >= 2, keys  # not all on one node


def test_history_load_writes_to_every_master_of_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    csv = tmp_path / "i.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{t},{t}\n" for u in range(300) for t in range(3)))
    report = load_history(csv, cluster.url(), prefix="cl:", max_len=2, ttl_seconds=60, batch_events=100)
    assert (report.users, report.events) == (300, 600)
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        assert all(client.lrange(f"cl:h:r:u{u}", 0, -1) == ["2:i2", "1:i1"] for u in range(300))
        assert 0 < client.ttl("cl:h:r:u7") <= 60
    finally:
        client.close()
    assert all(n.admin().dbsize() > 50 for n in cluster.nodes)


def test_history_load_without_a_master_for_some_slots_fails_in_one_line_and_a_rerun_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    csv = tmp_path / "i.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{t},{t}\n" for u in range(300) for t in range(3)))
    down = cluster.nodes[1]
    down.kill()  # no replica: its slots have no master until it is back
    with pytest.raises(RemiError, match="still unwritten after 1.5 s of retries.*run it again"):
        load_history(csv, cluster.url(), prefix="rr:", max_len=3, ttl_seconds=None, retry_s=1.5, timeout_s=1.0)
    down.start()
    wait_until(cluster.healthy, 20, "node back")
    report = load_history(csv, cluster.url(), prefix="rr:", max_len=3, ttl_seconds=None)
    assert report.users == 300
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        assert all(client.lrange(f"rr:h:r:u{u}", 0, -1) == ["2:i2", "1:i1", "0:i0"] for u in range(300))
    finally:
        client.close()

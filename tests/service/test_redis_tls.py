"""TLS for every topology with a throwaway CA: one server, a Cluster and a Sentinel group, each
requiring a client certificate (``tls-auth-clients yes``), reached with the REMI_REDIS_TLS_* files.

The CA, the server certificate (127.0.0.1 / localhost) and the client certificate are made by
the test with ``cryptography``; the servers are redis-server processes on TLS ports only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.history import Event, HistoryUnavailable, RedisHistory
from service.redis_client import RedisAccess
from tests.service.redis_nodes import Certs, Node, low_free_port, make_certs, start_cluster, start_sentinels, wait_until

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


def tls_supported() -> bool:
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return "v=" in version and int(version.split("v=")[1].split(".")[0]) >= 6


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if not tls_supported():
        pytest.skip("redis-server without TLS")
    return make_certs(tmp_path_factory.mktemp("ca"))


def access_for(certs: Certs, **extra: str) -> RedisAccess:
    return RedisAccess(
        tls_ca_file=str(certs.ca), tls_cert_file=str(certs.client_cert), tls_key_file=str(certs.client_key), **extra
    )


async def round_trip(url: str, access: RedisAccess) -> list[list[Event]]:
    store = RedisHistory(url, prefix="tls-test:", timeout_s=2.0, access=access)
    try:
        for user in ("u1", "u2", "u3"):
            await store.append(user, [Event("a", 1)])
        return await store.get_many(["u1", "u2", "u3"], 5)
    finally:
        await store.close()


async def refusal(url: str, access: RedisAccess) -> HistoryUnavailable:
    store = RedisHistory(url, prefix="tls-test:", timeout_s=2.0, access=access)
    try:
        with pytest.raises(HistoryUnavailable) as caught:
            await store.get("u1", 5)
        return caught.value
    finally:
        await store.close()


@pytest.fixture
def server(certs: Certs, tmp_path: Path) -> Iterator[Node]:
    node = Node(low_free_port(), tmp_path / "tls", ["--save", "", "--appendonly", "no"], certs).start()
    wait_until(lambda: node.admin().ping(), 15, "TLS redis up")
    yield node
    node.kill()


def test_one_tls_server_needs_the_ca_and_the_client_certificate(server: Node, certs: Certs, tmp_path: Path) -> None:
    url = f"rediss://127.0.0.1:{server.port}/0"
    assert asyncio.run(round_trip(url, access_for(certs))) == [[Event("a", 1)]] * 3
    # No client certificate: the server ends the handshake.
    assert asyncio.run(refusal(url, RedisAccess(tls_ca_file=str(certs.ca)))).applied is not True
    # A server certificate from another CA is not trusted.
    other = make_certs(tmp_path / "other-ca")
    stranger = RedisAccess(
        tls_ca_file=str(other.ca), tls_cert_file=str(certs.client_cert), tls_key_file=str(certs.client_key)
    )
    assert "certificate verify failed" in str(asyncio.run(refusal(url, stranger))).lower()


def test_tls_verify_modes_full_ca_and_none(certs: Certs, tmp_path: Path) -> None:
    """A server whose certificate names only redis.internal, reached at 127.0.0.1."""
    renamed = make_certs(tmp_path / "renamed", names=("redis.internal",))
    paths = Certs(
        renamed.folder, certs.ca, renamed.server_cert, renamed.server_key, certs.client_cert, certs.client_key
    )
    # The server shows the second CA's certificate and checks clients against the first CA.
    node = Node(low_free_port(), tmp_path / "r", ["--save", "", "--appendonly", "no"], paths).start()
    try:
        wait_until(lambda: node.admin(ssl_ca_certs=str(renamed.ca), ssl_check_hostname=False).ping(), 15, "up")
        url = f"rediss://127.0.0.1:{node.port}/0"
        client = {"tls_cert_file": str(certs.client_cert), "tls_key_file": str(certs.client_key)}
        full = RedisAccess(tls_ca_file=str(renamed.ca), **client)
        assert "match" in str(asyncio.run(refusal(url, full))).lower()  # host name not in the certificate
        assert asyncio.run(round_trip(url, RedisAccess(tls_ca_file=str(renamed.ca), tls_verify="ca", **client)))
        assert asyncio.run(round_trip(url, RedisAccess(tls_verify="none", **client)))  # no CA at all
        ca_only = RedisAccess(tls_ca_file=str(certs.ca), tls_verify="ca", **client)  # the wrong CA
        assert "certificate verify failed" in str(asyncio.run(refusal(url, ca_only))).lower()
    finally:
        node.kill()


def test_a_tls_cluster_serves_histories_and_remi_history_load(certs: Certs, tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "cluster", masters=3, replicas=0, certs=certs)
    try:
        url = cluster.url(tls=True)
        assert asyncio.run(round_trip(url, access_for(certs))) == [[Event("a", 1)]] * 3
        csv = tmp_path / "i.csv"
        csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{u},{u}\n" for u in range(200)))
        env = {
            **os.environ,
            "REMI_REDIS_URL": url,
            "REMI_REDIS_PREFIX": "tls-load:",
            "REMI_REDIS_TLS_CA_FILE": str(certs.ca),
            "REMI_REDIS_TLS_CERT_FILE": str(certs.client_cert),
            "REMI_REDIS_TLS_KEY_FILE": str(certs.client_key),
        }
        load = subprocess.run(
            [sys.executable, "-m", "cli", "history", "load", "--data", str(csv), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert load.returncode == 0, load.stderr
        client = redis.RedisCluster(
            host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True, **certs.client_options()
        )
        try:
            assert all(client.lrange(f"tls-load:h:r:u{u}", 0, -1) == [f"{u}:i{u}"] for u in range(200))
        finally:
            client.close()
        assert all(n.admin().dbsize() > 0 for n in cluster.nodes)  # every master took its share, over TLS
    finally:
        cluster.stop()


def test_a_tls_sentinel_group_finds_the_master_over_tls_with_passwords(certs: Certs, tmp_path: Path) -> None:
    group = start_sentinels(tmp_path / "sentinel", password="m-pw", sentinel_password="s-pw", certs=certs, n=1)
    try:
        access = access_for(certs, password="m-pw", sentinel_password="s-pw")
        assert asyncio.run(round_trip(group.url(tls=True), access)) == [[Event("a", 1)]] * 3
        assert group.master.admin(password="m-pw").lrange("tls-test:h:r:u1", 0, -1) == ["1:a"]
    finally:
        group.stop()

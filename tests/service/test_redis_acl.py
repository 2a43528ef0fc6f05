"""The service and `remi history load` work with exactly the ACL user that docs/operations.md writes
down, and that user cannot reach anything else.

The ACL lines are read from the docs (so the documented ACL is the tested one), applied to a
redis-server of this test's own, and `remi serve` runs every Redis-backed route with that user,
its password coming from a secret file (REMI_SECRETS_DIR). ``ACL LOG`` must stay empty: a single
refused command, even one the service survives, means the documented ACL is short of it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.conftest import start_server, wait_for
from tests.service.redis_nodes import Node, low_free_port, wait_until
from tests.service.tiny_model import TinyModel

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"
PASSWORD = "acl-Pass:w0rd@x"  # characters a URL would need to escape: it travels as a secret file
ADMIN = {"authorization": "Bearer acl-admin-token"}


def documented_acl(prefix: str, *, cluster: bool = False) -> list[list[str]]:
    """The ``ACL SETUSER remi`` lines of docs/operations.md, for ``prefix`` and PASSWORD, as arguments."""
    lines = re.findall(r"^ACL SETUSER remi .*$", DOCS.read_text(), flags=re.M)
    assert len(lines) == 2, "docs/operations.md: the ACL block has the service's line and the Cluster line"
    rules = [line.split()[2:] for line in lines[: 2 if cluster else 1]]
    return [[{"~remi:*": f"~{prefix}*", ">PASSWORD": f">{PASSWORD}"}.get(r, r) for r in rule] for rule in rules]


def apply_acl(client: redis.Redis, prefix: str, *, cluster: bool = False) -> None:
    for rule in documented_acl(prefix, cluster=cluster):
        client.execute_command("ACL", "SETUSER", *rule)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[Node]:
    node = Node(low_free_port(), tmp_path / "redis", ["--save", "", "--appendonly", "no"]).start()
    wait_until(lambda: node.admin().ping(), 15, "redis up")
    node.admin().acl_log_reset()
    yield node
    node.kill()


def test_the_documented_acl_is_all_the_service_and_the_loader_need(
    acl_redis: Node, tiny_root: Path, tiny_model: TinyModel, tmp_path: Path
) -> None:
    prefix = "acl-test:"
    admin = acl_redis.admin()
    apply_acl(admin, prefix)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "remi_redis_password").write_text(PASSWORD + "\n")
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    env = {
        "REMI_REDIS_URL": f"redis://127.0.0.1:{acl_redis.port}/0",
        "REMI_REDIS_USERNAME": "remi",
        "REMI_SECRETS_DIR": str(secrets),
        "REMI_REDIS_PREFIX": prefix,
        "REMI_ADMIN_TOKEN": ADMIN["authorization"][7:],
        "REMI_REDIS_TIMEOUT_MS": "1000",
    }
    items = tiny_model.item_ids
    server = start_server(root, None, **env)
    try:
        url = server.url
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200)
        events = {"events": [{"item_id": items[1], "timestamp": 10}, {"item_id": items[2], "timestamp": 20}]}
        key = {"idempotency-key": "acl-1"}
        first = httpx.post(f"{url}/users/u1/events", json=events, headers=key, timeout=10)
        again = httpx.post(f"{url}/users/u1/events", json=events, headers=key, timeout=10)
        assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
        late = {"events": [{"item_id": items[3], "timestamp": 5}]}  # older than stored: the reordering branch
        assert httpx.post(f"{url}/users/u1/events", json=late, timeout=10).status_code == 200
        history = httpx.get(f"{url}/users/u1/history", timeout=10).json()
        assert [e["item_id"] for e in history["items"]] == [items[3], items[1], items[2]], history
        answer = httpx.post(f"{url}/recommend", json={"user_id": "u1", "k": 5}, timeout=10).json()
        assert answer["fallback"] is None and answer["history_len"] == 3, answer
        batch = httpx.post(
            f"{url}/recommend/batch", json={"requests": [{"user_id": "u1"}, {"user_id": "u2"}]}, timeout=10
        )
        assert batch.status_code == 200 and "history_unavailable" not in batch.text, batch.text
        blocked = httpx.post(f"{url}/admin/items/block", json={"item_ids": [items[7]]}, headers=ADMIN, timeout=10)
        assert blocked.status_code == 200, blocked.text
        listed = httpx.get(f"{url}/admin/items/blocked", headers=ADMIN, timeout=10).json()
        assert [i["item_id"] for i in listed["items"]] == [items[7]]
        assert (
            httpx.post(
                f"{url}/admin/items/unblock", json={"item_ids": [items[7]]}, headers=ADMIN, timeout=10
            ).status_code
            == 200
        )
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and "degraded" not in ready.text, ready.text
    finally:
        server.stop()

    csv = tmp_path / "i.csv"
    csv.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"l{u},{items[u % 9]},{t}\n" for u in range(30) for t in range(3))
    )
    load = subprocess.run(
        [sys.executable, "-m", "cli", "history", "load", "--data", str(csv), "--no-progress"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert load.returncode == 0, load.stderr
    assert admin.lrange(f"{prefix}h:r:l4", 0, -1) == [f"{t}:{items[4]}" for t in (2, 1, 0)]

    assert admin.acl_log() == [], "the documented ACL is short of a command the service used"
    own = redis.Redis(port=acl_redis.port, username="remi", password=PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        own.get("someone-else:key")
    with pytest.raises(redis.exceptions.NoPermissionError):
        own.keys(f"{prefix}*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        own.flushdb()

"""What a Redis URL and the REMI_REDIS_* settings say reaches the client: every cluster seed, query
options, passwords for sentinels and master, TLS files for every topology, secrets from files.

No server here (the clients connect lazily); tests/service/test_redis_topologies.py and
test_redis_cluster_failover.py run the same URLs against real redis-server processes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from remi.errors import RemiError
from service.config import ServiceSettings
from service.redis_client import RedisAccess, client_for, parse_url, public_url

TLS = RedisAccess(tls_ca_file="/ca.pem", tls_cert_file="/c.pem", tls_key_file="/c.key")


@pytest.fixture
def clean_env() -> Iterator[None]:
    saved = dict(os.environ)
    for var in [v for v in os.environ if v.startswith("REMI_")]:
        del os.environ[var]
    yield
    os.environ.clear()
    os.environ.update(saved)


def close(client: Any) -> None:
    asyncio.run(client.aclose())


def test_cluster_url_keeps_every_seed_its_credentials_and_query_options() -> None:
    url = "redis+cluster://remi:p%40ss@n1:7000,n2:7001,[::1]:7002,n4?socket_keepalive=false&health_check_interval=3"
    target = parse_url(url)
    assert target.kind == "cluster" and target.nodes == (("n1", 7000), ("n2", 7001), ("::1", 7002), ("n4", 6379))
    assert target.options == {
        "username": "remi",
        "password": "p@ss",
        "socket_keepalive": False,
        "health_check_interval": 3,
    }
    client = client_for(url, socket_timeout=0.5)
    try:
        assert sorted(client.nodes_manager.startup_nodes) == ["::1:7002", "n1:7000", "n2:7001", "n4:6379"]
        node = client.nodes_manager.startup_nodes["n2:7001"]
        assert node.connection_kwargs["password"] == "p@ss" and node.connection_kwargs["health_check_interval"] == 3
    finally:
        close(client)


def test_cluster_url_with_a_db_other_than_0_is_refused() -> None:
    with pytest.raises(ValueError, match="only db 0"):
        parse_url("redis+cluster://n1:7000/3")


def test_sentinel_url_carries_the_masters_and_the_sentinels_passwords() -> None:
    url = "redis+sentinel://app:m%3Apw@s1:26379,s2:26380/mymaster/2?sentinel_password=s%26pw&socket_keepalive=true"
    target = parse_url(url)
    assert target.kind == "sentinel" and target.service_name == "mymaster"
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert target.options == {"username": "app", "password": "m:pw", "db": 2, "socket_keepalive": True}
    assert target.sentinel_options == {"password": "s&pw"}
    client = client_for(url, socket_timeout=0.5)
    try:
        pool = client.connection_pool
        assert pool.connection_kwargs["password"] == "m:pw" and pool.connection_kwargs["db"] == 2
        assert pool.service_name == "mymaster"
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        assert all(s.connection_pool.connection_kwargs["password"] == "s&pw" for s in sentinels)
        assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 0.5 for s in sentinels)
    finally:
        close(client)


def test_sentinel_password_as_a_query_option_and_db_in_the_query() -> None:
    target = parse_url("redis+sentinel://s1/mym?password=pw&db=1&sentinel_username=watch&sentinel_password=spw")
    assert target.options == {"password": "pw", "db": 1}
    assert target.sentinel_options == {"username": "watch", "password": "spw"}


@pytest.mark.parametrize("url", ["redis+sentinel://s1:26379", "redis+sentinel://s1:26379/a/0/x"])
def test_sentinel_url_without_one_service_name_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        parse_url(url)


def test_settings_fill_in_what_the_url_leaves_out_and_the_url_wins() -> None:
    access = RedisAccess(username="set", password="setpw", sentinel_username="sw", sentinel_password="swpw")
    assert parse_url("redis+cluster://n1:1", access).options == {"username": "set", "password": "setpw"}
    assert parse_url("redis+cluster://u:p@n1:1", access).options == {"username": "u", "password": "p"}
    target = parse_url("redis+sentinel://s1/m?sentinel_password=q", access)
    assert target.options == {"username": "set", "password": "setpw"}
    assert target.sentinel_options == {"username": "sw", "password": "q"}
    plain = client_for("redis://h:1/0", access)
    try:
        assert plain.connection_pool.connection_kwargs["password"] == "setpw"
    finally:
        close(plain)
    plain = client_for("redis://:urlpw@h:1/0", access)
    try:
        assert plain.connection_pool.connection_kwargs["password"] == "urlpw"
    finally:
        close(plain)


@pytest.mark.parametrize(
    "url", ["rediss://h:6380/0", "rediss+cluster://n1:7000,n2:7001", "rediss+sentinel://s1:26379/mym"]
)
def test_tls_files_reach_every_topology_and_the_sentinels(url: str) -> None:
    client = client_for(url, TLS, socket_timeout=0.5)
    want = {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }
    try:
        if url.startswith("rediss+cluster"):
            nodes = client.nodes_manager.startup_nodes.values()
            kwargs = [n.connection_kwargs for n in nodes]
            assert all(n.connection_class.__name__ == "SSLConnection" for n in nodes)
        elif url.startswith("rediss+sentinel"):
            kwargs = [client.connection_pool.connection_kwargs]
            assert client.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
            for sentinel in client.connection_pool.sentinel_manager.sentinels:
                kwargs.append(sentinel.connection_pool.connection_kwargs)
                assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"
        else:
            kwargs = [client.connection_pool.connection_kwargs]
            assert client.connection_pool.connection_class.__name__ == "SSLConnection"
        for k in kwargs:
            assert {name: k.get(name) for name in want} == want
    finally:
        close(client)


def test_tls_verify_modes() -> None:
    assert RedisAccess(tls_verify="ca").tls_options() == {"ssl_cert_reqs": "required", "ssl_check_hostname": False}
    assert RedisAccess(tls_verify="none").tls_options() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    with pytest.raises(ValueError, match="verify mode"):
        RedisAccess(tls_verify="sometimes")
    with pytest.raises(ValueError, match="both"):
        RedisAccess(tls_cert_file="/c.pem")


@pytest.mark.parametrize("url", ["redis://h:1/0", "redis+cluster://n1:1", "redis+sentinel://s1/m"])
def test_tls_files_with_a_plain_text_url_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="need a TLS URL"):
        parse_url(url, TLS)


def test_public_url_hides_every_credential() -> None:
    url = "rediss+sentinel://u:secret@s1:1,s2:2/mym/0?password=secret2&sentinel_password=secret3"
    assert public_url(url) == "rediss+sentinel://s1:1,s2:2/mym/0"
    assert "secret" not in repr(parse_url(url)) and "secret" not in repr(RedisAccess(password="secret"))


# --- settings -----------------------------------------------------------------------------------------


def test_redis_secrets_are_read_from_the_secrets_dir_and_a_variable_wins(clean_env: None, tmp_path: Path) -> None:
    (tmp_path / "remi_redis_password").write_text("from-file\n")
    (tmp_path / "remi_redis_sentinel_password").write_text("sentinel-file")
    (tmp_path / "remi_redis_url").write_text("redis+sentinel://s1:26379/mym")
    os.environ["REMI_SECRETS_DIR"] = str(tmp_path)
    settings = ServiceSettings()
    access = settings.redis_access()
    assert settings.redis_url == "redis+sentinel://s1:26379/mym"
    assert access.password == "from-file" and access.sentinel_password == "sentinel-file"
    os.environ["REMI_REDIS_PASSWORD"] = "from-env"
    assert ServiceSettings().redis_access().password == "from-env"
    del os.environ["REMI_SECRETS_DIR"]
    assert ServiceSettings(secrets_dir=tmp_path).redis_access().sentinel_password == "sentinel-file"  # the flag


def test_a_secrets_dir_that_is_not_a_folder_is_an_error(clean_env: None, tmp_path: Path) -> None:
    os.environ["REMI_SECRETS_DIR"] = str(tmp_path / "missing")
    with pytest.raises(RemiError, match="not a folder"):
        ServiceSettings()


def test_settings_make_the_access_and_refuse_tls_files_with_a_plain_url(clean_env: None) -> None:
    settings = ServiceSettings(
        redis_url="rediss+cluster://n1:7000",
        redis_username="remi",
        redis_password="pw",  # type: ignore[arg-type]
        redis_tls_ca_file=Path("/ca.pem"),
        redis_tls_verify="ca",
    )
    assert settings.redis_access() == RedisAccess(
        username="remi", password="pw", tls_ca_file="/ca.pem", tls_verify="ca"
    )
    assert settings.to_env()["REMI_REDIS_PASSWORD"] == "pw"  # the workers get it as every other setting
    with pytest.raises(ValidationError, match="need a TLS URL"):
        ServiceSettings(redis_url="redis://h:1/0", redis_tls_ca_file=Path("/ca.pem"))
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(redis_url="rediss://h:1/0", redis_tls_cert_file=Path("/c.pem"))

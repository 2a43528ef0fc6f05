"""Real Redis topologies on free ports for the topology tests: servers, a Cluster, Sentinels, TLS.

Every process is a ``redis-server`` started here with ``--save ""`` in its own folder, bound to
127.0.0.1; nothing talks to the shared Redis on 6379. Failover timings are short (cluster node
timeout 1 s, sentinel down-after 1 s) so a failover test takes seconds; they are still real
failovers: a killed master, a replica elected by the others.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_MS = 1000


def low_free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "redis topology") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout:g} s")


# --- a throwaway CA -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, as PEM files."""

    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_args(self, *, auth_clients: bool = True) -> list[str]:
        return [
            "--tls-cert-file",
            str(self.server_cert),
            "--tls-key-file",
            str(self.server_key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "yes" if auth_clients else "no",
        ]

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.ca), "--cert", str(self.client_cert), "--key", str(self.client_key)]

    def client_options(self) -> dict[str, Any]:
        """redis-py options of a client that trusts the CA and presents the client certificate."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }


def make_certs(folder: Path, *, names: Sequence[str] = ("127.0.0.1", "localhost")) -> Certs:
    """A CA made now (valid a day) that signs one server and one client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key_file(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return path

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
        usages: Sequence[Any] = (),
        sans: Sequence[str] = (),
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if sans:
            alt: list[x509.GeneralName] = []
            for san in sans:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    alt.append(x509.DNSName(san))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(c: x509.Certificate, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("remi test CA", ca_key, None, ca_key, True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # The server certificate serves the cluster bus and replication too, where a node is a client.
    server_usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    server = cert("redis", server_key, ca_cert.subject, ca_key, False, server_usages, names)
    client = cert("remi", client_key, ca_cert.subject, ca_key, False, (ExtendedKeyUsageOID.CLIENT_AUTH,))
    return Certs(
        folder,
        write(ca_cert, folder / "ca.crt"),
        write(server, folder / "server.crt"),
        key_file(server_key, folder / "server.key"),
        write(client, folder / "client.crt"),
        key_file(client_key, folder / "client.key"),
    )


# --- processes --------------------------------------------------------------------------------------


@dataclass
class Node:
    """One redis-server (or sentinel) process on ``port``; ``start`` again after ``kill`` keeps its folder."""

    port: int
    folder: Path
    args: list[str]
    certs: Certs | None = None
    conf: Path | None = None  # a config file (a sentinel's), given first
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        self.folder.mkdir(parents=True, exist_ok=True)
        listen = ["--port", "0", "--tls-port", str(self.port)] if self.certs else ["--port", str(self.port)]
        conf = [str(self.conf)] if self.conf else []
        cmd = [
            "redis-server",
            *conf,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.folder / "redis.log"),
            *(self.certs.server_args() if self.certs else []),
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)

    def admin(self, **options: Any) -> redis.Redis:
        tls = self.certs.client_options() if self.certs else {}
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True, **(tls | options))

    def cli(self, *args: str, password: str | None = None) -> str:
        auth = ["--user", "admin", "--pass", password, "--no-auth-warning"] if password else []
        cmd = ["redis-cli", "-p", str(self.port), *(self.certs.cli_args() if self.certs else []), *auth, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


@dataclass
class Cluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each (redis-cli --cluster create)."""

    nodes: list[Node]
    n_masters: int
    admin_password: str | None = None

    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def url(self, tls: bool = False, auth: str = "", query: str = "") -> str:
        return f"{'rediss' if tls else 'redis'}+cluster://{auth}{self.seeds()}{query}"

    def client(self, node: Node) -> redis.Redis:
        return node.admin(**({"username": "admin", "password": self.admin_password} if self.admin_password else {}))

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive()]

    def roles(self) -> dict[int, str]:
        """Port -> master/replica as one live node sees the cluster (failed nodes left out)."""
        lines = self.client(self.live()[0]).execute_command("CLUSTER", "NODES")
        text = lines if isinstance(lines, str) else "\n".join(f"{k} {v}" for k, v in lines.items())
        roles = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or "fail" in parts[2].split(","):
                continue
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            roles[port] = "master" if "master" in parts[2] else "replica"
        return roles

    def masters(self) -> list[Node]:
        roles = self.roles()
        return [n for n in self.live() if roles.get(n.port) == "master"]

    def healthy(self) -> bool:
        """Every node up, seen by the others (none flagged failed), ``n_masters`` masters, every node
        in the role the others see, every replica's link up and every node saying ok."""
        if not all(n.alive() for n in self.nodes):
            return False
        roles = self.roles()
        if len(roles) != len(self.nodes) or list(roles.values()).count("master") != self.n_masters:
            return False
        for node in self.nodes:
            if "cluster_state:ok" not in str(self.client(node).execute_command("CLUSTER", "INFO")):
                return False
            own = self.client(node).info("replication")
            if own.get("role") != ("master" if roles[node.port] == "master" else "slave"):
                return False
            if own.get("role") == "slave" and own.get("master_link_status") != "up":
                return False
        return True

    def owner_of(self, slot: int) -> int | None:
        """The port of the live master a live node names for ``slot`` (None while none does)."""
        for node in self.live():
            try:
                for start, end, master, *_ in self.client(node).execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return port if any(n.port == port and n.alive() for n in self.nodes) else None
            except redis.RedisError:
                continue
        return None

    def restore(self, timeout: float = 30.0) -> None:
        """Starts every killed node again (it rejoins as a replica) and waits for a healthy cluster."""
        for node in self.nodes:
            if not node.alive():
                node.start()
        wait_until(self.healthy, timeout, "cluster healthy again")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def start_cluster(
    folder: Path,
    *,
    masters: int = 3,
    replicas: int = 1,
    certs: Certs | None = None,
    extra: Sequence[str] = (),
    admin_password: str | None = None,
) -> Cluster:
    """A cluster on free ports, every node up and every slot covered before it is returned."""
    tls = ["--tls-cluster", "yes", "--tls-replication", "yes"] if certs else []
    args = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--cluster-replica-validity-factor",
        "0",
        *tls,
        *extra,
    ]
    if admin_password:
        args += ["--masterauth", admin_password, "--masteruser", "admin"]
    nodes = [Node(low_free_port(), folder / f"node-{i}", args, certs) for i in range(masters * (1 + replicas))]
    cluster = Cluster(nodes, masters, admin_password)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            wait_until(lambda node=node: cluster.client(node).ping(), 15, "cluster node up")
        auth = ["--user", "admin", "--pass", admin_password, "--no-auth-warning"] if admin_password else []
        create = [
            "redis-cli",
            *(certs.cli_args() if certs else []),
            *auth,
            "--cluster",
            "create",
            *[f"127.0.0.1:{n.port}" for n in nodes],
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ]
        created = subprocess.run(create, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout[-800:] + created.stderr[-800:]
        wait_until(cluster.healthy, 30, "cluster created")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class SentinelGroup:
    """A master, its replica and ``n`` sentinels watching it as ``name``."""

    master: Node
    replica: Node
    sentinels: list[Node]
    name: str = "mym"

    def url(self, tls: bool = False, auth: str = "", query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{'rediss' if tls else 'redis'}+sentinel://{auth}{hosts}/{self.name}{query}"

    def master_port(self, **options: Any) -> int:
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                _, port = sentinel.admin(**options).sentinel_get_master_addr_by_name(self.name)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no sentinel answers")

    def stop(self) -> None:
        for node in (self.master, self.replica, *self.sentinels):
            node.kill()


def start_sentinels(
    folder: Path,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
    certs: Certs | None = None,
    n: int = 3,
) -> SentinelGroup:
    """A master + replica (``requirepass``/``masterauth`` with ``password``) and ``n`` sentinels
    (``requirepass`` = ``sentinel_password``, quorum 2), the replica in sync before it returns; with
    more than one sentinel, also every sentinel seeing the others and the replica (a failover needs it)."""
    tls = ["--tls-replication", "yes"] if certs else []
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    plain = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *auth, *tls]
    master = Node(low_free_port(), folder / "master", plain, certs).start()
    replica = Node(
        low_free_port(), folder / "replica", [*plain, "--replicaof", "127.0.0.1", str(master.port)], certs
    ).start()
    sentinels: list[Node] = []
    group = SentinelGroup(master, replica, sentinels)
    try:
        opts = {"password": password} if password else {}
        wait_until(
            lambda: replica.admin(**opts).info("replication").get("master_link_status") == "up", 15, "replica in sync"
        )
        for i in range(n):
            conf = folder / f"sentinel-{i}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                f"sentinel monitor mym 127.0.0.1 {master.port} {min(2, n)}",
                f"sentinel down-after-milliseconds mym {SENTINEL_DOWN_MS}",
                "sentinel failover-timeout mym 5000",
                "sentinel resolve-hostnames no",
            ]
            if password:
                lines.append(f"sentinel auth-pass mym {password}")
            if sentinel_password:
                lines += [f"requirepass {sentinel_password}", f"sentinel sentinel-pass {sentinel_password}"]
            if certs:
                lines.append("tls-replication yes")
            conf.write_text("\n".join(lines) + "\n")
            sentinels.append(Node(low_free_port(), conf.parent, ["--sentinel"], certs, conf).start())
        sopts = {"password": sentinel_password} if sentinel_password else {}
        for sentinel in sentinels:
            wait_until(
                lambda s=sentinel: s.admin(**sopts).sentinel_master("mym")["num-other-sentinels"] == n - 1,
                20,
                "sentinels see each other",
            )
        for sentinel in sentinels if n > 1 else []:  # a failover needs it; one sentinel is for finding the master
            wait_until(
                lambda s=sentinel: s.admin(**sopts).sentinel_master("mym")["num-slaves"] == 1,
                20,
                "sentinels see the replica",
            )
    except BaseException:
        group.stop()
        raise
    return group

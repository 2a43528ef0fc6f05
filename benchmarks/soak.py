"""A soak: a 2-worker `remi serve` at a fixed share of its peak for a long time, under operations
(docs/results.md#soak).

    python -m benchmarks.soak [--minutes 30] [--rate-fraction 0.7] [--redis-restart-every 300]
                              [--reindex-every 600] [--blocklist-every 60]

What it runs, all on this machine:

* the synthetic serving model of benchmarks/serving_setup.py (--items items, HNSW; its artifact
  folder is cached under --work, the index root is a fresh copy per run), and histories of
  --users users in a private `redis-server` on a free port, with an append-only file so that it
  comes back with its data after a crash (the shared Redis is never touched);
* `remi serve --workers 2` on that index root and that Redis (REMI_ADMIN_TOKEN set for the admin API);
* the peak: `remi loadtest` (closed loop, --peak-concurrency clients) for --peak-seconds; then an
  open-loop load in another process: POST /recommend at --rate-fraction x the peak requests/s,
  each sent at its scheduled time whether or not earlier ones came back, over --connections
  keep-alive connections; a request's latency runs from its scheduled time (so waiting for a free
  connection counts: no coordinated omission). Per second: requests, status codes, transport
  errors, ``fallback`` answers, p50/p99;
* meanwhile the operations: the Redis process SIGKILLed and restarted after --redis-down-s every
  --redis-restart-every s (a down window runs from the kill to the first PING answered again),
  `remi reindex --force` of the same artifacts (a new index version; niced, as a batch job beside a
  server would be) followed by POST /admin/reload every --reindex-every s, and a block of
  --blocklist-ids catalogue ids or the unblock of the previous ones every --blocklist-every s
  (a 503 while Redis is down is retried each second: the call is idempotent);
* every --sample-every s: each worker's RSS (/proc/PID/status VmRSS) and open file descriptors
  (/proc/PID/fd).

Goals (reported): no 5xx and no transport error on /recommend; every fallback answer inside a Redis
down window (a request counts as inside when its [send, answer] span overlaps [kill, ready + --grace-s]);
worker RSS growth from --warmup-minutes to the end < 5%; open fds flat after the warm-up.
Writes benchmarks/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import harness
from benchmarks.harness import flags, machine, md_table, save_results
from benchmarks.serving_http import python_loadtest, real_server
from benchmarks.serving_setup import build_artifacts, seed_histories, synthetic_spec, synthetic_users
from loadtest.cpu import children_cpu_seconds, machine_busy_seconds, tree_cpu_seconds
from loadtest.server import free_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "soak-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
K = 50


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "soak")
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the fixed-rate load (the soak)")
    ap.add_argument(
        "--rate-fraction",
        type=float,
        default=0.7,
        help="the soak's rate as a share of the peak requests/s measured first",
    )
    ap.add_argument(
        "--redis-restart-every",
        type=float,
        default=300.0,
        help="seconds between Redis crashes (SIGKILL, then a restart after --redis-down-s); 0 = none",
    )
    ap.add_argument("--redis-down-s", type=float, default=5.0, help="seconds Redis stays dead before its restart")
    ap.add_argument(
        "--reindex-every",
        type=float,
        default=600.0,
        help="seconds between `remi reindex --force` + POST /admin/reload (a new index version); 0 = none",
    )
    ap.add_argument(
        "--blocklist-every",
        type=float,
        default=60.0,
        help="seconds between blocklist changes (block --blocklist-ids ids, then unblock them); 0 = none",
    )
    ap.add_argument("--blocklist-ids", type=int, default=50, help="ids per block / unblock call")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS / fd samples")
    ap.add_argument(
        "--warmup-minutes",
        type=float,
        default=5.0,
        help="RSS growth and the fd range are measured from this minute of the soak to its end",
    )
    ap.add_argument(
        "--grace-s",
        type=float,
        default=3.0,
        help="seconds after Redis answers again during which a fallback still counts as in its window "
        "(the breaker's open time, REMI_REDIS_BREAKER_OPEN_S = 1 s, plus a probe and reconnects)",
    )
    ap.add_argument("--peak-seconds", type=float, default=20.0, help="length of the closed-loop peak measurement")
    ap.add_argument("--peak-concurrency", type=int, default=16, help="clients of the peak measurement")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections of the open-loop load")
    ap.add_argument("--timeout-s", type=float, default=10.0, help="a request without an answer by then is an error")
    ap.add_argument("--reindex-nice", type=int, default=10, help="nice level of the reindex job")
    ap.add_argument("--work", type=Path, default=Path("/tmp/remi-serving-bench"), help="artifacts, index root, logs")
    ap.add_argument("--items", type=int, default=20_000, help="catalogue size of the synthetic model")
    ap.add_argument("--kind", default="hnsw", help="index kind of the index root and of every reindex")
    ap.add_argument("--users", type=int, default=2000, help="users with a stored history")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    return ap


# ---------------------------------------------------------------- a private redis-server


class Redis:
    """A redis-server on a free port with an append-only file: SIGKILL it, start it again, it has its data."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found")
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
                if client.ping():  # a LOADING error while the AOF is read: not ready yet
                    client.close()
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} not ready after {timeout:g} s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


# ---------------------------------------------------------------- the open-loop load (another process)


async def _open_loop(
    url: str, bodies: list[bytes], rate: float, seconds: float, args: dict[str, Any]
) -> dict[str, Any]:
    n = int(seconds) + 1
    per_s: dict[str, list[Any]] = {key: [0] * n for key in ("sent", "ok", "s5xx", "other", "errors", "fallbacks")}
    # the client's own delays, worst per second: sending late (its event loop behind), and waiting for a free connection
    per_s |= {"send_late_ms": [0.0] * n, "conn_wait_ms": [0.0] * n}
    latencies: list[list[float]] = [[] for _ in range(n)]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    fallback_spans: list[tuple[float, float, str]] = []  # (sent, answered) wall clock, reason
    clock = time.perf_counter
    idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one pool per connection (loadtest)
    clients = [
        httpx.AsyncClient(base_url=url, limits=limits, timeout=args["timeout_s"]) for _ in range(args["connections"])
    ]
    for client in clients:
        idle.put_nowait(client)
    headers = {"content-type": "application/json"}
    await asyncio.sleep(max(0.0, args["start_wall"] - time.time()))  # the operations' clock starts then too
    start, wall0 = clock(), time.time()

    async def one(i: int, due: float) -> None:
        second = int(due - start)
        late = clock() - due
        client = await idle.get()
        waited = clock() - due - late
        per_s["send_late_ms"][second] = max(per_s["send_late_ms"][second], round(late * 1000, 1))
        per_s["conn_wait_ms"][second] = max(per_s["conn_wait_ms"][second], round(waited * 1000, 1))
        reason = None
        try:
            answer = await client.post("/recommend", content=bodies[i % len(bodies)], headers=headers)
            code = answer.status_code
            if code == 200 and b'"fallback":null' not in answer.content:
                reason = json.loads(answer.content).get("fallback")
        except httpx.HTTPError as exc:
            code = 0
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            idle.put_nowait(client)
        done = clock()
        per_s["sent"][second] += 1
        if code == 0:
            per_s["errors"][second] += 1
            return
        if code != 200:
            statuses[str(code)] = statuses.get(str(code), 0) + 1
            per_s["s5xx" if code >= 500 else "other"][second] += 1
            return
        per_s["ok"][second] += 1
        latencies[second].append((done - due) * 1000)
        if reason:
            per_s["fallbacks"][second] += 1
            fallback_spans.append((wall0 + (due - start), wall0 + (done - start), reason))

    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()

    def pct(values: list[float], q: float) -> float | None:
        return round(sorted(values)[int(q * (len(values) - 1))], 2) if values else None

    every = [x for sec in latencies for x in sec]
    return {
        "start_wall": wall0,
        "rate": rate,
        "per_second": per_s | {"p50_ms": [pct(v, 0.5) for v in latencies], "p99_ms": [pct(v, 0.99) for v in latencies]},
        "statuses": statuses,
        "errors": errors,
        "fallback_spans": fallback_spans,
        "total": {
            "sent": i,
            "ok": sum(per_s["ok"]),
            "s5xx": sum(per_s["s5xx"]),
            "other_status": sum(per_s["other"]),
            "errors": sum(per_s["errors"]),
            "fallbacks": len(fallback_spans),
            "p50_ms": pct(every, 0.5),
            "p99_ms": pct(every, 0.99),
            "p999_ms": pct(every, 0.999),
            "max_ms": round(max(every), 2) if every else None,
        },
    }


def load_process(url: str, bodies: list[bytes], rate: float, seconds: float, args: dict[str, Any], out: Any) -> None:
    try:
        import uvloop

        out.put(uvloop.run(_open_loop(url, bodies, rate, seconds, args)))
    except ImportError:
        out.put(asyncio.run(_open_loop(url, bodies, rate, seconds, args)))


# ---------------------------------------------------------------- worker RSS and fds


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes: its children started by multiprocessing's spawn (not the resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline:
            found.append(int(entry))
    return sorted(found)


def rss_and_fds(pid: int) -> dict[str, Any] | None:
    """RSS MiB and open fds of ``pid``, the fds split into sockets (client and Redis connections, which come
    and go with the load) and the rest (files, pipes, epoll: what must stay flat); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue  # closed meanwhile
    except (OSError, StopIteration):
        return None
    sockets = sum(1 for t in targets if t.startswith("socket:"))
    return {
        "rss_mib": round(rss_kb / 1024, 1),
        "fds": len(targets),
        "sockets": sockets,
        "other_fds": len(targets) - sockets,
    }


# ---------------------------------------------------------------- the operations (threads of this process)


class Soak:
    """The operations during the load, each on its own schedule, and the samples; all times are wall clock."""

    def __init__(self, args: argparse.Namespace, server: Any, redis: Redis, art: Path, root: Path, items: list[str]):
        self.args, self.server, self.redis, self.art, self.root, self.items = args, server, redis, art, root, items
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.down: list[dict[str, Any]] = []
        self.reindexes: list[dict[str, Any]] = []
        self.blocklist: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.time() + 5.0  # the load process is spawned and imported by then; both start at t0
        self.end = self.t0 + args.minutes * 60
        self.load_pid = 0
        self.failures: list[dict[str, Any]] = []

    def every(self, interval: float, action: Any) -> threading.Thread:
        def loop() -> None:
            k = 1
            while self.t0 + k * interval < self.end and not self.stop.wait(
                max(0.0, self.t0 + k * interval - time.time())
            ):
                try:
                    action()
                except Exception as exc:  # recorded and reported; the schedule goes on
                    with self.lock:
                        self.failures.append({"t": time.time(), "action": action.__name__, "error": repr(exc)[:500]})
                    print(f"{action.__name__} failed: {exc!r}", flush=True)
                k += 1

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def restart_redis(self) -> None:
        killed = time.time()
        self.redis.kill()
        time.sleep(self.args.redis_down_s)
        started = time.time()
        self.redis.start(timeout=60)
        ready = time.time()
        with self.lock:
            self.down.append({"kill": killed, "start": started, "ready": ready})
        print(f"redis restart at {killed - self.t0:.0f} s: down {ready - killed:.1f} s", flush=True)

    def reindex(self) -> None:
        start = time.time()
        cmd = ["nice", "-n", str(self.args.reindex_nice), sys.executable, "-m", "cli", "reindex"]
        cmd += ["--artifacts", str(self.art), "--root", str(self.root), "--kind", self.args.kind, "--force"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        built = time.time()
        entry: dict[str, Any] = {"start": start, "built": built, "rc": proc.returncode}
        if proc.returncode != 0:
            entry["error"] = (proc.stderr or proc.stdout)[-1000:]
        else:
            entry["version"] = json.loads(proc.stdout)["current"]
            try:
                answer = httpx.post(self.server.url + "/admin/reload", headers=ADMIN, timeout=60)
                entry["reload_status"] = answer.status_code
                entry["reload"] = answer.json()
            except httpx.HTTPError as exc:
                entry["reload_status"] = type(exc).__name__
            entry["reloaded"] = time.time()
            entry["served_by_all_s"] = self.wait_served(entry["version"], entry["reloaded"])
        with self.lock:
            self.reindexes.append(entry)
        print(f"reindex at {start - self.t0:.0f} s: {entry.get('version')} ({built - start:.0f} s)", flush=True)

    def wait_served(self, version: str, since: float, timeout: float = 30.0) -> float | None:
        """Seconds after the reload until 8 answers of /readyz in a row, each on a new connection (so from
        either worker), name ``version``; None when not within ``timeout``."""
        in_a_row = 0
        while time.time() - since < timeout:
            try:
                seen = httpx.get(self.server.url + "/readyz", timeout=5).json().get("index")
            except (httpx.HTTPError, ValueError):
                seen = None
            in_a_row = in_a_row + 1 if seen == version else 0
            if in_a_row >= 8:
                return round(time.time() - since, 2)
            time.sleep(0.1)
        return None

    def change_blocklist(self) -> None:
        op = "unblock" if len(self.blocklist) % 2 else "block"
        if op == "block":
            self.blocked = random.Random(len(self.blocklist)).sample(self.items, self.args.blocklist_ids)
        entry: dict[str, Any] = {"op": op, "start": time.time(), "attempts": []}
        while not self.stop.is_set():
            try:
                answer = httpx.post(
                    f"{self.server.url}/admin/items/{op}", json={"item_ids": self.blocked}, headers=ADMIN, timeout=10
                )
                outcome: int | str = answer.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            entry["attempts"].append((time.time(), outcome))
            if outcome == 200:
                break
            time.sleep(1.0)  # 503 while the store is down: idempotent, so retried
        entry["done"] = time.time()
        with self.lock:
            self.blocklist.append(entry)

    def sample(self) -> None:
        # cumulative CPU seconds: the server's processes, the load client, everything this benchmark started
        # (server, client, Redis, reindex jobs; finished ones via RUSAGE_CHILDREN) and the whole machine, whose
        # difference is what other jobs on the machine used
        row: dict[str, Any] = {
            "t": time.time(),
            "loadavg": os.getloadavg()[0],
            "cpu_s": {
                "server": tree_cpu_seconds(self.server.pid),
                "client": tree_cpu_seconds(self.load_pid) if self.load_pid else 0.0,
                "benchmark": tree_cpu_seconds(os.getpid()) + children_cpu_seconds(),
                "machine": machine_busy_seconds(),
            },
            "workers": {},
        }
        for pid in worker_pids(self.server.pid):
            got = rss_and_fds(pid)
            if got:
                row["workers"][str(pid)] = got
        with self.lock:
            self.samples.append(row)


# ---------------------------------------------------------------- the run


def index_root(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """The cached artifact folder and a fresh index root of it (one version, built now or copied)."""
    spec = synthetic_spec(args.items, 64, max(10, args.items // 50), 0)
    art = build_artifacts(args.work / f"artifacts-{args.items}-64-0", spec)
    base = args.work / f"soak-base-{args.items}-{args.kind}"
    if not (base / "current").exists():
        from index.publish import reindex

        reindex(art, base, args.kind)
    root = args.work / f"soak-root-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root, ignore=shutil.ignore_patterns("blocklist.json", ".lock"))
    return art, root, spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.work.mkdir(parents=True, exist_ok=True)
    art, root, spec = index_root(args)
    users, histories = synthetic_users(art, spec, args.users)
    items = (art / "item_ids.txt").read_text().split("\n")[: args.items]
    redis = Redis(args.work / f"soak-redis-{os.getpid()}")
    redis.start()
    prefix = "remi-soak:"
    asyncio.run(seed_histories(redis.url, prefix, users, histories))
    users_csv = args.work / "soak-users.csv"
    users_csv.write_text("user_id\n" + "\n".join(users) + "\n")
    bodies = [json.dumps({"user_id": u, "k": K}).encode() for u in users]
    random.Random(0).shuffle(bodies)
    result: dict[str, Any] = {
        "meta": {
            **machine(),
            "loadavg_before": list(os.getloadavg()),
            "args": flags(args),
            "spec": spec,
        }
    }
    ns = argparse.Namespace(redis_url=redis.url)
    env = {"REMI_ADMIN_TOKEN": TOKEN}
    try:
        with real_server(ns, root, prefix, args.workers, True, args.work / "soak-server.log", env) as server:
            python_loadtest(server, users_csv, args.peak_concurrency, 5)  # warm-up, unrecorded
            peak = python_loadtest(server, users_csv, args.peak_concurrency, args.peak_seconds)
            result["peak"] = peak
            rate = args.rate_fraction * peak["qps"]
            print(
                f"peak {peak['qps']} req/s (p99 {peak['latency_ms']['p99']} ms); soak at {rate:.1f} req/s", flush=True
            )
            result["soak"] = soak(args, server, redis, art, root, items, bodies, rate)
            result["server_alive"] = server.proc.poll() is None
            result["server_log_tail"] = server.log_tail(4000)
    finally:
        redis.kill()
        shutil.rmtree(redis.folder, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    result["meta"]["loadavg_after"] = list(os.getloadavg())
    result["goals"] = goals(result, args)
    return result


def soak(
    args: argparse.Namespace,
    server: Any,
    redis: Redis,
    art: Path,
    root: Path,
    items: list[str],
    bodies: list[bytes],
    rate: float,
) -> dict[str, Any]:
    seconds = args.minutes * 60
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    ops = Soak(args, server, redis, art, root, items)
    load_args = {"connections": args.connections, "timeout_s": args.timeout_s, "start_wall": ops.t0}
    proc = ctx.Process(target=load_process, args=(server.url, bodies, rate, seconds, load_args, out))
    proc.start()
    assert proc.pid is not None  # set by start()
    ops.load_pid = proc.pid
    ops.sample()  # before the load (t < 0)
    threads = [ops.every(args.sample_every, ops.sample)]
    for interval, action in (
        (args.redis_restart_every, ops.restart_redis),
        (args.reindex_every, ops.reindex),
        (args.blocklist_every, ops.change_blocklist),
    ):
        if interval > 0:
            threads.append(ops.every(interval, action))
    try:
        load = out.get(timeout=seconds + 600)
    finally:
        ops.stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    for thread in threads:
        thread.join(300)  # a reindex or a restart under way finishes
    return {
        "t0": ops.t0,
        "load": load,
        "redis_down": ops.down,
        "reindexes": ops.reindexes,
        "blocklist": ops.blocklist,
        "samples": ops.samples,
        "failures": ops.failures,
    }


# ---------------------------------------------------------------- the verdict


def cores(samples: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Cores used between consecutive samples: the server, the load client, the rest of this benchmark
    (Redis, reindex jobs, this process) and the machine's other jobs."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        dt = b["t"] - a["t"]
        d = {k: (b["cpu_s"][k] - a["cpu_s"][k]) / dt for k in a["cpu_s"]}
        out.append(
            {
                "t": (a["t"] + b["t"]) / 2,
                "server": round(d["server"], 2),
                "client": round(d["client"], 2),
                "redis_reindex_bench": round(d["benchmark"] - d["server"] - d["client"], 2),
                "other_jobs": round(d["machine"] - d["benchmark"], 2),
            }
        )
    return out


def goals(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    s = result["soak"]
    load = s["load"]
    windows = [(w["kill"], w["ready"] + args.grace_s) for w in s["redis_down"]]
    outside = [span for span in load["fallback_spans"] if not any(a <= span[1] and span[0] <= b for a, b in windows)]
    first = load["start_wall"] + args.warmup_minutes * 60
    workers: dict[str, Any] = {}
    for pid in sorted({p for row in s["samples"] for p in row["workers"]}):
        rows = [(row["t"], row["workers"][pid]) for row in s["samples"] if pid in row["workers"]]
        after = [w for t, w in rows if t >= first]
        if not after:
            continue
        rss = [w["rss_mib"] for w in after]
        fds = [w["fds"] for w in after]
        other = [w["other_fds"] for w in after]
        sockets = [w["sockets"] for w in after]
        workers[pid] = {
            "rss_first_mib": rss[0],
            "rss_last_mib": rss[-1],
            "rss_max_mib": max(rss),
            "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
            "fds_min": min(fds),
            "fds_max": max(fds),
            "fds_first": fds[0],
            "fds_last": fds[-1],
            "other_fds_min": min(other),
            "other_fds_max": max(other),
            "sockets_min": min(sockets),
            "sockets_max": max(sockets),
            # sockets follow the open client and Redis connections; a leak shows as a rising floor
            "sockets_first_third_min": min(sockets[: max(1, len(sockets) // 3)]),
            "sockets_last_third_min": min(sockets[-max(1, len(sockets) // 3) :]),
        }
    admin_5xx = [
        (t, outcome)
        for entry in s["blocklist"]
        for t, outcome in entry["attempts"]
        if isinstance(outcome, int) and outcome >= 500
    ]
    admin_5xx_outside = [a for a in admin_5xx if not any(lo <= a[0] <= hi for lo, hi in windows)]
    total = load["total"]
    used = [c for c in cores(s["samples"]) if c["t"] >= load["start_wall"]]
    mean_cores = {k: round(sum(c[k] for c in used) / len(used), 2) for k in used[0] if k != "t"} if used else {}
    per = load["per_second"]
    outside_seconds: dict[int, int] = {}
    for span in outside:
        second = int(span[0] - load["start_wall"])
        outside_seconds[second] = outside_seconds.get(second, 0) + 1
    outside_context = [
        {"second": sec, "fallbacks": n, "p50_ms": per["p50_ms"][sec], "p99_ms": per["p99_ms"][sec]}
        for sec, n in sorted(outside_seconds.items())
    ]
    return {
        "mean_cores": mean_cores,
        "fallbacks_outside_by_second": outside_context,
        "recommend_5xx": total["s5xx"],
        "recommend_errors": total["errors"],
        "recommend_other_status": total["other_status"],
        "no_5xx": total["s5xx"] == 0 and total["errors"] == 0,
        "fallbacks": total["fallbacks"],
        "fallbacks_outside_windows": len(outside),
        "fallbacks_outside_sample": outside[:20],
        "fallbacks_only_in_windows": not outside,
        "workers": workers,
        "worker_pids_seen": sorted({p for row in s["samples"] for p in row["workers"]}),
        "rss_growth_below_5pct": bool(workers) and all(w["rss_growth_pct"] < 5 for w in workers.values()),
        "fds_flat": bool(workers)
        and all(
            w["other_fds_max"] - w["other_fds_min"] <= 2
            and w["sockets_last_third_min"] <= w["sockets_first_third_min"] + 2
            for w in workers.values()
        ),
        "admin_blocklist_5xx": len(admin_5xx),
        "admin_blocklist_5xx_outside_windows": len(admin_5xx_outside),
        "operation_failures": len(s.get("failures", [])),
        "reindex_failures": sum(1 for r in s["reindexes"] if r["rc"] != 0 or r.get("reload_status") != 200),
    }


# ---------------------------------------------------------------- the report


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["soak"]
    load = s["load"]
    t0 = load["start_wall"]
    per = load["per_second"]
    minutes = [i / 60 for i in range(len(per["sent"]))]
    fig, axes = plt.subplots(6, 1, figsize=(10, 13), sharex=True)
    ax = axes[0]
    ax.plot(minutes, per["ok"], lw=0.7, label="200 answers/s")
    ax.axhline(load["rate"], color="grey", ls=":", lw=1, label=f"target {load['rate']:.0f}/s")
    bad = [a + b + c for a, b, c in zip(per["s5xx"], per["errors"], per["other"], strict=True)]
    if any(bad):
        ax.plot(minutes, bad, lw=0.9, color="black", label="5xx + errors + other/s")
    ax.set_ylabel("req/s")
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    ax.plot(minutes, [v if v is not None else float("nan") for v in per["p99_ms"]], lw=0.7, color="C3", label="p99")
    ax.plot(minutes, [v if v is not None else float("nan") for v in per["p50_ms"]], lw=0.7, color="C0", label="p50")
    ax.set_yscale("log")
    ax.set_ylabel("latency ms")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[2]
    ax.plot(minutes, per["fallbacks"], lw=0.8, color="C1")
    ax.set_ylabel("fallbacks/s")
    used = cores(s["samples"])
    ax = axes[5]
    for key, label in (
        ("server", "server"),
        ("client", "load client"),
        ("redis_reindex_bench", "Redis + reindex"),
        ("other_jobs", "other jobs on the machine"),
    ):
        ax.plot([(c["t"] - t0) / 60 for c in used], [c[key] for c in used], lw=0.9, label=label)
    ax.axhline(result["meta"]["cpus"], color="grey", ls=":", lw=1)
    ax.set_ylabel("cores used")
    ax.legend(fontsize=7, loc="upper left", ncols=4)
    ax = axes[1]
    ax.plot(
        minutes,
        [max(a, b) or float("nan") for a, b in zip(per["send_late_ms"], per["conn_wait_ms"], strict=True)],
        lw=0.6,
        color="grey",
        label="client's own delay (max)",
    )
    ax.legend(fontsize=7, loc="upper left")
    pids = sorted({p for row in s["samples"] for p in row["workers"]})
    panels = ((axes[3], ("rss_mib",), "worker RSS MiB"), (axes[4], ("fds", "other_fds"), "fds (dashed: non-socket)"))
    for ax, keys, label in panels:
        for n, pid in enumerate(pids):
            for key, style in zip(keys, ("-", "--"), strict=False):
                rows = [row for row in s["samples"] if pid in row["workers"]]
                xs = [(row["t"] - t0) / 60 for row in rows]
                ys = [row["workers"][pid][key] for row in rows]
                name = f"worker {n + 1} (pid {pid})" if style == "-" else None
                ax.plot(xs, ys, marker=".", ms=3, lw=0.8, ls=style, color=f"C{n}", label=name)
        ax.axvline(result["meta"]["args"]["warmup_minutes"], color="grey", ls="--", lw=0.8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes:
        for w in s["redis_down"]:
            ax.axvspan((w["kill"] - t0) / 60, (w["ready"] - t0) / 60, color="red", alpha=0.2, lw=0)
        for r in s["reindexes"]:
            ax.axvspan((r["start"] - t0) / 60, (r["built"] - t0) / 60, color="C2", alpha=0.12, lw=0)
            if "reloaded" in r:
                ax.axvline((r["reloaded"] - t0) / 60, color="C2", lw=1)
        for b in s["blocklist"]:
            ax.axvline((b["start"] - t0) / 60, color="purple", lw=0.5, ls=":")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minute of the soak")
    axes[0].set_title(
        "soak: red = Redis down (kill -> PING ok), green band = reindex build, green line = reload, "
        "purple dots = blocklist change",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FLAGS = ("minutes", "rate_fraction", "redis_restart_every", "redis_down_s", "reindex_every", "blocklist_every",
         "sample_every", "warmup_minutes", "name")  # fmt: skip


def command(args: dict[str, Any]) -> str:
    """The command line of a run (its main flags) as its results record it."""
    return "python -m benchmarks.soak " + " ".join(f"--{k.replace('_', '-')} {args[k]:g}" if k != "name"
                                                   else f"--name {args[k]}" for k in FLAGS)  # fmt: skip


def report(result: dict[str, Any]) -> str:
    args = result["meta"]["args"]
    s, g = result["soak"], result["goals"]
    load, total = s["load"], s["load"]["total"]
    t0 = load["start_wall"]
    peak = result["peak"]
    windows = [
        [f"{(w['kill'] - t0) / 60:.2f}", f"{w['ready'] - w['kill']:.1f}",
         sum(1 for f in load["fallback_spans"] if w["kill"] <= f[1] and f[0] <= w["ready"] + args["grace_s"])]
        for w in s["redis_down"]
    ]  # fmt: skip
    reindex_rows = [
        [f"{(r['start'] - t0) / 60:.2f}", f"{r['built'] - r['start']:.0f}", r["rc"], r.get("reload_status", "-"),
         r.get("served_by_all_s", "-"), r.get("version", r.get("error", ""))[:60]]
        for r in s["reindexes"]
    ]  # fmt: skip
    blocks = s["blocklist"]
    retried = sum(1 for b in blocks if len(b["attempts"]) > 1)
    worker_rows = [
        [pid, w["rss_first_mib"], w["rss_last_mib"], w["rss_max_mib"], f"{w['rss_growth_pct']:+.2f}%",
         w["fds_first"], w["fds_last"], w["fds_min"], w["fds_max"], f"{w['other_fds_min']}-{w['other_fds_max']}",
         f"{w['sockets_min']}-{w['sockets_max']}", f"{w['sockets_first_third_min']} / {w['sockets_last_third_min']}"]
        for pid, w in g["workers"].items()
    ]  # fmt: skip
    lines = [
        f"# Soak: `remi serve --workers {args['workers']}` at {args['rate_fraction']:g} x peak for "
        f"{args['minutes']:g} min under operations (benchmarks/soak.py)",
        "",
        f"Synthetic {args['items']:,}-item model ({args['kind']}), {args['users']:,} users' histories in a private "
        "redis-server (append-only file). "
        f"Peak: `remi loadtest` closed loop, {args['peak_concurrency']} clients, {args['peak_seconds']:g} s: "
        f"{peak['qps']} req/s (p99 {peak['latency_ms']['p99']} ms). Soak: open loop at {load['rate']:.1f} req/s over "
        f"{args['connections']} connections, latency from each request's scheduled time. Operations: Redis SIGKILLed "
        f"every {args['redis_restart_every']:g} s and restarted {args['redis_down_s']:g} s later; "
        "`remi reindex --force` "
        f"(nice {args['reindex_nice']}) + POST /admin/reload every {args['reindex_every']:g} s; a blocklist change "
        f"({args['blocklist_ids']} ids) every {args['blocklist_every']:g} s. {result['meta']['cpus']} CPUs; load "
        f"average before {result['meta']['loadavg_before'][0]:.1f}, after {result['meta']['loadavg_after'][0]:.1f}.",
        "",
        f"`{command(args)}`",
        "",
        md_table(
            [
                "sent",
                "200",
                "5xx",
                "transport errors",
                "other status",
                "fallbacks",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
            ],
            [
                [
                    total["sent"],
                    total["ok"],
                    total["s5xx"],
                    total["errors"],
                    total["other_status"],
                    total["fallbacks"],
                    total["p50_ms"],
                    total["p99_ms"],
                    total["p999_ms"],
                    total["max_ms"],
                ]
            ],
        ),  # fmt: skip
        f"Statuses other than 200: {load['statuses'] or 'none'}; transport errors: {load['errors'] or 'none'}.",
        "",
        "Goals:",
        "",
        f"* no 5xx / transport error on /recommend: **{g['no_5xx']}** ({g['recommend_5xx']} 5xx, "
        f"{g['recommend_errors']} errors)",
        f"* fallbacks only inside Redis-down windows (kill -> PING answered + {args['grace_s']:g} s grace): "
        f"**{g['fallbacks_only_in_windows']}** ({g['fallbacks']} fallbacks, {g['fallbacks_outside_windows']} outside)",
        f"* worker RSS growth from minute {args['warmup_minutes']:g} to the end < 5%: **{g['rss_growth_below_5pct']}**",
        f"* open fds flat after minute {args['warmup_minutes']:g}: **{g['fds_flat']}** (per worker: the non-socket "
        "fds (files, pipes, epoll) vary by at most 2, and the socket floor (the fewest sockets sampled, which follow "
        "the open client and Redis connections) of the last third of the samples is within 2 of the first third's)",
        f"* worker processes seen: {len(g['worker_pids_seen'])} (a restarted worker would add one); server alive at "
        f"the end: {result['server_alive']}",
        "",
        f"Workers (samples every {args['sample_every']:g} s from minute {args['warmup_minutes']:g}):",
        "",
        md_table(
            [
                "pid",
                "RSS first MiB",
                "RSS last MiB",
                "RSS max MiB",
                "growth",
                "fds first",
                "fds last",
                "fds min",
                "fds max",
                "non-socket fds",
                "sockets",
                "socket floor first / last third",
            ],
            worker_rows,
        ),  # fmt: skip
        "Redis down windows:",
        "",
        md_table(["at minute", "down s (kill -> PING ok)", "fallbacks in window + grace"], windows),
        "Reindexes:",
        "",
        md_table(["at minute", "build s", "rc", "reload", "both workers serve it after s", "version"], reindex_rows),
        f"Cores used on average during the soak: {g['mean_cores']} (server = its processes; other_jobs = everything "
        "on the machine this benchmark did not start).",
        "",
        "Fallbacks outside the windows, by second of the soak (with that second's p50/p99 ms): "
        + (
            ", ".join(
                f"{o['second']} s: {o['fallbacks']} ({o['p50_ms']}/{o['p99_ms']})"
                for o in g["fallbacks_outside_by_second"]
            )
            or "none"
        )
        + ".",
        "",
        f"Operations that raised: {s.get('failures') or 'none'}.",
        "",
        f"Blocklist changes: {len(blocks)} ({sum(1 for b in blocks if b['op'] == 'block')} blocks), {retried} retried "
        f"after a 503 (Redis down; {g['admin_blocklist_5xx']} 503s in all, {g['admin_blocklist_5xx_outside_windows']} "
        "outside a down window).",
        "",
        f"![soak]({result['meta']['args']['name']}.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2))  # kept if the report fails
    save_results(args.results, args.name, result, report(result))
    plot(result, args.results / f"{args.name}.png")


if __name__ == "__main__":
    main()

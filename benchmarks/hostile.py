"""Normal POST /recommend traffic beside hostile clients, against a 2-worker `remi serve`
(docs/operations.md#hostile-clients-what-one-connection-may-hold).

    python -m benchmarks.hostile [--seconds 25] [--idle 5000] [--slow 200] [--bodies 4]

The synthetic serving model of benchmarks/serving_setup.py (100k items; its artifact folder and
HNSW index root are reused from --work when they exist), histories of --users users in Redis
under a fresh prefix. Two phases of the same normal traffic (--clients concurrent keep-alive
clients looping POST /recommend for a random user, k = 50): quiet, then under attack. The attack
runs in another process, so the measuring client's event loop carries none of it:

* --idle sockets that connect and send nothing, each reconnected as soon as the server drops it;
* --slow clients trickling a request head one byte a second (reconnected when dropped);
* --bodies clients looping the worst ~1 MiB body of each route: POST /recommend with a huge
  history list, POST /recommend/batch, POST /users/{id}/events.

Reports the normal requests' p50/p99 and failures in both phases, what the attackers saw, and
the server's remi_connections_closed_total. Goal: no failed normal request, p99 within 3x of
the quiet phase. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import md_table, save_results
from benchmarks.serving_setup import build_artifacts, delete_prefix, seed_histories, synthetic_spec, synthetic_users
from loadtest.server import ServerProcess, free_port, remi_serve_argv

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
Bodies = list[tuple[str, bytes]]  # (path, JSON body)
BODY_BYTES = 1_048_000  # just under REMI_MAX_BODY_BYTES (1 MiB): read and decoded, not refused by length


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/remi-serving-bench"), help="artifacts, index root, logs")
    ap.add_argument("--users", type=int, default=2000, help="users with a stored history")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="history store")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--warmup", type=float, default=3.0, help="unrecorded normal traffic before the quiet phase")
    ap.add_argument("--clients", type=int, default=4, help="concurrent normal clients")
    ap.add_argument("--idle", type=int, default=5000, help="idle sockets held open")
    ap.add_argument("--slow", type=int, default=200, help="clients sending a byte a second")
    ap.add_argument("--bodies", type=int, default=4, help="clients looping ~1 MiB bodies")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra server environment")
    ap.add_argument("--name", default="hostile", help="results file stem")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    return ap


# ---------------------------------------------------------------- normal traffic


async def _normal(url: str, users: list[str], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def loop(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    answer = await client.post("/recommend", json={"user_id": rng.choice(users), "k": 50})
                    outcome = None if answer.status_code == 200 else str(answer.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome is None:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[outcome] = failures.get(outcome, 0) + 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
    ms = sorted(x * 1000 for x in latencies)
    return {
        "ok": len(ms),
        "failed": sum(failures.values()),
        "failures": failures,
        "req_s": round(len(ms) / seconds, 1),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2) if ms else None,
        "max_ms": round(ms[-1], 2) if ms else None,
    }


def normal_traffic(url: str, users: list[str], clients: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_normal(url, users, clients, seconds))


# ---------------------------------------------------------------- the attack (another process)


def worst_bodies(item_ids: list[str]) -> Bodies:
    """(path, ~1 MiB JSON body) per route, made of valid-looking items."""

    def fill(head: str, item: str, tail: str) -> bytes:
        n = max(1, (BODY_BYTES - len(head) - len(tail)) // (len(item) + 1))
        return (head + ",".join([item] * n) + tail).encode()

    item = f'"{item_ids[0]}"'
    user = '{"user_id":"h1","history":[' + ",".join(f'"{i}"' for i in item_ids[:200]) + "]}"
    event = f'{{"item_id":"{item_ids[1]}","timestamp":1700000000}}'
    return [
        ("/recommend", fill('{"user_id":"h0","history":[', item, "]}")),
        ("/recommend/batch", fill('{"requests":[', user, "]}")),
        ("/users/h2/events", fill('{"events":[', event, "]}")),
    ]


async def _attack(
    port: int, args: dict[str, Any], bodies: list[tuple[str, bytes]], stop: Any, ready: Any
) -> dict[str, Any]:
    counters = ("idle_opened", "idle_dropped", "idle_refused", "slow_opened", "slow_dropped", "slow_completed")
    stats: dict[str, Any] = dict.fromkeys((*counters, "connect_errors", "bodies_sent"), 0)
    stats["body_status"] = {}

    async def idle_one(i: int) -> None:
        await asyncio.sleep(i / 1000)  # 1,000 connects a second: within the listen backlogs
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(0.5)
                continue
            stats["idle_opened"] += 1
            try:
                data = await reader.read(4096)  # nothing until the server answers or drops us
                stats["idle_refused" if data.startswith(b"HTTP/1.1 503") else "idle_dropped"] += 1
            except OSError:
                stats["idle_dropped"] += 1
            finally:
                writer.close()

    head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"

    async def slow_one(i: int) -> None:
        await asyncio.sleep(i / 100)
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(0.5)
                continue
            stats["slow_opened"] += 1
            try:
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(1), 1.0)
                        stats["slow_dropped"] += 1  # the server answered (408/503) or closed
                        break
                    except TimeoutError:
                        if stop.is_set():
                            break
                else:
                    stats["slow_completed"] += 1  # the whole head went through, a byte a second
            except OSError:
                stats["slow_dropped"] += 1
            finally:
                writer.close()

    async def body_one(i: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            n = i
            while not stop.is_set():
                path, body = bodies[n % len(bodies)]
                n += 1
                try:
                    answer = await client.post(path, content=body, headers={"content-type": "application/json"})
                    key = f"{path} {answer.status_code}"
                except httpx.HTTPError as exc:
                    key = f"{path} {type(exc).__name__}"
                stats["body_status"][key] = stats["body_status"].get(key, 0) + 1
                stats["bodies_sent"] += 1

    tasks = [asyncio.create_task(idle_one(i)) for i in range(args["idle"])]
    tasks += [asyncio.create_task(slow_one(i)) for i in range(args["slow"])]
    tasks += [asyncio.create_task(body_one(i)) for i in range(args["bodies"])]
    await asyncio.sleep(args["idle"] / 1000 + 1)
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.2)
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def attacker(port: int, args: dict[str, Any], bodies: Bodies, stop: Any, ready: Any, out: Any) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out.put(asyncio.run(_attack(port, args, bodies, stop, ready)))


# ---------------------------------------------------------------- the run


def closed_counts(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'remi_connections_closed_total\{reason="(\w+)"\} (\S+)', text)}


def bulk_refusals(url: str) -> dict[str, float]:
    """The server's remi_bulk_bodies_refused_total{when} (service/bulk_budget.py)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'remi_bulk_bodies_refused_total\{when="(\w+)"\} (\S+)', text)}


def processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, name, user + system CPU seconds) of every live process (/proc, Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def command(pid: int, name: str) -> str:
    """A short form of a process's command line (``python -m cli train``), else its name."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return name
    words = [Path(argv[0]).name, *argv[1:4]] if argv and argv[0] else [name]
    return " ".join(words).strip()[:40]


def tree(snapshot: dict[int, tuple[int, str, float]], root_pid: int) -> set[int]:
    """A process and its descendants in a snapshot."""
    found: set[int] = set()
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += [child for child, (ppid, _, _) in snapshot.items() if ppid == pid and child not in found]
    return found


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds of the whole machine since boot, over every core, by kind (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "all": sum(values) / tick,
        "busy": (sum(values) - values[3] - values[4]) / tick,  # all but idle and iowait
        "irq": (values[5] + values[6]) / tick,  # irq + softirq
    }


def cpu_use(server_pid: int, measure: Any, attacker_pid: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Runs ``measure()``; also returns the CPU seconds it took meanwhile of the server, the attacker,
    this process (the measuring client), interrupts (the kernel's network processing, mostly), the
    busiest other processes, and the whole machine (busy, and available)."""
    before, machine0 = processes(), machine_cpu_s()
    value = measure()
    after, machine1 = processes(), machine_cpu_s()
    used = {pid: after[pid][2] - before.get(pid, (0, "", 0.0))[2] for pid in after}
    groups = {"server": tree(after, server_pid), "client": {os.getpid()}}
    groups["attacker"] = tree(after, attacker_pid) if attacker_pid else set()
    named = set().union(*groups.values())
    others = sorted(((used[pid], command(pid, after[pid][1])) for pid in used if pid not in named), reverse=True)
    cpu: dict[str, Any] = {
        f"{group}_s": round(sum(used.get(pid, 0.0) for pid in pids), 2) for group, pids in groups.items()
    }
    cpu |= {key + "_s": round(machine1[key] - machine0[key], 2) for key in ("irq", "busy", "all")}
    cpu["top_other"] = [[name, round(seconds, 2)] for seconds, name in others[:3] if seconds >= 0.1]
    return value, cpu


def index_root(work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The artifact folder and a private index root of the synthetic serving model (built once)."""
    spec = synthetic_spec(100_000, 64, 2000, 0)
    art = build_artifacts(work / "artifacts-100000-64-0", spec)
    root = work / "hostile-root"
    if not (root / "current").exists():
        shared = work / "root-100000-64-0"
        if (shared / "current").exists():
            shutil.copytree(shared, root, ignore=shutil.ignore_patterns("blocklist.json"))
        else:
            from index.publish import reindex

            reindex(art, root, "hnsw")
    return art, root, spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    art, root, spec = index_root(work)
    users, histories = synthetic_users(art, spec, args.users)
    prefix = f"remi-bench-hostile-{os.getpid()}-{int(time.time())}:"
    asyncio.run(seed_histories(args.redis_url, prefix, users, histories))
    item_ids = (art / "item_ids.txt").read_text().split("\n")[:1000]
    port = free_port()
    argv = remi_serve_argv(port, ["--index-root", str(root), "--workers", str(args.workers)])
    argv += ["--redis-url", args.redis_url, "--log-level", "warning"]
    env = {**os.environ, "REMI_REDIS_PREFIX": prefix, **dict(kv.split("=", 1) for kv in args.server_env)}
    result: dict[str, Any] = {
        "meta": {
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "loadavg_before": list(os.getloadavg()),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "spec": spec,
        }
    }
    try:
        with ServerProcess(argv, port, work / "hostile-server.log", env, cwd=REPO).start().wait_ready(120) as server:
            normal_traffic(server.url, users, args.clients, args.warmup)
            quiet, cpu = cpu_use(server.proc.pid, lambda: normal_traffic(server.url, users, args.clients, args.seconds))
            result["phases"] = {"quiet": quiet}
            result["cpu"] = {"quiet": cpu}
            print("quiet:", result["phases"]["quiet"], flush=True)
            result["attacks"] = {}
            for name, attack in attack_phases(args):
                result["phases"][name], result["attacks"][name], result["cpu"][name] = under_attack(
                    server, users, item_ids, attack, args
                )
                print(f"{name}:", result["phases"][name], result["attacks"][name], flush=True)
            result["server_alive"] = server.proc.poll() is None
            result["connections_closed"] = closed_counts(server.url)
            result["bulk_refusals"] = bulk_refusals(server.url)
    finally:
        delete_prefix(args.redis_url, prefix)
    result["meta"]["loadavg_after"] = list(os.getloadavg())
    quiet, hostile = result["phases"]["quiet"], result["phases"]["all"]
    result["goal"] = {
        "no_failed_normal_request": hostile["failed"] == 0,
        "p99_ratio": round(hostile["p99_ms"] / quiet["p99_ms"], 2) if hostile["p99_ms"] and quiet["p99_ms"] else None,
    }
    result["goal"]["p99_within_3x"] = bool(result["goal"]["p99_ratio"] and result["goal"]["p99_ratio"] <= 3)
    return result


def attack_phases(args: argparse.Namespace) -> list[tuple[str, dict[str, int]]]:
    """The connection attacks alone, the bodies alone, then everything at once (the goal's phase)."""
    return [
        ("idle+slow", {"idle": args.idle, "slow": args.slow, "bodies": 0}),
        ("bodies", {"idle": 0, "slow": 0, "bodies": args.bodies}),
        ("all", {"idle": args.idle, "slow": args.slow, "bodies": args.bodies}),
    ]


def under_attack(
    server: ServerProcess, users: list[str], item_ids: list[str], attack: dict[str, int], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Normal traffic for --seconds while an attacker process runs ``attack``; (normal, attacker, CPU) stats."""
    ctx = multiprocessing.get_context("spawn")
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=attacker, args=(server.port, attack, worst_bodies(item_ids), stop, ready, out))
    proc.start()
    try:
        ready.wait(60)
        normal, cpu = cpu_use(
            server.proc.pid, lambda: normal_traffic(server.url, users, args.clients, args.seconds), proc.pid
        )
        stop.set()
        seen = out.get(timeout=60)
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return normal, seen, cpu


def bodies_reading(result: dict[str, Any]) -> str:
    """What the ~1 MiB bodies cost in the `bodies` phase, from its answers and CPU seconds."""
    seen, cpu = result["attacks"].get("bodies"), result.get("cpu", {}).get("bodies")
    if not seen or not cpu:
        return ""
    answers = seen["body_status"]
    decoded = sum(n for key, n in answers.items() if key.endswith(" 422"))
    refused = sum(n for key, n in answers.items() if key.endswith(" 503"))
    reset = sum(n for key, n in answers.items() if not key.rsplit(" ", 1)[1].isdigit())
    quiet, bodies = result["phases"]["quiet"], result["phases"]["bodies"]
    return (
        f"The ~1 MiB bodies are rationed by each worker's bulk-body budget (REMI_BULK_BODY_BYTES_PER_S, "
        f"service/bulk_budget.py): of the {seen['bodies_sent']:,} sent in the `bodies` phase, {decoded} were read "
        f"and decoded (their 422s, 5-80 ms of a worker each: benchmarks/worst_bodies.py); {refused:,} were answered "
        f"503 before their body was read, and {reset:,} saw their connection closed under the upload before they "
        "read that 503 (ReadError: the server does not drain a refused body). What is left is the cost of "
        f"refusing fast: the attacker, looping as fast as the refusals come, used {cpu['attacker_s']:.1f} of the "
        f"phase's {cpu['all_s']:.0f} CPU seconds on the same cores (the server {cpu['server_s']:.1f}), so normal "
        f"requests went from {quiet['req_s']:.0f} to {bodies['req_s']:.0f} a second with p99 "
        f"{quiet['p99_ms']:.1f} -> {bodies['p99_ms']:.1f} ms."
    )


def report(result: dict[str, Any]) -> str:
    args = result["meta"]["args"]
    rows = [
        [phase, r["ok"], r["failed"], *(f"{r[key]:.1f}" for key in ("req_s", "p50_ms", "p99_ms", "max_ms"))]
        for phase, r in result["phases"].items()
    ]
    attack_rows = [
        [name, f"{a['idle_opened']:,}", f"{a['idle_dropped']:,}", f"{a['idle_refused']:,}", f"{a['slow_opened']:,}",
         f"{a['slow_dropped']:,}", f"{a['slow_completed']:,}", f"{a['bodies_sent']:,}",
         ", ".join(f"{k}: {v}" for k, v in sorted(a["body_status"].items()))]
        for name, a in result["attacks"].items()
    ]  # fmt: skip
    cpu_rows = [
        [phase, f"{c['server_s']:.1f}", f"{c['attacker_s']:.1f}", f"{c['client_s']:.1f}", f"{c['irq_s']:.1f}",
         f"{c['busy_s'] - c['server_s'] - c['attacker_s'] - c['client_s'] - c['irq_s']:.1f}",
         ", ".join(f"{name} {seconds:.1f}" for name, seconds in c["top_other"]),
         f"{c['busy_s']:.1f} / {c['all_s']:.1f}"]
        for phase, c in result.get("cpu", {}).items()
    ]  # fmt: skip
    goal = result["goal"]
    lines = [
        "# Normal traffic beside hostile clients (benchmarks/hostile.py)",
        "",
        f"`remi serve --workers {args['workers']}`, synthetic 100k-item model (HNSW), Redis histories; "
        f"{args['clients']} keep-alive clients looping POST /recommend (k = 50) for {args['seconds']:g} s per phase. "
        f"Attacks: {args['idle']:,} idle sockets (each reconnected when dropped), {args['slow']} clients sending a "
        f"byte a second (reconnected), {args['bodies']} clients looping ~1 MiB bodies of POST /recommend (history), "
        "/recommend/batch and /users/{id}/events; alone, then all at once. The attackers run in another process "
        f"on the same {result['meta']['cpus']} CPUs (load average before {result['meta']['loadavg_before'][0]:.1f}: "
        "other jobs were running), so part of any slowdown is their CPU, not the server's.",
        "",
        "Normal requests:",
        "",
        md_table(["phase", "ok", "failed", "req/s", "p50 ms", "p99 ms", "max ms"], rows),
        "",
        f"Goal (phase `all` vs `quiet`): no failed normal request: {goal['no_failed_normal_request']}; "
        f"p99 within 3x: {goal['p99_within_3x']} (ratio {goal['p99_ratio']}). "
        f"Server alive after: {result['server_alive']}.",
        "",
        "What the attackers saw:",
        "",
        md_table(
            [
                "phase",
                "idle opened",
                "idle dropped",
                "idle 503",
                "slow opened",
                "slow dropped",
                "slow completed",
                "bodies sent",
                "body answers",
            ],
            attack_rows,
        ),  # fmt: skip
        "",
        f"Server `remi_connections_closed_total` at the end: {result['connections_closed']}; "
        f"`remi_bulk_bodies_refused_total`: {result.get('bulk_refusals', {})}.",
        "",
        f"CPU seconds per phase ({args['seconds']:g} s, {result['meta']['cpus']} cores; /proc): the server's "
        "processes, the attacker process, the measuring client (this process), interrupts (softirq: the kernel's "
        "network processing, charged to no process), everything else and its busiest processes, and the machine's "
        "busy / available seconds:",
        "",
        md_table(
            ["phase", "server", "attackers", "measuring client", "irq", "other", "busiest other", "busy / available"],
            cpu_rows,
        ),
        "",
        "Reading it: every idle socket is held at most REMI_REQUEST_HEAD_TIMEOUT_S (10 s) and every slow head is "
        "dropped with a 408 within it (`slow completed` stays 0), so the attackers must keep reconnecting; no normal "
        "request failed. " + bodies_reading(result),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()

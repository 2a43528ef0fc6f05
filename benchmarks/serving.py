"""Serving benchmark: compute floor in-process, then POST /recommend over HTTP with wrk.

    python -m benchmarks.serving                     # full run, about 10 min on 2 cores
    python -m benchmarks.serving --duration 5 --headline-duration 10 --concurrency 1 32   # quick

Setup (cached under --work, rebuilt only when missing):

* a synthetic model artifact folder for a 100k-item catalogue at d = 64: a ComiRec-SA user tower
  (K = 4, L = 20) whose item table is replaced by clustered vectors with log-normal norms (the
  recipe of benchmarks/index.py), exported to ONNX and checked against PyTorch, written per
  remi/contract.py (no training: the benchmark is about the serving path, not about quality);
* an index root built with ``remi reindex --kind hnsw`` (the library's reindex, default HNSW
  parameters, recall@50 checked on the tower's interests);
* --users histories of 20-50 items (2-4 topics each) in Redis under a fresh key prefix, deleted
  again at the end (SCAN + DEL of that prefix only).

Measurements:

(a) compute floor: per request in one process, no HTTP: the history fetch from Redis
    (RedisHistory.get_many of one user), encode, ONNX model, FAISS search and merge, plus building
    and encoding the response as a separate stage; median and p99 over --floor-requests.
(b) HTTP: ``remi serve`` (uvicorn, uvloop, httptools, no access log) with 1 and 2 worker
    processes at each --concurrency with wrk (benchmarks/wrk/recommend.lua), then micro-batching
    on at the best worker count, then the best configuration at concurrency 32 for
    --headline-duration seconds; the no-op app (benchmarks/noop_app.py: same stack, precomputed
    answer of the same bytes) at the same workers and concurrencies; and one run of the Python
    ``remi loadtest`` at concurrency 32 against the best configuration. Server and client CPU
    seconds are read from /proc and getrusage, so CPU per request is reported next to the rate.
    With --variant-env KEY=VALUE the real-server sweeps and headline are repeated with that
    environment (e.g. OMP_NUM_THREADS=1, which showed that FAISS ran with the OpenMP default in the
    compute threads before the service set the thread count in each of them).
(c) optional (--profile-seconds > 0): cProfile of a one-worker server's event-loop thread under
    load at concurrency 32 (not used for any other figure).

Nothing is pinned; server, wrk and Redis share the machine's cores, as they would on one host.
Writes benchmarks/results/serving.json, serving.md and serving.png (latency vs throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import pstats
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.index import clustered_items
from benchmarks.report import md_table

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
LUA = Path(__file__).parent / "wrk" / "recommend.lua"
ITEM_FORMAT = "i{:06d}"
USER_FORMAT = "u{:07d}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- synthetic artifacts


class HistoryMaker:
    """Users with 2-4 topics: their items come from those clusters, popular items more often."""

    def __init__(self, assign: np.ndarray, popularity: np.ndarray, seed: int):
        self.rng = np.random.default_rng(seed)
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(assign.max() + 2))
        self.members = [order[bounds[c] : bounds[c + 1]] for c in range(assign.max() + 1)]
        self.members = [m for m in self.members if len(m)]
        self.popularity = popularity.astype(np.float64)

    def __call__(self, length: int) -> np.ndarray:
        """``length`` item rows (0-based), oldest first, topics interleaved."""
        rng = self.rng
        topics = rng.choice(len(self.members), size=rng.integers(2, 5), replace=False)
        picks = rng.integers(0, len(topics), length)
        out = np.empty(length, dtype=np.int64)
        for t, topic in enumerate(topics):
            slots = np.flatnonzero(picks == t)
            if len(slots):
                pool = self.members[topic]
                p = self.popularity[pool] / self.popularity[pool].sum()
                out[slots] = rng.choice(pool, size=len(slots), p=p)
        return out


def spec_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "synthetic": True,
        "items": args.items,
        "dim": args.dim,
        "interests": 4,
        "seq_len": 20,
        "clusters": args.clusters,
        "seed": args.seed,
        "backbone": "comirec-sa",
    }


def build_artifacts(folder: Path, spec: dict[str, Any]) -> Path:
    """A model artifact folder per remi/contract.py, with a random ComiRec-SA tower over clustered items.

    Reused when ``folder`` already holds one for the same spec.
    """
    from remi.contract import (
        ARTIFACT_FILES,
        FORMAT_VERSION,
        ITEM_EMBEDDINGS,
        ITEM_IDS,
        ITEM_POPULARITY,
        MANIFEST,
        MODEL_FILE,
        SAMPLE_HISTORIES,
        ArtifactManifest,
        atomic_folder,
        file_entries,
        utc_now,
        write_manifest,
    )

    if (folder / MANIFEST).is_file():
        if json.loads((folder / MANIFEST).read_text()).get("train_config") == spec:
            return folder
    import torch

    from remi.artifacts import pad_histories
    from training.export import PARITY_TOLERANCE, export_onnx, parity_error, parity_inputs
    from training.models import build_model

    t0 = time.perf_counter()
    n, d, length = spec["items"], spec["dim"], spec["seq_len"]
    torch.manual_seed(spec["seed"])
    vectors, assign = clustered_items(n, d, spec["seed"], spec["clusters"])
    # Items are numbered by popularity (as training/data.py encodes them): Zipf-like counts.
    popularity = np.maximum(1, (20_000 / np.arange(1, n + 1) ** 0.8)).astype(np.int64)
    model = build_model(spec["backbone"], n, d, spec["interests"], length)
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(vectors)
    model.eval()
    make = HistoryMaker(assign, popularity, spec["seed"] + 1)
    rng = np.random.default_rng(spec["seed"] + 2)
    sample = [make(int(rng.integers(1, 51))) + 1 for _ in range(1024)]  # item index = row + 1
    history, mask = pad_histories(sample, length)
    with atomic_folder(folder, replace=True) as tmp:
        export_onnx(model, tmp / MODEL_FILE)
        np.save(tmp / ITEM_EMBEDDINGS, vectors)
        (tmp / ITEM_IDS).write_text("\n".join(ITEM_FORMAT.format(i) for i in range(n)) + "\n")
        np.save(tmp / ITEM_POPULARITY, popularity)
        np.savez(tmp / SAMPLE_HISTORIES, history=history, mask=mask)
        batches = parity_inputs(n, length) + [(history[i : i + 64], mask[i : i + 64]) for i in range(0, 1024, 64)]
        error = parity_error(model, tmp / MODEL_FILE, batches)
        if not error <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX parity {error:.2e} > {PARITY_TOLERANCE:.0e}")
        files = file_entries(tmp, list(ARTIFACT_FILES))
        content = hashlib.sha256(b"".join(files[f].sha256.encode() for f in (MODEL_FILE, ITEM_EMBEDDINGS, ITEM_IDS)))
        write_manifest(
            tmp,
            ArtifactManifest(
                format_version=FORMAT_VERSION,
                model_version=content.hexdigest()[:16],
                backbone=spec["backbone"],
                dim=d,
                interests=spec["interests"],
                seq_len=length,
                n_items=n,
                opset=18,
                created_at=utc_now(),
                data_fingerprint={"synthetic": "benchmarks/serving.py", "items": n},
                metrics={},
                train_config=spec,
                parity_max_abs=error,
                files=files,
            ),
        )
    print(f"artifacts: {folder} ({time.perf_counter() - t0:.1f} s, parity {error:.1e})", flush=True)
    return folder


# ---------------------------------------------------------------------------- Redis histories


async def seed_histories(url: str, prefix: str, users: list[str], histories: list[list[str]]) -> None:
    from service.history import Event, RedisHistory

    store = RedisHistory(url, prefix=prefix, max_len=200, ttl_seconds=86_400, timeout_s=5.0)
    try:
        for start in range(0, len(users), 50):  # within the pool's 64 connections
            await asyncio.gather(
                *(
                    store.append(u, [Event(item, 1_700_000_000 + j) for j, item in enumerate(h)])
                    for u, h in zip(users[start : start + 50], histories[start : start + 50], strict=True)
                )
            )
    finally:
        await store.close()


def delete_prefix(url: str, prefix: str) -> int:
    """SCAN + DEL of this benchmark's keys only."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    client.close()
    return deleted


# ---------------------------------------------------------------------------- (a) compute floor


def compute_floor(root: Path, url: str, prefix: str, users: list[str], requests: int) -> dict[str, Any]:
    """Per-request stage times in one process: Redis history -> encode -> model -> search -> merge."""
    from index.store import load_current
    from service.engine import Engine, Query
    from service.history import RedisHistory
    from service.schemas import Item, RecommendResponse

    engine = Engine(load_current(root, threads=1), faiss_threads=1)
    engine.warm_up()
    stages = ("history", "encode", "model", "search", "merge", "floor", "respond")

    async def run() -> dict[str, list[float]]:
        store = RedisHistory(url, prefix=prefix, max_len=200)
        times: dict[str, list[float]] = {s: [] for s in stages}
        clock = time.perf_counter
        try:
            for i in range(requests + 100):
                user = users[i % len(users)]
                t0 = clock()
                events = (await store.get_many([user], 200))[0]
                t1 = clock()
                known, n_unknown = engine.encode([e.item_id for e in events])
                t2 = clock()
                (res,), timings = engine.recommend([Query(known, 50)])
                t3 = clock()
                body = RecommendResponse(
                    user_id=user,
                    items=[
                        Item(item_id=a, score=b, interest=c)
                        for a, b, c in zip(res.item_ids, res.scores, res.interests, strict=True)
                    ],
                    model_version=engine.model_version,
                    index_version=engine.index_version,
                    history_len=len(known),
                    unknown_items=n_unknown,
                    fallback=None,
                    took_ms=round((t3 - t0) * 1000, 3),
                ).model_dump_json()
                t4 = clock()
                if i < 100 or not body:  # warm-up
                    continue
                for stage, value in zip(
                    stages,
                    (t1 - t0, t2 - t1, timings.model, timings.search, timings.merge, t3 - t0, t4 - t3),
                    strict=True,
                ):
                    times[stage].append(value * 1000)
        finally:
            await store.close()
        return times

    times = asyncio.run(run())
    out = {
        stage: {
            "median_ms": round(float(np.median(v)), 4),
            "p99_ms": round(float(np.percentile(v, 99)), 4),
            "mean_ms": round(float(np.mean(v)), 4),
        }
        for stage, v in times.items()
    }
    return {
        "requests": requests,
        "index_kind": engine.version.manifest.kind,
        "index_params": engine.version.manifest.params,
        "recall_at_50": engine.version.manifest.recall_at_50,
        "stages": out,
    }


# ---------------------------------------------------------------------------- servers and clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        todo += children.get(p, [])
    return total


def source_fingerprint() -> dict[str, str]:
    """The git commit and a hash of the serving code (service/, index/, remi/), to catch edits mid-run."""
    digest = hashlib.sha256()
    for path in sorted(p for d in ("service", "index", "remi") for p in (REPO / d).rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return {"commit": head.stdout.strip() or "unknown", "code_sha256": digest.hexdigest()[:16]}


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def connections_per_process(port: str) -> list[int]:
    """Established client connections held by each server process (largest first), from ss."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        pid = line.partition("pid=")[2].partition(",")[0]
        if pid:
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def redis_pid() -> int | None:
    """The local redis-server's pid (its CPU is reported when Redis runs on this machine)."""
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


class Server:
    """A server subprocess on a free port; started by ``with``, killed (whole process group) after."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, port: int):
        self.cmd, self.env, self.log, self.port = cmd, env, log, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200 and r.json().get("history_store", "ok") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s; see {self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._fh.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)


def real_server(
    args: argparse.Namespace,
    root: Path,
    prefix: str,
    workers: int,
    microbatch: bool,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "remi.cli", "serve", "--index-root", str(root), "--port", str(port)]
    cmd += ["--workers", str(workers), "--redis-url", args.redis_url, "--log-level", "warning"]
    env = {**os.environ, "REMI_REDIS_PREFIX": prefix, "REMI_MICROBATCH": "true" if microbatch else "false"}
    return Server(cmd, env | (extra_env or {}), log, port)


def noop_server(workers: int, response: Path, log: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.noop_app", "--port", str(port), "--workers", str(workers)]
    cmd += ["--response", str(response), "--log-level", "warning"]
    return Server(cmd, dict(os.environ), log, port)


def wrk(server: Server, users_file: Path, concurrency: int, seconds: float, threads: int) -> dict[str, Any]:
    """One wrk run; adds server and client CPU seconds (and per request) to wrk's JSON."""
    threads = max(1, min(threads, concurrency))
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(LUA)]
    cmd += [server.url, "--", str(users_file), "50"]
    redis = redis_pid()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine0, redis0 = machine_busy_seconds(), tree_cpu_seconds(redis) if redis else 0.0
    server_cpu0, t0 = server.cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(min(2.0, seconds / 2))
    split = connections_per_process(server.url.rsplit(":", 1)[1])
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    server_cpu = server.cpu() - server_cpu0
    machine, redis_cpu = machine_busy_seconds() - machine0, (tree_cpu_seconds(redis) - redis0) if redis else 0.0
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.strip()[:500]} {stdout[-500:]}")
    out = json.loads(line[len("WRK_JSON ") :])
    client_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    ok = sum(n for code, n in out["status_counts"].items() if 200 <= int(code) < 300)
    errors = out["non_2xx_3xx"] + sum(out["socket_errors"].values())
    out |= {
        "concurrency": concurrency,
        "wrk_threads": threads,
        "ok": ok,
        "errors": errors,
        "server_cpu_s": round(server_cpu, 2),
        "server_cores": round(server_cpu / wall, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, out["requests"]), 3),
        "client_cpu_s": round(client_cpu, 2),
        "client_cores": round(client_cpu / wall, 2),
        "connections_per_worker": split,
        "redis_cores": round(redis_cpu / wall, 2) if redis else None,
        "machine_cores": round(machine / wall, 2),
        # everything else on the machine: > 0.1 means another job disturbed this run
        "other_cores": round(max(0.0, machine - server_cpu - client_cpu - redis_cpu) / wall, 2),
    }
    return out


def sweep(
    label: str, server: Server, args: argparse.Namespace, users_file: Path, concurrencies: list[int]
) -> list[dict[str, Any]]:
    wrk(server, users_file, 8, args.server_warmup, args.wrk_threads)  # warm-up, not recorded
    rows = []
    for c in concurrencies:
        row = {"config": label, **wrk(server, users_file, c, args.duration, args.wrk_threads)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "concurrency", "qps", "latency_ms", "errors")}), flush=True)
    return rows


def tag(
    rows: list[dict[str, Any]], workers: int, microbatch: bool, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    return [r | {"workers": workers, "microbatch": microbatch, "env": env or {}} for r in rows]


class _InProcess:
    """The ``url`` + ``cpu()`` that ``wrk()`` needs, for a server running in this process."""

    def __init__(self, url: str):
        self.url = url

    def cpu(self) -> float:
        return time.process_time()


COMPONENTS = (  # (label, substring of the file path or, for C functions, of the name)
    ("redis client", "redis/"),
    ("uvicorn + httptools", "uvicorn/"),
    ("uvicorn + httptools", "httptools"),
    ("fastapi + starlette", "fastapi/"),
    ("fastapi + starlette", "starlette/"),
    ("pydantic", "pydantic"),
    ("prometheus metrics", "prometheus_client/"),
    ("service/ (app, engine glue)", "service/"),
    ("index/ + remi/ (merge, search wrapper, padding)", "index/"),
    ("index/ + remi/ (merge, search wrapper, padding)", "remi/"),
    ("asyncio", "asyncio/"),
    ("json / orjson", "json"),
    ("numpy", "numpy"),
    ("concurrent.futures + threading", "concurrent/"),
    ("concurrent.futures + threading", "threading"),
)


def _component(file: str, func: str) -> str:
    text = file if file != "~" else func
    return next((label for label, key in COMPONENTS if key in text), "other" if file != "~" else "other C calls")


def profile_server(args: argparse.Namespace, root: Path, prefix: str, users_file: Path) -> dict[str, Any]:
    """cProfile of the event-loop thread of a 1-worker server under wrk load at concurrency 32.

    The server runs in this process (uvicorn in a thread, uvloop as in ``remi serve``) so the
    profiler is switched on and off from inside the loop thread, around the load only (no
    start-up, no warm-up). The compute threads (ONNX, FAISS, merge) are not profiled: their
    cost is the compute floor.
    """
    import cProfile
    import threading

    import httpx
    import uvicorn

    from service.app import create_app
    from service.config import ServiceSettings

    settings = ServiceSettings(index_root=root, redis_url=args.redis_url, redis_prefix=prefix, log_level="warning")
    app = create_app(settings)
    profiler = cProfile.Profile()
    switch = {"want": False, "on": False, "t_on": 0.0, "t_off": 0.0}

    async def toggled(scope: Any, receive: Any, send: Any) -> None:
        if switch["want"] != switch["on"]:  # runs on the loop thread: the profiler follows that thread
            if switch["want"]:
                profiler.enable()
                switch["t_on"] = time.perf_counter()
            else:
                profiler.disable()
                switch["t_off"] = time.perf_counter()
            switch["on"] = switch["want"]
        await app(scope, receive, send)

    port = free_port()
    config = uvicorn.Config(
        toggled, host="127.0.0.1", port=port, log_level="warning", access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    target = _InProcess(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(target.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("in-process server did not become ready")
            time.sleep(0.3)
        wrk(target, users_file, 8, args.server_warmup, args.wrk_threads)  # type: ignore[arg-type]
        switch["want"] = True
        load = wrk(target, users_file, 32, args.profile_seconds, args.wrk_threads)  # type: ignore[arg-type]
        switch["want"] = False
        httpx.get(target.url + "/healthz", timeout=5)  # one more request switches the profiler off
    finally:
        server.should_exit = True
        thread.join(30)
    window = (switch["t_off"] or time.perf_counter()) - switch["t_on"]
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    by_component: dict[str, float] = {}
    entries = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_component[_component(file, func)] = by_component.get(_component(file, func), 0.0) + tottime
        where = file.split("site-packages/")[-1] if "site-packages" in file else file.replace(str(REPO) + "/", "")
        where = where.split("lib/python3")[-1] if "lib/python3" in where else where
        entries.append((tottime, f"{where}:{line}({func})", ncalls, cumtime))
    entries.sort(reverse=True)
    requests = max(1, load["requests"])
    return {
        "qps_under_profiler": load["qps"],
        "requests": load["requests"],
        "window_s": round(window, 2),
        "python_s": round(total, 2),
        "python_ms_per_request": round(1000 * total / requests, 3),
        "components": [
            {
                "component": k,
                "tottime_s": round(v, 3),
                "share": round(v / total, 3),
                "ms_per_request": round(1000 * v / requests, 4),
            }
            for k, v in sorted(by_component.items(), key=lambda kv: -kv[1])
        ],
        "top": [
            {
                "function": name,
                "calls": calls,
                "tottime_s": round(tt, 3),
                "share": round(tt / total, 3),
                "cumtime_s": round(ct, 3),
            }
            for tt, name, calls, ct in entries[: args.profile_top]
        ],
    }


def headline(label: str, server: Server, args: argparse.Namespace, users_file: Path) -> dict[str, Any]:
    """The long run at concurrency 32 (after an unrecorded warm-up)."""
    wrk(server, users_file, 8, args.server_warmup, args.wrk_threads)
    row = {"config": label, **wrk(server, users_file, 32, args.headline_duration, args.wrk_threads), "headline": True}
    print(
        json.dumps({k: row[k] for k in ("config", "concurrency", "qps", "latency_ms", "errors", "headline")}),
        flush=True,
    )
    return row


def python_loadtest(server: Server, users_csv: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "remi.cli", "loadtest", "--url", server.url, "--users-from", str(users_csv)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "2"]
    server_cpu0, t0 = server.cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    result = json.loads(proc.stdout)
    result["server_cores"] = round((server.cpu() - server_cpu0) / wall, 2)
    return result


# ---------------------------------------------------------------------------- report


def fallback_text(r: dict[str, Any]) -> str:
    """'0', or the count with its share of the answers and how many were history_unavailable."""
    if not r["fallbacks"]:
        return "0"
    hu = r.get("fallbacks_history_unavailable", 0)
    share = 100 * r["fallbacks"] / max(1, r["requests"])
    return f"{r['fallbacks']:,} ({share:.1f}%{', h.u.' if hu == r['fallbacks'] else ''})"


def best_workers(rows: list[dict[str, Any]], label: str, workers: list[int]) -> int:
    """The worker count with the highest error-free req/s at any concurrency above 1 (its peak).

    The peak, not the rate at one concurrency: with several workers, one unlucky accept race can
    put every connection of a run on one worker (see ``connections_per_worker``).
    """

    def peak(w: int) -> float:
        rates = [r["qps"] for r in rows if r["config"] == label.format(w) and r["concurrency"] > 1 and not r["errors"]]
        return max(rates, default=0.0)

    return max(workers, key=peak)


def best_of(rows: list[dict[str, Any]], config: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["config"] == config and r["concurrency"] == concurrency), None)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    configs = list(dict.fromkeys(r["config"] for r in rows if not r.get("headline")))
    for ax, key in zip(axes, ("p50", "p99"), strict=True):
        for i, config in enumerate(configs):
            pts = sorted(
                (r for r in rows if r["config"] == config and not r.get("headline")), key=lambda r: r["concurrency"]
            )
            style = "--" if config.startswith("noop") else "-"
            ax.plot(
                [p["qps"] for p in pts],
                [p["latency_ms"][key] for p in pts],
                style,
                marker="o",
                label=config,
                color=plt.get_cmap("tab10").colors[i % 10],
            )
            for p in pts:
                ax.annotate(f"c{p['concurrency']}", (p["qps"], p["latency_ms"][key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("requests/s (wrk, log scale)")
        ax.set_ylabel(f"{key} latency, ms")
        ax.set_title(f"POST /recommend k=50: {key} latency vs throughput")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def code_line(meta: dict[str, Any]) -> str:
    """Which code was measured, and whether it changed while the benchmark ran."""
    src, end = meta.get("source"), meta.get("source_at_end")
    if not src:
        return "Code measured: not recorded."
    line = f"Code measured: commit {src['commit']}, serving code hash {src['code_sha256']}"
    if end and end != src:
        return line + (
            f" **(changed during the run: hash {end['code_sha256']} at the end; servers started after the change "
            "ran the new code)**."
        )
    return line + (" (unchanged during the run)." if end else ".")


def report(result: dict[str, Any], name: str) -> str:
    meta, floor, rows = result["meta"], result["floor"], result["http"]
    lines = [
        "# Serving benchmark (`python -m benchmarks.serving`)",
        "",
        f"Machine: {meta['cpus']} CPUs ({meta['machine']}), Python {meta['python']}; nothing pinned: server "
        "workers, wrk and Redis share the cores. Load average before the run: "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_before'])}.",
        f"Catalogue: {meta['spec']['items']:,} synthetic items, d = {meta['spec']['dim']}, ComiRec-SA tower K = 4, "
        f"L = 20 (random weights over clustered item vectors), index {floor['index_kind']} {floor['index_params']}, "
        f"recall@50 {floor['recall_at_50']}. {meta['users']:,} users with 20-50 stored events in Redis; k = 50.",
        "",
        code_line(meta),
        "",
        "## (a) Compute floor per request (one process, no HTTP)",
        "",
        f"{floor['requests']:,} requests one after another, one thread each for onnxruntime and FAISS. `floor` = "
        "history + encode + model + search + merge (what /recommend must do); `respond` = building and encoding "
        "the response model (FastAPI does this per request too, outside the floor).",
        "",
        md_table(
            ["stage", "median ms", "p99 ms", "mean ms"],
            [
                [s, f"{v['median_ms']:.3f}", f"{v['p99_ms']:.3f}", f"{v['mean_ms']:.3f}"]
                for s, v in floor["stages"].items()
            ],
        ),
        "## (b) POST /recommend over HTTP (wrk)",
        "",
        f"wrk -t{meta['args']['wrk_threads']} (or fewer) -c C -d {meta['args']['duration']:g}s --latency -s "
        "benchmarks/wrk/recommend.lua; `server CPU/req` = CPU ms of all server processes per request; "
        "`cores` = CPU cores busy (server processes / wrk / redis-server / everything else on the machine: "
        "above ~0.1 another job disturbed the run); `fallbacks` = answers whose `fallback` is set (from wrk's "
        "response hook, with their share of the answers; `h.u.` = all of them `history_unavailable`: a Redis "
        "call took longer than the service's Redis timeout (REMI_REDIS_TIMEOUT_MS, 100 ms), which opens its "
        "circuit breaker for 1 s, so that "
        "worker answers from popularity without the model, cheaply, and the rate is inflated); "
        "`conns per worker` = wrk's keep-alive connections held by each worker process (from `ss`, 2 s into "
        "the run; a lopsided split leaves a worker idle); "
        "`x noop` = requests/s against the no-op app at the same workers and concurrency.",
        "",
    ]
    noop = {(r["workers"], r["concurrency"]): r for r in rows if r["config"].startswith("noop")}
    table_rows = []
    for r in rows:
        base = noop.get((r["workers"], r["concurrency"]))
        ratio = f"{r['qps'] / base['qps']:.2f}" if base and not r["config"].startswith("noop") else ""
        table_rows.append(
            [
                r["config"] + (" (headline)" if r.get("headline") else ""),
                r["concurrency"],
                f"{r['duration_s']:.0f}",
                f"{r['qps']:,.0f}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p95']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                r["errors"],
                fallback_text(r),
                f"{r['server_cpu_ms_per_request']:.2f}",
                " / ".join(f"{r[k] or 0:.2f}" for k in ("server_cores", "client_cores", "redis_cores", "other_cores")),
                "/".join(str(n) for n in r.get("connections_per_worker", [])),
                ratio,
            ]
        )
    disturbed = [
        f"{r['config']} C={r['concurrency']} ({r['other_cores']:.2f})" for r in rows if r["other_cores"] > 0.15
    ]
    if disturbed:
        lines += [f"Disturbed by other jobs on the machine (other cores > 0.15): {', '.join(disturbed)}.", ""]
    lines += [
        md_table(
            [
                "config",
                "C",
                "s",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "fallbacks",
                "server CPU/req ms",
                "cores srv / wrk / redis / other",
                "conns per worker",
                "x noop",
            ],
            table_rows,
        ),  # fmt: skip
        f"Best worker count (highest error-free req/s at any C > 1, micro-batching off): **{result['best_workers']}**; "
        f"micro-batching at that count: {result['microbatch_verdict']}.",
        "",
    ]
    py = result.get("python_loadtest")
    if py:
        ref = result["python_loadtest_reference"]
        lines += [
            "## Python load tester vs wrk",
            "",
            md_table(
                ["client", "config", "C", "req/s", "p50 ms", "p99 ms", "errors", "client CPU (cores)"],
                [
                    [
                        "wrk",
                        ref["config"],
                        ref["concurrency"],
                        f"{ref['qps']:,.0f}",
                        f"{ref['latency_ms']['p50']:.2f}",
                        f"{ref['latency_ms']['p99']:.2f}",
                        ref["errors"],
                        f"{ref['client_cores']:.2f}",
                    ],
                    [
                        "remi loadtest",
                        ref["config"],
                        py["concurrency"],
                        f"{py['qps']:,.0f}",
                        f"{py['latency_ms']['p50']:.2f}",
                        f"{py['latency_ms']['p99']:.2f}",
                        py["errors"],
                        f"{py['client_cpu_share']:.2f}",
                    ],
                ],
            ),  # fmt: skip
        ]
    lines += ["## Targets", "", md_table(["target", "measured", "met"], result["targets"])]
    lines += limits_section(result)
    prof = result.get("profile")
    if prof:
        lines += [
            "## Where the server's event-loop thread spends its time (cProfile, 1 worker, C = 32)",
            "",
            f"In-process server, profiler on only during {prof['window_s']:.1f} s of load: "
            f"{prof['requests']:,} requests "
            f"({prof['qps_under_profiler']:,.0f} req/s under the profiler). Python functions on the loop thread took "
            f"{prof['python_s']:.2f} s = {prof['python_ms_per_request']:.3f} ms per request (profiler overhead "
            "included); the rest of the window is uvloop/httptools C code and waiting. cProfile measures wall "
            "time, so a function's time includes any wait for the GIL held by a compute thread at that moment. "
            "The compute threads (ONNX, FAISS, merge) are not profiled: their cost is the compute floor above.",
            "",
            md_table(
                ["component", "tottime s", "share", "ms / request"],
                [
                    [c["component"], f"{c['tottime_s']:.2f}", f"{100 * c['share']:.1f}%", f"{c['ms_per_request']:.3f}"]
                    for c in prof["components"]
                ],
            ),  # fmt: skip
            md_table(
                ["function", "calls", "tottime s", "share"],
                [[r["function"], r["calls"], f"{r['tottime_s']:.2f}", f"{100 * r['share']:.1f}%"] for r in prof["top"]],
            ),
        ]
    lines += ["", f"Raw numbers: `benchmarks/results/{name}.json`; plot: `{name}.png`."]
    return "\n".join(lines) + "\n"


def limits_section(result: dict[str, Any]) -> list[str]:
    """CPU per request of the best real and no-op configurations at C = 32 against the floor."""
    rows = [r for r in result["http"] if r["concurrency"] == 32 and not r.get("headline")]
    real = [r for r in rows if not r["config"].startswith("noop")]
    noop = [r for r in rows if r["config"].startswith("noop")]
    if not real or not noop:
        return []
    st = result["floor"]["stages"]
    compute = sum(st[s]["median_ms"] for s in ("encode", "model", "search", "merge"))
    cpus = result["meta"]["cpus"]
    bound = 1000 * cpus / compute
    best_noop = max(r["qps"] for r in noop)
    table = [
        [
            r["config"],
            f"{r['qps']:,.0f}",
            f"{r['server_cpu_ms_per_request']:.2f}",
            f"{r['server_cores']:.2f}",
            f"{r['client_cores']:.2f}",
            f"{1000 * result['meta']['cpus'] / max(r['server_cpu_ms_per_request'], 1e-9):,.0f}",
        ]
        for r in real + noop
    ]
    return [
        "## What limits throughput (C = 32)",
        "",
        f"Compute floor per request in one thread: encode + model + search + merge = {compute:.2f} ms (median), "
        f"plus {st['history']['median_ms']:.2f} ms for the Redis history round trip (mostly waiting, partly client "
        f"parsing) and {st['respond']['median_ms']:.2f} ms to build and encode the response. `server CPU/req` below "
        "is all server processes' CPU per answered request; `ceiling` = cores / (server CPU per request), the rate "
        "the server could reach with every core to itself (wrk and Redis also need some).",
        "",
        md_table(["config", "req/s", "server CPU/req ms", "server cores", "wrk cores", "ceiling req/s"], table),
        f"Even with a free HTTP layer, the compute floor alone bounds the service at {cpus} cores / {compute:.2f} ms "
        f"= {bound:,.0f} req/s, {bound / best_noop:.2f}x the best no-op rate ({best_noop:,.0f} req/s).",
        "",
    ]


def targets(result: dict[str, Any], env: dict[str, str]) -> list[list[str]]:
    """The issue's targets for the real configurations run with ``env`` ({} = as shipped)."""
    rows = result["http"]
    real = [r for r in rows if not r["config"].startswith("noop") and r["env"] == env]
    head = next((r for r in real if r.get("headline")), None)
    if head is None:
        return []
    tag_ = " ".join(f"{k}={v}" for k, v in env.items()) or "as shipped"
    noop_best = max(
        (r for r in rows if r["config"].startswith("noop") and r["concurrency"] == 32), key=lambda r: r["qps"]
    )
    real_best = max((r for r in real if r["concurrency"] == 32 and not r.get("headline")), key=lambda r: r["qps"])
    c1 = best_of(real, head["config"], 1) or next(r for r in real if r["concurrency"] == 1)
    fastest = min((r for r in real if r["concurrency"] == 1), key=lambda r: r["latency_ms"]["p50"])
    floor = result["floor"]["stages"]["floor"]["median_ms"]
    ratio = real_best["qps"] / noop_best["qps"]
    p50, best_p50 = c1["latency_ms"]["p50"], fastest["latency_ms"]["p50"]
    degraded = head["fallbacks"] / max(1, head["requests"])
    long_runs = [r for r in real if r.get("headline") or r.get("fallback_check")]
    healthy = [
        [
            f"[{tag_}] 0 fallbacks with a healthy Redis ({r['config']}, C = 32, {r['duration_s']:.0f} s, "
            f"wrk -t{r.get('wrk_threads', '?')})",
            f"{fallback_text(r)} fallbacks of {r['requests']:,} answers, {r['errors']} errors",
            "yes" if r["fallbacks"] == 0 and r["errors"] == 0 else "no",
        ]
        for r in long_runs
    ]
    return healthy + [
        [
            f"[{tag_}] >= 1,000 req/s at C = 32 for 60 s, zero errors ({head['config']}, {head['duration_s']:.0f} s)",
            f"{head['qps']:,.0f} req/s, {head['errors']} errors, {fallback_text(head)} fallbacks",
            "yes"
            if head["qps"] >= 1000 and head["errors"] == 0 and head["duration_s"] >= 59 and degraded < 0.001
            else (
                f"no: {100 * degraded:.1f}% of the answers were fallbacks (cheaper, no model)"
                if head["qps"] >= 1000 and head["errors"] == 0 and head["duration_s"] >= 59
                else "no"
            ),
        ],
        [
            f"[{tag_}] >= 0.5x the no-op baseline at C = 32 ({real_best['config']} vs the best no-op)",
            f"{real_best['qps']:,.0f} / {noop_best['qps']:,.0f} = {ratio:.2f}x",
            "yes" if ratio >= 0.5 else "no",
        ],
        [
            f"[{tag_}] p50 at C = 1 <= 3 ms (headline config {c1['config']})",
            f"{p50:.2f} ms",
            "yes" if p50 <= 3 else "no",
        ],
        [
            f"[{tag_}] p50 at C = 1 <= 3 ms (fastest config at C = 1: {fastest['config']})",
            f"{best_p50:.2f} ms",
            "yes" if best_p50 <= 3 else "no",
        ],
        [
            f"[{tag_}] p50 at C = 1 within 3x of the compute floor median ({fastest['config']})",
            f"{best_p50:.2f} / {floor:.2f} ms = {best_p50 / floor:.1f}x",
            "yes" if best_p50 <= 3 * floor else "no",
        ],
    ]


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-bench",
                    help="cache folder for the artifacts, index root, users files and server logs")  # fmt: skip
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0, help="seed of the catalogue, model and histories")
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument(
        "--prefix", default=None, help="Redis key prefix (default: a fresh remi-bench-serving-<pid>-<time>:)"
    )
    ap.add_argument("--floor-requests", type=int, default=2000, help="requests timed for the in-process compute floor")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], help="wrk connections to sweep")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server worker counts to sweep")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run of the sweeps")
    ap.add_argument("--headline-duration", type=float, default=60.0,
                    help="seconds of the headline run (best configuration, concurrency 32)")  # fmt: skip
    ap.add_argument("--server-warmup", type=float, default=3.0, help="seconds of unrecorded load after a server starts")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (capped at the connection count)")
    ap.add_argument(
        "--fallback-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the other micro-batch setting for --headline-duration at C = 32: with a healthy Redis "
        "both must answer with 0 fallbacks (a circuit breaker that opens on one late reply shows here)",
    )
    ap.add_argument(
        "--loadtest-duration", type=float, default=15.0, help="seconds of the `remi loadtest` run (0 = skip)"
    )
    ap.add_argument("--profile-seconds", type=float, default=10.0, help="seconds of the cProfile run (0 = skip)")
    ap.add_argument("--profile-top", type=int, default=15, help="functions listed from the profile")
    ap.add_argument(
        "--variant-env",
        nargs="*",
        default=[],
        help="KEY=VALUE environment of an extra real-server sweep + headline at every worker count, e.g. "
        "OMP_NUM_THREADS=1 (default: none)",
    )
    ap.add_argument("--name", default="serving", help="results file stem")
    ap.add_argument(
        "--report-only", action="store_true", help="re-render the .md and .png from the existing .json, measure nothing"
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    args = ap.parse_args()
    if args.report_only:
        result = json.loads((args.results / f"{args.name}.json").read_text())
        result["targets"] = targets(result, {}) + (
            targets(result, dict(kv.split("=", 1) for kv in result["meta"]["args"]["variant_env"]))
            if result["meta"]["args"]["variant_env"]
            else []
        )
        (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2))
        (args.results / f"{args.name}.md").write_text(report(result, args.name))
        plot(result["http"], args.results / f"{args.name}.png")
        print(report(result, args.name))
        return
    if 32 not in args.concurrency:
        ap.error("--concurrency must include 32 (the headline and target concurrency)")

    variant = dict(kv.split("=", 1) for kv in args.variant_env)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    spec = spec_of(args)
    prefix = args.prefix or f"remi-bench-serving-{os.getpid()}-{int(time.time())}:"
    loadavg = list(os.getloadavg())
    others = subprocess.run(["pgrep", "-f", "benchmarks.index"], capture_output=True, text=True).stdout.split()
    if others:
        print(f"warning: benchmarks.index is running ({others}); timings will be disturbed", flush=True)

    art = build_artifacts(work / f"artifacts-{spec['items']}-{spec['dim']}-{spec['seed']}", spec)
    root = work / f"root-{spec['items']}-{spec['dim']}-{spec['seed']}"
    from index.publish import reindex

    t0 = time.perf_counter()
    built = reindex(art, root, "hnsw")
    print(f"index: {built.version} (built {built.built}, {time.perf_counter() - t0:.1f} s)", flush=True)

    # users and their histories (same generator as the sample histories, another seed)
    item_ids = (art / "item_ids.txt").read_text().split("\n")[: spec["items"]]
    _, assign = clustered_items(spec["items"], spec["dim"], spec["seed"], spec["clusters"])
    make = HistoryMaker(assign, np.load(art / "item_popularity.npy"), spec["seed"] + 3)
    rng = np.random.default_rng(spec["seed"] + 4)
    users = [USER_FORMAT.format(u) for u in range(args.users)]
    histories = [[item_ids[i] for i in make(int(rng.integers(20, 51)))] for _ in users]
    users_file, users_csv = work / "users.txt", work / "users.csv"
    users_file.write_text("\n".join(users) + "\n")
    users_csv.write_text("user_id\n" + "\n".join(users) + "\n")

    result: dict[str, Any] = {
        "meta": {
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_before": loadavg,
            "other_benchmarks_running": bool(others),
            "spec": spec,
            "users": args.users,
            "index_version": built.version,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "source": source_fingerprint(),
            "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_"))},
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        }
    }
    logs = work / "logs"
    try:
        t0 = time.perf_counter()
        asyncio.run(seed_histories(args.redis_url, prefix, users, histories))
        print(f"seeded {len(users):,} histories under {prefix!r} in {time.perf_counter() - t0:.1f} s", flush=True)

        result["floor"] = compute_floor(root, args.redis_url, prefix, users, args.floor_requests)
        print(json.dumps(result["floor"]["stages"]), flush=True)

        rows: list[dict[str, Any]] = []
        captured = work / "real_response.json"
        for w in args.workers:
            with real_server(args, root, prefix, w, False, logs / f"real-w{w}.log") as server:
                if w == args.workers[0]:  # the no-op app replays this answer
                    import httpx

                    r = httpx.post(server.url + "/recommend", json={"user_id": users[0], "k": 50}, timeout=10)
                    r.raise_for_status()
                    captured.write_bytes(r.content)
                rows += tag(sweep(f"real w{w}", server, args, users_file, args.concurrency), w, False)
        at32 = {w: best_of(rows, f"real w{w}", 32) for w in args.workers}
        best_w = best_workers(rows, "real w{}", args.workers)
        result["best_workers"] = best_w
        label = f"real w{best_w} microbatch"
        with real_server(args, root, prefix, best_w, True, logs / f"real-w{best_w}-mb.log") as server:
            rows += tag(sweep(label, server, args, users_file, args.concurrency), best_w, True)
        mb32, off32 = best_of(rows, label, 32), at32[best_w]
        use_mb = mb32["errors"] == 0 and mb32["qps"] > off32["qps"]  # type: ignore[index]
        result["microbatch_verdict"] = (
            f"{'on' if use_mb else 'off'} is better at C = 32 "
            f"({mb32['qps']:,.0f} req/s on vs {off32['qps']:,.0f} off)"  # type: ignore[index]
        )
        for w in args.workers:
            with noop_server(w, captured, logs / f"noop-w{w}.log") as server:
                rows += tag(sweep(f"noop w{w}", server, args, users_file, args.concurrency), w, False)

        head_label = f"real w{best_w}" + (" microbatch" if use_mb else "")
        with real_server(args, root, prefix, best_w, use_mb, logs / "headline.log") as server:
            rows += tag([headline(head_label, server, args, users_file)], best_w, use_mb)
            if args.fallback_check:  # the other micro-batch setting, as long: a healthy Redis must give 0 fallbacks
                check = f"real w{best_w}" + ("" if use_mb else " microbatch") + " (fallback check)"
                with real_server(args, root, prefix, best_w, not use_mb, logs / "fallback-check.log") as other:
                    rows += tag([{**headline(check, other, args, users_file), "headline": False,
                                  "fallback_check": True}], best_w, not use_mb)  # fmt: skip
            if args.loadtest_duration > 0:
                result["python_loadtest"] = python_loadtest(server, users_csv, 32, args.loadtest_duration)
                result["python_loadtest_reference"] = best_of(rows, head_label, 32)
                print(json.dumps({"python_loadtest": result["python_loadtest"]}), flush=True)

        if variant:  # the same service with extra environment (default OMP_NUM_THREADS=1)
            text = " ".join(f"{k}={v}" for k, v in variant.items())
            for w in args.workers:
                with real_server(args, root, prefix, w, False, logs / f"variant-w{w}.log", variant) as server:
                    rows += tag(
                        sweep(f"real w{w} {text}", server, args, users_file, args.concurrency), w, False, variant
                    )
            vbest = best_workers(rows, "real w{} " + text, args.workers)
            result["variant_best_workers"] = vbest
            with real_server(args, root, prefix, vbest, False, logs / "variant-headline.log", variant) as server:
                rows += tag([headline(f"real w{vbest} {text}", server, args, users_file)], vbest, False, variant)
        result["http"] = rows
        if args.profile_seconds > 0:
            result["profile"] = profile_server(args, root, prefix, users_file)
    finally:
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)

    result["meta"]["source_at_end"] = source_fingerprint()
    result["targets"] = targets(result, {}) + (targets(result, variant) if variant else [])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    text = report(result, args.name)
    (args.results / f"{args.name}.md").write_text(text)
    plot(result["http"], args.results / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()

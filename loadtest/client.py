"""``remi loadtest``: a small closed-loop HTTP load generator for POST /recommend.

C worker coroutines, each with its own ``httpx.AsyncClient`` holding one HTTP/1.1 keep-alive
connection (C connections in all; one shared pool of C costs far more client CPU, see
``_worker``), send one request after another for user ids taken, in a seeded random
order, from the ``user_id`` column of a CSV(.gz). Requests that complete during the warm-up are
not counted; after it, every completion inside the measured window is. Kept lean so the client
eats as little of the machine's CPU as possible: request bodies are encoded once up front,
responses are only parsed for their ``fallback`` field, and latencies go into a flat array.

Python's client costs far more CPU per request than wrk, so on a small machine it measures a
lower ceiling than the server's; ``client_cpu_share`` in the result shows how busy it was.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PERCENTILES = (50, 90, 95, 99)


def load_user_ids(path: str | Path, seed: int = 0) -> list[str]:
    """Distinct ids of the ``user_id`` column (as strings), shuffled with ``seed``."""
    import numpy as np
    import pandas as pd

    users = pd.read_csv(path, usecols=["user_id"], dtype=str, keep_default_na=False)["user_id"]
    distinct = users[users != ""].drop_duplicates().to_numpy()
    if len(distinct) == 0:
        raise ValueError(f"{path}: no user ids in the user_id column")
    order = np.random.default_rng(seed).permutation(len(distinct))
    return [str(distinct[i]) for i in order]


def recommend_url(url: str) -> str:
    """A base URL gets ``/recommend`` appended; a URL already ending in it is kept."""
    url = url.rstrip("/")
    return url if url.endswith("/recommend") else url + "/recommend"


@dataclass
class _Tally:
    latencies: array[float] = field(default_factory=lambda: array("d"))  # seconds, successes only
    statuses: Counter[str] = field(default_factory=Counter)  # non-2xx status codes
    exceptions: Counter[str] = field(default_factory=Counter)  # transport errors by type
    fallbacks: Counter[str] = field(default_factory=Counter)  # fallback reason of 2xx answers
    requests: int = 0


async def _worker(
    url: str,
    bodies: list[bytes],
    cursor: list[int],
    start_counting: float,
    stop: float,
    tally: _Tally,
    timeout: float,
    tls: ssl.SSLContext,
    headers: dict[str, str],
) -> None:
    # One client (a pool of one keep-alive connection) per worker: httpcore's pool scans every
    # connection for every queued request, so one pool of 32+ connections costs the client
    # milliseconds of CPU per request (measured: ~1.8k is_idle calls per request at C = 32).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clock = time.perf_counter
    n = len(bodies)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, verify=tls, http1=True, http2=False) as client:
        while True:
            t0 = clock()
            if t0 >= stop:
                return
            body = bodies[cursor[0] % n]
            cursor[0] += 1  # one event loop: no lock needed
            status, reason, error = 0, None, None
            try:
                response = await client.post(url, content=body, headers=headers)
                status = response.status_code
                if 200 <= status < 300:
                    reason = _fallback(response.content)
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            t1 = clock()
            if t1 < start_counting or t1 > stop:
                continue
            tally.requests += 1
            if error is not None:
                tally.exceptions[error] += 1
            elif 200 <= status < 300:
                tally.latencies.append(t1 - t0)
                if reason:
                    tally.fallbacks[reason] += 1
            else:
                tally.statuses[str(status)] += 1


def _fallback(content: bytes) -> str | None:
    """The response's ``fallback`` value; a plain byte search first (the common null case)."""
    if b'"fallback":null' in content:
        return None
    try:
        return json.loads(content).get("fallback") or None
    except ValueError:
        return "unparseable"


async def _run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float,
    headers: dict[str, str],
) -> tuple[_Tally, float, float]:
    tally = _Tally()
    cursor = [0]
    tls = ssl.create_default_context()  # loaded once, not once per client (https URLs only)
    start = time.perf_counter()
    start_counting = start + warmup
    stop = start_counting + duration
    cpu = [0.0]

    async def mark_cpu() -> None:  # client CPU over the measured window only
        await asyncio.sleep(max(0.0, start_counting - time.perf_counter()))
        cpu[0] = time.process_time()

    marker = asyncio.ensure_future(mark_cpu())
    await asyncio.gather(
        *(_worker(url, bodies, cursor, start_counting, stop, tally, timeout, tls, headers) for _ in range(concurrency))
    )
    await marker
    cpu_used = time.process_time() - cpu[0]
    measured = min(time.perf_counter(), stop) - start_counting
    return tally, measured, cpu_used


def run_loadtest(
    url: str,
    users_from: str | Path,
    concurrency: int,
    duration: float,
    k: int = 50,
    warmup: float = 2.0,
    seed: int = 0,
    timeout: float = 10.0,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Runs the load and returns the summary (see the module docstring); ``api_key`` is sent as a bearer."""
    import numpy as np
    import orjson

    if concurrency < 1 or duration <= 0 or warmup < 0:
        raise ValueError("concurrency must be >= 1, duration > 0 and warmup >= 0")
    users = load_user_ids(users_from, seed)
    bodies = [orjson.dumps({"user_id": u, "k": k}) for u in users]
    target = recommend_url(url)
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    try:
        import uvloop

        tally, measured, cpu = uvloop.run(_run(target, bodies, concurrency, duration, warmup, timeout, headers))
    except ImportError:
        tally, measured, cpu = asyncio.run(_run(target, bodies, concurrency, duration, warmup, timeout, headers))
    lat_ms = np.frombuffer(tally.latencies, dtype=np.float64) * 1000 if len(tally.latencies) else np.zeros(0)
    errors = sum(tally.statuses.values()) + sum(tally.exceptions.values())
    latency: dict[str, float | None] = dict.fromkeys([*(f"p{p}" for p in PERCENTILES), "mean", "max"])
    if len(lat_ms):
        latency = {
            f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, np.percentile(lat_ms, PERCENTILES), strict=True)
        }
        latency |= {"mean": round(float(lat_ms.mean()), 3), "max": round(float(lat_ms.max()), 3)}
    return {
        "url": target,
        "concurrency": concurrency,
        "duration_s": round(measured, 3),
        "warmup_s": warmup,
        "k": k,
        "users": len(users),
        "seed": seed,
        "requests": tally.requests,
        "ok": len(tally.latencies),
        "errors": errors,
        "errors_by_status": dict(sorted(tally.statuses.items())),
        "errors_by_exception": dict(sorted(tally.exceptions.items())),
        "fallbacks": dict(sorted(tally.fallbacks.items())),
        "qps": round(tally.requests / measured, 1) if measured > 0 else 0.0,
        "latency_ms": latency,
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share": round(cpu / measured, 3) if measured > 0 else None,
    }


def summary_line(result: dict[str, Any]) -> str:
    """One human-readable line of a result."""
    lat = result["latency_ms"]

    def ms(key: str) -> str:
        return "-" if lat[key] is None else f"{lat[key]:.2f}"

    return (
        f"{result['requests']} requests in {result['duration_s']:.1f} s = {result['qps']:.1f} req/s "
        f"(concurrency {result['concurrency']}); latency ms p50 {ms('p50')} p90 {ms('p90')} p95 {ms('p95')} "
        f"p99 {ms('p99')} max {ms('max')}; errors {result['errors']} {result['errors_by_status']} "
        f"{result['errors_by_exception']}; fallbacks {result['fallbacks']}; client CPU {result['client_cpu_share']}"
    )

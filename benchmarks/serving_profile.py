"""(c) Where the server's event-loop thread spends its time: cProfile under wrk load (no other figure uses it).

The server runs in this process (uvicorn in a thread, uvloop as in ``remi serve``) so the
profiler is switched on and off from inside the loop thread, around the load only (no start-up,
no warm-up). The compute threads (ONNX, FAISS, merge) are not profiled: their cost is the
compute floor.
"""

from __future__ import annotations

import argparse
import pstats
import time
from pathlib import Path
from typing import Any

from benchmarks.serving_http import REPO, START_TIMEOUT_S, wrk
from loadtest.server import free_port, wait_ready

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
    """cProfile of the event-loop thread of a 1-worker server under wrk load at concurrency 32."""
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
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, START_TIMEOUT_S, alive=thread.is_alive, interval=0.3)
        wrk(url, time.process_time, users_file, 8, args.server_warmup, args.wrk_threads)
        switch["want"] = True
        load = wrk(url, time.process_time, users_file, 32, args.profile_seconds, args.wrk_threads)
        switch["want"] = False
        httpx.get(url + "/healthz", timeout=5)  # one more request switches the profiler off
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

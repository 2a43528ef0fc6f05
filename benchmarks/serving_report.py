"""The serving benchmark's results as Markdown, plus the latency-vs-throughput plot and the targets table.

Pure functions of the result dict that benchmarks/serving.py saves as JSON, so ``--report-only``
re-renders serving.md and serving.png from a saved serving.json without measuring anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import md_table

# What the floor's `respond` stage timed: results before the stage followed the app's encoding
# have no "respond_stage" and timed pydantic models.
RESPOND_TEXT = {
    "orjson": "building the answer as the app does, a dict in the RecommendResponse shape encoded once by orjson "
    "into a Response (per request too, outside the floor).",
    "pydantic": "building and encoding the response model (FastAPI does this per request too, outside the floor).",
}


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
                color=plt.get_cmap("tab10")(i % 10),
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
        "history + encode + model + search + merge (what /recommend must do); `respond` = "
        + RESPOND_TEXT.get(floor.get("respond_stage", "pydantic"), RESPOND_TEXT["pydantic"]),
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
        "loadtest/recommend.lua; `server CPU/req` = CPU ms of all server processes per request; "
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
    """The targets (docs/results.md#serving) for the real configurations run with ``env`` ({} = as shipped)."""
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

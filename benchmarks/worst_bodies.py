"""What the worst body of each route costs the event loop before its 4xx
(docs/operations.md#scaling-the-api-horizontally).

    python -m benchmarks.worst_bodies [--repeats 5] [--label after] [--name worst_bodies]

Every body here is built up to the body limit (REMI_MAX_BODY_BYTES, 1 MiB; the interests route's
filter up to its 64 KiB query limit) from the cheapest tokens that cost the server the most: a
history of 500k one-digit integers, 200k unknown keys, lists of bad items, a NaN at the end of a
full body (the strict decoder's fallback), lone surrogates, nesting. Each is sent in process to a
real app (the tiny test model loaded, so POST /recommend takes its fast path first, as served) by
calling the ASGI app on the app's own event loop: the time measured is the time that loop spends
on the request until its answer is sent, i.e. what every other request on that worker waits. No
request here reaches the model: each is a 4xx (413/422), except the ``valid_*`` rows, which show
what an ordinary request costs, for scale.

Run on the code before and after a change (``--label``) and merge the two JSON files with
``--merge BEFORE AFTER``: the table puts the two side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import md_table, save_results

RESULTS = Path(__file__).parent / "results"
LIMIT = 1_048_576  # REMI_MAX_BODY_BYTES default
QUERY_LIMIT = 65_536  # the filter query's max_length
TOKEN = "s3cret"


def fill(head: bytes, item: bytes, tail: bytes, limit: int = LIMIT, sep: bytes = b",") -> bytes:
    """``head item,item,...,item tail`` as long as it fits in ``limit`` bytes."""
    n = max(1, (limit - len(head) - len(tail) + len(sep)) // (len(item) + len(sep)))
    return head + sep.join([item] * n) + tail


def keys(head: bytes, tail: bytes, limit: int = LIMIT) -> bytes:
    """An object body with unknown keys ``"k0":0,"k1":0,...`` up to ``limit``."""
    parts: list[bytes] = []
    size = len(head) + len(tail)
    i = 0
    while True:
        part = b'"k%d":0' % i
        if size + len(part) + 1 > limit:
            break
        parts.append(part)
        size += len(part) + 1
        i += 1
    return head + b",".join(parts) + tail


def batch_of(request: bytes, limit: int = LIMIT) -> bytes:
    return fill(b'{"requests":[', request, b"]}", limit)


HISTORY = b'{"user_id":"u","history":['
EXCLUDE = b'{"user_id":"u","exclude_items":['
EVENTS = b'{"events":['
ITEM_IDS = b'{"item_ids":['
FILTER = b'{"user_id":"u","filter":{'


def valid_request(user: str) -> dict[str, Any]:
    return {"user_id": user, "k": 50, "history": [f"item-{i % 40:03d}" for i in range(200)]}


R, B, E, A = "POST /recommend", "POST /recommend/batch", "POST /users/{id}/events", "POST /admin/items/block"
CASES: list[tuple[str, str, str, Callable[[], bytes]]] = [  # (route, case, path, body)
    (R, "history of 1-digit ints", "/recommend", lambda: fill(HISTORY, b"1", b"]}")),
    (R, "history of 1-char ids", "/recommend", lambda: fill(HISTORY, b'"a"', b"]}")),
    (R, "history of booleans (bad items)", "/recommend", lambda: fill(HISTORY, b"true", b"]}")),
    (R, "history of lone surrogates", "/recommend", lambda: fill(HISTORY, b'"\\ud800"', b"]}")),
    (R, "full history, NaN at the end", "/recommend", lambda: fill(HISTORY, b"1", b'],"k":NaN}')),
    (R, "unknown keys", "/recommend", lambda: keys(b'{"user_id":"u",', b"}")),
    (R, "exclude_items of 1-digit ints", "/recommend", lambda: fill(EXCLUDE, b"1", b"]}")),
    (R, "filter `in` of 1-digit ints", "/recommend", lambda: fill(FILTER + b'"c":{"in":[', b"1", b"]}}}")),
    (R, "filter with many attributes", "/recommend", lambda: fill(FILTER, b'"a":{"eq":1}', b"}}")),
    (R, "nested arrays", "/recommend", lambda: b'{"user_id":"u","history":' + b"[" * 500_000 + b"]" * 500_000 + b"}"),
    (R, "malformed at the end", "/recommend", lambda: fill(HISTORY, b"1", b"]")),
    (B, "requests with long histories", "/recommend/batch", lambda: batch_of(fill(HISTORY, b"1", b"]}", LIMIT // 256))),
    (B, "requests of 1,000 bad exclude_items", "/recommend/batch",
     lambda: batch_of(fill(EXCLUDE, b"true", b"]}", 5_020))),
    (B, "requests of unknown keys", "/recommend/batch", lambda: batch_of(keys(b'{"user_id":"u",', b"}", LIMIT // 256))),
    (B, "many bad requests", "/recommend/batch", lambda: batch_of(b'{"user_id":""}')),
    (E, "events of int item ids", "/users/u/events", lambda: fill(EVENTS, b'{"item_id":1}', b"]}")),
    (E, "1,000 events of unknown keys", "/users/u/events",
     lambda: fill(EVENTS, keys(b'{"item_id":1,', b"}", LIMIT // 1000), b"]}")),
    (E, "1,000 bad events", "/users/u/events",
     lambda: fill(EVENTS, b'{"item_id":true,"timestamp":"x"}', b"]}", 40_000)),
    (A, "item_ids of 1-digit ints", "/admin/items/block", lambda: fill(ITEM_IDS, b"1", b"]}")),
    (A, "1,000 bad item_ids", "/admin/items/block", lambda: fill(ITEM_IDS, b"[]", b"]}", 3_010)),
    ("POST /admin/reload", "unknown keys", "/admin/reload", lambda: keys(b'{"force":true,', b"}")),
    ("POST /admin/reload", "force: NaN behind unknown keys", "/admin/reload", lambda: keys(b"{", b',"force":NaN}')),
    ("GET /users/{id}/interests", "filter query of 1-digit ints", "filter",
     lambda: fill(b'{"c":{"in":[', b"1", b"]}}", QUERY_LIMIT)),
    (R, "valid_200-item history", "/recommend", lambda: json.dumps(valid_request("u")).encode()),
    (B, "valid_64 requests x 200 items", "/recommend/batch",
     lambda: json.dumps({"requests": [valid_request(f"u{j}") for j in range(64)]}).encode()),
]  # fmt: skip


async def call(app: Any, path: str, body: bytes) -> tuple[int, int, float]:
    """(status, response bytes, seconds) of one request, run on the app's event loop."""
    from urllib.parse import quote

    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {TOKEN}".encode())]
    if path == "filter":  # the interests route: the filter travels as a query parameter
        method, target, query, payload = "GET", "/users/u/interests", f"filter={quote(body.decode())}".encode(), b""
    else:
        method, target, query, payload = "POST", path, b"", body
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": target,
        "raw_path": target.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
        "extensions": {},
        "state": {},
    }
    sent = False
    status, size = 0, 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    t0 = time.perf_counter()
    await app(scope, receive, send)
    return status, size, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import ServiceSettings
    from tests.service.tiny_model import publish_tiny_version, write_tiny_artifacts

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_artifacts(Path(tmp) / "artifacts")
        root = Path(tmp) / "root"
        publish_tiny_version(model.artifacts, root)
        # the decode itself is measured: the bulk-body budget (service/bulk_budget.py) would refuse most of these
        app = create_app(ServiceSettings(index_root=root, poll_seconds=0, admin_token=TOKEN, bulk_body_bytes_per_s=0))
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            for route, case, path, build in CASES:
                if args.only and args.only not in case:
                    continue
                body = build()
                times, status, size = [], 0, 0
                assert client.portal is not None  # open while the client's context is
                for _ in range(args.repeats):
                    status, size, seconds = client.portal.call(call, app, path, body)
                    times.append(seconds)
                row = {
                    "route": route,
                    "case": case,
                    "body_bytes": len(body),
                    "status": status,
                    "response_bytes": size,
                    "ms_median": round(statistics.median(times) * 1000, 2),
                    "ms_max": round(max(times) * 1000, 2),
                }
                print(row, flush=True)
                rows.append(row)
    return {"label": args.label, "repeats": args.repeats, "body_limit": LIMIT, "rows": rows}


def report(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    old = {(r["route"], r["case"]): r for r in (before or {}).get("rows", [])}
    headers = ["route", "body", "KiB"]
    if old:
        headers += ["before: status", "before: ms", "before: answer bytes"]
    headers += [f"{result['label']}: status", f"{result['label']}: ms", f"{result['label']}: answer bytes"]
    rows = []
    for r in result["rows"]:
        row: list[Any] = [r["route"], r["case"], round(r["body_bytes"] / 1024)]
        if old:
            o = old.get((r["route"], r["case"]))
            row += [o["status"], o["ms_median"], o["response_bytes"]] if o else ["-", "-", "-"]
        row += [r["status"], r["ms_median"], r["response_bytes"]]
        rows.append(row)
    return (
        "# Worst bodies: event-loop time to the answer, per route\n\n"
        "`python -m benchmarks.worst_bodies` (in process, the tiny test model loaded, one request at a time on the "
        f"app's event loop; median of {result['repeats']} runs; bodies up to the 1 MiB body limit, the interests "
        "filter up to its 64 KiB query limit). `before`: the code before the bounded decode and list checks, "
        "`after`: with them. The "
        "`valid_*` rows are ordinary requests (200), for scale. Machine: 2 shared cores under two training jobs, "
        "so absolute numbers are noisy; the ratios are what matters.\n\n"
        + md_table(headers, rows)
        + "\n"
        + (NOTES if old else "")
    )


NOTES = """
What changed (service/http_guards.py, service/schemas.py, service/fast_recommend.py):

* The body is decoded by orjson (C, no Python call per value); only a body orjson refuses for a
  value JSON cannot carry (NaN, Infinity, a number outside a double, a lone surrogate) is scanned
  again by the stdlib's C scanner so that the value is reported at its field. Before, the stdlib
  decoder called a Python hook for every number and then walked every value for surrogates.
* Every list is length-checked before its items (`history` is now bounded: REMI_HISTORY_ITEMS_MAX,
  1,000; before, a 500k-item history was read whole and the model answered it: 200 in ~4 s) and
  stops at its first bad item: before, 1 MiB of `true` in `history` made 500k errors, a 77 MB
  answer and 42 s of the event loop.
* An object with unknown keys reports the first five; before, one error per key (9.6 MB answers).
* The fast path of POST /recommend hands the body it decoded to the full app when validation fails
  (it was decoded twice), and malformed text is refused after one scan.

What is left is the decode itself, proportional to the body and bounded by REMI_MAX_BODY_BYTES
(orjson: ~5-30 ms for the worst 1 MiB on this machine under load; the fallback's second scan for a
NaN at the end of 1 MiB doubles it). /admin/reload's body is a model now (FastAPI's embedded body
ignored unknown keys and answered 200); its rows were measured after that change.

The `valid_*` rows moved with the machine's load between the two runs (the after run was the busier
one). Decoding and validating the same bodies in a loop, best of 15 (`timeit`, both trees, same
minute): one 200-item /recommend body 19-43 us before, 30-40 us after; a 64-request batch 2.0-3.4 ms
before, 1.2-2.1 ms after.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default="after")
    ap.add_argument("--only", default=None, help="only the cases whose name contains this")
    ap.add_argument("--name", default="worst_bodies")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--merge", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="two saved JSONs: one table")
    args = ap.parse_args(argv)
    if args.merge:
        before, after = (json.loads(p.read_text()) for p in args.merge)
        save_results(args.results, args.name, {"before": before, "after": after}, report(after, before))
        return
    result = run(args)
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()

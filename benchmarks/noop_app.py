"""The no-op baseline of the serving benchmark: the HTTP stack alone, no model, no history store.

Same framework and server settings as ``remi serve`` (FastAPI on uvicorn with uvloop/httptools,
no access log, the same request model and validation; with --workers > 1 the service's own
supervisor, ``service.workers.serve_workers``: one process per worker on an SO_REUSEPORT
socket), but POST /recommend answers a precomputed body: the same size and shape as a real
k = 50 answer. Whatever the real service loses against it is the price of the history lookup,
the model, the search, the merge and building the response.

    python -m benchmarks.noop_app --port 8001 --workers 2 [--response real_response.json]

``--response`` (or $REMI_NOOP_RESPONSE) takes a captured real /recommend answer to replay
byte for byte; without it a synthetic one of the same shape is generated. GET /readyz answers
200 so the benchmark can wait for it like for the real service.
"""

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from service.schemas import RecommendRequest

APP_FACTORY = "benchmarks.noop_app:create_app"


def synthetic_response(k: int = 50, seed: int = 0) -> dict[str, Any]:
    """A /recommend answer with k items, shaped like the benchmark's synthetic catalogue."""
    rng = random.Random(seed)
    scores = sorted((rng.uniform(1.0, 3.0) for _ in range(k)), reverse=True)
    return {
        "user_id": "u0004242",
        "items": [
            {"item_id": f"i{rng.randrange(100_000):06d}", "score": score, "interest": rng.randrange(4)}
            for score in scores
        ],
        "model_version": "0123456789abcdef",
        "index_version": "20250101T000000000000Z-01234567-hnsw",
        "history_len": 20,
        "unknown_items": 0,
        "fallback": None,
        "took_ms": 1.234,
    }


def response_body(path: str | Path | None = None) -> bytes:
    """The bytes to replay: a captured answer as it is, or the synthetic one encoded compactly."""
    if path:
        raw = Path(path).read_bytes()
        json.loads(raw)  # fail at start, not per request, on a bad file
        return raw
    # Starlette's JSONResponse encoding
    return json.dumps(synthetic_response(), allow_nan=False, separators=(",", ":")).encode()


def create_app() -> FastAPI:
    """App factory (uvicorn --factory), as service.app.create_app."""
    body = response_body(os.environ.get("REMI_NOOP_RESPONSE") or None)
    app = FastAPI(title="remi-match no-op baseline")

    @app.post("/recommend")
    async def recommend(request: RecommendRequest) -> Response:
        return Response(body, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="bind address")
    ap.add_argument("--port", type=int, default=8001, help="port")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--response", default=None, help="JSON file with a real /recommend answer to replay")
    ap.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = ap.parse_args()
    if args.response:
        os.environ["REMI_NOOP_RESPONSE"] = str(Path(args.response).resolve())  # every worker reads it
    if args.workers > 1:  # the service's own supervisor, running this app instead
        from service.workers import serve_workers

        serve_workers(args.workers, args.host, args.port, args.log_level, access_log=False, factory=APP_FACTORY)
        return
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()

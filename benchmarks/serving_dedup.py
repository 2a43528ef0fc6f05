"""Interest dedup on a trained model: overlap of the merged top-k with searching all K, by threshold.

    python -m benchmarks.serving_dedup --artifacts RUN_EXPORT [--users 1000] [--k 50]

On the model's own interest vectors (the ONNX tower on the held-out histories shipped with the
artifacts), with exact search so only the dedup is measured: for each cosine threshold and
minimum weight, the share of the all-K merged top-k that the leader-only search (re-scored
against every interest, retrieval/dedup.py) keeps, and how many interests per user were searched.
The service default (``interest_dedup_cosine``) is the lowest threshold whose mean overlap is
>= --min-overlap. Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import parser, save_results

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0)
MIN_WEIGHTS = (0.0, 0.05, 0.1, 0.15)


def interest_data(artifacts: Path, users: int) -> tuple[Any, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The artifacts, (U, K, d) interests, (U, K) routing weights and each user's history (item indices)."""
    from remi.artifacts import load_artifacts
    from retrieval.merge import interest_weights

    arts = load_artifacts(artifacts)
    history, mask = arts.sample_history[:users], arts.sample_mask[:users]
    vectors, routing = arts.tower.run(history, mask)
    weights = interest_weights(routing, mask)
    return arts, vectors, weights, [h[m] for h, m in zip(history, mask, strict=True)]


def overlap_table(
    item_vectors: np.ndarray, vectors: np.ndarray, weights: np.ndarray, seen: list[np.ndarray], k: int
) -> list[dict[str, Any]]:
    """One row per (threshold, min weight): mean / p5 overlap with all-K and interests searched per user."""
    from retrieval.dedup import leaders, rescore
    from retrieval.merge import merge_by_score, merge_flat
    from retrieval.search import exact_index, search_excluding

    index = exact_index(item_vectors)
    u, n_interests, _ = vectors.shape
    ids, scores = search_excluding(index, vectors, k, seen)
    full, _, _ = merge_by_score(ids, scores, k)
    rows = []
    for min_weight in MIN_WEIGHTS:
        for threshold in THRESHOLDS:
            lead = leaders(vectors, weights, threshold, min_weight)
            pool = np.where(lead[..., None], ids, -1).reshape(u, -1)
            pool_scores, who = rescore(np.where(pool >= 0, pool - 1, -1), item_vectors, vectors)
            got, _, _ = merge_flat(pool, pool_scores, who, k)
            overlap = np.array([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, (a >= 0).sum())
                                for a, b in zip(full, got, strict=True)])  # fmt: skip
            rows.append(
                {
                    "cosine": threshold,
                    "min_weight": min_weight,
                    "overlap_mean": round(float(overlap.mean()), 4),
                    "overlap_p5": round(float(np.percentile(overlap, 5)), 4),
                    "searched_per_user": round(float(lead.sum(1).mean()), 3),
                    "of": n_interests,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def pairwise_cosine(vectors: np.ndarray) -> float:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    cos = np.einsum("ukd,ujd->ukj", unit, unit)
    k = vectors.shape[1]
    off = ~np.eye(k, dtype=bool)
    return float(cos[:, off].mean())


def choose(rows: list[dict[str, Any]], min_overlap: float) -> dict[str, Any]:
    """The cheapest setting (fewest interests searched) whose mean overlap reaches ``min_overlap``."""
    ok = [r for r in rows if r["overlap_mean"] >= min_overlap]
    return min(ok, key=lambda r: (r["searched_per_user"], -r["overlap_mean"]))


def main() -> None:
    ap = parser(__doc__, "serving_dedup")
    ap.add_argument("--artifacts", type=Path, required=True, help="exported artifact folder of a trained model")
    ap.add_argument("--users", type=int, default=1000, help="held-out users whose interests are measured")
    ap.add_argument("--k", type=int, default=50, help="merged list length")
    ap.add_argument("--min-overlap", type=float, default=0.98, help="overlap the chosen default must keep")
    args = ap.parse_args()
    arts, vectors, weights, seen = interest_data(args.artifacts, args.users)
    rows = overlap_table(arts.item_vectors, vectors, weights, seen, args.k)
    best = choose(rows, args.min_overlap)
    result = {
        "artifacts": str(args.artifacts),
        "model_version": arts.model_version,
        "n_items": arts.manifest.n_items,
        "interests": arts.manifest.interests,
        "users": len(seen),
        "k": args.k,
        "mean_pairwise_cosine": round(pairwise_cosine(vectors), 4),
        "min_overlap": args.min_overlap,
        "chosen": best,
        "rows": rows,
    }
    lines = [
        "# Interest dedup: overlap with searching all K (`python -m benchmarks.serving_dedup`)",
        "",
        f"Model {arts.model_version} ({args.artifacts}), {arts.manifest.n_items:,} items, K = "
        f"{arts.manifest.interests}; {len(seen)} held-out users, k = {args.k}, exact search. Mean pairwise "
        f"cosine of a user's interests: {result['mean_pairwise_cosine']}.",
        "",
        "`overlap` = share of the all-K merged top-k kept by searching leaders only (re-scored against all K).",
        "",
        "| cosine | min weight | overlap mean | overlap p5 | interests searched / user |",
        "|---|---|---|---|---|",
        *(
            f"| {r['cosine']} | {r['min_weight']} | {r['overlap_mean']:.4f} | {r['overlap_p5']:.4f} | "
            f"{r['searched_per_user']:.2f} of {r['of']} |"
            for r in rows
        ),
        "",
        f"Cheapest setting with mean overlap >= {args.min_overlap}: cosine {best['cosine']}, min weight "
        f"{best['min_weight']} ({best['searched_per_user']:.2f} of {best['of']} interests searched, overlap "
        f"{best['overlap_mean']:.4f}).",
        "",
    ]
    save_results(args.results, args.name, result, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Interests that stay distinct (docs/remi.md#a11-interests-that-stay-distinct): how much of remi's
Recall@50 gain survives when a user's K interests are kept apart?

With the tuned RR, ComiRec-SA's interests of a user become near-copies (mean pairwise cosine
~0.93): RR's minimum is a uniform routing row, the same row for every interest. This benchmark
trains, on one dataset with the same split, seed and step budget, `sampled`, `remi` with
configs/default.json, `remi` with the tuned configs/<dataset>.json, and the tuned `remi` with each
option of docs/remi.md A.11 at a few strengths:

- `rr_scope = mean`: RR on the interests' average routing row (the history as a whole must be
  used, each interest may draw on part of it);
- `interest_div`: penalty on the positive pairwise cosine of a user's interests (above
  `interest_div_margin`), through the item table too or (`interest_div_grad = tower`) the tower only;
- both together;
- fewer interests (K = 2) for every user, alone and with the tower-only penalty;
- the tower-only penalty with RR four times stronger (more spread per interest);
- a shared interest (`shared_interest`): interest 0 is the history mean, RR's fixed point, and the
  other K-1 are left free (no RR), pushed apart by the tower-only penalty, or under RR.

Reports test Recall@50, the share of tuned remi's gain over `sampled` kept, the routing
diagnostics (interest similarity: mean pairwise cosine of a user's interests) and the list
metrics (coverage@50, diversity@50, top interest share), and plots interest similarity against
test Recall@50, one series per option. The goal: >= 95% of the gain kept at similarity <= 0.6.

    python -m studies.interest_distinct --dataset amazon_beauty --steps 8000

Writes studies/results/interest_distinct_<dataset>_<steps>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import SHARED_DATA, md_table  # noqa: E402
from studies.report import LIST_KEYS, project_path  # noqa: E402
from studies.runner import Job, run_all, run_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "results"
CONFIGS = ROOT / "configs"
GAIN_KEPT_GOAL, SIMILARITY_GOAL = 0.95, 0.6


def series(dataset: str, tuned_configs: Path = CONFIGS) -> dict[str, dict[str, dict[str, Any]]]:
    """Series label -> point label -> `remi train` flags. Options start from the tuned config."""
    tuned = {"config": tuned_configs / f"{dataset}.json", "scheme": "remi"}
    tower = {**tuned, "interest_div_grad": "tower"}
    lam = json.loads((tuned_configs / f"{dataset}.json").read_text())["train"]["lam"]
    return {
        "reference": {
            "sampled": {"scheme": "sampled"},
            "remi default": {"config": CONFIGS / "default.json", "scheme": "remi"},
            "remi tuned": tuned,
        },
        "rr_scope=mean": {
            "mean": {**tuned, "rr_scope": "mean"},
            "mean lam x4": {**tuned, "rr_scope": "mean", "lam": 4 * lam},
        },
        "interest_div": {f"div={w:g}": {**tuned, "interest_div": w} for w in (0.3, 1.0, 3.0, 10.0)},
        "interest_div, tower only": {f"tower div={w:g}": {**tower, "interest_div": w} for w in (1.0, 3.0, 10.0)},
        "interest_div, tower only, margin 0.5": {
            f"tower div={w:g} m=0.5": {**tower, "interest_div": w, "interest_div_margin": 0.5} for w in (10.0, 30.0)
        },
        "K=2": {
            "K=2 remi tuned": {**tuned, "interests": 2},
            **{f"K=2 tower div={w:g}": {**tower, "interests": 2, "interest_div": w} for w in (0.3, 0.5, 0.7, 1.0, 3.0)},
            "K=2 tower div=10 m=0.6": {**tower, "interests": 2, "interest_div": 10.0, "interest_div_margin": 0.6},
            "K=2 tower div=30 m=0.5": {**tower, "interests": 2, "interest_div": 30.0, "interest_div_margin": 0.5},
        },
        "interest_div, tower only, 4x lambda": {
            "tower div=3 lam x4": {**tower, "interest_div": 3.0, "lam": 4 * lam},
            "K=2 tower div=1 lam x4": {**tower, "interests": 2, "interest_div": 1.0, "lam": 4 * lam},
        },
        "interest_div, margin 0.5": {
            "div=10 m=0.5": {**tuned, "interest_div": 10.0, "interest_div_margin": 0.5},
        },
        "rr_scope=mean + interest_div": {
            f"mean div={w:g}": {**tuned, "rr_scope": "mean", "interest_div": w} for w in (1.0, 3.0)
        },
        "shared interest": {
            "shared": {**tuned, "shared_interest": True},
            "shared lam 0": {**tuned, "shared_interest": True, "lam": 0.0},
            **{
                f"shared lam 0 tower div={w:g}": {**tower, "shared_interest": True, "lam": 0.0, "interest_div": w}
                for w in (0.3, 1.0)
            },
            "shared tower div=3": {**tower, "shared_interest": True, "interest_div": 3.0},
        },
    }


def anatomy(run_dir: Path) -> dict[str, float]:
    """Where a ComiRec-SA run's interest copies come from, on its test users.

    Interest similarity by history length (can short histories hold K distinct interests at all?),
    the cosine between a user's routing rows (do the interests read the same items?), the spread of
    the attention logits over the valid positions (flat logits = uniform rows = the history mean
    for every interest), and the cosine between W2's interest rows.
    """
    import numpy as np
    import torch

    from training.evaluate import user_interest_vectors
    from training.prepare import prepare
    from training.runs import load_run

    cfg, loaded = load_run(run_dir)
    model: Any = loaded  # ComiRec-SA: its own layers (embed, w1, w2, pos) are not on the base class's type
    test = prepare(cfg).test
    vectors, routing = user_interest_vectors(model, test.history, test.mask)
    n = test.mask.sum(-1)
    k = vectors.shape[1]

    def pair_cos(x: np.ndarray) -> np.ndarray:  # (U, J, D) -> (U,) mean pairwise cosine
        unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        i, j = np.triu_indices(x.shape[1], 1)
        similarity: np.ndarray = (unit @ unit.transpose(0, 2, 1))[:, i, j].mean(-1)
        return similarity

    sim, rows = pair_cos(vectors.astype(np.float64)), pair_cos(routing.astype(np.float64))
    out: dict[str, float] = {}
    for label, lo, hi in (("n<=4", 2, 4), ("n=5-8", 5, 8), ("n=9-14", 9, 14), ("n>=15", 15, 10**9)):
        keep = (n >= lo) & (n <= hi)
        out[f"similarity {label}"] = float(sim[keep].mean()) if keep.any() else float("nan")
        out[f"users {label}"] = float(keep.mean())
    # option (c) of docs/remi.md A.11 (fewer interests for short histories) without retraining: K(n)
    # = min(K, n // per) interests for a user with n history items; the similarity of the interests
    # that remain (users left with >= 2 of them)
    for per in (2, 4):
        kept = np.minimum(k, n // per)
        pairs = [pair_cos(vectors[kept == j, :j].astype(np.float64)) for j in range(2, k + 1) if (kept == j).any()]
        out[f"similarity K=n//{per}"] = float(np.concatenate(pairs).mean()) if pairs else float("nan")
    keep = n >= 2
    out["routing row cosine"] = float(rows[keep].mean())
    with torch.no_grad():
        h = model.embed(torch.from_numpy(test.history), torch.from_numpy(test.mask))
        logits = model.w2(torch.tanh(model.w1(h + model.pos))).transpose(1, 2).numpy()  # (U, K, L)
        w2 = model.w2.weight.numpy()
    m = test.mask[:, None, :]
    mean = (logits * m).sum(-1, keepdims=True) / np.maximum(m.sum(-1, keepdims=True), 1)
    spread = np.sqrt((((logits - mean) ** 2) * m).sum(-1) / np.maximum(m.sum(-1), 1))  # (U, K)
    out["logit spread"] = float(spread[keep].mean())
    out["W2 row cosine"] = float(pair_cos(w2[None].astype(np.float64))[0])
    out["W2 row norm"] = float(np.linalg.norm(w2, axis=-1).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--steps", type=int, default=8000, help="step budget of every run")
    ap.add_argument("--seed", type=int, default=2021, help="training seed")
    ap.add_argument("--points", nargs="+", help="only these point labels (default: all)")
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "interest_distinct", help="where run folders go")
    ap.add_argument("--anatomy", action="store_true", help="also diagnose where each run's copies come from")
    ap.add_argument("--tuned-configs", type=Path, default=CONFIGS,
                    help="folder of the tuned <dataset>.json the options start from (the tables so far: "
                         "studies/results/tune/v1)")  # fmt: skip
    ap.add_argument("--merge", type=Path,
                    help="earlier results JSON (same dataset, budget): points not rerun join the report")  # fmt: skip
    args = ap.parse_args()

    data = SHARED_DATA / args.dataset
    base: dict[str, Any] = {"data": data / "interactions.csv.gz", "max_steps": args.steps, "seed": args.seed}
    if (data / "split.csv.gz").is_file():
        base["split_file"] = data / "split.csv.gz"
    jobs = [
        Job(
            f"{args.dataset}_{point}_s{args.seed}_{args.steps}",
            {**base, **flags},
            {"series": name, "point": point},
        )
        for name, points in series(args.dataset, args.tuned_configs).items()
        for point, flags in points.items()
        if not args.points or point in args.points
    ]
    results = [r for r in run_all(jobs, args.runs, args.parallel) if "result" in r]
    if args.anatomy:
        for r in results:
            r["anatomy"] = anatomy(run_folder(args.runs, r["name"]))
    if args.merge:
        results = merged(json.loads(args.merge.read_text()), results)
    report(results, args)


def merged(earlier: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier results whose point was not run now, then the new ones (a rerun point wins)."""
    fresh = {r["tags"]["point"] for r in now}
    return [r for r in earlier if r["tags"]["point"] not in fresh] + now


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    by_point = {r["tags"]["point"]: r["result"] for r in results}
    base = by_point.get("sampled", {}).get("test", {}).get("recall@50", float("nan"))
    top = by_point.get("remi tuned", {}).get("test", {}).get("recall@50", float("nan"))
    rows, points = [], []
    for r in results:
        res = r["result"]
        recall, similarity = res["test"]["recall@50"], res["routing"]["interest_similarity"]
        kept = (recall - base) / (top - base) if top != base else float("nan")
        meets = kept >= GAIN_KEPT_GOAL and similarity <= SIMILARITY_GOAL
        points.append({"series": r["tags"]["series"], "point": r["tags"]["point"], "x": similarity, "y": recall})
        rows.append(
            [
                r["tags"]["series"],
                r["tags"]["point"],
                recall,
                kept,
                res["valid"]["recall@50"],
                similarity,
                res["routing"]["effective_items"],
                *[res["lists"][k] for k in LIST_KEYS],
                res["best_step"],
                "yes" if meets else "no",
            ]
        )
    headers = ["series", "point", "test recall@50", "gain kept", "valid recall@50", "interest similarity"]
    headers += ["effective items", *LIST_KEYS, "best step", "meets goal"]
    stem = f"interest_distinct_{args.dataset}_{args.steps}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    text = (
        f"# Interests that stay distinct ({args.dataset}, {args.steps} steps, seed {args.seed}, ComiRec-SA)\n\n"
        "Options of docs/remi.md A.11 on top of the tuned "
        f"`{project_path(args.tuned_configs / (args.dataset + '.json'))}`. "
        "Gain kept = (R@50 - sampled) / (tuned remi - sampled), test users; "
        f"goal: >= {GAIN_KEPT_GOAL:.0%} kept at interest similarity <= {SIMILARITY_GOAL} "
        "(mean pairwise cosine of a user's interests, test users).\n\n" + md_table(headers, rows)
    )
    diagnosed = [r for r in results if "anatomy" in r]
    if diagnosed:
        keys = list(diagnosed[0]["anatomy"])
        text += (
            "\nWhere the copies come from (test users): interest similarity and share of users by history "
            "length n; the same if each user kept only min(K, n // 2) or min(K, n // 4) interests (option (c), "
            "not retrained; users left with one interest drop out); cosine between a user's routing rows; spread "
            "(std) of the attention logits over the valid positions; cosine and norm of W2's interest rows.\n\n"
            + md_table(["point", *keys], [[r["tags"]["point"], *[r["anatomy"][k] for k in keys]] for r in diagnosed])
        )
    (RESULTS / f"{stem}.md").write_text(text)
    names = list(series(args.dataset, args.tuned_configs))
    plot(points, names, base, top, RESULTS / f"{stem}.png", f"{args.dataset}, {args.steps} steps, seed {args.seed}")
    print(text)


def plot(points: list[dict[str, Any]], names: list[str], base: float, top: float, path: Path, title: str) -> None:
    """Interest similarity (x) against test Recall@50 (y), one series per option (same style in every plot)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors, markers = plt.get_cmap("tab10"), "os^Dv<>Ph"  # colors(i): the i-th of its 10 colours
    for name in dict.fromkeys(p["series"] for p in points):
        style = names.index(name) if name in names else len(names)
        group = sorted((p for p in points if p["series"] == name), key=lambda p: p["x"])
        if name == "reference":
            for p in group:
                ax.scatter(p["x"], p["y"], marker="*", s=160, zorder=3, color="black")
                ax.annotate(p["point"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
            continue
        ax.plot(
            [p["x"] for p in group],
            [p["y"] for p in group],
            marker=markers[style % len(markers)],
            color=colors(style % colors.N),
            label=name,
        )
        for p in group:
            ax.annotate(p["point"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, -10), fontsize=7)
    goal = base + GAIN_KEPT_GOAL * (top - base)
    ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label=f"{GAIN_KEPT_GOAL:.0%} of tuned remi's gain")
    ax.axvline(SIMILARITY_GOAL, color="grey", linestyle=":", linewidth=1, label=f"similarity {SIMILARITY_GOAL}")
    ax.set_xlabel("interest similarity (mean pairwise cosine, test users)")
    ax.set_ylabel("test Recall@50")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

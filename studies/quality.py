"""Quality study: `sampled` vs `remi` on the shared datasets, same split, seeds and budget.

For each dataset, model, scheme and seed it runs ``remi train`` (resuming finished runs), then
reports the mean and spread over seeds of the test metrics of the best-valid checkpoint, the
routing diagnostics, the list metrics (coverage@50, diversity@50, top interest share) and seconds
per 1,000 steps. ``remi`` uses ``configs/<dataset>.json`` when it exists (settings chosen by
``remi tune`` on the valid users), else ``configs/default.json``.

    python -m studies.quality --datasets amazon_beauty --seeds 2021 2022 2023

Writes studies/results/<name>.json, .md and .png (valid Recall@50 curves); --name defaults to quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import SHARED_DATA, md_table  # noqa: E402
from remi.contract import RUN_METRICS  # noqa: E402
from studies.report import LIST_KEYS, ROUTING_KEYS, TEST_KEYS, list_metric, project_path  # noqa: E402
from studies.runner import Job, run_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "results"
CONFIGS = ROOT / "configs"
DATASETS = ("amazon_beauty", "yelp_2019", "movielens_100k", "gowalla_1k")
# amazon_beauty gets the reference budget (the authors' sampled run peaked at 97k steps); the others
# a shorter one that fits the 2-core machine (their curves peak well before it).
DEFAULT_STEPS = {"amazon_beauty": 100_000}
OTHER_STEPS = 20_000
# names for backbone settings the table compares beside the plain backbones (the model tag = the name)
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "comirec-sa-tf": {"model": "comirec-sa", "encoder_blocks": 2},  # two self-attention blocks under the heads
    # the same blocks made causal and trained on every prefix's next item (SASRec's objective, K interests)
    "comirec-sa-causal": {"model": "comirec-sa", "encoder_blocks": 2, "seq_targets": "all"},
    "comirec-sa-adaptive": {"model": "comirec-sa", "adaptive_interests": "log2"},  # as many interests as the user has
    # the causal encoder with as many interests as the user has: MIND's log2 rule, and base 3 (fewer)
    **{
        f"comirec-sa-causal-{rule}": {
            "model": "comirec-sa",
            "encoder_blocks": 2,
            "seq_targets": "all",
            "adaptive_interests": rule,
        }
        for rule in ("log2", "log3")
    },
    "sasrec-last": {"model": "sasrec", "seq_targets": "last"},  # SASRec scored on the newest position only
}


def scheme_settings(dataset: str, scheme: str, tuned: Path = CONFIGS) -> dict[str, Any]:
    """Flags of a scheme: `sampled` has none; `remi` reads the tuned config of the dataset (from
    ``tuned``: configs/, or an earlier search's folder such as studies/results/tune/v1);
    `remi-default` the shipped default for unseen data, with the scheme it names for the backbone
    (remi; ihn for sasrec, which has no routing for RR)."""
    if scheme == "sampled":
        return {"scheme": "sampled"}
    path = tuned / f"{dataset}.json"
    if scheme == "remi-default":
        return {"config": CONFIGS / "default.json"}
    if not path.is_file():
        path = CONFIGS / "default.json"
    return {"config": path, "scheme": "remi"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), help="folders of ../shared/data")
    ap.add_argument(
        "--models",
        nargs="+",
        default=["comirec-sa"],
        help=f"backbones to compare: remi train's --model names, or {', '.join(MODEL_VARIANTS)} (MODEL_VARIANTS)",
    )
    ap.add_argument("--schemes", nargs="+", default=["sampled", "remi"], help="schemes to compare")
    ap.add_argument("--seeds", nargs="+", type=int, default=[2021, 2022, 2023], help="training seeds")
    ap.add_argument("--steps", type=int, help="step budget for every dataset (default: 100k amazon_beauty, 20k others)")
    ap.add_argument("--patience", type=int, default=20, help="evaluations without improvement before stopping")
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality", help="where run folders go")
    ap.add_argument("--name", default="quality", help="results file stem (studies/results/<name>.{json,md,png})")
    ap.add_argument(
        "--tuned-configs",
        type=Path,
        default=CONFIGS,
        help="folder of the <dataset>.json files `remi` trains with (studies/results/tune/v1: the configs "
        "searched before emb_l2 and the schedule, behind the earlier `remi` rows)",
    )
    ap.add_argument("--report-only", action="store_true", help="report the finished runs, start none")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="earlier results files (<name>.json) whose runs join this report: seeds trained on another "
        "machine or session; their runs are not trained again (a run of the same name trained here replaces "
        "the merged one)",
    )
    args = ap.parse_args()

    jobs = []
    for ds in args.datasets:
        data = SHARED_DATA / ds
        steps = args.steps or DEFAULT_STEPS.get(ds, OTHER_STEPS)
        base = {"data": data / "interactions.csv.gz", "max_steps": steps, "patience": args.patience}
        if (data / "split.csv.gz").is_file():
            base["split_file"] = data / "split.csv.gz"
        for model in args.models:
            for scheme in args.schemes:
                for seed in args.seeds:
                    backbone = MODEL_VARIANTS.get(model, {"model": model})
                    flags = {**base, **scheme_settings(ds, scheme, args.tuned_configs), **backbone, "seed": seed}
                    tags = {"dataset": ds, "model": model, "scheme": scheme, "seed": seed}
                    # runs with another folder's tuned configs are other runs: never resumed as these
                    label = (
                        scheme
                        if scheme != "remi" or args.tuned_configs == CONFIGS
                        else f"remi-{args.tuned_configs.name}"
                    )
                    jobs.append(Job(f"{ds}_{model}_{label}_s{seed}_{steps}", flags, tags | {"steps": steps}))
    if args.report_only:
        jobs = [j for j in jobs if (args.runs / j.name / RUN_METRICS).is_file()]
    jobs = still_to_run(jobs, args.runs, args.merge)
    results = [r for r in run_all(jobs, args.runs, args.parallel) if "result" in r]
    report(merged(results, args.merge, args), args)


def still_to_run(jobs: list[Job], runs: Path, earlier: list[Path]) -> list[Job]:
    """The jobs minus the finished runs that earlier results files hold: a session's finished runs
    are committed as its results file and the next one resumes from there. A run whose folder is
    here stays (it is reported from the folder, which replaces the merged one)."""
    done = {r["name"] for path in earlier for r in json.loads(path.read_text())["runs"] if "result" in r}
    return [j for j in jobs if j.name not in done or (runs / j.name / RUN_METRICS).is_file()]


def merged(results: list[dict[str, Any]], earlier: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """This run's results plus the runs of earlier results files, one per run name (this run's
    first), in the order of the flags (dataset, model, scheme, seed)."""
    names = {r["name"] for r in results}
    out = list(results)
    for path in earlier:
        for r in json.loads(path.read_text())["runs"]:
            if r["name"] not in names and "result" in r:
                names.add(r["name"])
                out.append(r)
    order = {"dataset": args.datasets, "model": args.models, "scheme": args.schemes + ["remi-default"]}

    def key(r: dict[str, Any]) -> tuple[int, int, int, int]:
        t = r["tags"]
        where = [order[f].index(t[f]) if t[f] in order[f] else len(order[f]) for f in ("dataset", "model", "scheme")]
        return (where[0], where[1], where[2], int(t["seed"]))

    return sorted(out, key=key)


def _group(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        t = r["tags"]
        groups.setdefault((t["dataset"], t["model"], t["scheme"]), []).append(r)
    return groups


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    groups = _group(results)
    sampled = {(ds, model): mean(r["result"]["test"]["recall@50"] for r in runs)
               for (ds, model, scheme), runs in groups.items() if scheme == "sampled"}  # fmt: skip
    rows, summary = [], []
    for (ds, model, scheme), runs in groups.items():
        test = {k: [r["result"]["test"][k] for r in runs] for k in TEST_KEYS}
        routing = {k: mean(r["result"]["routing"][k] for r in runs) for k in ROUTING_KEYS}
        lists = {k: mean(list_metric(r["result"], k) for r in runs) for k in LIST_KEYS}
        s_per_1k = mean(r["result"]["seconds_per_1k_steps"] for r in runs)
        best_steps = [r["result"]["best_step"] for r in runs]
        summary.append(
            {
                "dataset": ds,
                "model": model,
                "scheme": scheme,
                "seeds": [r["tags"]["seed"] for r in runs],
                "test_mean": {k: mean(v) for k, v in test.items()},
                "test_std": {k: pstdev(v) for k, v in test.items()},
                "routing": routing,
                "lists": lists,
                "best_steps": best_steps,
                "seconds_per_1k_steps": s_per_1k,
                "popularity_test_recall@50": runs[0]["result"]["popularity_test"]["recall@50"],
            }
        )
        rows.append(
            [
                ds,
                model,
                scheme,
                len(runs),
                *[f"{mean(v):.4f} ± {pstdev(v):.4f}" for v in test.values()],
                *[routing[k] for k in ROUTING_KEYS],
                *[lists[k] for k in LIST_KEYS],
                _gain(mean(test["recall@50"]), sampled.get((ds, model)), scheme),
                f"{mean(best_steps):.0f}",
                s_per_1k,
            ]
        )
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1, default=str))
    headers = [
        "dataset",
        "model",
        "scheme",
        "seeds",
        *[f"test {k}" for k in TEST_KEYS],
        *ROUTING_KEYS,
        "coverage@50",
        "diversity@50",
        "top interest share@50",
        "R@50 vs sampled",
        "best step (mean)",
        "s / 1k steps",
    ]
    budgets = ", ".join(sorted({f"{r['tags']['dataset']} {r['result']['config']['max_steps']}" for r in results}))
    text = (
        f"# Quality: sampled vs remi (step budgets: {budgets}; patience {args.patience} evaluations)\n\n"
        "Mean ± population std over seeds of the test metrics of the best-valid-Recall@50 checkpoint; "
        "routing diagnostics on test users (interest_similarity: mean cosine of a user's K interests); "
        "coverage@50 (distinct items in the test users' top-50 lists / catalogue), diversity@50 (mean "
        "pairwise cosine distance of a list's item embeddings) and the share of a list supplied by the user's "
        "most productive interest (1 = one interest supplies all, 1/K = even; docs/remi.md A.5); seconds "
        "per 1,000 training steps with 1 torch thread per run and two or three runs side by side on the "
        "2-core machine (so only comparable within a dataset). "
        f"`remi` uses the tuned `{project_path(args.tuned_configs)}/<dataset>.json`, `remi-default` the shipped "
        "`configs/default.json`.\n\n" + md_table(headers, rows)
    )
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(groups, RESULTS / f"{args.name}.png")
    print(text)


def _gain(value: float, sampled: float | None, scheme: str) -> str:
    """Test Recall@50 relative to the same backbone's `sampled` run on the same dataset."""
    if scheme == "sampled" or not sampled:
        return ""
    return f"{100 * (value / sampled - 1):+.1f}%"


MODEL_COLOURS = {
    "comirec-sa": "C3",
    "comirec-dr": "C0",
    "mind": "C2",
    "dnn": "C7",
    "sasrec": "C1",
    "comirec-sa-tf": "C4",
}
SCHEME_LINES = {"sampled": ":", "remi": "-", "remi-default": "--"}


def plot(groups: dict[tuple[str, str, str], list[dict[str, Any]]], path: Path) -> None:
    datasets = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for (d, model, scheme), runs in sorted(groups.items()):
            if d != ds:
                continue
            for i, r in enumerate(runs):
                steps, values = zip(*r["curve"], strict=True)
                # colour = backbone, line = scheme, so several backbones stay readable on one panel
                ax.plot(
                    steps,
                    values,
                    color=MODEL_COLOURS.get(model, "C7"),
                    alpha=0.8,
                    linewidth=1.2,
                    label=f"{model} {scheme}" if i == 0 else None,
                    linestyle=SCHEME_LINES.get(scheme, "-."),
                )
        ax.set_title(ds)
        ax.set_xlabel("training step")
        ax.set_ylabel("valid Recall@50")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Markdown tables and curve plots for benchmark results."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TEST_KEYS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50")
ROUTING_KEYS = ("effective_items", "collapsed_share", "interest_similarity")
# what the test users' top-50 lists look like (docs/remi.md A.5): catalogue coverage, intra-list
# diversity and the share of the list supplied by the user's most productive interest
LIST_KEYS = ("coverage@50", "diversity@50", "interest_share_1@50")


PROJECT = Path(__file__).resolve().parents[1]


def project_path(path: Path) -> str:
    """A path as a report names it: relative to the project when inside it."""
    return str(path.resolve().relative_to(PROJECT)) if path.resolve().is_relative_to(PROJECT) else str(path)


def list_metric(result: dict[str, Any], key: str) -> float:
    """A list metric of a run's metrics.json; NaN for runs from before issue 12 §4 (no "lists")."""
    return float(result.get("lists", {}).get(key, float("nan")))


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ncols: int = 1) -> None:
    """Valid Recall@50 over training steps, one line per label."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, (label, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(
                steps,
                values,
                label=label,
                linewidth=1.4,
                color=colors[(2 * i) % 20 + (i // 10)],
                linestyle="-" if i % 2 == 0 else "--",
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("valid Recall@50")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=ncols)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_results(folder: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<name>.json`` (the raw result) and ``<name>.md`` (the table) under ``folder``, and the table printed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)


def run_and_save(
    ap: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> None:
    """A benchmark's main: parse the flags, run it, save ``--results``/``--name`` with its report."""
    args = ap.parse_args(argv)
    result = run(args)
    save_results(args.results, args.name, result, report(result))

"""What the quality studies report of a run: the test, routing and list metrics they table, and the
valid Recall@50 curves they plot (tables and result files: benchmarks/harness.py)."""

from __future__ import annotations

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
    """A list metric of a run's metrics.json; NaN for runs from before the list metrics
    (docs/remi.md#a5-routing-collapse-diagnostics; no "lists")."""
    return float(result.get("lists", {}).get(key, float("nan")))


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ncols: int = 1) -> None:
    """Valid Recall@50 over training steps, one line per label."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20")  # colors(i): the i-th of its 20 colours
    for i, (label, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(
                steps,
                values,
                label=label,
                linewidth=1.4,
                color=colors((2 * i) % 20 + (i // 10)),
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

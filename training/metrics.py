"""Ranking metrics and routing-collapse diagnostics (REMI.md A.4, A.5). Pure numpy."""

from __future__ import annotations

import numpy as np


def ranking_metrics(
    recommended: np.ndarray, truth: list[np.ndarray], ns: tuple[int, ...] = (20, 50)
) -> dict[str, float]:
    """Recall, NDCG and HitRate at each N, averaged over users (users with 0 hits included).

    Recall@N = |R ∩ T| / |T| with |T| counting duplicate ground-truth events (the ComiRec
    definition, so numbers compare with the reference scripts); hits count distinct
    recommended items. HitRate@N = 1[any hit]. NDCG@N is computed on the ranked list,
    DCG = sum over ranks r with R[r] in T of 1/log2(r + 2), and IDCG over min(|distinct T|, N)
    ranks: a ranked list holds each item once, so a perfect list scores exactly 1.

    Args:
        recommended: (U, >= max(ns)) item ids in rank order; -1 marks an empty slot.
        truth: U arrays of ground-truth item ids.
    """
    n_max = max(ns)
    if recommended.shape[1] < n_max:
        raise ValueError(f"need at least {n_max} recommendations per user, got {recommended.shape[1]}")
    discounts = 1.0 / np.log2(np.arange(n_max) + 2.0)
    ideal = np.concatenate(([0.0], np.cumsum(discounts)))
    sums = {f"{m}@{n}": 0.0 for n in ns for m in ("recall", "ndcg", "hr")}
    for rec, t in zip(recommended[:, :n_max], truth, strict=True):
        hit = np.isin(rec, t) & (rec >= 0)
        n_truth, n_distinct = len(t), len(np.unique(t))
        for n in ns:
            h = hit[:n]
            n_hits = int(h.sum())
            sums[f"recall@{n}"] += n_hits / n_truth
            sums[f"hr@{n}"] += float(n_hits > 0)
            if n_hits:
                sums[f"ndcg@{n}"] += float(discounts[:n][h].sum() / ideal[min(n_distinct, n)])
    users = max(len(truth), 1)
    return {k: v / users for k, v in sums.items()}


def routing_diagnostics(
    routing: np.ndarray, mask: np.ndarray, interests: np.ndarray, collapse_at: float = 0.9
) -> dict[str, float]:
    """How collapsed the routing is and how distinct the interests are.

    effective_items: mean over users and interests of exp(entropy of the routing row), the
        number of history items an interest effectively draws on (1 = collapsed onto one).
    effective_share: the same divided by the user's history length (1 = uniform).
    collapsed_share: share of interests whose largest routing weight exceeds ``collapse_at``.
    interest_similarity: mean pairwise cosine similarity of a user's K interests (1 = copies).

    Only users with at least 2 history items count (one item is trivially "collapsed").

    Args:
        routing: (U, K, L) rows summing to 1 over valid positions; mask: (U, L); interests: (U, K, d).
    """
    n = mask.sum(-1)
    keep = n >= 2
    out = {
        "effective_items": float("nan"),
        "effective_share": float("nan"),
        "collapsed_share": float("nan"),
        "interest_similarity": float("nan"),
    }
    if not keep.any():
        return out
    a = routing[keep].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(a > 0, a * np.log(a), 0.0).sum(-1)  # (U, K)
    eff = np.exp(ent)
    out["effective_items"] = float(eff.mean())
    out["effective_share"] = float((eff / n[keep][:, None]).mean())
    out["collapsed_share"] = float((a.max(-1) > collapse_at).mean())
    v = interests[keep].astype(np.float64)
    k = v.shape[1]
    if k > 1:
        unit = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        cos = unit @ unit.transpose(0, 2, 1)
        iu = np.triu_indices(k, 1)
        out["interest_similarity"] = float(cos[:, iu[0], iu[1]].mean())
    else:
        out["interest_similarity"] = 1.0
    return out

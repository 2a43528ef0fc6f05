"""Routing-collapse diagnostics (docs/remi.md A.5): how many history items each interest draws on,
and how distinct a user's interests are. Pure numpy."""

from __future__ import annotations

import numpy as np


def routing_diagnostics(
    routing: np.ndarray, mask: np.ndarray, interest_vectors: np.ndarray, collapse_at: float = 0.9
) -> dict[str, float]:
    """How collapsed the routing is and how distinct the interests are.

    effective_items: mean over users and interests of exp(entropy of the routing row), the
        number of history items an interest effectively draws on (1 = collapsed onto one).
    effective_share: the same divided by the user's history length (1 = uniform).
    collapsed_share: share of interests whose largest routing weight exceeds ``collapse_at``.
    interest_similarity: mean pairwise cosine similarity of a user's K interests (1 = copies).

    Only users with at least 2 history items count (one item is trivially "collapsed").

    Args:
        routing: (U, K, L) rows summing to 1 over valid positions; mask: (U, L);
        interest_vectors: (U, K, d).
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
    v = interest_vectors[keep].astype(np.float64)
    n_interests = v.shape[1]
    if n_interests > 1:
        unit = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        cos = unit @ unit.transpose(0, 2, 1)
        iu = np.triu_indices(n_interests, 1)
        out["interest_similarity"] = float(cos[:, iu[0], iu[1]].mean())
    else:
        out["interest_similarity"] = 1.0
    return out


def interest_shares(interest: np.ndarray, n_interests: int) -> dict[str, float]:
    """Which interests a user's merged list comes from: the share of each, largest first, mean over users.

    ``interest_share_1`` is the share of the list that the user's most productive interest
    retrieved (1 = one interest supplies every item, 1/K = all contribute equally);
    ``interest_share_k`` the k-th largest; ``interests_used`` how many interests supply at least one
    item. Users with an empty list do not count.

    Args:
        interest: (U, N) index of the interest that produced each merged item (retrieval/merge.py), -1
            for an empty slot.
    """
    counts = np.stack([(interest == k).sum(-1) for k in range(n_interests)], axis=-1).astype(np.float64)
    filled = counts.sum(-1)
    keep = filled > 0
    out = {f"interest_share_{k + 1}": float("nan") for k in range(n_interests)}
    out["interests_used"] = float("nan")
    if not keep.any():
        return out
    shares = -np.sort(-counts[keep] / filled[keep, None], axis=-1)  # (U, K), largest first
    for k in range(n_interests):
        out[f"interest_share_{k + 1}"] = float(shares[:, k].mean())
    out["interests_used"] = float((counts[keep] > 0).sum(-1).mean())
    return out


NEAR_COPY_SIMILARITY = 0.9  # mean pairwise cosine of a user's interests from which they count as copies


def near_copy_warning(routing: dict[str, float], lists: dict[str, float]) -> str | None:
    """A sentence for the user when a multi-interest model's interests are near-copies, else None.

    Why: K searches per user are what the service pays for multi-interest retrieval; when the K
    vectors point the same way they find the same items (a new user saw similarity .956 and four
    interests returning the same three candidates, with no word from any command).
    """
    similarity = routing.get("interest_similarity", float("nan"))
    used = lists.get("interests_searched", lists.get("interests_used@50", float("nan")))
    if not similarity >= NEAR_COPY_SIMILARITY or not used > 1:  # NaN-safe; one interest cannot copy itself
        return None
    share = lists.get("interest_share_1@50", float("nan"))
    return (
        f"interests are near-copies: the mean cosine of a user's interests is {similarity:.3f} "
        f"(>= {NEAR_COPY_SIMILARITY}), and one interest supplies {share:.0%} of a top-50 list on average, "
        f"so searching {used:.1f} interests per user mostly finds the same items; fewer interests "
        "(--interests), --adaptive-interests log2 or a single-vector model (--model sasrec) cost fewer "
        "searches (docs/results.md compares them)"
    )

"""Offline evaluation (docs/remi.md A.4): interest vectors of held-out users, exact FAISS search
per interest, global merge by score, ranking metrics, routing diagnostics and what the lists
look like (coverage, diversity, which interest supplied them; A.5).

Validation during training may search an approximate index instead (``TrainConfig.eval_index``):
exact search of every valid user's K interests over millions of items is what makes evaluation
infeasible at 4M items, not the model (docs/remi.md#a4-evaluation; what recall it gives up:
benchmarks/results/eval_index.md)."""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from index.build import build_faiss, resolve_params
from remi.contract import ItemVocabulary
from retrieval.merge import merge_by_score
from retrieval.search import exact_index, search_interests
from training.data import EvalSet
from training.diagnostics import interest_shares, routing_diagnostics
from training.models import MultiInterestModel
from training.ranking import catalogue_coverage, intra_list_diversity, ranking_metrics

Metrics = dict[str, float]


@torch.no_grad()
def user_interest_vectors(
    model: MultiInterestModel, history: np.ndarray, mask: np.ndarray, batch_size: int = 1024, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Interest vectors (U, K, d) and routing (U, K, L) for padded histories, in eval mode."""
    was_training = model.training
    model.eval()
    vector_parts, routing_parts = [], []
    for i in range(0, len(history), batch_size):
        ids = torch.from_numpy(history[i : i + batch_size]).to(device)
        m = torch.from_numpy(mask[i : i + batch_size]).to(device)
        interest_vectors, routing = model(ids, m)
        vector_parts.append(interest_vectors.float().cpu().numpy())
        routing_parts.append(routing.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(vector_parts), np.concatenate(routing_parts)


def item_index(items: np.ndarray, search: str = "exact") -> faiss.Index:
    """The index evaluation searches: exact (flat inner product), or index/build.py's ivfpq / hnsw.

    ivfpq gets nlist = sqrt(items) instead of the builder's 4 sqrt(items): validation rebuilds it
    at every evaluation, and k-means over a quarter of the lists trains ~16x faster (the
    builder's sample is 64 points per list); nprobe and the exact refine stay the builder's.
    """
    if search == "exact":
        return exact_index(items)
    n, dim = items.shape
    overrides = {"nlist": max(1, math.isqrt(n))} if search == "ivfpq" else {}
    return build_faiss(items, search, resolve_params(search, n, dim, overrides))


def evaluate(
    model: MultiInterestModel,
    data: EvalSet,
    ns: tuple[int, ...] = (20, 50),
    exclude_history: bool = False,
    device: str = "cpu",
    search: str = "exact",
) -> tuple[Metrics, Metrics, Metrics]:
    """Returns (ranking metrics, routing diagnostics, list metrics) on an evaluation set.

    The list metrics describe the merged top max(ns) lists (:func:`list_metrics`).

    ``exclude_history`` drops items of the user's history window from the list (off for the
    protocol, which keeps repeats recommendable; on in the service). ``search``: exact, ivfpq or
    hnsw (:func:`item_index`).
    """
    interest_vectors, routing = user_interest_vectors(model, data.history, data.mask, device=device)
    with torch.no_grad():
        items = model.item_vectors().detach().float().cpu().numpy()
    index = item_index(items, search)
    n_max = max(ns)
    fetch = n_max + (data.history.shape[1] if exclude_history else 0)
    rows, scores = search_interests(index, interest_vectors, fetch)
    ids = ItemVocabulary.rows_to_indices(rows)
    with torch.no_grad():  # the interests the user has (all K unless the model's rule says fewer)
        active = model.interest_mask(torch.from_numpy(data.mask)).numpy()
    ids = np.where(active[:, :, None], ids, -1)  # an interest the user lacks retrieves nothing
    if exclude_history:
        seen = (ids[:, :, :, None] == data.history[:, None, None, :]) & data.mask[:, None, None, :]
        ids = np.where(seen.any(-1), -1, ids)
    merged, _, interest = merge_by_score(ids, scores, n_max)
    return (
        ranking_metrics(merged, data.truth, ns),
        routing_diagnostics(routing, data.mask, interest_vectors),
        {
            **list_metrics(merged, interest, items, interest_vectors.shape[1]),
            "interests_searched": float(active.sum(1).mean()),
        },
    )


def list_metrics(merged: np.ndarray, interest: np.ndarray, items: np.ndarray, n_interests: int) -> Metrics:
    """What multi-interest retrieval is for, measured on the merged lists
    (docs/remi.md#a5-routing-collapse-diagnostics).

    ``coverage@N`` (distinct items recommended over all evaluated users / catalogue size),
    ``diversity@N`` (mean pairwise cosine distance of a list's item embeddings, mean over users),
    ``interest_share_k@N`` (share of the list from the user's k-th most productive interest) and
    ``interests_used@N``, with N the lists' length.

    Args:
        merged: (U, N) item indices, -1 for empty slots; interest: (U, N) the interest behind each;
        items: (I, d) item vectors by FAISS row.
    """
    n = merged.shape[1]
    rows = ItemVocabulary.results_to_rows(merged)
    out = {
        f"coverage@{n}": catalogue_coverage(rows, len(items), n),
        f"diversity@{n}": intra_list_diversity(rows, items, n),
    }
    out.update({f"{name}@{n}": value for name, value in interest_shares(interest, n_interests).items()})
    return out


def popularity_metrics(popularity: np.ndarray, data: EvalSet, ns: tuple[int, ...] = (20, 50)) -> dict[str, float]:
    """The most-popular baseline: every user gets the same top-N items by training popularity.

    Args:
        popularity: (table_size,) interaction counts per item index (padding included).
    """
    by_count = np.argsort(-ItemVocabulary.drop_padding(popularity), kind="stable")[: max(ns)]  # FAISS rows
    top = ItemVocabulary.rows_to_indices(by_count)
    top = np.pad(top, (0, max(ns) - len(top)), constant_values=-1)  # catalogues smaller than N
    return ranking_metrics(np.broadcast_to(top, (len(data.truth), len(top))), data.truth, ns)

"""How one batch of queries becomes index searches and merges, whichever index answers them.

A micro-batch mixes requests with different k, blocklist versions, filters and merges, and each
is answered on its own terms, exactly as if it came alone (a row's answer in a shared FAISS call
is its solo answer, :func:`retrieval.search.search_batch`; docs/operations.md, "Serving cost of a
trained model"). The plan shares what can be shared and nothing else:

1. which interests are searched (:func:`interests_to_search`): all a user has, or only the
   leaders of near-copy groups (retrieval/dedup.py) for the score merge;
2. by k (:func:`plan`): one table of per-interest candidates, k deep, per distinct k;
3. within a k, plain queries by blocklist version: one index call each (the version's blocked
   items are that call's selector); filtered queries one by one, over their own allowed items;
4. by merge strategy: one numpy merge per strategy; a score merge over leaders only re-scores
   the pooled candidates against every interest first (:func:`merge_step`).

The engine (retrieval/engine.py) runs the tower, executes the plan through its :class:`Searcher`
methods and encodes the answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from remi.contract import ItemVocabulary
from retrieval.dedup import leaders, rescore
from retrieval.merge import merge, merge_flat
from retrieval.query import Query

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Interests:
    """The tower's output for the users of a batch that have a history (row u: the u-th of them)."""

    vectors: np.ndarray  # (U, K, d)
    weights: np.ndarray  # (U, K) routing weights, 0 for the interests a user does not have
    active: np.ndarray  # (U, K) bool: the interests each user has (adaptive models: fewer for short histories)
    searched: np.ndarray  # (U, K) bool: the interests that get a search of their own


@dataclass(frozen=True)
class MergeStep:
    """The users of one k group that merge one way; positions in the group, ascending."""

    strategy: str
    members: list[int]
    pooled: bool  # a score merge over leaders only: re-score the pooled candidates against every interest


@dataclass(frozen=True)
class KGroup:
    """The users of a batch that ask for the same k, and how their searches and merges are grouped."""

    k: int
    users: list[int]  # rows of :class:`Interests`, in batch order
    plain: list[list[int]]  # positions in ``users``: one list per blocklist version, one index call each
    filtered: list[int]  # positions in ``users`` searched one by one, over their allowed items
    merges: list[MergeStep]  # one per merge strategy, by name


@dataclass
class Candidates:
    """Per-interest candidates of one k group: item indices (-1: none) and scores, (users, K, k)."""

    ids: np.ndarray
    scores: np.ndarray
    allowed: dict[int, int] = field(default_factory=dict)  # filtered position -> items its filter allows
    paths: dict[int, str] = field(default_factory=dict)  # filtered position -> its search path

    @classmethod
    def empty(cls, n_users: int, n_interests: int, k: int) -> Candidates:
        ids = np.full((n_users, n_interests, k), -1, dtype=np.int64)
        return cls(ids, np.full(ids.shape, -np.inf, dtype=np.float32))


class Searcher(Protocol):
    """The searches a plan needs, over one loaded index (the engine provides them)."""

    def search_plain(
        self, vectors: np.ndarray, owner: np.ndarray, k: int, exclude: Sequence[np.ndarray], blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores of every (Q, d) query row, minus its owner's ``exclude``
        and the ``blocked`` items: one call of the engine's retriever (retrieval/retriever.py)."""
        ...

    def search_allowed(self, query: Query, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str, int]:
        """Top-k of each of one filtered user's (n, d) interests over the items its query allows:
        item indices, scores, the search path and how many items the filter allows."""
        ...


def group_by(keys: Iterable[Key]) -> dict[Key, list[int]]:
    """Positions by key: keys in order of first appearance, positions ascending."""
    groups: dict[Key, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


def interests_to_search(
    vectors: np.ndarray,
    weights: np.ndarray,
    active: np.ndarray,
    merges: Sequence[str],
    dedup_cosine: float = 1.0,
    min_weight: float = 0.0,
) -> np.ndarray:
    """(U, K) bool: every interest a user has, or with dedup on (``dedup_cosine`` < 1 or
    ``min_weight`` > 0) only the leaders of near-copy groups, for the score merge alone: quota
    and round-robin read every interest's own list."""
    searched = active.copy()
    if dedup_cosine < 1.0 or min_weight > 0.0:
        ranked = np.where(active, weights, -np.inf)  # an inactive interest never leads
        grouped = leaders(vectors, ranked, dedup_cosine, min_weight) & active
        score = np.array(merges) == "score"
        searched[score] = grouped[score]
    return searched


def plan(queries: Sequence[Query], searched: np.ndarray) -> list[KGroup]:
    """The searches and merges of a batch's queries that have a history (``searched``: their
    :func:`interests_to_search`), one :class:`KGroup` per k in order of first appearance."""
    return [k_group(k, users, queries, searched) for k, users in group_by(q.k for q in queries).items()]


def k_group(k: int, users: list[int], queries: Sequence[Query], searched: np.ndarray) -> KGroup:
    """The plan of the ``users`` (rows of ``queries``) that ask for ``k``."""
    asked = [queries[u] for u in users]
    plain = [r for r, query in enumerate(asked) if not query.filtered]
    # The blocked array is shared by every query of a list version: its identity names the version.
    by_list = group_by(id(asked[r].blocked) for r in plain)
    filtered = [r for r, query in enumerate(asked) if query.filtered]
    return KGroup(
        k, users, [[plain[p] for p in same] for same in by_list.values()], filtered, merge_steps(asked, users, searched)
    )


def merge_steps(asked: Sequence[Query], users: list[int], searched: np.ndarray) -> list[MergeStep]:
    """One step per merge strategy among ``asked`` (the queries of ``users``), by name."""
    by_strategy = group_by(query.merge for query in asked)
    return [
        MergeStep(strategy, members, strategy == "score" and not searched[[users[r] for r in members]].all())
        for strategy, members in sorted(by_strategy.items())
    ]


def search_group(group: KGroup, queries: Sequence[Query], interests: Interests, searcher: Searcher) -> Candidates:
    """Every searched interest of a k group's users, its plain queries first (one call per list
    version), then its filtered ones; interests not searched keep empty lists."""
    found = Candidates.empty(len(group.users), interests.vectors.shape[1], group.k)
    for same_list in group.plain:
        users = [group.users[r] for r in same_list]
        user, interest = np.nonzero(interests.searched[users])
        ids, scores = searcher.search_plain(
            interests.vectors[users][user, interest],
            user,
            group.k,
            [queries[u].seen() for u in users],
            queries[users[0]].blocked,
        )
        found.ids[np.asarray(same_list)[user], interest] = ids
        found.scores[np.asarray(same_list)[user], interest] = scores
    for r in group.filtered:
        u = group.users[r]
        mine = np.flatnonzero(interests.searched[u])
        ids, scores, found.paths[r], found.allowed[r] = searcher.search_allowed(
            queries[u], interests.vectors[u, mine], group.k
        )
        found.ids[r, mine], found.scores[r, mine] = ids, scores
    return found


def merge_step(
    step: MergeStep, group: KGroup, found: Candidates, interests: Interests, item_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One merged list per member, k long (-1 padded): item indices, scores, the interest of each."""
    picked = [group.users[r] for r in step.members]
    if step.pooled:
        # Leaders only: score every found item against all K interests (its true max_k score and
        # interest), then merge the pooled candidates.
        pool = found.ids[step.members].reshape(len(step.members), -1)
        pool_scores, pool_who = rescore(
            ItemVocabulary.results_to_rows(pool), item_vectors, interests.vectors[picked], interests.active[picked]
        )
        return merge_flat(pool, pool_scores, pool_who, group.k)
    weights = interests.weights[picked] if step.strategy == "quota" else None  # only the quota merge reads them
    return merge(step.strategy, found.ids[step.members], found.scores[step.members], group.k, weights)

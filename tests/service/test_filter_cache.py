"""Repeated filters are served from the per-engine cache (retrieval/filter_cache.py) with the same answers.

The cache holds a filter's mask and gathered rows read-only; what a request adds on top (its
exclude_items, seen items, the blocklist) must never stick to the entry for the next request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from remi.attributes import Condition
from retrieval.filter_cache import FilterCache, filter_key
from retrieval.filtered import Gathered, search_exact
from tests.service.attr_model import AttrModel
from tests.service.test_filters import N_ITEMS, _app, allowed_ids, ids

FILTERS = [
    {"category": {"eq": "rare"}},
    {"category": {"in": ["shoes", "bags"]}, "price": {"lt": 80}},
    {"price": {"gte": 20, "lt": 60}},
    {"market": {"not_in": ["fr"]}},
    {"category": {"eq": "shoes"}},
]


@pytest.fixture(scope="module")
def both(attr_root: Path) -> Iterator[tuple[TestClient, TestClient]]:
    with _app(attr_root) as cached, _app(attr_root, filter_cache_mb=0) as uncached:
        yield cached, uncached


def test_repeated_filters_answer_as_without_the_cache_whatever_each_request_adds(
    both: tuple[TestClient, TestClient], attr_model: AttrModel
) -> None:
    """Five filters, each repeated with other histories and exclude_items: the cached server gives
    byte-identical items to the uncached one, and a request's exclusions never leak into the next."""
    cached, uncached = both
    rng = np.random.default_rng(11)
    for case in range(60):
        spec = FILTERS[case % len(FILTERS)]
        history = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 8)), replace=False)]
        exclude = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 40)), replace=False)]
        body = {
            "user_id": f"cache-{case}",
            "k": int(rng.integers(1, 80)),
            "history": history,
            "use_stored_history": False,
            "filter": spec,
            "exclude_items": exclude if case % 3 else [],
        }
        a, b = cached.post("/recommend", json=body), uncached.post("/recommend", json=body)
        assert a.status_code == b.status_code == 200, (body, a.text, b.text)
        assert a.json()["items"] == b.json()["items"], body
        assert a.json()["filter"] == b.json()["filter"], body
        allowed = allowed_ids(attr_model, spec, body["exclude_items"])
        assert set(ids(a.json())) <= allowed and a.json()["filter"]["allowed_items"] == len(allowed)
    engine = cached.app.state.remi.versions.engine  # type: ignore[attr-defined]
    assert engine.filter_cache.hits >= 50 and engine.filter_cache.misses <= len(FILTERS)
    assert len(uncached.app.state.remi.versions.engine.filter_cache) == 0  # type: ignore[attr-defined]


def test_the_key_ignores_condition_order_and_unused_bounds() -> None:
    a = Condition("category", "in", ("shoes",))
    b = Condition("price", "lt", (), 50.0)
    assert filter_key([a, b]) == filter_key([b, a])
    assert filter_key([Condition("category", "in", ("shoes",), float("nan"))]) == filter_key([a])
    assert filter_key([b]) != filter_key([Condition("price", "lt", (), 51.0)])
    assert filter_key([a]) != filter_key([Condition("category", "not_in", ("shoes",))])


def test_entries_are_read_only_and_evicted_least_recently_used_beyond_the_budget() -> None:
    items = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    masks = [np.arange(1000) % (i + 2) == 0 for i in range(6)]  # 50%, 33%, 25%, 20%, ...
    one = FilterCache(10**9, items).entry(masks[3])
    budget = 3 * one.nbytes  # room for about three 20%-entries
    cache = FilterCache(budget, items)
    conditions = [(Condition("c", "in", (str(i),)),) for i in range(6)]
    for i in range(6):
        entry = cache.get(conditions[i], lambda i=i: masks[i])
        assert not entry.mask.flags.writeable
        assert entry.gathered is None or not entry.gathered.table.flags.writeable
        assert cache.size_bytes <= budget
    assert cache.misses == 6 and len(cache) < 6
    cache.get(conditions[5], lambda: pytest.fail("a cached filter was rebuilt"))  # the newest stayed
    assert cache.hits == 1
    off = FilterCache(0, items)
    off.get(conditions[0], lambda: masks[0])
    assert len(off) == 0 and off.get(conditions[0], lambda: masks[0]).gathered is None


def test_exact_search_over_gathered_rows_equals_the_plain_product() -> None:
    """The gathered table is a superset of what a request allows: masked rows never come back."""
    rng = np.random.default_rng(3)
    items = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    for share in (0.001, 0.01, 0.1, 0.2):
        base = rng.random(2000) < share
        gathered = Gathered.of(items, np.flatnonzero(base))
        for drop in (0, 1, 5, int(base.sum())):
            allowed = base.copy()
            allowed[rng.choice(np.flatnonzero(base), size=min(drop, int(base.sum())), replace=False)] = False
            for n in (1, 10, 50, 500):
                want = search_exact(items, queries, n, allowed)
                got = search_exact(items, queries, n, allowed, gathered)
                assert np.array_equal(want[0], got[0]) and np.allclose(want[1], got[1]), (share, drop, n)
                assert math.isinf(got[1][0, -1]) or n <= allowed.sum()

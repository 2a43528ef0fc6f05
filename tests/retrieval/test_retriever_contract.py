"""The retriever contract (retrieval/retriever.py), one suite for every backend.

Each test runs against the FAISS retriever (an exact index in memory) and the Milvus retriever
(a FLAT collection in Milvus Lite, the embedded engine with the cluster's client API, loaded by
the reindex job's own code), over the same generated catalogue with item attributes, and checks
the answers against exact search computed here with numpy: equal lists for unfiltered queries,
no seen / excluded / blocked / filtered-out item ever, k items whenever k are allowed and fewer
only when fewer exist, every filter operator, a user's interests in one call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from remi.artifacts import Artifacts, load_artifacts
from remi.attributes import Condition, allowed_mask
from remi.contract import ItemVocabulary
from retrieval.retriever import FaissRetriever, Retriever, Where
from retrieval.search import SharedExclusion, exact_index
from tests.service.attr_model import AttrModel, write_attr_artifacts

BACKENDS = ["faiss", "milvus"]
N_ITEMS = 3000


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AttrModel:
    return write_attr_artifacts(tmp_path_factory.mktemp("contract") / "artifacts", n_items=N_ITEMS, seed=5)


@pytest.fixture(scope="module")
def arts(model: AttrModel) -> Artifacts:
    return load_artifacts(model.artifacts)


@pytest.fixture(scope="module")
def items(arts: Artifacts) -> np.ndarray:
    return np.ascontiguousarray(arts.item_vectors, dtype=np.float32)


@pytest.fixture(scope="module")
def milvus(arts: Artifacts, items: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retriever]:
    """A FLAT collection of the catalogue in a Milvus Lite file, built by the reindex job's loader."""
    from index.milvus_publish import create_collection
    from retrieval.milvus import MILVUS_FORMAT, MilvusManifest, MilvusRetriever, attribute_fields, connect

    client = connect(str(tmp_path_factory.mktemp("milvus") / "contract.db"))
    create_collection(client, "contract", "v1", arts, "flat", {})
    manifest = MilvusManifest(
        format_version=MILVUS_FORMAT, kind="flat", index_type="FLAT", params={}, collection="contract",
        fields=attribute_fields(arts.attributes), n_items=N_ITEMS, dim=items.shape[1],
        model_version=arts.model_version, build_seconds=0.0, recall_at_50=None, recall_queries=0,
        recall_source="", pymilvus_version="", created_at="",
    )  # fmt: skip
    yield MilvusRetriever(client, manifest, items, arts.attributes)
    client.close()


@pytest.fixture(params=BACKENDS)
def retriever(request: pytest.FixtureRequest, items: np.ndarray) -> Retriever:
    if request.param == "faiss":
        return FaissRetriever(exact_index(items), items)
    milvus: Retriever = request.getfixturevalue("milvus")
    return milvus


def exact(
    items: np.ndarray, queries: np.ndarray, k: int, banned: Sequence[np.ndarray], allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: top-k item indices by exact inner product per row, minus its banned item indices,
    within ``allowed`` (by row); -1 / -inf padded, ties by item index."""
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for q, query in enumerate(queries):
        ok = np.ones(len(items), dtype=bool) if allowed is None else allowed.copy()
        rows = ItemVocabulary.indices_to_rows(np.asarray(banned[q], dtype=np.int64))
        ok[rows[rows >= 0]] = False
        candidates = np.flatnonzero(ok)
        values = items[candidates] @ query
        order = np.lexsort((candidates, -values.astype(np.float64)))[:k]
        ids[q, : len(order)] = ItemVocabulary.rows_to_indices(candidates[order])
        scores[q, : len(order)] = values[order]
    return ids, scores


def assert_same(found: tuple[np.ndarray, ...], expected: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(found[0], expected[0])
    present = expected[0] >= 0
    np.testing.assert_allclose(found[1][present], expected[1][present], rtol=1e-5, atol=1e-5)
    assert np.isneginf(found[1][~present]).all()


def interests(rng: np.random.Generator, users: int, per_user: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(users * per_user, d) query rows, each user's in a row, and their owners."""
    return rng.standard_normal((users * per_user, dim)).astype(np.float32), np.repeat(np.arange(users), per_user)


def top_items(items: np.ndarray, query: np.ndarray, n: int) -> np.ndarray:
    """The n best item indices of a query: the items an exclusion must actually take out."""
    return ItemVocabulary.rows_to_indices(np.argsort(-(items @ query), kind="stable")[:n])


def where_of(arts: Artifacts, conditions: tuple[Condition, ...], exclude_items: np.ndarray) -> Where:
    """A filtered request's restriction, as the engine builds it (conditions, exclude_items, their mask)."""
    assert arts.attributes is not None
    allowed = allowed_mask(arts.attributes, conditions) if conditions else np.ones(N_ITEMS, dtype=bool)
    rows = ItemVocabulary.indices_to_rows(exclude_items)
    allowed[rows[rows >= 0]] = False
    return Where(conditions, exclude_items, allowed)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_unfiltered_lists_equal_exact_search(retriever: Retriever, items: np.ndarray, k: int) -> None:
    queries, owner = interests(np.random.default_rng(k), 5, 3, items.shape[1])
    found = retriever.search(queries, owner, k, [np.zeros(0, dtype=np.int64)] * 5, None)
    assert_same(found, exact(items, queries, k, [np.zeros(0, dtype=np.int64)] * len(queries)))
    assert found[2] is None


def test_seen_and_blocked_items_are_never_returned_and_the_rest_is_exact(
    retriever: Retriever, items: np.ndarray
) -> None:
    rng = np.random.default_rng(1)
    queries, owner = interests(rng, 6, 4, items.shape[1])
    # each user has seen the top 30 of its first interest (and a few random items): the exclusion bites
    seen = [np.union1d(top_items(items, queries[4 * u], 30), rng.integers(1, N_ITEMS + 1, 20)) for u in range(6)]
    blocked_items = np.union1d(top_items(items, queries[1], 15), top_items(items, queries[6], 15))
    blocked = SharedExclusion(blocked_items, N_ITEMS)
    found = retriever.search(queries, owner, 20, seen, blocked)
    banned = [np.union1d(seen[u], blocked_items) for u in owner]
    assert_same(found, exact(items, queries, 20, banned))
    for row in range(len(owner)):
        assert not np.isin(found[0][row], banned[row]).any()
        assert (found[0][row] >= 0).all()  # k whenever k are allowed


def test_a_batch_answers_each_user_as_if_it_came_alone(retriever: Retriever, items: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    queries, owner = interests(rng, 4, 3, items.shape[1])
    seen = [top_items(items, queries[3 * u + 1], 5 + 40 * u) for u in range(4)]
    together = retriever.search(queries, owner, 10, seen, None)
    for u in range(4):
        alone = retriever.search_user(queries[owner == u], 10, seen[u], None)
        np.testing.assert_array_equal(together[0][owner == u], alone[0])


def test_a_users_interests_and_the_whole_batch_go_in_one_call(retriever: Retriever, items: np.ndarray) -> None:
    """Milvus counts its search calls (FAISS's one call per user is search_batch's own test)."""
    if not hasattr(retriever, "calls"):
        pytest.skip("the FAISS retriever's calls are tested in tests/retrieval/test_search_batch.py")
    queries, owner = interests(np.random.default_rng(3), 8, 4, items.shape[1])
    seen = [top_items(items, queries[4 * u], 10) for u in range(8)]
    before = retriever.calls
    retriever.search(queries, owner, 50, seen, SharedExclusion(np.arange(1, 40), N_ITEMS))
    assert retriever.calls - before == 1
    before = retriever.calls
    retriever.search_user(queries[:4], 50, seen[0], None)
    assert retriever.calls - before == 1


def test_k_items_whenever_k_are_allowed_fewer_only_when_fewer_exist(retriever: Retriever, items: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    queries, owner = interests(rng, 2, 2, items.shape[1])
    nearly_all = np.arange(1, N_ITEMS - 6)  # user 0 has seen all but 7 items
    seen = [nearly_all, np.zeros(0, dtype=np.int64)]
    found = retriever.search(queries, owner, 10, seen, None)
    assert ((found[0] >= 0).sum(axis=1) == [7, 7, 10, 10]).all()
    assert_same(found, exact(items, queries, 10, [seen[u] for u in owner]))
    everything = retriever.search(queries, owner, N_ITEMS + 10, [np.zeros(0, dtype=np.int64)] * 2, None)
    assert ((everything[0] >= 0).sum(axis=1) == N_ITEMS).all()  # k beyond the catalogue: all of it


CONDITIONS = {
    "category in": (Condition("category", "in", ("shoes", "rare")),),
    "category eq, a rare value": (Condition("category", "in", ("rare",)),),
    "category not_in (no value never matches)": (Condition("category", "not_in", ("shoes", "bags")),),
    "market in, a value the catalogue lacks": (Condition("market", "in", ("fr", "nowhere")),),
    "market in, only values the catalogue lacks": (Condition("market", "in", ("nowhere",)),),
    "price gte": (Condition("price", "gte", bound=150.0),),
    "price lte": (Condition("price", "lte", bound=20.5),),
    "price gt": (Condition("price", "gt", bound=199.0),),
    "price lt": (Condition("price", "lt", bound=3.0),),
    "price in": (Condition("price", "in", (10.0, 55.55, 120.0)),),
    "price not_in (no value never matches)": (Condition("price", "not_in", (10.0,)),),
    "an AND of three": (
        Condition("category", "not_in", ("hats",)),
        Condition("market", "in", ("de", "us")),
        Condition("price", "lt", bound=100.0),
    ),
    "exclude_items alone": (),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_every_filter_op_answers_exactly_over_the_items_it_allows(
    retriever: Retriever, arts: Artifacts, items: np.ndarray, name: str
) -> None:
    conditions = CONDITIONS[name]
    if name == "price in":  # values some items really have
        assert arts.attributes is not None
        prices = arts.attributes.column("price")
        conditions = (Condition("price", "in", tuple(float(p) for p in prices[~np.isnan(prices)][:5])),)
    rng = np.random.default_rng(len(name))
    queries = rng.standard_normal((3, items.shape[1])).astype(np.float32)
    exclude_items = top_items(items, queries[2], 12)
    seen = top_items(items, queries[0], 25)
    blocked_items = top_items(items, queries[1], 10)
    where = where_of(arts, conditions, exclude_items)
    found = retriever.search(
        queries, np.zeros(3, dtype=np.int64), 50, [seen], SharedExclusion(blocked_items, N_ITEMS), where
    )
    banned = [np.union1d(seen, blocked_items)] * 3
    assert_same(found, exact(items, queries, 50, banned, where.allowed))
    allowed_items = ItemVocabulary.rows_to_indices(np.flatnonzero(where.allowed))
    allowed_left = np.setdiff1d(allowed_items, banned[0])
    assert ((found[0] >= 0).sum(axis=1) == min(50, len(allowed_left))).all()  # k whenever k are allowed
    assert np.isin(found[0][found[0] >= 0], allowed_left).all()
    assert found[2] in ("exact", "graph", "graph+exact")


def test_a_filter_only_the_mask_knows_is_answered_exactly(
    retriever: Retriever, arts: Artifacts, items: np.ndarray
) -> None:
    """The explain route hands the mask alone (no conditions): still the exact answer within it."""
    conditions = CONDITIONS["an AND of three"]
    where = where_of(arts, conditions, np.zeros(0, dtype=np.int64))
    masked = Where(None, where.exclude_items, where.allowed)
    queries = np.random.default_rng(9).standard_normal((4, items.shape[1])).astype(np.float32)
    seen = top_items(items, queries[0], 20)
    found = retriever.search_user(queries, 10, seen, None, masked)
    assert_same(found, exact(items, queries, 10, [seen] * 4, where.allowed))

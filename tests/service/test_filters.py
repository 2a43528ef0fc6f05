"""Request filters and exclude_items on /recommend, /recommend/batch and /users/{id}/interests.

In process (TestClient) on a 3000-item model with attributes and a real HNSW index, with the
planner's row threshold low so both paths serve: the graph with a selector (and its exact
fallback) and the exact product. The end-to-end test at the bottom runs a real `remi serve`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.config import ServiceSettings
from tests.service.attr_model import ATTR_ITEMS, CATEGORIES, MARKETS, AttrModel
from tests.service.conftest import start_server

N_ITEMS = ATTR_ITEMS  # the attr_model fixture's catalogue (tests/service/conftest.py)


def _app(root: Path, **settings: Any) -> TestClient:
    # a low row threshold and the cost model off: small catalogues take the graph path too
    settings = {"filter_exact_max_rows": 150, "filter_graph_slot_cost": 0, **settings}
    app = create_app(ServiceSettings(index_root=root, poll_seconds=0, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(attr_root: Path) -> Iterator[TestClient]:
    with _app(attr_root) as c:
        yield c


def allowed_ids(model: AttrModel, spec: dict[str, Any] | None, exclude: list[str] = ()) -> set[str]:  # type: ignore[assignment]
    """The reference: the items a filter allows, computed with pandas on the table as written."""
    frame = model.table.set_index("item_id").reindex(model.item_ids)
    keep = np.ones(len(frame), dtype=bool)
    for name, condition in (spec or {}).items():
        column = frame[name]
        for op, value in condition.items():
            if op == "eq":
                keep &= (column == value).to_numpy()
            elif op == "in":
                keep &= column.isin(value).to_numpy()
            elif op == "not_in":
                keep &= (column.notna() & ~column.isin(value)).to_numpy()
            else:
                keep &= {"gte": column >= value, "lte": column <= value, "gt": column > value, "lt": column < value}[
                    op
                ].to_numpy()
    return {item for item, k in zip(model.item_ids, keep, strict=True) if k} - set(exclude)


def random_filter(rng: np.random.Generator) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if rng.random() < 0.7:
        picked = [str(c) for c in rng.choice(CATEGORIES, size=int(rng.integers(1, 3)), replace=False)]
        spec["category"] = {"in": picked} if rng.random() < 0.5 else {"eq": picked[0]}
    if rng.random() < 0.4:
        spec["market"] = {"not_in": [str(rng.choice(MARKETS))]}
    if rng.random() < 0.5:
        low = float(rng.uniform(0, 190))
        spec["price"] = {"gte": low, "lt": low + float(rng.choice([2, 20, 200]))}
    return spec


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def test_random_filters_never_return_a_filtered_item_and_fill_min_k_allowed(
    client: TestClient, attr_model: AttrModel
) -> None:
    """Property over seeded random filters, histories, k, merges and exclusions, on a real
    HNSW index: every item allowed, no seen item, min(k, allowed unseen) items, counts right."""
    rng = np.random.default_rng(7)
    paths = set()
    for case in range(80):
        spec = random_filter(rng)
        history = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 8)), replace=False)]
        exclude = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 30)), replace=False)]
        k = int(rng.integers(1, 120))
        body = {
            "user_id": f"prop-{case}",
            "k": k,
            "history": history,
            "use_stored_history": False,
            "merge": str(rng.choice(["score", "quota", "round_robin"])),
            "filter": spec,
            "exclude_items": exclude,
        }
        response = client.post("/recommend", json=body)
        assert response.status_code == 200, (body, response.text)
        answer = response.json()
        allowed = allowed_ids(attr_model, spec, exclude)
        got = ids(answer)
        assert set(got) <= allowed, body
        assert len(got) == len(set(got)) == min(k, len(allowed - set(history))), body
        assert answer["filter"]["allowed_items"] == len(allowed)
        assert answer["filter"]["filtered_out"] == N_ITEMS - len(allowed)
        paths.add(answer["filter"]["path"])
    assert {"exact", "popular"} <= paths and paths & {"graph", "graph+exact"}  # every path was exercised


def test_batch_requests_are_filtered_each_on_its_own_terms(client: TestClient, attr_model: AttrModel) -> None:
    specs = [{"category": {"eq": "rare"}}, {"price": {"lt": 10}}, None]
    body = {
        "requests": [
            {"user_id": f"b{i}", "k": 30, "history": attr_model.item_ids[:5], "filter": spec}
            for i, spec in enumerate(specs)
        ]
    }
    response = client.post("/recommend/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for spec, answer in zip(specs, results, strict=True):
        allowed = allowed_ids(attr_model, spec) - set(attr_model.item_ids[:5])
        assert set(ids(answer)) <= allowed and len(ids(answer)) == min(30, len(allowed))
    assert "filter" not in results[2]  # an unfiltered request's answer is unchanged


def test_a_filter_on_a_cold_start_obeys_the_filter_in_popularity_order(
    client: TestClient, attr_model: AttrModel
) -> None:
    spec = {"market": {"eq": "de"}, "category": {"in": ["hats"]}}
    answer = client.post("/recommend", json={"user_id": "cold", "k": 10, "filter": spec}).json()
    assert answer["fallback"] == "cold_start" and answer["filter"]["path"] == "popular"
    allowed = allowed_ids(attr_model, spec)
    assert set(ids(answer)) <= allowed and len(ids(answer)) == 10
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def test_a_filter_allowing_nothing_gives_an_empty_list_that_says_why(client: TestClient) -> None:
    body = {"user_id": "u", "history": ["sku-00001"], "filter": {"category": {"eq": "no-such-category"}}}
    answer = client.post("/recommend", json=body).json()
    assert answer["items"] == []
    assert answer["filter"] == {"allowed_items": 0, "filtered_out": N_ITEMS, "path": "exact"}


def test_exclude_items_alone_removes_those_items(client: TestClient, attr_model: AttrModel) -> None:
    body = {"user_id": "u", "k": 10, "history": attr_model.item_ids[:3], "use_stored_history": False}
    first = ids(client.post("/recommend", json=body).json())
    again = client.post("/recommend", json={**body, "exclude_items": first[:5] + ["unknown-id"]}).json()
    assert not set(first[:5]) & set(ids(again)) and len(ids(again)) == 10
    assert again["filter"]["filtered_out"] == 5


def test_json_booleans_filter_a_boolean_attribute_stored_as_true_false_text(
    tmp_path: Path,
) -> None:
    """A column of booleans is stored as the text "true"/"false"; a filter may say so with JSON
    booleans as well as with that text, and both give the same items."""
    from index.publish import reindex
    from remi.attributes import attach_attributes, read_attribute_table
    from tests.service.tiny_model import write_model_folder

    rng = np.random.default_rng(3)
    item_ids = [f"b-{i:03d}" for i in range(300)]
    artifacts = tmp_path / "model"
    manifest, _ = write_model_folder(artifacts, item_ids, rng)
    in_stock = rng.random(len(item_ids)) < 0.3
    source = tmp_path / "items.csv"
    pd.DataFrame({"item_id": item_ids, "in_stock": in_stock}).to_csv(source, index=False)
    attach_attributes(artifacts, manifest, read_attribute_table(source, item_ids))
    root = tmp_path / "root"
    reindex(artifacts, root, kind="flat", min_recall=0.0)
    expected = {True: {i for i, s in zip(item_ids, in_stock, strict=True) if s}}
    expected[False] = set(item_ids) - expected[True]
    with _app(root) as client:
        for flag in (True, False):
            answers = [
                client.post("/recommend", json={"user_id": "u", "k": 50, "filter": {"in_stock": spec}})
                for spec in ({"eq": flag}, {"eq": str(flag).lower()}, {"in": [flag]})
            ]
            assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
            got = [ids(a.json()) for a in answers]
            assert got[0] == got[1] == got[2] and got[0] and set(got[0]) <= expected[flag]
        both = client.post("/recommend", json={"user_id": "u", "filter": {"in_stock": {"not_in": [True, False]}}})
        assert both.status_code == 200 and ids(both.json()) == []


@pytest.mark.parametrize(
    ("spec", "loc", "kind"),
    [
        ({"colour": {"eq": "red"}}, ["body", "filter", "colour"], "filter_unknown_attribute"),
        ({"category": {"gte": 3}}, ["body", "filter", "category", "gte"], "filter_range_on_categorical"),
        ({"price": {"in": [1, "cheap"]}}, ["body", "filter", "price", "in", 1], "filter_value_kind"),
        ({"category": {"in": "shoes"}}, ["body", "filter", "category", "in"], "list_type"),
        ({"category": {"like": "sh%"}}, ["body", "filter", "category", "like"], "extra_forbidden"),
        ({"category": {}}, ["body", "filter", "category"], "filter_empty_condition"),
        ({"price": {"lt": "10"}}, ["body", "filter", "price", "lt"], "filter_number_type"),
        ({"price": {"eq": True}}, ["body", "filter", "price", "eq"], "filter_value_kind"),
        ({"category": {"in": ["x"] * 1001}}, ["body", "filter", "category", "in"], "too_long"),
    ],
)
def test_bad_filters_are_422_naming_the_field(client: TestClient, spec: Any, loc: list[Any], kind: str) -> None:
    response = client.post("/recommend", json={"user_id": "u", "filter": spec})
    assert response.status_code == 422, response.text
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(loc, kind)]


def test_too_many_attributes_and_excluded_items_are_bounded(attr_root: Path) -> None:
    with _app(attr_root, filter_attributes_max=2, exclude_items_max=3) as small:
        spec = {"category": {"eq": "a"}, "market": {"eq": "fr"}, "price": {"lt": 1}}
        response = small.post("/recommend", json={"user_id": "u", "filter": spec})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "filter"]
        response = small.post("/recommend", json={"user_id": "u", "exclude_items": ["a", "b", "c", "d"]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "exclude_items"]
        schema = small.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
        assert "maxProperties" in json.dumps(schema["filter"]) and "maxItems" in json.dumps(schema["exclude_items"])


def test_a_bad_filter_in_a_batch_names_the_request(client: TestClient) -> None:
    body = {"requests": [{"user_id": "a"}, {"user_id": "b", "filter": {"size": {"eq": 1}}}]}
    response = client.post("/recommend/batch", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "requests", 1, "filter", "size"]


def test_a_model_without_attributes_refuses_any_filter(tiny_root: Path) -> None:
    with _app(tiny_root) as plain:
        response = plain.post("/recommend", json={"user_id": "u", "filter": {"category": {"eq": "x"}}})
        assert response.status_code == 422
        assert "no item attributes" in response.json()["detail"][0]["msg"]
        assert plain.post("/recommend", json={"user_id": "u", "k": 3, "exclude_items": ["x"]}).status_code == 200


def test_the_fast_path_answers_filters_as_the_full_app_does(
    attr_root: Path, attr_model: AttrModel, fast_calls: list[int]
) -> None:
    calls = fast_calls
    good = {"user_id": "u", "k": 20, "history": attr_model.item_ids[:4], "filter": {"price": {"lte": 30}}}
    bad = {"user_id": "u", "filter": {"category": {"lt": 1}}}
    with _app(attr_root, fast_path=True) as fast, _app(attr_root, fast_path=False) as full:
        for body in (good, bad):
            a, b = fast.post("/recommend", json=body), full.post("/recommend", json=body)
            assert a.status_code == b.status_code
            if a.status_code == 200:
                assert {**a.json(), "took_ms": 0} == {**b.json(), "took_ms": 0}
            else:
                assert a.json() == b.json()  # the fast path replayed it into the full app's 422
    assert len(calls) == 2  # both were tried on the fast path


def test_interests_show_only_allowed_candidates_and_the_filter_counts(
    client: TestClient, attr_model: AttrModel
) -> None:
    events = {"events": [{"item_id": item} for item in attr_model.item_ids[10:16]]}
    assert client.post("/users/explained/events", json=events).status_code == 200
    spec = {"category": {"eq": "rare"}}
    response = client.get("/users/explained/interests", params={"filter": json.dumps(spec), "top_n": 5})
    assert response.status_code == 200, response.text
    answer = response.json()
    allowed = allowed_ids(attr_model, spec)
    # no "path": each interest is searched on its own, so there is no one path to state
    assert answer["filter"] == {"allowed_items": len(allowed), "filtered_out": N_ITEMS - len(allowed)}
    for interest in answer["interests"]:
        assert {c["item_id"] for c in interest["candidates"]} <= allowed and len(interest["candidates"]) == 5
    bad = client.get("/users/explained/interests", params={"filter": '{"category": {"gt": 1}}'})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "filter", "category", "gt"]
    assert client.get("/users/explained/interests", params={"filter": "{not json"}).status_code == 422


def test_openapi_documents_the_filter_shape(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    condition = schemas["AttributeCondition"]["properties"]
    assert set(condition) == {"eq", "in", "not_in", "gte", "lte", "gt", "lt"}
    assert "filter" in schemas["RecommendResponse"]["properties"] and "FilterInfo" in schemas


def test_filters_end_to_end_through_a_real_server(attr_root: Path, attr_model: AttrModel) -> None:
    """`remi serve` (uvicorn, fast path on) on the published version: a filtered answer and a 422."""
    server = start_server(attr_root, None, REMI_FILTER_EXACT_MAX_ROWS="150", REMI_FILTER_GRAPH_SLOT_COST="0")
    try:
        server.wait_ready(timeout=60)  # the model loaded, not only the process up
        spec = {"category": {"in": ["bags", "hats"]}, "price": {"gt": 50}}
        body = {"user_id": "e2e", "k": 40, "history": attr_model.item_ids[:6], "filter": spec}
        answer = httpx.post(f"{server.url}/recommend", json=body, timeout=30).json()
        allowed = allowed_ids(attr_model, spec) - set(attr_model.item_ids[:6])
        assert set(ids(answer)) <= allowed and len(ids(answer)) == 40
        bad = httpx.post(f"{server.url}/recommend", json={"user_id": "e2e", "filter": {"x": {"eq": 1}}}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "filter", "x"]
    finally:
        server.stop()


def test_blocked_items_never_appear_in_filtered_answers_which_still_fill_k(
    attr_root: Path, attr_model: AttrModel
) -> None:
    """The live blocklist and a filter together
    (docs/operations.md#blocking-items-without-a-reindex): the filtered paths (graph with a
    selector, exact subset, popular fallback) and the interests view drop blocked items as the
    plain path does, and an answer still has min(k, allowed unblocked unseen) items; the filter's
    counts stay the filter's."""
    rng = np.random.default_rng(11)
    blocked = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=400, replace=False)]
    with _app(attr_root, admin_token="s3cret") as client:
        auth = {"Authorization": "Bearer s3cret"}
        assert client.post("/admin/items/block", json={"item_ids": blocked}, headers=auth).status_code == 200
        paths = set()
        for case in range(40):
            spec = random_filter(rng)
            history = [attr_model.item_ids[i] for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 6)), replace=False)]
            k = int(rng.integers(1, 120))
            body = {"user_id": f"blocked-{case}", "k": k, "history": history, "use_stored_history": False,
                    "filter": spec}  # fmt: skip
            answer = client.post("/recommend", json=body).json()
            allowed = allowed_ids(attr_model, spec)
            got = ids(answer)
            assert not set(got) & set(blocked), body
            assert set(got) <= allowed, body
            assert len(got) == min(k, len(allowed - set(history) - set(blocked))), body
            assert answer["filter"]["allowed_items"] == len(allowed)
            paths.add(answer["filter"]["path"])
        assert {"exact", "popular"} <= paths and paths & {"graph", "graph+exact"}
        events = {"events": [{"item_id": item} for item in attr_model.item_ids[20:26]]}
        assert client.post("/users/blocked-view/events", json=events).status_code == 200
        spec = {"category": {"in": [str(c) for c in CATEGORIES[:2]]}}
        view = client.get("/users/blocked-view/interests", params={"filter": json.dumps(spec), "top_n": 50})
        assert view.status_code == 200, view.text
        shown = [c["item_id"] for i in view.json()["interests"] for c in i["candidates"]]
        assert shown and not set(shown) & set(blocked) and set(shown) <= allowed_ids(attr_model, spec)


# ---------------------------------------------------------------- null and arbitrary JSON values (README.md#api-usage)

FILTER_ROUTES = ("recommend", "batch", "interests")


def post_filter(client: TestClient, route: str, spec: Any) -> httpx.Response:
    """One filter sent through one of the three routes that take it."""
    if route == "recommend":
        return client.post("/recommend", json={"user_id": "u", "k": 5, "filter": spec})
    if route == "batch":
        return client.post("/recommend/batch", json={"requests": [{"user_id": "u", "k": 5, "filter": spec}]})
    return client.get("/users/u/interests", params={"filter": json.dumps(spec), "top_n": 3})


def filter_loc(route: str, *rest: Any) -> list[Any]:
    head = {"recommend": ["body"], "batch": ["body", "requests", 0], "interests": ["query"]}[route]
    return [*head, "filter", *rest]


@pytest.mark.parametrize("route", FILTER_ROUTES)
@pytest.mark.parametrize(
    ("attribute", "op", "value"),
    [
        ("price", "gte", None),
        ("price", "lte", None),
        ("price", "gt", None),
        ("price", "lt", None),
        ("price", "eq", None),
        ("category", "eq", None),
        ("category", "in", None),
        ("category", "not_in", None),
        ("category", "in", ["shoes", None]),
        ("price", "not_in", [None]),
    ],
)
def test_a_null_filter_value_is_a_422_naming_the_operator(
    client: TestClient, route: str, attribute: str, op: str, value: Any
) -> None:
    """``null`` is no value: it was a 500 on ranges and matched nothing for ``eq`` on a category."""
    response = post_filter(client, route, {attribute: {op: value}})
    assert response.status_code == 422, response.text
    locs = [e["loc"] for e in response.json()["detail"]]
    expected = filter_loc(route, attribute, op) + ([value.index(None)] if isinstance(value, list) else [])
    assert expected in locs, response.text


def _published_filter_schema(client: TestClient) -> dict[str, Any]:
    body = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
    return next(s for s in body["properties"]["filter"]["anyOf"] if s.get("type") == "object")


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(CATEGORIES + MARKETS)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def filters_of(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """A filter over the published attributes and operators (now and then an unknown one), each
    operator given an arbitrary JSON value (null, booleans, huge integers, text, lists, objects)."""
    attributes = list(schema["properties"])
    unknown_name = st.text(max_size=5)
    names = draw(st.lists(st.sampled_from(attributes) | unknown_name, min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {}
    for name in names:
        ops = list(schema["properties"].get(name, {}).get("properties", {"eq": {}, "gte": {}}))
        chosen = draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 9)) == 0:
            chosen.append(draw(st.sampled_from(["like", "IN", ""])))
        spec[name] = {op: draw(JSON_SCALARS | JSON_SCALARS | JSON_VALUES) for op in chosen}
    return spec


def test_any_filter_built_from_the_published_schema_is_a_200_or_a_422_never_a_500(client: TestClient) -> None:
    """Property: filters generated from the model's own filter schema, with arbitrary JSON values in
    every place, on all three routes that take one: 200 or 422, nothing else."""
    schema = _published_filter_schema(client)
    assert {"category", "market", "price"} <= set(schema["properties"])

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(spec=filters_of(schema), route=st.sampled_from(FILTER_ROUTES))
    def check(spec: dict[str, Any], route: str) -> None:
        response = post_filter(client, route, spec)
        assert response.status_code in (200, 422), (route, spec, response.text)

    check()

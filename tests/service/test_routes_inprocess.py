"""Every route in process: TestClient, the embedded history store and the tiny ONNX model.

No server process, no Redis, no torch: the whole module runs in seconds. The end-to-end tests
(test_api.py and others) check the same behaviour through a real uvicorn and a real Redis.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from remi.contract import INTERACTION_COLUMNS, VERSIONS, read_artifact_manifest, read_current
from service.app import create_app
from service.config import ServiceSettings
from service.history import Appended, Event, HistoryUnavailable
from tests.service.tiny_model import N_INTERESTS, N_ITEMS, TinyModel, publish_tiny_version

TOKEN = {"authorization": "Bearer s3cret"}


@contextmanager
def serving(root: Path, **settings: Any) -> Iterator[TestClient]:
    """A started app (lifespan run) on ``root``; settings as ServiceSettings fields."""
    app = create_app(ServiceSettings(index_root=root, poll_seconds=0, admin_token="s3cret", **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(tiny_root: Path) -> Iterator[TestClient]:
    with serving(tiny_root) as c:
        yield c


@pytest.fixture
def empty_root(tmp_path: Path) -> Path:
    return tmp_path / "empty-root"


def recommend(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def errors(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


# ---------------------------------------------------------------- POST /recommend


def test_cold_start_serves_k_items_in_popularity_order(client: TestClient, tiny_model: TinyModel) -> None:
    answer = recommend(client, user_id="cold-user", k=7)
    assert answer["fallback"] == "cold_start" and answer["history_len"] == 0
    assert ids(answer) == tiny_model.most_popular(7)
    assert [item["interest"] for item in answer["items"]] == [None] * 7
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def test_answers_name_the_pair_being_served(client: TestClient, tiny_root: Path, tiny_model: TinyModel) -> None:
    answer = recommend(client, user_id="u")
    assert answer["index_version"] == read_current(tiny_root)
    assert answer["model_version"] == read_artifact_manifest(tiny_model.artifacts).model_version
    assert len(answer["items"]) == N_ITEMS  # k defaults to 50, more than the whole tiny catalogue


def test_a_history_drives_the_answer_and_seen_items_are_excluded(client: TestClient, tiny_model: TinyModel) -> None:
    history = tiny_model.item_ids[:4]
    answer = recommend(client, user_id="u", k=10, history=history, use_stored_history=False)
    assert answer["fallback"] is None and answer["history_len"] == 4
    assert len(ids(answer)) == 10 and not set(ids(answer)) & set(history)
    assert all(0 <= item["interest"] < N_INTERESTS for item in answer["items"])
    assert ids(answer) != tiny_model.most_popular(10)
    with_seen = recommend(client, user_id="u", k=10, history=history, use_stored_history=False, exclude_seen=False)
    assert set(ids(with_seen)) & set(history)  # a history item is its own best match


@pytest.mark.parametrize("merge", ["score", "quota", "round_robin"])
def test_every_merge_returns_k_distinct_unseen_items(client: TestClient, tiny_model: TinyModel, merge: str) -> None:
    history = tiny_model.item_ids[10:16]
    answer = recommend(client, user_id="u", k=12, history=history, merge=merge)
    assert len(ids(answer)) == len(set(ids(answer))) == 12 and not set(ids(answer)) & set(history)


def test_unknown_history_items_are_skipped_and_counted(client: TestClient, tiny_model: TinyModel) -> None:
    known = tiny_model.item_ids[:2]
    answer = recommend(client, user_id="u", history=["nope-1", known[0], "nope-2", known[1]])
    assert answer["unknown_items"] == 2 and answer["history_len"] == 2 and answer["fallback"] is None
    only_unknown = recommend(client, user_id="u", history=["nope-1"])
    assert only_unknown["fallback"] == "cold_start" and only_unknown["unknown_items"] == 1


def test_a_long_history_is_truncated_to_the_most_recent_items(client: TestClient, tiny_model: TinyModel) -> None:
    history = [tiny_model.item_ids[i % 10] for i in range(1000)]
    answer = recommend(client, user_id="u", k=3, history=history)
    assert answer["history_len"] == 200 and len(answer["items"]) == 3  # REMI_HISTORY_MAX_LEN


def test_stored_history_comes_first_unless_switched_off(client: TestClient, tiny_model: TinyModel) -> None:
    user, items = "stored-user", tiny_model.item_ids
    events = {"events": [{"item_id": item} for item in items[20:25]]}
    assert client.post(f"/users/{user}/events", json=events).status_code == 200
    stored = recommend(client, user_id=user, k=5)
    assert stored["history_len"] == 5 and not set(ids(stored)) & set(items[20:25])
    both = recommend(client, user_id=user, k=5, history=items[:2])
    assert both["history_len"] == 7
    ignored = recommend(client, user_id=user, k=5, use_stored_history=False)
    assert ignored["history_len"] == 0 and ignored["fallback"] == "cold_start"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": 501}, "k"),
        ({"user_id": "u", "k": "5"}, "k"),
        ({"user_id": ""}, "user_id"),
        ({"k": 5}, "user_id"),
        ({"user_id": "u", "merge": "best"}, "merge"),
        ({"user_id": "u", "history": "a,b"}, "history"),
        ({"user_id": "u", "exclude_seen": "perhaps"}, "exclude_seen"),
        ({"user_id": "u", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_request_is_a_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    assert any(err["loc"] == ["body", field] for err in errors(client.post("/recommend", json=body)))


def test_k_is_bounded_by_the_settings(empty_root: Path, tiny_root: Path) -> None:
    with serving(tiny_root, k_max=7) as small:
        assert len(recommend(small, user_id="u", k=7)["items"]) == 7
        [err] = errors(small.post("/recommend", json={"user_id": "u", "k": 8}))
        assert err["loc"] == ["body", "k"] and err["type"] == "less_than_equal" and err["ctx"] == {"le": 7}
        k_schema = small.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
        assert k_schema["maximum"] == 7 and "1..7" in k_schema["description"]
    with serving(empty_root) as default:  # another app in the same process keeps its own bound
        [err] = errors(default.post("/recommend", json={"user_id": "u", "k": 501}))
        assert err["ctx"] == {"le": 500}


def test_no_model_is_a_503_but_a_bad_request_is_still_a_422(empty_root: Path) -> None:
    with serving(empty_root) as client:
        response = client.post("/recommend", json={"user_id": "u"})
        assert response.status_code == 503 and "no model loaded" in response.json()["detail"]
        assert errors(client.post("/recommend", json={"user_id": "u", "k": 0}))


# ---------------------------------------------------------------- POST /recommend/batch


def test_batch_answers_every_user_in_order_as_if_alone(client: TestClient, tiny_model: TinyModel) -> None:
    items = tiny_model.item_ids
    requests = [
        {"user_id": "b0", "k": 3},
        {"user_id": "b1", "k": 7, "history": items[:4]},
        {"user_id": "b2", "k": 5, "history": items[30:33], "merge": "quota"},
    ]
    response = client.post("/recommend/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == ["b0", "b1", "b2"]
    assert [len(r["items"]) for r in results] == [3, 7, 5]
    for request, result in zip(requests, results, strict=True):
        assert result["items"] == recommend(client, **request)["items"]
    assert response.json()["took_ms"] >= 0


def test_batch_size_is_bounded_by_the_settings(tiny_root: Path) -> None:
    with serving(tiny_root, batch_max=2) as client:
        [err] = errors(client.post("/recommend/batch", json={"requests": [{"user_id": "u"}] * 3}))
        assert err["loc"] == ["body", "requests"] and err["type"] == "too_long" and err["ctx"]["max_length"] == 2
        assert client.post("/recommend/batch", json={"requests": [{"user_id": "u"}] * 2}).status_code == 200


def test_a_bad_request_inside_a_batch_is_named_by_its_position(client: TestClient) -> None:
    body = {"requests": [{"user_id": "ok"}, {"user_id": "v", "k": 0}]}
    assert ["body", "requests", 1, "k"] in [err["loc"] for err in errors(client.post("/recommend/batch", json=body))]
    assert errors(client.post("/recommend/batch", json={"requests": []}))[0]["type"] == "too_short"


# ---------------------------------------------------------------- /users/{user_id}/events and /history


def test_events_are_stored_and_read_back_oldest_first(client: TestClient, tiny_model: TinyModel) -> None:
    user = "event-user"
    events = [{"item_id": tiny_model.item_ids[i], "timestamp": 1_700_000_000 + i} for i in (3, 9, 27)]
    events.append({"item_id": "not-in-the-model"})
    before = int(time.time())
    stored = client.post(f"/users/{user}/events", json={"events": events})
    assert stored.status_code == 200 and stored.json() == {"user_id": user, "stored": 4, "history_len": 4}
    history = client.get(f"/users/{user}/history").json()
    assert history["user_id"] == user
    assert [(h["item_id"], h["timestamp"]) for h in history["items"][:3]] == [
        (e["item_id"], e["timestamp"]) for e in events[:3]
    ]
    # posted without a timestamp: stamped at arrival, in integer seconds
    assert history["items"][3]["item_id"] == "not-in-the-model"
    assert before <= history["items"][3]["timestamp"] <= time.time()
    assert [h["known"] for h in history["items"]] == [True, True, True, False]


def test_a_retry_of_untimed_events_with_the_same_idempotency_key_is_a_replay_not_a_conflict(
    client: TestClient,
) -> None:
    url, key, body = "/users/idem-late/events", {"idempotency-key": "late-1"}, {"events": [{"item_id": "a"}]}
    first = client.post(url, json=body, headers=key)
    time.sleep(1.1)  # the retry arrives in a later second: another arrival time, the same request
    again = client.post(url, json=body, headers=key)
    assert first.status_code == again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert isinstance(client.get("/users/idem-late/history").json()["items"][0]["timestamp"], int)


def test_an_unknown_user_has_an_empty_history(client: TestClient) -> None:
    assert client.get("/users/never-seen/history").json() == {"user_id": "never-seen", "items": []}


def test_an_idempotency_key_stores_once_and_refuses_other_events(client: TestClient) -> None:
    url, key = "/users/idem-user/events", {"idempotency-key": "retry-1"}
    first = client.post(url, json={"events": [{"item_id": "a"}, {"item_id": "b"}]}, headers=key)
    again = client.post(url, json={"events": [{"item_id": "a"}, {"item_id": "b"}]}, headers=key)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    conflict = client.post(url, json={"events": [{"item_id": "c"}]}, headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert len(client.get("/users/idem-user/history").json()["items"]) == 2


def test_bad_events_are_a_422_naming_the_field(tiny_root: Path) -> None:
    with serving(tiny_root, events_max=3) as client:
        url = "/users/u/events"
        assert errors(client.post(url, json={"events": [{"item_id": "a"}] * 4}))[0]["loc"] == ["body", "events"]
        assert client.post(url, json={"events": [{"item_id": "a"}] * 3}).status_code == 200
        [err] = errors(client.post(url, json={"events": [{"item_id": "a", "timestamp": -1}]}))
        assert err["loc"] == ["body", "events", 0, "timestamp"]
        assert errors(client.post("/users/%ff/events", json={"events": [{"item_id": "a"}]}))[0]["loc"] == [
            "path",
            "user_id",
        ]


def test_the_embedded_store_is_seeded_from_a_csv(tmp_path: Path, tiny_root: Path) -> None:
    csv = tmp_path / "seed.csv"
    csv.write_text(",".join(INTERACTION_COLUMNS) + "\nseeded,item-001,1\nseeded,item-002,2\n")
    with serving(tiny_root, seed_history=str(csv)) as client:
        items = client.get("/users/seeded/history").json()["items"]
        assert [i["item_id"] for i in items] == ["item-001", "item-002"]


class DownStore:
    """A history store that is down: every call fails as an unreachable Redis would."""

    async def get(self, user_id: str, limit: int) -> list[Event]:
        raise HistoryUnavailable("connection refused")

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        raise HistoryUnavailable("connection refused")

    async def append(self, user_id: str, events: list[Event], idempotency_key: str | None = None) -> Appended:
        raise HistoryUnavailable("connection refused")

    async def ping(self) -> bool:
        return False

    async def health(self) -> tuple[str, str | None]:
        return "unavailable", "connection refused"

    async def close(self) -> None:
        return None


def test_a_history_outage_falls_back_and_refuses_writes(tiny_root: Path, tiny_model: TinyModel) -> None:
    app = create_app(ServiceSettings(index_root=tiny_root, poll_seconds=0))
    app.state.remi.history = DownStore()
    with TestClient(app) as client:
        down = recommend(client, user_id="u", k=4)
        assert down["fallback"] == "history_unavailable" and ids(down) == tiny_model.most_popular(4)
        own = recommend(client, user_id="u", k=4, history=tiny_model.item_ids[:2])
        assert own["fallback"] == "history_unavailable" and own["history_len"] == 2
        no_lookup = recommend(client, user_id="u", k=4, use_stored_history=False)
        assert no_lookup["fallback"] == "cold_start"
        lost = client.post("/users/u/events", json={"events": [{"item_id": "a"}]})
        assert lost.status_code == 503 and "not stored" in lost.json()["detail"]
        assert client.get("/users/u/history").status_code == 503
        assert client.get("/users/u/interests").status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["history_store"] == "unavailable"


# ---------------------------------------------------------------- GET /users/{user_id}/interests


def test_interests_explain_routing_and_candidates(client: TestClient, tiny_model: TinyModel) -> None:
    user, history = "explained", tiny_model.item_ids[:6]
    client.post(f"/users/{user}/events", json={"events": [{"item_id": i} for i in history]})
    body = client.get(f"/users/{user}/interests", params={"top_n": 4}).json()
    assert body["history_len"] == 6 and body["unknown_items"] == 0
    assert [i["interest"] for i in body["interests"]] == list(range(N_INTERESTS))
    assert abs(sum(i["weight"] for i in body["interests"]) - 1) < 1e-3
    for interest in body["interests"]:
        assert 1.0 <= interest["effective_items"] <= 6.0
        assert len(interest["candidates"]) == 4 and not {c["item_id"] for c in interest["candidates"]} & set(history)
        assert {h["item_id"] for h in interest["history"]} <= set(history)
        weights = [h["weight"] for h in interest["history"]]
        assert weights == sorted(weights, reverse=True) and abs(sum(weights) - 1) < 1e-3


def test_interests_name_each_history_item_once_with_its_weights_summed(
    client: TestClient, tiny_model: TinyModel
) -> None:
    user, items = "repeats", tiny_model.item_ids[:3]
    history = [items[0], items[1], items[0], items[2], items[0], items[1]]
    client.post(f"/users/{user}/events", json={"events": [{"item_id": i} for i in history]})
    body = client.get(f"/users/{user}/interests").json()
    assert body["history_len"] == 6
    for interest in body["interests"]:
        named = [h["item_id"] for h in interest["history"]]
        assert sorted(named) == sorted(set(items)), named
        weights = [h["weight"] for h in interest["history"]]
        assert weights == sorted(weights, reverse=True) and abs(sum(weights) - 1) < 1e-3


def test_interests_of_a_user_without_history_are_empty(client: TestClient) -> None:
    body = client.get("/users/nobody/interests").json()
    assert body["interests"] == [] and body["history_len"] == 0 and body["collapsed_interests"] == 0


def test_interests_refuse_bad_input_and_need_a_model(client: TestClient, empty_root: Path) -> None:
    assert errors(client.get("/users/u/interests", params={"top_n": 0}))[0]["loc"] == ["query", "top_n"]
    assert errors(client.get("/users/%00/interests"))[0]["loc"] == ["path", "user_id"]
    with serving(empty_root) as no_model:
        assert no_model.get("/users/u/interests").status_code == 503
        assert errors(no_model.get("/users/u/interests", params={"top_n": 101}))  # validation first


# ---------------------------------------------------------------- health, readiness, version, metrics


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_with_and_without_a_model(
    client: TestClient, tiny_root: Path, tiny_model: TinyModel, empty_root: Path
) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model": read_artifact_manifest(tiny_model.artifacts).model_version,
        "index": read_current(tiny_root),
        "history_store": "ok",
        "history_error": None,
        "last_reload_error": None,
        "blocklist": "ok",
        "blocklist_error": None,
    }
    with serving(empty_root) as no_model:
        not_ready = no_model.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "not_ready"
        assert "no current index version" in not_ready.json()["last_reload_error"]


def test_version_describes_the_served_pair(client: TestClient, tiny_model: TinyModel, empty_root: Path) -> None:
    body = client.get("/version").json()
    manifest = read_artifact_manifest(tiny_model.artifacts)
    assert body["model_version"] == manifest.model_version and body["interests"] == N_INTERESTS
    assert body["items"] == N_ITEMS and body["index_kind"] == "flat" and body["index_recall_at_50"] is None
    assert body["index_version"] == client.get("/readyz").json()["index"]
    with serving(empty_root) as no_model:
        assert set(no_model.get("/version").json()) == {"remi", "model_version", "index_version"}


def test_metrics_count_requests_by_route_and_time_each_stage(client: TestClient) -> None:
    recommend(client, user_id="metrics-user")
    client.get("/users/metrics-user/history")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'remi_requests_total\{method="POST",route="/recommend",status="200"\} [1-9]', text)
    for stage in ("history", "model", "search", "merge"):
        assert f'remi_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'remi_fallbacks_total{reason="cold_start"}' in text
    assert 'route="/users/{user_id}/history"' in text and "metrics-user" not in text  # templates, never ids


# ---------------------------------------------------------------- POST /admin/reload


def test_admin_reload_needs_the_bearer_token(client: TestClient) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}):
        refused = client.post("/admin/reload", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    ok = client.post("/admin/reload", headers=TOKEN)
    assert ok.status_code == 200 and ok.json() == {"changed": False, "version": client.get("/readyz").json()["index"],
                                                   "error": None}  # fmt: skip


def test_admin_is_404_without_a_configured_token(tiny_root: Path) -> None:
    app = create_app(ServiceSettings(index_root=tiny_root, poll_seconds=0))
    with TestClient(app) as client:
        assert client.post("/admin/reload", headers=TOKEN).status_code == 404


def test_admin_reload_loads_a_newly_published_version(tiny_root: Path, tiny_model: TinyModel, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    old = read_current(root)
    with serving(root) as client:
        forced = client.post("/admin/reload", headers=TOKEN, json={"force": True}).json()
        assert forced == {"changed": True, "version": old, "previous": old, "error": None}
        from index.publish import reindex

        new = reindex(tiny_model.artifacts, root, kind="flat", force=True).index_version
        reloaded = client.post("/admin/reload", headers=TOKEN).json()
        assert reloaded == {"changed": True, "version": new, "previous": old, "error": None}
        assert recommend(client, user_id="u")["index_version"] == new
        assert errors(client.post("/admin/reload", headers=TOKEN, json={"force": "yes"}))[0]["loc"] == [
            "body",
            "force",
        ]


# ---------------------------------------------------------------- docs and start-up


def test_docs_and_openapi_are_served_locally(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "/docs-assets/" in html.text
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/recommend",
        "/recommend/batch",
        "/users/{user_id}/events",
        "/users/{user_id}/history",
        "/users/{user_id}/interests",
        "/healthz",
        "/readyz",
        "/version",
        "/admin/reload",
        "/admin/items/block",
        "/admin/items/unblock",
        "/admin/items/blocked",
    }
    for path, item in spec["paths"].items():  # every route declares what it answers
        for operation in item.values():
            assert "$ref" in str(operation["responses"]["200"]["content"]["application/json"]["schema"]), path


def test_the_app_never_builds_an_index_version(empty_root: Path, tiny_model: TinyModel) -> None:
    """Read side only: with no version yet the app waits for one (503), even given the artifacts."""
    with serving(empty_root, artifacts=tiny_model.artifacts) as client:
        assert client.get("/readyz").status_code == 503
        assert read_current(empty_root) is None and not (empty_root / VERSIONS).exists()
        publish_tiny_version(tiny_model.artifacts, empty_root)  # the reindex job's work
        assert client.post("/admin/reload", headers=TOKEN).json()["changed"] is True
        assert client.get("/readyz").status_code == 200


def test_in_process_tests_need_neither_torch_nor_redis() -> None:
    code = (
        "import sys, tempfile, pathlib\n"
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.config import ServiceSettings\n"
        "from tests.service.tiny_model import publish_tiny_version, write_tiny_artifacts\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "publish_tiny_version(write_tiny_artifacts(d / 'art').artifacts, d / 'root')\n"
        "app = create_app(ServiceSettings(index_root=d / 'root', poll_seconds=0))\n"
        "with TestClient(app) as c:\n"
        "    assert c.post('/recommend', json={'user_id': 'u', 'history': ['item-001']}).status_code == 200\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(type(app.state.remi.history).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "MemoryHistory"


def test_popularity_is_the_stable_cold_start_order(tiny_model: TinyModel) -> None:
    """The fixture's own check: distinct counts, so the cold-start order above is unambiguous."""
    assert len(np.unique(tiny_model.popularity)) == N_ITEMS

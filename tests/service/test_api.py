"""End to end: a real `remi serve` (uvicorn) on a free port, the real Redis, real artifacts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from remi.contract import read_artifact_manifest
from tests.service.conftest import Server


def uid() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def recommend(server: Server, **body) -> httpx.Response:
    return httpx.post(server.url + "/recommend", json=body, timeout=10)


def item_ids(artifacts: Path) -> list[str]:
    n = read_artifact_manifest(artifacts, check_hash=False).n_items
    return (artifacts / "item_ids.txt").read_text().split("\n")[:n]


def test_events_then_recommend_reflects_the_new_history(api: Server, artifacts_dir: Path) -> None:
    user, items = uid(), item_ids(artifacts_dir)
    cold = recommend(api, user_id=user, k=10).json()
    assert cold["fallback"] == "cold_start" and cold["history_len"] == 0
    events = [{"item_id": items[i], "timestamp": 1_700_000_000 + i} for i in (5, 17, 40, 41, 90)]
    stored = httpx.post(f"{api.url}/users/{user}/events", json={"events": events}, timeout=10)
    assert stored.status_code == 200 and stored.json()["history_len"] == 5
    history = httpx.get(f"{api.url}/users/{user}/history", timeout=10).json()["items"]
    assert [h["item_id"] for h in history] == [e["item_id"] for e in events] and all(h["known"] for h in history)
    warm = recommend(api, user_id=user, k=10).json()
    assert warm["fallback"] is None and warm["history_len"] == 5
    assert [i["item_id"] for i in warm["items"]] != [i["item_id"] for i in cold["items"]]
    assert all(isinstance(i["interest"], int) for i in warm["items"])
    # one more event changes the answer again
    httpx.post(f"{api.url}/users/{user}/events", json={"events": [{"item_id": items[300]}]}, timeout=10)
    again = recommend(api, user_id=user, k=10).json()
    assert again["history_len"] == 6 and again["items"] != warm["items"]


def test_exclude_seen_is_honoured(api: Server, artifacts_dir: Path) -> None:
    user, items = uid(), item_ids(artifacts_dir)
    open_list = recommend(api, user_id=user, k=20, history=items[:3], use_stored_history=False).json()
    # make the user's history exactly the items the model likes most for this context
    seen = items[:3] + [i["item_id"] for i in open_list["items"][:10]]
    with_seen = recommend(api, user_id=user, k=20, history=seen, use_stored_history=False, exclude_seen=False).json()
    assert {i["item_id"] for i in with_seen["items"]} & set(seen)
    excluded = recommend(api, user_id=user, k=20, history=seen, use_stored_history=False).json()
    assert not {i["item_id"] for i in excluded["items"]} & set(seen)
    assert len(excluded["items"]) == 20


def test_cold_start_serves_popularity(api: Server, artifacts_dir: Path) -> None:
    body = recommend(api, user_id=uid(), k=5).json()
    popularity = np.load(artifacts_dir / "item_popularity.npy")
    top = [item_ids(artifacts_dir)[i] for i in np.argsort(-popularity, kind="stable")[:5]]
    assert body["fallback"] == "cold_start" and [i["item_id"] for i in body["items"]] == top
    assert all(i["interest"] is None for i in body["items"])


def test_unknown_history_items_are_skipped_and_counted(api: Server, artifacts_dir: Path) -> None:
    known = item_ids(artifacts_dir)[:2]
    body = recommend(api, user_id=uid(), history=["nope-1", known[0], "nope-2", known[1]]).json()
    assert body["unknown_items"] == 2 and body["history_len"] == 2 and body["fallback"] is None
    only_unknown = recommend(api, user_id=uid(), history=["nope-1"]).json()
    assert only_unknown["fallback"] == "cold_start" and only_unknown["unknown_items"] == 1


def test_batch_answers_every_user_in_order(api: Server, artifacts_dir: Path) -> None:
    items = item_ids(artifacts_dir)
    users = [uid() for _ in range(3)]
    reqs = [{"user_id": users[0], "k": 3}, {"user_id": users[1], "k": 7, "history": items[:4]}, {"user_id": users[2]}]
    body = httpx.post(api.url + "/recommend/batch", json={"requests": reqs}, timeout=10).json()
    assert [r["user_id"] for r in body["results"]] == users
    assert [len(r["items"]) for r in body["results"]] == [3, 7, 50]
    single = recommend(api, user_id=users[1], k=7, history=items[:4]).json()
    assert single["items"] == body["results"][1]["items"]


@pytest.mark.parametrize("merge", ["score", "quota", "round_robin"])
def test_every_merge_returns_k_distinct_unseen_items(api: Server, artifacts_dir: Path, merge: str) -> None:
    history = item_ids(artifacts_dir)[10:30]
    body = recommend(api, user_id=uid(), k=30, history=history, merge=merge).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == len(set(ids)) == 30 and not set(ids) & set(history)


def test_interests_explain_routing_and_candidates(api: Server, artifacts_dir: Path) -> None:
    user, items = uid(), item_ids(artifacts_dir)
    events = [{"item_id": items[i]} for i in range(0, 24, 2)]
    httpx.post(f"{api.url}/users/{user}/events", json={"events": events}, timeout=10)
    body = httpx.get(f"{api.url}/users/{user}/interests", params={"top_n": 4}, timeout=10).json()
    manifest = read_artifact_manifest(artifacts_dir, check_hash=False)
    assert len(body["interests"]) == manifest.interests and body["history_len"] == 12
    for interest in body["interests"]:
        assert 1.0 <= interest["effective_items"] <= 12.0
        assert len(interest["candidates"]) == 4
        assert {h["item_id"] for h in interest["history"]} <= {e["item_id"] for e in events}
        weights = [h["weight"] for h in interest["history"]]
        assert weights == sorted(weights, reverse=True)
    assert abs(sum(i["weight"] for i in body["interests"]) - 1) < 1e-3


def test_health_version_and_metrics(api: Server) -> None:
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(api.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["history_store"] == "ok"
    version = httpx.get(api.url + "/version").json()
    assert version["index_version"] == ready["index"] and version["model_version"] == ready["model"]
    recommend(api, user_id=uid())
    text = httpx.get(api.url + "/metrics").text
    assert 'remi_requests_total{method="POST",route="/recommend",status="200"}' in text
    for stage in ("history", "model", "search", "merge"):
        assert f'remi_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'remi_fallbacks_total{reason="cold_start"}' in text


def test_admin_reload_needs_the_bearer_token(api: Server) -> None:
    url = api.url + "/admin/reload"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.post(url, headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["error"] is None


BAD_BODIES = [
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": 501}, "k"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "x" * 10_000}, "user_id"),
    ({"k": 5}, "user_id"),
    ({"user_id": "u", "history": [{"a": 1}]}, "history"),
    ({"user_id": "u", "history": "i1,i2"}, "history"),
    ({"user_id": "u", "history": [1.5]}, "history"),
    ({"user_id": "u", "merge": "best"}, "merge"),
    ({"user_id": "u", "k": "many"}, "k"),
    ({"user_id": "u", "exclude_seen": "perhaps"}, "exclude_seen"),
    ({"user_id": "u", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_input_is_a_422_naming_the_field(api: Server, body: dict, field: str) -> None:
    response = httpx.post(api.url + "/recommend", json=body, timeout=10)
    assert response.status_code == 422
    assert any(field in err["loc"] for err in response.json()["detail"]), response.text


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b"null", json.dumps({"user_id": "u", "k": 10**30}).encode()])
def test_malformed_json_is_a_422(api: Server, raw: bytes) -> None:
    """One status for every body that is not a valid request, as README and OpenAPI say."""
    response = httpx.post(api.url + "/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_a_long_history_is_truncated_and_one_over_the_limit_is_refused(api: Server, artifacts_dir: Path) -> None:
    """Up to REMI_HISTORY_ITEMS_MAX (1,000) ids the model reads the most recent REMI_HISTORY_MAX_LEN
    (200); a longer list is a 422 naming it, refused before its items are read (README.md#api-usage: a
    100k-item history used to be read whole)."""
    items = item_ids(artifacts_dir)
    history = [items[i % len(items)] for i in range(1000)]
    body = recommend(api, user_id=uid(), history=history, k=5).json()
    assert body["history_len"] == 200 and len(body["items"]) == 5  # REMI_HISTORY_MAX_LEN
    refused = recommend(api, user_id=uid(), history=history * 100, k=5)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "history"]


def test_bad_events_and_path_ids_are_4xx(api: Server) -> None:
    url = f"{api.url}/users/{uid()}/events"
    assert httpx.post(url, json={"events": []}).status_code == 422
    assert httpx.post(url, json={"events": [{"item_id": "a", "timestamp": -1}]}).status_code == 422
    assert httpx.post(url, json={"events": [{"item_id": None}]}).status_code == 422
    assert httpx.post(url, json={"events": [{"item_id": "a"}] * 1001}).status_code == 422
    assert httpx.get(f"{api.url}/users/{'x' * 300}/history").status_code == 422
    assert httpx.get(f"{api.url}/users/{uid()}/interests", params={"top_n": 0}).status_code == 422

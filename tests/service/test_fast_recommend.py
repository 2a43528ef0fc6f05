"""The fast path of POST /recommend (service/fast_recommend.py) answers exactly what the full app answers.

Two apps on the same tiny model, one with REMI_FAST_PATH on and one with it off, get the same
requests: good ones must get the same answers (all but ``took_ms``), bad ones the same status
and the same body, and plain requests must really take the fast path (else these comparisons
would compare the full app with itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.engine import Engine
from service import fast_recommend
from service.app import create_app
from service.config import ServiceSettings
from tests.service.tiny_model import TinyModel

JSON = {"content-type": "application/json"}


def _client(root: Path, fast: bool, **settings: Any) -> TestClient:
    app = create_app(ServiceSettings(index_root=root, poll_seconds=0, fast_path=fast, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def pair(tiny_root: Path) -> Iterator[tuple[TestClient, TestClient]]:
    with _client(tiny_root, True, max_body_bytes=4096) as fast, _client(tiny_root, False, max_body_bytes=4096) as full:
        yield fast, full


def _without_timing(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "took_ms"}


def good_bodies(model: TinyModel) -> list[dict[str, Any]]:
    items = model.item_ids
    return [
        {"user_id": "cold"},
        {"user_id": "u", "k": 7, "history": items[:4], "use_stored_history": False},
        {"user_id": "u", "k": 5, "history": items[:4], "exclude_seen": False},
        {"user_id": "u", "k": 9, "history": items[10:16], "merge": "quota"},
        {"user_id": "u", "k": 9, "history": items[10:16], "merge": "round_robin"},
        {"user_id": "u", "history": ["unknown-item", items[3]]},
        {"user_id": "ü-ñ 😀", "k": 1, "history": [items[2]]},
    ]


def test_plain_requests_get_the_same_answers_on_both_paths(
    pair: tuple[TestClient, TestClient], tiny_model: TinyModel, fast_calls: list[int]
) -> None:
    fast, full = pair
    for body in good_bodies(tiny_model):
        a, b = fast.post("/recommend", json=body), full.post("/recommend", json=body)
        assert a.status_code == b.status_code == 200, (body, a.text, b.text)
        assert _without_timing(a.json()) == _without_timing(b.json()), body
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
        assert int(a.headers["content-length"]) == len(a.content)
    assert len(fast_calls) == len(good_bodies(tiny_model))  # every one of them took the fast path


BAD = [  # (raw body, extra headers): each must be refused by the full app's own renderer
    (b'{"user_id": "u", "k": 0}', JSON),
    (b'{"user_id": "u", "k": 100000}', JSON),
    (b'{"user_id": "u", "k": "7"}', JSON),
    (b'{"user_id": "u", "k": 7.5}', JSON),
    (b'{"user_id": "u", "k": NaN}', JSON),
    (b'{"user_id": "u", "history": [1e309]}', JSON),
    (b'{"user_id": "\\ud800"}', JSON),
    (b'{"user_id": "u", "extra": 1}', JSON),
    (b'{"user_id": ""}', JSON),
    (b'{"k": 5}', JSON),
    (b'{"user_id": "u", "merge": "best"}', JSON),
    (b'{"user_id": "u", "exclude_seen": "yes"}', JSON),
    (b'{"user_id": "u"', JSON),
    (b"[]", JSON),
    (b"", JSON),
    (b"\xff\xfe", JSON),
    (b'{"user_id": "u"}', {"content-type": "text/plain"}),
    (b'{"user_id": "u"}', {}),
    (b'{"user_id": "u", "history": ["' + b"x" * 5000 + b'"]}', JSON),  # over max_body_bytes: 413
]


@pytest.mark.parametrize(("body", "headers"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_requests_get_the_full_apps_error_byte_for_byte(
    pair: tuple[TestClient, TestClient], body: bytes, headers: dict[str, str], fast_calls: list[int]
) -> None:
    fast, full = pair
    a = fast.post("/recommend", content=body, headers=headers)
    b = full.post("/recommend", content=body, headers=headers)
    assert a.status_code == b.status_code and a.status_code in (413, 422), (a.status_code, a.text)
    assert a.content == b.content
    assert not fast_calls


def test_a_chunked_body_or_a_query_string_takes_the_full_app(
    pair: tuple[TestClient, TestClient], fast_calls: list[int]
) -> None:
    fast, full = pair
    chunked = fast.post("/recommend", content=iter([b'{"user_id": ', b'"u", "k": 3}']), headers=JSON)
    assert chunked.status_code == 200 and len(chunked.json()["items"]) == 3
    query = fast.post("/recommend?k=9", json={"user_id": "u", "k": 3})
    assert query.status_code == 200 and len(query.json()["items"]) == 3
    assert not fast_calls


def test_no_model_is_the_full_apps_503(tmp_path: Path, fast_calls: list[int]) -> None:
    with _client(tmp_path / "empty", True) as fast, _client(tmp_path / "empty", False) as full:
        a, b = (c.post("/recommend", json={"user_id": "u"}) for c in (fast, full))
    assert a.status_code == b.status_code == 503 and a.json() == b.json()
    assert not fast_calls


def test_a_failing_engine_is_the_full_apps_500(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch, tiny_model: TinyModel
) -> None:
    def broken(self: Engine, queries: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(Engine, "recommend", broken)
    fast, full = pair
    body = {"user_id": "u", "history": tiny_model.item_ids[:3], "use_stored_history": False}
    a, b = fast.post("/recommend", json=body), full.post("/recommend", json=body)
    assert a.status_code == b.status_code == 500 and a.content == b.content


def test_fast_answers_are_counted_under_the_route(pair: tuple[TestClient, TestClient], fast_calls: list[int]) -> None:
    fast, _ = pair

    def served() -> float:
        text = fast.get("/metrics").text
        match = re.search(r'remi_requests_total\{method="POST",route="/recommend",status="200"\} (\S+)', text)
        return float(match.group(1)) if match else 0.0

    before = served()
    for _ in range(3):
        assert fast.post("/recommend", json={"user_id": "counted"}).status_code == 200
    assert len(fast_calls) == 3 and served() == before + 3


def _scope(path: str = "/recommend", method: str = "POST", query: bytes = b"", **headers: str) -> dict[str, Any]:
    fields = {
        "content_length": "content-length",
        "content_type": "content-type",
        "transfer_encoding": "transfer-encoding",
    }
    pairs = [(fields[name].encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "path": path, "method": method, "query_string": query, "headers": pairs}


PLAIN = {"content_length": "20", "content_type": "application/json"}


@pytest.mark.parametrize(
    ("scope", "eligible"),
    [
        (_scope(**PLAIN), 20),
        (_scope(content_length="20", content_type="application/json; charset=utf-8"), 20),
        (_scope(content_length="20", content_type="application/vnd.remi+json"), 20),
        ({**_scope(**PLAIN), "headers": [(b"content-length", b"20"), *_scope(**PLAIN)["headers"]]}, None),  # twice
        (_scope(content_length="+20", content_type="application/json"), None),
        (_scope(content_length="9999", content_type="application/json"), None),  # over the limit
        (_scope(transfer_encoding="chunked", content_type="application/json"), None),
        (_scope(content_length="20", content_type="text/plain"), None),
        (_scope(content_length="20"), None),
        (_scope(query=b"k=1", **PLAIN), None),
        (_scope(path="/recommend/", **PLAIN), None),
        (_scope(path="/recommend/batch", **PLAIN), None),
        (_scope(method="PUT", **PLAIN), None),
    ],
)
def test_only_plain_json_posts_within_the_body_limit_are_eligible(scope: dict[str, Any], eligible: int | None) -> None:
    assert fast_recommend.eligible(scope, max_body_bytes=1000) == eligible


def test_a_body_the_fast_path_refuses_is_decoded_once(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid JSON body that fails validation is handed to the full app already decoded: a 1 MiB
    bad body costs one decode, not two (docs/operations.md#scaling-the-api-horizontally)."""
    from service import http_guards

    calls: list[int] = []
    real = http_guards.decode_json

    def counting(body: bytes) -> Any:
        calls.append(len(body))
        return real(body)

    monkeypatch.setattr(fast_recommend, "decode_json", counting)
    monkeypatch.setattr(http_guards, "decode_json", counting)
    fast, _ = pair
    response = fast.post("/recommend", json={"user_id": "u", "history": [1] * 1500})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "history"]
    assert len(calls) == 1, calls

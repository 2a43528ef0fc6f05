"""One id grammar for user and item ids, in bodies and in paths (README.md#api-usage).

Ids are printable UTF-8 text of 1..256 characters: no control characters, none of the 66 Unicode
non-characters, no U+FFFD, no lone surrogates, and not ``.`` or ``..`` (a URL path cannot carry
those two: clients remove them as dot segments). ``/`` is allowed: a path takes it escaped as
``%2F`` (or plain) and every route that takes a user id in its path takes it whole, so an id that
a body accepts is reachable through the path routes and the other way round.

In process on the tiny model (histories in the embedded store), plus one real server for what
uvicorn does with ``%2F``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.config import ServiceSettings
from tests.service.conftest import start_server
from tests.service.tiny_model import TinyModel

TOKEN = {"authorization": "Bearer s3cret"}
NONCHARACTERS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + [
    chr(plane * 0x10000 + low) for plane in range(17) for low in (0xFFFE, 0xFFFF)
]


@pytest.fixture(scope="module")
def client(tiny_root: Path) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(index_root=tiny_root, poll_seconds=0, admin_token="s3cret"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def user_path(user_id: str, suffix: str) -> str:
    """The path of ``user_id`` as the TestClient must be given it: Starlette's TestClient unquotes the
    path httpx already decoded (scope path = unquote(unquote(raw))), so the id is escaped twice here;
    a real server decodes once (test_escaped_slashes_reach_the_user_through_a_real_server)."""
    once = quote(user_id, safe="").replace(".", "%2E")  # "." and "..": never a dot segment
    return f"/users/{quote(once, safe='')}/{suffix}"


def locs(response: httpx.Response) -> list[list]:
    return [e["loc"] for e in response.json()["detail"]]


def test_there_are_66_noncharacters() -> None:
    assert len(set(NONCHARACTERS)) == 66 and "\U0010ffff" in NONCHARACTERS and "\ufffe" in NONCHARACTERS


@pytest.mark.parametrize("bad", NONCHARACTERS)
def test_user_ids_with_a_noncharacter_are_refused_in_body_and_path(client: TestClient, bad: str) -> None:
    user = f"u{bad}x"
    single = client.post("/recommend", json={"user_id": user})
    assert single.status_code == 422 and ["body", "user_id"] in locs(single), single.text
    batch = client.post("/recommend/batch", json={"requests": [{"user_id": "ok"}, {"user_id": user}]})
    assert batch.status_code == 422 and ["body", "requests", 1, "user_id"] in locs(batch), batch.text
    for response in (
        client.post(user_path(user, "events"), json={"events": [{"item_id": "item-001"}]}),
        client.get(user_path(user, "history")),
        client.get(user_path(user, "interests")),
    ):
        assert response.status_code == 422 and ["path", "user_id"] in locs(response), response.text


@pytest.mark.parametrize("bad", [*NONCHARACTERS[::5], "\U0010ffff", "\x00", "a\x1fb", "\x85", "\ufffd"])
def test_item_ids_given_as_text_follow_the_id_grammar(client: TestClient, bad: str) -> None:
    cases = [
        ("/recommend", {"user_id": "u", "history": ["item-001", bad]}, ["body", "history", 1]),
        ("/recommend", {"user_id": "u", "exclude_items": [bad]}, ["body", "exclude_items", 0]),
        ("/recommend/batch", {"requests": [{"user_id": "u", "history": [bad]}]}, ["body", "requests", 0, "history", 0]),
        ("/users/u/events", {"events": [{"item_id": bad}]}, ["body", "events", 0, "item_id"]),
        ("/admin/items/block", {"item_ids": [bad]}, ["body", "item_ids", 0]),
    ]  # fmt: skip
    for path, body, field in cases:
        response = client.post(path, json=body, headers=TOKEN)
        assert response.status_code == 422, (path, response.text)
        assert locs(response) == [field], (path, response.text)


def test_filter_attribute_names_follow_the_id_grammar(client: TestClient) -> None:
    response = client.post("/recommend", json={"user_id": "u", "filter": {"cat\U0010ffff": {"eq": "a"}}})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "string_pattern_mismatch"


@pytest.mark.parametrize("user", [".", ".."])
def test_dot_segment_user_ids_are_refused_in_body_and_path(client: TestClient, user: str) -> None:
    """A path cannot carry them (clients drop dot segments), so the body refuses them too."""
    response = client.post("/recommend", json={"user_id": user})
    assert response.status_code == 422 and ["body", "user_id"] in locs(response), response.text
    escaped = user.replace(".", "%252E")  # %2E once the TestClient has decoded it (see user_path)
    response = client.get(f"/users/{escaped}/history")
    assert response.status_code == 422 and ["path", "user_id"] in locs(response), response.text


@pytest.mark.parametrize("user", ["a/b", "/", "a/", "/a", "a//b", "a/events", "a/history/interests", "x%2Fy", "a/../b"])
def test_a_user_id_with_a_slash_reaches_every_path_route(client: TestClient, tiny_model: TinyModel, user: str) -> None:
    item = tiny_model.item_ids[3]
    stored = client.post(user_path(user, "events"), json={"events": [{"item_id": item}]})
    assert stored.status_code == 200 and stored.json()["user_id"] == user, stored.text
    history = client.get(user_path(user, "history"))
    assert history.status_code == 200 and history.json()["user_id"] == user, history.text
    assert [i["item_id"] for i in history.json()["items"]][-1] == item
    interests = client.get(user_path(user, "interests"))
    assert interests.status_code == 200 and interests.json()["user_id"] == user, interests.text
    answer = client.post("/recommend", json={"user_id": user, "k": 3})
    assert answer.status_code == 200 and answer.json()["history_len"] >= 1, answer.text


ID_PARTS = st.sampled_from(
    ["/", ".", "..", "%", "%2F", "?", "#", " ", "\\", "\ufffd", "\U0010ffff", "\ufdd0", "\x00", "\x7f", "é", "用", "🙂"]
)
IDS = st.lists(ID_PARTS | st.text(st.characters(exclude_categories=("Cs",)), max_size=4), min_size=0, max_size=4).map(
    "".join
) | st.text(st.characters(exclude_categories=("Cs",)), max_size=6)


def test_body_and_path_accept_the_same_user_ids_and_reach_the_same_user(
    client: TestClient, tiny_model: TinyModel
) -> None:
    """Property over the id grammar: an id /recommend accepts stores and reads its own history
    through every path route, and an id the body refuses is refused (422 on the path's user_id) there."""
    seen: list[str] = []

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(user=IDS)
    def check(user: str) -> None:
        body = client.post("/recommend", json={"user_id": user, "k": 2})
        assert body.status_code in (200, 422), body.text
        accepted = body.status_code == 200
        item = tiny_model.item_ids[len(seen) % len(tiny_model.item_ids)]
        before = client.get(user_path(user, "history"))
        stored = client.post(user_path(user, "events"), json={"events": [{"item_id": item}]})
        history = client.get(user_path(user, "history"))
        interests = client.get(user_path(user, "interests"), params={"top_n": 2})
        for response in (stored, history, interests):
            assert response.status_code == (200 if accepted else 422), (repr(user), response.url, response.text)
            if accepted:
                assert response.json()["user_id"] == user
            else:
                assert ["path", "user_id"] in locs(response), (repr(user), response.text)
        if accepted:
            seen.append(user)
            items = [i["item_id"] for i in history.json()["items"]]
            # its own history, nobody else's: exactly one more item, the one just stored
            assert items == [i["item_id"] for i in before.json()["items"]] + [item], repr(user)
            again = client.post("/recommend", json={"user_id": user, "k": 2})
            assert again.json()["history_len"] >= 1

    check()
    assert any("/" in user for user in seen) and len(seen) > 20


def test_escaped_slashes_reach_the_user_through_a_real_server(tiny_root: Path, tiny_model: TinyModel) -> None:
    """Under uvicorn the path is %-decoded before routing: /users/a%2Fb/... is the user "a/b"."""
    server = start_server(tiny_root, None)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            item = tiny_model.item_ids[5]
            stored = http.post("/users/tenant%2F42/events", json={"events": [{"item_id": item}]})
            assert stored.status_code == 200 and stored.json()["user_id"] == "tenant/42", stored.text
            plain = http.get("/users/tenant/42/history")
            assert plain.status_code == 200 and [i["item_id"] for i in plain.json()["items"]] == [item]
            answer = http.post("/recommend", json={"user_id": "tenant/42", "k": 3})
            assert answer.status_code == 200 and answer.json()["history_len"] == 1, answer.text
            assert http.get("/users/%2E%2E/history").status_code == 422
            percent = http.post("/users/50%252F50/events", json={"events": [{"item_id": item}]})  # the id "50%2F50"
            assert percent.status_code == 200 and percent.json()["user_id"] == "50%2F50", percent.text
            metrics = http.get("/metrics").text
            assert 'route="/users/{user_id}/events"' in metrics and "tenant" not in metrics
    finally:
        server.stop()

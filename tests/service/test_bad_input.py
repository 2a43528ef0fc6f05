"""Hostile input against the app in process (no model needed: validation runs before any lookup).

Each case must be a 4xx naming the field, never a 500, and no error body may echo more than a
short prefix of what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import ServiceSettings

TOKEN = {"authorization": "Bearer s3cret"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("bad-input") / "root"
    app = create_app(ServiceSettings(index_root=root, poll_seconds=0, admin_token="s3cret"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def loc_of(response) -> list[list]:
    return [err["loc"] for err in response.json()["detail"]]


# Raw JSON text: these are not JSON values (or, for the escape, not Unicode), yet the stdlib
# decoder accepts them all.
NON_JSON_VALUES = ["NaN", "Infinity", "-Infinity", "1e309", '"\\ud800"']
ROUTES = [  # (path, body template with {v}, needs token, the field named)
    ("/recommend", '{{"user_id": "u", "history": ["a", {v}]}}', False, ["body", "history", 1]),
    ("/recommend", '{{"user_id": "u", "k": {v}}}', False, ["body", "k"]),
    ("/recommend/batch", '{{"requests": [{{"user_id": "u"}}, {{"user_id": "v", "k": {v}}}]}}', False,
     ["body", "requests", 1, "k"]),
    ("/users/u1/events", '{{"events": [{{"item_id": "a", "timestamp": {v}}}]}}', False,
     ["body", "events", 0, "timestamp"]),
    ("/admin/reload", '{{"force": {v}}}', True, ["body", "force"]),
]  # fmt: skip


@pytest.mark.parametrize("value", NON_JSON_VALUES)
@pytest.mark.parametrize(("path", "template", "token", "field"), ROUTES)
def test_non_json_numbers_and_lone_surrogates_are_a_422_naming_the_field(
    client: TestClient, value: str, path: str, template: str, token: bool, field: list
) -> None:
    response = client.post(path, content=template.format(v=value), headers={**JSON, **(TOKEN if token else {})})
    assert response.status_code == 422, response.text
    assert field in loc_of(response), response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("value", NON_JSON_VALUES)
def test_admin_reload_without_a_token_is_401_whatever_the_body(client: TestClient, value: str) -> None:
    """Auth is checked before the body's fields: an unauthenticated caller gets 401, never a 500
    and never a description of the body."""
    response = client.post("/admin/reload", content=f'{{"force": {value}}}', headers=JSON)
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("force", ["0.0", '"on"', '"yes"', "1", '"true"', "null"])
def test_admin_reload_refuses_a_non_boolean_force(client: TestClient, force: str) -> None:
    response = client.post("/admin/reload", content=f'{{"force": {force}}}', headers={**JSON, **TOKEN})
    assert response.status_code == 422 and ["body", "force"] in loc_of(response), response.text


@pytest.mark.parametrize("force", ["true", "false"])
def test_admin_reload_accepts_a_boolean_force(client: TestClient, force: str) -> None:
    response = client.post("/admin/reload", content=f'{{"force": {force}}}', headers={**JSON, **TOKEN})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"user_id=u",
        b'{"user_id": "\xff"}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000,
        b'{"k": 1' + b"0" * 5000 + b"}",
    ],
)
def test_a_body_that_is_not_json_is_a_422_json_invalid_or_naming_the_field(client: TestClient, raw: bytes) -> None:
    """One answer for every body that is not JSON (README and OpenAPI say the same): 422."""
    response = client.post("/recommend", content=raw, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] in ("json_invalid", "missing"), response.text
    assert len(response.content) < 2000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_without_a_json_content_type_is_a_422(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/recommend", content=b'{"user_id": "\xff' + b"x" * 5000 + b'"}', headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid" and "application/json" in response.text
    assert len(response.content) < 2000


def test_openapi_documents_422_for_bad_bodies_and_no_400(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/recommend", "/recommend/batch", "/users/{user_id}/events", "/admin/reload"):
        responses = spec["paths"][path]["post"]["responses"]
        assert "400" not in responses and "not JSON" in responses["422"]["description"], path
        assert "413" in responses, path
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "not JSON: 400" not in readme and "json_invalid" in readme


def test_error_bodies_echo_only_a_short_prefix_of_the_input(client: TestClient) -> None:
    huge = "x" * 200_000
    cases = [
        client.post("/recommend", json={"user_id": huge}),
        client.post("/recommend", json={"user_id": "u", huge: 1}),
        client.post("/recommend", json={"k": 5, "history": [huge] * 3}),
        client.post("/recommend/batch", json={"requests": [{"user_id": huge}]}),
        client.get(f"/users/{'y' * 5000}/history"),
        client.get("/users/u/interests", params={"top_n": "9" * 5000}),
    ]
    for response in cases:
        assert response.status_code == 422, response.text[:300]
        assert len(response.content) < 2000, response.text[:300]
        for err in response.json()["detail"]:
            assert len(str(err.get("input", ""))) <= 80, err


INVALID_PATH_IDS = ["%ff", "%fe", "%80", "%EF%BF%BD", "a%ffb", "a%00b", "%C2%85", "%EF%BF%BE"]


@pytest.mark.parametrize("escaped", INVALID_PATH_IDS)
def test_path_user_ids_with_invalid_utf8_or_control_characters_are_refused(client: TestClient, escaped: str) -> None:
    """Invalid UTF-8 escapes decode to U+FFFD: without this they all shared one history."""
    for response in (
        client.post(f"/users/{escaped}/events", json={"events": [{"item_id": "a"}]}),
        client.get(f"/users/{escaped}/history"),
        client.get(f"/users/{escaped}/interests"),
    ):
        assert response.status_code == 422, response.text
        assert ["path", "user_id"] in loc_of(response)


@pytest.mark.parametrize("user_id", ["\ufffd", "a\x00b", "tab\there", "\x85", "\ufdd0", "\uffff"])
def test_body_user_ids_with_u_fffd_or_control_characters_are_refused(client: TestClient, user_id: str) -> None:
    single = client.post("/recommend", json={"user_id": user_id})
    assert single.status_code == 422 and ["body", "user_id"] in loc_of(single), single.text
    batch = client.post("/recommend/batch", json={"requests": [{"user_id": "ok"}, {"user_id": user_id}]})
    assert batch.status_code == 422 and ["body", "requests", 1, "user_id"] in loc_of(batch), batch.text


def test_unicode_user_ids_keep_their_own_histories(client: TestClient) -> None:
    ids = ["é", "e\u0301", "用户", "🙂", "a b"]
    for n, user in enumerate(ids):
        stored = client.post(f"/users/{user}/events", json={"events": [{"item_id": f"i{n}"}] * (n + 1)})
        assert stored.status_code == 200, stored.text
    for n, user in enumerate(ids):
        items = client.get(f"/users/{user}/history").json()["items"]
        assert [i["item_id"] for i in items] == [f"i{n}"] * (n + 1)


def test_docs_load_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", html.text)
        urls = [a or b for a, b in urls]
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "http://" not in html.text and "https://" not in html.text.replace("https://github.com", "")
        for url in urls:
            assert client.get(url).status_code == 200, url
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def test_swagger_ui_turns_its_online_validator_off(client: TestClient) -> None:
    """Swagger UI's default validatorUrl loads a badge from validator.swagger.io when /docs is
    opened under a host name other than localhost; null turns it off."""
    html = client.get("/docs").text
    config = re.search(r"SwaggerUIBundle\(\{(.*?)\}\)", html, re.S)
    assert config is not None, html
    assert re.search(r'"?validatorUrl"?\s*:\s*null', config.group(1)), config.group(1)
    assert "validator.swagger.io" not in html


# ------------------------------------- work before refusal is bounded (docs/operations.md#scaling-the-api-horizontally)

TOO_LONG = [  # (path, body, token, the field named): every list one over its default limit
    ("/recommend", {"user_id": "u", "history": ["a"] * 1001}, False, ["body", "history"]),
    ("/recommend", {"user_id": "u", "exclude_items": ["a"] * 1001}, False, ["body", "exclude_items"]),
    ("/recommend", {"user_id": "u", "filter": {"c": {"in": ["a"] * 1001}}}, False, ["body", "filter", "c", "in"]),
    ("/recommend/batch", {"requests": [{"user_id": "u"}] * 257}, False, ["body", "requests"]),
    ("/recommend/batch", {"requests": [{"user_id": "u"}, {"user_id": "v", "history": [1] * 1001}]}, False,
     ["body", "requests", 1, "history"]),
    ("/users/u/events", {"events": [{"item_id": "a"}] * 1001}, False, ["body", "events"]),
    ("/admin/items/block", {"item_ids": ["a"] * 1001}, True, ["body", "item_ids"]),
    ("/admin/items/unblock", {"item_ids": ["a"] * 1001}, True, ["body", "item_ids"]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "token", "field"), TOO_LONG)
def test_every_list_over_its_limit_is_a_422_naming_it(
    client: TestClient, path: str, body: dict, token: bool, field: list
) -> None:
    response = client.post(path, json=body, headers=TOKEN if token else {})
    assert response.status_code == 422, response.text[:300]
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(field, "too_long")]


BAD_ITEMS = [  # a list within its limit whose every item is bad: refused at the first one
    ("/recommend", {"user_id": "u", "history": [True] * 1000}, False, ["body", "history", 0]),
    ("/recommend", {"user_id": "u", "exclude_items": [None] * 1000}, False, ["body", "exclude_items", 0]),
    ("/recommend", {"user_id": "u", "filter": {"c": {"in": [{}] * 1000}}}, False, ["body", "filter", "c", "in", 0]),
    ("/recommend/batch", {"requests": [{"user_id": ""}] * 256}, False, ["body", "requests", 0, "user_id"]),
    ("/users/u/events", {"events": [{"item_id": True}] * 1000}, False, ["body", "events", 0, "item_id"]),
    ("/admin/items/block", {"item_ids": [[]] * 1000}, True, ["body", "item_ids", 0]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "token", "field"), BAD_ITEMS)
def test_a_list_of_bad_items_is_refused_at_its_first_bad_item(
    client: TestClient, path: str, body: dict, token: bool, field: list
) -> None:
    """One error per list, not one per item: 1,000 bad items cost what one does (and the 422 stays small)."""
    response = client.post(path, json=body, headers=TOKEN if token else {})
    assert response.status_code == 422, response.text[:300]
    assert {tuple(e["loc"][: len(field)]) for e in response.json()["detail"]} == {tuple(field)}, response.text[:600]
    assert len(response.content) < 2000


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/recommend", lambda extra: {"user_id": "u", **extra}, ["body"]),
        ("/recommend/batch", lambda extra: {"requests": [{"user_id": "u", **extra}]}, ["body", "requests", 0]),
        ("/users/u/events", lambda extra: {"events": [{"item_id": "a", **extra}]}, ["body", "events", 0]),
        ("/recommend", lambda extra: {"user_id": "u", "filter": {"c": {"eq": "a", **extra}}}, ["body", "filter", "c"]),
    ],
)
def test_unknown_fields_are_refused_a_few_at_a_time(client: TestClient, path: str, body, where: list) -> None:  # type: ignore[no-untyped-def]
    """5,000 unknown keys are one short 422 naming the first few, not 5,000 errors."""
    response = client.post(path, json=body({f"x{i}": i for i in range(5000)}))
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert 1 <= len(detail) <= 10 and all(e["loc"][: len(where)] == where for e in detail), response.text[:600]
    assert detail[0]["type"] == "extra_forbidden" and detail[0]["loc"] == [*where, "x0"]
    assert len(response.content) < 4000


def test_a_non_json_value_behind_a_large_valid_prefix_still_names_its_field(client: TestClient) -> None:
    """The decoder's strict fallback (NaN, lone surrogates, ...) still names the field in a large body."""
    prefix = ",".join(f'"item-{i}"' for i in range(990))
    for value, field in (("NaN", ["body", "k"]), ('"\\udc00"', ["body", "merge"]), ("1e400", ["body", "k"])):
        body = f'{{"user_id": "u", "history": [{prefix}], "k": 5, "{field[-1]}": {value}}}'
        response = client.post("/recommend", content=body, headers=JSON)
        assert response.status_code == 422, response.text[:300]
        assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(field, "json_invalid")], value


# ---------------------------------------------------------------- exact JSON integers, timestamps within the skew (A11)

JSON_INT_MAX = 2**53 - 1  # I-JSON: the integers every JSON parser reads exactly (inside int64)


@pytest.mark.parametrize("timestamp", [10**39, 2**63, 2**63 - 1, 2**53, -1])
def test_event_timestamps_outside_exact_json_integers_or_far_ahead_are_a_422_naming_the_field(
    client: TestClient, timestamp: int
) -> None:
    events = [{"item_id": "a"}, {"item_id": "b", "timestamp": timestamp}]
    response = client.post("/users/ts-user/events", json={"events": events})
    assert response.status_code == 422, response.text
    assert loc_of(response) == [["body", "events", 1, "timestamp"]]


def test_event_timestamps_past_the_allowed_clock_skew_are_refused_and_within_it_stored(
    tmp_path: Path,
) -> None:
    """REMI_EVENT_MAX_FUTURE_S (default one day) bounds how far ahead of the server's clock a timestamp may be."""
    import time

    app = create_app(ServiceSettings(index_root=tmp_path / "root", poll_seconds=0, event_max_future_s=3600))
    now = int(time.time())
    with TestClient(app, raise_server_exceptions=False) as small:
        ahead = small.post("/users/skew/events", json={"events": [{"item_id": "a", "timestamp": now + 7200}]})
        assert ahead.status_code == 422 and loc_of(ahead) == [["body", "events", 0, "timestamp"]], ahead.text
        assert "3600" in ahead.json()["detail"][0]["msg"]
        near = small.post("/users/skew/events", json={"events": [{"item_id": "a", "timestamp": now + 600}]})
        assert near.status_code == 200, near.text
    fields = ServiceSettings.model_fields
    assert fields["event_max_future_s"].default == 86400 and fields["event_max_future_s"].description


@pytest.mark.parametrize("item", [2**53, -(2**53), 2**63, -(2**63) - 1, 10**30])
def test_integer_item_ids_outside_exact_json_integers_are_a_422_naming_the_item(client: TestClient, item: int) -> None:
    cases = [
        ("/recommend", {"user_id": "u", "history": ["a", item]}, ["body", "history", 1]),
        ("/recommend", {"user_id": "u", "exclude_items": [item]}, ["body", "exclude_items", 0]),
        ("/recommend/batch", {"requests": [{"user_id": "u", "history": [item]}]},
         ["body", "requests", 0, "history", 0]),
        ("/users/u/events", {"events": [{"item_id": item}]}, ["body", "events", 0, "item_id"]),
        ("/admin/items/block", {"item_ids": [item]}, ["body", "item_ids", 0]),
    ]  # fmt: skip
    for path, body, field in cases:
        response = client.post(path, json=body, headers=TOKEN)
        assert response.status_code == 422, (path, response.text)
        assert loc_of(response) == [field], (path, response.text)


def test_integer_fields_take_every_exact_json_integer_and_larger_ids_as_text(client: TestClient) -> None:
    events = [{"item_id": JSON_INT_MAX}, {"item_id": -JSON_INT_MAX}, {"item_id": str(2**63)}]
    stored = client.post("/users/big-ints/events", json={"events": events})
    assert stored.status_code == 200, stored.text
    items = client.get("/users/big-ints/history").json()["items"]
    assert [i["item_id"] for i in items] == [str(JSON_INT_MAX), str(-JSON_INT_MAX), str(2**63)]
    page = client.get("/admin/items/blocked", params={"offset": 2**53}, headers=TOKEN)
    assert page.status_code == 422 and loc_of(page) == [["query", "offset"]], page.text


def test_admin_reload_refuses_unknown_keys_a_few_at_a_time(client: TestClient) -> None:
    """Its body was FastAPI's embedded one, which ignored unknown keys: 1 MiB of them answered 200."""
    body = {"force": False, **{f"x{i}": i for i in range(5000)}}
    response = client.post("/admin/reload", json=body, headers=TOKEN)
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert 1 <= len(detail) <= 10 and detail[0]["loc"] == ["body", "x0"] and detail[0]["type"] == "extra_forbidden"
    assert client.post("/admin/reload", headers=TOKEN).status_code == 200  # no body: force false, as before
    assert client.post("/admin/reload", json={}, headers=TOKEN).status_code == 200

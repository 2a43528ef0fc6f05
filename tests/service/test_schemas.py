"""The settings-bounded request models fail exactly as fixed pydantic bounds would.

The models are defined once (service/schemas.py) and read the app's limits at validation time
(service/limits.py); the API's 422 bodies must not change for it. Each case is validated twice:
by the static model under the limits, and by a reference model with the bounds written in.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from service import limits
from service.schemas import BatchRequest, EventIn, EventsRequest, JsonInt, RecommendRequest


def reference_models(bounds: limits.RequestLimits, fail_fast: bool = False) -> dict[str, type[BaseModel]]:
    class Recommend(RecommendRequest):
        k: JsonInt = Field(50, ge=1, le=bounds.k_max)

    class Batch(BatchRequest):
        requests: list[Recommend] = Field(min_length=1, max_length=bounds.batch_max, fail_fast=fail_fast)

    class Events(EventsRequest):
        events: list[EventIn] = Field(min_length=1, max_length=bounds.events_max, fail_fast=fail_fast)

    return {"recommend": Recommend, "batch": Batch, "events": Events}


STATIC: dict[str, type[BaseModel]] = {"recommend": RecommendRequest, "batch": BatchRequest, "events": EventsRequest}
ONE = {"user_id": "u"}
CASES: list[tuple[str, Any]] = [
    ("recommend", {"user_id": "u", "k": 1}),
    ("recommend", {"user_id": "u", "k": 7}),
    ("recommend", {"user_id": "u", "k": 8}),
    ("recommend", {"user_id": "u", "k": 501}),
    ("recommend", {"user_id": "u", "k": 0}),
    ("recommend", {"user_id": "u", "k": 7.0}),
    ("recommend", {"user_id": "u", "k": 8.5}),
    ("recommend", {"user_id": "u", "k": "8"}),
    ("recommend", {"user_id": "", "k": 9, "merge": "best", "colour": 1}),
    ("batch", {"requests": []}),
    ("batch", {"requests": [ONE]}),
    ("batch", {"requests": [ONE] * 3}),
    ("batch", {"requests": [ONE] * 4}),
    ("batch", {"requests": [{"bad": 1}] * 4}),
    ("batch", {"requests": [ONE, {"user_id": "v", "k": 8}]}),
    ("batch", {"requests": "no"}),
    ("batch", {"requests": {"user_id": "u"}}),
    ("events", {"events": [{"item_id": "a"}] * 4}),
    ("events", {"events": [{"item_id": "a"}] * 5}),
    ("events", {"events": [{"item_id": "a"}] * 6 + [{"item_id": None}]}),
    ("events", {"events": [{"item_id": "a", "timestamp": -1}]}),
    ("events", {"events": None}),
]


def outcome(model: type[BaseModel], payload: Any) -> Any:
    try:
        return model.model_validate(payload).model_dump()
    except ValidationError as exc:  # ctx may hold the exception a validator raised: compare its text
        errors = exc.errors(include_url=False)
        return [{**err, "ctx": {k: str(v) for k, v in err["ctx"].items()}} if "ctx" in err else err for err in errors]


@pytest.mark.parametrize(
    "bounds", [limits.RequestLimits(1, 1, 1), limits.RequestLimits(7, 3, 4), limits.RequestLimits.defaults()]
)
@pytest.mark.parametrize(("kind", "payload"), CASES)
def test_bounded_models_fail_exactly_as_fixed_bounds(bounds: limits.RequestLimits, kind: str, payload: Any) -> None:
    expected = outcome(reference_models(bounds)[kind], payload)
    if not (isinstance(expected, list) and expected[0]["type"] == "too_long"):
        # a list within its bound stops at its first bad item (service/schemas.py FailFast); lengths come first
        expected = outcome(reference_models(bounds, fail_fast=True)[kind], payload)
    with limits.applied(bounds):
        assert outcome(STATIC[kind], payload) == expected


def test_outside_an_app_the_settings_defaults_apply() -> None:
    assert limits.current() == limits.RequestLimits.defaults() == limits.RequestLimits(500, 256, 1000)
    assert RecommendRequest.model_validate({"user_id": "u", "k": 500}).k == 500
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate({"user_id": "u", "k": 501})


def test_the_json_schema_states_the_bounds_in_effect() -> None:
    with limits.applied(limits.RequestLimits(7, 3, 4)):
        k = RecommendRequest.model_json_schema()["properties"]["k"]
        assert (k["minimum"], k["maximum"], k["description"]) == (1, 7, "How many items (1..7).")
        assert BatchRequest.model_json_schema()["properties"]["requests"]["maxItems"] == 3
        assert EventsRequest.model_json_schema()["properties"]["events"]["maxItems"] == 4

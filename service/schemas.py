"""Request and response bodies of the HTTP API.

Request models are built by :func:`request_models` because their bounds (largest k, batch and
event counts) come from settings; a bad value is a 422 whose ``loc`` names the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from annotated_types import Ge
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints

MergeName = Literal["score", "quota", "round_robin"]
Fallback = Literal["cold_start", "history_unavailable"]


def _json_integer(value: object) -> object:
    """JSON integers only: 5 and 5.0 pass (JSON Schema "integer"), "5" and true do not."""
    if isinstance(value, (str, bool, bytes)):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# User ids are opaque printable text. Refused: C0/C1 control characters, the BMP non-characters
# and U+FFFD. Why U+FFFD: servers decode an invalid UTF-8 %-escape in a path (/users/%ff,
# /users/%fe, /users/%80) to U+FFFD, so all of those (and a literal %EF%BF%BD) would share one
# history; refusing it is the only way to refuse invalid UTF-8 once the path is decoded.
# The same pattern is published in the OpenAPI schema (clients and fuzzers see the rule).
USER_ID_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\ufdd0-\ufdef\ufffd-\uffff]+$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)


def check_user_id(value: str) -> str:
    if not _USER_ID_RE.match(value):
        raise ValueError(
            "user ids must be valid UTF-8 text without control characters, non-characters or U+FFFD "
            "(an invalid %-escape in the path decodes to U+FFFD)"
        )
    return value


# Ids are bounded so a client cannot make us hash or store megabytes per key.
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    AfterValidator(check_user_id),
    Field(json_schema_extra={"pattern": USER_ID_PATTERN}),
]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)] | JsonInt


class Item(BaseModel):
    item_id: str
    score: float
    interest: int | None = Field(description="Index of the interest that produced the item; null for popularity.")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    model_version: str
    index_version: str
    history_len: int = Field(description="Known history items the model saw (after skipping unknown ids).")
    unknown_items: int = Field(0, description="History item ids the model does not know (skipped).")
    fallback: Fallback | None
    took_ms: float


class BatchResponse(BaseModel):
    results: list[RecommendResponse]
    took_ms: float


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    timestamp: Annotated[int, Ge(0), BeforeValidator(_json_integer)] | None = Field(
        None, description="Unix seconds; optional."
    )


class EventsResponse(BaseModel):
    user_id: str
    stored: int
    history_len: int


class HistoryItem(BaseModel):
    item_id: str
    timestamp: int | None
    known: bool = Field(description="Whether the serving model knows this item.")


class HistoryResponse(BaseModel):
    user_id: str
    items: list[HistoryItem]


class Reason(BaseModel):
    detail: str


class ValidationErrorItem(BaseModel):
    """One problem with the input; ``input`` is at most a short prefix of the value sent."""

    type: str = Field(description="e.g. missing, int_parsing, string_too_long, json_invalid.")
    loc: list[str | int] = Field(description='Where: ["body", "user_id"], ["path", "user_id"], ["body", <offset>].')
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorBody(BaseModel):
    detail: list[ValidationErrorItem]


BAD_INPUT_422 = {
    "model": ValidationErrorBody,
    "description": (
        "Invalid input, naming the field in `loc`. A body that is not JSON (malformed, not UTF-8, "
        "NaN/Infinity, a number outside the double range, a lone surrogate, or a content type that "
        "is not application/json) is also a 422: `json_invalid` where the text does not parse."
    ),
}
TOO_LARGE_413 = {"model": Reason, "description": "Request body over REMI_MAX_BODY_BYTES"}


def request_models(k_max: int, batch_max: int, events_max: int) -> tuple[type[BaseModel], ...]:
    """The request bodies with the configured bounds."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: UserId
        k: JsonInt = Field(50, ge=1, le=k_max, description=f"How many items (1..{k_max}).")
        history: list[ItemId] | None = Field(
            None,
            description=(
                "Raw item ids, oldest first. Appended after the stored history (as the most recent "
                "items) unless use_stored_history is false, in which case they replace it. Longer "
                "lists are truncated to their most recent items, never rejected."
            ),
        )
        use_stored_history: StrictBool = Field(True, description="Read the user's stored history.")
        exclude_seen: StrictBool = Field(True, description="Never recommend an item of the history.")
        merge: MergeName = Field(
            "score",
            description="score: global by score; quota: each interest a share by its weight; round_robin.",
        )

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: list[RecommendRequest] = Field(min_length=1, max_length=batch_max)

    class EventsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        events: list[EventIn] = Field(min_length=1, max_length=events_max)

    return RecommendRequest, BatchRequest, EventsRequest

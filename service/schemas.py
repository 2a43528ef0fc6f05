"""Request and response bodies of the HTTP API, and the path and header parameters they share.

Every model is defined once, here. The bounds that come from settings (largest k, batch and
event count) are checked by validators that read the limits of the app handling the request
(service/limits.py) and fail exactly as a fixed ``Field(le=...)`` or ``max_length`` would: the
same 422 error type, message and ``loc`` naming the field. The same limits are written into the
JSON schema, so the OpenAPI document states the bounds the validators apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from annotated_types import Ge
from fastapi import Header, Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service import limits
from service.config import ServiceSettings

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


# ---------------------------------------------------------------- bounds from settings


def _at_most_k_max(k: int) -> int:
    """``Field(le=k_max)`` with the app's k_max: the same error type, message and context."""
    k_max = limits.current().k_max
    if k > k_max:
        raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}", {"le": k_max})
    return k


def _k_schema(schema: dict[str, Any]) -> None:
    k_max = limits.current().k_max
    schema["maximum"] = k_max
    schema["description"] = f"How many items (1..{k_max})."


LimitName = Literal["batch_max", "events_max", "filter_values_max", "exclude_items_max"]


def _at_most(limit: LimitName) -> BeforeValidator:
    """``max_length`` with the app's limit, checked on the raw list before its items, as pydantic's is."""

    def check(value: object) -> object:
        most: int = getattr(limits.current(), limit)
        if isinstance(value, list) and len(value) > most:
            plural = "" if most == 1 else "s"
            raise PydanticCustomError(
                "too_long",
                f"List should have at most {{max_length}} item{plural} after validation, not {{actual_length}}",
                {"field_type": "List", "max_length": most, "actual_length": len(value)},
            )
        return value

    return BeforeValidator(check)


def _max_items(limit: LimitName) -> Callable[[dict[str, Any]], None]:
    def publish(schema: dict[str, Any]) -> None:
        schema["maxItems"] = getattr(limits.current(), limit)

    return publish


def _at_most_attributes(value: object) -> object:
    """A filter names at most REMI_FILTER_ATTRIBUTES_MAX attributes (``max_length`` of a dict)."""
    most = limits.current().filter_attributes_max
    if isinstance(value, dict) and len(value) > most:
        raise PydanticCustomError(
            "too_long",
            "Dictionary should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "Dictionary", "max_length": most, "actual_length": len(value)},
        )
    return value


def _max_properties(schema: dict[str, Any]) -> None:
    schema["maxProperties"] = limits.current().filter_attributes_max


# ---------------------------------------------------------------- request filters


# A value of a filter condition: text or an integer for categorical attributes (integers compare
# as their decimal text), a number for numeric ones. Booleans are refused (a categorical column of
# booleans holds the text "true" / "false").
def _filter_value(value: object) -> object:
    """Text (up to 256 characters) or a finite JSON number; one error naming the value otherwise."""
    if isinstance(value, str):
        if len(value) > 256:
            raise PydanticCustomError("string_too_long", "String should have at most 256 characters")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise PydanticCustomError("filter_value_type", "A filter value must be a string or a finite number")


def _filter_number(value: object) -> object:
    """A finite JSON number (not a string, not a boolean) for a range bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PydanticCustomError("filter_number_type", "A range bound must be a finite number")
    return float(value)


FilterValue = Annotated[str | int | float, BeforeValidator(_filter_value)]
FilterNumber = Annotated[float, BeforeValidator(_filter_number)]
FilterValues = Annotated[list[FilterValue], _at_most("filter_values_max")]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RANGE_OPS = ("gte", "lte", "gt", "lt")


class AttributeCondition(BaseModel):
    """Conditions on one attribute, all of which must hold (an AND).

    ``eq`` / ``in`` / ``not_in`` work on both kinds (categorical: text or integers; numeric:
    numbers); ``gte`` / ``lte`` / ``gt`` / ``lt`` on numeric attributes only. An item without a
    value for the attribute matches no condition on it (``not_in`` included).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    eq: FilterValue | None = Field(None, description="The attribute equals this value.")
    in_: FilterValues | None = Field(
        None,
        alias="in",
        description="The attribute is one of these values.",
        json_schema_extra=_max_items("filter_values_max"),
    )
    not_in: FilterValues | None = Field(
        None,
        description="The attribute has a value and it is none of these.",
        json_schema_extra=_max_items("filter_values_max"),
    )
    gte: FilterNumber | None = Field(None, description="Numeric attribute >= this.")
    lte: FilterNumber | None = Field(None, description="Numeric attribute <= this.")
    gt: FilterNumber | None = Field(None, description="Numeric attribute > this.")
    lt: FilterNumber | None = Field(None, description="Numeric attribute < this.")

    @model_validator(mode="after")
    def _some_operator(self) -> AttributeCondition:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "filter_empty_condition", "A condition needs at least one of eq, in, not_in, gte, lte, gt, lt"
            )
        return self

    def operators(self) -> dict[str, Any]:
        """The operators given, by their JSON names (``in``, not ``in_``)."""
        return {("in" if name == "in_" else name): getattr(self, name) for name in sorted(self.model_fields_set)}


RequestFilter = Annotated[dict[AttributeName, AttributeCondition], BeforeValidator(_at_most_attributes)]
FILTER_DESCRIPTION = (
    "Only items whose attributes satisfy every condition, e.g. "
    '{"category": {"in": ["shoes", "bags"]}, "price": {"gte": 10, "lt": 100}, "brand": {"not_in": ["acme"]}}. '
    "Attribute names are those exported with the model (`remi export --item-attributes`); an unknown "
    "attribute, or a range on a categorical attribute, is a 422 naming the field."
)


# ---------------------------------------------------------------- requests


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    k: Annotated[JsonInt, AfterValidator(_at_most_k_max)] = Field(
        50, ge=1, description="How many items (1..k_max).", json_schema_extra=_k_schema
    )
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
    filter: RequestFilter | None = Field(None, description=FILTER_DESCRIPTION, json_schema_extra=_max_properties)
    exclude_items: Annotated[list[ItemId], _at_most("exclude_items_max")] | None = Field(
        None,
        description="Raw item ids never to return (e.g. already shown); unknown ids are ignored.",
        json_schema_extra=_max_items("exclude_items_max"),
    )

    @property
    def filtered(self) -> bool:
        """Whether the answer is restricted by a filter or excluded items (and says by how much)."""
        return self.filter is not None or self.exclude_items is not None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: Annotated[list[RecommendRequest], _at_most("batch_max")] = Field(
        min_length=1, json_schema_extra=_max_items("batch_max")
    )


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    timestamp: Annotated[int, Ge(0), BeforeValidator(_json_integer)] | None = Field(
        None, description="Unix seconds; optional."
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: Annotated[list[EventIn], _at_most("events_max")] = Field(
        min_length=1, json_schema_extra=_max_items("events_max")
    )


# ---------------------------------------------------------------- responses


class Item(BaseModel):
    item_id: str
    score: float
    interest: int | None = Field(description="Index of the interest that produced the item; null for popularity.")


class FilterInfo(BaseModel):
    """What a request's filter and exclude_items left to choose from, so a short list is understandable."""

    allowed_items: int = Field(description="Catalogue items that pass the filter and exclude_items.")
    filtered_out: int = Field(description="Catalogue items the filter and exclude_items removed.")
    path: Literal["graph", "exact", "graph+exact", "popular"] | None = Field(
        None,
        description="How the allowed items were searched: the index with a selector (graph), exactly "
        "(exact), the graph then exactly for short lists (graph+exact), or the cold-start list (popular); "
        "null in /users/{id}/interests (each interest is planned on its own).",
    )


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    model_version: str
    index_version: str
    history_len: int = Field(description="Known history items the model saw (after skipping unknown ids).")
    unknown_items: int = Field(0, description="History item ids the model does not know (skipped).")
    fallback: Fallback | None
    filter: FilterInfo | None = Field(None, description="Present when the request had a filter or exclude_items.")
    took_ms: float


class BatchResponse(BaseModel):
    results: list[RecommendResponse]
    took_ms: float


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


class RoutedItem(BaseModel):
    item_id: str
    weight: float = Field(description="Routing weight of this history item in the interest (sums to 1).")


class Candidate(BaseModel):
    item_id: str
    score: float


class Interest(BaseModel):
    interest: int = Field(description="Interest number (0..K-1).")
    weight: float = Field(description="Share of the user's attention on this interest (sums to 1 over interests).")
    effective_items: float = Field(description="exp(entropy) of the routing: how many history items it draws on.")
    norm: float
    history: list[RoutedItem] = Field(description="The history items it draws on most, heaviest first.")
    candidates: list[Candidate] = Field(description="Its own top candidates, unseen items only.")


class InterestsResponse(BaseModel):
    user_id: str
    model_version: str
    index_version: str
    history_len: int
    unknown_items: int
    collapsed_interests: int = Field(description="Interests drawing on about one item while the history has more.")
    filter: FilterInfo | None = Field(None, description="Present when the request had a filter.")
    interests: list[Interest]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "not_ready"]
    model: str | None
    index: str | None
    history_store: Literal["ok", "unavailable", "writes_failing"]
    history_error: str | None
    last_reload_error: str | None
    blocklist: Literal["ok", "stale", "unavailable"] = Field(
        "ok",
        description="ok: the list in the store is applied; stale: the last list applied (or the copy on disk) while "
        "the store cannot be read; unavailable: no list at all, so no answers (503) until the store answers.",
    )
    blocklist_error: str | None = None


class VersionResponse(BaseModel):
    """What is served; only the first three fields while no model is loaded."""

    model_config = ConfigDict(protected_namespaces=())
    remi: str
    model_version: str | None
    index_version: str | None
    backbone: str | None = None
    dim: int | None = None
    interests: int | None = Field(None, description="K, the number of interests.")
    seq_len: int | None = None
    items: int | None = None
    index_kind: str | None = None
    index_params: dict[str, Any] | None = None
    index_recall_at_50: float | None = None
    model_created_at: str | None = None


class ReloadResponse(BaseModel):
    changed: bool
    version: str | None = Field(description="The index version served after the call.")
    previous: str | None = Field(None, description="The one served before, when it changed.")
    error: str | None


BLOCK_MAX = 1000  # ids per block/unblock call: one Redis transaction stays short, a body stays small
BLOCKED_PAGE_MAX = 1000


class BlockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[ItemId] = Field(
        min_length=1,
        max_length=BLOCK_MAX,
        description=f"Raw item ids (1..{BLOCK_MAX} per call); ids the serving model does not know are kept too "
        "and apply once a model version knows them.",
    )


class BlockResponse(BaseModel):
    changed: int = Field(description="Ids newly blocked (block) or no longer blocked (unblock) by this call.")
    total: int = Field(description="Ids blocked after the call.")
    version: int = Field(description="The blocklist's version after the call (every worker applies it within ~1 s).")


class BlockedItem(BaseModel):
    item_id: str
    known: bool = Field(description="Whether the model this worker serves knows the id (else it applies later).")


class BlockedResponse(BaseModel):
    items: list[BlockedItem] = Field(description="One page of the blocked ids, sorted.")
    total: int = Field(description="All blocked ids.")
    offset: int
    limit: int
    version: int = Field(description="The blocklist's version in the store.")
    applied_version: int = Field(description="The version this worker applies now (-1: none read yet).")


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


# ---------------------------------------------------------------- path, query and header parameters

UserPath = Annotated[
    str,
    AfterValidator(check_user_id),
    Path(
        min_length=1,
        max_length=256,
        description="Opaque user id (printable UTF-8; see the body's user_id).",
        json_schema_extra={"pattern": USER_ID_PATTERN},
    ),
]
TopN = Annotated[int, Query(ge=1, le=100, description="Candidates shown per interest.")]
FilterQuery = Annotated[
    str | None,
    Query(
        max_length=65536,
        description="A request filter as JSON text (the `filter` of POST /recommend): "
        "the candidates shown are allowed items only.",
    ),
]
_IDEMPOTENCY_TTL_S = ServiceSettings.model_fields["idempotency_ttl_s"].default
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=256,
        description="Makes retries safe: a request repeating a key seen within REMI_IDEMPOTENCY_TTL_S seconds "
        f"(default {_IDEMPOTENCY_TTL_S}) is answered as the first was and stores nothing again.",
    ),
]

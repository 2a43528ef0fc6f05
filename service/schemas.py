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
import time
from collections.abc import Callable
from itertools import islice
from typing import Annotated, Any, Literal, cast

from annotated_types import Ge, Le
from fastapi import Header, Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic.types import FailFast as _PydanticFailFast
from pydantic_core import CoreSchema, PydanticCustomError

from service import limits
from service.config import ServiceSettings
from service.http_guards import has_surrogate

MergeName = Literal["score", "quota", "round_robin"]
Fallback = Literal["cold_start", "history_unavailable"]


def _json_integer(value: object) -> object:
    """JSON integers only: 5 and 5.0 pass (JSON Schema "integer"), "5" and true do not."""
    if isinstance(value, (str, bool, bytes)):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
# Integers are within +-(2**53 - 1), the range every JSON parser reads exactly (I-JSON, RFC 7493),
# well inside int64 (Redis, numpy): nothing outside it is accepted, so nothing outside it can come
# back, and the bounds the document states read the same as doubles (JSON Schema validators compare
# numbers as doubles: "<= 9223372036854775807" holds for 2**63 + 100). Larger ids travel as text.
JSON_INT_MAX = 2**53 - 1
JsonSafeInt = Annotated[int, Ge(-JSON_INT_MAX), Le(JSON_INT_MAX), BeforeValidator(_json_integer)]

# Ids (users, items, filter attribute names) are opaque printable text, one grammar in bodies and
# paths. Refused: C0/C1 control characters, lone surrogates (only a \udXXX escape makes one), all 66
# Unicode non-characters (U+FDD0..U+FDEF and the last two code points of every plane) and U+FFFD,
# and the ids "." and ".." (a URL path cannot carry them: clients remove them as dot segments).
# Why U+FFFD: servers decode an invalid UTF-8 %-escape in a path (/users/%ff, /users/%fe,
# /users/%80) to U+FFFD, so all of those (and a literal %EF%BF%BD) would share one history;
# refusing it is the only way to refuse invalid UTF-8 once the path is decoded. "/" is allowed
# (a path takes it as %2F: the routes take the rest of the path as the id).
# The same pattern (escapes only, so the document stays ASCII) is published in the OpenAPI schema.
_ASTRAL_NONCHARACTERS = "".join(f"\\U{plane:04x}fffe-\\U{plane:04x}ffff" for plane in range(1, 17))
_ID_CHARACTER = r"[^\u0000-\u001f\u007f-\u009f\ufdd0-\ufdef\ufffd-\uffff" + _ASTRAL_NONCHARACTERS + "]"
# Lone surrogates are not in the patterns (Rust regex engines, pydantic-core's and the OpenAPI
# validators', cannot name them): every id type has a length constraint, which pydantic-core checks
# on the UTF-8 text, so a string holding one is refused before the pattern (string_unicode).
# Item ids: checked by pydantic-core's own regex (no Python call per item of a history; no lookahead).
ITEM_ID_PATTERN = f"^{_ID_CHARACTER}+$"
# User ids (one per request, checked in Python): the same characters, and neither "." nor "..".
ID_PATTERN = r"^(?!\.\.?$)" + _ID_CHARACTER + "+$"
_ID_RE = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """The id grammar above; one error type (``id_invalid``) for every id field."""
    if not _ID_RE.match(value):
        raise PydanticCustomError(
            "id_invalid",
            "ids must be printable UTF-8 text: no control characters, non-characters, lone surrogates or U+FFFD "
            '(an invalid %-escape in a path decodes to U+FFFD), and not "." or ".."',
        )
    return value


# Ids are bounded so a client cannot make us hash or store megabytes per key.
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    AfterValidator(check_id),
    Field(json_schema_extra={"pattern": ID_PATTERN}),
]


class _OneError:
    """The branches of a union fail as one error at the field (not one per branch) with ``message``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = dict(handler(source))  # a union schema: these two keys make its failure one error
        schema["custom_error_type"] = self.kind
        schema["custom_error_message"] = self.message
        return cast(CoreSchema, schema)


ItemId = Annotated[
    Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ITEM_ID_PATTERN)] | JsonSafeInt,
    _OneError(
        "item_id_invalid",
        "An item id is text of 1..256 printable characters (no control characters, non-characters or U+FFFD) "
        "or an integer within +-(2**53 - 1) (larger ones as text)",
    ),
]


# ---------------------------------------------------------------- bounds from settings


class FailFast(_PydanticFailFast):
    """Stop validating a list at its first bad item: one error per list, not one per item, so a
    list of bad items costs what one does. (Hashable, unlike pydantic's, so it can sit in a union.)"""

    def __hash__(self) -> int:
        return hash((FailFast, self.fail_fast))


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


LimitName = Literal["batch_max", "events_max", "filter_values_max", "exclude_items_max", "history_items_max"]


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


def _not_in_future(timestamp: int) -> int:
    """At most REMI_EVENT_MAX_FUTURE_S ahead of this server's clock (a far-future timestamp would
    sort after every real event of the user forever)."""
    ahead = limits.current().event_max_future_s
    if timestamp > time.time() + ahead:
        raise PydanticCustomError(
            "timestamp_in_future",
            "A timestamp may be at most {max_future_s} s ahead of the server's clock (REMI_EVENT_MAX_FUTURE_S)",
            {"max_future_s": ahead},
        )
    return timestamp


UNKNOWN_KEYS_REPORTED = 5


def _timestamp_schema(schema: dict[str, Any]) -> None:
    """The document states the bound as of when it was built, which stays within it (clocks move on)."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            option.pop("ge", None)  # Ge(0) sits outside JsonSafeInt's validator: stated here as JSON Schema says it
            option["minimum"] = 0
            option["maximum"] = min(JSON_INT_MAX, int(time.time()) + limits.current().event_max_future_s)


class _Request(BaseModel):
    """A request body object: unknown keys are refused, and a body with thousands of them costs
    what one with a few does (only the first few are reported, pydantic never sees the rest)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) <= len(cls.model_fields):
            return data
        known = {field.alias or name for name, field in cls.model_fields.items()}
        unknown = list(islice((key for key in data if key not in known), UNKNOWN_KEYS_REPORTED))
        return {**{key: data[key] for key in known if key in data}, **{key: data[key] for key in unknown}}


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
# as their decimal text), a number for numeric ones. A JSON boolean is the text "true" / "false",
# which is how a categorical column of booleans is stored (remi/attributes.py), so
# {"in_stock": {"eq": true}} works; on a numeric attribute it is a 422 like any text.
def _filter_value(value: object) -> object:
    """Text (up to 256 characters), a boolean (as "true"/"false") or a finite JSON number; one
    error naming the value otherwise."""
    if value is None:
        raise _NULL_FILTER_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > 256:
            raise PydanticCustomError("string_too_long", "String should have at most 256 characters")
        if has_surrogate(value):
            raise PydanticCustomError("string_unicode", "A lone surrogate (\\udXXX escape) is not Unicode text")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _json_int(value)
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise PydanticCustomError("filter_value_type", "A filter value must be a string, a boolean or a finite number")


_NULL_FILTER_VALUE = PydanticCustomError(
    "filter_value_null", "null is not a filter value: leave the operator out instead"
)


def _json_int(value: int) -> int:
    if not -JSON_INT_MAX <= value <= JSON_INT_MAX:
        raise PydanticCustomError(
            "filter_value_range", "An integer filter value must be within +-(2**53 - 1) (send larger numbers as floats)"
        )
    return value


def _filter_number(value: object) -> object:
    """A finite JSON number (not a string, not a boolean) for a range bound."""
    if value is None:
        raise _NULL_FILTER_VALUE
    if isinstance(value, int) and not isinstance(value, bool):
        return float(_json_int(value))
    if not isinstance(value, float) or not math.isfinite(value):
        raise PydanticCustomError("filter_number_type", "A range bound must be a finite number")
    return value


FilterValue = Annotated[str | int | float, BeforeValidator(_filter_value)]
FilterNumber = Annotated[float, BeforeValidator(_filter_number)]
FilterValues = Annotated[list[FilterValue], FailFast(), _at_most("filter_values_max")]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ITEM_ID_PATTERN)]


def _no_null(value: object) -> object:
    """An operator given as ``null`` is refused (it is not "no condition": leave the operator out)."""
    if value is None:
        raise _NULL_FILTER_VALUE
    return value


NoNull = BeforeValidator(_no_null)
RANGE_OPS = ("gte", "lte", "gt", "lt")


class AttributeCondition(_Request):
    """Conditions on one attribute, all of which must hold (an AND).

    ``eq`` / ``in`` / ``not_in`` work on both kinds (categorical: text or integers; numeric:
    numbers); ``gte`` / ``lte`` / ``gt`` / ``lt`` on numeric attributes only. An item without a
    value for the attribute matches no condition on it (``not_in`` included).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    eq: Annotated[FilterValue | None, NoNull] = Field(None, description="The attribute equals this value.")
    in_: Annotated[FilterValues | None, NoNull] = Field(
        None,
        alias="in",
        description="The attribute is one of these values.",
        json_schema_extra=_max_items("filter_values_max"),
    )
    not_in: Annotated[FilterValues | None, NoNull] = Field(
        None,
        description="The attribute has a value and it is none of these.",
        json_schema_extra=_max_items("filter_values_max"),
    )
    gte: Annotated[FilterNumber | None, NoNull] = Field(None, description="Numeric attribute >= this.")
    lte: Annotated[FilterNumber | None, NoNull] = Field(None, description="Numeric attribute <= this.")
    gt: Annotated[FilterNumber | None, NoNull] = Field(None, description="Numeric attribute > this.")
    lt: Annotated[FilterNumber | None, NoNull] = Field(None, description="Numeric attribute < this.")

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


class RecommendRequest(_Request):
    user_id: UserId
    k: Annotated[JsonInt, AfterValidator(_at_most_k_max)] = Field(
        50, ge=1, description="How many items (1..k_max).", json_schema_extra=_k_schema
    )
    history: Annotated[list[ItemId], FailFast(), _at_most("history_items_max")] | None = Field(
        None,
        description=(
            "Raw item ids, oldest first (at most history_items_max). Appended after the stored history "
            "(as the most recent items) unless use_stored_history is false, in which case they replace it. "
            "The model reads the most recent REMI_HISTORY_MAX_LEN of them."
        ),
        json_schema_extra=_max_items("history_items_max"),
    )
    use_stored_history: StrictBool = Field(True, description="Read the user's stored history.")
    exclude_seen: StrictBool = Field(True, description="Never recommend an item of the history.")
    merge: MergeName = Field(
        "score",
        description="score: global by score; quota: each interest a share by its weight; round_robin.",
    )
    filter: RequestFilter | None = Field(None, description=FILTER_DESCRIPTION, json_schema_extra=_max_properties)
    exclude_items: Annotated[list[ItemId], FailFast(), _at_most("exclude_items_max")] | None = Field(
        None,
        description="Raw item ids never to return (e.g. already shown); unknown ids are ignored.",
        json_schema_extra=_max_items("exclude_items_max"),
    )

    @property
    def filtered(self) -> bool:
        """Whether the answer is restricted by a filter or excluded items (and says by how much)."""
        return self.filter is not None or self.exclude_items is not None


class BatchRequest(_Request):
    requests: Annotated[list[RecommendRequest], FailFast(), _at_most("batch_max")] = Field(
        min_length=1, json_schema_extra=_max_items("batch_max")
    )


class EventIn(_Request):
    item_id: ItemId
    timestamp: Annotated[JsonSafeInt, Ge(0), AfterValidator(_not_in_future)] | None = Field(
        None,
        description="Unix seconds; optional (without one, the time it arrives). At most "
        "REMI_EVENT_MAX_FUTURE_S (default a day) ahead of the "
        "server's clock (the maximum stated here: that bound when this document was built).",
        json_schema_extra=_timestamp_schema,
    )


class EventsRequest(_Request):
    events: Annotated[list[EventIn], FailFast(), _at_most("events_max")] = Field(
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
        "(exact), the graph then exactly for short lists (graph+exact), or the cold-start list (popular).",
    )


class InterestsFilterInfo(BaseModel):
    """FilterInfo of /users/{id}/interests: the counts only (each interest is searched on its own,
    so there is no one search path to state)."""

    allowed_items: int = Field(description="Catalogue items that pass the filter.")
    filtered_out: int = Field(description="Catalogue items the filter removed.")


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
    filter: InterestsFilterInfo | None = Field(None, description="Present when the request had a filter.")
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


class ReloadRequest(_Request):
    force: StrictBool = Field(False, description="Reload even the version being served.")


BLOCK_MAX = 1000  # ids per block/unblock call: one Redis transaction stays short, a body stays small
BLOCKED_PAGE_MAX = 1000


def _block_max(value: object) -> object:
    """``max_length`` checked on the raw list before its items (pydantic's checks it as it goes)."""
    if isinstance(value, list) and len(value) > BLOCK_MAX:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "List", "max_length": BLOCK_MAX, "actual_length": len(value)},
        )
    return value


_at_most_block = BeforeValidator(_block_max)


class BlockRequest(_Request):
    item_ids: Annotated[list[ItemId], FailFast(), _at_most_block] = Field(
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
    AfterValidator(check_id),
    Path(
        min_length=1,
        max_length=256,
        description="Opaque user id, the body's user_id grammar; escape reserved characters (a / as %2F).",
        json_schema_extra={"pattern": ID_PATTERN},
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

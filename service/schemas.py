"""Request and response bodies of the HTTP API.

Request models are built by :func:`request_models` because their bounds (largest k, batch and
event counts) come from settings; a bad value is a 422 whose ``loc`` names the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints

MergeName = Literal["score", "quota", "round_robin"]
Fallback = Literal["cold_start", "history_unavailable"]


def _json_integer(value: object) -> object:
    """JSON integers only: 5 and 5.0 pass (JSON Schema "integer"), "5" and true do not."""
    if isinstance(value, (str, bool, bytes)):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# Ids are opaque strings; bounded so a client cannot make us hash or store megabytes per key.
UserId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
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

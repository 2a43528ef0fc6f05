"""A request's ``filter`` checked against the serving model's item attributes, as engine conditions.

The request models (service/schemas.py) check the filter's shape; whether an attribute exists and
which operators fit it depends on the version being served, so that part is checked here, with
the engine the request will run on, and fails as request validation does: a 422 whose ``loc``
names the field (``["body", "filter", "category", "gte"]``), rendered by the app's validation
handler. The allowed-item mask itself is computed by the engine, in a compute thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from remi.attributes import Condition, ItemAttributes
from service.http_guards import decode_json
from service.schemas import RANGE_OPS, AttributeCondition, RequestFilter

Loc = tuple[str | int, ...]
RangeOp = Literal["gte", "lte", "gt", "lt"]


def _error(loc: Loc, kind: str, msg: str, value: object = None) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def compile_filter(
    attributes: ItemAttributes | None, spec: dict[str, AttributeCondition] | None, loc: Loc
) -> tuple[tuple[Condition, ...], list[dict[str, Any]]]:
    """The engine conditions of one request's filter, and the errors (empty when it is valid)."""
    conditions: list[Condition] = []
    errors: list[dict[str, Any]] = []
    for name, condition in (spec or {}).items():
        where = (*loc, "filter", name)
        if attributes is None or name not in attributes:
            known = ", ".join(sorted(attributes.attributes)[:20]) if attributes else ""
            msg = (
                f"Unknown attribute {name!r}: the model has no item attributes (remi export --item-attributes)"
                if attributes is None
                else f"Unknown attribute {name!r} (known: {known})"
            )
            errors.append(_error(where, "filter_unknown_attribute", msg, name))
            continue
        kind = attributes.kind(name)
        for op, value in condition.operators().items():
            if op in RANGE_OPS:
                if kind != "numeric":
                    errors.append(
                        _error(
                            (*where, op),
                            "filter_range_on_categorical",
                            f"A range needs a numeric attribute; {name!r} is categorical (use eq, in or not_in)",
                            value,
                        )
                    )
                else:
                    conditions.append(Condition(name, cast(RangeOp, op), bound=float(value)))
                continue
            values: Sequence[Any] = [value] if op == "eq" else value
            checked, bad = _values_for(kind, values, (*where, op), op == "eq")
            errors += bad
            if not bad:
                conditions.append(Condition(name, "not_in" if op == "not_in" else "in", tuple(checked)))
    return tuple(conditions), errors


def _values_for(
    kind: str, values: Sequence[Any], loc: Loc, single: bool
) -> tuple[list[str | float], list[dict[str, Any]]]:
    """Values as the attribute compares them: text for categorical (integers as decimal text),
    floats for numeric; a value of the wrong kind is an error naming its position."""
    checked: list[str | float] = []
    errors: list[dict[str, Any]] = []
    for position, value in enumerate(values):
        where = loc if single else (*loc, position)
        if kind == "categorical":
            if isinstance(value, float):
                errors.append(
                    _error(where, "filter_value_kind", "A categorical attribute takes text or integers", value)
                )
            else:
                checked.append(str(value))
        elif isinstance(value, str):
            errors.append(_error(where, "filter_value_kind", "A numeric attribute takes numbers", value))
        else:
            checked.append(float(value))
    return checked, errors


_FILTER_ADAPTER: TypeAdapter[dict[str, AttributeCondition]] = TypeAdapter(RequestFilter)


def parse_filter_query(text: str | None) -> dict[str, AttributeCondition] | None:
    """The ``filter`` query parameter (JSON text) as a request filter; a 422 at ``query.filter...`` otherwise."""
    if text is None:
        return None
    try:
        value = decode_json(text.encode())
    except ValueError as exc:
        raise RequestValidationError(
            [_error(("query", "filter"), "json_invalid", f"The filter is not JSON ({exc})", text[:64])]
        ) from None
    try:
        return _FILTER_ADAPTER.validate_python(value)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            msg = e["msg"]
            errors.append(_error(("query", "filter", *e["loc"]), e["type"], msg, None))
        raise RequestValidationError(errors) from None


def raise_if_invalid(errors: list[dict[str, Any]]) -> None:
    """A 422 in the app's validation format, naming every bad field."""
    if errors:
        raise RequestValidationError(errors)

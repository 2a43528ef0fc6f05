"""The request limits of one app (largest k, batch, event count, filter and history sizes, timestamp skew).

The request models in service/schemas.py are defined once, at import, yet their bounds come
from settings (REMI_K_MAX, REMI_BATCH_MAX, REMI_EVENTS_MAX, REMI_FILTER_*, ...) and two apps in one process may
differ. So the app puts its limits in a context variable around everything it does (see
``RemiAPI`` in service/app.py): validators read them there, and so does the OpenAPI document,
which states the same bounds the validators apply. Outside an app the defaults of the settings
class apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from service.config import ServiceSettings


@dataclass(frozen=True)
class RequestLimits:
    k_max: int
    batch_max: int
    events_max: int
    filter_attributes_max: int = ServiceSettings.model_fields["filter_attributes_max"].default
    filter_values_max: int = ServiceSettings.model_fields["filter_values_max"].default
    exclude_items_max: int = ServiceSettings.model_fields["exclude_items_max"].default
    history_items_max: int = ServiceSettings.model_fields["history_items_max"].default
    event_max_future_s: int = ServiceSettings.model_fields["event_max_future_s"].default

    @classmethod
    def of(cls, settings: ServiceSettings) -> RequestLimits:
        return cls(
            settings.k_max,
            settings.batch_max,
            settings.events_max,
            settings.filter_attributes_max,
            settings.filter_values_max,
            settings.exclude_items_max,
            settings.history_items_max,
            settings.event_max_future_s,
        )

    @classmethod
    def defaults(cls) -> RequestLimits:
        fields = ServiceSettings.model_fields
        return cls(fields["k_max"].default, fields["batch_max"].default, fields["events_max"].default)


DEFAULT_LIMITS = RequestLimits.defaults()  # frozen: safe to share as the context variable's default
_in_effect: ContextVar[RequestLimits] = ContextVar("remi_request_limits", default=DEFAULT_LIMITS)


def current() -> RequestLimits:
    """The limits of the app handling this request (the defaults outside one)."""
    return _in_effect.get()


@contextmanager
def applied(limits: RequestLimits) -> Iterator[None]:
    """``limits`` are :func:`current` inside the block (this task and tasks it starts)."""
    token = _in_effect.set(limits)
    try:
        yield
    finally:
        _in_effect.reset(token)

"""Schemathesis against the live server's /openapi.json: no 5xx and no schema violation.

Bounded (a few dozen generated cases per operation, valid and invalid) so it fits the suite.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.service.conftest import Server


@pytest.fixture(scope="module")
def live_schema(api: Server):
    return schemathesis.openapi.from_url(api.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema_and_never_5xx(case) -> None:
    case.call_and_validate()

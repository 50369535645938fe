"""Schemathesis over the OpenAPI schema against a real uvicorn server on PostgreSQL.

Every generated request (valid and invalid bodies, path and query values, headers) must get an
answer that is not a 5xx, whose status code is documented for the operation, and whose body
and content type match the documented response. The run is bounded by ``FUZZ_EXAMPLES``
examples per operation (about a minute on a laptop CPU); ``BNN_TUNE_FUZZ_EXAMPLES`` raises it.
The request count and the status-code histogram are printed at the end of the module.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.postgres

FUZZ_EXAMPLES = int(os.environ.get("BNN_TUNE_FUZZ_EXAMPLES", "60"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzz_base(
    postgres_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    app = create_app(Settings(database_url=postgres_url, reaper_interval_s=0, max_trials=50))
    with live_server(app) as url:
        yield url
    total = sum(STATUSES.values())
    histogram = ", ".join(f"{code}: {n}" for code, n in sorted(STATUSES.items()))
    print(f"\nfuzz: {total} requests; status codes {{{histogram}}}")


@pytest.fixture(scope="module")
def api_schema(fuzz_base: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json")


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' own pytest integration (``from_fixture``) does not run under pytest 9, so each
# operation's strategy is driven by Hypothesis directly: the same generation and checks.
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_api_never_fails_and_matches_its_schema(
    api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            # Body-less POSTs (stop) are sent as JSON like every client does; 415 is tested in
            # test_hostile_input.
            headers = {"Content-Type": "application/json"} if case.media_type is None else None
            response = case.call(timeout=30, headers=headers)
            STATUSES[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            call()
        except Unsatisfiable:
            # Negative mode on an operation with nothing to get wrong (GET /health).
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label

"""Property-based API testing of the gateway from its own OpenAPI schema: no input gives a 5xx.

Runs against the real gateway in front of the real model server (so /readyz is 200 and valid
images reach the model), with schemathesis generating both valid and invalid requests.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pizzactl.serving.gateway import create_app

# The schema does not depend on the model server, so it is read from an app built in-process;
# the requests go over HTTP to the real gateway fixture.
schema = schemathesis.openapi.from_dict(create_app("http://127.0.0.1:9").openapi())


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_never_answers_5xx_and_matches_its_schema(case, gateway):
    case.call_and_validate(
        base_url=gateway.url,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=30,
    )

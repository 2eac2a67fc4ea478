"""Property-based testing of the model server's Open Inference Protocol v2 REST API (issue 24).

schemathesis generates requests from tests/fixtures/oip-v2-rest.yaml (KServe's specification's
shape, with the answers pizzactl's server gives: see the file's header) and sends them to the real
model server serving the tiny model: no 5xx, no hang (a timeout per call), and every answer has a
status, content type and body the document declares. Derandomized, so every run sends the same
requests; bounded by max_examples per operation (9 operations).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SPEC = Path(__file__).parent / "fixtures" / "oip-v2-rest.yaml"
schema = schemathesis.openapi.from_dict(yaml.safe_load(SPEC.read_text()))
schema.config.generation.update(modes=list(GenerationMode))  # valid requests and invalid ones


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_v2_rest_never_answers_5xx_and_matches_its_document(case, model_server):
    case.call_and_validate(
        base_url=model_server.url,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=30,
    )

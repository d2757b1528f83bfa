"""The OpenAPI document the API ships is valid OpenAPI 3.1, judged by an
independent validator (kept out of the unit layer: loading it takes about a
second)."""

from __future__ import annotations

import json
from importlib import resources

from openapi_spec_validator import validate

DOCUMENT = json.loads(resources.files("ctrlexec.dispatcher").joinpath("openapi.json").read_bytes())


def test_valid_openapi_3_1():
    validate(DOCUMENT)

"""Checks API responses against the OpenAPI 3.1 document the API ships.

The document is read from the source tree (the pyz carries the same bytes;
a test compares it with what `/openapi.json` serves). A response is looked
up by method, path (matched against the templated paths) and status, and
its body validated with jsonschema (draft 2020-12, OpenAPI 3.1's dialect).
A path the API has no route for must answer the ErrorResponse schema.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from jsonschema import Draft202012Validator

DOCUMENT = Path(__file__).resolve().parents[2] / "ctrlexec" / "dispatcher" / "openapi.json"


@functools.lru_cache(maxsize=1)
def document() -> dict:
    return json.loads(DOCUMENT.read_text())


def _resolve(node: dict) -> dict:
    while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
        node = document()["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _operation(method: str, path: str) -> dict | None:
    for template, item in document()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return item[method.lower()]
    return None


def response_schema(method: str, path: str, status: int) -> dict:
    """The schema of that answer; AssertionError when the document does not
    describe it."""
    operation = _operation(method, path)
    if operation is None:
        assert status in (403, 404, 400, 413, 431, 500, 503), (
            f"{method} {path}: {status} from a path the document does not describe"
        )
        return {"$ref": "#/components/schemas/ErrorResponse"}
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path}: {status} is not documented"
    content = _resolve(responses[str(status)])["content"]["application/json"]
    return content["schema"]


def check_response(method: str, path: str, status: int, body: object) -> None:
    schema = dict(response_schema(method, path, status))
    schema["components"] = document()["components"]
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: e.path)
    assert not errors, f"{method} {path} {status}: body does not match the document: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )

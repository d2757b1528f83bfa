"""The OpenAPI document the API ships: 3.1, in step with the routes and the
package version, every reference resolvable (validated against the OpenAPI
3.1 schema in tests/integration/test_openapi_valid.py)."""

from __future__ import annotations

import json
from importlib import resources

from ctrlexec import __version__
from ctrlexec.core import api_wire

DOCUMENT = json.loads(resources.files("ctrlexec.dispatcher").joinpath("openapi.json").read_bytes())


def test_openapi_3_1_and_the_package_version():
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["info"]["version"] == __version__


def test_paths_are_the_routes():
    documented = {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    }
    assert documented == set(api_wire.ENDPOINTS) | set(api_wire.OUR_ENDPOINTS) | {("GET", "/")}


def test_every_operation_documents_the_server_answers():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert {"403", "413", "431", "500", "503"} <= set(operation["responses"]), (
                method,
                path,
            )


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_resolves():
    for ref in _refs(DOCUMENT):
        assert ref.startswith("#/")
        node = DOCUMENT
        for part in ref[2:].split("/"):
            node = node[part]


def test_schema_names_of_0_12():
    names = set(DOCUMENT["components"]["schemas"])
    assert {
        "HealthResponse",
        "PingRequest",
        "PingResult",
        "PingResponse",
        "RunRequest",
        "RunResult",
        "RunResponse",
        "AsyncSubmitResult",
        "AsyncSubmitResponse",
        "HostStatus",
        "StatusResponse",
        "DiscoveryRequest",
        "ScriptEntry",
        "HostCapabilities",
        "DiscoveryResponse",
        "ErrorResponse",
    } <= names
    for name in api_wire.HOSTS_SCHEMAS:
        assert "hosts" in DOCUMENT["components"]["schemas"][name]["properties"]

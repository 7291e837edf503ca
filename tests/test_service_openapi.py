"""The OpenAPI description is valid and lists exactly the notebook's annotated endpoints.

(That every reply matches it is checked on every request of the gateway tests; see conftest.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from kernel_gateway.notebook_http.cell.parser import APICellParser
from openapi_spec_validator import validate

from service.openapi import openapi_spec
from service.settings import Settings

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "api.ipynb"


def notebook_operations() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every ``# METHOD /path`` cell, found as the gateway finds them."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    parser = APICellParser(comment_prefix="#")
    responses = parser.endpoint_responses(cells)
    operations = set()
    for path, methods in parser.endpoints(cells):
        assert set(responses[path]) == set(methods), f"{path} lacks a ResponseInfo cell"
        operations |= {(method.lower(), re.sub(r":(\w+)", r"{\1}", path)) for method in methods}
    return operations


def test_the_spec_is_valid_openapi() -> None:
    validate(openapi_spec(Settings()))


def test_the_spec_describes_exactly_the_notebook_endpoints() -> None:
    spec = openapi_spec(Settings())
    described = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert described == notebook_operations()


@pytest.mark.xdist_group("gateway")
def test_the_service_serves_the_spec_with_its_limits(service) -> None:
    served = service.get("/openapi.json").json()
    assert served == openapi_spec(Settings(max_body_bytes=4 * 2**20, max_epochs=10_000))
    assert "at most 4194304 bytes" in served["info"]["description"]

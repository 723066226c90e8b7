from __future__ import annotations

import pytest

from shadowreplay.endpoint import endpoint_name, path_template


@pytest.mark.parametrize(
    "path, template",
    [
        ("/", "/"),
        ("/api/products/42", "/api/products/{id}"),
        ("/api/users/7/cart", "/api/users/{id}/cart"),
        ("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301/x", "/o/{uuid}/x"),
        ("/blob/9f86d081884c7d659a2feaa0c55ad015", "/blob/{hash}"),
        ("/v2/items", "/v2/items"),
        ("/api/search", "/api/search"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


def test_endpoint_name_drops_query_and_uppercases_method() -> None:
    assert endpoint_name("get", "/api/products/42?ref=a&ref=b") == "GET /api/products/{id}"

from __future__ import annotations

import pytest

from shadowreplay.contract.endpoint import endpoint_name, path_template


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
        # Anything holding a digit is an id, except words that name routes (v2, oauth2).
        ("/orders/ord_8f3k2j/items", "/orders/{id}/items"),
        ("/reports/2024-05-01", "/reports/{id}"),
        ("/u/alice42", "/u/{id}"),
        ("/static/app.3f9c2b.js", "/static/{id}"),
        ("/blob/9f86d081", "/blob/{id}"),
        ("/api/v1.2/oauth2/token", "/api/v1.2/oauth2/token"),
        ("/n/-5/x/1.5", "/n/{id}/x/{id}"),
        # Tokens, e-mail addresses and percent-encoded text.
        ("/reset/AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "/reset/{value}"),
        ("/users/alice@example.com", "/users/{value}"),
        ("/tags/caf%C3%A9", "/tags/{id}"),
        ("/tags/na%C3%AFve", "/tags/{id}"),
        ("/w/%E2%9C%93", "/w/{id}"),
        ("/w/a%E2b", "/w/{id}"),
        ("/w/%ZZ", "/w/{value}"),
        ("/a//b/", "/a//b/"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


def test_endpoint_name_drops_query_and_uppercases_method() -> None:
    assert endpoint_name("get", "/api/products/42?ref=a&ref=b") == "GET /api/products/{id}"


def test_names_are_bounded_in_length() -> None:
    name = endpoint_name("GET", "/" + "/".join(["segment"] * 40))
    assert len(name) == 120 and name.endswith("…")
    assert endpoint_name("X" * 1000, "/") == "X" * 16 + " /"


def test_no_name_carries_a_digit_from_a_random_path() -> None:
    import random

    rnd = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_."
    for _ in range(2000):
        segs = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 40))) for _ in range(rnd.randint(1, 5))]
        name = endpoint_name("GET", "/" + "/".join(segs))
        for seg in name.split(" ", 1)[1].split("/"):
            assert seg in ("", "{id}", "{uuid}", "{hash}", "{value}") or not any(c.isdigit() for c in seg[:-1]), name

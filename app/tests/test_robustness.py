"""No route answers 500 to junk input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

JUNK_BODIES: list[Any] = [None, {}, [], "string", {"name": None, "query": 12, "file": []},
                          {"email": "x" * 5000}]


@pytest.fixture()
def routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every documented operation except the health checks."""
    return [(method.upper(), path) for path, ops in app.openapi()["paths"].items()
            for method in ops if "health" not in path]


def _fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def test_no_500_on_junk(client: Any, user: dict[str, Any], project: dict[str, Any],
                        routes: list[tuple[str, str]]) -> None:
    ids = {"project_id": project["id"], "document_id": str(uuid.uuid4()),
           "provider_id": str(uuid.uuid4())}
    assert len(routes) >= 15
    checked = 0
    for method, template in routes:
        path = _fill(template, ids)
        for headers in ({}, user["headers"], {"Authorization": "Bearer junk"}):
            for body in JUNK_BODIES:
                r = client.request(method, path, json=body, headers=headers)
                assert r.status_code < 500, (method, path, body, r.status_code, r.text)
                checked += 1
            r = client.request(method, path, content=b"\xff\xfe\x00garbage",
                               headers={**headers, "Content-Type": "application/json"})
            assert r.status_code < 500, (method, path, r.text)
        bad = _fill(template, dict.fromkeys(ids, "not-a-uuid"))
        if bad != template:
            r = client.request(method, bad, headers=user["headers"])
            assert r.status_code in (401, 404, 405, 422), (method, bad, r.status_code)
    assert checked > 100

"""No route answers 500 to junk input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.routing import APIRoute

JUNK_BODIES: list[Any] = [None, {}, [], "string", {"name": None, "query": 12, "file": []},
                          {"email": "x" * 5000}]


@pytest.fixture()
def routes(app: Any) -> list[APIRoute]:
    return [r for r in app.routes if isinstance(r, APIRoute) and r.path != "/health"
            and not r.path.endswith("/health")]


def test_no_500_on_junk(client: Any, user: dict[str, Any], project: dict[str, Any],
                        routes: list[APIRoute]) -> None:
    ids = {"project_id": project["id"], "document_id": str(uuid.uuid4()),
           "provider_id": str(uuid.uuid4())}
    checked = 0
    for route in routes:
        path = route.path
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        for method in route.methods:
            for headers in ({}, user["headers"], {"Authorization": "Bearer junk"}):
                for body in JUNK_BODIES:
                    r = client.request(method, path, json=body, headers=headers)
                    assert r.status_code < 500, (method, path, body, r.status_code, r.text)
                    checked += 1
                r = client.request(method, path, content=b"\xff\xfe\x00garbage",
                                   headers={**headers, "Content-Type": "application/json"})
                assert r.status_code < 500, (method, path, r.text)
            bad = route.path
            for name in ids:
                bad = bad.replace("{" + name + "}", "not-a-uuid")
            if bad != route.path:
                r = client.request(method, bad, headers=user["headers"])
                assert r.status_code in (401, 404, 405, 422), (method, bad, r.status_code)
    assert checked > 100

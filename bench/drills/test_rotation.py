"""Secrets rotation under load: playbooks/rotate_secrets.yml fails no request.

The lab's secrets are files (inventories/lab/group_vars/all/main.yml); a rotation moves
NAME to NAME.previous, and the next run makes a new NAME. The database passwords (app,
replication, admin), Redis's (default user, app user), the JWT signing key and the Fernet
key are rotated; then the previous values are dropped and the playbook runs again."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from conftest import INVENTORY, REPO
from steady import SteadyLoad
from test_zero_downtime import exempt

from bench.lab import run_playbook

SECRETS = Path(os.environ.get("AIPL_LAB_SECRETS") or REPO / ".cache/lab/secrets")
OVERLAP = ["postgresql_app", "redis_default", "redis_app", "app_jwt_secret_key", "app_encryption_key"]
REPLACED = ["postgresql_replication", "postgresql_admin"]  # nothing outside PostgreSQL logs in with them


def values(names) -> dict[str, str]:
    return {n: (SECRETS / n).read_text().split()[0] for n in names if (SECRETS / n).exists()}


def login(the_lab, cred: dict) -> str:
    status, tok = the_lab.curl("POST", "/api/v1/auth/login", body=cred)
    assert status == 200, tok
    return tok["access_token"]


def hint(providers: list) -> str:
    return next(p["api_key_hint"] for p in providers if p["name"] == "drill-rotation")


def leaked(out: str, secrets: dict[str, str]) -> list[str]:
    return sorted(name for name, value in secrets.items() if value in out)


def test_rotate_secrets_under_load_fails_no_request(the_lab, record):
    """rotate_secrets.yml, then again with the previous values dropped, under a steady mixed load: 0 failed
    requests; old tokens valid during the overlap and refused after; stored keys re-encrypted; no secret printed."""
    cred = {"email": f"drill-rot-{time.time_ns()}@example.org", "password": "drill password 0123456789"}
    assert the_lab.curl("POST", "/api/v1/auth/register", body=cred)[0] == 201
    old_token = login(the_lab, cred)
    status, project = the_lab.curl("POST", "/api/v1/projects", old_token, body={"name": "drill-rotation"})
    assert status == 201, project
    status, provider = the_lab.curl("POST", "/api/v1/providers", old_token, body={
        "name": "drill-rotation", "base_url": "https://llm.example.org/v1", "model": "m",
        "api_key": "sk-drill-rotation-0123456789"})
    assert status == 201 and provider["api_key_hint"] == "…6789", provider

    before = values(OVERLAP + REPLACED)
    assert len(before) == len(OVERLAP + REPLACED), sorted(before)
    for name in OVERLAP:
        (SECRETS / name).rename(SECRETS / f"{name}.previous")
    for name in REPLACED:
        (SECRETS / name).unlink()
    exempt(the_lab, True)
    try:
        load = SteadyLoad(the_lab, "rotate", old_token, project["id"])
        load.start()
        first_s, first_out = run_playbook(INVENTORY, "playbooks/rotate_secrets.yml", "--diff")
        first = load.stop()
        after = values(OVERLAP + REPLACED)
        assert all(after[n] != before[n] for n in before), "a secret was not renewed"

        # The overlap: the token signed with the old key still works, the stored key decrypts.
        status, _ = the_lab.curl("GET", "/api/v1/auth/me", old_token)
        assert status == 200, "a token signed with the previous JWT key was refused during the overlap"
        new_token = login(the_lab, cred)
        status, listed = the_lab.curl("GET", "/api/v1/providers", new_token)
        assert status == 200 and hint(listed) == "…6789", listed
        reencrypted = re.search(r"reencrypt-secrets: (changed|no change) \(([^)]*)\)", first_out)

        # The end of the overlap: the previous values go.
        for name in OVERLAP:
            (SECRETS / f"{name}.previous").unlink()
        load = SteadyLoad(the_lab, "rotate-end", new_token, project["id"])
        load.start()
        second_s, second_out = run_playbook(INVENTORY, "playbooks/rotate_secrets.yml", "--diff")
        second = load.stop()
    finally:
        exempt(the_lab, False)
    status, _ = the_lab.curl("GET", "/api/v1/auth/me", old_token)
    old_refused = status == 401
    status, listed = the_lab.curl("GET", "/api/v1/providers", new_token)
    record(first_run_s=first_s, second_run_s=second_s, requests=first["requests"] + second["requests"],
           failed=first["failed"] + second["failed"], requests_per_second_first=first["per_second"],
           requests_per_second_second=second["per_second"], by_kind_first=first["by_kind"],
           reencrypt=reencrypted.group(2) if reencrypted else "not seen", old_token_refused_after=old_refused,
           failures=(first["failures"] + second["failures"]) or "none",
           ok_per_second_first=first["ok_per_second"], ok_per_second_second=second["ok_per_second"])
    # Every stored key (the drill's and any other in the lab) re-encrypted, none lost.
    assert reencrypted and reencrypted.group(1) == "changed" and ", 0 undecryptable" in reencrypted.group(2), reencrypted
    assert status == 200 and hint(listed) == "…6789", listed
    assert old_refused, "the previous JWT key was still accepted after the overlap"
    secrets = {f"old {n}": v for n, v in before.items()} | {f"new {n}": v for n, v in after.items()}
    assert not leaked(first_out + second_out, secrets), leaked(first_out + second_out, secrets)
    assert first["failed"] == 0 and second["failed"] == 0, json.dumps(first["failures"] + second["failures"])

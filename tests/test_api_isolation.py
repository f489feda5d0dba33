"""User isolation: every task route with another user's task, bad keys and no key."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time

import asyncpg
import pytest

from peptide_opt.api import keys
from tests.test_api import fetch_rows, submit

pytestmark = pytest.mark.services

#: Every task route, as (method, path template).
TASK_ROUTES = [
    ("GET", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/result"),
    ("GET", "/v1/tasks/{id}/files/result.csv"),
    ("POST", "/v1/tasks/{id}/cancel"),
    ("DELETE", "/v1/tasks/{id}"),
]
#: Every /v1 route, for the key checks.
ALL_ROUTES = [("GET", "/v1/me"), ("GET", "/v1/tasks"), ("POST", "/v1/tasks"), *TASK_ROUTES]


def revoke(database_url: str, key_id: str) -> None:
    async def run():
        connection = await asyncpg.connect(database_url)
        try:
            await keys.revoke_keys(connection, key_id=key_id)
        finally:
            await connection.close()

    asyncio.run(run())


def request(client, method: str, path: str):
    if method == "POST" and path == "/v1/tasks":
        return submit(client, "PQQATDD")
    return client.request(method, path)


def test_other_users_task_is_404(api_server, api_users, database_url):
    owner, stranger = api_users("owner"), api_users("stranger")
    with api_server.client(owner) as client:
        task_id = submit(client, "PQQATDD").json()["id"]
    with api_server.client(stranger) as client:
        for method, template in TASK_ROUTES:
            response = client.request(method, template.format(id=task_id))
            assert response.status_code == 404, (method, template, response.text)
            assert response.json()["detail"] == f"task {task_id!r} not found"
        listing = client.get("/v1/tasks").json()
    assert listing["tasks"] == []
    assert listing["total"] == 0
    # Nothing the stranger sent changed the task.
    rows = fetch_rows(database_url, "SELECT status FROM tasks WHERE id = $1", task_id)
    assert rows[0]["status"] == "pending"


def test_admin_sees_every_task(api_server, api_users):
    owner, admin = api_users("owner2"), api_users("root", admin=True)
    with api_server.client(owner) as client:
        task_id = submit(client, "PQQATDD").json()["id"]
    with api_server.client(admin) as client:
        me = client.get("/v1/me").json()
        task = client.get(f"/v1/tasks/{task_id}")
        listing = client.get("/v1/tasks").json()
        cancelled = client.post(f"/v1/tasks/{task_id}/cancel")
    assert me["is_admin"] is True
    assert task.status_code == 200
    assert task.json()["user_id"] == owner.user_id
    assert [item["id"] for item in listing["tasks"]] == [task_id]
    assert cancelled.json()["status"] == "cancelled"


@pytest.mark.parametrize("case", ["no key", "unknown key", "revoked", "expired", "malformed"])
def test_bad_keys_are_401(api_server, api_users, database_url, case):
    owner = api_users("keyholder")
    with api_server.client(owner) as client:
        task_id = submit(client, "PQQATDD").json()["id"]
    headers = {}
    if case == "unknown key":
        headers = {"Authorization": f"Bearer {keys.generate_key()}"}
    elif case == "revoked":
        revoke(database_url, owner.key_id)
        headers = owner.headers
    elif case == "expired":
        expiring = api_users(
            "short-lived",
            expires_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)
            + dt.timedelta(seconds=1),
        )
        time.sleep(1.5)
        headers = expiring.headers
    elif case == "malformed":
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}

    with api_server.client() as client:
        for method, template in ALL_ROUTES:
            client.headers.clear()
            client.headers.update(headers)
            response = request(client, method, template.format(id=task_id))
            assert response.status_code == 401, (case, method, template, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert len(fetch_rows(database_url, "SELECT id FROM tasks")) == 1


def test_other_key_of_same_user(api_server, api_users):
    """A second key of a platform user (``--user-id``) reads that user's tasks."""
    first = api_users("two-keys")
    second = api_users("", user_id=first.user_id)
    with api_server.client(first) as client:
        task_id = submit(client, "PQQATDD").json()["id"]
    with api_server.client(second) as client:
        assert client.get(f"/v1/tasks/{task_id}").status_code == 200


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", *args],
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_users_commands(api_server, database_url):
    created = run_cli(database_url, "users", "create", "zoe", "--expires", "30d")
    assert created.returncode == 0, created.stderr
    fields = dict(
        line.split(":", 1) for line in created.stdout.splitlines() if ":" in line
    )
    key = fields["key"].strip()
    key_id = fields["key id"].strip()
    assert key.startswith("po_")
    assert "shown only now" in created.stderr
    # Only the key's sha256 is stored.
    rows = fetch_rows(database_url, "SELECT key_hash FROM api_keys WHERE id = $1", key_id)
    assert rows[0]["key_hash"] == keys.hash_key(key)

    headers = {"Authorization": f"Bearer {key}"}
    with api_server.client() as client:
        assert client.get("/v1/me", headers=headers).json()["username"] == "zoe"

    listed = run_cli(database_url, "users", "list")
    assert listed.returncode == 0
    assert key_id in listed.stdout
    assert key not in listed.stdout

    duplicate = run_cli(database_url, "users", "create", "zoe")
    assert duplicate.returncode == 2
    assert "user 'zoe' already exists" in duplicate.stderr
    past = run_cli(database_url, "users", "create", "yan", "--expires", "2001-01-01")
    assert past.returncode == 2
    assert "--expires must lie in the future" in past.stderr
    unknown = run_cli(database_url, "users", "create", "--user-id", "no-such-user")
    assert unknown.returncode == 2
    assert "no such user" in unknown.stderr

    revoked = run_cli(database_url, "users", "revoke", key_id)
    assert revoked.returncode == 0
    assert f"revoked {key_id}" in revoked.stdout
    with api_server.client() as client:
        assert client.get("/v1/me", headers=headers).status_code == 401
    twice = run_cli(database_url, "users", "revoke", key_id)
    assert twice.returncode == 2
    assert "no active key" in twice.stderr
    assert key_id not in run_cli(database_url, "users", "list").stdout
    assert key_id in run_cli(database_url, "users", "list", "--all").stdout


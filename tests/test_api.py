"""The HTTP API against real PostgreSQL and SeaweedFS: submission, limits, reads.

Tests whose tasks must finish run a real worker; they are in test_api_worker.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import asyncpg
import httpx
import pytest

from peptide_opt.api import retention
from peptide_opt.settings import Settings
from peptide_opt.storage.factory import get_storage
from tests.fixtures.paths import EXAMPLES

pytestmark = pytest.mark.services

COMPLEX = EXAMPLES / "1czy" / "1czy_complex.pdb"
PEPTIDE_FASTA = (EXAMPLES / "1czy" / "peptide.fasta").read_text()
SMALL_JOB = {"n_poses": "2", "num_seq_per_target": "2", "site_chain": "B"}


def submit(client: httpx.Client, peptide: str = PEPTIDE_FASTA, receptor=COMPLEX, **fields):
    """POST a multipart submission of ``receptor`` with ``peptide`` and config fields."""
    data = {"peptide": peptide, **{k: str(v) for k, v in fields.items()}}
    with open(receptor, "rb") as handle:
        return client.post(
            "/v1/tasks", data=data, files={"receptor": (receptor.name, handle)}
        )


def fetch_rows(database_url: str, sql: str, *args):
    async def run():
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def storage_call(env: dict[str, str], method: str, *args):
    """Call one Storage method on the test's storage and return its result."""

    async def run():
        async with get_storage(Settings.from_env(env)) as storage:
            return await getattr(storage, method)(*args)

    return asyncio.run(run())


def wait_for_fresh_minute(margin_s: float = 8.0) -> None:
    """Sleep past the next minute boundary when it is under ``margin_s`` away.

    The rate limit counts per UTC minute, so a test that crosses a boundary would see
    its count reset.
    """
    second = dt.datetime.now(dt.UTC).second
    if second > 60 - margin_s:
        time.sleep(61 - second)


# -- submission ----------------------------------------------------------------------


def test_submit_stores_platform_layout(api_server, api_users, database_url):
    alice = api_users("alice")
    with api_server.client(alice) as client:
        response = submit(client, **SMALL_JOB, cores=8)
    assert response.status_code == 201, response.text
    task = response.json()
    prefix = f"jobs/peptide_optimization/{task['id']}"
    assert task["status"] == "pending"
    assert task["job_dir"] == prefix
    assert task["user_id"] == alice.user_id
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    # cores is a platform key that build_config ignores with a warning.
    assert task["warnings"] == ["cores is ignored: the worker sets its own core count"]

    rows = fetch_rows(database_url, "SELECT * FROM tasks")
    assert len(rows) == 1
    row = rows[0]
    assert row["task_type"] == "peptide_optimization"
    assert row["status"] == "pending"
    assert row["job_dir"] == prefix
    assert row["started_at"] is None

    env = api_server.env
    keys = storage_call(env, "list_keys", prefix)
    assert keys == [
        f"{prefix}/input/1czy_complex.pdb",
        f"{prefix}/input/peptide.fasta",
        f"{prefix}/optimization_config.txt",
    ]
    stored = storage_call(env, "read_bytes", f"{prefix}/input/1czy_complex.pdb")
    assert stored == COMPLEX.read_bytes()
    fasta = storage_call(env, "read_text", f"{prefix}/input/peptide.fasta")
    assert fasta.splitlines()[1] == "PQQATDD"
    config = storage_call(env, "read_text", f"{prefix}/optimization_config.txt")
    lines = [line for line in config.splitlines() if not line.startswith("#")]
    assert lines == [
        "n_poses=2",
        "num_seq_per_target=2",
        "site_chain=B",
        "peptide_sequence=PQQATDD",
        "receptor_pdb_filename=1czy_complex.pdb",
        f"storage_prefix={prefix}",
        f"receptor_storage_key={prefix}/input/1czy_complex.pdb",
    ]


def test_submit_config_round_trips(api_server, api_users):
    """Every kind of value is written back in a form that build_config reads again."""
    from peptide_opt.config import build_config, parse_config_text

    fields = {
        "site_center": "1.5,2,-3.25",
        "site_size": "20,20,20",
        "receptor_chains": "A",
        "aa_bias": "W:1.5,P:-1",
        "proteinmpnn_enabled": "false",
        "sampling_temperature": "0.2",
        "omit_amino_acids": "C",
        "fixed_positions": "1-2,5",
        "priority": "5",
    }
    with api_server.client(api_users("bob")) as client:
        response = submit(client, "PQQATDD", **fields)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["priority"] == 5
    text = storage_call(
        api_server.env, "read_text", f"{task['job_dir']}/optimization_config.txt"
    )
    config = build_config(parse_config_text(text))
    assert config.site_center == (1.5, 2.0, -3.25)
    assert config.site_size == (20.0, 20.0, 20.0)
    assert config.receptor_chains == ("A",)
    assert config.aa_bias == (("W", 1.5), ("P", -1.0))
    assert config.proteinmpnn_enabled is False
    assert config.sampling_temperature == 0.2
    assert config.omit_amino_acids == "C"
    assert config.fixed_positions == "1-2,5"
    assert config.peptide_sequence == "PQQATDD"


@pytest.mark.parametrize(
    ("fields", "peptide", "message"),
    [
        ({}, "PQXZ", "'X' at position 3 is not one of the 20 standard amino acids"),
        ({}, "", "peptide"),
        ({"n_poses": "99"}, "PQQATDD", "n_poses must be between 1 and 50, got 99"),
        ({"site_size": "1,1,1"}, "PQQATDD", "site_size must be between 5 and 40"),
        ({"ph": "abc"}, "PQQATDD", "ph must be a number, got 'abc'"),
        ({"n_pose": "2"}, "PQQATDD", "unknown field 'n_pose'"),
        ({"storage_prefix": "jobs/x"}, "PQQATDD", "is set by the server"),
        ({"priority": "5000"}, "PQQATDD", "priority must be between -1000 and 1000"),
        # 1czy_complex.pdb has chains A and B, so a missing chain fails before queueing.
        (
            {"site_chain": "Q"},
            "PQQATDD",
            "site_chain 'Q' not found in receptor 1czy_complex.pdb; chains present: A, B",
        ),
        (
            {"receptor_chains": "A,C"},
            "PQQATDD",
            "receptor_chains C not found among the protein chains of 1czy_complex.pdb",
        ),
        # The receptor's atoms span about -27..7, -14..35, -5..40 Å.
        (
            {"site_center": "500,500,500", "site_size": "20,20,20"},
            "PQQATDD",
            "site_center (500.00, 500.00, 500.00) lies outside the receptor's bounding",
        ),
    ],
)
def test_submit_rejects_invalid_input(
    api_server, api_users, database_url, fields, peptide, message
):
    with api_server.client(api_users("carol")) as client:
        response = submit(client, peptide, **fields)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert fetch_rows(database_url, "SELECT id FROM tasks") == []


def test_submit_rejects_bad_receptor(api_server, api_users, database_url, tmp_path):
    not_a_structure = tmp_path / "receptor.pdb"
    not_a_structure.write_text("this is not a structure\n")
    with api_server.client(api_users("dave")) as client:
        response = submit(client, "PQQATDD", receptor=not_a_structure)
        unsafe = client.post(
            "/v1/tasks",
            data={"peptide": "PQQATDD"},
            files={"receptor": ("..", COMPLEX.read_bytes())},
        )
        missing = client.post("/v1/tasks", data={"peptide": "PQQATDD"})
        neither = client.post("/v1/tasks", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    assert "receptor receptor.pdb: not a PDB or mmCIF file" in response.json()["detail"]
    assert unsafe.status_code == 422
    assert "receptor file name" in unsafe.json()["detail"]
    assert missing.status_code == 422
    assert "receptor is missing" in missing.json()["detail"]
    assert neither.status_code == 415
    assert fetch_rows(database_url, "SELECT id FROM tasks") == []


def test_submit_rejects_repeated_fields(api_server, api_users):
    with api_server.client(api_users("twice")) as client:
        response = client.post(
            "/v1/tasks",
            data={"peptide": ["PQQATDD", "GGG"]},
            files={"receptor": (COMPLEX.name, COMPLEX.read_bytes())},
        )
    assert response.status_code == 422
    assert response.json()["detail"] == "field 'peptide' is given more than once"


def test_upload_over_limit_is_413(api_server_factory, api_users, database_url, tmp_path):
    server = api_server_factory(MAX_UPLOAD_MB="1")
    big = tmp_path / "big.pdb"
    # 2 MiB of ATOM-like lines: twice the limit.
    line = COMPLEX.read_text().splitlines()[0] + "\n"
    big.write_text(line * (2 * 1024 * 1024 // len(line) + 1))
    with server.client(api_users("erin")) as client:
        declared = submit(client, "PQQATDD", receptor=big)

        def chunks():
            yield b"--x\r\nContent-Disposition: form-data; name=\"receptor\"; "
            yield b"filename=\"big.pdb\"\r\n\r\n"
            for _ in range(3):
                yield b"A" * (1024 * 1024)

        streamed = client.post(
            "/v1/tasks",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
    assert declared.status_code == 413
    assert "exceeds the upload limit of 1 MB (MAX_UPLOAD_MB)" in declared.json()["detail"]
    assert streamed.status_code == 413
    assert fetch_rows(database_url, "SELECT id FROM tasks") == []


def test_pending_limit_is_429(api_server_factory, api_users, database_url):
    server = api_server_factory(MAX_PENDING_PER_USER="2")
    frank, grace = api_users("frank"), api_users("grace")
    with server.client(frank) as client:
        codes = [submit(client, "PQQATDD").status_code for _ in range(3)]
        refused = submit(client, "PQQATDD")
    assert codes == [201, 201, 429]
    assert "the limit is 2 (MAX_PENDING_PER_USER)" in refused.json()["detail"]
    # The limit is per user: another user still submits.
    with server.client(grace) as client:
        assert submit(client, "PQQATDD").status_code == 201
    rows = fetch_rows(database_url, "SELECT user_id FROM tasks")
    assert len(rows) == 3


def test_pending_limit_holds_concurrently(api_server_factory, api_users, database_url):
    """Ten parallel submissions against a limit of 3 queue exactly 3 tasks."""
    server = api_server_factory(MAX_PENDING_PER_USER="3")
    user = api_users("heidi")

    async def burst():
        async with httpx.AsyncClient(
            base_url=server.url, headers=user.headers, timeout=60
        ) as client:
            body = COMPLEX.read_bytes()

            async def one():
                response = await client.post(
                    "/v1/tasks",
                    data={"peptide": "PQQATDD"},
                    files={"receptor": ("r.pdb", body)},
                )
                return response.status_code

            return await asyncio.gather(*(one() for _ in range(10)))

    codes = asyncio.run(burst())
    assert sorted(codes) == [201] * 3 + [429] * 7
    assert len(fetch_rows(database_url, "SELECT id FROM tasks")) == 3


def test_rate_limit_shared_by_processes(api_server_factory, api_users):
    """Two API processes on one database count one user's submissions together."""
    first = api_server_factory(SUBMIT_RATE_PER_MINUTE="2")
    second = api_server_factory(SUBMIT_RATE_PER_MINUTE="2")
    ivan = api_users("ivan")
    wait_for_fresh_minute()
    with first.client(ivan) as one, second.client(ivan) as two:
        assert submit(one, "PQQATDD").status_code == 201
        assert submit(two, "PQQATDD").status_code == 201
        refused = submit(one, "PQQATDD")
    assert refused.status_code == 429
    assert "2 per minute (SUBMIT_RATE_PER_MINUTE)" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_submit_json_names_uploads(api_server, api_users, database_url):
    judy = api_users("judy")
    env = api_server.env
    own = f"uploads/{judy.user_id}/models/receptor.pdb"
    storage_call(env, "write_bytes", own, COMPLEX.read_bytes())
    storage_call(env, "write_text", f"uploads/{judy.user_id}/p.fasta", PEPTIDE_FASTA)

    with api_server.client(judy) as client:
        by_text = client.post(
            "/v1/tasks",
            json={"receptor_key": own, "peptide": "PQQATDD", "config": {"n_poses": 3}},
        )
        by_key = client.post(
            "/v1/tasks",
            json={"receptor_key": own, "peptide_key": f"uploads/{judy.user_id}/p.fasta"},
        )
        missing = client.post(
            "/v1/tasks",
            json={"receptor_key": f"uploads/{judy.user_id}/none.pdb", "peptide": "PQQ"},
        )
        both = client.post(
            "/v1/tasks", json={"receptor_key": own, "peptide": "PQQ", "peptide_key": own}
        )

    assert by_text.status_code == 201, by_text.text
    assert by_key.status_code == 201, by_key.text
    task = by_text.json()
    copied = storage_call(env, "read_bytes", f"{task['job_dir']}/input/receptor.pdb")
    assert copied == COMPLEX.read_bytes()
    config = storage_call(env, "read_text", f"{task['job_dir']}/optimization_config.txt")
    assert "n_poses=3" in config.splitlines()
    fasta = storage_call(env, "read_text", f"{by_key.json()['job_dir']}/input/peptide.fasta")
    assert "PQQATDD" in fasta
    assert missing.status_code == 422
    assert "not found in storage" in missing.json()["detail"]
    assert both.status_code == 422
    assert len(fetch_rows(database_url, "SELECT id FROM tasks")) == 2


def test_upload_then_submit_json(api_server, api_users, database_url):
    kim = api_users("kim")
    with api_server.client(kim) as client:
        stored = client.put("/v1/uploads/structures/1czy.pdb", content=COMPLEX.read_bytes())
        body = stored.json()
        submitted = client.post(
            "/v1/tasks", json={"receptor_key": body["key"], "peptide": "PQQATDD"}
        )
        # Percent-encoded, so that the client does not resolve the dots itself.
        traversal = client.put("/v1/uploads/a/%2E%2E/%2E%2E/b.pdb", content=b"x")
        empty_segment = client.put("/v1/uploads/a//b.pdb", content=b"x")
        # A peptide file over the 10000-character limit of peptide text.
        big_fasta = client.put("/v1/uploads/big.fasta", content=b">p\n" + b"A" * 20000)
        too_big = client.post(
            "/v1/tasks",
            json={"receptor_key": body["key"], "peptide_key": big_fasta.json()["key"]},
        )
    assert stored.status_code == 201, stored.text
    assert body["key"] == f"uploads/{kim.user_id}/structures/1czy.pdb"
    assert body["size"] == COMPLEX.stat().st_size
    assert submitted.status_code == 201, submitted.text
    task = submitted.json()
    copied = storage_call(api_server.env, "read_bytes", f"{task['job_dir']}/input/1czy.pdb")
    assert copied == COMPLEX.read_bytes()
    assert traversal.status_code == 422
    assert "'.' or '..' segments" in traversal.json()["detail"]
    assert empty_segment.status_code == 422
    assert too_big.status_code == 422
    assert "over the limit of 10000 bytes" in too_big.json()["detail"]


@pytest.mark.parametrize(
    "key_template",
    [
        "uploads/{other}/receptor.pdb",
        "jobs/peptide_optimization/x/input/receptor.pdb",
        "uploads/{me}x/receptor.pdb",
        "receptor.pdb",
    ],
)
def test_submit_json_other_files_403(api_server, api_users, database_url, key_template):
    me, other = api_users("mallory"), api_users("trent")
    key = key_template.format(me=me.user_id, other=other.user_id)
    storage_call(api_server.env, "write_bytes", key, COMPLEX.read_bytes())
    with api_server.client(me) as client:
        response = client.post("/v1/tasks", json={"receptor_key": key, "peptide": "PQQ"})
    assert response.status_code == 403, response.text
    assert "outside your uploads folder" in response.json()["detail"]
    assert fetch_rows(database_url, "SELECT id FROM tasks") == []


def test_submit_json_traversal_rejected(api_server, api_users):
    me = api_users("oscar")
    with api_server.client(me) as client:
        response = client.post(
            "/v1/tasks",
            json={"receptor_key": f"uploads/{me.user_id}/../x/r.pdb", "peptide": "PQQ"},
        )
    assert response.status_code == 422
    assert "'.' or '..' segments" in response.json()["detail"]


# -- reading, cancelling, deleting ---------------------------------------------------


def test_list_paginates_and_filters(api_server, api_users):
    peggy = api_users("peggy")
    with api_server.client(peggy) as client:
        ids = [submit(client, "PQQATDD").json()["id"] for _ in range(3)]
        client.post(f"/v1/tasks/{ids[0]}/cancel")
        first = client.get("/v1/tasks", params={"limit": 2}).json()
        second = client.get("/v1/tasks", params={"limit": 2, "offset": 2}).json()
        cancelled = client.get("/v1/tasks", params={"status": "cancelled"}).json()
        bad = client.get("/v1/tasks", params={"status": "done"})
    assert first["total"] == 3
    # Newest first.
    assert [task["id"] for task in first["tasks"]] == [ids[2], ids[1]]
    assert [task["id"] for task in second["tasks"]] == [ids[0]]
    assert [task["id"] for task in cancelled["tasks"]] == [ids[0]]
    assert cancelled["total"] == 1
    assert bad.status_code == 422


def test_cancel_pending_and_delete(api_server, api_users, database_url):
    victor = api_users("victor")
    with api_server.client(victor) as client:
        task = submit(client, "PQQATDD").json()
        busy = client.delete(f"/v1/tasks/{task['id']}")
        cancelled = client.post(f"/v1/tasks/{task['id']}/cancel")
        again = client.post(f"/v1/tasks/{task['id']}/cancel")
        deleted = client.delete(f"/v1/tasks/{task['id']}")
        gone = client.get(f"/v1/tasks/{task['id']}")
    assert busy.status_code == 409
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert again.status_code == 409
    assert "is cancelled and can no longer be cancelled" in again.json()["detail"]
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert fetch_rows(database_url, "SELECT id FROM tasks") == []
    assert storage_call(api_server.env, "list_keys", task["job_dir"]) == []


def test_result_of_unfinished_task_is_409(api_server, api_users):
    walter = api_users("walter")
    with api_server.client(walter) as client:
        task = submit(client, "PQQATDD").json()
        result = client.get(f"/v1/tasks/{task['id']}/result")
        file = client.get(f"/v1/tasks/{task['id']}/files/result.csv")
    assert result.status_code == 409
    assert "is pending" in result.json()["detail"]
    assert file.status_code == 409


def test_platform_rows_readable(api_server, api_users, database_url):
    """A row the platform inserted (old local job_dir) reads like our own."""
    user = api_users("platform-user")
    task_id = str(uuid.uuid4())
    fetch_rows(
        database_url,
        "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
        "VALUES ($1, $2, 'peptide_optimization', $3, 'pending')",
        task_id,
        user.user_id,
        f"/tmp/astramolecula/jobs/peptide_optimization/{task_id}",
    )
    other_type = str(uuid.uuid4())
    fetch_rows(
        database_url,
        "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
        "VALUES ($1, $2, 'docking', 'jobs/docking/x', 'pending')",
        other_type,
        user.user_id,
    )

    with api_server.client(user) as client:
        task = client.get(f"/v1/tasks/{task_id}")
        listing = client.get("/v1/tasks").json()
        foreign = client.get(f"/v1/tasks/{other_type}")
        cancel_foreign = client.post(f"/v1/tasks/{other_type}/cancel")

    assert task.status_code == 200
    assert task.json()["progress"] == 0
    assert [item["id"] for item in listing["tasks"]] == [task_id]
    # Rows of the platform's other task types are not ours to show or change.
    assert foreign.status_code == 404
    assert cancel_foreign.status_code == 404
    status = fetch_rows(database_url, "SELECT status FROM tasks WHERE id = $1", other_type)
    assert status[0]["status"] == "pending"


def test_retention_deletes_old_files(api_server, api_users, database_url):
    user = api_users("rita")
    with api_server.client(user) as client:
        old = submit(client, "PQQATDD").json()
        recent = submit(client, "PQQATDD").json()
        for task in (old, recent):
            client.post(f"/v1/tasks/{task['id']}/cancel")
    ten_days_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=10)
    fetch_rows(
        database_url, "UPDATE tasks SET finished_at = $2 WHERE id = $1", old["id"], ten_days_ago
    )

    async def run_sweep():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            async with get_storage(Settings.from_env(api_server.env)) as storage:
                return await retention.sweep(pool, storage, 7.0)
        finally:
            await pool.close()

    assert asyncio.run(run_sweep()) == 1
    env = api_server.env
    assert storage_call(env, "list_keys", old["job_dir"]) == []
    assert len(storage_call(env, "list_keys", recent["job_dir"])) == 3
    with api_server.client(user) as client:
        swept = client.get(f"/v1/tasks/{old['id']}").json()
        kept = client.get(f"/v1/tasks/{recent['id']}").json()
    assert swept["files_deleted_at"] is not None
    assert kept["files_deleted_at"] is None
    # A second sweep finds nothing new.
    assert asyncio.run(run_sweep()) == 0


# -- health, metrics, CORS, docs, web page -------------------------------------------


def test_health_and_metrics(api_server, api_users):
    with api_server.client(api_users("sybil")) as client:
        for _ in range(2):
            submit(client, "PQQATDD")
        live = client.get("/health/live")
        ready = client.get("/health/ready")
        metrics = client.get("/metrics")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    assert 'peptide_opt_tasks{status="pending"} 2.0' in lines
    assert 'peptide_opt_tasks{status="finished"} 0.0' in lines
    assert "peptide_opt_queue_depth 2.0" in lines
    assert "peptide_opt_task_duration_seconds_count 0.0" in lines


def test_ready_fails_without_storage(api_server_factory):
    # Nothing listens on a port that was free a moment ago.
    from tests.fixtures.api import free_port

    server = api_server_factory(SEAWEED_FILER_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    response = httpx.get(f"{server.url}/health/ready", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["storage"].startswith("failed")


def test_cors_origins(api_server_factory):
    listed = api_server_factory(CORS_ORIGINS="http://app.example.test")
    anything = api_server_factory(CORS_ORIGINS="*")
    preflight = {
        "Origin": "http://app.example.test",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = httpx.options(f"{listed.url}/v1/tasks", headers=preflight)
    other = httpx.options(
        f"{listed.url}/v1/tasks", headers={**preflight, "Origin": "http://evil.test"}
    )
    wildcard = httpx.options(f"{anything.url}/v1/tasks", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "http://app.example.test"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in other.headers
    assert wildcard.headers["access-control-allow-origin"] == "*"
    # "*" never goes together with credentials.
    assert "access-control-allow-credentials" not in wildcard.headers


def test_docs_and_web_page(api_server):
    with api_server.client() as client:
        spec = client.get("/openapi.json")
        docs = client.get("/docs")
        page = client.get("/")
        script = client.get("/static/app.js")
    assert spec.status_code == 200
    assert "/v1/tasks/{task_id}/files/{name}" in spec.json()["paths"]
    assert docs.status_code == 200
    # Swagger UI comes from our static folder, never from a CDN.
    assert "/static/vendor/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert page.status_code == 200
    assert '<script src="/static/vendor/3Dmol-min.js">' in page.text
    assert script.status_code == 200


def test_viewer_served_locally(api_server):
    from peptide_opt.api.app import STATIC_DIR

    if not (STATIC_DIR / "vendor" / "3Dmol-min.js").is_file():
        pytest.skip("3Dmol.js is not installed: run 'npm ci' in the repository")
    with api_server.client() as client:
        response = client.get("/static/vendor/3Dmol-min.js")
    assert response.status_code == 200
    assert len(response.content) > 100_000
    assert b"3Dmol" in response.content[:5000] or b"$3Dmol" in response.content

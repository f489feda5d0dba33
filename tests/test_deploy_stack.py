"""The containers' commands and settings, run as local processes on real services.

No Docker engine or cluster runs here, but the processes the containers would start can.
Each test takes the commands and environment that compose (or the Kubernetes manifests)
give the migration, API and worker containers. It points the stack's own host names at
the test's PostgreSQL database and SeaweedFS server, runs the commands, and then runs
the containers' own health checks against them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures.deploy import REPO_ROOT, find_object
from tests.fixtures.seaweedfs import free_port

pytestmark = pytest.mark.services

STARTUP_TIMEOUT_S = 120.0


def local_argv(argv: list[str]) -> list[str]:
    """The container's command for this virtualenv (``peptide-opt``, ``python``)."""
    if argv[0] == "peptide-opt":
        return [sys.executable, "-m", "peptide_opt.cli", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return list(argv)


def local_environment(
    container_env: dict[str, str], database_url: str, seaweedfs, tmp_path: Path, port: int
) -> dict[str, str]:
    """Return ``container_env`` with the stack's host names replaced by the test's servers."""
    database = urlsplit(database_url)
    replacements = {
        "DB_HOST": database.hostname,
        "DB_PORT": str(database.port or 5432),
        "DB_NAME": database.path.lstrip("/"),
        "SEAWEED_FILER_ENDPOINT": seaweedfs.filer_url,
        "S3_ENDPOINT": seaweedfs.s3_url,
        "S3_ACCESS_KEY": seaweedfs.access_key,
        "S3_SECRET_KEY": seaweedfs.secret_key,
        "SEAWEED_BUCKET": seaweedfs.bucket,
        "STORAGE_LOCAL_ROOT": str(tmp_path / "storage"),
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        # Loopback only: tests never listen on other interfaces.
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
    }
    environ = {
        key: value for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "TMPDIR")
    }
    environ.update({k: v for k, v in container_env.items() if v is not None})
    environ.update(replacements)
    environ.pop("DATABASE_URL", None)
    return environ


class Stack:
    """The API and a worker started with one environment; stopped by the fixture."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen] = {}

    def run_once(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            local_argv(argv), env=env, capture_output=True, text=True, timeout=300
        )

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.tmp_path / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            local_argv(argv), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if condition():
                return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            time.sleep(0.5)
        logs = "\n".join(f"--- {name}\n{self.log(name)}" for name in self.processes)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@pytest.fixture
def stack(tmp_path: Path):
    running = Stack(tmp_path)
    yield running
    running.stop()


def _live_workers(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT count(*) FROM workers WHERE heartbeat_at > "
            "(now() AT TIME ZONE 'utc') - interval '60 seconds'"
        ).fetchone()[0]


def _probe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(local_argv(argv), env=env, capture_output=True, text=True,
                          timeout=60)


def _dockerfile_healthcheck() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", "")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    return json.loads(line.split(" CMD ", 1)[1])


# uvicorn 0.55 shuts down gracefully on SIGTERM and then raises the signal again, so
# the API's exit status is "killed by SIGTERM" after a clean stop. The worker exits 0.
STOPPED = {"api": -signal.SIGTERM, "worker": 0}


def _run_stack(stack, commands, environ, database_url, api_ready) -> None:
    """Migrate, start the API and a worker, and wait until both are up."""
    migrated = stack.run_once(commands["migrate"], environ["migrate"])
    assert migrated.returncode == 0, migrated.stderr

    stack.start("api", commands["api"], environ["api"])
    stack.start("worker", commands["worker"], environ["worker"])
    stack.wait_until(api_ready, "the API health check")
    stack.wait_until(lambda: _live_workers(database_url) == 1, "the worker's row")


def test_compose_services_run_on_real_services(
    stack, compose_config, empty_database_url, seaweedfs, tmp_path
):
    port = free_port()
    services = compose_config["services"]
    environ = {
        name: local_environment(
            services[name]["environment"], empty_database_url, seaweedfs, tmp_path, port
        )
        for name in ("migrate", "api", "worker")
    }
    commands = {name: services[name]["command"] for name in ("migrate", "api", "worker")}
    api_check = services["api"]["healthcheck"]["test"][1:]

    _run_stack(
        stack,
        commands,
        environ,
        empty_database_url,
        lambda: _probe(api_check, environ["api"]).returncode == 0,
    )

    # The image's own HEALTHCHECK (liveness) passes too.
    image_check = _probe(_dockerfile_healthcheck(), environ["api"])
    assert image_check.returncode == 0, image_check.stderr
    assert stack.stop() == STOPPED


def test_k8s_containers_run_on_real_services(
    stack, k8s_documents, empty_database_url, seaweedfs, tmp_path
):
    import httpx

    port = free_port()
    containers = {
        "migrate": ("Job", "peptide-opt-migrate"),
        "api": ("Deployment", "peptide-opt-api"),
        "worker": ("Deployment", "peptide-opt-worker"),
    }
    environ, commands, specs = {}, {}, {}
    for name, (kind, object_name) in containers.items():
        pod = find_object(k8s_documents, kind, object_name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        values: dict[str, str] = {}
        for source in container.get("envFrom", []):
            reference = source.get("configMapRef") or source.get("secretRef")
            kind_name = "ConfigMap" if "configMapRef" in source else "Secret"
            document = find_object(k8s_documents, kind_name, reference["name"])
            values.update(document.get("data") or document.get("stringData"))
        values.update({entry["name"]: entry["value"] for entry in container.get("env", [])})
        environ[name] = local_environment(
            values, empty_database_url, seaweedfs, tmp_path, port
        )
        commands[name] = container["command"]
        specs[name] = container

    def probe_passes(kind: str) -> bool:
        path = specs["api"][kind]["httpGet"]["path"]
        try:
            response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    _run_stack(
        stack, commands, environ, empty_database_url, lambda: probe_passes("readinessProbe")
    )

    assert probe_passes("livenessProbe")
    api = find_object(k8s_documents, "Deployment", "peptide-opt-api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    # Prometheus scrapes the annotated path on the annotated port.
    metrics_url = f"http://127.0.0.1:{port}{annotations['prometheus.io/path']}"
    assert annotations["prometheus.io/port"] == str(specs["api"]["ports"][0]["containerPort"])
    assert httpx.get(metrics_url, timeout=5).status_code == 200
    assert stack.stop() == STOPPED

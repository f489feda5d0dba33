"""Environment names: .env.example, compose and Kubernetes use only the shared settings.

Every process reads one set of variable names (peptide_opt.settings). A misspelt name in
a deployment file is silently ignored by the process, so these tests compare each file
against that set.
"""

from __future__ import annotations

import ast
import re

from peptide_opt.settings import Settings
from tests.fixtures.deploy import (
    PEPTIDE_OPT_SERVICES,
    REPO_ROOT,
    SETTINGS_NAMES,
    find_object,
)

ENV_EXAMPLE = REPO_ROOT / ".env.example"
# `NAME=value` or, for a documented default, `# NAME=value`.
ENV_LINE = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("# [compose sets]"):
            continue
        match = ENV_LINE.match(line)
        if match:
            entries.setdefault(match.group(1), []).append(match.group(2))
    return entries


def test_settings_module_reads_these_names():
    tree = ast.parse((REPO_ROOT / "src" / "peptide_opt" / "settings.py").read_text())
    constants = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", node.value)
    }
    # Multi-word upper-case constants of settings.py are exactly the variable names
    # (single words such as INFO are values, not names).
    single_word = {"EXECUTOR"}
    assert constants | single_word == SETTINGS_NAMES


def test_env_example_lists_every_setting_once():
    entries = env_example_entries()

    assert set(entries) == SETTINGS_NAMES
    duplicated = sorted(name for name, values in entries.items() if len(values) > 1)
    assert duplicated == []


def test_env_example_defaults_match_settings():
    entries = {name: values[0] for name, values in env_example_entries().items()}
    # Read with every variable set to the example's value (empty ones left unset, which
    # Settings treats alike), then compare with the settings of an empty environment.
    # DB_PASSWORD is left empty in the example on purpose: compose requires one.
    environ = {name: value for name, value in entries.items() if value}
    assert Settings.from_env(environ) == Settings.from_env({})


def test_env_example_compose_sets_lines_name_settings():
    names = re.findall(
        r"\b([A-Z][A-Z0-9_]*)=",
        "\n".join(
            line for line in ENV_EXAMPLE.read_text().splitlines()
            if line.startswith("# [compose sets]")
        ),
    )
    assert names
    assert set(names) <= SETTINGS_NAMES


def test_compose_services_use_settings_names(compose_config):
    for service in PEPTIDE_OPT_SERVICES:
        names = set(compose_config["services"][service].get("environment", {}))
        assert names <= SETTINGS_NAMES, (service, sorted(names - SETTINGS_NAMES))


def test_compose_interpolates_only_settings_names():
    text = (REPO_ROOT / "docker" / "docker-compose.yml").read_text()
    text += (REPO_ROOT / "docker" / "docker-compose.gpu.yml").read_text()
    # ${NAME}, ${NAME:-default}, ${NAME:?message}; $$ escapes a literal $ for the shell.
    names = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert names
    assert names <= SETTINGS_NAMES, sorted(names - SETTINGS_NAMES)


def _container_env_names(container: dict, documents: list[dict]) -> set[str]:
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config_map = find_object(documents, "ConfigMap", source["configMapRef"]["name"])
            names |= set(config_map["data"])
        if "secretRef" in source:
            secret = find_object(documents, "Secret", source["secretRef"]["name"])
            names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return names


def test_k8s_containers_use_settings_names(k8s_documents):
    checked = 0
    for document in k8s_documents:
        if document["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            if not container["image"].startswith("peptide-opt"):
                continue  # PostgreSQL's and SeaweedFS's own variables
            names = _container_env_names(container, k8s_documents)
            assert names <= SETTINGS_NAMES, (
                document["metadata"]["name"],
                sorted(names - SETTINGS_NAMES),
            )
            checked += 1
    # The API, the worker and the migration Job.
    assert checked == 3


def test_k8s_config_map_and_secret_keys_are_settings(k8s_documents):
    config_map = find_object(k8s_documents, "ConfigMap", "peptide-opt-config")
    secret = find_object(k8s_documents, "Secret", "peptide-opt-secrets")

    assert set(config_map["data"]) <= SETTINGS_NAMES
    assert set(secret["stringData"]) <= SETTINGS_NAMES
    # Credentials only in the Secret, never in the ConfigMap.
    credentials = {"DB_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "PEPTIDE_OPT_KEY"}
    assert not credentials & set(config_map["data"])
    assert {"DB_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"} <= set(secret["stringData"])


def test_k8s_settings_are_valid(k8s_documents):
    config_map = find_object(k8s_documents, "ConfigMap", "peptide-opt-config")
    worker = find_object(k8s_documents, "Deployment", "peptide-opt-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    environ = {**config_map["data"]}
    environ.update({entry["name"]: entry["value"] for entry in container["env"]})

    # The same validation every process runs at start: raises InputError when invalid.
    settings = Settings.from_env(environ)

    assert settings.storage_backend == "filer"
    assert settings.api_host == "0.0.0.0"


def test_compose_settings_are_valid(compose_config):
    for service in PEPTIDE_OPT_SERVICES:
        environ = compose_config["services"][service]["environment"]
        environ = {name: value for name, value in environ.items() if value is not None}
        settings = Settings.from_env(environ)
        assert settings.database_url.endswith("@postgres:5432/peptide_opt"), service

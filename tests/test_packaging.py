"""Packaging: the wheel works on a machine with no checkout, and the lock files hold every
dependency that pyproject.toml names.

The wheel is built once per module from a copy of the sources (a stale build/ folder in the
checkout cannot leak into it) and installed into a new virtualenv without pip. The
dependencies are not downloaded again: a .pth file puts this test run's site-packages
behind the new one's. mailer itself is installed editable there, through an
`__editable__*.pth` finder, which Python runs only for .pth files in a site folder proper,
not in a folder a .pth file added: so `import mailer` in the new virtualenv finds the wheel's
copy, and the tests check that it does.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What a wheel is built from: the same list deploy/Dockerfile copies.
SOURCES = ["pyproject.toml", "README.md", "mailer", "templates", "migrations"]
# Where pyproject.toml's package-dir puts the folders that live outside mailer/.
MAPPED = {"templates": "mailer/default_templates", "migrations": "mailer/migrations"}


def _shipped_files(folder: str) -> list[str]:
    """The files of a source folder, as the wheel must hold them."""
    root = ROOT / folder
    target = MAPPED.get(folder, folder)
    return sorted(
        f"{target}/{p.relative_to(root).as_posix()}"
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (built,) = out.glob("mailer-*.whl")
    return built


@dataclass
class Installed:
    venv: Path
    site: Path
    bin: Path
    workdir: Path  # outside the checkout, holding config.toml

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith(("MAILER_", "PYTHON")) and k != "VIRTUAL_ENV"
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies: this run's own site-packages, searched after the new venv's.
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    workdir = tmp_path_factory.mktemp("instance")
    assert ROOT not in workdir.parents
    (workdir / "config.toml").write_text(
        f"""
[database]
url = "sqlite:///var/mailer.db"

[smtp]
from_address = "digest@example.org"

[web]
port = {_free_port()}

[digest]
name = "Packaged Weekly"
"""
    )
    return Installed(venv=venv, site=site, bin=venv / "bin", workdir=workdir)


def test_wheel_holds_templates_migrations_and_every_module(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = _shipped_files("templates")
    assert any(n.endswith(".html") for n in templates)
    versions = [n for n in _shipped_files("migrations") if n.startswith("mailer/migrations/versions/")]
    assert any(re.search(r"/\d{4}_\w+\.py$", n) for n in versions)
    expected = templates + _shipped_files("migrations") + _shipped_files("mailer")
    missing = sorted(set(expected) - names)
    # A sub-package missing here is one that pyproject.toml's [tool.setuptools] packages lacks.
    assert not missing, f"not in the wheel (see [tool.setuptools] in pyproject.toml): {missing}"
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "seeds/"))]


def test_every_subpackage_of_mailer_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        "mailer." + ".".join(p.parent.relative_to(ROOT / "mailer").parts)
        for p in (ROOT / "mailer").rglob("__init__.py")
        if p.parent != ROOT / "mailer"
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_installed_wheel_imports_from_the_new_venv_not_the_checkout(installed: Installed):
    probe = (
        "import importlib.resources as r, mailer, mailer.db;"
        "print(mailer.__file__);"
        "print(r.files('mailer.default_templates') / 'digest.html');"
        "print(r.files('mailer.migrations.versions'))"
    )
    lines = installed.run("python", "-c", probe).stdout.split()
    for line in lines:
        path = Path(line)
        assert path.is_relative_to(installed.site), line
        assert not path.is_relative_to(ROOT), line
    assert Path(lines[1]).is_file()
    assert list(Path(lines[2]).glob("0001_*.py"))
    assert "Commands:" in installed.run("mailer", "--help").stdout


def test_installed_wheel_builds_a_database_and_renders_a_digest(installed: Installed):
    installed.run("mailer", "init")
    db = installed.workdir / "var" / "mailer.db"
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"subscribers", "articles", "digests", "deliveries"} <= tables
    # Migrated to the newest revision of the packaged history.
    newest = max((ROOT / "migrations" / "versions").glob("[0-9]*.py")).read_text()
    assert re.search(rf'^revision(: str)? = "{re.escape(revision)}"$', newest, re.M), revision

    installed.run("mailer", "subscribers", "add", "ada@example.com", "--name", "Ada")
    article = installed.workdir / "story.txt"
    article.write_text(
        "Packaged wheels reach the reader\n\n"
        "The digest was rendered by a mailer installed from its wheel, far from any checkout.\n"
    )
    assert "1 added" in installed.run("mailer", "articles", "import", str(article)).stdout
    html = installed.run("mailer", "digest", "preview", "--out", "preview.html")
    assert html.returncode == 0
    page = (installed.workdir / "preview.html").read_text()
    assert "Packaged wheels reach the reader" in page and "Packaged Weekly" in page
    text = installed.run("mailer", "digest", "preview", "--text").stdout
    assert "Packaged wheels reach the reader" in text


@pytest.fixture
def serving(installed: Installed) -> Iterator[str]:
    installed.run("mailer", "init")
    port = re.search(r"port = (\d+)", (installed.workdir / "config.toml").read_text()).group(1)
    log = (installed.workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(installed.bin / "mailer"), "serve"],
        cwd=installed.workdir,
        env=installed.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_installed_wheel_serves_healthz(installed: Installed, serving: str):
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{serving}/healthz", timeout=5) as response:
                assert response.status == 200
                break
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                log = (installed.workdir / "serve.log").read_text()
                pytest.fail(f"/healthz never answered 200 ({exc}); the service's log:\n{log}")
            time.sleep(0.2)
    with urllib.request.urlopen(f"{serving}/subscribe", timeout=5) as response:
        assert response.status == 200  # a page from the packaged templates


# The lock files: generated by `make lock` from pyproject.toml, installed by `make install`
# (requirements.lock) and `make install-test` (requirements-test.lock).


def _locked(name: str) -> dict[str, str]:
    """name -> version of every package in a lock file; each must carry its hashes."""
    text = (ROOT / name).read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if not m:
            assert block.startswith("#") or not block.strip(), f"{name}: not a pin: {block[:80]!r}"
            continue
        assert "--hash=sha256:" in block, f"{name}: {m.group(1)} has no hash"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("requirements.lock", ["runtime"]), ("requirements-test.lock", ["runtime", "test"])],
)
def test_lock_pins_every_dependency_of_pyproject(lock: str, groups: list[str]):
    pins = _locked(lock)
    declared = {
        "runtime": PYPROJECT["project"]["dependencies"],
        "test": PYPROJECT["project"]["optional-dependencies"]["test"],
    }
    problems = []
    for group in groups:
        for spec in declared[group]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"{req.name} ({group}) is not in {lock}")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{lock} pins {req.name}=={pins[name]}, pyproject.toml wants {req.specifier}")
    assert not problems, "run `make lock` and commit the lock files:\n" + "\n".join(problems)


def test_runtime_lock_agrees_with_the_test_lock():
    runtime, test = _locked("requirements.lock"), _locked("requirements-test.lock")
    assert runtime.keys() <= test.keys()
    differ = {n: (v, test[n]) for n, v in runtime.items() if test[n] != v}
    assert not differ, f"the two lock files pin different versions (run `make lock`): {differ}"


def test_quick_start_installs_from_the_locks_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    for target, lock in (("install", "requirements.lock"), ("install-test", "requirements-test.lock")):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe, f"no `{target}` target"
        assert f"--require-hashes -r {lock}" in recipe.group(1)
        assert "--no-deps -e ." in recipe.group(1)
    assert re.search(r"^lock:", makefile, re.M)

"""The wheel ships every sub-package of mailer: pyproject.toml lists packages by hand
(migrations and templates live outside mailer/), so a new sub-package must be added there."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_every_subpackage_of_mailer_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "mailer." + ".".join(p.parent.relative_to(ROOT / "mailer").parts)
        for p in (ROOT / "mailer").rglob("__init__.py")
        if p.parent != ROOT / "mailer"
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"

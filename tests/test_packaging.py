"""A plain `pip install .` (what a cluster user runs) must ship every package of hpcray."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_every_package_is_listed_for_a_non_editable_install():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "hpcray").rglob("__init__.py")}
    found |= {"hpcray.jobscripts", "hpcray.deployments"}  # mapped from top-level folders
    assert found - listed == set(), "add these to [tool.setuptools] packages"

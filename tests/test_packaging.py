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


def test_the_public_names_and_subpackages_load_on_first_use():
    """`import hpcray` imports none of the API (replicas import it), yet every public name
    and subpackage is there when used, in a fresh process."""
    import subprocess
    import sys

    code = ("import sys, hpcray\n"
            "assert 'hpcray.api' not in sys.modules and 'hpcray.services.manager' not in "
            "sys.modules\n"
            "assert callable(hpcray.services.scale) and callable(hpcray.submit)\n"
            "assert hpcray.api.TERMINAL and set(hpcray.__all__) <= set(dir(hpcray))\n"
            "try:\n    hpcray.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

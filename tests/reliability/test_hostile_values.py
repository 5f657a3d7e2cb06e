"""Values with shell metacharacters, newlines and great length in every field that reaches a
job script: refused with their location, or quoted. The rendered script's own lines then run
under bash (its final `exec` of `hpcray up` replaced by printing the environment), and nothing
in the values may execute."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import yaml

from hpcray import api
from hpcray.errors import SpecError
from hpcray.spec.loader import loads_workflow

SITES = ["local", "frontier", "polaris", "delta", "perlmutter", "aurora"]


def corpus(marker: str) -> list[str]:
    touch = f"touch {marker}"
    return [f"$({touch})", f"`{touch}`", f"a;{touch}", f"a\n{touch}", f"a' ; {touch}; '",
            f'a" ; {touch}; "', f"a && {touch}", f"a | {touch}", "${HOME}", "~root", "*",
            "\\", "-rf", "x" * 5000, "a b", "#c", "é\u202e"]


FIELDS = ["name", "allocation.account", "allocation.partition", "allocation.qos",
          "allocation.job_name", "allocation.env.MY_VAR", "allocation.directives",
          "driver.command"]


def _workflow(field: str, value: str) -> str:
    data = {"name": "hostile", "allocation": {"nodes": 1, "walltime": "10m",
                                              "account": "proj1-delta-gpu", "env": {}},
            "driver": {"command": ["echo", "ok"]}}
    *parents, last = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    if last == "directives":
        target[last] = [value]
    elif last == "command":
        target[last] = ["echo", value]
    else:
        target[last] = value
    return yaml.safe_dump(data, allow_unicode=True)


@pytest.mark.parametrize("field", FIELDS)
def test_hostile_values_are_refused_or_quoted(field, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:6]}"
    accepted = quoted = 0
    for value in corpus(str(marker)):
        try:
            wf = loads_workflow(_workflow(field, value), "hostile.yaml")
        except SpecError as exc:
            assert "hostile.yaml:" in str(exc)  # refused, with its line
            continue
        for site in SITES:
            try:
                script = api.script(wf, site, run_dir=tmp_path / "run")
            except (SpecError, api.ResourceError):
                continue
            accepted += 1
            assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
            lines = script.splitlines()
            assert lines[-1].startswith("exec ")
            body = "\n".join(lines[:-1]).replace(f"cd {tmp_path / 'run'}", "cd /tmp")
            # site setup lines load modules; `module` is a no-op here
            ran = subprocess.run(["bash", "-c", "module() { :; }\n" + body
                                  + "\nprintenv MY_VAR || true"],
                                 capture_output=True, text=True, timeout=30)
            assert not marker.exists(), f"{field}={value!r} executed on {site}"
            if field.endswith("MY_VAR"):
                assert ran.returncode == 0, ran.stderr
                assert ran.stdout.rstrip("\n") == value  # quoted: exactly the value
                quoted += 1
    assert not marker.exists()
    if field.endswith("MY_VAR"):
        assert quoted == accepted > 0  # env values are not refused, they are quoted

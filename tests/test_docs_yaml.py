"""Every YAML example in README.md and docs/ is what the parser accepts: workflow files (and
fragments of one: `services:`, `driver:`) load with the workflow parser, their services'
`args` are what the deployment's constructor takes, and site profiles load as sites. A user
who copies an example gets a working start, not an error after the queue wait."""

from __future__ import annotations

import re

import pytest
import yaml

from hpcray.services.registry import check_args, load_class, target_of
from hpcray.sites import load_site_file
from hpcray.spec import loads_workflow
from tests.conftest import REPO

BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SNIPPETS = [(path, text[:m.start()].count("\n") + 2, m.group(1))
            for path in DOCS for text in [path.read_text()] for m in BLOCK.finditer(text)]


def test_the_docs_have_yaml_examples():
    assert len(SNIPPETS) >= 10
    assert any("vllm_llm" in s for _, _, s in SNIPPETS)


@pytest.mark.parametrize("path, line, snippet", SNIPPETS,
                         ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _ in SNIPPETS])
def test_each_yaml_example_loads(path, line, snippet, tmp_path):
    where = f"{path.relative_to(REPO)}:{line}"
    data = yaml.safe_load(snippet)
    assert isinstance(data, dict), f"{where}: not a mapping"
    if "scrape_configs" in data:  # a Prometheus config (docs/metrics.md): Prometheus' check
        import shutil
        import subprocess

        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool (Debian's prometheus) is not installed")
        config = tmp_path / "prometheus.yml"
        config.write_text(snippet)
        out = subprocess.run([promtool, "check", "config", "--syntax-only", str(config)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{where}: {out.stdout}{out.stderr}"
        return
    if "scheduler" in data:  # a site profile
        site = tmp_path / "mysite.yaml"
        site.write_text(snippet)
        load_site_file(site)
        return
    text = snippet if "name" in data else f"name: example\n{snippet}"
    workflow = loads_workflow(text, where)
    for service in workflow.services:
        if service.replicas and service.deployment and ":" not in service.deployment:
            check_args(load_class(target_of(service.deployment)), service.args, service.name)

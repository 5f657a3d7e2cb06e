"""Names a workflow may use come from installed entry points, not from lists in the generic
layers: deployments, remote kinds (the signature pipeline's own among them) and drivers'
options models."""

from __future__ import annotations

import pytest

from hpcray import plugins
from hpcray.errors import SpecError
from hpcray.spec import loads_workflow


def test_the_shipped_names_are_installed_entry_points():
    assert {"noop", "transformers_llm", "embedding", "vllm_llm"} <= set(
        plugins.names(plugins.DEPLOYMENTS))
    assert {"openai", "ollama", "vep_rest"} <= set(plugins.names(plugins.REMOTE_KINDS))
    assert "hpcray.pipelines.uq:run" in plugins.names(plugins.DRIVER_OPTIONS)


def test_a_remote_kind_loads_from_the_package_that_provides_it():
    cls = plugins.load(plugins.REMOTE_KINDS, "vep_rest")
    assert cls.__module__ == "hpcray.pipelines.signature.remote_vep" and cls.kind == "vep_rest"
    with pytest.raises(KeyError):
        plugins.load(plugins.REMOTE_KINDS, "nosuch")
    assert plugins.find(plugins.DRIVER_OPTIONS, "mymod:main") is None


def test_an_unknown_remote_kind_is_refused_at_load_with_its_line_and_the_installed_kinds():
    text = """name: r
allocation: {nodes: 1, walltime: 10m}
services:
  - name: llm
    replicas: 0
    remote:
      - {url: 'http://127.0.0.1:9/v1', kind: grpc, model: m}
"""
    with pytest.raises(SpecError) as err:
        loads_workflow(text, "wf.yaml")
    message = str(err.value)
    assert "wf.yaml:7" in message and "'grpc'" in message
    assert "ollama" in message and "openai" in message and "vep_rest" in message


def test_a_pipeline_drivers_args_are_checked_through_its_plugin():
    text = """name: u
allocation: {nodes: 1, walltime: 10m}
driver:
  function: hpcray.pipelines.uq:run
  args: {no_such_option: 1}
"""
    with pytest.raises(SpecError) as err:
        loads_workflow(text, "wf.yaml")
    assert str(err.value).startswith("wf.yaml:5: driver.args.models: required field is missing")

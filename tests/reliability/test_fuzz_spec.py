"""Property-based fuzzing of the workflow parser and site profiles: every input parses or
raises hpcray's SpecError with a file and line, never another exception."""

from __future__ import annotations

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcray.errors import SpecError
from hpcray.sites import load_site_file
from hpcray.spec.loader import loads_workflow

KEYS = ["name", "allocation", "nodes", "walltime", "account", "partition", "env", "setup",
        "directives", "driver", "function", "command", "args", "services", "deployment",
        "replicas", "resources", "cpus", "gpus", "stages", "each", "items", "glob", "grid",
        "after", "stream_from", "remote", "url", "kind", "model", "ray", "endpoints", "launch",
        "actors", "timeout", "retries", "transport", "scheduler", "launcher", "gpu_vendor",
        "cores_per_node", "gpus_per_node", "max_nodes", "site", "hpo"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(["10m", "01:00:00", "noop", "a:b",
                                                           "http://h/v1", "openai", "-1"]))
TREES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                    max_size=5)), max_leaves=25)
LOCATED = re.compile(r"^\S+\.yaml(:\d+)?: ")

settings.register_profile("hpcray", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hpcray")


def _check(call) -> None:
    try:
        call()
    except SpecError as exc:
        assert LOCATED.match(str(exc)), f"no file/line: {exc}"


@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=6))
def test_structured_workflows_parse_or_name_their_line(data):
    _check(lambda: loads_workflow(yaml.safe_dump(data), "fuzz.yaml"))


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_names_its_line(text):
    _check(lambda: loads_workflow(text, "fuzz.yaml"))


@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=6))
def test_site_profiles_parse_or_name_their_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sites") / "fuzzsite.yaml"
    path.write_text(yaml.safe_dump(data))
    _check(lambda: load_site_file(path))

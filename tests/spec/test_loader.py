"""Workflow files: every bad input is a one-line error naming the file, line and field."""

from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.spec import load_workflow, loads_workflow

GOOD = """\
name: demo
site: frontier
allocation:
  nodes: 4
  walltime: 02:00:00
  account: BIO123
  queue: batch
  directives: ["-C nvme"]
  setup: ["module load rocm/6.2.4"]
  env: {OMP_NUM_THREADS: "7"}
driver:
  command: python analyse.py --input 'data dir'
"""


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        loads_workflow(text, "wf.yaml")
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_good_file_parses_into_typed_model():
    wf = loads_workflow(GOOD, "wf.yaml")
    assert wf.allocation.nodes == 4
    assert wf.allocation.walltime == 7200
    assert wf.allocation.partition == "batch"  # 'queue' is accepted as the PBS/LSF spelling
    assert wf.driver.command == ["python", "analyse.py", "--input", "data dir"]
    assert wf.allocation.env == {"OMP_NUM_THREADS": "7"}


def test_load_from_file(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(GOOD)
    assert load_workflow(path).name == "demo"


def test_unknown_key_names_line_and_allowed_keys():
    err = error_of("name: x\nallocation:\n  nodes: 2\n  wallclock: 1h\n")
    assert err.line == 4
    assert err.field == "allocation.wallclock"
    assert "unknown key 'wallclock'" in str(err)
    assert "walltime" in str(err)  # the allowed keys are listed
    assert str(err).startswith("wf.yaml:4: allocation.wallclock:")


def test_unknown_top_level_key():
    err = error_of("name: x\nservice:\n  - a\n")
    assert err.line == 2 and "allowed:" in str(err) and "services" in str(err)


def test_malformed_yaml_names_line():
    err = error_of("name: x\nallocation:\n  nodes: [1, 2\n  walltime: 1h\n")
    assert err.line is not None and err.line >= 3
    assert "invalid YAML" in str(err)


def test_duplicate_key_is_an_error():
    err = error_of("name: x\nname: y\n")
    assert err.line == 2 and "duplicate key 'name'" in str(err)


@pytest.mark.parametrize("walltime", ["1 hour", "10:99:00", "0", "-5", "abc", "1w"])
def test_bad_walltime(walltime):
    err = error_of(f"name: x\nallocation:\n  walltime: '{walltime}'\n")
    assert err.field == "allocation.walltime" and err.line == 3
    assert "walltime" in str(err)


@pytest.mark.parametrize("directive", [
    "--foo=bar; rm -rf ~", "--x=$(id)", "--x=`id`", "--a=1 && reboot", "--a=1 | tee",
    "--comment=it's", "--x=a\nsrun evil",
])
def test_directive_with_shell_metacharacters_is_refused(directive):
    import json
    err = error_of(f"name: x\nallocation:\n  directives: [{json.dumps(directive)}]\n")
    assert err.field == "allocation.directives.0"
    assert err.line == 3


def test_setup_line_with_newline_refused():
    err = error_of('name: x\nallocation:\n  setup: ["module load a\\nrm -rf /"]\n')
    assert "newline" in str(err) and err.field == "allocation.setup.0"


@pytest.mark.parametrize("field,value", [
    ("account", "proj; rm"), ("queue", "debug q"), ("account", "$(id)"), ("job_name", "a'b")])
def test_values_entering_directives_are_tokens(field, value):
    err = error_of(f"name: x\nallocation:\n  {field}: \"{value}\"\n")
    assert "not allowed" in str(err)


def test_bad_env_name():
    err = error_of("name: x\nallocation:\n  env: {'A-B': 1}\n")
    assert "A-B" in str(err)


def test_missing_name_reports_top_level():
    err = error_of("allocation:\n  nodes: 1\n")
    assert err.field == "name" and "required" in str(err)


def test_wrong_type_names_the_value():
    err = error_of("name: x\nallocation:\n  nodes: many\n")
    assert err.field == "allocation.nodes" and "many" in str(err)


def test_driver_needs_exactly_one_of_command_or_function():
    err = error_of("name: x\ndriver:\n  command: a\n  function: m:f\n")
    assert "exactly one" in str(err) and err.line == 2


def test_driver_function_format():
    err = error_of("name: x\ndriver:\n  function: 'not a function'\n")
    assert "module:function" in str(err)


def test_reserved_sections_must_be_empty_for_now():
    err = error_of("name: x\nhpo:\n  trials: 8\n")
    assert err.field == "hpo" and "not supported" in str(err)


def test_a_stage_without_function_or_command_names_its_line():
    err = error_of("name: x\nstages:\n  - name: annotate\n")
    assert err.field == "stages.0" and err.line == 3
    assert "exactly one of 'function'" in str(err)


def test_warning_must_fit_in_walltime():
    err = error_of("name: x\nallocation:\n  walltime: 2m\n  walltime_warning: 300\n")
    assert "walltime_warning" in str(err)


def test_top_level_must_be_mapping():
    err = error_of("- a\n- b\n")
    assert "mapping" in str(err)


def test_missing_file():
    with pytest.raises(SpecError, match="file not found"):
        load_workflow("/nonexistent/wf.yaml")


def test_http_on_every_interface_needs_a_token():
    error = error_of("name: x\nendpoints:\n  listen: any\n")
    assert "wf.yaml:2" in str(error) and "token: true" in str(error)
    wf = loads_workflow("name: x\nendpoints: {listen: any, token: true}\n", "wf.yaml")
    assert (wf.endpoints.listen, wf.endpoints.token) == ("any", True)
    assert loads_workflow("name: x\n", "wf.yaml").endpoints.listen == "head"

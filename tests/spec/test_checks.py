"""What a workflow gets wrong beyond its schema is found before submission, with its line:
unknown deployment names, targets that cannot be imported from the workflow's directory,
model directories missing on this host (a warning: compute nodes may have them)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from hpcray import api
from hpcray.errors import SpecError
from hpcray.spec import load_workflow, loads_workflow

SERVICE = "  - {{name: model, deployment: {deployment}, args: {args}}}\n"


def workflow_file(directory: Path, body: str) -> Path:
    path = directory / "wf.yaml"
    path.write_text("name: checks\n" + body)
    return path


def services(deployment: str, args: str = "{}") -> str:
    return "services:\n" + SERVICE.format(deployment=deployment, args=args)


def test_an_unknown_deployment_name_is_an_error_at_load_naming_its_line_and_the_known_ones():
    with pytest.raises(SpecError) as err:
        loads_workflow("name: x\n" + services("nosuch"), "wf.yaml")
    assert err.value.line == 3 and err.value.field == "services.0.deployment"
    assert str(err.value).startswith("wf.yaml:3: services.0.deployment: unknown deployment "
                                     "'nosuch'; built-in: ")
    assert "noop" in str(err.value) and "vllm_llm" in str(err.value)
    loads_workflow("name: x\n" + services("noop"))  # installed: fine


def test_a_deployment_module_missing_from_the_workflow_directory_is_an_error_before_submission(
        tmp_path):
    path = workflow_file(tmp_path, services("'nosuchmod:Model'"))
    load_workflow(path)  # no import at load: the job's own load must not import user code
    with pytest.raises(SpecError) as err:
        api.script(path, run_dir=tmp_path / "run")
    assert str(err.value).startswith(f"{path}:3: services.0.deployment: cannot import "
                                     "'nosuchmod' for 'nosuchmod:Model'")
    with pytest.raises(SpecError, match="cannot import 'nosuchmod'"):
        api.prepare(path, run_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_module_beside_the_workflow_must_define_the_name_and_is_not_imported(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "raise RuntimeError('imported at submission')\n"
        "class Model:\n    pass\n")
    api.script(workflow_file(tmp_path, services("'mymodels:Model'")), run_dir=tmp_path / "r")
    path = workflow_file(tmp_path, services("'mymodels:Modle'"))
    with pytest.raises(SpecError, match=r"wf.yaml:3: services.0.deployment: module 'mymodels' "
                                        r"\(.*mymodels.py\) has no 'Modle'; it defines: Model"):
        api.script(path, run_dir=tmp_path / "r")
    assert "mymodels" not in sys.modules


def test_a_name_bound_in_a_way_the_reading_does_not_follow_is_a_warning(tmp_path, caplog):
    (tmp_path / "dynamic.py").write_text(
        "for _name in ('Model',):\n    globals()[_name] = type(_name, (), {})\n")
    path = workflow_file(tmp_path, services("'dynamic:Model'"))
    with caplog.at_level(logging.WARNING):
        api.script(path, run_dir=tmp_path / "r")  # not refused: 'Model' is in the source
    assert any("has no 'Model'" in r.getMessage() for r in caplog.records)


def test_driver_and_stage_functions_are_looked_up_in_the_workflow_dir_and_driver_cwd(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "analysis.py").write_text("def main():\n    pass\n")
    driver = "driver: {function: analysis:main, cwd: code}\n"
    api.script(workflow_file(tmp_path, driver), run_dir=tmp_path / "r")
    saved = list(sys.path)
    with pytest.raises(SpecError, match=r"wf.yaml:2: driver.function: cannot import 'nosuchmod'"):
        api.script(workflow_file(tmp_path, "driver: {function: nosuchmod:main}\n"),
                   run_dir=tmp_path / "r")
    assert sys.path == saved  # the workflow's directories were there only for the lookup
    stages = "stages:\n  - {name: prep, function: 'analysis:prepare'}\n" + driver
    with pytest.raises(SpecError, match=r"wf.yaml:3: stages.0.function: module 'analysis' .* "
                                        r"has no 'prepare'; it defines: main"):
        api.script(workflow_file(tmp_path, stages), run_dir=tmp_path / "r")


def test_a_package_that_fails_to_import_here_is_a_warning_not_an_error(tmp_path, caplog):
    (tmp_path / "gpupkg").mkdir()
    (tmp_path / "gpupkg" / "__init__.py").write_text("import cuda_only_extension_xyz\n")
    (tmp_path / "gpupkg" / "model.py").write_text("class Model:\n    pass\n")
    path = workflow_file(tmp_path, services("'gpupkg.model:Model'"))
    with caplog.at_level(logging.WARNING, logger="hpcray.spec"):
        api.script(path, run_dir=tmp_path / "r")
    assert (f"{path}:3: services.0.deployment: cannot check 'gpupkg.model' on this host: "
            "ModuleNotFoundError: No module named 'cuda_only_extension_xyz'") in caplog.text
    assert "gpupkg" not in sys.modules


def test_a_missing_module_is_a_warning_when_the_job_runs_another_python(tmp_path, caplog):
    body = "allocation: {python: /opt/site/env/bin/python}\ndriver: {function: sitemod:main}\n"
    with caplog.at_level(logging.WARNING, logger="hpcray.spec"):
        api.script(workflow_file(tmp_path, body), run_dir=tmp_path / "r")
    assert ("wf.yaml:3: driver.function: cannot import 'sitemod' for 'sitemod:main': no such "
            "module in") in caplog.text
    assert "(the job runs allocation.python /opt/site/env/bin/python)" in caplog.text


def test_absolute_model_paths_missing_here_are_warnings_with_their_line(tmp_path, caplog):
    (tmp_path / "present").mkdir()
    args = (f"{{model_path: /nonexistent/llama, tokenizer_path: {tmp_path / 'present'}, "
            "model_dir: relative/dir, adapters: {qa: /nonexistent/qa}, other: /nonexistent/x}")
    with caplog.at_level(logging.WARNING, logger="hpcray.spec"):
        load_workflow(workflow_file(tmp_path, services("noop", args)))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"{tmp_path / 'wf.yaml'}:3: services.0.args.model_path: /nonexistent/llama does not "
        "exist on this host; the replica's constructor fails unless the compute nodes have it",
        f"{tmp_path / 'wf.yaml'}:3: services.0.args.adapters.qa: /nonexistent/qa does not "
        "exist on this host; the replica's constructor fails unless the compute nodes have it"]


def test_a_package_beside_one_workflow_does_not_hide_another_workflows_package(tmp_path):
    for name, cls in (("one", "First"), ("two", "Second")):
        (tmp_path / name / "userpkg").mkdir(parents=True)
        (tmp_path / name / "userpkg" / "__init__.py").write_text("")
        (tmp_path / name / "userpkg" / "models.py").write_text(f"class {cls}:\n    pass\n")
        path = workflow_file(tmp_path / name, services(f"'userpkg.models:{cls}'"))
        api.script(path, run_dir=tmp_path / "r")  # `two` fails if one's userpkg stayed loaded
    assert "userpkg" not in sys.modules

"""A replica whose constructor raises reaches the user as its own exception and message:
one line, no colour codes, the whole traceback left in the job's log."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hpcray.rundir import read_json
from hpcray.services.manager import _messages, failure_summary
from tests.conftest import ONE_NODE, run_beside

# What Serve (Ray 2.60) reported for the replica of the live test below before the summary
# existed, shortened: Serve's words, a coloured actor name, Ray's frames, the cause last.
SERVE_MESSAGE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its "
    "constructor or initial health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:hpcray-model:model.initialize_and_get_metadata()\x1b[39m "
    "(pid=2509, ip=192.0.2.2)\n"
    '  File "/ray/serve/_private/replica.py", line 1928, in initialize\n'
    "    raise RuntimeError(traceback.format_exc()) from None\n"
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "/work/main/hpcray/services/replica.py", line 31, in __init__\n'
    "    self.obj = load_class(target)(**args)\n"
    "               ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/tests/fixtures/services/missing_model.py", line 12, in __init__\n'
    '    raise FileNotFoundError(f"no model directory at {model_path}")\n'
    "FileNotFoundError: no model directory at /nonexistent/model")


def app_reporting(message: str) -> SimpleNamespace:
    return SimpleNamespace(message="Failed to update the deployments ['model'].",
                           status="DEPLOY_FAILED",
                           deployments={"model": SimpleNamespace(message=message)})


def test_the_user_sees_the_constructors_exception_and_the_log_keeps_the_traceback(caplog):
    with caplog.at_level("ERROR", logger="hpcray.services"):
        line = _messages(app_reporting(SERVE_MESSAGE))
    assert line == "FileNotFoundError: no model directory at /nonexistent/model"
    logged = caplog.text
    assert "Traceback (most recent call last)" in logged
    assert "ray::ServeReplica:hpcray-model:model" in logged and "\x1b[" not in logged


def test_a_message_without_a_traceback_is_kept_whole_on_one_line_without_colour_codes():
    line = _messages(app_reporting("\x1b[31mreplica unhealthy\x1b[0m:\nhealth check timed out"))
    assert line == ("Failed to update the deployments ['model']. replica unhealthy: "
                    "health check timed out")
    assert failure_summary("ValueError: one\nmore") == "ValueError: one more"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_missing_model_directory_is_reported_as_the_constructors_own_error(tmp_path,
                                                                             run_root):
    import hpcray

    text = (f"name: missing\n{ONE_NODE}services:\n"
            "  - {name: model, deployment: 'missing_model:MissingModel', "
            "args: {model_path: /nonexistent/model}, resources: {cpus: 0.05}, "
            "readiness_timeout: 120}\n")
    sub, st = run_beside("services", tmp_path.name, text, run_root)
    assert st.state == "failed"
    recorded = read_json(sub.run_dir / "run.json")["services"]["model"]["error"]
    assert recorded == "FileNotFoundError: no model directory at /nonexistent/model"
    assert st.error.endswith("service 'model' failed to start: " + recorded)
    assert "\x1b[" not in st.error and "\n" not in st.error
    assert "Traceback (most recent call last)" in hpcray.logs(sub.run_dir)

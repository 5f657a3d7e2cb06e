"""Run, node, service and stage states as enums; run.json as a model."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import TypeGuard

import pytest
from pydantic import ValidationError

import hpcray
from hpcray.rundir import RunDir, read_json
from hpcray.state import (
    ALIVE,
    NODE_ENDED,
    TERMINAL,
    AttemptState,
    NodeState,
    RunRecord,
    RunState,
    ServiceState,
    StageState,
)
from tests.conftest import REPO

# A run.json as hpcray wrote it before RunRecord existed, with a field it does not know.
OLD_RUN_JSON = {
    "run_id": "wf-20250101-120000-abcd", "workflow": "wf", "site": "local",
    "scheduler": "local", "state": "completed", "nodes_expected": 2, "job_id": 4242,
    "times": {"submitted": 1.0, "job_started": 2.0, "finished": 9.0},
    "cluster_id": "hpcray-local-4242-99", "node_names": ["n0", "n1"], "nodes_joined": 2,
    "nodes": {"n0": {"joined": 3.0}, "n1": {"joined": 3.5, "lost": 8.0}},
    "nodes_lost": ["n1"], "driver_exit_code": 0, "error": None,
    "services": {"llm": {"state": "stopped", "replicas": 1, "error": None}},
    "something_newer": {"kept": True},
}


def test_an_older_run_json_with_unknown_fields_loads(tmp_path):
    run = RunDir(tmp_path).create()
    run.update(**OLD_RUN_JSON)
    record = run.record()
    assert record.state is RunState.COMPLETED
    assert record.finished
    assert record.job_id == "4242"  # a number written by hand still reads as an id
    assert record.nodes_lost == ["n1"]
    assert record.error_type is None
    assert record.model_extra == {"something_newer": {"kept": True}}


def test_a_missing_run_json_reads_as_submitted(tmp_path):
    assert RunDir(tmp_path).record().state is RunState.SUBMITTED


def test_a_state_hpcray_never_writes_is_refused():
    with pytest.raises(ValidationError):
        RunRecord.model_validate({"state": "head node n0 lost"})


def test_status_reads_an_old_run_whose_state_was_a_stop_reason(tmp_path):
    """Before state.py, a lost head during services recorded its reason as the state: such a
    run reads as failed, and status/wait/cancel do not break on it."""
    from hpcray import api
    from hpcray.state import run_state

    assert run_state({"state": "head node n0 lost"}) is RunState.FAILED
    assert run_state({}) is RunState.SUBMITTED
    assert run_state({"state": "walltime"}) is RunState.WALLTIME
    (tmp_path / "run.json").write_text(json.dumps(
        {"state": "head node n0 lost", "error": "head node n0 lost", "scheduler": "local"}))
    st = api.status(tmp_path)
    assert st.state is RunState.FAILED and st.finished


def test_states_are_the_strings_on_disk(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"state": RunState.WALLTIME, RunState.FAILED: 1}))
    assert json.loads(path.read_text()) == {"state": "walltime", "failed": 1}
    assert f"{RunState.CANCELLED}" == str(RunState.CANCELLED) == "cancelled"
    assert "lost" in TERMINAL and "failed" in NODE_ENDED  # plain strings read from files


def test_the_terminal_set():
    assert set(TERMINAL) == {"completed", "failed", "cancelled", "walltime", "lost"}
    assert not TERMINAL & ALIVE
    assert hpcray.api.TERMINAL is TERMINAL  # status and cancel use the one set


def _compares_state(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) \
        and node.left.attr == "state"


def _calls_state(node: ast.AST) -> TypeGuard[ast.Call]:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr == "_state"


def _state_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants written or compared as a state: `state=...`, `"state": ...`,
    `x.state = ...`, `x.state ==/in ...`, `_state("...")`."""
    found: list[tuple[int, str]] = []

    def strings(node: ast.AST) -> list[ast.Constant]:
        return [n for n in ast.walk(node) if isinstance(n, ast.Constant)
                and isinstance(n.value, str)]

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "state":
            found += [(c.lineno, c.value) for c in strings(node.value)]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "state":
                    found += [(c.lineno, c.value) for c in strings(value)]
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "state" for t in node.targets):
            found += [(c.lineno, c.value) for c in strings(node.value)]
        elif _compares_state(node):
            found += [(c.lineno, c.value) for c in strings(node)]
        elif _calls_state(node) and node.args:
            found += [(c.lineno, c.value) for c in strings(node.args[0])]
    return found


@pytest.mark.parametrize("module", [
    "api.py", "cli.py", "rundir.py", "bootstrap/up.py", "bootstrap/node.py",
    "bootstrap/launch.py", "bootstrap/nodewatch.py", "bootstrap/shutdown.py",
    "services/manager.py", "stages/runner.py", "stages/records.py", "bootstrap/relay.py",
    "bootstrap/worker.py", "bootstrap/elastic.py", "bootstrap/jobs.py"])
def test_no_state_is_spelled_as_a_string(module):
    """Every state written or compared is an enum member, so a typo cannot make a state."""
    path = REPO / "hpcray" / module
    literals = _state_literals(ast.parse(path.read_text()))
    assert literals == [], f"{path}: state strings {literals}"


def test_the_scan_finds_state_strings():
    """The scan above can fail."""
    source = ('run.update(state="running")\nrec.state = "ready"\n'
              'if rec.state in ("pending",): pass\nself._state("failed")\nx = {"state": "done"}')
    assert sorted(v for _, v in _state_literals(ast.parse(source))) == [
        "done", "failed", "pending", "ready", "running"]


def assert_states_are_members(run_dir: Path) -> None:
    """Every state a finished run left on disk is a member of its enum (integration tests)."""
    record = RunRecord.model_validate(read_json(run_dir / "run.json"))
    for name, entry in record.services.items():
        assert entry["state"] in ServiceState.__members__.values(), (name, entry)
    for name, entry in record.stages.items():
        assert entry["state"] in StageState.__members__.values(), (name, entry)
    for node_file in (run_dir / "nodes").glob("*.json"):
        data = read_json(node_file)
        assert data["state"] in NodeState.__members__.values(), (node_file, data)
        assert set(data.get("times", {})) <= set(NodeState.__members__.values()), node_file
    for attempts in (run_dir / "stages").glob("*/attempts.jsonl"):
        for line in attempts.read_text().splitlines():
            assert json.loads(line)["state"] in AttemptState.__members__.values(), line


def test_phases_from_the_job_start_and_the_teardown_length():
    from hpcray.state import phases

    times = {"submitted": 90.0, "job_started": 100.0, "all_joined": 106.5, "serve_up": 104.0,
             "services_ready": 112.25, "driver_start": 112.3, "driver_entry": 112.4,
             "teardown_start": 120.0, "teardown_end": 121.5}
    assert phases(times) == {"cluster up": 6.5, "Serve up": 4.0, "services ready": 12.25,
                             "driver started": 12.4, "teardown": 1.5}
    # a driver command writes no entry of its own: its start stands for it; phases not
    # reached are absent, and nothing is known before the job started
    assert phases({"job_started": 1.0, "driver_start": 3.0}) == {"driver started": 2.0}
    assert phases({"submitted": 1.0}) == {}

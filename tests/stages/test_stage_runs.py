"""Stages in real runs: Ray tasks on the local site, started by `hpcray up` after the services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.stages.records import read_attempts
from hpcray.views.report import report
from tests.conftest import ONE_NODE, run_beside
from tests.views.checks import assert_report_shows_the_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_stages(tmp_path, run_root, body: str, name: str = "stg", timeout: float = 240):
    """A workflow file next to the stage functions (tests/fixtures/stages); waits for its end
    and checks that nothing of it is left running."""
    sub, st = run_beside("stages", tmp_path.name, f"name: {name}\n{ONE_NODE}{body}", run_root,
                         timeout)
    return sub.run_dir, st


def text(path: str) -> str:
    return Path(path).read_text().strip()


def by_stage(attempts, stage):
    return [a for a in attempts if a["stage"] == stage]


def test_fan_out_stream_and_dependency(tmp_path, run_root):
    items = ", ".join(str(i) for i in range(100))
    run, st = run_stages(tmp_path, run_root, """\
stages:
  - name: squares
    function: stagefns:square
    args: {scale: 2}
    each: {items: [ITEMS]}
    resources: {cpus: 0.1}
  - name: show
    command: [sh, -c, 'echo "value={item} index={index} stage=$HPCRAY_STAGE"']
    stream_from: squares
    resources: {cpus: 0.1}
    max_in_flight: 4
  - name: last
    function: stagefns:total
    args: {marker: after.txt}
    after: [show, squares]
    resources: {cpus: 0.1}
""".replace("ITEMS", items))
    assert st.state == "completed", hpcray.logs(run)
    attempts = read_attempts(run)
    squares, show, last = (by_stage(attempts, s) for s in ("squares", "show", "last"))
    assert sorted(a["index"] for a in squares) == list(range(100))
    assert all(a["state"] == "done" and a["node"] == st.nodes[0].name for a in attempts)
    # one executable task per output of the producer, fed as the outputs arrived
    assert len(show) == 100
    outputs = sorted(int(text(a["stdout"]).split()[0].split("=")[1]) for a in show)
    assert outputs == sorted(2 * i * i for i in range(100))
    assert all(text(a["stdout"]).endswith("stage=show") for a in show)
    stages = read_json(run / "run.json")["stages"]
    assert min(a["submitted"] for a in show) < stages["squares"]["finished"]  # streaming
    # backpressure: never more than max_in_flight executables at once
    events = sorted([(a["started"], 1) for a in show] + [(a["ended"], -1) for a in show])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 4
    # the `after` stage ran once everything it waits for was done
    assert len(last) == 1 and last[0]["started"] >= max(a["ended"] for a in show)
    assert (run / "after.txt").read_text() == "after ran"
    assert {n: s["done"] for n, s in stages.items()} == {"squares": 100, "show": 100, "last": 1}
    # what a user looks at afterwards: status for scripts, and the report
    out = subprocess.run([sys.executable, "-m", "hpcray", "status", str(run), "--json"],
                         capture_output=True, text=True, check=True)
    as_json = json.loads(out.stdout)
    assert as_json["state"] == "completed"
    assert [(s["name"], s["state"], s["done"], s["total"]) for s in as_json["stages"]] == [
        ("squares", "done", 100, 100), ("show", "done", 100, 100), ("last", "done", 1, 1)]
    rep = report(run)
    assert {u.stage: (u.attempts, u.failed) for u in rep.stages} == {
        "squares": (100, 0), "show": (100, 0), "last": (1, 0)}
    assert rep.cpus > 0 and rep.nodes == 1
    assert 0 < rep.cpu_utilisation <= 1
    assert Path(rep.timeline).stat().st_size > 10_000  # a PNG with the lanes drawn
    assert_report_shows_the_run(run)  # each attempt one of Ray's tasks (tests/views/checks.py)


def test_retry_then_failure_with_its_error(tmp_path, run_root):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    run, st = run_stages(tmp_path, run_root, f"""\
stages:
  - name: flaky
    function: stagefns:flaky
    args: {{state_dir: '{state_dir}'}}
    each: {{items: [1, 2, 3]}}
    retries: 1
    resources: {{cpus: 0.1}}
  - name: broken
    function: stagefns:always_fails
    each: {{items: [7]}}
    retries: 2
    after: [flaky]
    resources: {{cpus: 0.1}}
  - name: never
    command: [echo, never]
    after: [broken]
""")
    assert st.state == "failed"
    assert "stage 'broken' task 0 (item 7) failed after 3 attempt(s): ValueError: bad input 7" \
        in st.error
    assert "stagefns.py" in st.error  # the traceback's tail
    attempts = read_attempts(run)
    flaky = by_stage(attempts, "flaky")
    assert sorted((a["index"], a["attempt"], a["state"]) for a in flaky) == [
        (0, 0, "failed"), (0, 1, "done"), (1, 0, "done"), (2, 0, "failed"), (2, 1, "done")]
    assert [a["attempt"] for a in by_stage(attempts, "broken")] == [0, 1, 2]
    assert not by_stage(attempts, "never")
    stages = read_json(run / "run.json")["stages"]
    assert stages["flaky"]["retried"] == 2 and stages["never"]["state"] == "waiting"


def test_timeouts_kill_the_task_and_free_its_resources(tmp_path, run_root):
    run, st = run_stages(tmp_path, run_root, """\
stages:
  - name: exe
    command: [sh, -c, 'if [ -e "{run_dir}/t{index}" ]; then echo second; exit 0; fi;
                       touch "{run_dir}/t{index}"; exec sleep 77']
    timeout: 2
    retries: 1
    resources: {cpus: 2}
  - name: fn
    function: stagefns:sleeps
    each: {items: [30]}
    timeout: 2
    resources: {cpus: 2}
    after: [exe]
""")
    assert st.state == "failed"
    assert "stage 'fn' task 0 (item 30) failed after 1 attempt(s): timed out after 2s" in st.error
    attempts = read_attempts(run)
    exe = by_stage(attempts, "exe")
    assert [(a["attempt"], a["state"]) for a in exe] == [(0, "timeout"), (1, "done")]
    # both attempts needed all CPUs of the node: the second ran, so the first's were freed
    assert text(exe[1]["stdout"]) == "second"
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and p.info["cmdline"][:2] == ["sleep", "77"]]


def test_stages_call_a_service_from_functions_and_executables(tmp_path, run_root):
    run, st = run_stages(tmp_path, run_root, """\
services:
  - {name: noop, deployment: noop, replicas: 2, resources: {cpus: 0.05}}
stages:
  - name: fn
    function: stagefns:call_service
    each: {items: [1, 2, 3, 4]}
    services: [noop]
    resources: {cpus: 0.1}
  - name: exe
    command: [python3, -c, 'import json, os, urllib.request as u;
        r = u.urlopen(u.Request(os.environ["HPCRAY_SERVICE_NOOP_URL"],
        data=json.dumps({"method": "echo", "payload": {index}}).encode(),
        headers={"Content-Type": "application/json"}));
        print(json.load(r)["result"])']
    each: {items: [a, b]}
    services: [noop]
    resources: {cpus: 0.1}
""")
    assert st.state == "completed", hpcray.logs(run)
    attempts = read_attempts(run)
    replicas = json.loads((run / "metrics" / "services.json").read_text())["noop"]["bt"]
    assert all(a["state"] == "done" for a in attempts)
    assert len(by_stage(attempts, "fn")) == 4 and {r["replica"] for r in replicas}
    outs = sorted(text(a["stdout"]) for a in by_stage(attempts, "exe"))
    assert outs == ["0", "1"]


def test_a_stateful_stage_keeps_its_actors_and_their_state(tmp_path, run_root):
    items = ", ".join(str(i) for i in range(12))
    run, st = run_stages(tmp_path, run_root, f"""\
stages:
  - name: acc
    function: 'stagefns:Accumulator'
    args: {{offset: 100}}
    actors: 2
    each: {{items: [{items}]}}
    resources: {{cpus: 0.25}}
  - {{name: keep, function: 'stagefns:keep', stream_from: acc, resources: {{cpus: 0.1}},
     max_in_flight: 1}}
""")
    assert st.state == "completed", hpcray.logs(run)
    outputs = [json.loads(line) for line in (run / "outputs.jsonl").read_text().splitlines()]
    assert sorted(o["value"] for o in outputs) == [100 + i for i in range(12)]
    calls: dict[int, list[int]] = {}
    for o in outputs:
        calls.setdefault(o["pid"], []).append(o["calls"])
    assert len(calls) == 2  # two actors, each built once and then reused
    for counted in calls.values():  # each instance counted its own calls: its state lived on
        assert sorted(counted) == list(range(1, len(counted) + 1))
    assert {a["pid"] for a in by_stage(read_attempts(run), "acc")} == set(calls)


def test_a_stateful_stage_whose_constructor_fails_is_reported(tmp_path, run_root):
    run, st = run_stages(tmp_path, run_root, """\
stages:
  - {name: model, function: 'stagefns:BrokenModel', actors: 1, each: {items: [1, 2]},
     retries: 1, resources: {cpus: 0.25}}
""")
    assert st.state == "failed"
    assert "stage 'model' task" in st.error and "checkpoint /models/missing not found" in st.error


def test_a_launched_executable_runs_once_on_each_of_two_nodes(tmp_path, run_root):
    sub, st = run_beside("stages", tmp_path.name,
                         "name: mpi\nallocation: {nodes: 2, walltime: 10m}\n"
                         "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                         "stages:\n  - name: mpi\n"
                         "    command: [sh, -c, 'echo \"$HPCRAY_RANK on $HPCRAY_NODE_NAME\"']\n"
                         "    launch: {nodes: 2, per_node: 2}\n    resources: {cpus: 0.5}\n",
                         run_root)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    (attempt,) = read_attempts(sub.run_dir)
    names = sorted(n.name for n in st.nodes)
    assert sorted(attempt["hosts"]) == names  # the placement group spread it over both
    assert sorted(text(attempt["stdout"]).splitlines()) == [
        f"{rank} on {attempt['hosts'][rank // 2]}" for rank in range(4)]  # ranks in host order


def test_a_stage_no_node_can_hold_fails_before_any_task(tmp_path, run_root):
    run, st = run_stages(tmp_path, run_root, """\
stages:
  - {name: ok, command: [echo, hi]}
  - {name: huge, function: 'stagefns:square', each: {items: [1]}, resources: {cpus: 64}}
""")
    assert st.state == "failed"
    assert "stage 'huge': one task needs {'CPU': 64" in st.error
    assert read_attempts(run) == []  # nothing ran

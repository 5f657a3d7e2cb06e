"""Stages resumed by a relay's successor (allocation.relay): the StageRunner skips every task an
earlier job recorded done in attempts.jsonl and runs the others, a task a drain interrupted is
never recorded done, and each task ends with exactly one `done` record across the jobs. The
runner runs on a small Ray of this process; the whole relay runs in
tests/integration/test_relay_local.py and tests/slurm/test_relay.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from hpcray.errors import StageError
from hpcray.rundir import RunDir
from hpcray.spec import loads_workflow
from hpcray.stages import StageRunner
from hpcray.stages.records import (
    Attempt,
    AttemptLog,
    EarlierAttempts,
    item_text,
    kept_output,
    read_attempts,
)
from tests.conftest import FIXTURES, wait_until

STAGES = FIXTURES / "stages"


def attempt(stage: str, index: int, item, state: str = "done", n: int = 0,
            source: int | None = None, output=None) -> Attempt:
    return Attempt(stage=stage, index=index, attempt=n, item=item_text(item), state=state,
                   submitted=1.0, finished=2.0, source=source,
                   output=None if output is None else kept_output(output))


def recorded(run: Path, *attempts: Attempt) -> None:
    log = AttemptLog(run / "stages")
    for a in attempts:
        log.write(a)
    log.close()


# -- what an earlier job left, read back (no Ray) ------------------------------------------------

def test_earlier_attempts_by_index_and_by_source(tmp_path):
    recorded(tmp_path, attempt("a", 0, 0, output="x"), attempt("a", 1, 1, "failed"),
             attempt("a", 1, 1, "failed", n=1), attempt("b", 4, "x", source=0))
    with open(tmp_path / "stages" / "a" / "attempts.jsonl", "a") as f:
        f.write('{"stage": "a", "index": 2, "state": "do')  # a job killed mid-line
    earlier = EarlierAttempts.read(tmp_path)
    zero, one = earlier.task("a", 0), earlier.task("a", 1)
    assert zero is not None and zero.done is not None and zero.attempts == 1
    assert json.loads(zero.done["output"]) == "x"
    assert one is not None and one.done is None and one.attempts == 2
    assert earlier.task("a", 2) is None  # the cut line is no record: that task runs again
    by_source = earlier.from_source("b", 0)
    assert by_source is not None and by_source.index == 4 and by_source.item == "'x'"
    assert earlier.from_source("b", 1) is None and earlier.used("b") == {4}
    assert not EarlierAttempts.read(tmp_path / "none")


def test_only_small_json_outputs_are_kept():
    assert kept_output("a/path.tsv") == '"a/path.tsv"' and kept_output(None) == "null"
    assert kept_output({1, 2}) is None  # not JSON
    assert kept_output((1, 2)) is None and kept_output({1: "a"}) is None  # not back the same
    assert kept_output("x" * 70_000) is None  # too large for a record


# -- the runner on a small Ray -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_here(tmp_path_factory):
    """A 2-CPU Ray of this process whose workers import the fixtures' stage functions and
    find the run directory every test shares."""
    import ray

    run = tmp_path_factory.mktemp("resume") / "run"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(STAGES),
                                       "HPCRAY_RUN_DIR": str(run)}})
    yield run
    ray.shutdown()


@pytest.fixture
def run(ray_here):
    """The shared run directory, emptied for each test."""
    import shutil

    shutil.rmtree(ray_here, ignore_errors=True)
    return RunDir(ray_here).create()


def runner(run: RunDir, body: str, resume: bool, stop: threading.Event | None = None):
    wf = loads_workflow(f"name: r\nallocation: {{nodes: 1, walltime: 10m}}\nstages:\n{body}",
                        "r.yaml")
    return StageRunner(wf.stages, run, STAGES, stop=stop, resume=resume)


def effects(run: RunDir) -> dict[str, int]:
    """How often each task ran to its end: lines in <run>/effects/<tag>-<item>."""
    return {p.name: len(p.read_text().splitlines())
            for p in sorted((run.path / "effects").glob("*"))}


def done_once(run: RunDir, stage: str, total: int) -> None:
    done = sorted(a["index"] for a in read_attempts(run.path, stage) if a["state"] == "done")
    assert done == list(range(total)), (stage, done)


BODY = """\
  - {name: make, function: relayfns:noted, args: {tag: make}, each: {items: [0, 1, 2, 3, 4, 5]},
     resources: {cpus: 0.1}, retries: 1}
  - {name: use, function: relayfns:noted, args: {tag: use}, stream_from: make,
     resources: {cpus: 0.1}}
  - {name: objs, function: relayfns:noted, args: {tag: objs, output: set},
     each: {items: [0, 1]}, resources: {cpus: 0.1}}
  - {name: take, function: relayfns:noted, args: {tag: take}, stream_from: objs,
     resources: {cpus: 0.1}}
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_resumed_runner_runs_only_what_no_earlier_job_finished(run):
    recorded(run.path,
             # make 0-2 finished in the first job, 3 failed once; 4 and 5 never ran
             attempt("make", 0, 0, output="make:0"), attempt("make", 1, 1, output="make:1"),
             attempt("make", 2, 2, output="make:2"), attempt("make", 3, 3, "failed"),
             # the consumer took make 0 and 1 (as its tasks 0 and 1); make 2's was cut off
             attempt("use", 0, "make:0", source=0), attempt("use", 1, "make:1", source=1),
             # objs' outputs (sets) are not kept: objs 0 fed take's task 0, which finished,
             # so neither runs again; objs 1's output never reached take: it runs again
             attempt("objs", 0, 0), attempt("take", 0, {0}, source=0), attempt("objs", 1, 1))
    got = runner(run, BODY, resume=True).run()
    assert {s: (got[s]["done"], got[s]["total"], got[s]["skipped"]) for s in got} == {
        "make": (6, 6, 3), "use": (6, 6, 2), "objs": (2, 2, 1), "take": (2, 2, 1)}
    assert effects(run) == {f"make-{i}": 1 for i in (3, 4, 5)} | {
        **{f"use-make:{i}": 1 for i in (2, 3, 4, 5)}, "objs-1": 1, "take-{1}": 1}
    for stage, total in (("make", 6), ("use", 6), ("take", 2)):
        done_once(run, stage, total)
    objs = sorted(a["index"] for a in read_attempts(run.path, "objs") if a["state"] == "done")
    assert objs == [0, 1, 1]  # the one limit: a needed output that could not be kept
    make3 = [a for a in read_attempts(run.path, "make") if a["index"] == 3]
    assert [(a["attempt"], a["state"]) for a in make3] == [(0, "failed"), (1, "done")]
    use = {a["source"]: a["index"] for a in read_attempts(run.path, "use")}
    # the earlier job's own numbers are kept; new tasks take the numbers left free
    assert use[0] == 0 and use[1] == 1 and sorted(use.values()) == list(range(6))
    # a resumed runner on a finished run runs nothing and counts everything done
    again = runner(run, BODY, resume=True).run()
    assert {s: again[s]["skipped"] for s in again} == {"make": 6, "use": 6, "objs": 2,
                                                       "take": 2}
    assert sum(effects(run).values()) == 3 + 4 + 1 + 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_task_stopped_by_the_drain_is_not_recorded_and_runs_in_the_next_job(run):
    body = ("  - {name: hold, function: relayfns:gated, args: {first: 2},\n"
            "     each: {items: [0, 1, 2, 3]}, resources: {cpus: 0.1}}\n")
    stop = threading.Event()
    first = runner(run, body, resume=False, stop=stop)
    failed: list[BaseException] = []

    def go() -> None:
        try:
            first.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failed.append(exc)
    thread = threading.Thread(target=go)
    thread.start()
    assert wait_until(lambda: len(read_attempts(run.path, "hold")) == 2, 120)
    time.sleep(0.5)  # tasks 2 and 3 hold at the gate
    stop.set()  # the walltime warning
    thread.join(60)
    assert failed and isinstance(failed[0], StageError)
    assert sorted(a["index"] for a in read_attempts(run.path, "hold")) == [0, 1]
    assert run.read()["stages"]["hold"]["running"] == 0
    (run.path / "relay-gate").write_text("")
    got = runner(run, body, resume=True).run()
    assert (got["hold"]["done"], got["hold"]["skipped"]) == (4, 2)
    done_once(run, "hold", 4)
    assert effects(run) == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert os.environ.get("HPCRAY_RESUMED") is None  # this process was never told it is

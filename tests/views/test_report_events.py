"""`hpcray report` from Ray's own events, without a cluster: the parsing of Ray 2.60's task
events and actor table against a sample recorded from a real session
(tests/fixtures/ray_events/raw.json, record_raw.py), and the report of a real cell painting
run's kept events (a driver with Tune trials, a preprocessing pool and a served classifier, no
stages: tests/fixtures/ray_events/cellpainting-run), its page drawn by a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseDict
from ray.core.generated import gcs_pb2

from hpcray.bootstrap import events
from hpcray.views.report import colours, report, resources
from tests.conftest import FIXTURES
from tests.views.browser import count_colour, screenshot

RAW = FIXTURES / "ray_events" / "raw.json"
CELLPAINTING = FIXTURES / "ray_events" / "cellpainting-run"


def _raw():
    data = json.loads(RAW.read_text())
    nodes = events.node_names(data["nodes"])
    tasks = [events.task_record(ParseDict(t, gcs_pb2.TaskEvents()), nodes)
             for t in data["tasks"]]
    actors = [events.actor_record(ParseDict(a, gcs_pb2.ActorTableData()), nodes)
              for a in data["actors"]]
    return tasks, actors


def test_ray_task_events_parse_into_attempts_on_their_node():
    tasks, _ = _raw()
    assert tasks.count(None) == 1  # the driver's own task is not work
    plain = [t for t in tasks if t and t["type"] == "NORMAL_TASK"]
    squares = [t for t in plain if t["func"] == "square"]
    assert len(squares) == 3
    for t in squares:
        assert t["node"] == "n0" and t["pid"] and t["state"] == "FINISHED"
        assert t["resources"] == {"CPU": 0.5}
        assert t["times"]["PENDING_NODE_ASSIGNMENT"] <= t["times"]["RUNNING"] \
            < t["times"]["FINISHED"]
    (failed,) = [t for t in plain if t["func"] == "fails"]
    assert failed["state"] == "FAILED" and "on purpose" in failed["error"]
    assert len(failed["error"]) <= events.TEXT


def test_the_actor_table_gives_lifetimes_resources_and_deaths():
    tasks, actors = _raw()
    by_name = {a["name"] or "grouped": a for a in actors}
    assert by_name["counter"]["gpu_ids"] == by_name["grouped"]["gpu_ids"] == []
    counter, grouped = by_name["counter"], by_name["grouped"]
    assert counter["class"] == "Counter" and counter["node"] == "n0"
    assert counter["state"] == "DEAD" and counter["death"] and counter["end"] > counter["start"]
    assert grouped["state"] == "ALIVE" and grouped["end"] is None
    # a placement group's reservation shows as two keys per resource: counted once
    assert resources(grouped["resources"]) == (0.5, 0.0)
    assert resources(counter["resources"]) == (0.5, 0.0)
    kept, actors, meta = events.summarise([t for t in tasks if t], actors)
    assert {a["name"]: a["calls"]["count"] for a in actors} == {"counter": 2, "": 1,
                                                                 "on-gpu": 1}
    assert meta["actor_calls_seen"] == 4 and meta["tasks_seen"] == 8  # 5 tasks, 3 creations


def test_gpu_work_gets_the_lanes_of_the_gpus_ray_gave_it(tmp_path):
    """An actor on the GPU id Ray's actor table names; a task holding half a GPU (its id is
    not in Ray's task events) on the node's "GPU ?" lane; the CPU work on the CPU lane."""
    from hpcray.views.report import Report, lanes, timeline_items

    tasks, actors = _raw()
    (gpu_actor,) = [a for a in actors if a["name"] == "on-gpu"]
    assert gpu_actor["gpu_ids"] == [0] and resources(gpu_actor["resources"]) == (0.0, 1.0)
    kept, actors, _ = events.summarise([t for t in tasks if t], actors)
    items = timeline_items({"tasks": kept, "actors": actors}, [], window_end=None)
    rep = Report(run="r", nodes=1, cpus=2, gpus=2, window_s=None, busy_cpu_s=0, busy_gpu_s=0,
                 cpu_utilisation=None, gpu_utilisation=None, items=items,
                 node_gpus={"n0": 2})
    assert lanes(rep, ["n0"]) == [("n0", "CPU"), ("n0", "GPU 0"), ("n0", "GPU 1"),
                                  ("n0", "GPU ?")]
    by_label = {i.label: i for i in items}
    assert by_label["on-gpu"].lanes == ["GPU 0"]
    assert by_label["half_gpu"].lanes == ["GPU ?"] and by_label["half_gpu"].gpus == 0.5
    assert by_label["square"].lanes == ["CPU"]
    assert by_label["counter"].calls == 2 and len(by_label["counter"].call_spans) == 2


def test_what_is_kept_is_bounded_and_what_was_cut_is_counted(monkeypatch):
    tasks, actors = _raw()
    monkeypatch.setattr(events, "MAX_TASKS", 2)
    monkeypatch.setattr(events, "MAX_ACTOR_CALLS", 1)
    kept, actors, meta = events.summarise([t for t in tasks if t], actors)
    assert len(kept) == 3
    assert (meta["tasks_seen"], meta["tasks_kept"]) == (8, 2)
    assert (meta["actor_calls_seen"], meta["actor_calls_kept"]) == (4, 1)
    assert sum(a["calls"]["count"] for a in actors) == 4  # every call still counted


@pytest.fixture
def cellpainting_run(tmp_path) -> Path:
    run = tmp_path / "cellpainting-20261202-082610-f934"
    shutil.copytree(CELLPAINTING, run)
    (run / "secrets").mkdir(mode=0o700)
    (run / "secrets" / "ray-token").write_text("tok-" + "5e" * 16)
    figure = run / "cellpainting" / "confusion.png"  # the pipeline's own figure
    figure.parent.mkdir()
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow([[10, 0], [3, 7]])
    fig.savefig(figure)
    plt.close(fig)
    return run


def test_a_run_without_stages_shows_its_trials_actors_and_replica(cellpainting_run):
    """What `hpcray report` printed "1 node(s), 2 CPUs, 0 GPUs" for and drew nothing."""
    rep = report(cellpainting_run)
    groups = {g.group: g.items for g in rep.groups}
    assert groups == {"Tune trials": 2, "Preprocessor": 2, "service dose-classifier": 1,
                      "Ray Serve": 1, "hpcray": 1, "driver": 1}
    assert all(i.node == "vm" for i in rep.items if i.kind != "driver")
    trials = [i for i in rep.items if i.group == "Tune trials"]
    assert all(i.cpus == 0.5 and i.calls >= 3 and i.call_spans for i in trials)
    (replica,) = rep.replicas
    assert (replica.service, replica.node, replica.source) == ("dose-classifier", "vm",
                                                               "ray-events")
    assert 5 < replica.alive_s < 60
    assert 0 < rep.used_cpu_s < rep.held_cpu_s == 2 * rep.run_window_s
    assert "Tune trials: 2 item(s)" in rep.summary()
    assert Path(rep.timeline).stat().st_size > 10_000
    timeline = json.loads((cellpainting_run / "report" / "timeline.json").read_text())
    assert len(timeline["items"]) == len(rep.items)


def test_the_page_is_self_contained_and_a_browser_draws_the_timeline(cellpainting_run,
                                                                     tmp_path):
    token = (cellpainting_run / "secrets" / "ray-token").read_text()
    # an actor named with the run's token (a user's text may hold anything): the report
    # must not carry it
    actors_file = cellpainting_run / "ray-events" / "actors.json"
    actors = json.loads(actors_file.read_text())
    leaky = next(a for a in actors if a["class"] == "Preprocessor")
    leaky["name"] = f"pre-{token}"
    actors_file.write_text(json.dumps(actors))
    rep = report(cellpainting_run)
    assert "pre-<redacted>" in (cellpainting_run / "report" / "timeline.json").read_text()
    page = Path(rep.html)
    text = page.read_text()
    fetched = text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not fetched
    assert "<script" not in text and "http:" not in fetched and "https:" not in fetched
    assert "<link" not in text and "@import" not in text
    assert text.count("data:image/png;base64,") == 2  # use.png and the pipeline's figure
    for path in (cellpainting_run / "report").iterdir():
        assert token not in path.read_text(errors="replace"), path
    shot = screenshot(page, tmp_path / "shot.png")
    assert len(shot.getcolors(maxcolors=1 << 24)) > 50  # drawn, not a blank page
    top = shot.crop((0, 0, shot.width, 300))  # the timeline: right under the title
    colour = colours(rep)
    for group in ("Tune trials", "Preprocessor"):  # their calls, in full colour
        assert count_colour(top, colour[group]) > 1000, group


def test_the_command_prints_the_summary_and_where_the_page_is(cellpainting_run):
    from click.testing import CliRunner

    from hpcray.cli import main

    got = CliRunner().invoke(main, ["report", str(cellpainting_run)])
    assert got.exit_code == 0, got.output
    assert "Tune trials: 2 item(s)" in got.output
    assert f"report: {cellpainting_run / 'report' / 'report.html'}" in got.output
    got = CliRunner().invoke(main, ["report", str(cellpainting_run), "--no-plot"])
    assert got.exit_code == 0 and "report.html" not in got.output

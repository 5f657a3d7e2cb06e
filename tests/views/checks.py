"""What `hpcray report` must show of a run that just ended, checked against what the run
recorded itself (stage records, services.json, the pipeline's own counts). Called at the end
of existing run tests, so the check costs no cluster of its own."""

from __future__ import annotations

from pathlib import Path

from hpcray.rundir import read_json
from hpcray.stages.records import read_attempts
from hpcray.views.report import Report, colours, report
from tests.views.browser import count_colour, have_browser, screenshot


def assert_report_shows_the_run(run_dir: Path, *, tune_trials: int | None = None,
                                actors: dict[str, int] | None = None,
                                shot: Path | None = None) -> Report:
    """Every stage attempt as a Ray task on the node its record names, every replica of the
    workflow's services on its node, `tune_trials` trial actors, at least `actors[group]`
    items of other groups; with `shot`, the page drawn by a real browser shows the timeline."""
    rep = report(run_dir)
    nodes = {n["name"] for n in read_json(run_dir / "plan.json")["nodes"]}
    assert rep.events, "no Ray events were kept for the run"
    assert rep.events["tasks_kept"] == rep.events["tasks_seen"]
    assert {i.node for i in rep.items if i.kind != "driver"} <= nodes, rep.summary()
    by_ref = {i.ref: i for i in rep.items}
    for a in read_attempts(run_dir):
        key = f"{a['stage']}#{a['index']}.{a['attempt']}"
        item = by_ref.get(key)
        assert item is not None and item.kind == "task", f"{key}: not among Ray's tasks"
        assert item.node == a["node"] and item.group == f"stage {a['stage']}", (key, item)
    services = read_json(run_dir / "metrics" / "services.json", {}) or {}
    for name, record in services.items():
        for bt in record.get("bt", []):
            found = [i for i in rep.items if i.group == f"service {name}"
                     and bt["replica"] in i.label]
            assert [i.node for i in found] == [bt["node"]], (name, bt, found)
    groups = {g.group: g.items for g in rep.groups}
    if tune_trials is not None:
        assert groups.get("Tune trials") == tune_trials, rep.summary()
    for group, least in (actors or {}).items():
        assert groups.get(group, 0) >= least, (group, rep.summary())
    assert rep.html and Path(rep.html).exists()
    if shot is not None and have_browser():  # else test_report_events.py skips, saying why
        image = screenshot(Path(rep.html), shot)
        top = image.crop((0, 0, image.width, 320))
        busiest = [g.group for g in rep.groups if g.cpu_s > 0][:2]
        for group in busiest:
            assert count_colour(top, colours(rep)[group]) > 200, (group, shot)
    return rep

from __future__ import annotations

import pytest

from hpcray.spec.walltime import hhmmss, lsf_minutes, parse_walltime


@pytest.mark.parametrize("text,seconds", [
    ("00:30:00", 1800), ("1-02:00:00", 93600), ("2:30", 9000), (45, 2700), ("45", 2700),
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("48:00:00", 172800),
])
def test_accepted_forms(text, seconds):
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "1:2:3:4", "10:60:00", "00:00:00", "1.5h", True])
def test_rejected_forms(text):
    with pytest.raises(ValueError):
        parse_walltime(text)


def test_renderings():
    assert hhmmss(93600) == "26:00:00"
    assert lsf_minutes(90) == "0:02"      # rounded up, never less than asked
    assert lsf_minutes(7200) == "2:00"


def test_unquoted_clock_in_yaml_is_not_base_60():
    from hpcray.spec import loads_workflow

    wf = loads_workflow("name: x\nallocation:\n  walltime: 25:00:00\n", "x.yaml")
    assert wf.allocation.walltime == 25 * 3600
    wf = loads_workflow("name: x\nallocation:\n  walltime: 2:30\n", "x.yaml")
    assert wf.allocation.walltime == 2 * 3600 + 30 * 60


def test_dumped_workflow_reads_back_the_same_walltime():
    from hpcray.spec import Workflow, loads_workflow

    wf = loads_workflow("name: x\nallocation: {walltime: 60s, walltime_warning: 30}\n", "x")
    again = Workflow.model_validate(wf.model_dump(mode="json"))
    assert again.allocation.walltime == 60

"""The live view (`hpcray status`, `--watch`, `--json`) while a run is busy: nodes report what
they use, services how fast their replicas answer, read from the run dir by another process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rich.console import Console

import hpcray
from hpcray.views.live import render
from tests.conftest import (
    ONE_NODE,
    assert_nothing_left_of,
    finish_told,
    submit_beside,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


def test_status_shows_request_rates_and_node_usage_while_running(tmp_path, run_root):
    sub = submit_beside("stages", f"live-{tmp_path.name}",
                        f"name: live\n{ONE_NODE}"
                        "services:\n  - {name: noop, deployment: noop, replicas: 2,"
                        " resources: {cpus: 0.25}}\n"
                        "driver:\n  function: stagefns:call_until_told\n", run_root)
    try:
        def busy():
            st = hpcray.status(sub.run_dir)
            assert not st.finished, hpcray.logs(sub.run_dir)
            return st.services and st.services[0].request_rate > 0 and \
                all(n.usage for n in st.nodes)

        assert wait_until(busy, 150, interval=0.5)
        st = hpcray.status(sub.run_dir)
        noop = st.services[0]
        assert noop.served > 0 and noop.request_rate > 0
        usage = st.nodes[0].usage
        assert 0 <= usage["cpu_percent"] <= 100 and 0 < usage["memory_used"] \
            <= usage["memory_total"]
        console = Console(record=True, width=160)
        console.print(render(st))
        shown = console.export_text()
        assert "req/s" in shown and "noop" in shown and f"of {usage['cpus']}" in shown
        out = subprocess.run([sys.executable, "-m", "hpcray", "status", str(sub.run_dir),
                              "--json"], capture_output=True, text=True, check=True).stdout
        data = json.loads(out)
        assert data["services"][0]["served"] > 0 and "cpu_percent" in data["nodes"][0]["usage"]
    finally:
        st = finish_told(sub.run_dir, "enough")
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    assert_nothing_left_of(sub.run_dir)
    # stopped replicas take their rate files with them; a finished run shows no usage
    assert hpcray.status(sub.run_dir).services[0].served == 0
    assert all(n.usage is None for n in hpcray.status(sub.run_dir).nodes)

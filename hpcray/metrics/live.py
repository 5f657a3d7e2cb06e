"""`hpcray status --watch`: nodes, services and stage progress, redrawn until the run ends."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from hpcray.api import RunStatus, status


def render(st: RunStatus) -> Group:
    head = Table.grid(padding=(0, 1))
    head.add_row(f"[bold]{st.run_id}[/] job {st.job_id} ({st.scheduler})", f"[bold]{st.state}[/]")
    nodes = Table(title="nodes", title_justify="left", expand=False)
    for col in ("node", "agent", "joined"):
        nodes.add_column(col)
    for n in st.nodes:
        nodes.add_row(n.name, n.state, "lost" if n.lost else "yes" if n.joined else "no")
    parts = [head, nodes]
    if st.services:
        services = Table(title="services", title_justify="left")
        for col in ("service", "state", "replicas"):
            services.add_column(col)
        for s in st.services:
            services.add_row(s.name, s.state, f"{s.replicas_ready}/{s.replicas}")
        parts.append(services)
    if st.stages:
        stages = Table(title="stages", title_justify="left")
        for col in ("stage", "state", "progress", "done", "running", "failed", "retried"):
            stages.add_column(col)
        for s in st.stages:
            stages.add_row(s.name, s.state, ProgressBar(total=max(s.total, 1),
                                                        completed=s.done, width=30),
                           f"{s.done}/{s.total}", str(s.running), str(s.failed), str(s.retried))
        parts.append(stages)
    if st.error:
        parts.append(f"[red]error:[/] {st.error.splitlines()[0]}")
    return Group(*parts)


def watch(ref: str | Path, run_root: str | Path | None = None, interval: float = 0.5,
          console: Console | None = None) -> RunStatus:
    """Redraw until the run reaches a final state; returns that state."""
    st = status(ref, run_root)
    with Live(render(st), console=console, refresh_per_second=4) as live:
        while not st.finished:
            time.sleep(interval)
            st = status(ref, run_root)
            live.update(render(st))
    return st

"""`hpcray status --watch`: nodes (and what they use), services (and their request rates) and
stage progress, redrawn until the run ends."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import TaskID
from rich.progress_bar import ProgressBar
from rich.table import Table

from hpcray.api import RunStatus, status
from hpcray.errors import HpcrayError
from hpcray.metrics import progress


def render(st: RunStatus) -> Group:
    head = Table.grid(padding=(0, 1))
    head.add_row(f"[bold]{st.run_id}[/] job {st.job_id} ({st.scheduler})", f"[bold]{st.state}[/]")
    nodes = Table(title="nodes", title_justify="left", expand=False)
    for col in ("node", "agent", "joined", "cpu", "memory", "gpus"):
        nodes.add_column(col)
    for n in st.nodes:
        nodes.add_row(n.name, n.state, "lost" if n.lost else "yes" if n.joined else "no",
                      *_usage_cells(n.usage))
    parts: list[Any] = [head, nodes]
    if st.services:
        services = Table(title="services", title_justify="left")
        for col in ("service", "state", "replicas", "req/s", "served"):
            services.add_column(col)
        for svc in st.services:
            services.add_row(svc.name, svc.state, f"{svc.replicas_ready}/{svc.replicas}",
                             f"{svc.request_rate:.1f}", f"{svc.served:.0f}")
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
    reported = progress.read(st.run_dir)
    if reported:
        work = Table(title="driver progress", title_justify="left")
        for col in ("task", "progress", "done", "latest"):
            work.add_column(col)
        for e in reported:
            total = e["total"] or max(e["done"], 1)
            work.add_row(e["task"], ProgressBar(total=total, completed=e["done"], width=30),
                         f"{e['done']:g}/{total:g}", e["detail"][:80])
        parts.append(work)
    if st.error:
        parts.append(f"[red]error:[/] {st.error.splitlines()[0]}")
    return Group(*parts)


STATUS_S = 2.0  # how often the submit view reads the run's status (a scheduler query)


class _View:
    """The status tables (nodes, services with req/s, stages) above the progress bars,
    redrawn from the latest status at each refresh."""

    def __init__(self, bars: Any) -> None:
        self.bars = bars
        self.st: RunStatus | None = None

    def __rich__(self) -> Group:
        parts = [] if self.st is None else [
            part for part in render(self.st).renderables
            if getattr(part, "title", None) != "driver progress"]  # the bars below are that
        return Group(*parts, self.bars)


class RunProgress:
    """What `hpcray submit --wait` shows while it waits: the status tables of `hpcray status
    --watch`, the run's state on a spinner line and one progress bar per task the driver
    reports (hpcray.metrics.progress)."""

    def __init__(self, run_dir: Path, console: Console | None = None,
                 interval: float = 0.5) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.run_dir, self.interval = Path(run_dir), interval
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("{task.fields[detail]}"), console=console,
                             transient=False)
        self.state = self.bars.add_task("waiting", total=None, detail="")
        self.tasks: dict[str, TaskID] = {}
        self.view = _View(self.bars)
        self.live = Live(self.view, console=console, refresh_per_second=4)
        self._read = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RunProgress:
        self.live.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._refresh()
        self.live.__exit__(*exc)
        if not self.live.console.is_terminal:  # the last frame, written once, ends its line
            self.live.console.line()

    def update(self, st: RunStatus) -> None:
        self.view.st = st
        self._read = time.monotonic()
        self.bars.update(self.state, description=st.summary().splitlines()[0])

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() - self._read >= STATUS_S:
                with contextlib.suppress(HpcrayError, OSError, ValueError):
                    self.update(status(self.run_dir))
            self._refresh()

    def _refresh(self) -> None:
        for e in progress.read(self.run_dir):
            task = self.tasks.get(e["task"])
            if task is None:
                task = self.tasks[e["task"]] = self.bars.add_task(e["task"], total=e["total"],
                                                                  detail="")
            self.bars.update(task, completed=e["done"], total=e["total"],
                             detail=e["detail"][:60])


def _usage_cells(usage: dict | None) -> tuple[str, str, str]:
    if not usage:
        return "", "", ""
    gpus = usage.get("gpus")
    gpu = "-" if gpus is None else " ".join(f"{g['util_percent'] or 0:.0f}%" for g in gpus) or "0"
    return (f"{usage['cpu_percent']:.0f}% of {usage['cpus']}",
            f"{usage['memory_used'] / 2**30:.1f}/{usage['memory_total'] / 2**30:.1f} GiB", gpu)


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

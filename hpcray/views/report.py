"""`hpcray report <run>`: where the allocation's time went. A timeline PNG (one lane per node;
task attempts coloured by stage, service replicas as bars) and a utilisation summary: busy
CPU and GPU time over what the run held while its stages ran."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcray.rundir import RunDir, find_run, read_json
from hpcray.stages.records import read_attempts


@dataclass
class StageUse:
    stage: str
    attempts: int
    failed: int
    busy_cpu_s: float
    busy_gpu_s: float
    task_s_median: float | None


@dataclass
class Report:
    run: str
    nodes: int
    cpus: float
    gpus: float
    window_s: float | None         # stages_start -> stages_end
    busy_cpu_s: float
    busy_gpu_s: float
    cpu_utilisation: float | None  # busy CPU seconds / (CPUs x window)
    gpu_utilisation: float | None
    stages: list[StageUse] = field(default_factory=list)
    timeline: str | None = None

    def summary(self) -> str:
        lines = [f"{self.run}: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs"]
        if self.window_s:
            cpu = f"{self.cpu_utilisation:.1%}" if self.cpu_utilisation is not None else "-"
            gpu = f"{self.gpu_utilisation:.1%}" if self.gpu_utilisation is not None else "-"
            lines.append(f"  stages ran {self.window_s:.1f}s; busy CPU {self.busy_cpu_s:.1f}s "
                         f"({cpu} of the CPUs), busy GPU {self.busy_gpu_s:.1f}s ({gpu})")
        for s in self.stages:
            median = f"{s.task_s_median:.3f}s" if s.task_s_median is not None else "-"
            lines.append(f"  stage {s.stage}: {s.attempts} attempt(s), {s.failed} failed, "
                         f"median task {median}, busy CPU {s.busy_cpu_s:.1f}s")
        if self.timeline:
            lines.append(f"  timeline: {self.timeline}")
        return "\n".join(lines)


def report(ref: str | Path, run_root: str | Path | None = None, plot: bool = True) -> Report:
    run = find_run(str(ref), run_root)
    data = run.read()
    plan = read_json(run.path / "plan.json", {}) or {}
    nodes = plan.get("nodes", [])
    cpus = float(sum(n.get("cpus", 0) for n in nodes))
    gpus = float(sum(n.get("gpus", 0) for n in nodes))
    attempts = [a for a in read_attempts(run.path) if a.get("started") and a.get("ended")]
    times = data.get("times", {})
    window = None
    if "stages_start" in times:
        end = times.get("stages_end") or max((a["ended"] for a in attempts), default=None)
        window = (end - times["stages_start"]) if end else None
    stages: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        stages.setdefault(a["stage"], []).append(a)
    uses = []
    for name, group in stages.items():
        spans = sorted(a["ended"] - a["started"] for a in group)
        uses.append(StageUse(
            stage=name, attempts=len(group), failed=sum(a["state"] != "done" for a in group),
            busy_cpu_s=sum((a["ended"] - a["started"]) * a["resources"].get("num_cpus", 0)
                           for a in group),
            busy_gpu_s=sum((a["ended"] - a["started"]) * a["resources"].get("num_gpus", 0)
                           for a in group),
            task_s_median=spans[len(spans) // 2] if spans else None))
    busy_cpu = sum(u.busy_cpu_s for u in uses)
    busy_gpu = sum(u.busy_gpu_s for u in uses)
    out = Report(run=run.path.name, nodes=len(nodes), cpus=cpus, gpus=gpus, window_s=window,
                 busy_cpu_s=busy_cpu, busy_gpu_s=busy_gpu,
                 cpu_utilisation=busy_cpu / (cpus * window) if window and cpus else None,
                 gpu_utilisation=busy_gpu / (gpus * window) if window and gpus else None,
                 stages=uses)
    target = run.path / "report"
    target.mkdir(exist_ok=True)
    if plot and (attempts or data.get("services")):
        out.timeline = str(_plot(run, attempts, [n["name"] for n in nodes], target))
    (target / "report.json").write_text(json.dumps(asdict(out), indent=2))
    return out


def _plot(run: RunDir, attempts: list[dict[str, Any]], nodes: list[str], target: Path) -> Path:
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()

    t0 = min([a["started"] for a in attempts] or [run.read().get("times", {}).get(
        "all_joined", 0)])
    services = read_json(run.path / "metrics" / "services.json", {}) or {}
    finished = run.read().get("times", {}).get("teardown_start")
    lanes: dict[str, list[tuple[float, float, str]]] = {n: [] for n in nodes}
    for a in attempts:
        lanes.setdefault(a.get("node") or "?", []).append(
            (a["started"] - t0, a["ended"] - a["started"], a["stage"]))
    bars: dict[str, list[tuple[float, float, str]]] = {}
    for name, rec in services.items():
        start = rec.get("published_at") or rec.get("running_at")
        if not start:
            continue
        end = finished or max([a["ended"] for a in attempts] or [start])
        for replica in rec.get("bt", []):
            bars.setdefault(replica.get("node") or "?", []).append(
                (start - t0, end - start, f"service {name}"))
    names = sorted({s for lane in lanes.values() for *_, s in lane})
    names += sorted({s for lane in bars.values() for *_, s in lane})
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    rows = sorted(set(lanes) | set(bars))
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.9 * len(rows)))
    for y, node in enumerate(rows):
        for start, width, label in bars.get(node, []):
            ax.broken_barh([(start, width)], (y - 0.45, 0.15), color=colours[label], alpha=0.5)
        tasks = sorted(lanes.get(node, []))
        # stack overlapping tasks in thin sub-lanes so concurrency is visible
        ends: list[float] = []
        for start, width, label in tasks:
            slot = next((i for i, e in enumerate(ends) if e <= start), len(ends))
            if slot == len(ends):
                ends.append(0.0)
            ends[slot] = start + width
            height = 0.7 / max(1, min(len(tasks), 16))
            ax.broken_barh([(start, max(width, 1e-3))],
                           (y - 0.28 + (slot % 16) * height, height), color=colours[label])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("seconds since the first task started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    ax.legend(handles, names, loc="upper right", fontsize=8)
    ax.set_title(f"{run.path.name}: tasks per node (stacked by concurrency), service replicas")
    fig.tight_layout()
    path = target / "timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""`hpcray report <run>`: where the allocation's time went, after the run, without the
cluster. The timeline is built from Ray's own record of what ran (<run>/ray-events/, kept by
`hpcray up` before teardown: bootstrap/events.py), so a run without stages shows its Tune
trials, its data actors and its service replicas too; stage attempts come from the stage
records and are matched to Ray's tasks by node, process and time. One lane per node for CPU
work and one per GPU, each item coloured by what it belongs to (a stage, a service, Tune
trials, Ray Serve, an actor class). Besides: busy CPU and GPU seconds against what the run
held, the BT of every service replica, the stages' table. It writes report/report.json,
report/timeline.json (the items), report/timeline.png, report/use.png and report/report.html
(report_html.py: one self-contained page)."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcray.bootstrap.events import read_events
from hpcray.rundir import RunDir, find_run, read_json, redact, run_secrets
from hpcray.services.names import APP_PREFIX, OPENAI_APP
from hpcray.stages.records import read_attempts

MAX_CALLS_DRAWN = 200  # an actor's method calls kept per item (all are counted)
STAGE_TASKS = {"run_function", "run_command", "StageActor.run"}
SERVE_ACTORS = {"ServeController", "ProxyActor", "ServeReplica"}
RAY_DATA_ACTORS = {"_StatsActor", "AutoscalingRequester", "SplitCoordinator", "MapWorker",
                   "_MapWorker", "DatasetStatsActor", "_ActorPoolMapOperator"}
TUNE = "Tune trials"
_GROUP_KEY = re.compile(r"^(?P<base>.+?)_group_(?:\d+_)?[0-9a-f]{20,}$")


@dataclass
class StageUse:
    stage: str
    attempts: int
    failed: int
    busy_cpu_s: float
    busy_gpu_s: float
    task_s_median: float | None


@dataclass
class Item:
    """One bar of the timeline: a task attempt or an actor's lifetime, on its node."""
    node: str                      # the run's node name ("?" where Ray did not say)
    group: str                     # what it belongs to: its colour
    label: str
    kind: str                      # task | actor | stage (an attempt only the records know)
    #                                | driver (the workflow's driver process, from run.json)
    start: float
    end: float
    cpus: float = 0.0
    gpus: float = 0.0
    gpu_ids: list[int] = field(default_factory=list)  # an actor's GPUs, as Ray gave them
    state: str | None = None
    pid: int | None = None
    ref: str | None = None         # Ray's task or actor id; stage items: "<stage>#<i>.<attempt>"
    calls: int = 0                 # an actor's method calls
    call_spans: list[list[float]] = field(default_factory=list)  # the first MAX_CALLS_DRAWN

    @property
    def lanes(self) -> list[str]:
        if self.kind == "driver":
            return ["process"]
        if self.gpu_ids:
            return [f"GPU {i}" for i in self.gpu_ids]
        return ["GPU ?"] if self.gpus else ["CPU"]


@dataclass
class GroupUse:
    group: str
    items: int
    cpu_s: float
    gpu_s: float


@dataclass
class ReplicaBT:
    """A service replica's bootstrap time: launch, init, publish (services.json, for the
    workflow's services), or only when Ray had it alive (a service the driver started)."""
    service: str
    replica: str
    node: str | None
    launch_s: float | None
    init_s: float | None
    publish_s: float | None
    alive_s: float | None
    source: str                    # services.json | ray-events


@dataclass
class RTSplit:
    """A service's calls' round trip in the paper's parts (mean and p50, seconds): the
    clients' communication (metrics/clients/), the replicas' service and inference (their
    last samples, kept by `hpcray up` before teardown: ray-events/replicas.json). A part
    nobody recorded is None: a service the driver stopped itself took its samples along."""
    service: str
    calls: int
    communication_mean_s: float | None
    communication_p50_s: float | None
    service_mean_s: float | None
    service_p50_s: float | None
    inference_mean_s: float | None
    inference_p50_s: float | None


@dataclass
class Report:
    run: str
    nodes: int
    cpus: float
    gpus: float
    window_s: float | None         # stages_start -> stages_end
    busy_cpu_s: float              # stage attempts only
    busy_gpu_s: float
    cpu_utilisation: float | None  # busy CPU seconds / (CPUs x window)
    gpu_utilisation: float | None
    stages: list[StageUse] = field(default_factory=list)
    timeline: str | None = None
    # the whole run, from Ray's events: all_joined -> teardown_start
    run_window_s: float | None = None
    held_cpu_s: float = 0.0
    held_gpu_s: float = 0.0
    used_cpu_s: float = 0.0        # what tasks and actors reserved, for as long as they ran
    used_gpu_s: float = 0.0
    groups: list[GroupUse] = field(default_factory=list)
    replicas: list[ReplicaBT] = field(default_factory=list)
    rt: list[RTSplit] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    events: dict[str, Any] = field(default_factory=dict)  # ray-events/meta.json
    node_gpus: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0
    plots: list[str] = field(default_factory=list)
    html: str | None = None

    def summary(self) -> str:
        lines = [f"{self.run}: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs"]
        if self.events:
            lines.append(f"  Ray's events: {len(self.items)} item(s) on the timeline from "
                         f"{self.events.get('tasks_kept', 0)} task(s), "
                         f"{self.events.get('actors_kept', 0)} actor(s), "
                         f"{self.events.get('actor_calls_kept', 0)} actor call(s)")
        else:
            lines.append("  no Ray events kept for this run (a run from before they were "
                         "collected, or one whose head was lost): stage records only")
        if self.run_window_s:
            lines.append(
                f"  the run held {self.held_cpu_s:.0f} CPU-s and {self.held_gpu_s:.0f} GPU-s "
                f"over {self.run_window_s:.1f}s; tasks and actors used {self.used_cpu_s:.1f} "
                f"CPU-s ({_share(self.used_cpu_s, self.held_cpu_s)}) and {self.used_gpu_s:.1f} "
                f"GPU-s ({_share(self.used_gpu_s, self.held_gpu_s)})")
        for g in self.groups:
            lines.append(f"  {g.group}: {g.items} item(s), {g.cpu_s:.1f} CPU-s, "
                         f"{g.gpu_s:.1f} GPU-s")
        for r in self.replicas:
            parts = [f"{k} {v:.2f}s" for k, v in (("launch", r.launch_s), ("init", r.init_s),
                                                  ("publish", r.publish_s)) if v is not None]
            lines.append(f"  replica {r.service}/{r.replica} on {r.node}: "
                         + (", ".join(parts) if parts else
                            f"alive {r.alive_s or 0:.1f}s (no BT recorded: a service the "
                            "driver started)"))
        for split in self.rt:
            lines.append(f"  RT split of {split.service} ({split.calls} call(s)), mean: "
                         f"communication {_ms(split.communication_mean_s)}, service "
                         f"{_ms(split.service_mean_s)}, inference {_ms(split.inference_mean_s)}")
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
        if self.html:
            lines.append(f"  report: {self.html}")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ms"


def _share(used: float, held: float) -> str:
    return f"{used / held:.1%}" if held else "-"


def resources(raw: dict[str, float]) -> tuple[float, float]:
    """CPUs and GPUs from Ray's resource map, placement-group keys (`CPU_group_<pg>` and
    `CPU_group_<i>_<pg>`, both present for one reservation) counted once."""
    plain: dict[str, float] = {}
    grouped: dict[str, float] = {}
    for key, value in raw.items():
        m = _GROUP_KEY.match(key)
        if m:
            grouped[m["base"]] = max(grouped.get(m["base"], 0.0), value)
        else:
            plain[key] = plain.get(key, 0.0) + value
    return (plain.get("CPU", 0.0) + grouped.get("CPU", 0.0),
            plain.get("GPU", 0.0) + grouped.get("GPU", 0.0))


def _span(times: dict[str, float], open_end: float | None = None,
          ) -> tuple[float, float] | None:
    """When a task ran: from RUNNING (or its handing to a worker) to its end; one still
    running in Ray's last word ends at `open_end` (None: not drawn)."""
    start = times.get("RUNNING") or times.get("SUBMITTED_TO_WORKER")
    end = times.get("FINISHED") or times.get("FAILED") or open_end
    if start is None or end is None:
        return None
    return start, max(end, start)


def _service_of(actor_class: str) -> str | None:
    """ServeReplica:<app>:<deployment> -> the hpcray service it serves."""
    if not actor_class.startswith("ServeReplica:"):
        return None
    app = actor_class.split(":")[1]
    return None if app == OPENAI_APP else app.removeprefix(APP_PREFIX)


def actor_group(actor: dict[str, Any], methods: set[str], stage: str | None) -> str:
    """What an actor belongs to, from its class and the calls it served."""
    cls = actor["class"]
    service = _service_of(cls)
    if service is not None:
        return f"service {service}"
    if cls.startswith(f"ServeReplica:{OPENAI_APP}:"):
        return "OpenAI API"
    if cls.split(":")[0] in SERVE_ACTORS:
        return "Ray Serve"
    if cls == "ReplicaDirectory":
        return "hpcray"
    if cls == "StageActor":
        return f"stage {stage}" if stage else "stages"
    if cls == "ImplicitFunc" or {"train", "save", "get_auto_filled_metrics"} <= methods:
        return TUNE
    if cls in RAY_DATA_ACTORS or cls.startswith("MapWorker("):
        return "Ray Data"
    return cls or "actor"


def task_group(task: dict[str, Any], stage: str | None) -> str:
    func = task["func"]
    if func in STAGE_TASKS:
        return f"stage {stage}" if stage else "stages"
    if "->" in func or func.startswith(("ReadRange", "Read", "Map(", "Write")):
        return "Ray Data"
    return func or task["name"] or "task"


class _Attempts:
    """Stage attempts by (node, pid), to name the stage of a Ray task that ran one."""

    def __init__(self, attempts: list[dict[str, Any]]) -> None:
        self.by_proc: dict[tuple[str | None, int | None], list[dict[str, Any]]] = {}
        for a in attempts:
            self.by_proc.setdefault((a.get("node"), a.get("pid")), []).append(a)
        for group in self.by_proc.values():
            group.sort(key=lambda a: a["started"])
        # each group's start times, built once: a reused worker runs thousands of attempts
        self.starts = {key: [a["started"] for a in group] for key, group in self.by_proc.items()}
        self.matched: set[int] = set()

    def match(self, node: str | None, pid: int | None, start: float, end: float,
              ) -> dict[str, Any] | None:
        """The attempt of that process that started closest to the task's start, within
        the task's span (a second's slack: the two clocks are read a little apart)."""
        group = self.by_proc.get((node, pid))
        if not group:
            return None
        i = bisect_left(self.starts[(node, pid)], start)
        best = None
        for a in group[max(0, i - 2):i + 2]:
            if id(a) in self.matched or not start - 1 <= a["started"] <= end + 1:
                continue
            if best is None or abs(a["started"] - start) < abs(best["started"] - start):
                best = a
        if best is not None:
            self.matched.add(id(best))
        return best

    def stage_of_process(self, node: str | None, pid: int | None) -> str | None:
        group = self.by_proc.get((node, pid))
        return group[0]["stage"] if group else None


def timeline_items(events: dict[str, Any], attempts: list[dict[str, Any]],
                   window_end: float | None) -> list[Item]:
    """Every task and actor Ray recorded, and every stage attempt, as timeline items."""
    index = _Attempts(attempts)
    calls: dict[str, list[dict[str, Any]]] = {}
    items: list[Item] = []
    for t in events.get("tasks", []):
        if t["type"] == "ACTOR_TASK":
            calls.setdefault(t["actor"] or "", []).append(t)
            continue
        if t["type"] == "ACTOR_CREATION_TASK":
            continue  # the actor's own item covers it
        span = _span(t["times"], window_end)
        if span is None:
            continue
        a = index.match(t["node"], t["pid"], *span) if t["func"] in STAGE_TASKS else None
        if a is not None:  # the task's own clock, inside it: Ray stamps RUNNING and FINISHED
            # in other processes, a few ms apart from the work, so back-to-back tasks of one
            # CPU would seem to overlap (and an end not sent yet would be missing)
            span = (a["started"], max(a["started"], a["ended"]))
        cpus, gpus = resources(t["resources"])
        items.append(Item(
            node=t["node"] or "?", group=task_group(t, a["stage"] if a else None),
            label=f"{a['stage']}[{a['index']}]" if a else t["name"], kind="task",
            start=span[0], end=span[1], cpus=cpus, gpus=gpus, state=t["state"], pid=t["pid"],
            ref=f"{a['stage']}#{a['index']}.{a['attempt']}" if a else t["task"]))
    for actor in events.get("actors", []):
        if actor["start"] is None:
            continue  # never became alive: nothing ran
        own = calls.get(actor["actor"], [])
        methods = {c["func"].rsplit(".", 1)[-1] for c in own}
        stage = None
        if actor["class"] == "StageActor":
            for c in own:
                span = _span(c["times"])
                a = index.match(actor["node"], actor["pid"], *span) if span else None
                stage = stage or (a["stage"] if a else None)
            stage = stage or index.stage_of_process(actor["node"], actor["pid"])
        end = actor["end"] or window_end or actor["start"]
        cpus, gpus = resources(actor["resources"])
        spans = sorted(s for s in (_span(c["times"]) for c in own) if s)
        label = actor["name"] or actor["repr"] or actor["class"]
        items.append(Item(
            node=actor["node"] or "?", group=actor_group(actor, methods, stage),
            label=label, kind="actor", start=actor["start"], end=max(end, actor["start"]),
            cpus=cpus, gpus=gpus, gpu_ids=list(actor.get("gpu_ids") or []),
            state=actor["state"], pid=actor["pid"], ref=actor["actor"],
            calls=actor.get("calls", {}).get("count", len(own)),
            call_spans=[list(s) for s in spans[:MAX_CALLS_DRAWN]]))
    for a in attempts:  # attempts Ray's events did not hold (cut, or lost with a node)
        if id(a) in index.matched or not (a.get("started") and a.get("ended")):
            continue
        res = a.get("resources", {})
        items.append(Item(
            node=a.get("node") or "?", group=f"stage {a['stage']}",
            label=f"{a['stage']}[{a['index']}]", kind="stage", start=a["started"],
            end=a["ended"], cpus=res.get("num_cpus", 0), gpus=res.get("num_gpus", 0),
            state=a["state"], pid=a.get("pid"), ref=f"{a['stage']}#{a['index']}.{a['attempt']}"))
    items.sort(key=lambda i: (i.node, i.start))
    return items


def _clip(item: Item, start: float | None, end: float | None) -> float:
    lo = max(item.start, start) if start is not None else item.start
    hi = min(item.end, end) if end is not None else item.end
    return max(0.0, hi - lo)


def replica_bts(run: RunDir, items: list[Item]) -> list[ReplicaBT]:
    """BT per replica: services.json's split where the run recorded it; for the replicas
    of a service the driver started, how long Ray had them alive."""
    out: list[ReplicaBT] = []
    recorded = read_json(run.path / "metrics" / "services.json", {}) or {}
    seen: set[str] = set()
    for name, rec in recorded.items():
        for bt in rec.get("bt", []):
            seen.add(bt["replica"])
            alive = next((i.end - i.start for i in items if i.kind == "actor"
                          and i.group == f"service {name}" and bt["replica"] in i.label), None)
            out.append(ReplicaBT(name, bt["replica"], bt.get("node"), bt.get("launch"),
                                 bt.get("init"), bt.get("publish"), alive, "services.json"))
    for i in items:
        if i.kind == "actor" and i.group.startswith("service "):
            replica = i.label.rsplit("#", 1)[-1]
            if replica not in seen:
                out.append(ReplicaBT(i.group.removeprefix("service "), replica, i.node,
                                     None, None, None, i.end - i.start, "ray-events"))
    return out


def rt_splits(run: RunDir, replica_samples: dict[str, dict[str, Any]]) -> list[RTSplit]:
    """Each service's RT split from the histograms the run kept (metrics/recorder.py)."""
    from hpcray.metrics.recorder import merge, quantile

    comm: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((run.path / "metrics" / "clients").glob("*.json")):
        for name, got in (read_json(path, {}) or {}).get("services", {}).items():
            if got.get("communication_seconds"):
                comm.setdefault(name, []).append(got["communication_seconds"])
    out = []
    for name in sorted(set(comm) | set(replica_samples)):
        replicas = replica_samples.get(name, {}).values()
        parts = {"communication": merge(comm.get(name, [])),
                 "service": merge([r["service_seconds"] for r in replicas
                                   if "service_seconds" in r]),
                 "inference": merge([r["inference_seconds"] for r in replicas
                                     if "inference_seconds" in r])}
        if not any(h["count"] for h in parts.values()):
            continue
        stats: dict[str, float | None] = {}
        for part, h in parts.items():
            stats[f"{part}_mean_s"] = h["sum"] / h["count"] if h["count"] else None
            stats[f"{part}_p50_s"] = quantile(h, 0.5)
        out.append(RTSplit(name, max(h["count"] for h in parts.values()),
                           stats["communication_mean_s"], stats["communication_p50_s"],
                           stats["service_mean_s"], stats["service_p50_s"],
                           stats["inference_mean_s"], stats["inference_p50_s"]))
    return out


def pipeline_plots(run: RunDir, limit: int = 8) -> list[str]:
    """The pipeline's own figures: PNGs the driver wrote in the run dir (not the report's)."""
    found = [p for pattern in ("*.png", "*/*.png") for p in sorted(run.path.glob(pattern))
             if p.parent.name != "report" and p.stat().st_size < 4_000_000]
    return [str(p) for p in found[:limit]]


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
    events = read_events(run.path)
    run_start = times.get("all_joined") or times.get("head_up")
    run_end = (times.get("teardown_start") or events["meta"].get("collected")
               or times.get("driver_end") or times.get("finished"))
    items = timeline_items(events, attempts, run_end)
    secrets = run_secrets(run.path)
    for item in items:  # an actor's name or repr is the user's text: it may hold anything
        item.label = redact(item.label, secrets)
    if times.get("driver_start") and times.get("driver_end"):  # a process, not a Ray task
        items.insert(0, Item(node="driver", group="driver", label="the workflow's driver",
                             kind="driver", start=times["driver_start"],
                             end=times["driver_end"], state=data.get("state")))
    run_window = run_end - run_start if run_start and run_end else None
    by_group: dict[str, GroupUse] = {}
    for i in items:
        g = by_group.setdefault(i.group, GroupUse(i.group, 0, 0.0, 0.0))
        g.items += 1
        g.cpu_s += i.cpus * _clip(i, run_start, run_end)
        g.gpu_s += i.gpus * _clip(i, run_start, run_end)
    out = Report(run=run.path.name, nodes=len(nodes), cpus=cpus, gpus=gpus, window_s=window,
                 busy_cpu_s=busy_cpu, busy_gpu_s=busy_gpu,
                 cpu_utilisation=busy_cpu / (cpus * window) if window and cpus else None,
                 gpu_utilisation=busy_gpu / (gpus * window) if window and gpus else None,
                 stages=uses, run_window_s=run_window,
                 held_cpu_s=cpus * (run_window or 0), held_gpu_s=gpus * (run_window or 0),
                 used_cpu_s=sum(g.cpu_s for g in by_group.values()),
                 used_gpu_s=sum(g.gpu_s for g in by_group.values()),
                 groups=sorted(by_group.values(), key=lambda g: (-g.cpu_s - g.gpu_s, g.group)),
                 replicas=replica_bts(run, items),
                 rt=rt_splits(run, events.get("replicas") or {}), items=items,
                 events=events["meta"],
                 node_gpus={n["name"]: int(n.get("gpus", 0)) for n in nodes},
                 t0=min(([run_start] if run_start else []) + [i.start for i in items],
                       default=0.0),
                 plots=pipeline_plots(run))
    target = run.path / "report"
    target.mkdir(exist_ok=True)
    (target / "timeline.json").write_text(redact(json.dumps(
        {"t0": out.t0, "nodes": [n["name"] for n in nodes],
         "items": [asdict(i) for i in items]}), secrets))
    if plot and items:
        out.timeline = str(_plot(out, [n["name"] for n in nodes], target))
        _plot_use(out, target)
    if plot:
        from hpcray.views.report_html import write_html

        out.html = str(write_html(out, target / "report.html", secrets))
    summary = asdict(out)
    summary.pop("items")
    (target / "report.json").write_text(redact(json.dumps(summary, indent=2), secrets))
    return out



def lanes(rep: Report, nodes: list[str]) -> list[tuple[str, str]]:
    """(node, lane) rows: each node's CPU lane, then one per GPU it has or an item used."""
    used: dict[str, set[str]] = {}
    for i in rep.items:
        used.setdefault(i.node, set()).update(i.lanes)
    rows: list[tuple[str, str]] = [("driver", "process")] if "driver" in used else []
    for node in nodes + sorted(set(used) - set(nodes) - {"driver"}):
        gpu_lanes = {f"GPU {g}" for g in range(rep.node_gpus.get(node, 0))}
        gpu_lanes |= {lane for lane in used.get(node, set()) if lane != "CPU"}
        rows.append((node, "CPU"))
        rows += [(node, lane) for lane in sorted(gpu_lanes)]
    return rows


def stack(items: list[Item], limit: int = 12) -> list[tuple[Item, int]]:
    """Each item with the sub-row it takes in its lane, so overlapping ones stay visible
    (more than `limit` at once share the last)."""
    ends: list[float] = []
    out = []
    for item in sorted(items, key=lambda i: i.start):
        slot = next((k for k, e in enumerate(ends) if e <= item.start), len(ends))
        if slot == len(ends):
            ends.append(0.0)
        ends[slot] = item.end
        out.append((item, min(slot, limit - 1)))
    return out


def colours(rep: Report) -> dict[str, str]:
    """One colour per group (tab10's, then tab20's), the busiest first."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
               "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
    return {g.group: palette[k % len(palette)] for k, g in enumerate(rep.groups)}


def _plot(rep: Report, nodes: list[str], target: Path) -> Path:
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()
    rows = lanes(rep, nodes)
    colour = colours(rep)
    fig, ax = plt.subplots(figsize=(13, 1.4 + 0.8 * len(rows)))
    # one broken_barh per (band, colour, shade): thousands of tasks draw in a few calls
    bars: dict[tuple[float, float, str, float], list[tuple[float, float]]] = {}
    for y, (node, lane) in enumerate(rows):
        placed = stack([i for i in rep.items if i.node == node and lane in i.lanes])
        depth = max((s for _, s in placed), default=0) + 1
        height = 0.8 / depth
        for item, slot in placed:
            bottom = y - 0.4 + slot * height
            key = (bottom, height * 0.9, colour[item.group],
                   0.55 if item.kind == "actor" else 1.0)
            bars.setdefault(key, []).append((item.start - rep.t0,
                                             max(item.end - item.start, 1e-3)))
            if item.call_spans:
                bars.setdefault((bottom + height * 0.2, height * 0.5, colour[item.group], 1.0),
                                []).extend((s - rep.t0, max(e - s, 1e-3))
                                           for s, e in item.call_spans)
    for (bottom, height, shade, alpha), spans in bars.items():
        ax.broken_barh(spans, (bottom, height), color=shade, alpha=alpha)
    ax.set_yticks(range(len(rows)), [f"{n} {lane}" for n, lane in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the cluster was up")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colour.values()]
    ax.legend(handles, list(colour), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(f"{rep.run}: tasks and actors per node and GPU (actor calls darker)")
    fig.tight_layout()
    path = target / "timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def in_use(rep: Report) -> tuple[list[float], list[float], list[float]]:
    """CPUs and GPUs reserved by running tasks and actors (the driver holds none), as a step
    function: at each start or end (seconds from t0), what is reserved from then on."""
    changes: dict[float, list[float]] = {}
    for i in rep.items:
        for at, sign in ((i.start, 1.0), (i.end, -1.0)):
            step = changes.setdefault(at - rep.t0, [0.0, 0.0])
            step[0] += sign * i.cpus
            step[1] += sign * i.gpus
    xs, cpu, gpu = [], [], []
    now = [0.0, 0.0]
    for at in sorted(changes):
        now = [now[0] + changes[at][0], now[1] + changes[at][1]]
        xs.append(at)
        cpu.append(round(now[0], 6))
        gpu.append(round(now[1], 6))
    return xs, cpu, gpu


def _plot_use(rep: Report, target: Path) -> Path:
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()
    xs, cpu, gpu = in_use(rep)
    fig, ax = plt.subplots(figsize=(13, 3))
    ax.step(xs, cpu, where="post", label="CPUs reserved by running work")
    ax.axhline(rep.cpus, linestyle="--", label=f"CPUs held ({rep.cpus:g})")
    if rep.gpus or any(gpu):
        ax.step(xs, gpu, where="post", label="GPUs reserved")
        ax.axhline(rep.gpus, linestyle=":", color="C1", label=f"GPUs held ({rep.gpus:g})")
    ax.set_xlabel("seconds since the cluster was up")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("what running tasks and actors reserved, against what the run held")
    fig.tight_layout()
    path = target / "use.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Ray's own record of what ran, kept in the run dir before teardown: every task attempt and
every actor of every job on the cluster (the driver's Tune trials and Ray Data actors, service
replicas, stage tasks, Serve's own actors), with the node and process each ran in, its state
transitions, the resources it held and, for actors, the GPU ids Ray gave it. `hpcray report`
reads these files after the allocation is gone.

Read from the GCS through the head's connected worker (raycompat.task_events, actor_table),
not the state API: that one asks the dashboard, which a run starts only when asked. The GCS
keeps at most RAY_task_events_max_num_task_in_gcs task attempts (Ray's default 100000); the
files here are bounded on their own (MAX_TASKS, MAX_ACTOR_CALLS, MAX_ACTORS), and what was cut
is counted in meta.json. Nothing secret is written: no arguments, no runtime environment."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcray.rundir import RunDir, redact, run_secrets, write_json_atomic

log = logging.getLogger("hpcray.up")

EVENTS_DIR = "ray-events"
MAX_TASKS = 20_000         # normal tasks and actor creations kept one per line
MAX_ACTOR_CALLS = 10_000   # actor method calls kept one per line (all are counted per actor)
MAX_ACTORS = 5_000
FLUSH_S = 1.2              # Ray's task_events_report_interval_ms (1 s), and a margin
TEXT = 300                 # characters kept of a name or an error

# Ray's TaskStatus numbers (common.proto) -> the names kept; the rest are not needed
STATES = {1: "PENDING_ARGS_AVAIL", 2: "PENDING_NODE_ASSIGNMENT", 5: "SUBMITTED_TO_WORKER",
          8: "RUNNING", 11: "FINISHED", 12: "FAILED"}
TASK_TYPES = {0: "NORMAL_TASK", 1: "ACTOR_CREATION_TASK", 2: "ACTOR_TASK", 3: "DRIVER_TASK"}
ACTOR_STATES = {0: "DEPENDENCIES_UNREADY", 1: "PENDING_CREATION", 2: "ALIVE", 3: "RESTARTING",
                4: "DEAD"}


def _cut(text: str) -> str:
    return text if len(text) <= TEXT else text[:TEXT - 3] + "..."


def _hex(raw: bytes) -> str | None:
    return raw.hex() if raw and raw.strip(b"\xff") else None


def task_record(ev: Any, nodes: dict[str, str]) -> dict[str, Any] | None:
    """One task attempt (a `gcs_pb2.TaskEvents`) as a small dict, or None for a driver."""
    info, upd = ev.task_info, ev.state_updates
    kind = TASK_TYPES.get(info.type, str(info.type))
    if kind == "DRIVER_TASK":
        return None
    times = {STATES[k]: v / 1e9 for k, v in upd.state_ts_ns.items() if k in STATES}
    node_id = _hex(upd.node_id) or _hex(info.node_id)
    out: dict[str, Any] = {
        "task": ev.task_id.hex(), "attempt": ev.attempt_number, "job": ev.job_id.hex(),
        "type": kind, "name": _cut(info.name), "func": _cut(info.func_or_class_name),
        "actor": _hex(info.actor_id), "node_id": node_id, "node": nodes.get(node_id or ""),
        "pid": upd.worker_pid or None,
        "resources": {k: v for k, v in info.required_resources.items() if v},
        "times": times,
        "state": max(times, key=lambda s: times[s]) if times else None,
    }
    if upd.HasField("error_info"):
        out["error"] = _cut(f"{upd.error_info.error_type}: {upd.error_info.error_message}")
    return out


def actor_record(a: Any, nodes: dict[str, str]) -> dict[str, Any]:
    """One actor (a `gcs_pb2.ActorTableData`): where, when, what it held."""
    node_id = _hex(a.address.node_id) or _hex(a.node_id)
    gpu_ids = sorted({rid.index for entry in a.resource_mapping  # a placement group's too
                      if entry.name == "GPU" or entry.name.startswith("GPU_group_")
                      for rid in entry.resource_ids})
    death = ""
    if a.HasField("death_cause"):
        which = a.death_cause.WhichOneof("context")
        if which:
            ctx = getattr(a.death_cause, which)
            death = f"{which}: {getattr(ctx, 'error_message', '')}".strip()
    return {
        "actor": a.actor_id.hex(), "class": _cut(a.class_name), "name": _cut(a.name),
        "repr": _cut(a.repr_name), "job": a.job_id.hex(), "node_id": node_id,
        "node": nodes.get(node_id or ""), "pid": a.pid or None,
        "state": ACTOR_STATES.get(a.state, str(a.state)),
        "start": a.start_time / 1e3 if a.start_time else None,
        "end": a.end_time / 1e3 if a.end_time else None,
        "restarts": a.num_restarts,
        "resources": {k: v for k, v in a.required_resources.items() if v},
        "gpu_ids": gpu_ids, "death": _cut(death),
    }


def node_names(ray_nodes: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Ray node id -> the run's node name, from the per-node resource each agent declares."""
    out = {}
    for n in ray_nodes:
        for key in n.get("Resources", {}):
            if key.startswith("hpcray-node:"):
                out[n["NodeID"]] = key.split(":", 1)[1]
    return out


def summarise(tasks: list[dict[str, Any]], actors: list[dict[str, Any]],
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Cut to the bounds: every actor gets its calls' count and busy seconds; the lines kept
    are the first MAX_TASKS tasks and MAX_ACTOR_CALLS calls by start."""
    calls: dict[str, dict[str, Any]] = {}
    plain, methods = [], []
    for t in tasks:
        if t["type"] == "ACTOR_TASK":
            methods.append(t)
            agg = calls.setdefault(t["actor"] or "", {"count": 0, "busy_s": 0.0})
            agg["count"] += 1
            times = t["times"]
            end = times.get("FINISHED") or times.get("FAILED")
            if "RUNNING" in times and end:
                agg["busy_s"] += max(0.0, end - times["RUNNING"])
        else:
            plain.append(t)

    def start(t: dict[str, Any]) -> float:
        return min(t["times"].values(), default=0.0)

    plain.sort(key=start)
    methods.sort(key=start)
    actors = sorted(actors, key=lambda a: a["start"] or 0)
    for a in actors:
        a["calls"] = calls.get(a["actor"], {"count": 0, "busy_s": 0.0})
    meta = {"tasks_seen": len(plain), "tasks_kept": min(len(plain), MAX_TASKS),
            "actor_calls_seen": len(methods), "actor_calls_kept": min(len(methods),
                                                                       MAX_ACTOR_CALLS),
            "actors_seen": len(actors), "actors_kept": min(len(actors), MAX_ACTORS)}
    return plain[:MAX_TASKS] + methods[:MAX_ACTOR_CALLS], actors[:MAX_ACTORS], meta


def settle(run: RunDir) -> float:
    """Wait, when the stages ended within the last FLUSH_S, until their last tasks' ends
    have reached the GCS (their workers, still alive, send them within a second); seconds
    waited. A driver's workers end with its job and send what they hold as they go, so a
    driver's end is not waited on: every run would pay it."""
    ended = (run.read().get("times") or {}).get("stages_end")
    wait = FLUSH_S - (time.time() - ended) if ended else 0.0
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)


def _read(nodes: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from hpcray.runtime import raycompat

    tasks = [r for r in (task_record(e, nodes) for e in raycompat.task_events()) if r]
    actors = [actor_record(a, nodes) for a in raycompat.actor_table()]
    return tasks, actors


def collect(run: RunDir) -> dict[str, Any] | None:
    """Write <run>/ray-events/{nodes,actors,replicas,meta}.json and tasks.jsonl from the
    connected cluster; None when Ray is not connected. Workers send their task events every second:
    a task that ended in the last second may still read as running (the report ends it with
    its stage record, or at the collection), except stage tasks, waited for (settle)."""
    import ray

    if not ray.is_initialized():
        return None
    t0 = time.time()
    waited = settle(run)
    ray_nodes = ray.nodes()
    nodes = node_names(ray_nodes)
    tasks, actors = _read(nodes)
    kept, actors, meta = summarise(tasks, actors)
    target = run.path / EVENTS_DIR
    target.mkdir(exist_ok=True)
    write_json_atomic(target / "nodes.json", [
        {"node_id": n["NodeID"], "node": nodes.get(n["NodeID"]), "address":
         n.get("NodeManagerAddress"), "cpus": n.get("Resources", {}).get("CPU", 0),
         "gpus": n.get("Resources", {}).get("GPU", 0)} for n in ray_nodes])
    secrets = run_secrets(run.path)  # names and reprs are users' text: they may hold one
    write_json_atomic(target / "actors.json", json.loads(redact(json.dumps(actors), secrets)))
    write_json_atomic(target / "replicas.json", replica_samples(run.path))
    tmp = target / "tasks.jsonl.tmp"
    with open(tmp, "w") as f:
        for t in kept:
            f.write(redact(json.dumps(t), secrets) + "\n")
    os.replace(tmp, target / "tasks.jsonl")
    meta.update(collected=time.time(), took_s=round(time.time() - t0, 3),
                waited_s=round(waited, 3),
                ray=ray.__version__, gcs_limit=os.environ.get(  # Ray's own spelling
                    "RAY_task_events_max_num_task_in_gcs",  # noqa: SIM112
                    "Ray's default (100000)"))
    write_json_atomic(target / "meta.json", meta)
    return meta


def replica_samples(run_path: Path, limit: int = 1000) -> dict[str, dict[str, Any]]:
    """The replicas' last metric samples (`metrics/replicas/<service>/<replica>.json`:
    requests, and the service and inference histograms of the RT split): of the live ones,
    and the final ones of replicas already stopped (`metrics/replicas-stopped/`)."""
    out: dict[str, dict[str, Any]] = {}
    paths = [*sorted((run_path / "metrics" / "replicas-stopped").glob("*/*.json")),
             *sorted((run_path / "metrics" / "replicas").glob("*/*.json"))]
    for path in paths[-limit:]:
        try:
            out.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # stopped (or being rewritten) just now
    return out


def collect_quietly(run: RunDir, budget_s: float = 10.0) -> None:
    """collect(), logged, within `budget_s`: nothing about the report may stop or delay a
    run's teardown past its scheduler's kill (Slurm's KillWait is about 30 s). Past the
    budget the teardown goes on and the collection finishes beside it or not at all."""
    done: dict[str, Any] = {}

    def work() -> None:
        try:
            done["meta"] = collect(run)
        except Exception as exc:  # noqa: BLE001 - the report loses its Ray view
            done["error"] = exc

    worker = threading.Thread(target=work, name="hpcray-keep-events", daemon=True)
    worker.start()
    worker.join(budget_s)
    if worker.is_alive():
        log.warning("Ray's task and actor events not kept within %.0fs; the teardown goes on "
                    "(the report may lack them)", budget_s)
        return
    if "error" in done:
        log.warning("could not keep Ray's task and actor events for the report: %s",
                    done["error"])
        return
    meta = done.get("meta")
    if meta:
        log.info("kept Ray's events for the report: %d task(s), %d actor call(s), %d actor(s) "
                 "in %.2fs", meta["tasks_kept"], meta["actor_calls_kept"], meta["actors_kept"],
                 meta["took_s"])


def read_events(run_path: Path) -> dict[str, Any]:
    """What collect() wrote (empty for each part missing): nodes, actors, tasks, meta,
    replicas."""
    root = run_path / EVENTS_DIR
    out: dict[str, Any] = {"nodes": [], "actors": [], "tasks": [], "meta": {},
                           "replicas": {}}
    for key in ("nodes", "actors", "meta", "replicas"):
        path = root / f"{key}.json"
        if path.exists():
            out[key] = json.loads(path.read_text())
    path = root / "tasks.jsonl"
    if path.exists():
        out["tasks"] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return out

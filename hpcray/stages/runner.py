"""StageRunner: the workflow's stages as Ray tasks, scheduled from the `hpcray up` process.

A stateful stage (`actors: N`) keeps N actors for its lifetime and sends each task to the
least busy one; an actor that dies is replaced and its task retried.

A stage opens when every stage in its `after` has finished (and, for `stream_from`, when its
producer has opened). Fan-out stages queue one task per item; a streaming stage queues one
task per output of its producer as each output arrives. At most `max_in_flight` tasks of a
stage run at once, and a producer stops submitting while a consumer has that many outputs
waiting (backpressure). A failing attempt is retried `retries` times; a task that still fails
stops the run, with the stage, item, command and error in the message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcray import env as hpcray_env
from hpcray.errors import StageError
from hpcray.rundir import RunDir
from hpcray.runtime.placement import bundle, ray_options, scaled, unplaceable
from hpcray.spec.stages import StageSpec, check_stage_graph
from hpcray.stages import tasks
from hpcray.stages.fanout import expand, fill
from hpcray.stages.records import (
    Attempt,
    AttemptLog,
    EarlierAttempts,
    EarlierTask,
    item_text,
    kept_output,
)
from hpcray.stages.tasks import node_named_in, node_names_by_id
from hpcray.state import AttemptState, StageState

log = logging.getLogger("hpcray.stages")

# With more tasks in flight than this, completions are collected in batches every BATCH_S:
# one ray.wait over N refs costs O(N), so waiting for them one at a time costs O(N^2).
BATCH_FROM = 8
BATCH_S = 0.02
# Tasks queued on one actor of a stateful stage: 2 hides the round trip between two calls.
ACTOR_QUEUE = 2


@dataclass
class _Task:
    stage: str
    index: int
    item: Any
    has_item: bool
    attempt: int = 0
    submitted: float = 0.0
    command: list[str] | None = None
    placement: Any = None  # a launched task's placement group, removed when it ends
    actor: int | None = None  # a stateful stage's actor slot that runs it
    actor_handle: Any = None  # ... and the actor in that slot when it was sent
    source: int | None = None  # a streaming stage's task: the producer task it came from


@dataclass
class _Stage:
    spec: StageSpec
    pending: deque = field(default_factory=deque)
    opened: bool = False
    finished: bool = False
    total: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    running: int = 0
    skipped: int = 0  # done in an earlier job of the run (a relay), not run again
    next_index: int = 0
    opened_at: float | None = None
    finished_at: float | None = None
    actors: list[Any] = field(default_factory=list)  # a stateful stage's actors, by slot
    actor_load: list[int] = field(default_factory=list)  # tasks in flight on each


class StageRunner:
    def __init__(self, stages: list[StageSpec], run: RunDir, base: Path,
                 env: dict[str, str] | None = None, stop: threading.Event | None = None,
                 launcher: str = "local", resume: bool = False) -> None:
        self.launcher = launcher  # the site's, for stages with `launch:`
        self.order = check_stage_graph(stages, None)
        self.stages = {s.name: _Stage(s) for s in stages}
        self.consumers = {s.name: [c.name for c in stages if c.stream_from == s.name]
                          for s in stages}
        self.rundir = run
        self.base = base
        self.env = dict(env or {})
        self.stop = stop or threading.Event()
        self._node_names: dict[str, str] = {}  # Ray NodeID -> node name, taken at the start
        self.log = AttemptLog(run.path / "stages")
        # a relay's successor: what the run's earlier jobs recorded (None: a first job)
        self.earlier = EarlierAttempts.read(run.path) if resume else None
        self.inflight: dict[Any, _Task] = {}
        self._last_save = 0.0
        self._option_cache: dict[str, dict[str, Any]] = {}
        self._remotes: dict[str, Any] = {}
        self._out_dirs: dict[str, str] = {}
        self._resources_cache: dict[str, dict[str, Any]] = {}
        self._run_path, self._base = str(run.path), str(base)
        # what every executable gets: the services' endpoints and where the run is
        self._env = {k: v for k, v in self.env.items()
                     if k.startswith(hpcray_env.SERVICE_URL_PREFIX)
                     or k in (hpcray_env.ENDPOINTS, hpcray_env.OPENAI_BASE_URL)}
        self._env[hpcray_env.RUN_DIR] = self._run_path

    # -- opening and finishing stages ------------------------------------------------------
    def _open_ready(self) -> None:
        for name in self.order:
            st = self.stages[name]
            if st.opened:
                continue
            spec = st.spec
            if not all(self.stages[d].finished for d in spec.after):
                continue
            if spec.stream_from and not self.stages[spec.stream_from].opened:
                continue
            st.opened, st.opened_at = True, time.time()
            if spec.actors:
                st.actors = [self._new_actor(spec) for _ in range(spec.actors)]
                st.actor_load = [0] * spec.actors
            if not spec.stream_from:
                items = expand(spec.each, self.base)
                for item in items:
                    self._queue(st, item, has_item=spec.each is not None)
                if not items:
                    log.warning("stage %s: its fan-out is empty (no tasks)", name)
            log.info("stage %s opened: %s", name, f"{st.total} task(s)" if not spec.stream_from
                     else f"streaming from {spec.stream_from}")

    def _queue(self, st: _Stage, item: Any, has_item: bool, source: int | None = None) -> None:
        if self.earlier:
            self._queue_resumed(st, item, has_item, source, self.earlier)
            return
        st.pending.append(_Task(st.spec.name, st.next_index, item, has_item, source=source))
        st.next_index += 1
        st.total += 1

    def _queue_resumed(self, st: _Stage, item: Any, has_item: bool, source: int | None,
                       earlier: EarlierAttempts) -> None:
        """A relay's successor: a task an earlier job recorded done (the same item at the
        same index; for a streaming stage, from the same producer task) counts as done
        and is not run; its kept output goes to the consumers as a new output would. The
        others run, their attempts numbered after those recorded."""
        name = st.spec.name
        if source is None:
            index = st.next_index
            st.next_index += 1
            before = earlier.task(name, index)
        else:
            before = earlier.from_source(name, source)
            if before is None:
                used = earlier.used(name)
                while st.next_index in used:
                    st.next_index += 1
                index = st.next_index
                st.next_index += 1
            else:
                index = before.index
        st.total += 1
        same = before is not None and before.item == item_text(item)
        if before is not None and not same:
            log.warning("stage %s task %d: item %s, recorded as %s in an earlier job; run "
                        "again", name, index, item_text(item), before.item)
        if same and before is not None and self._settled(name, index, earlier):
            self._skip(st, before, earlier)
            return
        st.pending.append(_Task(name, index, item, has_item, source=source,
                                attempt=before.attempts if before is not None else 0))

    def _settled(self, stage: str, index: int, earlier: EarlierAttempts) -> bool:
        """Whether an earlier job finished this task and nothing needs its output again: it
        was kept (small JSON), or every consumer finished the task it fed, and so on down.
        A producer whose output is neither runs again (its `done` then recorded twice)."""
        before = earlier.task(stage, index)
        if before is None or before.done is None:
            return False
        if before.done.get("output") is not None:
            return True
        return all((took := earlier.from_source(consumer, index)) is not None
                   and self._settled(consumer, took.index, earlier)
                   for consumer in self.consumers[stage])

    def _skip(self, st: _Stage, before: EarlierTask, earlier: EarlierAttempts) -> None:
        """A settled task counted done; its kept output goes to the consumers as a new one
        would (each decides for itself), else the tasks it fed are counted done too."""
        st.done += 1
        st.skipped += 1
        assert before.done is not None
        output = before.done.get("output")
        for consumer in self.consumers[st.spec.name]:
            cst = self.stages[consumer]
            if output is not None:
                self._queue(cst, json.loads(output), has_item=True, source=before.index)
                continue
            took = earlier.from_source(consumer, before.index)
            assert took is not None  # settled
            cst.total += 1
            self._skip(cst, took, earlier)

    def _finish_ready(self) -> None:
        for name in self.order:
            st = self.stages[name]
            if st.finished or not st.opened or st.pending or st.running:
                continue
            if st.spec.stream_from and not self.stages[st.spec.stream_from].finished:
                continue
            st.finished, st.finished_at = True, time.time()
            self._kill_actors(st)
            log.info("stage %s finished: %d task(s) done, %d retried%s", name, st.done,
                     st.retried, f", {st.skipped} done in an earlier job" if st.skipped else "")

    # -- submitting --------------------------------------------------------------------------
    def _may_submit(self, st: _Stage) -> bool:
        if st.running >= st.spec.max_in_flight:
            return False
        if st.actors and min(st.actor_load) >= ACTOR_QUEUE:
            return False
        # backpressure: do not produce more while a consumer has a full queue of outputs
        return all(len(self.stages[c].pending) < self.stages[c].spec.max_in_flight
                   for c in self.consumers[st.spec.name])

    def _submit_ready(self) -> None:
        for name in self.order:
            st = self.stages[name]
            while st.opened and st.pending and self._may_submit(st):
                self._submit(st, st.pending.popleft())

    def _options(self, spec: StageSpec) -> dict[str, Any]:
        cached = self._option_cache.get(spec.name)
        if cached is None:
            cached = self._option_cache[spec.name] = {**ray_options(spec.resources),
                                                      "max_retries": 0}
        return dict(cached)

    def _submit(self, st: _Stage, task: _Task) -> None:
        spec = st.spec
        if st.actors:
            slot = task.actor = st.actor_load.index(min(st.actor_load))
            st.actor_load[slot] += 1
            task.actor_handle = st.actors[slot]
            ref = task.actor_handle.run.remote(task.item, task.has_item, spec.timeout)
        elif spec.function is not None:
            # what every task of the stage shares goes as one argument: Ray serializes each
            ref = self._remote_for(spec, "run_function").remote(
                (spec.function, spec.args, task.has_item, spec.timeout), task.item)
        else:
            values = {"index": task.index, "stage": spec.name, "run_dir": self._run_path}
            task.command = fill(spec.command or [], task.item, values)
            stem = f"{self._out_dir(spec.name)}/{task.index}.{task.attempt}"
            env = self._task_env(spec, task)
            if spec.launch is not None:
                options, launch = self._placement(spec, self._options(spec))
                task.placement = launch["placement_group"]
                ref = _remote("run_command").options(**options).remote(
                    task.command, env, stem, (self._base, spec.timeout), launch,
                    spec.container)
            else:
                ref = self._remote_for(spec, "run_command").remote(
                    task.command, env, stem, (self._base, spec.timeout), None,
                    spec.container)
        task.submitted = time.time()
        self.inflight[ref] = task
        st.running += 1

    def _resources(self, spec: StageSpec) -> dict[str, Any]:
        """What one task reserved, for its records (one dict per stage, shared)."""
        got = self._resources_cache.get(spec.name)
        if got is None:
            got = self._resources_cache[spec.name] = {
                k: v for k, v in self._options(spec).items() if k != "max_retries"}
        return got

    def _placement(self, spec: StageSpec, options: dict[str, Any]):
        """One bundle of the stage's resources on each of `launch.nodes` distinct nodes; the
        task itself (which only runs the launcher) sits in the first bundle."""
        from ray.util import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        assert spec.launch is not None
        per_node = scaled(spec.resources, spec.launch.per_node)
        pg = placement_group([bundle(per_node)] * spec.launch.nodes, strategy="STRICT_SPREAD")
        options = {**options, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=0)}
        options.pop("label_selector", None)
        return options, {"launcher": self.launcher, "placement_group": pg,
                         "per_node": spec.launch.per_node}

    def _new_actor(self, spec: StageSpec):
        options = self._options(spec)
        options.pop("max_retries")
        return _remote("StageActor").options(**options, max_restarts=0).remote(
            spec.function, spec.args)

    def _kill_actors(self, st: _Stage) -> None:
        import ray

        for actor in st.actors:
            ray.kill(actor)
        st.actors, st.actor_load = [], []

    def _remote_for(self, spec: StageSpec, kind: str):
        """The task function with this stage's options, built once per stage."""
        remote = self._remotes.get(spec.name)
        if remote is None:
            remote = self._remotes[spec.name] = _remote(kind).options(**self._options(spec))
        return remote

    def _out_dir(self, stage: str) -> str:
        path = self._out_dirs.get(stage)
        if path is None:
            path = self._out_dirs[stage] = str(self.log.dir(stage))
        return path

    def _task_env(self, spec: StageSpec, task: _Task) -> dict[str, str]:
        return {**self._env, hpcray_env.STAGE: spec.name, hpcray_env.TASK_INDEX: str(task.index)}

    # -- completions ------------------------------------------------------------------------
    def _complete_many(self, refs: list[Any]) -> None:
        """Fetch finished results together (one ray.get, in parallel from every node), then
        handle each; a ref whose task was lost is fetched alone to name its error."""
        import ray

        try:
            results = ray.get(refs)
        except Exception:  # noqa: BLE001 - some task was lost: one by one
            results = []
            for ref in refs:
                try:
                    results.append(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - a lost worker or node: retried
                    results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                    "lost": True})
        for ref, result in zip(refs, results, strict=True):
            self._complete(ref, result)

    def _complete(self, ref: Any, result: dict[str, Any]) -> None:
        task = self.inflight.pop(ref)
        st = self.stages[task.stage]
        st.running -= 1
        spec = st.spec
        if task.placement is not None:
            from ray.util import remove_placement_group

            remove_placement_group(task.placement)
            task.placement = None
        if task.actor is not None:
            st.actor_load[task.actor] -= 1
            # the actor died (its error names why): its slot gets a fresh one, once
            if result.get("lost") and st.actors[task.actor] is task.actor_handle:
                st.actors[task.actor] = self._new_actor(spec)
            task.actor = task.actor_handle = None
        state = AttemptState.DONE if result.get("ok") else \
            AttemptState.TIMEOUT if result.get("timed_out") else \
            AttemptState.LOST if result.get("lost") else AttemptState.FAILED
        stem = f"{task.index}.{task.attempt}"
        consumers = self.consumers[task.stage]
        attempt = Attempt(
            stage=task.stage, index=task.index, attempt=task.attempt,
            item=item_text(task.item), state=state, submitted=task.submitted,
            started=result.get("started"), ended=result.get("ended"), finished=time.time(),
            node=result.get("node") or self._node_named(result), hosts=result.get("hosts"),
            pid=result.get("pid"),
            resources=self._resources(spec),
            exit_code=result.get("exit_code"), error=result.get("error"),
            detail=result.get("traceback") or result.get("stderr_tail"), command=task.command,
            stdout=f"{self._out_dir(task.stage)}/{stem}.out" if task.command else None,
            stderr=f"{self._out_dir(task.stage)}/{stem}.err" if task.command else None,
            source=task.source,
            output=kept_output(result.get("output"))
            if consumers and state == AttemptState.DONE else None)
        self.log.write(attempt)
        if state == AttemptState.DONE:
            st.done += 1
            for consumer in consumers:
                self._queue(self.stages[consumer], result.get("output"), has_item=True,
                            source=task.index)
            return
        if task.attempt < spec.retries:
            st.retried += 1
            log.warning("stage %s task %d (item %s) attempt %d %s: %s; retrying", task.stage,
                        task.index, attempt.item, task.attempt + 1, state, attempt.error)
            task.attempt += 1
            st.pending.appendleft(task)
            return
        st.failed += 1
        what = " ".join(task.command) if task.command else spec.function
        detail = (attempt.detail or "").strip()
        raise StageError(
            f"stage {task.stage!r} task {task.index} (item {attempt.item}) failed after "
            f"{task.attempt + 1} attempt(s): {attempt.error}\n  ran: {what}"
            + (f"\n  on node {attempt.node}" if attempt.node else "")
            + (f"\n  {detail[-1500:]}" if detail else ""))

    def _node_named(self, result: dict[str, Any]) -> str | None:
        """For a task lost with its node: the node, from the NodeID in Ray's error. The map
        was taken while every node was alive (Ray may list a dead node without resources)."""
        if not result.get("lost") or not result.get("error"):
            return None
        name = node_named_in(result["error"], self._node_names)
        if name is None and "node ID" in result["error"]:
            self._node_names.update(node_names_by_id())
            name = node_named_in(result["error"], self._node_names)
        return name

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, dict[str, Any]]:
        """Run every stage to the end; raises StageError for a task that failed for good."""
        import ray

        self._check_fits()
        self._node_names = node_names_by_id()
        self.rundir.mark("stages_start")
        try:
            while not all(st.finished for st in self.stages.values()):
                if self.stop.is_set():
                    raise StageError("stages stopped before they finished")
                self._open_ready()
                self._submit_ready()
                if self.inflight:
                    refs = list(self.inflight)
                    if len(refs) <= BATCH_FROM:  # few tasks: react to each at once
                        ready, rest = ray.wait(refs, num_returns=1, timeout=0.2,
                                               fetch_local=False)
                        if ready and rest:
                            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0,
                                               fetch_local=False)
                            ready += more
                    else:  # many: collect what finishes within BATCH_S in one call
                        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=BATCH_S,
                                            fetch_local=False)
                    if ready:
                        self._complete_many(ready)
                self._finish_ready()
                self._save()
        except BaseException:
            self._cancel_inflight()
            self._save(force=True)
            self.log.close()
            raise
        self._save(force=True)
        self.log.close()
        self.rundir.mark("stages_end")
        return self.summary()

    def _check_fits(self) -> None:
        """A stage no node (or too few nodes) can hold fails now, not after a silent wait."""
        import ray

        nodes = ray.nodes()
        for name in self.order:
            spec = self.stages[name].spec
            if spec.launch is None:
                why = unplaceable(spec.resources, nodes, "task")
            else:
                why = unplaceable(scaled(spec.resources, spec.launch.per_node), nodes,
                                  f"launched task ({spec.launch.per_node} process(es) per "
                                  "node)", spec.launch.nodes)
            if why:
                raise StageError(f"stage {name!r}: {why}")

    def _cancel_inflight(self) -> None:
        import ray
        from ray.util import remove_placement_group

        for st in self.stages.values():
            try:
                self._kill_actors(st)
            except Exception as exc:  # noqa: BLE001 - teardown sweeps what is left
                log.debug("kill actors: %s", exc)
        for ref, task in list(self.inflight.items()):
            if task.actor is not None:
                continue  # went with its actor
            try:
                ray.cancel(ref, force=True)
                if task.placement is not None:
                    remove_placement_group(task.placement)
            except Exception as exc:  # noqa: BLE001 - teardown sweeps what is left
                log.debug("cancel: %s", exc)
        self.inflight.clear()
        for st in self.stages.values():  # none runs now (nor is recorded: a relay reruns it)
            st.running = 0

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, st in self.stages.items():
            state = StageState.DONE if st.finished else StageState.FAILED if st.failed else \
                StageState.RUNNING if st.opened else StageState.WAITING
            out[name] = {"state": state, "total": st.total, "done": st.done,
                         "failed": st.failed, "running": st.running, "retried": st.retried,
                         "skipped": st.skipped,
                         "opened": st.opened_at, "finished": st.finished_at}
        return out

    def _save(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_save > 0.5:
            self._last_save = now
            self.rundir.update(stages=self.summary())


_REMOTES: dict[str, Any] = {}


def _remote(name: str):
    """One Ray remote function per task kind, exported once (not once per task)."""
    if name not in _REMOTES:
        import ray

        _REMOTES[name] = ray.remote(getattr(tasks, name))
    return _REMOTES[name]

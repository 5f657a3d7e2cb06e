"""`hpcray up`: inside the allocation, bring Ray up on every node, run the driver, tear down.

Runs as the batch script's main process (the job script `exec`s it), so the scheduler's
cancel and walltime-warning signals reach it directly. The parts: signals.py (why a run
stops early), launch.py (the plan, the agents, joining), nodewatch.py (nodes lost while
running), workload.py (services, stages), driver.py, shutdown.py (teardown).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcray import env as hpcray_env
from hpcray.bootstrap import jobs, launch
from hpcray.bootstrap.driver import DriverProcess
from hpcray.bootstrap.elastic import ElasticWatch
from hpcray.bootstrap.nodewatch import NodeWatch
from hpcray.bootstrap.plan import ClusterPlan
from hpcray.bootstrap.relay import Relay
from hpcray.bootstrap.resolved import load_resolved, tail
from hpcray.bootstrap.shutdown import Shutdown
from hpcray.bootstrap.signals import Stop, install_handlers, start_walltime_timer
from hpcray.bootstrap.worker import other_job
from hpcray.bootstrap.workload import Services, importable, run_stages
from hpcray.errors import HpcrayError
from hpcray.rundir import RunDir
from hpcray.state import JobPhase, RunState

__all__ = ["ClusterUp", "load_resolved", "main", "tail"]

log = logging.getLogger("hpcray.up")


class ClusterUp:
    def __init__(self, run: RunDir, env: dict[str, str] | None = None,
                 job: str = jobs.MAIN) -> None:
        self.run = run
        self.job = job  # main, or a relay's successor (r1, ...): run.json's jobs.<tag>
        self.env = dict(os.environ) if env is None else env
        self.workflow, self.site, self.request = load_resolved(run)
        self.stop = Stop()
        self.launched: list[subprocess.Popen] = []
        self.plan: ClusterPlan | None = None
        self.services = Services()
        self.driver = DriverProcess(run, self.workflow, self.request, self.stop)
        self.relay = Relay(run, self.workflow, job, self.stop)  # allocation.relay
        self.elastic: ElasticWatch | None = None  # worker jobs; `elastic:` grows and shrinks
        self.step: str | None = None  # names the step in the error text of its failure

    @property
    def launcher(self) -> str:
        return self.env.get(hpcray_env.LAUNCHER) or self.site.launcher

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        self.step = name
        yield
        self.step = None

    def _bring_up(self, t0: float) -> tuple[ClusterPlan, dict[str, Any]]:
        """Allocation -> plan -> agents -> head -> every node joined."""
        alloc = launch.allocation(self.workflow, self.site, self.request, self.env)
        self.plan = plan = launch.make_plan(self.run, self.workflow, self.site, self.request,
                                            self.env, alloc)
        plan.save(self.run)
        self.run.update(state=RunState.BOOTSTRAPPING, job_id=alloc.job_id,
                        cluster_id=plan.cluster_id, nodes_expected=len(plan.nodes),
                        node_names=[n.name for n in plan.nodes], nodes_joined=0,
                        bootstrap_host=os.uname().nodename, up_pid=os.getpid())
        self.run.update_job(self.job, job_id=alloc.job_id)
        log.info("allocation %s: %s", alloc.job_id,
                 ", ".join(f"{n.name} (cpus={n.cpus}, gpus={n.gpus})" for n in plan.nodes))
        launch.launch_agents(self.run, plan, self.launcher, self.env, self.launched,
                             self.workflow.allocation.container,
                             self.request.get("workflow_dir"), list(self.workflow.allocation.env))
        self.run.mark("launched")
        head = launch.wait_for_head(self.run, plan, self.stop, self.launched)
        self.run.mark("head_up", head.get("time"), head_address=head["address"])
        log.info("head up at %s", head["address"])
        ray_node_ids = launch.wait_for_nodes(
            self.run, plan, head, self.stop, self.workflow.ray.join_timeout,
            on_connected=lambda: self._prepare_services(head))
        self.run.mark("all_joined", state=RunState.RUNNING)
        self.run.update_job(self.job, state=JobPhase.JOINED)
        log.info("all %d node(s) joined in %.1fs", len(plan.nodes), time.time() - t0)
        NodeWatch(self.run, plan, self.stop, ray_node_ids).start()
        self.elastic = ElasticWatch(self.run, self.workflow, self.site, self.request, head,
                                    self.stop, t0)
        self.elastic.start()
        return plan, head

    def _prepare_services(self, head: dict[str, Any]) -> None:
        """Serve started while the other nodes join (bootstrap/workload.py)."""
        with self._step("services"):
            self.services.prepare(self.run, self.workflow, head, self.env,
                                  self.request.get("workflow_dir"))

    def _work(self, head: dict[str, Any]) -> None:
        """The services, then the stages: both before the driver."""
        paths = launch.code_paths(self.workflow, self.request)
        if self.workflow.services:
            with self._step("services"):
                importable(paths)
                self.services.start(self.run, self.workflow, head, self.env,
                                    self.request["workflow_dir"])
                # per job: a relay's gap ends when its next job's services answer
                self.run.update_job(self.job, services_ready=self.run.read().get(
                    "times", {}).get("services_ready"))
        if self.workflow.stages:
            with self._step("stages"):
                importable(paths)
                run_stages(self.run, self.workflow, Path(self.request["workflow_dir"]),
                           self.env, self.stop.event, self.launcher)

    def _end_state(self, driver_code: int | None) -> tuple[RunState, str | None, int]:
        """The run's state, error and exit code once the driver is done (or was stopped)."""
        if self.stop.is_head_lost:
            return RunState.FAILED, self.stop.reason, 1
        if self.stop.end_state is not None:
            return self.stop.end_state, None, 0
        if driver_code == 0 or driver_code is None:
            return RunState.COMPLETED, None, 0
        return RunState.FAILED, self.driver.failure(driver_code), 1

    def __call__(self) -> int:
        if not self.relay.take_over(self.env):  # a relay's successor with nothing to resume
            return 0
        install_handlers(self.stop)
        if not self.site.walltime_signal:
            allocation = self.workflow.allocation
            start_walltime_timer(self.stop, allocation.walltime, allocation.walltime_warning)
        t0 = time.time()
        self.run.mark("job_started", t0)
        self.relay.start(t0)  # from now on the walltime warning submits the successor
        state, error, error_type, code = RunState.FAILED, None, None, 1
        try:
            plan, head = self._bring_up(t0)
            self.driver.start_early(plan, head, self.env)
            self._work(head)
            driver_code = self.driver.run_to_end(plan, head, self.env)
            state, error, code = self._end_state(driver_code)
        except HpcrayError as exc:  # the text as the user reads it; its class in error_type
            error = f"{self.step}: {exc}" if self.step else str(exc)
            error_type = type(exc).__name__
            state = self.stop.end_state or RunState.FAILED
            log.error("%s", error)
        except Exception as exc:  # noqa: BLE001 - recorded in run.json, then re-raised as exit 1
            error = f"{type(exc).__name__}: {exc}"
            error_type = type(exc).__name__
            log.exception("hpcray up failed")
        finally:
            self.driver.discard()
            # Serve still starting (its thread): teardown leaves Serve to the node sweep
            # rather than race it; so does a lost head
            settled = not self.stop.is_head_lost and self.services.settled(timeout=60)
            self.relay.settle()  # a successor is submitted before the teardown, or not at all
            if self.elastic is not None:  # no worker job is submitted once the run ends
                self.elastic.close()
            Shutdown(self.run, self.stop, self.launched, self.workflow.ray.teardown_grace)(
                self.plan, self.services.manager if settled else None)
            try:
                jobs.release_queued(self.run)
            except Exception as exc:  # noqa: BLE001 - the run's end must still be recorded
                log.warning("queued worker jobs not cancelled: %s", exc)
            state = self.relay.record_end(state, error, error_type)  # finished, or relaying
        log.info("run %s: %s", self.run.path.name, state)
        return 0 if state == RunState.RELAYING else code  # handed over: this job did its part


def main(run_dir: str, job: str = jobs.MAIN) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s hpcray %(levelname)s %(message)s")
    run = RunDir(Path(run_dir).resolve())
    if job != jobs.MAIN and (code := other_job(run, job)) is not None:
        return code  # a worker job's, or a tag the run does not know
    try:
        return ClusterUp(run, job=job)()
    except HpcrayError as exc:
        log.error("%s", exc)
        run.mark("finished", state=RunState.FAILED, error=str(exc),
                 error_type=type(exc).__name__)
        return 1
    except Exception as exc:  # before the run's own handling began: still a failed run,
        # never one left `submitted` for a caller that waits on it
        log.exception("hpcray up failed before the cluster started")
        run.mark("finished", state=RunState.FAILED,
                 error=f"hpcray up failed before the cluster started: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                 error_type=type(exc).__name__)
        return 1

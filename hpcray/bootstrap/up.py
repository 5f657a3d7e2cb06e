"""`hpcray up`: inside the allocation, bring Ray up on every node, run the driver, tear down.

Runs as the batch script's main process (the job script `exec`s it), so the scheduler's
cancel and walltime-warning signals reach it directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from hpcray import env as hpcray_env
from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.errors import BootstrapError, HpcrayError
from hpcray.launchers import LaunchRequest, get_launcher
from hpcray.rundir import RunDir, read_json, write_json_atomic
from hpcray.runtime.auth import auth_env, create_token
from hpcray.runtime.placement import node_resource
from hpcray.runtime.teardown import stop_group, teardown
from hpcray.runtime.tempdir import short_id
from hpcray.schedulers import AllocationInfo, get_scheduler
from hpcray.services.http_access import TOKEN_FILE_ENV, HttpAccess
from hpcray.sites import SiteProfile
from hpcray.spec import Workflow

log = logging.getLogger("hpcray.up")

LOG_TAIL_LINES = 15


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written: the node's agent never started)"
    return "\n".join(text[-lines:]) or "(log is empty)"


def load_resolved(run: RunDir) -> tuple[Workflow, SiteProfile, dict[str, Any]]:
    data = read_json(run.resolved)
    if data is None:
        raise BootstrapError(f"{run.resolved} missing: this directory was not made by submit")
    return (Workflow.model_validate(data["workflow"]), SiteProfile.model_validate(data["site"]),
            data["request"])


class Stop:
    """Why the run is being stopped early (first reason wins)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()


class ClusterUp:
    def __init__(self, run: RunDir, env: dict[str, str] | None = None) -> None:
        self.run = run
        self.env = dict(os.environ) if env is None else env
        self.workflow, self.site, self.request = load_resolved(run)
        self.stop = Stop()
        self.launched: list[subprocess.Popen] = []
        self.driver: subprocess.Popen | None = None
        self.driver_tail: deque[bytes] = deque(maxlen=20)
        self.plan: ClusterPlan | None = None
        self.services = None
        self.ray_node_ids: dict[str, str] = {}  # node name -> Ray NodeID, set as nodes join

    # -- signals ---------------------------------------------------------------------------
    def _install_signals(self, timer: bool = True) -> None:
        def handler(signum, _frame):
            reason = "walltime" if signum == signal.SIGUSR2 else "cancelled"
            log.warning("received %s: stopping (%s)", signal.Signals(signum).name, reason)
            self.stop.set(reason)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, handler)
        if timer and not self.site.walltime_signal:
            # PBS Pro sends no warning: keep our own clock.
            delay = self.workflow.allocation.walltime - self.workflow.allocation.walltime_warning
            timer = threading.Timer(max(delay, 0), self.stop.set, args=("walltime",))
            timer.daemon = True
            timer.start()

    # -- allocation and plan ---------------------------------------------------------------
    def allocation(self) -> AllocationInfo:
        scheduler = get_scheduler(self.site.scheduler)
        alloc = scheduler.allocation_from_env(
            self.env, default_cpus=int(self.request["cpus_per_node"]),
            default_gpus=int(self.request["gpus_per_node"]),
            requested_nodes=self.workflow.allocation.nodes)
        if self.workflow.allocation.cpus_per_node:
            from hpcray.schedulers import NodeResources
            alloc.nodes = [NodeResources(n.name, self.workflow.allocation.cpus_per_node, n.gpus)
                           for n in alloc.nodes]
        return alloc

    def make_plan(self, alloc: AllocationInfo) -> ClusterPlan:
        ray = self.workflow.ray
        token = create_token(self.run.token)
        return ClusterPlan(
            cluster_id=f"hpcray-{alloc.scheduler}-{short_id(alloc.job_id)}-{os.getpid()}",
            job_id=alloc.job_id, scheduler=alloc.scheduler, gpu_vendor=self.site.gpu_vendor,
            nodes=[NodePlan(n.name, i, n.cpus, n.gpus) for i, n in enumerate(alloc.nodes)],
            token_path=str(token), temp_root=ray.temp_root,
            network_interface=self.site.network_interface,
            head_address_format=self.site.head_address, dashboard=ray.dashboard,
            head_timeout=ray.head_timeout, teardown_grace=ray.teardown_grace,
            port_base=ray.port_base,
            object_store_memory=ray.object_store_memory,
            spill_dir=ray.spill_dir or self.site.spill_dir, python=self.request["python"],
            up_host=socket.gethostname(), up_pid=os.getpid(),
            extra_env={"PYTHONPATH": os.pathsep.join(
                [*self.code_paths(), *filter(None, [self.env.get("PYTHONPATH")])])})

    def code_paths(self) -> list[str]:
        """The workflow's directory (and the driver's cwd): user modules named by
        `module:Class` or `module:function` import from there, in every Ray worker too."""
        base = Path(self.request["workflow_dir"])
        paths = [str(base)]
        if self.workflow.driver and self.workflow.driver.cwd:
            paths.append(str(base / os.path.expandvars(self.workflow.driver.cwd)))
        return paths

    # -- launching -------------------------------------------------------------------------
    def launch_agents(self, plan: ClusterPlan) -> None:
        name = self.env.get(hpcray_env.LAUNCHER) or self.site.launcher
        launcher = get_launcher(name)
        argv = (plan.python, "-m", "hpcray", "node", "--run-dir", str(self.run.path))
        req = LaunchRequest(hosts=tuple(n.name for n in plan.nodes), argv=argv,
                            gpus_per_node=max(n.gpus for n in plan.nodes),
                            cpus_per_node=max(n.cpus for n in plan.nodes))
        out = open(self.run.logs / "launch.log", "ab")  # noqa: SIM115 - shared by children
        per_process = launcher.per_process_env(req)
        commands = ([(launcher.command(req), extra) for extra in per_process]
                    if per_process is not None else [(launcher.command(req), {})])
        for cmd, extra in commands:
            log.info("launch: %s", " ".join(cmd))
            self.launched.append(subprocess.Popen(
                cmd, env={**self.env, **extra}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))
        out.close()

    def _launchers_dead(self) -> bool:
        return all(p.poll() is not None for p in self.launched)

    def _node_report(self, names: list[str]) -> str:
        parts = []
        for name in names:
            state = read_json(self.run.node_state_file(name), {})
            parts.append(f"--- {name} (agent state: {state.get('state', 'never started')}"
                         f"{', error: ' + state['error'] if state.get('error') else ''}); "
                         f"last lines of {self.run.node_log(name)}:\n"
                         f"{tail(self.run.node_log(name))}")
        return "\n".join(parts)

    def wait_for_head(self, plan: ClusterPlan) -> dict[str, Any]:
        deadline = time.monotonic() + plan.head_timeout
        while time.monotonic() < deadline:
            if self.stop.event.is_set():
                raise BootstrapError(f"stopped ({self.stop.reason}) before the head was up")
            head = read_json(self.run.head)
            if head:
                return head
            state = read_json(self.run.node_state_file(plan.head.name), {})
            if state.get("state") in ("failed", "stopped") or self._launchers_dead():
                raise BootstrapError(
                    f"the head node {plan.head.name} failed to start Ray\n"
                    f"{self._node_report([plan.head.name])}")
            time.sleep(0.2)
        raise BootstrapError(
            f"the head node {plan.head.name} did not start Ray within {plan.head_timeout:.0f}s "
            f"(ray.head_timeout)\n{self._node_report([plan.head.name])}")

    def wait_for_nodes(self, plan: ClusterPlan, head: dict[str, Any]) -> None:
        os.environ.update(auth_env(Path(plan.token_path)))  # Ray reads it at import
        import ray

        ray.init(address=head["address"], logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
        self._install_signals(timer=False)  # ray.init replaced our SIGTERM handler
        # stays connected: services are started and stopped from here; teardown disconnects
        expected = {node_resource(n.name): n.name for n in plan.nodes}
        joined: dict[str, float] = {}
        timeout = self.workflow.ray.join_timeout
        deadline = time.monotonic() + timeout
        while True:
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                for res in node.get("Resources", {}):
                    if res in expected and expected[res] not in joined:
                        name = expected[res]
                        joined[name] = time.time()
                        self.ray_node_ids[name] = node["NodeID"]
                        log.info("node %s joined (%d/%d)", name, len(joined), len(expected))
                        self.run.update(nodes={name: {"joined": joined[name]}},
                                        nodes_joined=len(joined))
            if len(joined) == len(expected):
                return
            missing = [n for n in expected.values() if n not in joined]
            failed = [n for n in missing if read_json(self.run.node_state_file(n), {})
                      .get("state") in ("failed", "stopped")]
            if failed:
                raise BootstrapError(
                    f"node(s) {', '.join(failed)} failed to join the Ray cluster\n"
                    f"{self._node_report(failed)}")
            if self.stop.event.is_set():
                raise BootstrapError(f"stopped ({self.stop.reason}) while waiting for "
                                     f"node(s) {', '.join(missing)}")
            if time.monotonic() > deadline:
                raise BootstrapError(
                    f"node(s) {', '.join(missing)} did not join within {timeout:.0f}s "
                    f"(ray.join_timeout); {len(joined)}/{len(expected)} joined\n"
                    f"{self._node_report(missing)}")
            time.sleep(0.5)

    # -- services --------------------------------------------------------------------------
    def start_services(self, head: dict[str, Any]) -> None:
        """Every service ready before the driver starts; a failure ends the run before it.
        Publishes endpoints.json and HPCRAY_SERVICE_<NAME>_URL for executable stages."""
        from hpcray.services.manager import ServiceError, ServiceManager

        for path in reversed(self.code_paths()):
            if path not in sys.path:
                sys.path.insert(0, path)
        self.services = ServiceManager(self.workflow.services, self.run,
                                       http=self.http_access(head))
        try:
            self.services.start()
        except (ServiceError, HpcrayError) as exc:
            raise BootstrapError(f"services: {exc}") from None
        endpoints = self.services.endpoints()
        write_json_atomic(self.run.path / "endpoints.json", endpoints)
        for name, entry in endpoints["services"].items():
            if "http" in entry:
                self.env[hpcray_env.service_url_var(name)] = entry["http"]
        if endpoints["openai"]:
            self.env[hpcray_env.OPENAI_BASE_URL] = endpoints["openai"]
        self.env[hpcray_env.ENDPOINTS] = str(self.run.path / "endpoints.json")
        self.run.mark("services_ready")

    def http_access(self, head: dict[str, Any]) -> HttpAccess | None:
        """Where the HTTP API listens and, with endpoints.token, the run's bearer token (a
        0600 file beside the Ray token; processes of the run are told its path, not it)."""
        endpoints = self.workflow.endpoints
        if not endpoints.http:
            return None
        token = token_file = None
        if endpoints.token:
            path = create_token(self.run.token.with_name("http-token"))
            token, token_file = path.read_text().strip(), str(path)
            self.env[TOKEN_FILE_ENV] = token_file
        access = HttpAccess.for_head(endpoints.listen, head["ip"], head["serve_http_port"],
                                     token, token_file)
        if endpoints.listen == "any":
            log.warning("HTTP API on every interface of the head node, port %s "
                        "(endpoints.listen: any); a bearer token is required",
                        head["serve_http_port"])
        return access

    # -- stages ----------------------------------------------------------------------------
    def run_stages(self) -> None:
        """Every stage to its end, after the services and before the driver."""
        from hpcray.stages import StageError, StageRunner

        for path in reversed(self.code_paths()):
            if path not in sys.path:
                sys.path.insert(0, path)
        runner = StageRunner(self.workflow.stages, self.run, Path(self.request["workflow_dir"]),
                             env={**self.env, hpcray_env.RUN_DIR: str(self.run.path)},
                             stop=self.stop.event,
                             launcher=self.env.get(hpcray_env.LAUNCHER) or self.site.launcher)
        try:
            runner.run()
        except StageError as exc:
            raise BootstrapError(f"stages: {exc}") from None

    # -- while running ---------------------------------------------------------------------
    def watch_nodes(self, plan: ClusterPlan, interval: float = 1.0) -> threading.Thread:
        """Report every node whose agent stops while the run is up. A lost worker is recorded
        (Ray retries its tasks elsewhere; the driver sees failures it cannot recover); losing
        the head loses the cluster, so the run stops as failed."""

        lost: set[str] = set()

        def mark_lost(node: NodePlan, reason: str) -> None:
            lost.add(node.name)
            log.error("node %s left the cluster: %s\n%s", node.name, reason,
                      tail(self.run.node_log(node.name), 5))
            self.run.update(nodes={node.name: {"lost": time.time(), "lost_reason": reason}},
                            nodes_lost=sorted(lost))
            if node.index == 0:
                self.stop.set(f"head node {node.name} lost")

        dead_in_ray: dict[str, str] = {}

        def poll_ray() -> None:
            """Apart from the watch: with the head gone, a call to Ray's control store
            blocks for a long time, and the head's own agent must still be seen stopping."""
            while not self.stop.event.wait(interval) and not self.run.stop_file.exists():
                dead_in_ray.update(self._dead_in_ray())

        def watch() -> None:
            while not self.stop.event.wait(interval) and not self.run.stop_file.exists():
                for node in plan.nodes:
                    if node.name in lost:
                        continue
                    state = read_json(self.run.node_state_file(node.name), {})
                    if state.get("state") in ("failed", "stopped"):
                        mark_lost(node, state.get("error") or state.get("reason")
                                  or "agent stopped")
                    elif node.name in dead_in_ray:  # killed outright: no agent left to say so
                        mark_lost(node, dead_in_ray[node.name])

        threading.Thread(target=poll_ray, name="hpcray-ray-nodes", daemon=True).start()
        thread = threading.Thread(target=watch, name="hpcray-node-watch", daemon=True)
        thread.start()
        return thread

    def _dead_in_ray(self) -> dict[str, str]:
        """Nodes of this run that Ray's control store has marked dead, with Ray's reason."""
        if not self.ray_node_ids:
            return {}
        import ray

        try:
            table = {n["NodeID"]: n for n in ray.nodes()}
        except Exception as exc:  # noqa: BLE001 - the head itself may be going; its agent says
            log.debug("cannot read Ray's node table: %s", exc)
            return {}
        dead = {}
        for name, node_id in self.ray_node_ids.items():
            entry = table.get(node_id)
            if entry is not None and not entry.get("Alive", True):
                why = entry.get("DeathReasonMessage") or "no reason given"
                dead[name] = f"Ray marked the node dead ({why})"
        return dead

    # -- driver ----------------------------------------------------------------------------
    def driver_command(self) -> list[str] | None:
        driver = self.workflow.driver
        if driver is None:
            return None
        if driver.command is not None:
            return list(driver.command)
        args_path = self.run.path / "driver-args.json"
        args_path.write_text(json.dumps(driver.args))
        return [self.request["python"], "-m", "hpcray.bootstrap.call", driver.function or "",
                str(args_path)]

    def run_driver(self, plan: ClusterPlan, head: dict[str, Any]) -> int | None:
        cmd = self.driver_command()
        if cmd is None and self.workflow.stages:
            return None  # the stages were the workflow: done
        if cmd is None:
            log.info("no driver: the cluster stays up until cancel or the walltime; connect "
                     "with hpcray.connect(%r)", str(self.run.path))
            self.stop.event.wait()
            return None
        driver = self.workflow.driver
        assert driver is not None
        cwd = str(Path(self.request["workflow_dir"]) / os.path.expandvars(driver.cwd or "."))
        env = {**self.env, **auth_env(Path(plan.token_path)),
               hpcray_env.RAY_ADDRESS: head["address"], hpcray_env.RUN_DIR: str(self.run.path),
               "PYTHONUNBUFFERED": "1"}
        env.pop(hpcray_env.LAUNCHER, None)
        self.run.mark("driver_start")
        log.info("driver: %s (cwd %s)", " ".join(cmd), cwd)
        self.driver = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.run.update(driver_pid=self.driver.pid)
        copier = threading.Thread(target=self._copy_output, args=(self.driver,), daemon=True)
        copier.start()
        while self.driver.poll() is None:
            if self.stop.event.wait(0.2):
                log.warning("stopping the driver (%s)", self.stop.reason)
                stop_group(self.driver, self.workflow.ray.teardown_grace)
                break
        code = self.driver.wait()
        copier.join(timeout=5)
        self.run.mark("driver_end", driver_exit_code=code)
        log.info("driver exited with code %d", code)
        return code

    def _driver_failure(self, code: int) -> str:
        """How the driver ended, and the last line of its output (the exception, usually)."""
        what = f"driver killed by {signal.Signals(-code).name}" if code < 0 \
            else f"driver exited with code {code}"
        tail = b"".join(self.driver_tail).decode(errors="replace")
        last = [line for line in tail.splitlines() if line.strip()]
        return f"{what}: {last[-1].strip()[:300]}" if last else what

    def _copy_output(self, proc: subprocess.Popen) -> None:
        """driver.log and our stdout get every line; the last ones are kept here too, for the
        error when the driver fails (the log may be on a disk that just filled up)."""
        log_file = open(self.run.logs / "driver.log", "ab")  # noqa: SIM115 - closed below
        try:
            for line in iter(proc.stdout.readline, b""):
                self.driver_tail.append(line)
                if log_file is not None:
                    try:
                        log_file.write(line)
                        log_file.flush()
                    except OSError as exc:
                        log.error("driver.log: %s; the driver's output goes on to job.out", exc)
                        log_file = None
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        finally:
            if log_file is not None:
                with contextlib.suppress(OSError):
                    log_file.close()

    # -- teardown --------------------------------------------------------------------------
    def teardown(self) -> None:
        """Ask every agent to stop (stop file), so each tears down its own node gracefully and
        the launcher exits by itself; signal the launcher only if that does not happen.
        Nothing here may stop it half way: a record that cannot be written is logged."""
        self._record("teardown_start")
        grace = self.workflow.ray.teardown_grace
        head_lost = bool(self.stop.reason and self.stop.reason.startswith("head node"))
        if self.services is not None and not head_lost:  # with the head gone, Serve is too
            # after a lost node Serve would wait out its graceful timeouts (20-30 s) on actors
            # that will never answer; the sweep below stops what is left on every node anyway
            lost = bool(read_json(self.run.run_json, {}).get("nodes_lost"))
            self.services.stop(shutdown=not lost, wait=not lost)
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        try:
            self.run.write_with_reserve(lambda: self.run.stop_file.write_text(
                f"{self.stop.reason or 'run finished'}\n"))
        except OSError as exc:  # the agents are signalled below instead
            log.error("cannot write the stop file: %s", exc)
        deadline = time.monotonic() + grace + 15
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            for proc in self.launched:
                if sig is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            if sig is None and self._survivors_stopped_after_a_loss(deadline):
                # the launcher still waits for the lost node's agent, which will never
                # report: nothing is left to wait for
                deadline = time.monotonic() + 5
                continue
            for proc in self.launched:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if all(p.poll() is not None for p in self.launched):
                break
            deadline = time.monotonic() + 5
        if self.plan:
            killed = teardown(self.plan.cluster_id, grace=grace)
            if killed:
                log.info("swept %d leftover process(es) of this job on this host", len(killed))
        self._record("teardown_end")

    def _survivors_stopped_after_a_loss(self, deadline: float) -> bool:
        """With a node lost: whether every other node's agent reported stopping (polled up
        to `deadline`); False at once when no node was lost."""
        lost = set(read_json(self.run.run_json, {}).get("nodes_lost") or [])
        if not lost or self.plan is None:
            return False
        others = [n.name for n in self.plan.nodes if n.name not in lost]
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in self.launched):
                return False
            if all(read_json(self.run.node_state_file(n), {}).get("state") in
                   ("stopped", "failed") for n in others):
                return True
            time.sleep(0.2)
        return False

    def _record(self, event: str, **fields: Any) -> None:
        try:
            self.run.mark(event, **fields)
        except OSError as exc:
            log.error("cannot record %s in run.json: %s", event, exc)

    # -- main ------------------------------------------------------------------------------
    def __call__(self) -> int:
        self._install_signals()
        t0 = time.time()
        self.run.mark("job_started", t0)
        state, error, code = "failed", None, 1
        try:
            alloc = self.allocation()
            self.plan = plan = self.make_plan(alloc)
            plan.save(self.run)
            self.run.update(state="bootstrapping", job_id=alloc.job_id,
                            cluster_id=plan.cluster_id, nodes_expected=len(plan.nodes),
                            node_names=[n.name for n in plan.nodes], nodes_joined=0,
                            bootstrap_host=os.uname().nodename, up_pid=os.getpid())
            log.info("allocation %s: %s", alloc.job_id,
                     ", ".join(f"{n.name} (cpus={n.cpus}, gpus={n.gpus})" for n in plan.nodes))
            self.launch_agents(plan)
            self.run.mark("launched")
            head = self.wait_for_head(plan)
            self.run.mark("head_up", head.get("time"), head_address=head["address"])
            log.info("head up at %s", head["address"])
            self.wait_for_nodes(plan, head)
            self.run.mark("all_joined", state="running")
            log.info("all %d node(s) joined in %.1fs", len(plan.nodes), time.time() - t0)
            self.watch_nodes(plan)
            if self.workflow.services:
                self.start_services(head)
            if self.workflow.stages:
                self.run_stages()
            driver_code = self.run_driver(plan, head)
            if self.stop.reason and self.stop.reason.startswith("head node"):
                state, error = "failed", self.stop.reason
            elif self.stop.reason:
                state, code = self.stop.reason, 0
            elif driver_code == 0 or driver_code is None:
                state, code = "completed", 0
            else:
                state, error = "failed", self._driver_failure(driver_code)
        except BootstrapError as exc:
            error = str(exc)
            state = self.stop.reason or "failed"
            log.error("%s", exc)
        except Exception as exc:  # noqa: BLE001 - recorded in run.json, then re-raised as exit 1
            error = f"{type(exc).__name__}: {exc}"
            log.exception("hpcray up failed")
        finally:
            self.teardown()
            self._record("finished", state=state, error=error)
        log.info("run %s: %s", self.run.path.name, state)
        return code


def main(run_dir: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s hpcray %(levelname)s %(message)s")
    run = RunDir(Path(run_dir).resolve())
    try:
        return ClusterUp(run)()
    except BootstrapError as exc:
        log.error("%s", exc)
        run.mark("finished", state="failed", error=str(exc))
        return 1

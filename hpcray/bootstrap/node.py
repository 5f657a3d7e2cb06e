"""The node agent: one per node, started by the launcher. Runs `ray start --block` for this
node with job-private ports, temp dir and token, and tears down only this job's processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from hpcray import env as hpcray_env
from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.errors import BootstrapError
from hpcray.metrics.prometheus import MetricsServer
from hpcray.metrics.usage import SAMPLE_S, node_usage
from hpcray.rundir import RunDir, read_json, write_json_atomic
from hpcray.runtime import gpus
from hpcray.runtime.auth import auth_env
from hpcray.runtime.memory import OBJECT_STORE_SHARE, cgroup_limit, job_memory
from hpcray.runtime.network import NODE_IP_ENV, host_port, node_address
from hpcray.runtime.placement import NODE_LABEL, node_label, node_resource
from hpcray.runtime.ports import PortBlock, claim_block, release_block
from hpcray.runtime.teardown import MARKER, keep_ray_logs, marker_value, ray_logs_dir, teardown
from hpcray.runtime.tempdir import temp_dir_for
from hpcray.schedulers import get_scheduler
from hpcray.state import NodeState

log = logging.getLogger("hpcray.node")

NODE_NAME_VARS = (hpcray_env.NODE_NAME, "SLURMD_NODENAME", "FLUX_NODE_NAME")
MIN_OBJECT_STORE = 78_643_200
# how soon an agent sees the stop file: often beside `hpcray up` (one host), less often on
# the other nodes, where each poll is a stat on the shared filesystem's metadata server
STOP_POLL_S = 0.1
STOP_POLL_REMOTE_S = 0.5


def detect_node_name(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    for var in NODE_NAME_VARS:
        if env.get(var):
            return env[var]
    return socket.gethostname()


def object_store_bytes(plan: ClusterPlan, nodes_on_host: int = 1,
                       job_limit: int | None = None) -> int | None:
    """Fit the object store into /dev/shm (often small on HPC nodes) and into the memory the
    job holds (`job_limit`, the scheduler's figure, and the cgroup's), not the node's."""
    if plan.object_store_memory:
        return plan.object_store_memory
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return None
    memory = job_memory(job_limit, cgroup_limit())
    share = int(min(OBJECT_STORE_SHARE * memory, 0.8 * shm_free) / nodes_on_host)
    return share if share >= MIN_OBJECT_STORE else None


def ray_start_argv(plan: ClusterPlan, me: NodePlan, *, ip: str, block: PortBlock,
                   temp_dir: str, num_gpus: int, head_address: str | None,
                   object_store: int | None) -> list[str]:
    is_head = head_address is None
    argv = [plan.python, "-m", "ray.scripts.scripts", "start", "--block",
            f"--temp-dir={temp_dir}", f"--node-ip-address={ip}",
            f"--num-cpus={me.cpus}", f"--num-gpus={num_gpus}",
            f"--resources={json.dumps({node_resource(me.name): 1})}",
            f"--labels={NODE_LABEL}={node_label(me.name)}",
            "--disable-usage-stats", *block.ray_flags(head=is_head)]
    if is_head:
        argv.append(f"--include-dashboard={'true' if plan.dashboard else 'false'}")
        if plan.dashboard:
            argv.append(f"--dashboard-host={ip}")
    if object_store:
        argv.append(f"--object-store-memory={object_store}")
    if plan.spill_dir:
        argv.append(f"--object-spilling-directory={os.path.expandvars(plan.spill_dir)}")
    argv += ["--head"] if head_address is None else [f"--address={head_address}"]
    return argv


def wait_for_port(ip: str, port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BootstrapError(f"ray start exited with code {proc.returncode} before the head "
                                 "was reachable")
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise BootstrapError(f"head GCS port {ip}:{port} not reachable after {timeout:.0f}s")


def wait_for_head(run: RunDir, timeout: float, should_stop) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if should_stop():
            return None
        head = read_json(run.head)
        if head:
            return head
        time.sleep(0.2)
    raise BootstrapError(f"no head address in {run.head} after {timeout:.0f}s")


class NodeAgent:
    def __init__(self, run: RunDir, node_name: str | None = None, job: str = "main") -> None:
        self.run = run
        self.plan = ClusterPlan.load(run, job)
        # a worker job's nodes also stop when that job is released (jobs/<tag>/stop)
        self.stop_files = [run.stop_file] + (
            [] if job == "main" else [run.jobs_dir / job / "stop"])
        name = node_name or detect_node_name()
        me = self.plan.node(name)
        if me is None:
            raise BootstrapError(
                f"host {name!r} is not in this job's node list "
                f"({', '.join(n.name for n in self.plan.nodes)})")
        self.me = me
        self.is_head = self.plan.is_head(me)
        self.stop = threading.Event()
        self.stop_reason = ""
        self.proc: subprocess.Popen | None = None
        self.block: PortBlock | None = None

    def _state(self, state: NodeState, **fields) -> None:
        self._update(state=state, **fields)

    def _update(self, fresh: bool = False, **fields) -> None:
        path = self.run.node_state_file(self.me.name)
        data = {} if fresh else read_json(path, {})
        data.update(**fields)
        if "state" in fields:
            data.setdefault("times", {})[fields["state"]] = time.time()
        write_json_atomic(path, data)

    def should_stop(self) -> bool:
        """A signal, the run's stop file, or (same host) the death of `hpcray up`."""
        if self.stop.is_set():
            return True
        if stop_file := next((f for f in self.stop_files if f.exists()), None):
            self.stop_reason = "stop requested: " + stop_file.read_text().strip()
            self.stop.set()
        elif (self.plan.up_pid and self.plan.up_host == socket.gethostname()
              and not psutil.pid_exists(self.plan.up_pid)):
            self.stop_reason = "hpcray up is gone"
            self.stop.set()
        return self.stop.is_set()

    def _on_signal(self, signum, _frame) -> None:
        self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def run_forever(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, self._on_signal)
        if self.plan.joins:  # a worker job's walltime warning is its `hpcray up`'s to act on:
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # it drains, then stops us
        # a fresh state file: a host an ended worker job had may come back in a later one
        self._update(fresh=True, state=NodeState.STARTED, host=socket.gethostname(),
                     pid=os.getpid(), role="head" if self.is_head else "worker")
        temp_dir = None
        code = 1
        try:
            temp_dir = temp_dir_for(self.plan.temp_root, self.plan.job_id, self.me.index)
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            code = self._start_and_wait(temp_dir)
        except BootstrapError as exc:
            log.error("%s", exc)
            self.stop_reason = "failed"
            self._state(NodeState.FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported in the node's state and log
            log.exception("node agent failed")
            self.stop_reason = "failed"
            self._state(NodeState.FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            roots = [self.proc.pid] if self.proc else []
            killed = teardown(marker_value(self.plan.cluster_id, self.me.name), roots,
                              grace=self.plan.teardown_grace)
            if self.block:
                release_block(self.block)
            if temp_dir:
                self._keep_ray_logs(temp_dir)
            if temp_dir and code == 0:
                shutil.rmtree(temp_dir, ignore_errors=True)
            self._state(NodeState.STOPPED, exit_code=code,
                        reason=self.stop_reason or "ray exited", killed=len(killed))
            log.info("stopped (%s); %d process(es) of this job terminated",
                     self.stop_reason or "ray exited", len(killed))
        return code

    def _keep_ray_logs(self, temp_dir: str) -> None:
        """Ray's session logs of this node into the run directory, before the temp dir goes
        (`hpcray logs RUN --ray | --service NAME`): those of this job's `ray start`, if it
        began; a failure is only logged."""
        began = read_json(self.run.node_state_file(self.me.name), {}).get(
            "times", {}).get(NodeState.RAY_STARTING)
        if began is None:
            return
        try:
            keep_ray_logs(temp_dir, ray_logs_dir(self.run.logs, self.me.name),
                          secrets_dir=self.run.token.parent, since=began)
        except Exception:  # noqa: BLE001 - the node's teardown must reach STOPPED
            log.exception("Ray's session logs not kept")

    def _start_and_wait(self, temp_dir: str) -> int:
        plan, me = self.plan, self.me
        env = dict(os.environ)
        env.update(auth_env(Path(plan.token_path)))
        env.update(plan.extra_env)
        env[MARKER] = marker_value(plan.cluster_id, me.name)
        env[hpcray_env.RAY_USAGE_STATS] = "0"
        # the job's temporary files (engines' IPC sockets, compiler caches, multiprocessing's
        # AF_UNIX sockets) in its own short temp dir, removed with it. A site's per-job TMPDIR
        # is replaced: ALCF's is long enough that those socket paths pass the 107-byte limit
        # ("AF_UNIX path too long"); ALCF's Ray recipe sets TMPDIR and RAY_TMPDIR too.
        if env.get(hpcray_env.TMPDIR) not in (None, temp_dir):
            log.info("TMPDIR %s of the job replaced by the node's %s", env[hpcray_env.TMPDIR],
                     temp_dir)
        env[hpcray_env.TMPDIR] = temp_dir
        env[hpcray_env.RAY_TMPDIR] = temp_dir
        # hpcray drains services itself before teardown; Ray's own 30 s drain only delays it.
        env.setdefault(hpcray_env.RAY_DRAIN_TIMEOUT, "0")
        translated = gpus.translate(plan.gpu_vendor, env, me.gpus)
        for key, value in translated.changes.items():
            if env.get(key) not in (None, value):
                log.info("%s=%s of the job replaced by %s", key, env[key], value)
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        num_gpus = gpus.node_gpu_count(me.gpus, translated.visible)
        if plan.gpu_vendor == "intel" and num_gpus and (why := gpus.intel_task_isolation()):
            log.warning("%s", why)
        if num_gpus != me.gpus:
            log.warning("allocation lists %d GPU(s) on %s but %d are visible; using %d",
                        me.gpus, me.name, translated.visible, num_gpus)
        ip = node_address(plan.network_interface, plan.head_address_format, socket.gethostname(),
                          plan.address_source)
        env[NODE_IP_ENV] = ip  # replicas bind their direct sockets here, not on all interfaces
        env[hpcray_env.RUN_DIR] = str(self.run.path)  # replicas write their request rates there
        self.block = claim_block(plan.cluster_id, me.index, plan.port_base)
        env[hpcray_env.PORT_BLOCK] = str(self.block.base)  # program services' ports
        env.update(self.block.ray_port_variables())  # Ray's metric exporters, job-private
        head_address = None
        if not self.is_head:
            head = wait_for_head(self.run, plan.head_timeout, self.should_stop)
            if head is None:
                return 0
            head_address = head["address"]
        # Emulated local nodes share this host's memory; real nodes have their own.
        local_nodes = len(plan.nodes) if plan.scheduler == "local" else 1
        argv = ray_start_argv(plan, me, ip=ip, block=self.block, temp_dir=temp_dir,
                              num_gpus=num_gpus, head_address=head_address,
                              object_store=object_store_bytes(
                                  plan, local_nodes,
                                  get_scheduler(plan.scheduler).memory_from_env(os.environ)))
        log.info("starting Ray %s on %s: cpus=%d gpus=%d ip=%s ports=%d-%d temp=%s",
                 "head" if self.is_head else "worker", me.name, me.cpus, num_gpus, ip,
                 self.block.base, self.block.max_worker_port, temp_dir)
        sys.stdout.flush()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=sys.stdout, stderr=sys.stderr,
                                     start_new_session=True)
        self._state(NodeState.RAY_STARTING, ray_pid=self.proc.pid, ip=ip,
                    port_base=self.block.base, temp_dir=temp_dir, cpus=me.cpus, gpus=num_gpus)
        if self.is_head:
            gcs = self.block.port("--port")
            wait_for_port(ip, gcs, self.proc, plan.head_timeout)
            metrics = start_metrics(self.run, ip, self.block)  # lives as long as this agent
            write_json_atomic(self.run.head, {
                "address": host_port(ip, gcs), "ip": ip, "gcs_port": gcs, "node": me.name,
                "client_port": self.block.port("--ray-client-server-port"),
                "serve_http_port": self.block.serve_http_port,
                "dashboard_port": self.block.port("--dashboard-port") if plan.dashboard else None,
                "metrics_url": metrics.url if metrics else None,
                "time": time.time()})
        self._state(NodeState.RAY_STARTED)
        sampled = 0.0
        while not self.should_stop():
            if self.proc.poll() is not None:
                if self.plan.joins and (self.run.jobs_dir / self.plan.job_tag / "drain").exists():
                    self.stop_reason = "stop requested: drained"  # its raylet left, idle
                    log.info("Ray left the cluster once drained")
                    return 0
                log.error("ray start exited with code %d", self.proc.returncode)
                return self.proc.returncode or 1
            if time.monotonic() - sampled >= SAMPLE_S:  # for `hpcray status`
                sampled = time.monotonic()
                try:
                    self._update(usage=node_usage())
                except OSError as exc:  # a full disk must not take the node down
                    log.warning("cannot record node usage: %s", exc)
            self.stop.wait(STOP_POLL_S if self.plan.up_host == socket.gethostname()
                           else STOP_POLL_REMOTE_S)
        return 0


def start_metrics(run: RunDir, ip: str, block: PortBlock) -> MetricsServer | None:
    """The run's Prometheus endpoint on the head (docs/metrics.md), bound to the node's
    address; with `endpoints.token` it wants the run's HTTP bearer token. A port that cannot
    be bound costs the run its metrics, not its life."""
    endpoints = (read_json(run.resolved, {}) or {}).get("workflow", {}).get("endpoints") or {}
    try:
        return MetricsServer(run.path, ip, block.metrics_port,
                             ray_metrics_offset=block.ray_metrics_port - block.base,
                             token_file=run.token.with_name("http-token"),
                             token_required=bool(endpoints.get("token"))).start()
    except OSError as exc:
        log.warning("no metrics endpoint on %s:%d: %s", ip, block.metrics_port, exc)
        return None


def main(run_dir: str, node_name: str | None = None, job: str = "main") -> int:
    run = RunDir(Path(run_dir))
    name = node_name or detect_node_name()
    plan_node = name
    try:
        agent = NodeAgent(run, name, job)
        plan_node = agent.me.name
    except (BootstrapError, FileNotFoundError) as exc:
        print(f"hpcray node: {exc}", file=sys.stderr)
        return 2
    log_path = run.node_log(plan_node)
    # The agent writes to its own node log; the launcher's output stays small.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {plan_node} %(levelname)s %(message)s")
    return agent.run_forever()

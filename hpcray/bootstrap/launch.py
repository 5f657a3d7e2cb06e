"""Bringing the cluster up: the allocation, the plan, one node agent per node through the
site's launcher, then waiting for the head and for every node to join Ray."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcray import env as hpcray_env
from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.bootstrap.resolved import tail
from hpcray.bootstrap.signals import Stop, install_handlers
from hpcray.errors import BootstrapError
from hpcray.launchers import LaunchRequest, get_launcher
from hpcray.rundir import RunDir, read_json
from hpcray.runtime.auth import auth_env, create_token
from hpcray.runtime.containers import GPU_VARS, container_argv
from hpcray.runtime.placement import node_resource
from hpcray.runtime.ports import CLAIM_DIR
from hpcray.runtime.tempdir import short_id
from hpcray.schedulers import AllocationInfo, NodeResources, get_scheduler
from hpcray.sites import SiteProfile
from hpcray.spec import Workflow
from hpcray.spec.containers import ContainerSpec
from hpcray.state import NODE_ENDED

log = logging.getLogger("hpcray.up")


def allocation(workflow: Workflow, site: SiteProfile, request: dict[str, Any],
               env: dict[str, str]) -> AllocationInfo:
    """The nodes the scheduler gave this job, read from the job's environment."""
    scheduler = get_scheduler(site.scheduler)
    alloc = scheduler.allocation_from_env(
        env, default_cpus=int(request["cpus_per_node"]),
        default_gpus=int(request["gpus_per_node"]),
        requested_nodes=workflow.allocation.nodes, exclusive=bool(request.get("exclusive")))
    if workflow.allocation.cpus_per_node:
        alloc.nodes = [NodeResources(n.name, workflow.allocation.cpus_per_node, n.gpus)
                       for n in alloc.nodes]
    return alloc


def code_paths(workflow: Workflow, request: dict[str, Any]) -> list[str]:
    """The workflow's directory (and the driver's cwd): user modules named by
    `module:Class` or `module:function` import from there, in every Ray worker too."""
    base = Path(request["workflow_dir"])
    paths = [str(base)]
    if workflow.driver and workflow.driver.cwd:
        paths.append(str(base / os.path.expandvars(workflow.driver.cwd)))
    return paths


def make_plan(run: RunDir, workflow: Workflow, site: SiteProfile, request: dict[str, Any],
              env: dict[str, str], alloc: AllocationInfo, job: str = "main",
              first_index: int = 0) -> ClusterPlan:
    """Everything a node agent needs to start its part of the cluster (saved as plan.json).
    A worker job's plan (`job` w1, ...) joins the run's cluster: the run's token, node
    indices from `first_index` on (they pick the node's port block and temp dir), no head."""
    ray = workflow.ray
    token = create_token(run.token) if job == "main" or not run.token.exists() else run.token
    return ClusterPlan(
        cluster_id=f"hpcray-{alloc.scheduler}-{short_id(alloc.job_id)}-{os.getpid()}",
        job_id=alloc.job_id, scheduler=alloc.scheduler, gpu_vendor=site.gpu_vendor,
        nodes=[NodePlan(n.name, first_index + i, n.cpus, n.gpus)
               for i, n in enumerate(alloc.nodes)],
        token_path=str(token), temp_root=ray.temp_root,
        network_interface=site.network_interface,
        head_address_format=site.head_address, address_source=site.address_from,
        dashboard=ray.dashboard,
        head_timeout=ray.head_timeout, teardown_grace=ray.teardown_grace,
        port_base=ray.port_base,
        object_store_memory=ray.object_store_memory,
        spill_dir=ray.spill_dir or site.spill_dir,
        python=request.get("agent_python") or request["python"],
        up_host=socket.gethostname(), up_pid=os.getpid(),
        extra_env={"PYTHONPATH": os.pathsep.join(
            [*code_paths(workflow, request), *filter(None, [env.get("PYTHONPATH")])])},
        job_tag=job, joins=job != "main")


def agent_argv(run_dir: str, python: str, launcher_name: str,
               container: ContainerSpec | None = None,
               workflow_dir: str | None = None, exported: Sequence[str] = (),
               job: str = "main") -> tuple[str, ...]:
    """What the launcher starts on each node: `hpcray node`, or, with allocation.container,
    that in the image (plan.python is then the image's), so Ray and all it starts run there.
    The run and workflow directories and the host's port-claim directory (jobs sharing a
    node claim their port blocks there) are bound; the node's name, rank and GPU
    visibility, which only the launcher's step knows, the job's temp dir and the variables
    the workflow exports (`exported`: allocation.env's names) pass through by name."""
    argv = (python, "-m", "hpcray", "node", "--run-dir", run_dir,
            *(() if job == "main" else ("--job", job)))
    if container is None:
        return argv
    node_vars = [v for v in (hpcray_env.NODE_NAME, get_launcher(launcher_name).node_name_env,
                             "SLURMD_NODENAME", "FLUX_NODE_NAME") if v]
    inherit = dict.fromkeys([*node_vars, hpcray_env.RANK, hpcray_env.LOCAL_RANK,
                             hpcray_env.NRANKS, *GPU_VARS, hpcray_env.PORT_CLAIMS,
                             hpcray_env.TMPDIR, *exported])
    binds = [run_dir, *([workflow_dir] if workflow_dir else []), str(CLAIM_DIR)]
    return tuple(container_argv(container, argv, binds=binds, env={}, workdir=run_dir,
                                inherit=list(inherit)))


def launch_agents(run: RunDir, plan: ClusterPlan, launcher_name: str, env: dict[str, str],
                  launched: list[subprocess.Popen], container: ContainerSpec | None = None,
                  workflow_dir: str | None = None, exported: Sequence[str] = ()) -> None:
    """One `hpcray node` per node, each in its own session (teardown signals the group).
    Appends each to `launched` as it starts, so teardown finds those started before a failure."""
    launcher = get_launcher(launcher_name)
    argv = agent_argv(str(run.path), plan.python, launcher_name, container, workflow_dir,
                      exported, plan.job_tag)
    req = LaunchRequest(hosts=tuple(n.name for n in plan.nodes), argv=argv,
                        gpus_per_node=max(n.gpus for n in plan.nodes),
                        cpus_per_node=max(n.cpus for n in plan.nodes))
    out = open(run.logs / "launch.log", "ab")  # noqa: SIM115 - shared by children
    per_process = launcher.per_process_env(req)
    commands = ([(launcher.command(req), extra) for extra in per_process]
                if per_process is not None else [(launcher.command(req), {})])
    for cmd, extra in commands:
        log.info("launch: %s", " ".join(cmd))
        launched.append(subprocess.Popen(
            cmd, env={**env, **extra}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True))
    out.close()


def agent_ended(run: RunDir, node: str) -> bool:
    return read_json(run.node_state_file(node), {}).get("state") in NODE_ENDED


def node_report(run: RunDir, names: list[str]) -> str:
    """Each node's agent state and last log lines: what a failed start shows the user."""
    parts = []
    for name in names:
        state = read_json(run.node_state_file(name), {})
        parts.append(f"--- {name} (agent state: {state.get('state', 'never started')}"
                     f"{', error: ' + state['error'] if state.get('error') else ''}); "
                     f"last lines of {run.node_log(name)}:\n"
                     f"{tail(run.node_log(name))}")
    return "\n".join(parts)


def wait_for_head(run: RunDir, plan: ClusterPlan, stop: Stop,
                  launched: list[subprocess.Popen]) -> dict[str, Any]:
    """head.json, written by the head's agent once Ray's control store answers."""
    deadline = time.monotonic() + plan.head_timeout
    while time.monotonic() < deadline:
        if stop.event.is_set():
            raise BootstrapError(f"stopped ({stop.reason}) before the head was up")
        head = read_json(run.head)
        if head:
            return head
        if agent_ended(run, plan.head.name) or all(p.poll() is not None for p in launched):
            raise BootstrapError(
                f"the head node {plan.head.name} failed to start Ray\n"
                f"{node_report(run, [plan.head.name])}")
        time.sleep(0.2)
    raise BootstrapError(
        f"the head node {plan.head.name} did not start Ray within {plan.head_timeout:.0f}s "
        f"(ray.head_timeout)\n{node_report(run, [plan.head.name])}")


def wait_for_nodes(run: RunDir, plan: ClusterPlan, head: dict[str, Any], stop: Stop,
                   join_timeout: float,
                   on_connected: Callable[[], None] | None = None) -> dict[str, str]:
    """Connect to the cluster (and stay connected: services are started and stopped from here;
    teardown disconnects) and wait until every node has joined. Returns each node's Ray
    NodeID, by node name. `on_connected` runs once connected, before the nodes are awaited
    (what needs only the head starts while the others join)."""
    os.environ.update(auth_env(Path(plan.token_path)))  # Ray reads it at import
    import ray

    ray.init(address=head["address"], logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)
    install_handlers(stop)  # ray.init replaced our SIGTERM handler
    if on_connected is not None:
        on_connected()
    expected = {node_resource(n.name): n.name for n in plan.nodes}
    joined: dict[str, float] = {}
    ray_node_ids: dict[str, str] = {}
    deadline = time.monotonic() + join_timeout
    while True:
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            for res in node.get("Resources", {}):
                if res in expected and expected[res] not in joined:
                    name = expected[res]
                    joined[name] = time.time()
                    ray_node_ids[name] = node["NodeID"]
                    log.info("node %s joined (%d/%d)", name, len(joined), len(expected))
                    run.update(nodes={name: {"joined": joined[name]}}, nodes_joined=len(joined))
        if len(joined) == len(expected):
            return ray_node_ids
        missing = [n for n in expected.values() if n not in joined]
        failed = [n for n in missing if agent_ended(run, n)]
        if failed:
            raise BootstrapError(
                f"node(s) {', '.join(failed)} failed to join the Ray cluster\n"
                f"{node_report(run, failed)}")
        if stop.event.is_set():
            raise BootstrapError(f"stopped ({stop.reason}) while waiting for "
                                 f"node(s) {', '.join(missing)}")
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"node(s) {', '.join(missing)} did not join within {join_timeout:.0f}s "
                f"(ray.join_timeout); {len(joined)}/{len(expected)} joined\n"
                f"{node_report(run, missing)}")
        time.sleep(0.2)

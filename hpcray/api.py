"""The Python API behind every CLI command: script, submit, status, cancel, logs, wait."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hpcray import env
from hpcray.bootstrap.elastic import request_release
from hpcray.bootstrap.jobs import MAIN as MAIN_JOB
from hpcray.bootstrap.jobs import end_if_gone, release_queued, submit_job
from hpcray.bootstrap.jobs import jobs as run_jobs
from hpcray.bootstrap.launch import agent_argv
from hpcray.bootstrap.output import OutputLine, classify
from hpcray.bootstrap.relay import chain as relay_chain
from hpcray.bootstrap.relay import pending_successors
from hpcray.bootstrap.resolved import load_resolved
from hpcray.errors import ResourceError, RunStateError, SchedulerError, SpecError
from hpcray.metrics.prometheus import collect, service_summary
from hpcray.rundir import DEFAULT_RUN_ROOT, RunDir, find_run, read_json
from hpcray.runtime.containers import check_image, resolve_workflow_containers
from hpcray.runtime.gpus import visible_count
from hpcray.runtime.memory import OBJECT_STORE_SHARE
from hpcray.runtime.teardown import RAY_LOGS, ray_logs_dir
from hpcray.schedulers import JobRequest, JobState, get_scheduler
from hpcray.services.names import app_name
from hpcray.services.registry import replica_bundles
from hpcray.sites import SiteProfile, load_site
from hpcray.sites.filesystems import is_under, node_local_reason
from hpcray.sites.queues import check_queue_directives, choose_queue, queue_table
from hpcray.spec import Workflow, load_workflow
from hpcray.spec.checks import check_containers, check_targets
from hpcray.spec.models import Token
from hpcray.spec.walltime import hhmmss, parse_walltime
from hpcray.spec.yamlsource import load_yaml_file
from hpcray.state import (
    ALIVE,
    SERVICE_LIVE,
    TERMINAL,
    JobPhase,
    JobRole,
    NodeState,
    RunState,
    ServiceState,
    StageState,
    phases,
    run_state,
)

log = logging.getLogger("hpcray.api")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%:,=\-]+$")


def _detected_gpus() -> int:
    """NVIDIA GPUs this machine shows: CUDA_VISIBLE_DEVICES, else the device files, else
    `nvidia-smi -L` (some virtual machines expose the GPU without /dev/nvidiaN)."""
    visible = visible_count(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return visible
    devices = len(list(Path("/dev").glob("nvidia[0-9]*")))
    if devices or shutil.which("nvidia-smi") is None:
        return devices
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def site_cpus(site: SiteProfile) -> int:
    if site.cpus_per_node == "auto":
        return os.cpu_count() or 1
    return int(site.cpus_per_node)


def site_gpus(site: SiteProfile) -> int:
    return _detected_gpus() if site.gpus_per_node == "auto" else int(site.gpus_per_node)


def site_queues(site: str | SiteProfile) -> str:
    """A site's queue table (Markdown): limits, per-user limits, which hpcray chooses."""
    return queue_table(site if isinstance(site, SiteProfile) else load_site(site))


def resolve_site(workflow: Workflow, site: str | SiteProfile | None) -> SiteProfile:
    if isinstance(site, SiteProfile):
        return site
    return load_site(site or workflow.site or "local")


def job_request(workflow: Workflow, site: SiteProfile, run_dir: Path,
                workflow_dir: Path | None = None) -> JobRequest:
    """Check the workflow against the site and build what the job script needs.
    Every impossible request fails here, before anything is submitted. `workflow_dir` is
    bound into allocation.container (default: the current directory)."""
    alloc = workflow.allocation
    where = f"site '{site.name}'"
    if site.max_nodes and alloc.nodes > site.max_nodes:
        raise ResourceError(f"{alloc.nodes} nodes exceed the {site.max_nodes} nodes of {where}",
                            field="allocation.nodes")
    have_gpus = site_gpus(site)
    gpus = have_gpus if alloc.gpus_per_node is None else alloc.gpus_per_node
    if gpus > have_gpus:
        raise ResourceError(f"{gpus} GPU(s) per node, but {where} has {have_gpus} per node",
                            field="allocation.gpus_per_node")
    have_cpus = site_cpus(site)
    if alloc.cpus_per_node and alloc.cpus_per_node > have_cpus:
        raise ResourceError(f"{alloc.cpus_per_node} CPUs per node, but {where} has "
                            f"{have_cpus} usable cores per node", field="allocation.cpus_per_node")
    check_queue_directives(site, [*site.directives, *alloc.directives])
    queue = choose_queue(site, alloc.nodes, alloc.walltime, alloc.partition, alloc.qos)
    log.info("queue for %d node(s), %s on %s: %s (%s)", alloc.nodes, hhmmss(alloc.walltime),
             site.name, queue.qos or queue.partition or "the scheduler's default", queue.reason)
    if site.max_walltime and alloc.walltime > site.max_walltime:
        raise ResourceError(f"{hhmmss(alloc.walltime)} exceeds the limit of {where} "
                            f"({hhmmss(site.max_walltime)})", field="allocation.walltime")
    _check_account(site, alloc.account, gpus)
    if workflow.elastic is not None:
        _check_elastic(workflow, site)
    if not _SAFE_PATH.match(str(run_dir)):
        raise SpecError(f"run directory {str(run_dir)!r} has characters that cannot go into a "
                        "job script directive; choose a run_root without spaces or quotes")
    python = alloc.python or sys.executable
    # a bare name (python3) is looked up on each node's PATH: nothing to check here
    _check_shared(site, alloc.nodes, {
        "run_root": (str(run_dir), "the run directory"),
        **({} if alloc.container is not None or not os.path.isabs(python) else
           {"allocation.python": (python, "the job's Python")})})
    cpus = alloc.cpus_per_node or have_cpus
    if site.scheduler == "local" and alloc.nodes > 1 and not alloc.cpus_per_node:
        cpus = max(1, have_cpus // alloc.nodes)  # emulated nodes share this machine
    _check_service_totals(workflow, cpus, gpus, where)
    exclusive = site.exclusive if alloc.exclusive is None else alloc.exclusive
    agent: dict[str, Any] = {}
    if alloc.container is not None:
        # `hpcray up` stays on the batch host (it runs the launcher); the agents run the
        # image's Python
        container = alloc.container
        python, agent_python = sys.executable, alloc.python or "python3"
        agent = {"agent_python": agent_python,
                 "container": f"{container.runtime} image {container.image}",
                 "agent_argv": agent_argv(str(run_dir), agent_python, site.launcher, container,
                                          str(workflow_dir or Path.cwd()), list(alloc.env))}
    return JobRequest(
        job_name=alloc.job_name or workflow.name, nodes=alloc.nodes, walltime=alloc.walltime,
        run_dir=str(run_dir), python=python, account=alloc.account,
        partition=queue.partition, qos=queue.qos,
        gpus_per_node=gpus, cpus_per_node=cpus, exclusive=exclusive,
        memory=_memory(workflow, site, cpus, gpus, exclusive, queue.partition),
        directives=tuple(site.directives) + _storage_directives(workflow, site)
        + tuple(alloc.directives),
        setup=tuple(site.setup) + tuple(alloc.setup), env=tuple(sorted(alloc.env.items())),
        walltime_warning=alloc.walltime_warning, walltime_signal=site.walltime_signal,
        select_suffix=site.pbs_select, **agent)


def _located_request(wf: Workflow, site: SiteProfile, run_dir: Path, source: Path | None,
                     given: dict[str, str]) -> JobRequest:
    """job_request(), with a ResourceError pointing at its field's line in the file; a
    field the caller gave (`given`: field -> how, e.g. '--account') is named as given."""
    try:
        return job_request(wf, site, run_dir, source.parent if source else None)
    except ResourceError as exc:
        if exc.field in given:
            raise ResourceError(f"{exc.reason} (given as {given[exc.field]})",
                                field=exc.field) from None
        if source is None or exc.field is None or exc.path:
            raise
        loc = tuple(int(p) if p.isdigit() else p for p in exc.field.split("."))
        yaml_source = load_yaml_file(source)  # a field left out: its section's line
        raise exc.located(yaml_source.path, yaml_source.line_of(loc)) from None


def _given(wf: Workflow, account: str | None, run_root: str | Path | None,
           run_dir: str | Path | None = None) -> dict[str, str]:
    """Fields set elsewhere than in the workflow file, and where."""
    given = {"allocation.account": "--account"} if account is not None else {}
    if wf.allocation.python is None:
        given["allocation.python"] = ("the Python that runs hpcray here; set "
                                      "allocation.python to one every node sees")
    if run_dir is not None:
        given["run_root"] = "--run-dir"
    elif run_root is not None:
        given["run_root"] = "--run-root"
    elif not wf.run_root:
        given["run_root"] = (f"${env.RUN_ROOT}" if os.environ.get(env.RUN_ROOT)
                             else f"the default run root, ./{DEFAULT_RUN_ROOT} in the current "
                             "directory; set run_root in the workflow or --run-root")
    return given


def _check_elastic(workflow: Workflow, site: SiteProfile) -> None:
    """The worker jobs `elastic:` would submit, checked as the main job is: a grow the
    site refuses would otherwise be found out only while the run waits for it."""
    spec, alloc = workflow.elastic, workflow.allocation
    assert spec is not None
    where = f"site '{site.name}'"
    if site.max_nodes and spec.nodes_per_job > site.max_nodes:
        raise ResourceError(f"{spec.nodes_per_job} nodes per worker job exceed the "
                            f"{site.max_nodes} nodes of {where}", field="elastic.nodes_per_job")
    walltime = spec.walltime or alloc.walltime
    if site.max_walltime and walltime > site.max_walltime:
        raise ResourceError(f"{hhmmss(walltime)} exceeds the limit of {where} "
                            f"({hhmmss(site.max_walltime)})", field="elastic.walltime")
    if walltime <= alloc.walltime_warning:
        raise ResourceError(f"{hhmmss(walltime)} is not longer than the walltime warning "
                            f"({alloc.walltime_warning}s)", field="elastic.walltime")
    try:
        choose_queue(site, spec.nodes_per_job, walltime, spec.partition or alloc.partition,
                     alloc.qos)
    except ResourceError as exc:
        raise ResourceError(f"worker jobs: {exc.reason}", field="elastic.partition") from None


def _check_account(site: SiteProfile, account: str | None, gpus: int) -> None:
    where = f"site '{site.name}'"
    if site.requires_account and not account:
        raise ResourceError(f"{where} requires the project to charge",
                            field="allocation.account")
    suffix = site.gpu_account_suffix
    if not (account and gpus and suffix) or account.endswith(suffix):
        return
    message = (f"'{account}' does not end in '{suffix}': GPU jobs on {where} charge the "
               f"project's GPU account, whose name does")
    if site.gpu_account_required:
        raise ResourceError(message, field="allocation.account")
    log.warning("allocation.account: %s, unless the project has no separate one", message)


def _check_shared(site: SiteProfile, nodes: int, paths: dict[str, tuple[str, str]]) -> None:
    """What every node reads must be on a shared filesystem: an error for a multi-node job,
    a warning for one node (its only node may well be the host that wrote it, but the job
    still reads it after the queue wait, when a node-local /tmp may have been cleaned)."""
    if site.scheduler == "local":
        return
    for name, (path, what) in paths.items():
        reason = node_local_reason(path, site)
        if reason is None:
            continue
        message = f"{what} {path} is {reason}: the job's nodes cannot read it"
        if nodes > 1:
            raise ResourceError(f"{message}; use a path on a shared filesystem", field=name)
        log.warning("%s: %s (one node: allowed)", name, message)


# Ray's own processes (GCS, raylet, dashboard agent, workers' baseline) on one node, in GB
RAY_BASE_MEMORY_GB = 8


def _memory(workflow: Workflow, site: SiteProfile, cpus: int, gpus: int, exclusive: bool,
            partition: str | None) -> str | None:
    """--mem for sites that otherwise give a fixed amount per CPU (Delta: 1000 MB, so a
    4-GPU job would get 64 GB of the node's 256). Whole nodes: all of it (--mem=0).
    Shared nodes: the node's memory in proportion to the larger of the CPU and GPU share,
    or what the services reserve plus Ray's own, whichever is more."""
    if site.scheduler != "slurm" or not site.default_memory_per_cpu_mb:
        return None
    if exclusive:
        return "0"
    usable = site.memory_per_node_gb
    if usable is None:
        return None
    share = max(cpus / site_cpus(site), gpus / site_gpus(site) if site_gpus(site) else 0)
    nodes = workflow.allocation.nodes
    replicas = [(s.resources.memory or 0) / 2**30 for s in workflow.services
                for _ in range(s.replicas)]
    # a replica's memory is on one node; the rest, at best, spread evenly. It comes out of
    # what the object store leaves (node.py sizes the store from this same --mem).
    on_one = max(max(replicas, default=0), sum(replicas) / nodes)
    need = on_one / (1 - OBJECT_STORE_SHARE) + RAY_BASE_MEMORY_GB
    want = max(share * usable, need)
    if want > usable + 1e-9:
        raise ResourceError(
            f"the services reserve {sum(replicas):.0f} GB (at least {on_one:.0f} GB on one "
            f"node); with Ray's object store ({OBJECT_STORE_SHARE:.0%} of the job's memory) "
            f"and about {RAY_BASE_MEMORY_GB} GB for Ray itself that is {need:.0f} GB, more "
            f"than the {usable:g} GB a job may ask for on a node of site '{site.name}'",
            field="services")
    if partition and site.queues and partition not in {q.name for q in site.queues}:
        log.warning("allocation.partition: %s is not in the queue table of site '%s': --mem "
                    "is sized from the profile's %g GB per node; set allocation.exclusive: "
                    "true (--mem=0) if its nodes differ", partition, site.name, usable)
    return f"{math.ceil(want)}G"


def _storage_directives(workflow: Workflow, site: SiteProfile) -> tuple[str, ...]:
    """Node-local storage the job must ask for when Ray spills or keeps its temp dir there
    (Frontier: /mnt/bb/$USER exists only with -C nvme)."""
    used = [p for p in (workflow.ray.spill_dir or site.spill_dir, workflow.ray.temp_root) if p]
    return tuple(dict.fromkeys(
        storage.directive for storage in site.local_storage
        if any(is_under(path, storage.path) for path in used)))


def _check_service_totals(workflow: Workflow, cpus: int, gpus: int, where: str) -> None:
    """Services hold their CPUs and GPUs for the whole run: more than the allocation has can
    never start, so it fails here rather than after the readiness timeout. An autoscaled
    service starts with `replicas`, and its max_replicas must fit beside the other services
    at their min_replicas: a max that could never be placed is a mistake, while two services
    may take turns with the same GPUs."""
    nodes = workflow.allocation.nodes
    for s in workflow.services:
        for kind, per_node in (("cpus", cpus), ("gpus", gpus)):
            one = getattr(s.resources, kind)
            if s.replicas and one > per_node + 1e-9 and not (kind == "gpus" and _spreads(s)):
                raise ResourceError(
                    f"service '{s.name}': one replica needs {one:g} {kind[:-1].upper()}s, but "
                    f"a node of the allocation has {per_node} on {where}")
    for kind, per_node, need in (
            ("cpus", cpus, sum(s.replicas * s.resources.cpus for s in workflow.services)),
            ("gpus", gpus, sum(s.replicas * s.resources.gpus for s in workflow.services))):
        if need > nodes * per_node + 1e-9:
            parts = ", ".join(f"{s.name}: {s.replicas} x {getattr(s.resources, kind):g}"
                              for s in workflow.services if getattr(s.resources, kind))
            raise ResourceError(
                f"the services need {need:g} {kind[:-1].upper()}s in all ({parts}), but the "
                f"allocation has {nodes} node(s) x {per_node} on {where}; lower replicas "
                f"or resources.{kind} (fractions such as 0.5 are allowed)")
        for i, s in enumerate(workflow.services):  # each one's max beside the others' min
            most = sum((x.ceiling if x is s else x.floor) * getattr(x.resources, kind)
                       for x in workflow.services)
            if s.autoscaling and most > nodes * per_node + 1e-9:
                raise ResourceError(
                    f"service '{s.name}' at its {s.ceiling} replicas x "
                    f"{getattr(s.resources, kind):g} needs {most:g} {kind[:-1].upper()}s with "
                    f"the other services at their least, but the allocation has {nodes} "
                    f"node(s) x {per_node} on {where}",
                    field=f"services.{i}.autoscaling.max_replicas")


def _spreads(service) -> bool:
    """Whether one replica's GPUs may sit on several nodes (one bundle per GPU)."""
    return replica_bundles(service) is not None


def new_run_dir(workflow: Workflow, run_root: str | Path | None) -> Path:
    root = Path(run_root or workflow.run_root or os.environ.get(env.RUN_ROOT)
                or DEFAULT_RUN_ROOT)
    run_id = f"{workflow.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    return root.resolve() / run_id


def _load(workflow: str | Path | Workflow,
          account: str | None = None) -> tuple[Workflow, Path | None]:
    """The workflow, with `account` (the CLI's --account) in place of allocation.account."""
    if isinstance(workflow, Workflow):
        wf, path = workflow, None
    else:
        wf = load_workflow(Path(workflow))
        path = Path(workflow).resolve()
    if account is not None:
        try:
            TypeAdapter(Token).validate_python(account)
        except ValidationError as exc:
            raise SpecError(f"--account {account!r}: {exc.errors()[0]['msg']}") from None
        wf = wf.model_copy(update={"allocation": wf.allocation.model_copy(
            update={"account": account})})
    return wf, path


def script(workflow: str | Path | Workflow, site: str | SiteProfile | None = None,
           run_root: str | Path | None = None, run_dir: str | Path | None = None,
           account: str | None = None) -> str:
    """The exact job script submit() would hand to the scheduler (nothing is created)."""
    wf, source = _load(workflow, account)
    profile = resolve_site(wf, site)
    _check_targets(wf, source, profile)
    wf = _containers(wf, source, profile)
    target = Path(run_dir).resolve() if run_dir else new_run_dir(wf, run_root)
    return get_scheduler(profile.scheduler).job_script(
        _located_request(wf, profile, target, source, _given(wf, account, run_root, run_dir)))


def _containers(wf: Workflow, source: Path | None, site: SiteProfile) -> Workflow:
    """Every `container:` resolved against the site (runtime, its options, the GPU vendor),
    so the job reads them as they will run; an image that cannot start fails here, naming
    its field, before any node starts."""
    base = source.parent if source else Path.cwd()
    yaml_source = load_yaml_file(source) if source else None
    try:
        wf = resolve_workflow_containers(wf, site, base)
    except SpecError as exc:
        if yaml_source is None:
            raise
        loc = tuple(int(p) if p.isdigit() else p for p in (exc.field or "").split("."))
        raise SpecError(exc.reason, path=yaml_source.path, line=yaml_source.line_of(loc),
                        field=exc.field) from None
    check_containers(wf, yaml_source, lambda c: check_image(c, local=site.scheduler == "local"))
    return wf


def _check_targets(wf: Workflow, source: Path | None, site: SiteProfile) -> list[str]:
    """The modules the job imports (`module:Class` deployments, the driver's and stages'
    functions) exist where the job looks: the workflow's directory and driver.cwd, then the
    installed packages. Here, not at load, so `hpcray up` does not look them up again."""
    base = source.parent if source else Path.cwd()
    dirs = [base]
    if wf.driver and wf.driver.cwd:
        dirs.append(base / os.path.expandvars(wf.driver.cwd))
    return check_targets(wf, load_yaml_file(source) if source else None, dirs,
                         elsewhere=_other_python(wf, site))


def _other_python(wf: Workflow, site: SiteProfile) -> str | None:
    """Why the job's Python may find modules this one does not (then a module missing here
    is a warning): another interpreter, or a PYTHONPATH the job sets."""
    python = wf.allocation.python
    if python and os.path.realpath(python) != os.path.realpath(sys.executable):
        return f"the job runs allocation.python {python}"
    if "PYTHONPATH" in wf.allocation.env:
        return "the job sets allocation.env.PYTHONPATH"
    if any("PYTHONPATH" in line for line in [*site.setup, *wf.allocation.setup]):
        return "the job's setup lines set PYTHONPATH"
    return None


@dataclass
class Submission:
    run_id: str
    run_dir: Path
    job_id: str
    scheduler: str
    site: str


def prepare(workflow: str | Path | Workflow, site: str | SiteProfile | None = None,
            run_root: str | Path | None = None,
            account: str | None = None) -> tuple[RunDir, SiteProfile]:
    """Validate and write the run directory (job script included) without submitting."""
    wf, source = _load(workflow, account)
    profile = resolve_site(wf, site)
    _check_targets(wf, source, profile)
    wf = _containers(wf, source, profile)
    path = new_run_dir(wf, run_root)
    request = _located_request(wf, profile, path, source, _given(wf, account, run_root))
    # (raises before anything is written)
    text = get_scheduler(profile.scheduler).job_script(request)
    run = RunDir(path).create()
    if source:
        shutil.copyfile(source, path / "workflow.yaml")
    workflow_dir = str(source.parent if source else Path.cwd())
    run.resolved.write_text(json.dumps({
        "workflow": wf.model_dump(mode="json"), "site": profile.model_dump(mode="json"),
        "request": {**asdict(request), "workflow_dir": workflow_dir}}, indent=2))
    run.job_script.write_text(text)
    run.job_script.chmod(0o755)
    run.update(run_id=path.name, workflow=wf.name, site=profile.name,
               scheduler=profile.scheduler, state=RunState.SUBMITTED, nodes_expected=request.nodes)
    return run, profile


def submit(workflow: str | Path | Workflow, site: str | SiteProfile | None = None,
           run_root: str | Path | None = None, account: str | None = None) -> Submission:
    """Validate, write the run directory, and submit. With the local site the job starts now.
    `account` overrides the workflow's allocation.account (one file for several projects)."""
    run, profile = prepare(workflow, site, run_root, account)
    run.mark("submitted")
    job_id = get_scheduler(profile.scheduler).submit(run.job_script, run.path)
    run.update(job_id=job_id)
    run.update_job(MAIN_JOB, role=JobRole.MAIN, job_id=job_id, state=JobPhase.SUBMITTED,
                   nodes=run.read().get("nodes_expected"), submitted=time.time())
    return Submission(run.path.name, run.path, job_id, profile.scheduler, profile.name)


@dataclass
class NodeStatus:
    name: str
    state: str
    joined: float | None = None
    error: str | None = None
    lost: float | None = None
    usage: dict[str, Any] | None = None  # the node agent's latest sample (metrics/usage.py)
    job: str | None = None  # the worker job that brought it ("w1 (1234)"); None: the main job's
    released: str | None = None  # why a worker job's node left (drained, walltime, cancelled)


@dataclass
class ServiceStatus:
    name: str
    state: str
    replicas_ready: int
    replicas: int
    bt: dict[str, float] = field(default_factory=dict)  # slowest replica's launch/init/publish
    request_rate: float = 0.0  # req/s over the replicas' latest samples
    served: float = 0  # requests answered by the replicas running now
    # the same numbers the run's Prometheus endpoint serves (hpcray/metrics/prometheus.py)
    errors: int = 0  # requests the running replicas failed or refused
    in_flight: int = 0  # requests received by the replicas, not answered yet
    p50_ms: dict[str, float] = field(default_factory=dict)  # communication, service, inference
    autoscaling: str | None = None  # "min-max"; replicas then: taking requests / target

    def line(self) -> str:
        bt = ", ".join(f"{k} {v:.2f}s" for k, v in self.bt.items())
        rate = f"; {self.request_rate:.1f} req/s, {self.served} served" if self.served else ""
        if self.served:
            rate += f", {self.errors} errors, {self.in_flight} in flight"
        if self.p50_ms:
            rate += "; p50 " + ", ".join(f"{k} {v:.3f}" for k, v in self.p50_ms.items()) + " ms"
        auto = f", autoscaling {self.autoscaling}" if self.autoscaling else ""
        return (f"  service {self.name}: {self.state} ({self.replicas_ready}/{self.replicas} "
                f"replicas{auto}){'; BT ' + bt if bt else ''}{rate}")


def _service_statuses(run: RunDir, wf: dict[str, Any],
                      snapshot: dict[str, Any]) -> list[ServiceStatus]:
    metrics = read_json(run.path / "metrics" / "services.json", {})
    states = run.read().get("services", {})
    out = []
    for spec in wf.get("services", []):
        name = spec["name"]
        replicas = metrics.get(name, {}).get("bt", [])
        bt = {part: max(r[part] for r in replicas) for part in ("launch", "init", "publish")
              } if replicas else {}
        state = states.get(name, {}).get("state", ServiceState.PENDING)
        status = ServiceStatus(name, state, len(replicas), int(spec.get("replicas", 1)), bt)
        scaled = states.get(name, {})
        if scaled.get("autoscaling") and scaled.get("target") is not None:  # as it is now
            status.replicas_ready, status.replicas = scaled["live"], scaled["target"]
            status.autoscaling = scaled["autoscaling"]
        # a replica killed at teardown leaves its last sample: only a live service has rates
        if state in SERVICE_LIVE and name in snapshot["services"]:
            got = service_summary(snapshot["services"][name])
            status.request_rate, status.served = got["rate"], got["served"]
            status.errors, status.in_flight = got["errors"], got["in_flight"]
            status.p50_ms = {k: v * 1e3 for k, v in got["p50_s"].items() if v is not None}
        out.append(status)
    return out


@dataclass
class StageStatus:
    name: str
    state: str
    total: int
    done: int
    failed: int
    running: int
    retried: int
    skipped: int = 0  # of `done`: done in an earlier job of a relay, not run again

    def line(self) -> str:
        earlier = f" ({self.skipped} in an earlier job)" if self.skipped else ""
        return (f"  stage {self.name}: {self.state}; tasks {self.done}/{self.total} done"
                f"{earlier}, {self.running} running, {self.failed} failed, "
                f"{self.retried} retried")


def _stage_statuses(run: RunDir, wf: dict[str, Any]) -> list[StageStatus]:
    states = run.read().get("stages", {})
    out = []
    for spec in wf.get("stages", []):
        got = states.get(spec["name"], {})
        out.append(StageStatus(spec["name"], got.get("state", StageState.WAITING),
                               got.get("total", 0), got.get("done", 0), got.get("failed", 0),
                               got.get("running", 0), got.get("retried", 0),
                               got.get("skipped", 0)))
    return out


@dataclass
class JobStatus:
    """One batch job of the run (run.json `jobs`): the main job, a relay's successors, the
    worker jobs of a grow."""

    tag: str
    role: str
    job_id: str | None
    state: str  # JobPhase
    nodes: int | None = None
    started: float | None = None
    ended: float | None = None

    def line(self) -> str:
        def clock(t: float | None) -> str:
            return time.strftime("%H:%M:%S", time.localtime(t)) if t else "?"
        when = f", {clock(self.started)}-{clock(self.ended) if self.ended else ''}" \
            if self.started or self.ended else ""
        return (f"  job {self.tag} ({self.role}, {self.job_id or 'not submitted'}): "
                f"{self.state}, {self.nodes if self.nodes is not None else '?'} node(s){when}")


def _job_statuses(data: dict[str, Any]) -> list[JobStatus]:
    listed = data.get("jobs") or {}
    order = sorted(listed, key=lambda t: (t != MAIN_JOB, listed[t].get("submitted") or 0.0, t))
    return [JobStatus(t, str(listed[t].get("role", "")), listed[t].get("job_id"),
                      str(listed[t].get("state", "")), listed[t].get("nodes"),
                      listed[t].get("started"), listed[t].get("ended")) for t in order]


@dataclass
class RunStatus:
    run_id: str
    run_dir: Path
    job_id: str | None
    scheduler: str
    state: RunState
    scheduler_state: str
    nodes_expected: int
    nodes: list[NodeStatus] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    services: list[ServiceStatus] = field(default_factory=list)
    stages: list[StageStatus] = field(default_factory=list)
    metrics_url: str | None = None  # the run's Prometheus endpoint while it runs
    jobs: list[JobStatus] = field(default_factory=list)  # the run's batch jobs, oldest first

    @property
    def nodes_joined(self) -> int:
        return sum(1 for n in self.nodes if n.joined)

    @property
    def phases(self) -> dict[str, float]:
        """Seconds from the job's start to each phase reached; the teardown's length."""
        return phases(self.times)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """For scripts (`hpcray status --json`)."""
        from dataclasses import asdict

        return {**asdict(self), "run_dir": str(self.run_dir), "finished": self.finished,
                "nodes_joined": self.nodes_joined, "phases": self.phases}

    def summary(self) -> str:
        head = f"{self.run_id} (job {self.job_id}, {self.scheduler}): {self.state}"
        if self.state == RunState.BOOTSTRAPPING:
            head += f" ({self.nodes_joined} of {self.nodes_expected} nodes)"
        lines = [head]
        for n in self.nodes:
            extra = " joined" if n.joined else ""
            extra += ", lost while running" if n.lost else ""
            extra += f" (worker job {n.job})" if n.job else ""
            extra += f", released: {n.released}" if n.released else ""
            lines.append(f"  {n.name}: {n.state}{extra}{' - ' + n.error if n.error else ''}")
        if len(self.jobs) > 1:  # a relay's chain, a grow's worker jobs
            lines += [j.line() for j in self.jobs]
        lines += [s.line() for s in self.services]
        lines += [s.line() for s in self.stages]
        if self.phases:
            reached = {k: v for k, v in self.phases.items() if k != "teardown"}
            line = "  phases (s from the job's start): " + ", ".join(
                f"{k} {v:.1f}" for k, v in reached.items())
            if "teardown" in self.phases:
                line += f"; teardown took {self.phases['teardown']:.1f}"
            lines.append(line)
        if self.metrics_url:
            lines.append(f"  metrics (Prometheus): {self.metrics_url}")
        if self.error:
            lines.append(f"  error: {self.error.splitlines()[0]}")
        return "\n".join(lines)


def status(ref: str | Path, run_root: str | Path | None = None) -> RunStatus:
    run = find_run(str(ref), run_root)
    data = run.read()
    scheduler = data.get("scheduler", "local")
    job_id = data.get("job_id")
    sched_state = get_scheduler(scheduler).state(job_id) if job_id else JobState.UNKNOWN
    state = run_state(data)
    if state == RunState.SUBMITTED:
        state = RunState.QUEUED if job_id else RunState.SUBMITTING
        if sched_state.finished:
            state = RunState.LOST  # the job ended before `hpcray up` wrote anything
    elif state in (*ALIVE, RunState.RELAYING) and _gone(sched_state, scheduler):
        data, state, job_id, sched_state = _ended_unsaid(run, scheduler, state, job_id,
                                                         sched_state)
    joined = data.get("nodes", {})
    workflow = (read_json(run.resolved, {}) or {}).get("workflow", {})
    agents = run.node_states()
    names = data.get("node_names") or sorted(agents)
    names += [n for n, entry in joined.items() if entry.get("job") and n not in names]
    nodes = [NodeStatus(n, agents.get(n, {}).get("state", NodeState.PENDING),
                        joined.get(n, {}).get("joined"),
                        agents.get(n, {}).get("error") or joined.get(n, {}).get("lost_reason"),
                        joined.get(n, {}).get("lost"),
                        agents.get(n, {}).get("usage") if state not in TERMINAL else None,
                        f"{joined[n]['job']} ({joined[n].get('job_id')})"
                        if joined.get(n, {}).get("job") else None,
                        joined.get(n, {}).get("released_reason"))
             for n in names]
    snapshot = collect(run.path)  # what the run's Prometheus endpoint serves now
    return RunStatus(run_id=data.get("run_id", run.path.name), run_dir=run.path, job_id=job_id,
                     scheduler=scheduler, state=state, scheduler_state=sched_state.value,
                     nodes_expected=data.get("nodes_expected", len(names)), nodes=nodes,
                     times=data.get("times", {}), error=data.get("error"),
                     services=_service_statuses(run, workflow, snapshot),
                     stages=_stage_statuses(run, workflow),
                     metrics_url=None if state in TERMINAL or state == RunState.RELAYING
                     else (read_json(run.head, {}) or {}).get("metrics_url"),
                     jobs=_job_statuses(data))


def _gone(sched_state: JobState, scheduler: str) -> bool:
    """The scheduler no longer runs or queues the job (a local job: its process is gone)."""
    return sched_state.finished or (sched_state == JobState.UNKNOWN and scheduler == "local")


def _ended_unsaid(run: RunDir, scheduler: str, state: RunState, job_id: str | None,
                  sched_state: JobState
                  ) -> tuple[dict[str, Any], RunState, str | None, JobState]:
    """The run's job is gone and the run recorded no end: killed hard (SIGKILL, a node
    failure), or a relay's successor (`job_id` while RELAYING) that ended before it took the
    run over: LOST. Unless the run recorded something meanwhile, or its job was killed (at
    its walltime) after submitting a relay successor that still waits to start: RELAYING,
    shown with that successor."""
    data = run.read()
    if (run_state(data), data.get("job_id")) != (state, job_id):
        state, job_id = run_state(data), data.get("job_id")
        sched_state = get_scheduler(scheduler).state(str(job_id)) if job_id else \
            JobState.UNKNOWN
        if state not in (*ALIVE, RunState.RELAYING) or not _gone(sched_state, scheduler):
            return data, state, job_id, sched_state
    if state in ALIVE:
        for _, job in reversed(pending_successors(data)):
            got = get_scheduler(scheduler).state(str(job["job_id"]))
            if not _gone(got, scheduler):
                return data, RunState.RELAYING, str(job["job_id"]), got
    return data, RunState.LOST, job_id, sched_state


@dataclass
class JobChange:
    """One worker job a grow submitted or a shrink released."""

    tag: str
    job_id: str
    nodes: int
    state: str  # run.json's jobs.<tag>.state (JobPhase)
    scheduler_state: str = ""
    seconds: float | None = None  # how long the shrink took, for this job
    reason: str = ""

    def line(self) -> str:
        took = f" in {self.seconds:.1f}s" if self.seconds is not None else ""
        sched = f", scheduler: {self.scheduler_state}" if self.scheduler_state else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"worker job {self.tag} (job {self.job_id}, {self.nodes} node(s)): " \
               f"{self.state}{took}{sched}{why}"


def grow(ref: str | Path, nodes: int = 1, *, run_root: str | Path | None = None,
         site: str | None = None, partition: str | None = None,
         walltime: str | int | None = None) -> JobChange:
    """Submit a worker-only job whose nodes join the running run's cluster (same token, the
    head's address from the run directory, job-private ports and temp dirs, the per-node
    label), with the run's scheduler module and job-script template. Its walltime defaults
    to what is left of the run's; the nodes show in `status` with the job that brought them."""
    run = find_run(str(ref), run_root)
    data = run.read()
    state = run_state(data)
    if state not in ALIVE or not run.head.exists() or run.stop_file.exists() \
            or "cancel_requested" in data.get("times", {}):
        raise RunStateError(f"run {run.path.name} is {state}"
                            f"{', stopping' if state in ALIVE else ''}: only a running run "
                            "can grow")
    if site is not None and site != data.get("site"):
        raise SpecError(f"a worker job runs on the run's site ({data.get('site')}); "
                        f"--site {site} differs", field="site")
    if nodes < 1:
        raise SpecError(f"{nodes} nodes: a worker job needs at least one", field="nodes")
    try:
        if partition is not None:
            TypeAdapter(Token).validate_python(partition)
        seconds = parse_walltime(walltime) if walltime is not None else None
    except (ValidationError, ValueError) as exc:
        what = "partition" if isinstance(exc, ValidationError) else "walltime"
        detail = str(exc).splitlines()[-1].strip().removeprefix(f"{what}: ")
        raise SpecError(f"{what}: {detail}", field=what) from None
    if seconds is None:
        workflow = load_resolved(run)[0]
        started = data.get("times", {}).get("job_started", time.time())
        seconds = int(workflow.allocation.walltime - (time.time() - started))
    tag, job_id = submit_job(run, JobRole.WORKER, nodes=nodes, walltime=seconds,
                             partition=partition, reason="hpcray grow")
    return JobChange(tag, job_id, nodes, JobPhase.SUBMITTED)


def shrink(ref: str | Path, *, job: str | None = None, nodes: int | None = None,
           run_root: str | Path | None = None, wait: bool = True,
           drain_timeout: float | None = 300, timeout: float = 600) -> list[JobChange]:
    """Release worker jobs: their nodes take no new work, what runs there finishes, Serve
    starts replicas there elsewhere first, then the job ends (COMPLETED). `job`: a worker
    job's tag or id; `nodes`: whole worker jobs, newest first, until that many nodes are
    released (the main job's nodes hold the head and stay). A job still queued is cancelled.
    `drain_timeout`: seconds the drain may take (None: as long as it takes); then the job
    ends with what still runs there (Ray runs it again elsewhere, as after a cancel)."""
    run = find_run(str(ref), run_root)
    if (job is None) == (nodes is None):
        raise SpecError("give a worker job (--job) or a number of nodes (--nodes)")
    if nodes is not None and nodes < 1:
        raise SpecError(f"--nodes {nodes}: give at least 1", field="nodes")
    workers = {t: r for t, r in run_jobs(run).items()
               if r.get("role") == JobRole.WORKER and r.get("state") != JobPhase.ENDED}
    if job is not None:
        chosen = [t for t, r in workers.items() if job in (t, str(r.get("job_id")))]
        if not chosen:
            running = ", ".join(f"{t} ({r.get('job_id')})" for t, r in workers.items())
            raise SpecError(f"no running worker job {job!r} in run {run.path.name}; "
                            f"running: {running or 'none'}")
    else:
        assert nodes is not None
        newest = sorted(workers, key=lambda t: workers[t].get("submitted", 0), reverse=True)
        chosen, count = [], 0
        for tag in newest:
            if count >= nodes:
                break
            chosen.append(tag)
            count += int(workers[tag].get("nodes") or 0)
        if count < nodes:
            raise ResourceError(f"only {count} node(s) are in worker jobs of run "
                                f"{run.path.name}; the main job's nodes hold the head and stay",
                                field="nodes")
    scheduler = get_scheduler(run.read().get("scheduler", "local"))
    t0 = time.monotonic()
    for tag in chosen:
        record = workers[tag]
        if record.get("state") == JobPhase.SUBMITTED and record.get("job_id"):
            scheduler.cancel(str(record["job_id"]))
            run.update_job(tag, state=JobPhase.ENDED, ended=time.time(),
                           end_reason="released before it started")
        else:
            request_release(run, tag, "hpcray shrink", drain_timeout)
    out = []
    for tag in chosen:
        record = workers[tag]
        sched_state = ""
        if wait:
            deadline = t0 + timeout
            while run_jobs(run)[tag].get("state") != JobPhase.ENDED:
                if time.monotonic() > deadline:
                    raise SchedulerError(f"worker job {tag} ({record.get('job_id')}) did not "
                                         f"end within {timeout:.0f}s of the shrink")
                time.sleep(0.5)
                end_if_gone(run, tag)  # its `hpcray up` killed before it could say so
            while (js := scheduler.state(str(record.get("job_id")))) == JobState.RUNNING \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            sched_state = js.value
        final = run_jobs(run)[tag]
        out.append(JobChange(tag, str(record.get("job_id")), int(record.get("nodes") or 0),
                             final.get("state", ""), sched_state,
                             time.monotonic() - t0 if wait else None,
                             final.get("end_reason", "")))
    return out


def wait(ref: str | Path, timeout: float | None = None, poll: float = 0.5,
         run_root: str | Path | None = None, on_change=None) -> RunStatus:
    """Block until the run reaches a final state (or the timeout passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        st = status(ref, run_root)
        key = (st.state, st.nodes_joined)
        if on_change and key != last:
            on_change(st)
            last = key
        if st.finished or (deadline is not None and time.monotonic() > deadline):
            return st
        time.sleep(poll)


def cancel(ref: str | Path, run_root: str | Path | None = None, wait_s: float = 120) -> RunStatus:
    """Scheduler cancel, then wait for the job-scoped teardown to finish."""
    run = find_run(str(ref), run_root)
    data = run.read()
    run.mark("cancel_requested")  # a relay submits no successor after this (relay.py)
    state = run_state(data)
    scheduler = get_scheduler(data.get("scheduler", "local"))
    if data.get("job_id") and state not in TERMINAL:
        scheduler.cancel(str(data["job_id"]))
    if state not in TERMINAL:  # a relay's successor still queued: it has nothing to resume
        for tag, job in pending_successors(data):
            if str(job["job_id"]) != str(data.get("job_id")):
                with contextlib.suppress(SchedulerError):
                    scheduler.cancel(str(job["job_id"]))
            run.update_job(tag, state=JobPhase.ENDED, ended=time.time(), end_reason="cancelled")
    if state == RunState.RELAYING:  # between two jobs: nothing runs that could record it
        run.mark("finished", state=RunState.CANCELLED)
    if state not in TERMINAL:  # worker jobs still queued would only find nothing to join
        for tag in release_queued(run):
            log.info("worker job %s cancelled before it started", tag)
    st = wait(run.path, timeout=wait_s)
    if st.state in (RunState.QUEUED, RunState.SUBMITTING, RunState.LOST):
        run.update(state=RunState.CANCELLED)
        st = status(run.path)
    return st


def logs(ref: str | Path, node: str | None = None, run_root: str | Path | None = None, *,
         service: str | None = None, stage: str | None = None, driver: bool = False,
         ray: bool = False) -> str:
    """A run's logs: the job's output (default); one node's agent and Ray start log (`node`);
    the driver's whole output (`driver`); one service's replicas (`service`: Ray's session
    logs of its replicas once kept at teardown, else their lines forwarded to the run's
    output); one stage's task output and attempt records (`stage`); or what the quiet
    console held back of Ray, Serve, Tune, vLLM and the workers, with where Ray's session
    logs of each node were kept (`ray`, with `node`: that node's only)."""
    run = find_run(str(ref), run_root)
    chosen = [name for name, given in (("service", service), ("stage", stage),
                                       ("driver", driver), ("ray", ray)) if given]
    if len(chosen) > 1:
        raise SpecError(f"logs: choose one of service, stage, driver, ray (given: "
                        f"{', '.join(chosen)})")
    if node is not None and chosen and not ray:
        raise SpecError(f"logs: node goes with ray only, not with {chosen[0]}")
    if node is not None:
        _check_known("node", node, _log_nodes(run))
    if service is not None:
        return _service_logs(run, service)
    if stage is not None:
        return _stage_logs(run, stage)
    if ray:
        return _ray_logs(run, node)
    path = run.logs / "driver.log" if driver else run.node_log(node) if node else run.job_out
    if not path.exists():
        raise SpecError(f"no log at {path} yet")
    text = path.read_text(errors="replace")
    workers = [t for t, j in run_jobs(run).items() if j.get("role") == JobRole.WORKER]
    for tag in [*relay_chain(run)[1:], *workers] if path == run.job_out else []:
        more = run.jobs_dir / tag / "job.out"  # a relay's next jobs, the worker jobs
        if more.exists():
            text += f"--- job {tag}: {more}\n{more.read_text(errors='replace')}"
    return text


def output_lines(ref: str | Path, which: str = "driver",
                 run_root: str | Path | None = None) -> list[OutputLine]:
    """The lines of the driver's output (`driver`: logs/driver.log), of the job's (`job`:
    job.out, `hpcray up`'s with the driver's), or of the services' replicas in Ray's session
    logs kept at teardown (`services`), each with who wrote it."""
    run = find_run(str(ref), run_root)
    if which == "services":
        return [dataclasses.replace(line, who=f"replica of {name}", service=name)
                for name in _services_named(run) for path in _replica_files(run, name)
                for line in classify(_lines(path))]
    return classify(_lines(run.logs / "driver.log" if which == "driver" else run.job_out))


def _lines(path: Path) -> list[str]:
    """A log's lines; a carriage return (a progress bar redrawn) stays inside its line."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return text.removesuffix("\n").split("\n") if text else []


def _check_known(what: str, name: str, known: list[str]) -> None:
    if name not in known:
        listed = ", ".join(known) if known else "none"
        raise SpecError(f"logs: no {what} {name!r} in this run; {what}s: {listed}")


def _log_nodes(run: RunDir) -> list[str]:
    names = set(run.read().get("node_names") or [])
    names |= {p.stem.removeprefix("node-") for p in run.logs.glob("node-*.log")}
    return sorted(names)


def _kept(run: RunDir) -> Path:
    return run.logs / RAY_LOGS


def _replica_files(run: RunDir, service: str) -> list[Path]:
    """Ray's session logs of a service's replicas, kept at teardown: Serve's replica logs
    and the replicas' worker output (told by Ray's `:actor_name:` line)."""
    app = app_name(service)
    found = sorted(_kept(run).glob(f"*/serve/replica_{app}_{service}_*.log"))
    for path in sorted(_kept(run).glob("*/worker-*.[oe][ur][tr]")):
        with path.open("rb") as f:
            head = f.read(512).decode(errors="replace")
        if f":actor_name:ServeReplica:{app}:" in head:
            found.append(path)
    return found


def _services_named(run: RunDir) -> list[str]:
    """Services of the run: the workflow's, those it recorded, and those started by the
    driver (their replicas' logs and lines)."""
    workflow = (read_json(run.resolved, {}) or {}).get("workflow", {})
    names = {s["name"] for s in workflow.get("services", [])}
    names |= set(run.read().get("services", {}))
    prefix = f"replica_{app_name('')}"
    for path in _kept(run).glob(f"*/serve/{prefix}*.log"):
        rest = path.name[len(prefix):-len(".log")].rsplit("_", 1)[0]  # NAME_NAME
        half = len(rest) // 2
        if rest[:half] == rest[half + 1:]:  # a service's, not the OpenAI ingress
            names.add(rest[:half])
    for which in ("driver", "job"):
        names |= {line.service for line in output_lines(run.path, which) if line.service}
    return sorted(names)


def _service_logs(run: RunDir, service: str) -> str:
    _check_known("service", service, _services_named(run))
    files = _replica_files(run, service)
    if files:
        return "".join(_file_block(run, path) for path in files)
    lines = [line.text for which in ("driver", "job") for line in output_lines(run.path, which)
             if line.service == service]
    note = (f"(service {service}: no Ray session logs of its replicas kept yet, they are "
            f"copied into {_kept(run)} at teardown; its lines forwarded to the run's output:)")
    return "\n".join([note, *dict.fromkeys(lines)]) + "\n"


def _stage_logs(run: RunDir, stage: str) -> str:
    workflow = (read_json(run.resolved, {}) or {}).get("workflow", {})
    stages_dir = run.path / "stages"
    known = {s["name"] for s in workflow.get("stages", [])}
    known |= {p.name for p in stages_dir.iterdir() if p.is_dir()} if stages_dir.is_dir() else set()
    _check_known("stage", stage, sorted(known))
    files = sorted((p for p in (stages_dir / stage).glob("*") if p.is_file()),
                   key=lambda p: (p.name == "attempts.jsonl", p.name))
    if not files:
        return f"(stage {stage}: no task output or attempt recorded yet)\n"
    return "".join(_file_block(run, path) for path in files)


def _ray_logs(run: RunDir, node: str | None) -> str:
    held = [line.text for which in ("driver", "job") for line in output_lines(run.path, which)
            if line.held]
    out = [f"==> Ray's, Serve's, Tune's and the workers' lines in the run's output "
           f"({len(dict.fromkeys(held))}) <==", *dict.fromkeys(held), ""]
    nodes = [node] if node else _log_nodes(run)
    for name in nodes:
        kept = ray_logs_dir(run.logs, name)
        files = sorted(p for p in kept.rglob("*") if p.is_file()) if kept.is_dir() else []
        if not files:
            out.append(f"==> {kept}: none kept (yet: Ray's session logs are copied at "
                       "teardown) <==")
            continue
        size = sum(p.stat().st_size for p in files)
        out.append(f"==> Ray's session logs of node {name}: {kept} ({len(files)} files, "
                   f"{size / 2**20:.1f} MB) <==")
        out += [f"  {p.relative_to(kept)}  {p.stat().st_size} B" for p in files]
    return "\n".join(out) + "\n"


def _file_block(run: RunDir, path: Path) -> str:
    text = path.read_text(errors="replace")
    end = "" if text.endswith("\n") else "\n"
    return f"==> {path.relative_to(run.path)} <==\n{text}{end}"


def run_info(ref: str | Path, run_root: str | Path | None = None) -> dict[str, Any]:
    return find_run(str(ref), run_root).read()

"""ServiceManager: every service as a Ray Serve application, started level by level (all
services of a level in parallel), ready within its timeout, health-checked by Serve, timed
into BT (launch, init, publish), and deleted at the end."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hpcray import env
from hpcray.errors import HpcrayError, ServiceError
from hpcray.rundir import RunDir, read_json, write_json_atomic
from hpcray.runtime.network import host_port
from hpcray.runtime.placement import bundle, bundles_unplaceable, ray_options, unplaceable
from hpcray.runtime.raycompat import delete_app, set_replica_count
from hpcray.services import program
from hpcray.services.http_access import HttpAccess
from hpcray.services.names import OPENAI_APP, app_name
from hpcray.services.registry import check_args, load_class, replica_bundles, target_of
from hpcray.spec.services import DEFAULT_MAX_ONGOING, ServiceSpec, check_service_graph
from hpcray.state import ServiceState

log = logging.getLogger("hpcray.services")
PROGRAM_START_MARGIN_S = 60.0  # a program replica's actor start, before its own wait
# how often a stopping replica checks for in-flight requests: Serve's default (2 s) is the
# least every replica's stop takes, even an idle one's
DRAIN_POLL_S = 0.1
# a replica's own stop (unpublishing, the class's shutdown(), a program's TERM-to-KILL) gets
# this much beyond drain_timeout before Serve kills it
STOP_MARGIN_S = 10.0

@dataclass
class ReplicaBT:
    service: str
    replica: str
    node: str | None
    launch: float
    init: float
    publish: float
    url: str | None = None  # a program service's replica: where its program listens


@dataclass
class ServiceRecord:
    name: str
    state: ServiceState = ServiceState.PENDING
    deploy_at: float | None = None
    running_at: float | None = None
    published_at: float | None = None
    error: str | None = None
    bt: list[ReplicaBT] = field(default_factory=list)
    autoscaling: str | None = None  # "min-max" of an autoscaled service
    target: int | None = None  # its replica count as last decided
    live: int | None = None  # its replicas taking requests now

    @property
    def replicas(self) -> int:
        """Replicas that answered through the handle (one BT record each)."""
        return len(self.bt)

    def scaling(self) -> dict[str, Any]:
        """What `hpcray status` shows of an autoscaled service: "3/4 replicas (autoscaling
        1-4)"; nothing for the others."""
        if self.autoscaling is None:
            return {}
        return {"autoscaling": self.autoscaling, "target": self.target, "live": self.live}


def with_run_dir(value: Any, run_dir: str) -> Any:
    """`{run_dir}` in string arguments (at any depth) becomes the run directory, so a
    service can load what the job's setup lines wrote there."""
    if isinstance(value, str):
        return value.replace("{run_dir}", run_dir)
    if isinstance(value, dict):
        return {k: with_run_dir(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [with_run_dir(v, run_dir) for v in value]
    return value


def fits(spec: ServiceSpec, nodes: list[dict[str, Any]]) -> str | None:
    """None if the alive nodes can hold one replica (one node, or its bundles across
    several), else why not."""
    spread = replica_bundles(spec)
    if spread is not None:
        return bundles_unplaceable(spread[0], nodes, "replica")
    return unplaceable(spec.resources, nodes, "replica")


def serve_autoscaled(spec: ServiceSpec) -> bool:
    """Scaled by Serve's own autoscaler: an autoscaled service on the Serve path, whose
    requests Serve's router sees. The direct path's are scaled by hpcray (autoscale.py)."""
    return spec.autoscaling is not None and spec.transport == "serve"


def replica_count_options(spec: ServiceSpec) -> dict[str, Any]:
    """The deployment's replica count: a fixed `num_replicas` (hpcray's autoscaler changes
    it through Serve's external-scaler call), or Serve's `autoscaling_config`, starting at
    `replicas` (Serve refuses both at once)."""
    auto = spec.autoscaling
    if auto is None or not serve_autoscaled(spec):
        return {"num_replicas": spec.replicas}
    return {"autoscaling_config": {
        "min_replicas": auto.min_replicas, "max_replicas": auto.max_replicas,
        "initial_replicas": spec.replicas,
        "target_ongoing_requests": auto.target_ongoing_requests,
        "upscale_delay_s": auto.upscale_delay, "downscale_delay_s": auto.downscale_delay}}


def max_ongoing(spec: ServiceSpec, cls: type) -> int:
    """The workflow's `max_ongoing_requests`, else the class's own default: an engine that
    batches (vLLM) wants every request in flight, not Serve's 16 at a time."""
    if spec.max_ongoing_requests is not None:
        return spec.max_ongoing_requests
    return int(getattr(cls, "max_ongoing_requests", DEFAULT_MAX_ONGOING))


class ServiceManager:
    def __init__(self, services: list[ServiceSpec], run: RunDir | None = None,
                 http: HttpAccess | None = None, workflow_dir: str | None = None) -> None:
        self.levels = check_service_graph(services)
        self.run = run
        self.workflow_dir = workflow_dir  # bound into program services' containers
        self.http = http  # where Serve's HTTP proxy on the head listens, or None
        self.records = {s.name: ServiceRecord(s.name) for s in services}
        self.specs = {s.name: s for s in services}
        self.directory = None
        self.autoscalers: dict[str, Any] = {}  # service -> its Autoscaler
        # autoscalers save from their threads: one writer at a time (one temp file per pid)
        self._save_lock = threading.Lock()

    # -- building ----------------------------------------------------------------------------
    def _deployment(self, spec: ServiceSpec):
        from ray import serve

        from hpcray.services.replica import ReplicaHost

        target, args = self._target(spec)
        cls = load_class(target)
        check_args(cls, args, spec.name)
        res = spec.resources
        options: dict[str, Any] = {
            "name": spec.name, **replica_count_options(spec),
            "max_ongoing_requests": max_ongoing(spec, cls),
            "health_check_period_s": spec.health_check_period,
            "health_check_timeout_s": spec.health_check_timeout,
            "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
            "graceful_shutdown_timeout_s": spec.drain_timeout + STOP_MARGIN_S,
        }
        if spec.command is not None:
            # a program that cannot start is tried `restarts` more times per replica (Serve
            # counts failed starts over the whole deployment), not Serve's 3 per replica
            options["max_constructor_retry_count"] = spec.ceiling * (spec.restarts + 1)
            # Serve waits this long for the replica's stop: the program's own grace and more
            options["graceful_shutdown_timeout_s"] = (spec.drain_timeout + spec.stop_timeout
                                                      + STOP_MARGIN_S)
        actor = ray_options(res)
        spread = replica_bundles(spec)
        if spread is not None:  # the replica in bundle 0, its engine's GPU workers after it
            options["placement_group_bundles"], options["placement_group_strategy"] = spread
            actor["num_gpus"] = 0
        elif res.gpus > 1:  # a multi-GPU replica: one bundle holding all of it, on one node
            options["placement_group_bundles"] = [bundle(res)]
            options["placement_group_strategy"] = "STRICT_PACK"
        options["ray_actor_options"] = actor
        token = self.http.token_sha256 if self.http else None
        return serve.deployment(ReplicaHost, **options).bind(  # type: ignore[attr-defined]
            target, args, spec.name, spec.transport, token, spec.drain_timeout)

    def _target(self, spec: ServiceSpec) -> tuple[str, dict[str, Any]]:
        """The class a replica builds and its arguments: the workflow's class, or for a
        program service the replica that runs the program (services/program.py)."""
        run_dir = str(self.run.path) if self.run else None
        if spec.command is not None:
            return program.TARGET, program.deployment_args(spec, run_dir, self.workflow_dir)
        assert spec.deployment is not None  # only services with replicas are deployed
        args = with_run_dir(spec.args, run_dir) if run_dir else spec.args
        return target_of(spec.deployment), args

    # -- lifecycle ---------------------------------------------------------------------------
    def start_serve(self) -> None:
        """Serve's controller and proxy, and the replica directory, started together: what
        every service needs, so `hpcray up` calls it as soon as it is connected, while the
        other nodes still join. `start` calls it if nobody did."""
        from ray import serve
        from ray.serve.config import ProxyLocation

        from hpcray.services.direct.directory import directory
        from hpcray.services.http_access import proxy_start_options

        if self.directory is not None:
            return
        self.directory = directory(create=True)  # its actor starts while Serve's do
        if self.http:
            # with a token, the proxy checks it before anything else (http_access.TokenGate)
            serve.start(proxy_location=ProxyLocation.HeadOnly,
                        http_options={"host": self.http.bind, "port": self.http.port},
                        **proxy_start_options(self.http))
        else:
            serve.start(proxy_location=ProxyLocation.Disabled)

    def start(self) -> dict[str, ServiceRecord]:
        """Start every service; returns when all are ready, raises ServiceError otherwise.
        The run's OpenAI API is deployed with the first level, not after the last."""
        import ray
        from ray import serve

        self._check_all(ray.nodes())
        self.start_serve()
        assert self.directory is not None  # start_serve made one
        ray.get([self.directory.declare.remote(s.name, s.model_dump(mode="json"),
                                               self._route(s.name))
                 for level in self.levels for s in level])
        ingress = [self._openai_target()] if self.http else []
        for level in self.levels:
            for spec in level:
                if spec.remote:
                    self._probe_remote(spec)
            local = [s for s in level if s.replicas]
            # external scaling: `scale` (and hpcray's autoscaler on the direct path) changes
            # replica counts without a redeploy; Serve refuses it beside its own autoscaler
            targets = [serve.RunTarget(self._deployment(s), name=app_name(s.name),
                                       route_prefix=self._route(s.name),
                                       external_scaler_enabled=not serve_autoscaled(s))
                       for s in local]
            targets += ingress
            ingress = []
            now = time.time()
            for spec in level:
                self.records[spec.name].deploy_at = now
                self.records[spec.name].state = ServiceState.STARTING
            log.info("starting service(s) %s", ", ".join(s.name for s in level))
            if targets:
                serve.run_many(targets, wait_for_ingress_deployment_creation=False,
                               wait_for_applications_running=False)
            self._wait_running(local)
            for spec in level:
                if spec.replicas:
                    self._publish(spec)
                else:
                    self.records[spec.name].state = ServiceState.READY
                    self.records[spec.name].published_at = time.time()
                if spec.lifetime.seconds:
                    timer = threading.Timer(spec.lifetime.seconds, self.expire, args=(spec.name,))
                    timer.daemon = True
                    timer.start()
                if spec.autoscaling is not None and spec.replicas:
                    self._start_autoscaler(spec)
            self._save()
        if self.http:
            self._wait_openai()
        return self.records

    def _check_all(self, nodes: list[dict[str, Any]]) -> None:
        """Every service that cannot start (no node can hold a replica, arguments its class
        does not take), all named in one error before any is deployed."""
        problems = []
        for level in self.levels:
            for spec in level:
                if not spec.replicas:
                    continue
                try:
                    target, args = self._target(spec)
                    check_args(load_class(target), args, spec.name)
                    why = fits(spec, nodes)
                    if why:
                        problems.append(f"service {spec.name!r} cannot be placed: {why}")
                except HpcrayError as exc:
                    problems.append(str(exc))
        if problems:
            raise ServiceError("; ".join(problems))

    def _openai_target(self) -> Any:
        from ray import serve

        from hpcray.services.openai_api import OpenAIIngress

        transports = {name: spec.transport for name, spec in self.specs.items() if spec.replicas}
        token = self.http.token_sha256 if self.http else None
        # a program that speaks plain HTTP is no model: it is not listed
        models = [n for n in self.records
                  if self.specs[n].command is None or self.specs[n].api != "http"]
        ingress = OpenAIIngress.options(  # type: ignore[attr-defined]  # Serve's decorator
            graceful_shutdown_wait_loop_s=DRAIN_POLL_S,
            graceful_shutdown_timeout_s=max((s.drain_timeout for s in self.specs.values()),
                                            default=5.0) + STOP_MARGIN_S)
        return serve.RunTarget(ingress.bind(models, token, transports), name=OPENAI_APP,
                               route_prefix="/v1")

    def _wait_openai(self, timeout: float = 120.0) -> None:
        """The OpenAI API, deployed with the first services, running (it is by now, mostly)."""
        from ray import serve

        from hpcray.services.http_access import gate_closed

        deadline = time.monotonic() + timeout
        while True:
            app = serve.status().applications.get(OPENAI_APP)
            state = str(app.status) if app else "NOT_STARTED"
            if state.endswith("RUNNING"):
                break
            if state.endswith("DEPLOY_FAILED") or time.monotonic() > deadline:
                raise ServiceError(f"the run's OpenAI API did not start: "
                                   f"{_messages(app) if app else 'not deployed'}")
            time.sleep(0.1)
        if self.http and self.http.token_sha256 and not gate_closed(self.http):
            # the proxy is up by now; a Serve started earlier without the gate would not be
            raise ServiceError("Serve's HTTP proxy answers without the run's token (was "
                               "Serve already running?); not serving the run's API")
        log.info("OpenAI-compatible API at %s", self.openai_url)

    def _probe_remote(self, spec: ServiceSpec) -> None:
        """Each remote endpoint answers its probe (and lists the model) before tasks start;
        one that does not fails the run or, with on_unreachable: warn, is left to the
        handles' probes to bring in."""
        from hpcray.remote import RemoteError, endpoint_for

        for remote in spec.remote:
            endpoint = endpoint_for(remote)
            try:
                took = endpoint.probe()
                log.info("service %s: remote endpoint %s (%s, %s) answers in %.1f ms",
                         spec.name, remote.label, remote.url, remote.model, took * 1e3)
            except RemoteError as exc:
                if spec.on_unreachable == "warn":
                    log.warning("service %s: %s", spec.name, exc)
                    continue
                record = self.records[spec.name]
                record.state, record.error = ServiceState.FAILED, str(exc)
                self._save()
                raise ServiceError(f"service {spec.name!r}: {exc}") from None
            finally:
                endpoint.close()

    def _wait_running(self, level: list[ServiceSpec]) -> None:
        from ray import serve

        pending = {s.name: s for s in level}
        # a program service's replica ends its own wait at readiness_timeout with the
        # program's output; this one only catches a replica that never began waiting
        deadline = {s.name: time.monotonic() + (
            (s.restarts + 1) * (s.readiness_timeout + s.stop_timeout) + PROGRAM_START_MARGIN_S
            if s.command else s.readiness_timeout) for s in level}
        while pending:
            status = serve.status().applications
            for name in list(pending):
                app = status.get(app_name(name))
                record = self.records[name]
                state = str(app.status) if app else "NOT_STARTED"
                if state.endswith("RUNNING"):
                    record.running_at = time.time()
                    record.state = ServiceState.RUNNING
                    del pending[name]
                elif state.endswith("DEPLOY_FAILED") or state.endswith("UNHEALTHY"):
                    detail = _messages(app)
                    record.state, record.error = ServiceState.FAILED, detail
                    self._save()
                    raise ServiceError(f"service {name!r} failed to start: {detail}")
                elif time.monotonic() > deadline[name]:
                    detail = _messages(app) if app else "not deployed"
                    record.state, record.error = ServiceState.FAILED, f"not ready: {detail}"
                    self._save()
                    raise ServiceError(
                        f"service {name!r} not ready within {pending[name].readiness_timeout:.0f}s"
                        f" (readiness_timeout): {detail}")
            time.sleep(0.2)

    def _publish(self, spec: ServiceSpec) -> None:
        """First successful call per replica, over the service's own transport (BT publish)."""
        record = self.records[spec.name]
        seen = (self._published_direct if spec.transport == "direct" else
                self._published_serve)(spec)
        record.published_at = time.time()
        record.state = ServiceState.READY
        for info in seen.values():
            record.bt.append(ReplicaBT(
                service=spec.name, replica=info["replica"], node=info["node"],
                launch=info["created"] - (record.deploy_at or info["created"]),
                init=info["ready"] - info["created"],
                publish=info["published"] - max(info["ready"], record.running_at or 0),
                url=info.get("url")))
        if len(seen) < spec.replicas:
            log.warning("service %s: only %d of %d replicas answered", spec.name, len(seen),
                        spec.replicas)
        log.info("service %s ready: %d replica(s) over %s", spec.name, len(seen), spec.transport)

    def _published_serve(self, spec: ServiceSpec) -> dict[str, dict[str, Any]]:
        from hpcray.services.handle import ServiceHandle

        handle = ServiceHandle(spec.name, transport="serve")
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + spec.readiness_timeout
        while len(seen) < spec.replicas and time.monotonic() < deadline:
            responses = [handle.raw("bootstrap") for _ in range(2 * spec.replicas)]
            for response in responses:
                info = response.result()
                seen.setdefault(info["replica"], {**info, "published": time.time()})
        return seen

    def _published_direct(self, spec: ServiceSpec) -> dict[str, dict[str, Any]]:
        """Each replica published its socket before Serve called it running; ping each."""
        from hpcray.services.direct.client import DirectClient

        client = DirectClient(spec.name, directory=self.directory, watch=False)
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + spec.readiness_timeout
        try:
            while len(seen) < spec.replicas and time.monotonic() < deadline:
                for replica in client.replicas:
                    if replica not in seen:
                        seen[replica] = {**client.ping(replica), "published": time.time()}
                if len(seen) < spec.replicas:
                    time.sleep(0.1)
                    client.refresh()
        finally:
            client.close()
        return seen

    def _route(self, name: str) -> str | None:
        return f"/{name}" if self.http else None

    def scale(self, name: str, replicas: int) -> None:
        """Change a running service's replica count (see `scale`)."""
        self.specs[name] = scale(name, replicas, directory=self.directory)

    def _start_autoscaler(self, spec: ServiceSpec) -> None:
        """The service's autoscaling thread: hpcray's on the direct path, a recorder of
        Serve's count on the Serve path (services/autoscale.py)."""
        from hpcray.services.autoscale import Autoscaler

        auto = spec.autoscaling
        assert auto is not None  # only autoscaled services get one
        run_dir = self.run.path if self.run else env.run_dir()
        record = self.records[spec.name]
        record.autoscaling = f"{auto.min_replicas}-{auto.max_replicas}"

        def changed(target: int, live: int) -> None:
            record.target, record.live = target, live
            self._save()

        scaler = Autoscaler(spec, self.directory, lambda n: self.scale(spec.name, n), run_dir,
                            changed)
        self.autoscalers[spec.name] = scaler
        scaler.start()

    def autoscaling(self, name: str) -> list[dict[str, Any]]:
        """The autoscaling records of a service this manager started, oldest first (the
        same as <run>/metrics/autoscale/<name>.jsonl, also without a run directory)."""
        scaler = self.autoscalers.get(name)
        return list(scaler.records) if scaler else []

    def _stop_autoscalers(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else list(self.autoscalers):
            scaler = self.autoscalers.pop(name, None)
            if scaler is not None:
                scaler.stop()

    def expire(self, name: str) -> None:
        """End of a service's lifetime: delete it; callers get an explicit error after."""
        from ray import serve

        record = self.records[name]
        if record.state != ServiceState.READY:
            return
        self._stop_autoscalers([name])
        log.info("service %s reached the end of its lifetime: deleting it", name)
        serve.delete(app_name(name))
        record.state = ServiceState.EXPIRED
        self._save()

    def _url(self, path: str) -> str | None:
        return f"http://{host_port(self.http.host, self.http.port)}/{path}" if self.http else None

    def service_url(self, name: str) -> str | None:
        """Where a service answers over HTTP (known before it starts), or None without."""
        return self._url(name)

    @property
    def openai_url(self) -> str | None:
        return self._url("v1")

    def endpoints(self) -> dict[str, Any]:
        """What `endpoints.json` says: how to reach each service without Python and Ray."""
        out: dict[str, Any] = {}
        for name, record in self.records.items():
            entry: dict[str, Any] = {"state": record.state, "replicas": record.replicas,
                                     "handle": f"hpcray.service({name!r})"}
            if self.http:
                entry["http"] = self.service_url(name)
            if self.specs[name].command is not None:  # where each program listens
                entry["program"] = {"api": self.specs[name].api, "replicas": [
                    {"replica": bt.replica, "node": bt.node, "url": bt.url} for bt in record.bt]}
            if self.specs[name].transport == "direct" and self.directory is not None:
                import ray

                table = ray.get(self.directory.describe.remote(name))["replicas"]
                entry["direct"] = {
                    "protocol": "HPR1 over ZeroMQ (docs/direct-protocol.md)",
                    "replicas": [{k: r[k] for k in ("replica", "node", "address")}
                                 for r in table],
                    # the password is the run's token file: named here, never copied
                    "auth": {"mechanism": "PLAIN", "username": "hpcray",
                             "password_file": os.environ.get(env.RAY_AUTH_TOKEN_PATH)},
                }
            if self.specs[name].remote:  # where they are; the key stays in its variable
                entry["remote"] = [{"name": r.label, "url": r.url, "kind": r.kind,
                                    "model": r.model, "api_key_env": r.api_key_env}
                                   for r in self.specs[name].remote]
            out[name] = entry
        auth = ({"scheme": "Bearer", "token_file": self.http.token_file}
                if self.http and self.http.token_sha256 else None)
        # the run's Prometheus endpoint, served by the head's node agent (docs/metrics.md)
        metrics = read_json(self.run.head, {}).get("metrics_url") if self.run else None
        return {"services": out, "openai": self.openai_url, "http_auth": auth,
                "metrics": metrics}

    def stop(self, shutdown: bool = True, wait: bool = True) -> None:
        """Delete this manager's applications, all at once; with `shutdown`, Serve too (the
        run's end). A driver that started services of its own passes False: the workflow's
        keep running. `wait=False` does not wait for replicas to stop (after a lost node,
        Serve would wait out its graceful timeout on replicas that will never answer)."""
        from ray import serve

        self._stop_autoscalers()  # nothing scales what is being deleted
        apps = [OPENAI_APP] if self.http else []
        apps += [app_name(n) for n, r in self.records.items() if r.state not in (
            ServiceState.PENDING, ServiceState.EXPIRED)]
        for app in apps:  # each delete only asks the controller; the replicas stop together
            try:
                delete_app(app, wait=False)
            except Exception as exc:  # noqa: BLE001 - teardown goes on; node sweep follows
                log.warning("deleting %s: %s", app, exc)
        for record in self.records.values():
            if record.state not in (ServiceState.PENDING, ServiceState.EXPIRED):
                record.state = ServiceState.STOPPED
        if wait:  # each replica's own drain and stop, not serve.shutdown's 30 s at most
            self._wait_deleted(set(apps))
        if shutdown:
            try:
                serve.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("serve shutdown: %s", exc)
        if self.directory is not None and shutdown:
            import ray

            try:
                ray.kill(self.directory)
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping the replica directory: %s", exc)
            self.directory = None
        self._save()

    def _wait_deleted(self, apps: set[str]) -> None:
        """Until none of `apps` is left (or the longest drain of them has passed and more)."""
        from ray import serve

        longest = max((s.drain_timeout + STOP_MARGIN_S + (s.stop_timeout if s.command else 0)
                       for s in self.specs.values()), default=0.0) + 30
        deadline = time.monotonic() + longest
        try:
            while time.monotonic() < deadline:
                if not apps & set(serve.status().applications):
                    return
                time.sleep(0.1)
            log.warning("applications still stopping after %.0fs: %s", longest,
                        ", ".join(sorted(apps & set(serve.status().applications))))
        except Exception as exc:  # noqa: BLE001 - teardown goes on; node sweep follows
            log.warning("waiting for the services to stop: %s", exc)

    def _save(self) -> None:
        if self.run is None:
            return
        with self._save_lock:
            self._save_locked(self.run)

    def _save_locked(self, run: RunDir) -> None:
        data = {name: asdict(r) for name, r in self.records.items()}
        (run.path / "metrics").mkdir(exist_ok=True)
        write_json_atomic(run.path / "metrics" / "services.json", data)
        run.update(services={n: {"state": r.state, "replicas": r.replicas,
                                      "error": r.error, **r.scaling()}
                                  for n, r in self.records.items()})


def scale(service: str, replicas: int, *, directory: Any = None) -> ServiceSpec:
    """Change a running service's replica count from any process of the run. Existing
    replicas keep running (no redeploy); handles pick up the new ones (direct path: within
    one directory round trip of each replica's start)."""
    import ray

    from hpcray.services.direct.directory import directory as find_directory

    found = directory or find_directory()
    declared = ray.get(found.declared.remote(service)) if found is not None else {"spec": None}
    if declared["spec"] is None:
        raise ServiceError(f"no running service {service!r} to scale")
    if replicas < 1:
        raise ServiceError(f"service {service!r}: replicas must be at least 1, got {replicas}")
    auto = declared["spec"].get("autoscaling")
    if auto is not None and declared["spec"]["transport"] == "serve":
        raise ServiceError(f"service {service!r} is scaled by Serve's autoscaler (autoscaling "
                           "on transport: serve); its count follows the load between "
                           f"{auto['min_replicas']} and {auto['max_replicas']}")
    if auto is not None and not auto["min_replicas"] <= replicas <= auto["max_replicas"]:
        raise ServiceError(f"service {service!r}: {replicas} replicas is outside its "
                           f"autoscaling bounds [{auto['min_replicas']}, "
                           f"{auto['max_replicas']}]")
    spec = ServiceSpec.model_validate({**declared["spec"], "replicas": replicas})
    set_replica_count(app_name(service), service, replicas)
    ray.get(found.declare.remote(service, spec.model_dump(mode="json"),
                                 declared["route_prefix"]))
    log.info("service %s scaled to %d replica(s)", service, replicas)
    return spec


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _messages(app) -> str:
    """One line for the user: the replica's own exception (`FileNotFoundError: ...`) when
    Serve's messages carry its traceback, else the messages themselves. The whole text goes
    to the log; colour codes are removed from both."""
    parts = [app.message] if app.message else []
    for dep in app.deployments.values():
        if dep.message:
            parts.append(dep.message)
    full = _ANSI_ESCAPE.sub("", "\n".join(parts)) or str(app.status)
    summary = failure_summary(full)
    if summary != full:
        log.error("a service failed; as Serve reports it:\n%s", full)
    return summary


def failure_summary(text: str) -> str:
    """The exception line(s) after a traceback's last frame, as one line ('FileNotFoundError:
    no model directory at ...'); text without a traceback, its lines joined."""
    lines = [line.rstrip() for line in text.splitlines()]
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    tail = lines[frames[-1] + 1:] if frames else lines
    if frames:  # the frame's source line and its ^^^ markers are indented
        while tail and (not tail[0] or tail[0][0].isspace()):
            tail = tail[1:]
    return " ".join(line.strip() for line in tail if line.strip()) or " ".join(
        line.strip() for line in lines if line.strip())

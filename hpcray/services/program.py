"""Any program as a service: a server (vLLM's, Ollama, llama.cpp, Triton, a site's container)
run by a Serve replica, one program per replica.

Why a Serve replica holds each program rather than a launcher of its own: placement (the
service's `resources`, GPUs made visible by Ray the way the vendor expects), health checks,
scaling, the direct path, the run's OpenAI API, BT records and teardown are then the same code
as for class services. The replica starts the program on a port from its node's own port
block, waits for the readiness probe, and forwards calls: openai and ollama programs answer
the handle's generate/chat/embed (and their streams) through the same adapters as remote
endpoints; http programs answer `request`. The program's output goes to
`logs/services/<service>-<replica>.log` in the run directory."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx

from hpcray import env
from hpcray.errors import ServiceError, ServiceRequestError
from hpcray.remote.base import RemoteEndpoint
from hpcray.remote.ollama import OllamaEndpoint
from hpcray.remote.openai import OpenAIEndpoint
from hpcray.runtime import guard
from hpcray.runtime.containers import GPU_VARS
from hpcray.runtime.network import host_port
from hpcray.runtime.ports import claim_program_port, release_program_port
from hpcray.services.engine_loop import EngineLoop
from hpcray.services.reported import ServerTimed
from hpcray.spec.services import ProbeSpec, ServiceSpec

log = logging.getLogger("hpcray.services.program")

TARGET = "hpcray.services.program:ProgramService"
TAIL_LINES = 20
LIVENESS_FAILURES = 3  # consecutive failed liveness probes before a restart (Serve's own count)
REQUEST_TIMEOUT_S = 600.0  # one forwarded call (an LLM's long generation included)
_DEFAULT_READY = {"openai": ProbeSpec(http="/v1/models"), "ollama": ProbeSpec(http="/api/tags"),
                  "http": ProbeSpec(tcp=True)}
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


def deployment_args(spec: ServiceSpec, run_dir: str | None,
                    workflow_dir: str | None) -> dict[str, Any]:
    """What the replica is built with: the service's own entry (it is re-read there)."""
    return {"spec": spec.model_dump(mode="json"), "run_dir": run_dir,
            "workflow_dir": workflow_dir}


def readiness_probe(spec: ServiceSpec) -> ProbeSpec:
    return spec.readiness or _DEFAULT_READY[spec.api]


def liveness_probe(spec: ServiceSpec) -> ProbeSpec | None:
    """The liveness probe; None: only that the program runs (an output pattern is seen once)."""
    if spec.liveness is not None:
        return spec.liveness
    ready = readiness_probe(spec)
    return None if ready.output else ready


def fill(arg: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), arg)


class ProgramProcess:
    """The program (through the guard) and a thread copying its output to the log, keeping
    the last lines for errors and watching for the readiness pattern."""

    def __init__(self, argv: list[str], environ: dict[str, str], log_path: Path,
                 pattern: str | None, grace: float, cwd: str | None, shown: str) -> None:
        self.argv, self.grace = argv, grace
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.announced = threading.Event()
        self._pattern = re.compile(pattern) if pattern else None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed in stop
        # `shown`: the program's own command, without the container flags that carry values
        self._write(f"--- hpcray: starting {shown} at {time.strftime('%F %T')}\n")
        # -I: the guard imports nothing from its own directory or the user's site
        guarded = [sys.executable, "-I", guard.__file__, str(os.getpid()), str(grace), "--",
                   *argv]
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - an argv list, no shell
                guarded, env=environ, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                text=True, errors="replace")
        except BaseException:
            self._log.close()
            raise
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="hpcray-program-output")
        self._reader.start()

    def _write(self, text: str) -> None:
        """A full disk or a closed log must not stop the reading: a pipe nobody reads
        blocks the program."""
        with contextlib.suppress(ValueError, OSError):
            self._log.write(text)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._write(line)
            self.tail.append(line.rstrip("\n"))
            if self._pattern is not None and not self.announced.is_set() \
                    and self._pattern.search(line):
                self.announced.set()
        self._write(f"--- hpcray: the program exited with status {self.proc.wait()}\n")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    def last_lines(self) -> str:
        return "\n".join(self.tail) or "(no output)"

    def stop(self) -> None:
        """TERM the guard's group (the program with it); the guard KILLs what is left after
        the grace; KILL the group ourselves if even the guard does not end."""
        for sig, wait in ((signal.SIGTERM, self.grace + 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reader.join(timeout=5)
        with contextlib.suppress(ValueError, OSError):
            if self.proc.stdout is not None and not self._reader.is_alive():
                self.proc.stdout.close()
            self._log.close()


class ProgramService:
    """One program per replica; see the module's docstring."""

    max_ongoing_requests = 256  # the program queues and batches; the replica only forwards

    def __init__(self, spec: dict[str, Any], run_dir: str | None = None,
                 workflow_dir: str | None = None) -> None:
        self.spec = ServiceSpec.model_validate(spec)
        self.replica = _replica_id()
        self.host = os.environ.get(env.NODE_IP) or "127.0.0.1"
        self.run_dir = run_dir or os.environ.get(env.RUN_DIR)
        self.workflow_dir = workflow_dir
        self.port = claim_program_port(f"{self.spec.name}/{self.replica}")
        self.url = f"http://{host_port(self.host, self.port)}"
        logs = Path(self.run_dir) / "logs" / "services" if self.run_dir else Path(
            os.environ.get(env.TMPDIR, "/tmp"))
        self.log_path = logs / f"{self.spec.name}-{self.replica}.log"
        self.restarts_left = self.spec.restarts
        self.restarted = 0
        self.restarting = False  # the monitor is starting the program again
        self.liveness_failures = 0
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._loop = EngineLoop(f"hpcray-program-{self.spec.name}")
        self.event_loop = self._loop.loop  # the direct server runs requests here
        self.process: ProgramProcess | None = None
        self.endpoint: RemoteEndpoint | None = None
        self._http: Any = None  # an aiohttp.ClientSession, made on the replica's loop
        try:
            self._start()
            self._wait_ready()
            self._connect()
        except BaseException:
            self.shutdown()
            raise
        self._monitor = threading.Thread(target=self._supervise, daemon=True,
                                         name="hpcray-program-monitor")
        self._monitor.start()

    # -- starting -------------------------------------------------------------------------------
    def _values(self) -> dict[str, str]:
        return {"port": str(self.port), "host": self.host, "run_dir": self.run_dir or "",
                "replica": self.replica, "model": self.spec.model or ""}

    def program_argv(self) -> list[str]:
        assert self.spec.command is not None  # a program service has one (spec)
        return [fill(a, self._values()) for a in self.spec.command]

    def program_env(self) -> dict[str, str]:
        """The service's `env`, placeholders filled (OLLAMA_HOST: "{host}:{port}")."""
        return {k: fill(v, self._values()) for k, v in self.spec.env.items()}

    def argv(self) -> list[str]:
        argv = self.program_argv()
        if self.spec.container is None:
            return argv
        from hpcray.runtime.containers import container_argv

        binds = [d for d in (self.run_dir, self.workflow_dir) if d]
        inside = {k: os.environ[k] for k in GPU_VARS if k in os.environ}
        inside.update({k: os.environ[k] for k in (env.RUN_DIR, env.RAY_MARKER)
                       if k in os.environ})
        inside.update(self.program_env())
        return container_argv(self.spec.container, argv, binds=binds, env=inside,
                              workdir=self.workflow_dir)

    def _environ(self) -> dict[str, str]:
        environ = dict(os.environ)
        environ.setdefault("PYTHONUNBUFFERED", "1")  # a Python server's lines arrive at once
        environ.update(self.program_env())
        return environ

    def _start(self) -> None:
        ready = readiness_probe(self.spec)
        shown = repr(self.program_argv())
        if self.spec.container is not None:
            shown += (f" in the {self.spec.container.runtime} image "
                      f"{self.spec.container.image}")
        self.process = ProgramProcess(self.argv(), self._environ(), self.log_path,
                                      ready.output, self.spec.stop_timeout,
                                      self.workflow_dir or self.run_dir, shown)
        self.started = time.time()
        log.info("service %s: replica %s started %s (pid %d) on port %d", self.spec.name,
                 self.replica, self.spec.command[0] if self.spec.command else "?",
                 self.process.pid, self.port)

    def _wait_ready(self) -> None:
        """Until the readiness probe passes; the program exiting or the readiness timeout
        ends the wait with an error that shows the end of its output."""
        assert self.process is not None
        probe = readiness_probe(self.spec)
        deadline = time.monotonic() + self.spec.readiness_timeout
        while not self._stopping.is_set():
            code = self.process.exited()
            if code is not None:
                self.process.stop()  # its last lines read, which usually say why
                raise ServiceError(
                    f"service {self.spec.name!r}: the program exited with status {code} "
                    f"before it was ready; the end of its output ({self.log_path}):\n"
                    f"{self.process.last_lines()}")
            if self._passes(probe, self.process, timeout=2.0):
                self.ready_at = time.time()
                return
            if time.monotonic() > deadline:
                self.process.stop()
                raise ServiceError(
                    f"service {self.spec.name!r}: not ready within "
                    f"{self.spec.readiness_timeout:g}s (readiness_timeout, probe "
                    f"{_describe(probe)}); the end of its output ({self.log_path}):\n"
                    f"{self.process.last_lines()}")
            time.sleep(0.1)
        raise ServiceError(f"service {self.spec.name!r}: stopped while starting")

    def _passes(self, probe: ProbeSpec, process: ProgramProcess, timeout: float) -> bool:
        if probe.output is not None:
            return process.announced.is_set()
        if probe.tcp:
            try:
                with socket.create_connection((self.host, self.port), timeout=timeout):
                    return True
            except OSError:
                return False
        try:
            reply = httpx.get(f"{self.url}{probe.http}", timeout=timeout, trust_env=False)
        except httpx.HTTPError:
            return False
        return 200 <= reply.status_code < 300

    def _connect(self) -> None:
        """The client the replica forwards calls with; for an OpenAI server with no `model`
        given, the first model it lists."""
        api = self.spec.api
        label = f"{self.spec.name}/{self.replica}"
        if api == "openai":
            model = self.spec.model or _first_model(f"{self.url}/v1/models")
            self.endpoint = OpenAIEndpoint(label, f"{self.url}/v1", model, max_concurrency=256,
                                           timeout=REQUEST_TIMEOUT_S, trust_env=False)
        elif api == "ollama":
            assert self.spec.model is not None  # the spec requires it
            self.endpoint = OllamaEndpoint(label, self.url, self.spec.model,
                                           max_concurrency=256, timeout=REQUEST_TIMEOUT_S,
                                           trust_env=False)

    # -- supervision ----------------------------------------------------------------------------
    def _supervise(self) -> None:
        """Restart the program when it exits, while restarts are left; when none are, the
        replica reports itself unhealthy and Serve replaces it. Nothing here holds up a
        stop: the wait for readiness ends when the replica is stopping."""
        try:
            while not self._stopping.is_set():
                process = self.process
                if process is None:
                    return
                code = process.proc.wait()
                if self._stopping.is_set():
                    return
                if self.restarts_left <= 0:
                    log.error("service %s: replica %s's program exited with status %s; no "
                              "restarts left", self.spec.name, self.replica, code)
                    return
                self.restarts_left -= 1
                self.restarted += 1
                self.restarting = True
                log.warning("service %s: replica %s's program exited with status %s; "
                            "restarting it (%d restart(s) left)", self.spec.name,
                            self.replica, code, self.restarts_left)
                process.stop()
                try:
                    self._start()
                    self._wait_ready()
                except Exception as exc:  # noqa: BLE001 - logged; the loop decides again
                    log.error("service %s: replica %s: %s", self.spec.name, self.replica, exc)
                finally:
                    self.restarting = False
                    self.liveness_failures = 0
        except Exception:  # the health check sees the monitor gone and fails the replica
            log.exception("service %s: replica %s: the program's monitor stopped",
                          self.spec.name, self.replica)

    def check_health(self) -> None:
        """Serve's periodic check: the program runs (or is being restarted) and passes its
        liveness probe; LIVENESS_FAILURES failures in a row restart it while restarts are
        left. Raising makes Serve replace the replica."""
        process = self.process
        if process is None or self._monitor is None or not self._monitor.is_alive():
            raise RuntimeError(f"service {self.spec.name!r}: the program is not supervised "
                               f"any more; the end of its output:\n"
                               f"{process.last_lines() if process else ''}")
        if self.restarting or process.exited() is not None:
            return  # the monitor is on it (it ends when no restarts are left: see above)
        probe = liveness_probe(self.spec)
        if probe is None or self._passes(probe, process,
                                         timeout=self.spec.health_check_timeout / 2):
            self.liveness_failures = 0
            return
        self.liveness_failures += 1
        if self.liveness_failures < LIVENESS_FAILURES:
            return
        if self.restarts_left > 0:
            log.warning("service %s: replica %s failed its liveness probe (%s) %d times: "
                        "restarting it", self.spec.name, self.replica, _describe(probe),
                        self.liveness_failures)
            self.liveness_failures = 0
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the monitor starts it again
            return
        raise RuntimeError(f"service {self.spec.name!r}: the program fails its liveness "
                           f"probe ({_describe(probe)})")

    def bootstrap(self) -> dict[str, Any]:
        """Where the program listens (published in endpoints.json) and its restarts."""
        return {"url": self.url,
                "program_pid": self.process.pid if self.process else None,
                "restarted": self.restarted, "log": str(self.log_path)}

    def shutdown(self) -> None:
        """The replica's end: the program's whole tree, then its port."""
        self._stopping.set()
        process = self.process
        if process is not None:
            process.stop()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            if self.process is not None and self.process is not process:
                self.process.stop()  # one the monitor started meanwhile
        endpoint, http = self.endpoint, self._http
        if endpoint is not None or http is not None:
            with contextlib.suppress(Exception):
                self._loop.call(_close(endpoint, http), timeout=5)
            if endpoint is not None:
                endpoint.close()
        self._loop.stop()
        release_program_port(self.port)

    # -- calls ----------------------------------------------------------------------------------
    def _llm(self, method: str) -> RemoteEndpoint:
        if self.endpoint is None:
            raise ServiceRequestError(
                f"service {self.spec.name!r} speaks {self.spec.api}; call request("
                "{'method': ..., 'path': ..., 'json': ...}), not " + method, field="method")
        return self.endpoint

    async def _forward(self, method: str, payload: Any) -> Any:
        """One call to the server; a server that reports its model's time (Ollama) splits
        the round trip with it, else the whole call is timed as inference."""
        endpoint = self._llm(method)
        reply = await self._loop.run(lambda: endpoint.acall(method, payload))
        if reply.server_reported:
            return ServerTimed(reply.result, reply.inference_s)
        return reply.result

    async def generate(self, payload: Any) -> Any:
        return await self._forward("generate", payload)

    async def chat(self, payload: Any) -> Any:
        return await self._forward("chat", payload)

    async def embed(self, payload: Any) -> Any:
        return await self._forward("embed", payload)

    async def generate_stream(self, payload: Any):
        endpoint = self._llm("generate")
        async for text in self._loop.iterate(lambda: endpoint.astream("generate", payload)):
            yield {"index": 0, "text": text, "finish_reason": None}

    async def chat_stream(self, payload: Any):
        endpoint = self._llm("chat")
        async for text in self._loop.iterate(lambda: endpoint.astream("chat", payload)):
            yield {"index": 0, "text": text, "finish_reason": None}

    async def request(self, payload: Any) -> dict[str, Any]:
        """One HTTP exchange with the program: {"method", "path", "json" | "body", "params",
        "headers"} -> {"status", "json" | "text", "content_type"}. A 5xx is an error."""
        method, path, kwargs = _http_request(payload)
        return await self._loop.run(lambda: self._exchange(method, path, kwargs))

    async def _exchange(self, method: str, path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        import aiohttp  # Ray Serve's own HTTP client library; about twice httpx's rate here

        if self._http is None:
            self._http = aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=600))
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        try:
            async with self._http.request(method, path, **kwargs) as reply:
                body = await reply.read()
                status, kind = reply.status, reply.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServiceError(f"service {self.spec.name!r} (replica {self.replica}, "
                               f"{self.url}): {type(exc).__name__}: {exc}") from None
        text = body.decode("utf-8", errors="replace")
        if status >= 500:
            raise ServiceError(f"service {self.spec.name!r} (replica {self.replica}): HTTP "
                               f"{status}: {text[:200]}")
        out: dict[str, Any] = {"status": status, "content_type": kind}
        if "json" in kind:
            try:
                out["json"] = json.loads(text)
                return out
            except ValueError:
                pass
        out["text"] = text
        return out


def _http_request(payload: Any) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(payload, dict):
        raise ServiceRequestError("payload must be a mapping {'method', 'path', 'json'...}",
                                  field="payload")
    method = str(payload.get("method", "POST" if "json" in payload or "body" in payload
                             else "GET")).upper()
    if method not in _HTTP_METHODS:
        raise ServiceRequestError(f"method {method!r} is not one of {', '.join(_HTTP_METHODS)}",
                                  field="payload.method")
    path = payload.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ServiceRequestError(f"path {path!r} must start with /", field="payload.path")
    kwargs: dict[str, Any] = {}
    if "json" in payload:
        kwargs["json"] = payload["json"]
    elif "body" in payload:
        kwargs["content"] = str(payload["body"])
    for key in ("params", "headers"):
        if payload.get(key) is not None:
            if not isinstance(payload[key], dict):
                raise ServiceRequestError(f"{key} must be a mapping", field=f"payload.{key}")
            kwargs[key] = {str(k): str(v) for k, v in payload[key].items()}
    return method, path, kwargs


async def _close(endpoint: RemoteEndpoint | None, http: Any) -> None:
    if endpoint is not None:
        await endpoint.aclose()
    if http is not None:
        await http.close()


def _first_model(url: str) -> str:
    try:
        models = httpx.get(url, timeout=30, trust_env=False).json().get("data") or []
        return str(models[0]["id"])
    except (httpx.HTTPError, ValueError, AttributeError, IndexError, KeyError, TypeError):
        raise ServiceError(f"{url} lists no model; give the service a 'model'") from None


def _describe(probe: ProbeSpec) -> str:
    if probe.http is not None:
        return f"HTTP GET {probe.http}"
    if probe.tcp:
        return "TCP connect"
    return f"output matching {probe.output!r}"


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a Serve replica (a test): a name of our own
        return os.urandom(4).hex()

"""The `services:` section: model services run as Ray Serve deployments."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hpcray import plugins
from hpcray.spec.base import ENV_NAME
from hpcray.spec.containers import ContainerSpec
from hpcray.spec.models import StrictModel
from hpcray.spec.resources import Resources

DEFAULT_MAX_ONGOING = 16  # a replica's requests at once on the Serve path, unless said
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,39}$")


class LifetimeSpec(StrictModel):
    """Until the workflow ends (default), or at most `seconds` after the service is ready."""

    seconds: float | None = Field(None, gt=0)


class AutoscalingSpec(StrictModel):
    """Replicas follow the load between `min_replicas` and `max_replicas`: Serve's own
    autoscaler on the Serve path, hpcray's (services/autoscale.py) on the direct path, where
    requests never pass Serve's router. Defaults are Serve's."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 only on the Serve "
                              "path (a direct client needs a replica to send to).")
    max_replicas: int = Field(ge=1, description="Most replicas; must fit the allocation.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests queued or running per replica that the scaling "
        "aims at: replicas = ceil(ongoing requests / this).")
    upscale_delay: float = Field(30.0, ge=0, description="Seconds the load must ask for "
                                 "more replicas before they are added.")
    downscale_delay: float = Field(600.0, ge=0, description="Seconds the load must ask for "
                                   "fewer replicas before any is removed.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas "
                             f"({self.min_replicas})")
        return self


class RemoteEndpointSpec(StrictModel):
    """A model server outside the allocation, served through the same handle."""

    url: str = Field(description="http(s) base URL: '.../v1' for OpenAI-compatible servers, "
                                 "the server root for Ollama.")
    kind: str = Field(
        description="openai: OpenAI-compatible API; ollama: Ollama's native API; or another "
                    "installed kind (an hpcray.remote_kinds entry point)")
    model: str = Field(min_length=1, description="The model name the endpoint serves.")
    name: str | None = Field(None, description="Shown in responses and errors; default: host.")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable that holds the API key (the key "
                          "itself never goes into the file).")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at most.")
    weight: float = Field(1.0, gt=0, description="Share of traffic relative to the others.")
    timeout: float = Field(120, gt=0, description="Seconds per request.")

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        known = plugins.names(plugins.REMOTE_KINDS)
        if value not in known:
            raise ValueError(f"unknown kind {value!r}; installed: {', '.join(sorted(known))}")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("put credentials in an environment variable (api_key_env), not "
                             "in the URL")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            # not echoed: a key pasted here by mistake must not reach a log
            raise ValueError("this is not an environment variable name (letters, digits, _); "
                             "put the key itself in that variable, not in the file")
        return value

    @property
    def label(self) -> str:
        from urllib.parse import urlsplit

        return self.name or f"{urlsplit(self.url).hostname}:{urlsplit(self.url).port or ''}"


class ProbeSpec(StrictModel):
    """How hpcray knows a program service is up (readiness) and still well (liveness): exactly
    one of an HTTP path answering 2xx, a TCP connect to its port, or a line of its output
    matching a pattern (readiness only; the paper's way: the program announces itself)."""

    http: str | None = Field(None, description="Path on the program's port, e.g. /health.")
    tcp: bool = Field(False, description="A TCP connect to the program's port.")
    output: str | None = Field(None, description="Regular expression; the first line of the "
                               "program's output (stdout or stderr) matching it.")

    @model_validator(mode="after")
    def _one(self) -> ProbeSpec:
        given = [k for k in ("http", "tcp", "output") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of http (a path), tcp (true) or output (a "
                             f"pattern); got {', '.join(given) or 'none'}")
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError(f"http: {self.http!r} must be a path starting with /")
        if self.output is not None:
            try:
                re.compile(self.output)
            except re.error as exc:
                raise ValueError(f"output: {self.output!r} is not a regular expression: "
                                 f"{exc}") from None
        return self


_PLACEHOLDER = re.compile(r"\{([a-z_]*)\}")
COMMAND_PLACEHOLDERS = ("port", "host", "run_dir", "replica", "model")


class ServiceSpec(StrictModel):
    name: str
    deployment: str | None = Field(None, description="Short name from deployments/ or "
                                   "'module:Class'; a Python class as the service.")
    command: list[str] | None = Field(
        None, description="A program as the service (no shell): its executable and arguments, "
        "with {port}, {host}, {run_dir}, {replica} and {model} filled in per replica.")
    api: Literal["openai", "ollama", "http"] = Field(
        "http", description="What a program service speaks: openai and ollama join the "
        "handle's generate/chat/embed and the run's OpenAI API; http is published by URL and "
        "called with handle.request({...}).")
    model: str | None = Field(None, description="openai/ollama program services: the model "
                              "name the server serves; default: the first it lists.")
    env: dict[str, str] = Field(default_factory=dict,
                                description="Program services: extra environment variables; "
                                "the same placeholders as `command` are filled in.")
    readiness: ProbeSpec | None = Field(
        None, description="Program services: when a replica is up; default an HTTP probe of "
        "the API's model list (openai, ollama) or a TCP connect (http).")
    liveness: ProbeSpec | None = Field(
        None, description="Program services: checked every health_check_period; default the "
        "readiness probe unless that reads output (then: the process is alive).")
    restarts: int = Field(0, ge=0, description="Program services: times a replica restarts "
                          "its program after it exits or fails its liveness probe.")
    stop_timeout: float = Field(10, gt=0, description="Program services: seconds between "
                                "SIGTERM and SIGKILL of the program's process group.")
    container: ContainerSpec | None = Field(
        None, description="Program services: run the program in this image.")
    drain_timeout: float = Field(5, ge=0, description="Seconds a stopping replica (run end, "
                                 "cancel, lifetime, scale-down) gives its in-flight requests "
                                 "before it is stopped; an idle replica stops at once.")
    args: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")
    replicas: int = Field(1, ge=0, description="Local replicas; 0 with `remote` only. With "
                          "`autoscaling`: the starting count (default its min_replicas).")
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Replicas follow the load between min_replicas and max_replicas "
        "(docs/services.md#autoscaling).")
    remote: list[RemoteEndpointSpec] = Field(
        default_factory=list, description="Endpoints outside the allocation, balanced with "
                                          "the local replicas.")
    on_unreachable: Literal["fail", "warn"] = Field(
        "fail", description="A remote endpoint that does not answer its probe at start: fail "
                            "the run, or warn and bring it in when it answers.")
    resources: Resources = Field(default_factory=Resources)
    readiness_timeout: float = Field(300, gt=0, description="Seconds until all replicas run.")
    health_check_period: float = Field(10, gt=0)
    health_check_timeout: float = Field(30, gt=0)
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Requests a replica takes at once on the Serve path; default "
        "the deployment's own (vllm_llm 1024, transformers_llm 256), else 16.")
    transport: Literal["direct", "serve"] = Field(
        "direct", description="How handles reach replicas: each replica's own ZeroMQ socket "
        "(direct, sub-millisecond) or Ray Serve's DeploymentHandle (serve).")
    after: list[str] = Field(default_factory=list, description="Services that must be ready first.")
    lifetime: LifetimeSpec = Field(default_factory=LifetimeSpec)

    @field_validator("command", mode="before")
    @classmethod
    def _command_list(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError("give the command as a list of arguments (no shell), e.g. "
                             "[python, server.py, --port, '{port}']")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVICE_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid service name; use lower-case letters, "
                             "digits, _ and - (at most 40), starting with a letter")
        return value

    @model_validator(mode="after")
    def _not_after_itself(self) -> ServiceSpec:
        if self.name in self.after:
            raise ValueError(f"service {self.name!r} cannot start after itself")
        if self.autoscaling is not None:
            self._autoscaling_replicas(self.autoscaling)
        if self.replicas == 0 and not self.remote:
            raise ValueError("replicas: 0 needs at least one 'remote' endpoint")
        if self.deployment is not None and self.command is not None:
            raise ValueError("give either 'deployment' (a Python class) or 'command' (a "
                             "program), not both")
        if self.replicas and self.deployment is None and self.command is None:
            raise ValueError("local replicas need a 'deployment' or a 'command' (or set "
                             "replicas: 0 and list 'remote' endpoints)")
        if self.command is None:
            program_only = [k for k in ("readiness", "liveness", "container", "model")
                            if getattr(self, k) is not None]
            program_only += [k for k in ("env", "restarts") if getattr(self, k)]
            if self.api != "http":
                program_only.append("api")
            if program_only:
                raise ValueError(f"{', '.join(program_only)}: only for program services "
                                 "(with 'command')")
        else:
            if not self.command or not self.command[0]:
                raise ValueError("command: give the executable and its arguments as a list")
            for arg in self.command:
                for name in _PLACEHOLDER.findall(arg):
                    if name not in COMMAND_PLACEHOLDERS:
                        raise ValueError(
                            f"command: unknown placeholder {{{name}}} in {arg!r}; known: "
                            + ", ".join(f"{{{p}}}" for p in COMMAND_PLACEHOLDERS))
            if self.api == "ollama" and self.model is None:
                raise ValueError("api: ollama needs 'model' (the name the server serves)")
            for key, value in self.env.items():
                if not ENV_NAME.match(key):
                    raise ValueError(f"env: {key!r} is not an environment variable name")
                for name in _PLACEHOLDER.findall(value):
                    if name not in COMMAND_PLACEHOLDERS:
                        raise ValueError(
                            f"env: unknown placeholder {{{name}}} in {key}; known: "
                            + ", ".join(f"{{{p}}}" for p in COMMAND_PLACEHOLDERS))
            uses_model = any("{model}" in a for a in [*self.command, *self.env.values()])
            if uses_model and self.model is None:
                raise ValueError("command: {model} needs the service's 'model'")
        labels = [r.label for r in self.remote]
        if len(set(labels)) != len(labels):
            raise ValueError("two remote endpoints have the same name; give each a 'name'")
        return self

    def _autoscaling_replicas(self, auto: AutoscalingSpec) -> None:
        """`replicas` becomes the starting count: min_replicas unless given (at least 1, so
        the service is deployed and published at start), and within the bounds."""
        if self.transport == "direct" and auto.min_replicas < 1:
            raise ValueError("autoscaling.min_replicas: at least 1 on the direct path: its "
                             "clients send to published replicas and the replicas report the "
                             "load, so with none a request would wait with nobody to scale "
                             "up for it (transport: serve can scale to 0)")
        if self.remote:
            raise ValueError("autoscaling: not together with remote endpoints (the balance "
                             "between local replicas and remote endpoints is fixed at start)")
        if "replicas" not in self.model_fields_set:
            self.replicas = max(auto.min_replicas, 1)
        elif not max(auto.min_replicas, 1) <= self.replicas <= auto.max_replicas:
            raise ValueError(f"replicas: {self.replicas} (the starting count) is outside "
                             f"autoscaling's [{auto.min_replicas}, {auto.max_replicas}]"
                             + (" and must be at least 1" if self.replicas < 1 else ""))

    @property
    def floor(self) -> int:
        """Replicas the service holds at least (what must fit beside other services)."""
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas

    @property
    def ceiling(self) -> int:
        """Replicas the service may hold at most."""
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas


def check_service_graph(services: list[ServiceSpec]) -> list[list[ServiceSpec]]:
    """Start levels: every service of a level only waits for services of earlier levels.
    Raises ValueError for duplicates, unknown names in `after`, and cycles."""
    by_name: dict[str, ServiceSpec] = {}
    for svc in services:
        if svc.name in by_name:
            raise ValueError(f"two services are named {svc.name!r}")
        by_name[svc.name] = svc
    for svc in services:
        for dep in svc.after:
            if dep not in by_name:
                raise ValueError(f"service {svc.name!r} starts after unknown service {dep!r}; "
                                 f"services: {', '.join(by_name)}")
    levels: list[list[ServiceSpec]] = []
    placed: set[str] = set()
    while len(placed) < len(services):
        level = [s for s in services if s.name not in placed and set(s.after) <= placed]
        if not level:
            cycle = sorted(n for n in by_name if n not in placed)
            raise ValueError(
                f"services {', '.join(cycle)} wait for each other (a cycle in 'after')")
        levels.append(level)
        placed |= {s.name for s in level}
    return levels

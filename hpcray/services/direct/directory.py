"""Where each service's replicas answer directly. Replicas publish themselves when ready;
handles long-poll for changes, so a restart, a scale-up or a lost replica reaches every
client within one round trip of the change. A lost replica is noticed three ways: the client
sees its connection drop and reports it, Ray reports its actor dead to the periodic ping here,
or the replica unpublishes itself on a clean shutdown. A replica that stops cleanly (a
scale-down, the run's end) first drains: it stays in the table marked `draining`, so clients
send it nothing new but wait for the answers it owes them, and unpublishes once it has sent
them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

log = logging.getLogger("hpcray.services.direct")

DIRECTORY = "hpcray-directory"
NAMESPACE = "hpcray"
PING_PERIOD_S = 1.0


@ray.remote(num_cpus=0, max_concurrency=1000)  # type: ignore[call-overload]  # Ray's stubs
class ReplicaDirectory:
    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self._pinger = asyncio.get_event_loop().create_task(self._ping_forever())

    def _service(self, name: str) -> dict[str, Any]:
        return self.services.setdefault(name, {"transport": "serve", "version": 0,
                                               "replicas": {}, "actors": {}, "lost": [],
                                               "spec": None, "route_prefix": None})

    def _bump(self, name: str) -> None:
        self._service(name)["version"] += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def declare(self, service: str, spec: dict[str, Any], route_prefix: str | None) -> None:
        """The service as deployed: lets any process of the run scale it (services.scale)."""
        entry = self._service(service)
        entry.update(transport=spec["transport"], spec=spec, route_prefix=route_prefix)
        self._bump(service)

    def declared(self, service: str) -> dict[str, Any]:
        entry = self._service(service)
        return {"spec": entry["spec"], "route_prefix": entry["route_prefix"]}

    def publish(self, service: str, replica: str, address: str, node: str | None,
                actor: Any = None) -> int:
        entry = self._service(service)
        entry["replicas"][replica] = {"replica": replica, "address": address, "node": node,
                                      "published": time.time()}
        if actor is not None:
            entry["actors"][replica] = actor
        self._bump(service)
        log.info("service %s: replica %s answers at %s", service, replica, address)
        return entry["version"]

    def drain(self, service: str, replica: str) -> None:
        """A stopping replica (scale-down, run end): clients send it nothing new but still
        wait for what it holds, until it unpublishes itself once that is answered."""
        found = self._service(service)["replicas"].get(replica)
        if found is not None and not found.get("draining"):
            found["draining"] = True
            self._bump(service)
            log.info("service %s: replica %s drains", service, replica)

    def unpublish(self, service: str, replica: str, reason: str = "stopped") -> None:
        entry = self._service(service)
        if entry["replicas"].pop(replica, None) is not None:
            entry["actors"].pop(replica, None)
            entry["lost"].append({"replica": replica, "reason": reason, "time": time.time()})
            self._bump(service)
            log.info("service %s: replica %s removed (%s)", service, replica, reason)

    async def report_lost(self, service: str, replica: str) -> None:
        """A client lost its connection: drop the replica if Ray confirms it is dead."""
        actor = self._service(service)["actors"].get(replica)
        if actor is None or not await self._alive(actor):
            self.unpublish(service, replica, "lost")

    def describe(self, service: str) -> dict[str, Any]:
        entry = self._service(service)
        return {"service": service, "transport": entry["transport"],
                "version": entry["version"], "replicas": list(entry["replicas"].values())}

    async def watch(self, service: str, version: int, timeout: float = 30.0) -> dict[str, Any]:
        """Returns as soon as the service's table differs from `version` (or at timeout)."""
        deadline = time.monotonic() + timeout
        while self._service(service)["version"] == version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.describe(service)

    async def _alive(self, actor: Any) -> bool:
        try:
            await asyncio.wait_for(actor.__ray_ready__.remote(), 10)
            return True
        except asyncio.TimeoutError:
            return True  # busy is not dead; the next ping asks again
        except Exception:  # noqa: BLE001 - RayActorError and its kin: the replica is gone
            return False

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(PING_PERIOD_S)
            checks = [(name, replica, actor) for name, entry in list(self.services.items())
                      for replica, actor in list(entry["actors"].items())]
            alive = await asyncio.gather(*(self._alive(a) for _, _, a in checks))
            for (name, replica, _), ok in zip(checks, alive, strict=True):
                if not ok:
                    self.unpublish(name, replica, "dead")


def directory(create: bool = False):
    """The run's directory actor (None if there is none and `create` is false)."""
    if create:
        return ReplicaDirectory.options(  # type: ignore[attr-defined]  # Ray's stubs
            name=DIRECTORY, namespace=NAMESPACE, get_if_exists=True,
            lifetime="detached").remote()
    try:
        return ray.get_actor(DIRECTORY, namespace=NAMESPACE)
    except ValueError:
        return None

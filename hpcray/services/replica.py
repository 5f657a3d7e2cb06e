"""The one Serve deployment class behind every service: builds the user's object, times its
construction (BT init), and answers each request with its id and the replica that served it."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import Any

from hpcray.bootstrap.teardown import MARKER


class ServiceRequestError(ValueError):
    """A request the service cannot take (unknown method, bad payload): the caller's fault."""


class ReplicaHost:
    def __init__(self, target: str, args: dict[str, Any], service: str) -> None:
        self.created = time.time()  # the replica's process runs: end of BT launch
        from ray import serve

        from hpcray.services.registry import load_class

        self.service = service
        self.obj = load_class(target)(**args)
        self.ready = time.time()  # the user's constructor returned: end of BT init
        self.replica = serve.get_replica_context().replica_id.unique_id
        # <cluster>/<node> of the Ray node this replica runs on (set by the node agent)
        self.node = os.environ.get(MARKER, "/").rsplit("/", 1)[-1] or None

    def bootstrap(self) -> dict[str, Any]:
        return {"replica": self.replica, "node": self.node, "created": self.created,
                "ready": self.ready, "pid": os.getpid()}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        received = time.perf_counter()
        method = request.get("method")
        if not isinstance(method, str) or method.startswith("_"):
            raise ServiceRequestError(f"request {request.get('id')}: 'method' must name a public "
                                      f"method of service {self.service!r}, got {method!r}")
        fn = getattr(self.obj, method, None)
        if not callable(fn):
            public = [n for n, v in inspect.getmembers(self.obj, callable) if not n.startswith("_")]
            raise ServiceRequestError(f"service {self.service!r} has no method {method!r}; "
                                      f"methods: {', '.join(public)}")
        start = time.perf_counter()
        result = fn(request.get("payload"))
        if asyncio.iscoroutine(result):
            result = await result
        done = time.perf_counter()
        return {"id": request.get("id"), "replica": self.replica, "node": self.node,
                "result": result, "inference_s": done - start, "service_s": start - received}

    def check_health(self) -> None:
        check = getattr(self.obj, "check_health", None)
        if callable(check):
            check()

"""The one Serve deployment class behind every service: builds the user's object, times its
construction (BT init), and answers each request with its id and the replica that served it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from hpcray import env
from hpcray.errors import ServiceRequestError
from hpcray.metrics.recorder import ReplicaStats
from hpcray.metrics.recorder import enabled as metrics_enabled
from hpcray.metrics.usage import RequestCounter
from hpcray.services.http_access import authorized, refusal
from hpcray.services.ledger import executed_log
from hpcray.services.reported import ServerTimed

if TYPE_CHECKING:
    from hpcray.services.direct.server import DirectServer

__all__ = ["ReplicaHost", "ServiceRequestError"]

log = logging.getLogger("hpcray.services")
DRAINED_LINGER_MS = 500  # a drained replica's last replies may take this long to leave


class ReplicaHost:
    def __init__(self, target: str, args: dict[str, Any], service: str,
                 transport: str = "serve", http_token_sha256: str | None = None,
                 drain_timeout: float = 5.0) -> None:
        self.created = time.time()  # the replica's process runs: end of BT launch
        from ray import serve

        from hpcray.services.registry import load_class

        self.service = service
        self.drain_timeout = drain_timeout  # for the direct path's requests (Serve's own)
        self.http_token_sha256 = http_token_sha256
        self.obj = load_class(target)(**args)
        self.ready = time.time()  # the user's constructor returned: end of BT init
        self.replica = serve.get_replica_context().replica_id.unique_id
        # <cluster>/<node> of the Ray node this replica runs on (set by the node agent)
        self.node = env.current_node()
        self._methods: dict[str, Any] = {}
        self.ledger = executed_log(service, self.replica)  # None unless the run keeps ledgers
        run_dir = os.environ.get(env.RUN_DIR)
        # requests, errors and latency histograms for the head's Prometheus endpoint
        self.stats = ReplicaStats() if run_dir and metrics_enabled() else None
        self.in_flight = 0  # requests on the Serve path being answered (the replica's loop)
        self.serve_requests = 0  # requests answered over the Serve path
        self.direct: DirectServer | None = None
        if transport == "direct":
            self._serve_direct()
        direct = self.direct
        self.requests = RequestCounter(
            run_dir, service, self.replica, self.node,
            # the direct path's requests, and the Serve path's (counted in handle)
            served=(lambda: direct.served + self.serve_requests) if direct is not None
            else (lambda: self.serve_requests), stats=self.stats,
            in_flight=(lambda: direct.in_flight + self.in_flight) if direct is not None
            else (lambda: self.in_flight))

    def _serve_direct(self) -> None:
        """Open the replica's own socket and publish it: the direct path (docs/services.md)."""
        import ray

        from hpcray.services.direct.directory import directory
        from hpcray.services.direct.server import DirectServer, run_token

        self.direct = DirectServer(self.method, self.replica, self.bootstrap(),
                                   token=run_token(), streams=self.stream_method,
                                   loop=getattr(self.obj, "event_loop", None),
                                   ledger=self.ledger, stats=self.stats,
                                   also_in_flight=lambda: self.in_flight)
        address = self.direct.start()
        found = directory()
        if found is None:
            raise RuntimeError(f"service {self.service!r}: no replica directory to publish "
                               f"{address} to")
        actor = ray.get_runtime_context().current_actor
        ray.get(found.publish.remote(self.service, self.replica, address, self.node, actor),
                timeout=60)

    def __del__(self) -> None:
        """Serve's graceful stop (Serve has drained its own path's requests by now): on the
        direct path, clients are told to send nothing new and what the replica holds is
        answered (up to drain_timeout); then it unpublishes, so no client waits on it any
        more; then the service's own `shutdown()` (an engine's processes)."""
        try:
            self._drain()
        finally:
            self._stop_serving()

    def _stop_serving(self) -> None:
        if getattr(self, "requests", None) is not None:
            self.requests.stop()
        try:
            self._unpublish()
        finally:
            shutdown = getattr(getattr(self, "obj", None), "shutdown", None)
            if callable(shutdown):
                shutdown()

    def _drain(self) -> None:
        """Marked draining in the directory (clients stop choosing this replica and keep
        waiting for its answers), then wait until it owes none. Once: Serve calls __del__,
        and the garbage collector may again."""
        direct = getattr(self, "direct", None)
        if direct is None or getattr(self, "_drained", False):
            return
        self._drained = True
        try:
            from hpcray.services.direct.directory import directory

            found = directory()
            if found is not None:
                import ray

                ray.get(found.drain.remote(self.service, self.replica), timeout=5)
        except Exception:  # noqa: BLE001 - unpublishing follows; clients then resend
            log.warning("replica %s of %s: the directory did not take its drain", self.replica,
                        self.service, exc_info=True)
        if not direct.drain(self.drain_timeout):
            log.warning("replica %s of %s: requests still held after drain_timeout (%gs); "
                        "their clients resend them elsewhere", self.replica, self.service,
                        self.drain_timeout)
        self._linger_ms = DRAINED_LINGER_MS

    def _unpublish(self) -> None:
        if getattr(self, "direct", None) is None:
            return
        try:
            from hpcray.services.direct.directory import directory

            found = directory()
            if found is not None:
                import ray

                ray.get(found.unpublish.remote(self.service, self.replica), timeout=5)
        except Exception:  # noqa: BLE001, S110 - the directory's ping notices us gone anyway
            pass
        if self.direct is not None:
            self.direct.stop(linger_ms=getattr(self, "_linger_ms", 0))

    def bootstrap(self) -> dict[str, Any]:
        """BT times, and what the service adds (a program service: its URL)."""
        own = getattr(self.obj, "bootstrap", None)
        extra = own() if callable(own) else {}
        return {**extra, "replica": self.replica, "node": self.node, "created": self.created,
                "ready": self.ready, "pid": os.getpid()}

    def method(self, method: str):
        """The service's public method of that name, or a ServiceRequestError naming them."""
        fn = self._methods.get(method)
        if fn is not None:
            return fn
        if not isinstance(method, str) or not method or method.startswith("_"):
            raise ServiceRequestError(f"'method' must name a public method of service "
                                      f"{self.service!r}, got {method!r}", field="method")
        fn = getattr(self.obj, method, None)
        if not callable(fn):
            public = [n for n, v in inspect.getmembers(self.obj, callable) if not n.startswith("_")]
            raise ServiceRequestError(f"service {self.service!r} has no method {method!r}; "
                                      f"methods: {', '.join(public)}", field="method")
        self._methods[method] = fn
        return fn

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request of the Serve path (a DeploymentHandle, or HTTP through __call__)."""
        received = time.perf_counter()
        self.in_flight += 1
        try:
            answer = await self._handle(request, received)
        except Exception:
            if self.stats is not None and self.stats.on:
                self.stats.for_thread().errors += 1
            raise
        finally:
            self.in_flight -= 1
        self.serve_requests += 1  # answered, as the direct path counts (errors apart)
        return answer

    async def _handle(self, request: dict[str, Any], received: float) -> dict[str, Any]:
        method = request.get("method")
        try:
            fn = self.method(method)  # type: ignore[arg-type]
        except ServiceRequestError as exc:
            raise ServiceRequestError(f"request {request.get('id')}: {exc}",
                                      field=exc.field) from None
        start = time.perf_counter()
        try:
            result = fn(request.get("payload"))
            if asyncio.iscoroutine(result):
                result = await result
        except Exception:
            if self.ledger is not None:
                self.ledger.record(str(request.get("id")), ok=False)
            raise
        done = time.perf_counter()
        if self.ledger is not None:
            self.ledger.record(str(request.get("id")))
        if isinstance(result, ServerTimed):  # the server's own split
            start = max(start, done - result.inference_s)
            result = result.value
        if self.stats is not None and self.stats.on:
            self.stats.for_thread().observe(round((start - received) * 1e9),
                                            round((done - start) * 1e9))
        return {"id": request.get("id"), "replica": self.replica, "node": self.node,
                "result": result, "inference_s": done - start, "service_s": start - received}

    def stream_method(self, method: str):
        """The service's `<method>_stream` generator function, or a ServiceRequestError."""
        fn = getattr(self.obj, f"{method}_stream", None) if isinstance(method, str) else None
        if not method or method.startswith("_") or not callable(fn):
            raise ServiceRequestError(f"service {self.service!r} cannot stream {method!r}",
                                      field="method")
        return fn

    async def handle_stream(self, request: dict[str, Any]):
        """Streaming form: the service's `<method>_stream` generator, piece by piece. An async
        generator is iterated here; a plain one on a worker thread, one piece at a time, so
        the replica's loop never blocks on it. When the caller goes away, Serve cancels this
        generator and the cancellation reaches the service's (an engine aborts)."""
        rid = request.get("id")
        pieces = self.stream_method(request.get("method"))(  # type: ignore[arg-type]
            request.get("payload"))  # a missing method is refused by name there
        try:
            if hasattr(pieces, "__aiter__"):
                async for piece in pieces:
                    yield {"id": rid, "replica": self.replica, "delta": piece}
            else:
                end = object()
                try:
                    while (piece := await asyncio.to_thread(next, pieces, end)) is not end:
                        yield {"id": rid, "replica": self.replica, "delta": piece}
                finally:
                    with contextlib.suppress(ValueError):  # still running on its thread
                        pieces.close()
        except Exception:
            if self.ledger is not None:
                self.ledger.record(str(rid), ok=False)
            raise
        if self.ledger is not None:  # the whole stream was sent
            self.ledger.record(str(rid))

    async def __call__(self, http_request) -> Any:
        """HTTP: POST /<service> {"method": str, "payload": any, "id": str?}. A request the
        service cannot take is a 400 naming the field; a service failure is a 500 with its
        message, never a dropped connection."""
        from starlette.responses import JSONResponse

        if not authorized(http_request.headers.get("authorization"), self.http_token_sha256):
            return refusal()
        try:
            body = await http_request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        if "method" not in body:
            return JSONResponse({"error": "missing field 'method'", "field": "method"},
                                status_code=400)
        if not isinstance(body["method"], str):
            return JSONResponse({"error": "field 'method' must be a string", "field": "method"},
                                status_code=400)
        if "id" in body and not isinstance(body["id"], str):
            return JSONResponse({"error": "field 'id' must be a string", "field": "id"},
                                status_code=400)
        body.setdefault("id", os.urandom(8).hex())
        try:
            return await self.handle(body)
        except ServiceRequestError as exc:
            return JSONResponse({"error": str(exc), "field": exc.field or "payload",
                                 "id": body["id"]}, status_code=400)
        except (TypeError, KeyError, ValueError) as exc:
            return JSONResponse({"error": f"bad payload: {type(exc).__name__}: {exc}",
                                 "field": "payload", "id": body["id"]}, status_code=400)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, not swallowed
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}", "id": body["id"]},
                                status_code=500)

    def check_health(self) -> None:
        if self.direct is not None and not self.direct.alive:
            raise RuntimeError(f"the direct server of replica {self.replica} stopped")
        check = getattr(self.obj, "check_health", None)
        if callable(check):
            check()

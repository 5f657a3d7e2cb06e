"""A service started from inside a run and stopped with the block that holds it: a driver
that trains a model, then serves it for its evaluation (`hpcray.serving`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hpcray.services.handle import ServiceHandle, service
from hpcray.services.manager import ServiceManager
from hpcray.spec.services import ServiceSpec


@contextlib.contextmanager
def serving(name: str, deployment: str, **fields: Any) -> Iterator[ServiceHandle]:
    """Start service `name` (the fields of a workflow file's `services:` entry: `args`,
    `replicas`, `resources`, ...), wait until it is ready, and yield its handle; the service
    is deleted when the block ends, whatever ended it, a start that failed half way included.
    Needs a connected run (`hpcray.connect()`, which a driver is). It is the driver's: the
    run's own services in run.json and `hpcray status` are the workflow file's."""
    manager = ServiceManager([ServiceSpec(name=name, deployment=deployment, **fields)])
    try:
        manager.start()
        yield service(name)
    finally:
        manager.stop(shutdown=False)

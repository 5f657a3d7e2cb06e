"""Names a workflow file may use that packages provide: deployments (`deployment: noop`),
remote endpoint kinds (`remote: [{kind: openai}]`), and the options model of a driver function
(`driver: {function: pkg.mod:run}`: its `args` are checked when the file is loaded). Each is
a Python entry point in its package's metadata, so a package (a pipeline of hpcray's, or a
site's own) adds its own without the generic layers naming it, and looking the names up
imports nothing."""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

DEPLOYMENTS = "hpcray.deployments"
REMOTE_KINDS = "hpcray.remote_kinds"
DRIVER_OPTIONS = "hpcray.driver_options"  # name: the driver's "module:function"


@functools.cache
def _group(group: str) -> dict[str, EntryPoint]:
    """Read once per process: scanning every installed package's metadata is slow on a shared
    filesystem, and handles and specs ask often."""
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> dict[str, str]:
    """name -> "module:attr" of every plug-in of `group` installed."""
    return {name: ep.value for name, ep in _group(group).items()}


def load(group: str, name: str) -> Any:
    """The object plug-in `name` of `group` points at; KeyError when there is none."""
    found = find(group, name)
    if found is None:
        raise KeyError(name)
    return found


def find(group: str, name: str) -> Any | None:
    """The object plug-in `name` of `group` points at, or None."""
    ep = _group(group).get(name)
    return ep.load() if ep is not None else None

"""From a workflow file's `remote:` entry to an adapter; the API key is read from the named
environment variable here, in the process that calls, and is kept nowhere else. The adapter
class is the `kind`'s plug-in (hpcray/plugins.py)."""

from __future__ import annotations

import os

from hpcray import plugins
from hpcray.errors import SpecError
from hpcray.remote.base import RemoteEndpoint
from hpcray.spec.services import RemoteEndpointSpec


def endpoint_for(spec: RemoteEndpointSpec) -> RemoteEndpoint:
    key = None
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise SpecError(f"remote endpoint {spec.label!r} ({spec.url}): environment "
                            f"variable {spec.api_key_env} (its API key) is not set")
    cls = plugins.load(plugins.REMOTE_KINDS, spec.kind)
    return cls(spec.label, spec.url, spec.model, key, spec.max_concurrency, spec.timeout)

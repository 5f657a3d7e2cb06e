"""From a workflow file's `remote:` entry to an adapter; the API key is read from the named
environment variable here, in the process that calls, and is kept nowhere else."""

from __future__ import annotations

import os

from hpcray.errors import SpecError
from hpcray.remote.base import RemoteEndpoint
from hpcray.spec.services import RemoteEndpointSpec


def endpoint_for(spec: RemoteEndpointSpec) -> RemoteEndpoint:
    from hpcray.remote.ollama import OllamaEndpoint
    from hpcray.remote.openai import OpenAIEndpoint

    key = None
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise SpecError(f"remote endpoint {spec.label!r} ({spec.url}): environment "
                            f"variable {spec.api_key_env} (its API key) is not set")
    from hpcray.remote.vep_rest import VepRestEndpoint

    cls = {"openai": OpenAIEndpoint, "ollama": OllamaEndpoint,
           "vep_rest": VepRestEndpoint}[spec.kind]
    return cls(spec.label, spec.url, spec.model, key, spec.max_concurrency, spec.timeout)

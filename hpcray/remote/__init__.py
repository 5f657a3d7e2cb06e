"""Models hosted outside the allocation (a cloud VM, another site, a hosted API) behind the
same handle as local replicas: adapters per API, and the federation that balances a
service's requests over local replicas and remote endpoints together."""

from hpcray.remote.base import (
    RemoteAuthError,
    RemoteEndpoint,
    RemoteError,
    RemoteModelError,
    RemoteProtocolError,
    RemoteResult,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from hpcray.remote.factory import endpoint_for

__all__ = ["RemoteAuthError", "RemoteEndpoint", "RemoteError", "RemoteModelError",
           "RemoteProtocolError", "RemoteResult", "RemoteServerError", "RemoteTimeout",
           "RemoteUnavailable", "endpoint_for"]

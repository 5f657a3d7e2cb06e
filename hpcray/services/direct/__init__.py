"""The direct data path: each replica answers on its own ZeroMQ socket, so a request costs one
network round trip instead of Serve's router, proxy and actor-call hops. Serve still places,
starts, health-checks and stops the replicas."""

from hpcray.services.direct.client import DirectClient, ReplicaLost, ServiceTimeout
from hpcray.services.direct.protocol import Reply, Timing

__all__ = ["DirectClient", "ReplicaLost", "Reply", "ServiceTimeout", "Timing"]

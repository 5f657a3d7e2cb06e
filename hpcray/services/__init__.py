"""Model services as Ray Serve deployments: manager, handle API.

Names are imported when first used: a replica imports this package for its own module and
needs neither the manager nor the program services' HTTP clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcray import lazy

if TYPE_CHECKING:
    from hpcray.services.handle import Response, ServiceHandle, service
    from hpcray.services.manager import ServiceError, ServiceManager, scale

_WHERE = {"Response": "hpcray.services.handle", "ServiceHandle": "hpcray.services.handle",
          "service": "hpcray.services.handle", "ServiceError": "hpcray.services.manager",
          "ServiceManager": "hpcray.services.manager", "scale": "hpcray.services.manager"}

__all__ = ["Response", "ServiceError", "ServiceHandle", "ServiceManager", "scale", "service"]


def __getattr__(name: str) -> Any:
    """A public name, or a submodule (`hpcray.services.manager`)."""
    value = lazy.attribute(__name__, _WHERE, name)
    globals()[name] = value
    return value

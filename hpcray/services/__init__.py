"""Model services as Ray Serve deployments: manager, handle API."""

from hpcray.services.handle import Response, ServiceHandle, service
from hpcray.services.manager import ServiceError, ServiceManager, scale

__all__ = ["Response", "ServiceError", "ServiceHandle", "ServiceManager", "scale", "service"]

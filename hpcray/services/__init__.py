"""Model services as Ray Serve deployments: manager, handle API."""

from hpcray.services.handle import Response, ServiceHandle, service
from hpcray.services.manager import ServiceError, ServiceManager

__all__ = ["Response", "ServiceError", "ServiceHandle", "ServiceManager", "service"]

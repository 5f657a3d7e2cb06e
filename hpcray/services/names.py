"""How a service is named inside Ray Serve: one application per service, and the run's
OpenAI-compatible ingress beside them. Read by the manager, the handle and the ingress."""

from __future__ import annotations

APP_PREFIX = "hpcray-"
OPENAI_APP = "hpcray--openai"  # cannot clash: service names start with a letter


def app_name(service: str) -> str:
    return APP_PREFIX + service

"""Who may call a run's HTTP API: where Serve's proxy listens, and the optional bearer token.

Replicas and the OpenAI ingress are given only the token's SHA-256: deployment arguments are
kept in Ray's state, where anyone who can list the cluster's actors could read a token."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from hpcray import env

LISTEN_ADDRESSES = {"loopback": "127.0.0.1", "any": "0.0.0.0"}  # noqa: S104 - 'any' is opt-in
TOKEN_FILE_ENV = env.HTTP_TOKEN_FILE


@dataclass(frozen=True)
class HttpAccess:
    bind: str  # the address Serve's proxy listens on
    host: str  # the address the published URLs name
    port: int
    token_sha256: str | None = None
    token_file: str | None = None  # where the token is, for endpoints.json; never the token

    @classmethod
    def for_head(cls, listen: str, head_ip: str, port: int, token: str | None = None,
                 token_file: str | None = None) -> HttpAccess:
        bind = LISTEN_ADDRESSES.get(listen, head_ip)
        host = "127.0.0.1" if listen == "loopback" else head_ip
        return cls(bind, host, port, digest(token) if token else None, token_file)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authorized(header: str | None, expected_sha256: str | None) -> bool:
    """Whether an Authorization header carries the run's token (any, when none is set)."""
    if expected_sha256 is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return hmac.compare_digest(digest(value.strip()), expected_sha256)


def refusal() -> Any:
    """401 that says what is missing, and nothing about the token."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": "this run's HTTP API needs 'Authorization: Bearer "
                                              "<token>' (the token is in the run's "
                                              "secrets/http-token)",
                                   "type": "authentication_error", "param": None,
                                   "code": "invalid_token"}},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})

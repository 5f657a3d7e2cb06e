"""Who may call a run's HTTP API: where Serve's proxy listens, and the optional bearer token.

With a token, Serve's proxy checks it before anything else (TokenGate, an ASGI middleware
around the whole proxy: `/-/routes`, `/-/healthz`, every `/<service>` and `/v1/*`), from the
headers alone, before a byte of the body is read. Ray 2.60 refuses middlewares in
HTTPOptions; it still applies the list a callback returns, named by
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH in the proxy's environment. serve.start gives that,
and the digest, to Serve's controller (`proxy_start_options`), whose proxy actor inherits its
environment. The replicas and the OpenAI ingress check the token again (defence in depth:
Serve has ingress paths that do not pass this proxy, its direct ingress and HAProxy modes,
off in hpcray today).

Proxy, replicas and ingress are given only the token's SHA-256: actor options and deployment
arguments are kept in Ray's state, where anyone who can list the cluster's actors could read
a token."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from hpcray import env

LISTEN_ADDRESSES = {"loopback": "127.0.0.1", "any": "0.0.0.0"}  # noqa: S104 - 'any' is opt-in
TOKEN_FILE_ENV = env.HTTP_TOKEN_FILE
# In the environment of Serve's controller and, inherited, of its proxy: the token's digest,
# and the callback Serve's proxy calls for its middlewares (Ray's name).
TOKEN_SHA256_ENV = env.HTTP_TOKEN_SHA256
PROXY_CALLBACK_ENV = env.RAY_SERVE_PROXY_CALLBACK
PROXY_CALLBACK = "hpcray.services.http_access:proxy_middlewares"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


class TokenGate:
    """ASGI middleware: an HTTP request (or websocket handshake) without the run's token gets
    `refusal()` from its headers alone; the app behind is not called and the body is not read.
    Other scopes (lifespan) and, without a token, everything pass through."""

    def __init__(self, app: Any, token_sha256: str | None) -> None:
        self.app = app
        self.token_sha256 = token_sha256

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self._admits(scope):
            await self.app(scope, receive, send)
            return
        response = refusal()
        if scope["type"] == "http":
            prefix = ""
        elif "websocket.http.response" in scope.get("extensions", {}):
            prefix = "websocket."  # the server can send a handshake's denial: the same 401
        else:
            await send({"type": "websocket.close", "code": 1008})  # policy violation (403)
            return
        await send({"type": prefix + "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": prefix + "http.response.body", "body": response.body})

    def _admits(self, scope: dict[str, Any]) -> bool:
        header = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                       if name.lower() == b"authorization"), None)
        return authorized(header, self.token_sha256)


def proxy_middlewares() -> list[Any]:
    """Serve's proxy calls this (PROXY_CALLBACK) for the middlewares around all it serves.
    Named without a digest in the environment is a broken start: fail it, never open."""
    from starlette.middleware import Middleware

    expected = os.environ.get(TOKEN_SHA256_ENV, "")
    if not _SHA256.fullmatch(expected):
        raise RuntimeError(f"{TOKEN_SHA256_ENV} is not a SHA-256 digest: the HTTP API "
                           "would be open; refusing to start Serve's proxy")
    return [Middleware(TokenGate, token_sha256=expected)]


def proxy_start_options(access: HttpAccess | None) -> dict[str, Any]:
    """serve.start's keyword arguments that put TokenGate in front of the proxy: the
    controller's environment (its proxy inherits it); nothing when the run has no token."""
    if access is None or access.token_sha256 is None:
        return {}
    return {"controller_options": {"runtime_env": {"env_vars": {
        PROXY_CALLBACK_ENV: PROXY_CALLBACK, TOKEN_SHA256_ENV: access.token_sha256}}}}


def gate_closed(access: HttpAccess, timeout: float = 30.0) -> bool:
    """Whether the proxy refuses a request without the token (`/-/routes`, answered by Serve
    itself): proof that the gate is in front of it. A proxy not listening yet is waited for."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(access.host, access.port, timeout=timeout)
        try:
            conn.request("GET", "/-/routes")
            return conn.getresponse().status == 401
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        finally:
            conn.close()

"""Who may call the HTTP API: the bearer check and where the proxy listens. The live run
(tests/services/test_live_run.py) checks the same through real requests."""

from __future__ import annotations

import json

import pytest

from hpcray.services.http_access import HttpAccess, authorized, digest


def test_only_the_runs_token_passes():
    expected = digest("s3cret")
    assert authorized("Bearer s3cret", expected)
    assert authorized("bearer  s3cret ", expected)  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3cretx",
                   "Basic s3cret", "s3cret", "Token s3cret"):
        assert not authorized(header, expected), header


def test_without_a_token_every_caller_passes():
    assert authorized(None, None) and authorized("Bearer anything", None)


def test_listen_choices_and_what_urls_name():
    head = HttpAccess.for_head("head", "10.1.2.3", 8000)
    assert (head.bind, head.host, head.token_sha256) == ("10.1.2.3", "10.1.2.3", None)
    loop = HttpAccess.for_head("loopback", "10.1.2.3", 8000)
    assert (loop.bind, loop.host) == ("127.0.0.1", "127.0.0.1")
    anywhere = HttpAccess.for_head("any", "10.1.2.3", 8000, "tok", "/run/secrets/http-token")
    assert (anywhere.bind, anywhere.host) == ("0.0.0.0", "10.1.2.3")
    # only the digest travels to the replicas; the token itself is not kept
    assert anywhere.token_sha256 == digest("tok") and "tok" not in vars(anywhere).values()


# -- the gate in front of Serve's proxy -------------------------------------------------------
TOKEN = "s3cret-token"
BODY = b'{"model": 1, "messages": "not a list"'  # malformed: the gate must not care


def _gated(token_sha256: str | None):
    """TokenGate around an app that records its calls and reads the body; the ASGI receive
    given to the gate fails the test if the gate reads the body itself."""
    from hpcray.services.http_access import TokenGate

    calls: list[str] = []

    async def app(scope, receive, send):
        calls.append(scope["path"])
        message = await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"got": %d}' % len(message["body"])})

    gate = TokenGate(app, token_sha256)

    async def call(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict, list]:
        sent: list[dict] = []
        body_read: list[bool] = []

        async def receive():
            body_read.append(True)
            if not calls:  # the app was not called: the gate itself reads the body
                raise AssertionError("the gate read the request body")
            return {"type": "http.request", "body": BODY, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 8000)}
        await gate(scope, receive, send)
        status = sent[0]["status"]
        return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:])), body_read

    return call, calls


def _run(coro):
    import asyncio

    return asyncio.run(coro)


def test_gate_refuses_from_the_headers_alone():
    call, calls = _gated(digest(TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/viaserve"),
                             ("GET", "/-/routes"), ("GET", "/-/healthz"),
                             ("GET", "/v1/openapi.json")):
            status, body, body_read = _run(call(method, path, headers))
            assert status == 401, (headers, path)
            assert body == refusal_body(), body  # the same 401 as the replicas' own
            assert TOKEN not in json.dumps(body)
            assert body_read == [], "the body was read"
    assert calls == [], "the app behind the gate was called"


def test_gate_passes_the_runs_token_through():
    call, calls = _gated(digest(TOKEN))
    status, body, body_read = _run(call("POST", "/viaserve", {"Authorization": f"Bearer {TOKEN}"}))
    assert (status, body, calls, body_read) == (200, {"got": len(BODY)}, ["/viaserve"], [True])


def test_without_a_token_the_gate_passes_everything():
    call, calls = _gated(None)
    assert _run(call("POST", "/v1/chat/completions", {}))[0] == 200
    assert _run(call("GET", "/-/routes", {"Authorization": "Bearer x"}))[0] == 200
    assert calls == ["/v1/chat/completions", "/-/routes"]


def test_gate_on_a_real_asgi_app_with_a_client():
    """Through httpx's ASGI transport and Starlette routing, as Serve's proxy would see it."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from hpcray.services.http_access import TokenGate

    async def echo(request):
        return JSONResponse(await request.json())

    app = TokenGate(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), digest(TOKEN))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            refused = await client.post("/echo", content=BODY)
            passed = await client.post("/echo", json={"a": 1},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
        return refused, passed

    refused, passed = _run(go())
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json() == refusal_body()
    assert passed.status_code == 200 and passed.json() == {"a": 1}


def test_lifespan_and_websockets():
    from hpcray.services.http_access import TokenGate

    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    gate = TokenGate(app, digest(TOKEN))
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("read")

    _run(gate({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]
    _run(gate({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and seen == ["lifespan"]
    sent.clear()
    _run(gate({"type": "websocket", "path": "/ws", "headers": [],
               "extensions": {"websocket.http.response": {}}}, receive, send))
    assert [m["type"] for m in sent] == ["websocket.http.response.start",
                                         "websocket.http.response.body"]
    assert sent[0]["status"] == 401 and seen == ["lifespan"]


def test_proxy_start_options_carry_the_digest_only(monkeypatch):
    from starlette.middleware import Middleware

    from hpcray.services import http_access

    assert http_access.proxy_start_options(None) == {}
    assert http_access.proxy_start_options(HttpAccess.for_head("head", "10.1.2.3", 8000)) == {}
    access = HttpAccess.for_head("head", "10.1.2.3", 8000, TOKEN, "/run/secrets/http-token")
    options = http_access.proxy_start_options(access)
    env_vars = options["controller_options"]["runtime_env"]["env_vars"]
    assert env_vars == {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH":
                        "hpcray.services.http_access:proxy_middlewares",
                        "HPCRAY_HTTP_TOKEN_SHA256": digest(TOKEN)}
    assert TOKEN not in json.dumps(options)
    from ray.serve.config import ControllerOptions

    ControllerOptions.model_validate(options["controller_options"])  # Serve takes it
    # what Serve's proxy does with the callback (ray/serve/_private/http_util.py)
    from ray.serve._private.utils import call_function_from_import_path

    monkeypatch.setenv("HPCRAY_HTTP_TOKEN_SHA256", digest(TOKEN))
    middlewares = call_function_from_import_path(env_vars[
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"])
    assert [type(m) for m in middlewares] == [Middleware]
    assert middlewares[0].cls is http_access.TokenGate
    assert middlewares[0].kwargs == {"token_sha256": digest(TOKEN)}
    # named without a digest: the proxy fails to start rather than serve an open API
    for broken in ("", "abc", TOKEN):
        monkeypatch.setenv("HPCRAY_HTTP_TOKEN_SHA256", broken)
        with pytest.raises(RuntimeError, match="not a SHA-256"):
            http_access.proxy_middlewares()


@pytest.mark.timeout(30)
def test_gate_closed_is_what_the_proxy_answers_without_a_token():
    """After serve.start, `gate_closed` must see a 401 on /-/routes; anything else (an open
    proxy, none listening) fails the start."""
    import http.server
    import threading

    from hpcray.services.http_access import gate_closed

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 401

        def do_GET(self):
            self.send_response(self.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        access = HttpAccess.for_head("loopback", "10.1.2.3", server.server_address[1], TOKEN)
        assert gate_closed(access, timeout=5)
        Handler.status = 200
        assert not gate_closed(access, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert not gate_closed(access, timeout=0.5)  # nothing listens there now


def refusal_body() -> dict:
    from hpcray.services.http_access import refusal

    return json.loads(refusal().body)

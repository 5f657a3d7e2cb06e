"""A small model server for the remote tests: a real HTTP server speaking the OpenAI
(`/v1/...`) and Ollama (`/api/...`) APIs, with a NOOP model that echoes. Run as
`python modelserver.py HOST PORT [--api-key K] [--model M] [--infer-ms N] [--ledger FILE]`,
in a network namespace or on loopback. Prompts starting with `!` ask for a misbehaviour (for
bad-input tests): `!malformed`, `!truncate` (a stream cut short), `!slow`.

`--ledger FILE`: the server's side of a request ledger (hpcray/services/ledger.py): one
`<id> ok|err` line per request it executed that carried an `X-Request-Id` header, appended
by one write(2) on an O_APPEND descriptor after the model ran and before the reply goes out
(`err`: a misbehaviour was asked for). Name it `<dir>/ledger/<service>/<instance>.executed`
and `read_executed(dir, service)` reads it."""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hpcray.services.ledger import ExecutedLog


def make_handler(api_key: str | None, model: str, infer_ms: float,
                 ledger: ExecutedLog | None = None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes; without TCP_NODELAY the second waits for the
        # client's delayed ACK (40 ms on Linux), as with any real server that did not set it
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data) -> None:
            self._send(code, json.dumps(data).encode())

        def _authorised(self) -> bool:
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                self._json(401, {"error": {"message": "invalid api key"}})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not self._authorised():
                return
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            elif self.path == "/api/tags":
                self._json(200, {"models": [{"name": f"{model}:latest", "model": model}]})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if not self._authorised():
                return
            if body.get("model") != model:
                self._json(404, {"error": {"message": f"model {body.get('model')!r} not "
                                                      "found"}})
                return
            prompt = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content", "")
            if isinstance(body.get("input"), list):
                prompt = ""
            start = time.perf_counter_ns()
            time.sleep(infer_ms / 1e3 + (0.5 if prompt == "!slow" else 0))
            took = time.perf_counter_ns() - start
            request_id = self.headers.get("X-Request-Id")
            if ledger is not None and request_id:
                ledger.record(request_id, ok=prompt not in ("!malformed", "!truncate"))
            if prompt == "!malformed":
                self._send(200, b'{"choices": [{"tex')
                return
            text = f"echo: {prompt}"
            if body.get("stream"):
                self._stream(text, truncate=prompt == "!truncate")
                return
            if self.path == "/v1/completions":
                self._json(200, {"choices": [{"text": text, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
            elif self.path == "/v1/chat/completions":
                self._json(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}]})
            elif self.path == "/v1/embeddings":
                self._json(200, {"data": [{"embedding": [float(len(t)), 1.0]}
                                          for t in body["input"]]})
            elif self.path in ("/api/generate", "/api/chat"):
                key = "response" if self.path == "/api/generate" else "message"
                value = text if key == "response" else {"role": "assistant", "content": text}
                self._json(200, {key: value, "done": True, "done_reason": "stop",
                                 "total_duration": took + 200_000, "load_duration": 100_000,
                                 "prompt_eval_count": 1, "prompt_eval_duration": took // 2,
                                 "eval_count": 2, "eval_duration": took - took // 2})
            elif self.path == "/api/embed":
                self._json(200, {"embeddings": [[float(len(t)), 1.0] for t in body["input"]]})
            else:
                self._json(404, {"error": "not found"})

        def _stream(self, text: str, truncate: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            ollama = self.path.startswith("/api/")
            words = text.split()
            for i, word in enumerate(words):
                if truncate and i == 1:
                    break
                piece = word + ("" if i == len(words) - 1 else " ")
                if ollama:
                    line = json.dumps({"response": piece, "done": False}) + "\n"
                else:
                    line = "data: " + json.dumps({"choices": [{"text": piece}]}) + "\n\n"
                self.wfile.write(line.encode())
                self.wfile.flush()
            if not truncate:
                end = json.dumps({"response": "", "done": True}) + "\n" if ollama \
                    else "data: [DONE]\n\n"
                self.wfile.write(end.encode())
            self.close_connection = True

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="noop")
    parser.add_argument("--infer-ms", type=float, default=1.0)
    parser.add_argument("--ledger", type=Path, help="record executed request ids here")
    args = parser.parse_args()
    ledger = ExecutedLog(args.ledger) if args.ledger else None
    server = ThreadingHTTPServer((args.host, args.port),
                                 make_handler(args.api_key, args.model, args.infer_ms, ledger))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

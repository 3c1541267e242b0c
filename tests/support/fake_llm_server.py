"""A fake OpenAI-compatible chat endpoint on loopback, for testing ``diffvqa.saliency.keywords`` offline.

``FakeLLM(mode)`` serves ``POST /v1/chat/completions`` on ``127.0.0.1`` (a free port) in a background thread and
counts the requests it gets. Modes:

* ``normal``: a valid completion whose content is ``reply`` (a string, or a function of the user message)
* ``slow``: sleeps ``delay`` seconds, then answers as ``normal`` (past a client's timeout)
* ``error500`` / ``error404``: that HTTP status
* ``not_json``: status 200 with an HTML body
* ``no_choices``: status 200 with JSON lacking ``choices``
* ``long``: a valid completion whose content is 300 words
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("normal", "slow", "error500", "error404", "not_json", "no_choices", "long")


def completion(content: str, model: str = "fake") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    ).encode()


class FakeLLM:
    def __init__(
        self, mode: str = "normal", reply: str | Callable[[str], str] = "Pleural effusions.", delay: float = 1.0
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.reply = reply
        self.delay = delay
        self.requests = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests += 1
                    fake.bodies.append(body)
                if self.path != "/v1/chat/completions" or fake.mode == "error404":
                    self._send(404, b'{"error": "not found"}')
                elif fake.mode == "error500":
                    self._send(500, b'{"error": "model failed to load"}')
                elif fake.mode == "not_json":
                    self._send(200, b"<html>502 bad gateway</html>", "text/html")
                elif fake.mode == "no_choices":
                    self._send(200, b'{"object": "error", "message": "overloaded"}')
                elif fake.mode == "long":
                    self._send(200, completion(" ".join(["effusion"] * 300)))
                else:
                    if fake.mode == "slow":
                        time.sleep(fake.delay)
                    user = body["messages"][-1]["content"]
                    content = fake.reply(user) if callable(fake.reply) else fake.reply
                    try:
                        self._send(200, completion(content, body.get("model", "fake")))
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow mode)
                        pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A local HTTP server speaking Gemini's `generateContent` REST API, for the real google-genai client.

It accepts both spellings the SDK and the REST docs use (`inlineData`/`inline_data`,
`mimeType`/`mime_type`) and both base64 alphabets, records every request (decoded images included), and
answers from a script: each entry is either an answer text or an HTTP error status.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def b64decode_any(s: str) -> bytes:
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s) if ("-" in s or "_" in s) else base64.b64decode(s)


class FakeGemini:
    def __init__(self, script: list[str | int] | None = None, default: str = ""):
        self.script = list(script or [])
        self.default = default
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                images, texts = [], []
                for content in body.get("contents", []):
                    for part in content.get("parts", []):
                        inline = part.get("inlineData") or part.get("inline_data")
                        if inline:
                            images.append((inline.get("mimeType") or inline.get("mime_type"), b64decode_any(inline["data"])))
                        if "text" in part:
                            texts.append(part["text"])
                server.requests.append({"path": self.path, "headers": dict(self.headers), "images": images, "texts": texts, "body": body})
                answer = server.script.pop(0) if server.script else server.default
                if isinstance(answer, int):
                    payload = {"error": {"code": answer, "message": f"scripted {answer}", "status": STATUS.get(answer, "UNKNOWN")}}
                    return self._send(answer, payload)
                self._send(200, {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": answer}]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 90, "totalTokenCount": 390},
                    "modelVersion": "fake-gemini",
                })

            def _send(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeGemini:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

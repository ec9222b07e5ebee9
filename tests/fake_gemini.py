"""A local HTTP server speaking Gemini's REST API, for the real google-genai client (tests and bench).

It serves `models/{m}:generateContent`, and the Batch API (`models/{m}:batchGenerateContent`,
`GET batches/{id}`) in the shapes the SDK parses (Operation with `metadata`, double-nested
`inlinedResponses`). It accepts both spellings the SDK and the REST docs use (`inlineData`/`inline_data`,
`mimeType`/`mime_type`) and both base64 alphabets, and records every request (decoded images included).

Answers come from a script (each entry: an answer text, an HTTP error status, `"timeout"` to stall past
the client's timeout, or `{"status": 429, "retry_delay": "2s"}`), then from `default` (a text, or a
function of the request). Like the real service it can also enforce a requests/min quota (429 with a
RetryInfo delay when exceeded), add latency, and fail a share of requests with random 429s.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def b64decode_any(s: str) -> bytes:
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s) if ("-" in s or "_" in s) else base64.b64decode(s)


def _parse_request(body: dict) -> tuple[list, list]:
    images, texts = [], []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                images.append((inline.get("mimeType") or inline.get("mime_type"), b64decode_any(inline["data"])))
            if "text" in part:
                texts.append(part["text"])
    return images, texts


def content_hash(images: list, texts: list) -> str:
    h = hashlib.sha1()
    for _, data in images:
        h.update(data)
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()


def _error(code: int, retry_delay: str | None = None) -> dict:
    err = {"code": code, "message": f"scripted {code}", "status": STATUS.get(code, "UNKNOWN")}
    if retry_delay:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    return {"error": err}


def _answer(text: str) -> dict:
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 90, "totalTokenCount": 390},
        "modelVersion": "fake-gemini",
    }


class FakeGemini:
    def __init__(self, script: list | None = None, default=None, requests_per_minute: float | None = None,
                 latency_s: float = 0.0, error_rate: float = 0.0, stall_s: float = 30.0, batch_pending_polls: int = 1, seed: int = 0,
                 batch_output: str = "inline"):
        self.script = list(script or [])
        self.default = default if default is not None else ""
        self.requests: list[dict] = []
        self.answered: Counter = Counter()  # content hash → 200 answers (duplicates show up as counts > 1)
        self.rejected = Counter()  # why requests were refused: "quota", "random", "scripted"
        self.jobs: dict[str, dict] = {}
        self.batch_pending_polls, self.batch_output = batch_pending_polls, batch_output  # "inline" or "file" (JSONL)
        self.files: dict[str, bytes] = {}
        self.latency_s, self.error_rate, self.stall_s = latency_s, error_rate, stall_s
        self._rate = requests_per_minute / 60.0 if requests_per_minute else None
        self._capacity = max(1.0, 2 * self._rate) if self._rate else 0.0  # token bucket with 2 s of burst, full at start
        self._bucket, self._bucket_t = self._capacity, time.monotonic()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path = self.path.split("?")[0]
                if path.endswith(":batchGenerateContent"):
                    return self._send(200, server._create_batch(path, body))
                code, payload = server._generate(path, dict(self.headers), body)
                self._send(code, payload)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.endswith(":download"):  # files/<name>:download?alt=media
                    name = "files/" + path.removesuffix(":download").rsplit("/files/", 1)[-1]
                    if name not in server.files:
                        return self._send(404, _error(404))
                    data = server.files[name]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                job_id = path.rsplit("/", 1)[-1]
                if job_id not in server.jobs:
                    return self._send(404, _error(404))
                self._send(200, server._poll_batch(job_id))

            def _send(self, code: int, payload: dict | None):
                if payload is None:  # a stall: the client times out first
                    time.sleep(server.stall_s)
                    return
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- generateContent

    def _within_quota(self) -> bool:
        if self._rate is None:
            return True
        now = time.monotonic()
        self._bucket = min(self._capacity, self._bucket + (now - self._bucket_t) * self._rate)
        self._bucket_t = now
        if self._bucket < 1.0:
            return False
        self._bucket -= 1.0
        return True

    def _generate(self, path: str, headers: dict, body: dict) -> tuple[int, dict | None]:
        images, texts = _parse_request(body)
        request = {"path": path, "headers": headers, "images": images, "texts": texts, "body": body, "t": time.monotonic()}
        with self._lock:
            self.requests.append(request)
            if not self._within_quota():
                self.rejected["quota"] += 1
                return 429, _error(429, retry_delay=f"{1.0 / self._rate:.3f}s")
            scripted = self.script.pop(0) if self.script else None
            if scripted is None and self.error_rate and self._random.random() < self.error_rate:
                self.rejected["random"] += 1
                return 429, _error(429)
        if self.latency_s:
            time.sleep(self.latency_s)
        answer = scripted if scripted is not None else (self.default(request) if callable(self.default) else self.default)
        if answer == "timeout":
            return 0, None
        if isinstance(answer, int):
            self.rejected["scripted"] += 1
            return answer, _error(answer)
        if isinstance(answer, dict):
            self.rejected["scripted"] += 1
            return answer["status"], _error(answer["status"], answer.get("retry_delay"))
        with self._lock:
            self.answered[content_hash(images, texts)] += 1
        return 200, _answer(answer)

    def duplicates(self) -> int:
        """Requests answered more than once for the same content."""
        return sum(n - 1 for n in self.answered.values() if n > 1)

    # -- Batch API

    def _create_batch(self, path: str, body: dict) -> dict:
        model = path.split("/models/", 1)[1].removesuffix(":batchGenerateContent")
        with self._lock:
            job_id = f"job{len(self.jobs) + 1}"
            self.jobs[job_id] = {"model": f"models/{model}", "polls": 0, "requests": body["batch"]["inputConfig"]["requests"]["requests"],
                                 "display": body["batch"].get("displayName")}
        return self._operation(job_id, "BATCH_STATE_PENDING")

    def _poll_batch(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        job["polls"] += 1
        if job["polls"] <= self.batch_pending_polls:
            return self._operation(job_id, "BATCH_STATE_RUNNING")
        if "output" not in job:  # answer each request once, as the service does
            out = []
            for r in job["requests"]:
                code, payload = self._generate(f"/batch/{job['model']}", {}, r["request"])
                item = {"metadata": r.get("metadata")}
                item.update({"response": payload} if code == 200 else {"error": {"code": code, "message": f"request failed {code}"}})
                out.append(item)
            job["output"] = out
        return self._operation(job_id, "BATCH_STATE_SUCCEEDED", job["output"])

    def _operation(self, job_id: str, state: str, output: list | None = None) -> dict:
        job = self.jobs[job_id]
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch", "name": f"batches/{job_id}",
                "model": job["model"], "displayName": job["display"], "state": state, "createTime": "2026-11-22T00:00:00Z"}
        if output is not None and self.batch_output == "file":
            name = f"files/batch-{job_id}-output"
            self.files[name] = "".join(json.dumps({"key": (o.get("metadata") or {}).get("key"), **{k: v for k, v in o.items() if k != "metadata"}}) + "\n"
                                       for o in output).encode()
            meta["output"] = {"responsesFile": name}
        elif output is not None:
            meta["output"] = {"inlinedResponses": {"inlinedResponses": output}}
        return {"name": f"batches/{job_id}", "metadata": meta, **({"done": True} if output is not None else {})}

    def __enter__(self) -> FakeGemini:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

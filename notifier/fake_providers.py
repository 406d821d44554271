"""Loopback stand-ins for Twilio's Messages API and Meta's WhatsApp Cloud API.

They speak the real request formats (form-encoded with basic auth; JSON with a bearer
token), answer with the real shapes and error codes, and can be told to misbehave: a
scripted sequence of answers (503, 429 with Retry-After, ...), latency, numbers that do
not exist. Every accepted message is recorded, so a test or benchmark can compare what a
provider received with what the store says. For tests, demos and benchmarks only.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class FakeProviders:
    def __init__(self, *, account_sid: str = "ACtest", auth_token: str = "secret-token",
                 meta_token: str = "meta-token", latency_s: float = 0.0) -> None:
        self.account_sid, self.auth_token, self.meta_token = account_sid, auth_token, meta_token
        self.latency_s = latency_s
        self.invalid_numbers: set[str] = set()
        self.templates: dict[str, int] = {}  # approved WhatsApp template -> parameter count (empty: any)
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self._script: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        providers = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, payload = providers.handle(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json",
                                   "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, headers, payload = providers.handle_get(self.path, dict(self.headers))
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json",
                                   "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeProviders":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        """The next requests get these answers (status, or (status, headers)) before any success."""
        with self._lock:
            for answer in answers:
                status, headers = (answer, {}) if isinstance(answer, int) else answer
                self._script.append((status, headers, {"code": status, "message": f"scripted {status}",
                                                       "error": {"code": status, "message": f"scripted {status}"}}))

    def sent_to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["to"].endswith(number.lstrip("+"))]

    # --- the protocol -------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self.latency_s:
            time.sleep(self.latency_s)  # the provider's own latency, simulated
        with self._lock:
            self.requests += 1
            if self._script:
                return self._script.popleft()
        if path.startswith(f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"):
            return self._twilio(headers, body)
        if re.match(r"^/v\d+\.\d+/[^/]+/messages$", path):
            return self._meta(headers, body)
        return 404, {}, {"message": "not found"}

    def handle_get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Twilio's Messages list: filtered by To and DateSent>= (a day), newest first, paged."""
        import base64

        route, _, query = path.partition("?")
        if route != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return 404, {}, {"message": "not found"}
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {}, {"code": 20003, "message": "Authenticate", "status": 401}
        args = {k: v[0] for k, v in parse_qs(query).items()}
        size, page = int(args.get("PageSize", 50)), int(args.get("Page", 0))
        with self._lock:
            found = [m for m in reversed(self.received) if m["provider"] == "twilio"
                     and m["to"] == args.get("To", m["to"]) and m["day"] >= args.get("DateSent>", "")]
        chunk = found[page * size:(page + 1) * size]
        more = len(found) > (page + 1) * size
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        return 200, {}, {"messages": [{"sid": m["sid"], "to": m["to"], "from": m["from"], "body": m["body"],
                                       "status": "sent", "date_created": m["date_created"]} for m in chunk],
                         "page": page, "page_size": size, "next_page_uri":
                             f"{base}?{urlencode({**args, 'Page': str(page + 1)})}" if more else None}

    def _twilio(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        import base64

        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {}, {"code": 20003, "message": "Authenticate", "status": 401}
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        to = form.get("To", "")
        number = to.removeprefix("whatsapp:")
        if not E164.match(number) or number in self.invalid_numbers:
            return 400, {}, {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                             "status": 400}
        if not (form.get("Body") or form.get("ContentSid")):
            return 400, {}, {"code": 21602, "message": "Message body is required.", "status": 400}
        sid = "SM" + uuid.uuid4().hex
        moment = datetime.now(UTC)
        self._record({"provider": "twilio", "sid": sid, "to": to, "day": moment.date().isoformat(),
                      "date_created": format_datetime(moment, usegmt=True), "from": form.get("From") or
                      form.get("MessagingServiceSid"), "body": form.get("Body"), "content_sid": form.get("ContentSid"),
                      "variables": json.loads(form.get("ContentVariables", "{}")),
                      "status_callback": form.get("StatusCallback")})
        return 201, {}, {"sid": sid, "status": "queued", "to": to, "account_sid": self.account_sid}

    def _meta(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if headers.get("Authorization") != f"Bearer {self.meta_token}":
            return 401, {}, {"error": {"code": 190, "message": "Invalid OAuth access token.", "type": "OAuthException"}}
        payload = json.loads(body or b"{}")
        to = "+" + str(payload.get("to", "")).lstrip("+")
        if payload.get("type") != "template" or "template" not in payload:
            return 400, {}, {"error": {"code": 131047, "message": "Re-engagement message"}}
        template = payload["template"]
        params = [p.get("text") for c in template.get("components", []) for p in c.get("parameters", [])]
        expected = self.templates.get(template.get("name"))
        if expected is not None and expected != len(params):
            return 400, {}, {"error": {"code": 132000, "message": "Number of parameters does not match"}}
        if not E164.match(to) or to in self.invalid_numbers:
            return 400, {}, {"error": {"code": 131026, "message": "Message undeliverable"}}
        wamid = "wamid." + uuid.uuid4().hex
        self._record({"provider": "meta", "id": wamid, "to": to, "template": template.get("name"),
                      "language": template.get("language", {}).get("code"), "params": params})
        return 200, {}, {"messaging_product": "whatsapp", "contacts": [{"input": payload["to"], "wa_id": to[1:]}],
                         "messages": [{"id": wamid}]}

    def _record(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.received.append(message)

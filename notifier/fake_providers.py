"""Loopback stand-ins for Twilio's Messages API and Meta's WhatsApp Cloud API.

They speak the real request formats (form-encoded with basic auth; JSON with a bearer
token), answer with the real shapes and error codes, and can be told to misbehave: a
scripted sequence of answers (503, 429 with Retry-After, ...), latency, numbers that do
not exist. Every accepted message is recorded, so a test or benchmark can compare what a
provider received with what the store says. For tests, demos and benchmarks only.

Flapping (`Flapping`, set with `flap()` or POST /_fake/faults): each API request may, at the
given rates, get a 5xx, a 429 with Retry-After, a slow answer, no answer at all (nothing
accepted), or a lost answer (the message is accepted and recorded, then the answer hangs
past the client's timeout, as when a connection dies after the provider committed). What
was injected is counted (GET /_fake/faults) and a message accepted with a lost answer is
marked `"fault": "lost_answer"` in the received log.

Outage (`outage()`, or POST /_fake/outage {"mode": "refuse" | "5xx" | null, "for_s": 20}): the
provider refuses connections (its port closed; it opens again on the same port when the outage
ends), or answers every API request with a 503, until switched back or for `for_s` seconds.
Two instances with their own account (`account_sid`, `auth_token`) stand for two accounts of a
channel, for failover (notifier/failover.py).

Inbound (`reply_sms`, `reply_whatsapp`, or POST /_fake/inbound): a customer's message, posted to
notifier's webhook the way each provider does, signed with the account's auth token (Twilio) or
the app secret (Meta). As Twilio does, a number that texted STOP (or another of its opt-out
words) is refused with error 21610 until it texts START.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode
from urllib.request import Request, urlopen

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_FAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fake_provider_fault", default=None)
# Twilio's default opt-out and opt-in keywords (a reply of exactly one of them, any case)
TWILIO_OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
TWILIO_OPT_IN = frozenset({"START", "UNSTOP", "YES"})


@dataclass
class Flapping:
    """How often each API request misbehaves (fractions of requests, 0 to 1), and how."""

    error_rate: float = 0.0  # 500, 502 or 503: nothing accepted
    throttle_rate: float = 0.0  # 429 with Retry-After: throttle_s
    slow_rate: float = 0.0  # the answer comes after slow_s (within a client's timeout)
    unanswered_rate: float = 0.0  # no answer for hang_s, nothing accepted (the client times out)
    lost_answer_rate: float = 0.0  # accepted and recorded, then no answer for hang_s (the client times out)
    slow_s: float = 1.0
    hang_s: float = 3.0
    throttle_s: float = 1.0

    def pick(self, roll: float) -> str | None:
        """The fault for a request whose uniform random draw is `roll`, or None."""
        for name in ("error", "throttle", "slow", "unanswered", "lost_answer"):
            rate = getattr(self, f"{name}_rate")
            if roll < rate:
                return name
            roll -= rate
        return None


class FakeProviders:
    """Both providers as one ASGI app on uvicorn (httptools, uvloop): in a thread of the
    caller's process (`with FakeProviders() as providers`), or as a process of its own
    (`python -m notifier.fake_providers`, used by the benchmarks so the provider's CPU is not
    the sender's), where GET /_fake/received gives what it received."""

    def __init__(self, *, account_sid: str = "ACtest", auth_token: str = "secret-token",
                 meta_token: str = "meta-token", meta_app_secret: str = "app-secret-1234",
                 latency_s: float = 0.0, port: int = 0,
                 seed: int | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.account_sid, self.auth_token, self.meta_token = account_sid, auth_token, meta_token
        self.meta_app_secret = meta_app_secret
        self.opted_out: set[str] = set()  # numbers that texted STOP to the Twilio sender (refused: 21610)
        self.clock = clock or (lambda: datetime.now(UTC))  # a test's simulated clock stamps what it receives
        self.latency_s = latency_s
        self.flapping = Flapping()
        self.injected: Counter[str] = Counter()  # faults handed out, by kind
        self._random = random.Random(seed)
        self.invalid_numbers: set[str] = set()
        self.templates: dict[str, int] = {}  # approved WhatsApp template -> parameter count (empty: any)
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self._script: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._twilio_auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.socket = socket.create_server(("127.0.0.1", port), backlog=1024)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.outage_mode: str | None = None  # "refuse", "5xx", or None: up
        self._outage_lock = threading.Lock()
        self._outage_timer: threading.Timer | None = None

    def __enter__(self) -> "FakeProviders":
        self._serve()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._outage_lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
            self._halt()

    def outage(self, mode: str | None, *, for_s: float | None = None) -> None:
        """Go down ("refuse": connections refused; "5xx": every API request answered 503) or come
        back (None); with `for_s`, come back by itself after that long."""
        if mode not in (None, "refuse", "5xx"):
            raise ValueError(f"unknown outage mode {mode!r}: refuse, 5xx or none")
        with self._outage_lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            if mode == "refuse" and self.outage_mode != "refuse":
                self._halt()
            elif mode != "refuse" and self.outage_mode == "refuse":
                self.socket = socket.create_server(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), backlog=1024)
                self._serve()
            self.outage_mode = mode
            if mode is not None and for_s:
                self._outage_timer = threading.Timer(for_s, self.outage, args=(None,))
                self._outage_timer.daemon = True
                self._outage_timer.start()

    def _halt(self) -> None:
        """Stop serving and close the port: connections are refused."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()

    def _serve(self) -> None:
        import uvicorn

        config = uvicorn.Config(self, log_level="warning", access_log=False, lifespan="off", loop="uvloop",
                                http="httptools", timeout_keep_alive=60)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake providers did not start")
            time.sleep(0.005)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI entry: read the request, wait the provider's latency, answer."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        fault = None
        if scope["method"] == "GET" and scope["path"] == "/_fake/received":
            with self._lock:
                status, extra, payload = 200, {}, {"received": list(self.received), "requests": self.requests}
        elif scope["method"] == "POST" and scope["path"] == "/_fake/inbound":
            request = json.loads(body or b"{}")
            kind = request.pop("provider", "twilio")
            sending = self.reply_whatsapp if kind == "meta" else self.reply_sms
            answer = await asyncio.get_running_loop().run_in_executor(None, lambda: sending(**request))
            status, extra, payload = 200, {}, {"status": answer}
        elif scope["path"] == "/_fake/faults":
            if scope["method"] == "POST":
                self.flap(**json.loads(body or b"{}"))
            with self._lock:
                status, extra, payload = 200, {}, {"flapping": asdict(self.flapping), "injected": dict(self.injected)}
        elif scope["path"] == "/_fake/outage" and scope["method"] == "POST":
            wanted = json.loads(body or b"{}")
            mode, for_s = wanted.get("mode"), wanted.get("for_s")
            # after this answer has gone out: going down stops this very server
            threading.Timer(0.1, self.outage, args=(mode,), kwargs={"for_s": for_s}).start()
            status, extra, payload = 202, {}, {"mode": mode, "for_s": for_s}
        elif self.outage_mode == "5xx":
            with self._lock:
                self.injected["outage"] += 1
            status, extra, payload = 503, {}, {"code": 503, "message": "outage",
                                               "error": {"code": 503, "message": "outage"}}
        else:
            fault = self._fault()
            if fault in ("error", "throttle"):
                status, extra, payload = self._refusal(fault)
            else:
                if fault == "slow":
                    await asyncio.sleep(self.flapping.slow_s)
                elif fault == "unanswered":
                    await asyncio.sleep(self.flapping.hang_s)  # the client has given up; nothing accepted
                    status, extra, payload = 504, {}, {"message": "gave up"}
                if fault != "unanswered":
                    if scope["method"] != "GET":
                        await self._wait_latency()
                    status, extra, payload = self._answer(scope["method"], path, headers, body, fault)
                if fault == "lost_answer":
                    await asyncio.sleep(self.flapping.hang_s)  # accepted; the answer comes too late
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (k.lower().encode(), v.encode()) for k, v in
            {**extra, "Content-Type": "application/json", "Content-Length": str(len(data))}.items()]})
        await send({"type": "http.response.body", "body": data})

    async def _wait_latency(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)  # the provider's own latency, simulated

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes,
                fault: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        if method == "GET":
            return self.handle_get(path, headers)
        token = _FAULT.set(fault)
        try:
            return self.handle(path, headers, body)
        finally:
            _FAULT.reset(token)

    def flap(self, **rates: float) -> Flapping:
        """Change how the provider misbehaves from now on (fields of `Flapping`; zero: behave)."""
        known = {f.name for f in fields(Flapping)}
        unknown = set(rates) - known
        if unknown:
            raise ValueError(f"unknown flapping settings: {sorted(unknown)}")
        with self._lock:
            for name, value in rates.items():
                setattr(self.flapping, name, float(value))
            return Flapping(**asdict(self.flapping))

    def _fault(self) -> str | None:
        with self._lock:
            fault = self.flapping.pick(self._random.random())
            if fault:
                self.injected[fault] += 1
            return fault

    def _refusal(self, fault: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        if fault == "throttle":
            return 429, {"Retry-After": f"{self.flapping.throttle_s:g}"}, {
                "code": 20429, "message": "Too Many Requests", "error": {"code": 130429, "message": "Rate limit hit"}}
        status = self._random.choice((500, 502, 503))
        return status, {}, {"code": status, "message": "flapping", "error": {"code": status, "message": "flapping"}}

    def script(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        """The next requests get these answers (status, or (status, headers)) before any success."""
        with self._lock:
            for answer in answers:
                status, headers = (answer, {}) if isinstance(answer, int) else answer
                self._script.append((status, headers, {"code": status, "message": f"scripted {status}",
                                                       "error": {"code": status, "message": f"scripted {status}"}}))

    # --- inbound: customers' messages to notifier's webhooks -----------------------------------
    def reply_sms(self, url: str, *, sender: str, to: str, body: str = "", whatsapp: bool = False,
                  replied_to: str | None = None, button_payload: str | None = None, signed_url: str | None = None,
                  sid: str | None = None, messaging_service: str | None = None, sign_with: str | None = None) -> int:
        """POST a customer's message to `url` (notifier's /inbound/twilio) as Twilio does: the
        number's webhook, form-encoded, signed for `signed_url` (the URL notifier knows itself by;
        default `url`) with the auth token (`sign_with`: another key, a forger's). Returns the
        status code notifier answered."""
        prefix = "whatsapp:" if whatsapp else ""
        form = {"MessageSid": sid or "SM" + uuid.uuid4().hex, "SmsSid": "", "AccountSid": self.account_sid,
                "From": prefix + sender, "To": prefix + to, "Body": body, "NumMedia": "0", "NumSegments": "1",
                "SmsStatus": "received", "ApiVersion": "2010-04-01"}
        form["SmsSid"] = form["MessageSid"]
        if messaging_service:
            form["MessagingServiceSid"] = messaging_service
        if button_payload:
            form.update(ButtonPayload=button_payload, ButtonText=body, MessageType="button")
        if replied_to:
            form["OriginalRepliedMessageSid"] = replied_to
        keyword = body.strip().upper()
        if not whatsapp and keyword in TWILIO_OPT_OUT | TWILIO_OPT_IN:  # Twilio acts on it, then passes it on
            with self._lock:
                (self.opted_out.add if keyword in TWILIO_OPT_OUT else self.opted_out.discard)(sender)
        data = (signed_url or url) + "".join(f"{key}{form[key]}" for key in sorted(form))
        signature = base64.b64encode(hmac.new((sign_with or self.auth_token).encode(), data.encode(),
                                              hashlib.sha1).digest()).decode()
        return _post(url, urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                                     "X-Twilio-Signature": signature})

    def reply_whatsapp(self, url: str, *, sender: str, body: str | None = None, button_payload: str | None = None,
                       replied_to: str | None = None, phone_number_id: str = "1055", wamid: str | None = None,
                       sign_with: str | None = None) -> int:
        """POST a customer's WhatsApp message to `url` (notifier's /callbacks/meta) as Meta's
        webhook does: a text, or a template's quick-reply button (`button_payload`, with `body`
        as the button's label), signed with the app secret (`sign_with`: another)."""
        message: dict[str, Any] = {"from": sender.lstrip("+"), "id": wamid or "wamid." + uuid.uuid4().hex,
                                   "timestamp": str(int(self.clock().timestamp()))}
        if button_payload:
            message.update(type="button", button={"payload": button_payload, "text": body or button_payload})
        else:
            message.update(type="text", text={"body": body or ""})
        if replied_to:
            message["context"] = {"from": "15550001055", "id": replied_to}
        payload = {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages",
                   "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001055",
                                                                           "phone_number_id": phone_number_id},
                             "contacts": [{"profile": {"name": "Customer"}, "wa_id": sender.lstrip("+")}],
                             "messages": [message]}}]}]}
        raw = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new((sign_with or self.meta_app_secret).encode(), raw, hashlib.sha256).hexdigest()
        return _post(url, raw, {"Content-Type": "application/json", "X-Hub-Signature-256": signature})

    def sent_to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["to"].endswith(number.lstrip("+"))]

    # --- the protocol -------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        """A POST; `headers` with lower-case names."""
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
        route, _, query = path.partition("?")
        if route != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return 404, {}, {"message": "not found"}
        if headers.get("authorization") != self._twilio_auth:
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
        if headers.get("authorization") != self._twilio_auth:
            return 401, {}, {"code": 20003, "message": "Authenticate", "status": 401}
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        to = form.get("To", "")
        number = to.removeprefix("whatsapp:")
        if not E164.match(number) or number in self.invalid_numbers:
            return 400, {}, {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                             "status": 400}
        if not to.startswith("whatsapp:") and number in self.opted_out:
            return 400, {}, {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}
        if not (form.get("Body") or form.get("ContentSid")):
            return 400, {}, {"code": 21602, "message": "Message body is required.", "status": 400}
        if "ContentSid" in form and not re.fullmatch(r"HX[0-9a-fA-F]{32}", form["ContentSid"]):
            return 400, {}, {"code": 21655, "message": "The ContentSid is Invalid.", "status": 400}
        sid = "SM" + uuid.uuid4().hex
        moment = self.clock()
        self._record({"provider": "twilio", "account_sid": self.account_sid, "sid": sid, "to": to,
                      "day": moment.date().isoformat(),
                      "date_created": format_datetime(moment, usegmt=True), "from": form.get("From") or
                      form.get("MessagingServiceSid"), "body": form.get("Body"), "content_sid": form.get("ContentSid"),
                      "variables": json.loads(form.get("ContentVariables", "{}")),
                      "status_callback": form.get("StatusCallback")})
        return 201, {}, {"sid": sid, "status": "queued", "to": to, "account_sid": self.account_sid}

    def _meta(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.meta_token}":
            return 401, {}, {"error": {"code": 190, "message": "Invalid OAuth access token.", "type": "OAuthException"}}
        payload = json.loads(body or b"{}")
        to = "+" + str(payload.get("to", "")).lstrip("+")
        if payload.get("type") != "template" or "template" not in payload:
            return 400, {}, {"error": {"code": 131047, "message": "Re-engagement message"}}
        template = payload["template"]
        params = [p.get("text") for c in template.get("components", []) if c.get("type") == "body"
                  for p in c.get("parameters", [])]
        buttons = [p.get("payload") for c in template.get("components", []) if c.get("type") == "button"
                   for p in c.get("parameters", [])]
        expected = self.templates.get(template.get("name"))
        if expected is not None and expected != len(params):
            return 400, {}, {"error": {"code": 132000, "message": "Number of parameters does not match"}}
        if not E164.match(to) or to in self.invalid_numbers:
            return 400, {}, {"error": {"code": 131026, "message": "Message undeliverable"}}
        wamid = "wamid." + uuid.uuid4().hex
        self._record({"provider": "meta", "id": wamid, "to": to, "template": template.get("name"),
                      "language": template.get("language", {}).get("code"), "params": params, "buttons": buttons,
                      "biz_opaque_callback_data": payload.get("biz_opaque_callback_data")})
        return 200, {}, {"messaging_product": "whatsapp", "contacts": [{"input": payload["to"], "wa_id": to[1:]}],
                         "messages": [{"id": wamid}]}

    def _record(self, message: dict[str, Any]) -> None:
        message["received_at"] = time.time()
        fault = _FAULT.get()
        if fault:
            message["fault"] = fault
        with self._lock:
            self.received.append(message)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST and return the status code (an error status too)."""
    from urllib.error import HTTPError

    try:
        with urlopen(Request(url, data=body, headers=headers, method="POST"), timeout=30) as answer:  # noqa: S310
            return int(answer.status)
    except HTTPError as exc:
        return int(exc.code)


def main(argv: list[str] | None = None) -> None:
    """Serve the fake providers in this process until killed; print the URL first."""
    parser = argparse.ArgumentParser(prog="python -m notifier.fake_providers")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="seed of the flapping's random choices")
    parser.add_argument("--account-sid", default="ACtest", help="the Twilio account it answers for")
    parser.add_argument("--auth-token", default="secret-token")
    args = parser.parse_args(argv)
    with FakeProviders(latency_s=args.latency_s, port=args.port, seed=args.seed, account_sid=args.account_sid,
                       auth_token=args.auth_token) as providers:
        print(providers.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()

"""Tools for the demo, tests and benchmarks: an SMTP sink, a process group, waiting on conditions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any


class MailSink:
    """An SMTP server that keeps what it receives (aiosmtpd): the demo's and the tests' mail server,
    and `notifier dev smtp`. `on_message` sees each mail as it arrives. With `idempotency_header` it
    is a relay that drops a repeated message (as Resend does by `Resend-Idempotency-Key`): a mail
    whose key it has taken before is answered 250 and counted in `dropped`, not kept again."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_message: Callable[[Any], None] | None = None, idempotency_header: str = "") -> None:
        import asyncio

        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.refuse: set[str] = set()  # recipients answered "550 no such user"
        self.temporary_failures = 0  # this many messages answered "451" first
        self.answer_after_s = 0.0  # each message is answered this long after its data (a slow server)
        self.lose_answers = 0  # this many messages taken, then their connection cut before the 250 (lost answers)
        self.idempotency_header = idempotency_header
        self.dropped = 0  # repeats of a key taken before (with `idempotency_header`)
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
                if address in sink.refuse:
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                if sink.answer_after_s:
                    await asyncio.sleep(sink.answer_after_s)
                with sink._lock:
                    if sink.temporary_failures > 0:
                        sink.temporary_failures -= 1
                        return "451 4.3.0 try again later"
                    message = message_from_bytes(envelope.content, policy=policy.default)
                    key = message.get(sink.idempotency_header) if sink.idempotency_header else None
                    repeat = key is not None and key in sink._keys
                    if repeat:
                        sink.dropped += 1
                    else:
                        sink.messages.append(message)
                        if key is not None:
                            sink._keys.add(key)
                    lose = sink.lose_answers > 0
                    sink.lose_answers -= lose
                if on_message is not None and not repeat:
                    on_message(message)
                if lose:
                    server.transport.abort()  # taken on; the 250 never reaches the client
                return "250 OK"

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.host, self.port = host, port
        self.controller = Controller(Handler(), hostname=host, port=port)

    def __enter__(self) -> "MailSink":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def mail_text(message: Any) -> str:
    """The plain-text body of a mail (or a note that it has none)."""
    body = message.get_body(preferencelist=("plain",))
    return body.get_content().strip() if body is not None else "(no text part)"


def mail_summary(message: Any, *, max_lines: int = 12) -> str:
    """A received mail as `notifier dev smtp` prints it: who, what, and the start of the text."""
    attachments = [part.get_filename() or part.get_content_type() for part in message.iter_attachments()]
    lines = mail_text(message).splitlines()
    shown = lines[:max_lines] + ([f"[... {len(lines) - max_lines} more lines]"] if len(lines) > max_lines else [])
    head = [f"--- {time.strftime('%H:%M:%S')}  from {message['From']}  to {message['To']}",
            f"Subject: {message['Subject']}"]
    if attachments:
        head.append(f"Attachments: {', '.join(attachments)}")
    return "\n".join(head + [""] + shown + [""])


class _Served:
    """An http.server in `self.server`, served from a thread while in a `with` block."""

    server: Any

    def __enter__(self) -> Any:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailPages(_Served):
    """A small web page over a MailSink: the mails received, newest first, each readable as text."""

    def __init__(self, sink: MailSink, host: str = "127.0.0.1", port: int = 0) -> None:
        import html
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with sink._lock:
                    mails = list(sink.messages)
                if self.path in ("/", "/index.html"):
                    rows = "".join(
                        f"<tr><td>{n}</td><td>{html.escape(str(m['To']))}</td>"
                        f"<td><a href='/mail/{n}'>{html.escape(str(m['Subject']))}</a></td>"
                        f"<td><a href='/mail/{n}.eml'>.eml</a></td></tr>"
                        for n, m in reversed(list(enumerate(mails, 1))))
                    body = (f"<!doctype html><meta charset='utf-8'><title>notifier dev smtp</title>"
                            f"<h1>{len(mails)} mails received</h1><table><tr><th>#</th><th>to</th><th>subject</th>"
                            f"<th></th></tr>{rows}</table>").encode()
                    return self._answer(200, "text/html; charset=utf-8", body)
                number = self.path.removeprefix("/mail/").removesuffix(".eml")
                if not number.isdigit() or not 0 < int(number) <= len(mails):
                    return self._answer(404, "text/plain", b"no such mail\n")
                mail = mails[int(number) - 1]
                if self.path.endswith(".eml"):
                    return self._answer(200, "message/rfc822", mail.as_bytes())
                return self._answer(200, "text/plain; charset=utf-8", mail_summary(mail, max_lines=10_000).encode())

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"


class ProcessGroup:
    """Pipeline processes (`python -m notifier.cli ...`) with their logs in one folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen] = {}
        self._terminated: set[int] = set()

    def start(self, name: str, *args: str) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "notifier.cli", *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root / (name + '.log')}")

    def tails(self, lines: int = 15) -> str:
        """The last lines of each process's log: what a timeout reports, so a failure on CI says why."""
        parts = []
        for name in self.procs:
            path = self.root / f"{name}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {name}.log (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    def terminate(self) -> None:
        """Ask every process to stop (SIGTERM: Celery's warm shutdown); `stop()` waits for them."""
        for proc in self.procs.values():
            if proc.poll() is None and proc.pid not in self._terminated:
                self._terminated.add(proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:  # it ended since poll()
                    pass

    def stop(self) -> None:
        self.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(condition: Callable[[], bool], what: str, pipeline: ProcessGroup, timeout_s: float = 60.0,
             explain: Callable[[], str] | None = None) -> None:
    """Poll `condition` until it holds; past the deadline, fail with what `explain` says and the
    processes' log tails."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        pipeline.check()
        if time.monotonic() > deadline:
            detail = explain() if explain else ""
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s\n{detail}\n{pipeline.tails()}")
        time.sleep(0.05)




class Ticker:
    """Calls `tick()` every `every_s` seconds on a thread of its own while inside its `with`."""

    def __init__(self, every_s: float, name: str) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()


class RunningClock(Ticker):
    """The simulated file clock, moving in real time from `origin`: a thread writes
    `origin + elapsed` every `tick_s`, so workers stamp sent_at (and beat sweeps, and leases run
    out) as with a system clock, at most `tick_s` behind."""

    def __init__(self, clock: Any, origin: datetime, *, tick_s: float = 0.02) -> None:
        super().__init__(tick_s, "running-clock")
        self.clock, self.origin = clock, origin
        self.started = 0.0

    def __enter__(self) -> "RunningClock":
        self.started = time.perf_counter()
        self.clock.set(self.origin)
        super().__enter__()
        return self

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=time.perf_counter() - self.started)

    def tick(self) -> None:
        self.clock.set(self.now())


class TcpProxy:
    """A loopback TCP proxy whose connections can be cut: a database or broker outage on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self.cuts = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._open.difference_update((src, dst))

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore()`."""
        self.cut_off = True
        self.cuts += 1
        with self._lock:
            victims = list(self._open)
        for s in victims:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self._running = False
        self.cut()
        self.listener.close()


class HttpSink(_Served):
    """An HTTP server on loopback that records what is POSTed to it (a webhook receiver)."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        self.script: list[int | tuple[int, dict[str, str]]] = []  # answered before 200s: 503, (429, {...})
        self.answer_body = b""  # what every answer carries (a receiver that talks back)
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    answer = sink.script.pop(0) if sink.script else (200 if self.path == "/hooks" else 404)
                    status, headers = (answer, {}) if isinstance(answer, int) else answer
                    if status < 300:
                        sink.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": body, "json": json.loads(body or b"null")})
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(sink.answer_body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(sink.answer_body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

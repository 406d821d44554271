"""`notifier dev smtp`: a developer sees every mail the workers send, on the terminal, as files
and on a web page (issue 21)."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from email.message import EmailMessage

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_sink_prints_saves_and_serves_what_it_receives(tmp_path):
    port, web = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")} | {"PYTHONPATH": str(ROOT)}
    sink = subprocess.Popen([sys.executable, "-u", "-m", "notifier.cli", "dev", "smtp", "--port", str(port),
                             "--web-port", str(web), "--save", str(tmp_path / "mails")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        first = sink.stdout.readline()
        assert first.startswith(f"SMTP sink on 127.0.0.1:{port}: run notifier with NOTIFIER_SMTP_HOST=127.0.0.1 "
                                f"NOTIFIER_SMTP_PORT={port}; the mails on http://127.0.0.1:{web}/"), first
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "salon@example.org", "lena@example.org", "Ihr Termin morgen"
        mail.set_content("Hallo Lena,\nbis morgen um 10:00.")
        mail.add_attachment(b"BEGIN:VCALENDAR", maintype="text", subtype="calendar", filename="termin.ics")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(mail)
        printed = [sink.stdout.readline() for _ in range(6)]
        assert printed[0].startswith("--- ") and "from salon@example.org  to lena@example.org" in printed[0]
        assert printed[1:5] == ["Subject: Ihr Termin morgen\n", "Attachments: termin.ics\n", "\n", "Hallo Lena,\n"]
        assert (tmp_path / "mails" / "001.eml").read_bytes().count(b"Ihr Termin morgen") == 1
        page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=30).read().decode()
        assert "1 mails received" in page and "<a href='/mail/1'>Ihr Termin morgen</a>" in page
        text = urllib.request.urlopen(f"http://127.0.0.1:{web}/mail/1", timeout=30).read().decode()
        assert "bis morgen um 10:00." in text
    finally:
        sink.send_signal(signal.SIGINT)
        out, err = sink.communicate(timeout=60)
    assert sink.returncode == 0 and out.strip().endswith("received 1 mails") and "Traceback" not in err, err


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "notifier.cli", "dev", "smtp", "--port", str(port)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")

"""What a new user can get wrong on the command line ends in one line that names the cause and what
to do, with an exit status a script can test, never in a traceback (issue 21). Each case runs the
real `notifier` command in a process of its own, as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, START, TENANTS, created

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")} | {"PYTHONPATH": str(ROOT)}


def notifier(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "notifier.cli", *args], cwd=cwd, env=CLEAN_ENV | env,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def one_error(done: subprocess.CompletedProcess, status: int = 1) -> str:
    """The error a user sees: the exit status, and the last line on stderr."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> tuple[dict[str, str], subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """A database `notifier init` made (twice), with one booking applied to it."""
    from notifier.bootstrap import build
    from notifier.services import apply_events
    from notifier.settings import load_settings

    root = tmp_path_factory.mktemp("cli")
    env = {"NOTIFIER_DATABASE_URL": f"sqlite:///{root / 'n.db'}", "NOTIFIER_DATA_DIR": str(root),
           "NOTIFIER_TENANTS_PATH": str(TENANTS)}
    first, second = notifier("init", cwd=root, **env), notifier("init", cwd=root, **env)
    ctx = build(load_settings(env))
    apply_events(ctx.store, [json.dumps(created("B-7"))], now=START, source="test")
    ctx.close()
    return env, first, second


def test_init_says_what_it_migrated_and_loaded(initialised):
    _, first, second = initialised
    # the one warning: two test tenants switched SMS on and these settings give no Twilio account (R27)
    [warning] = [json.loads(line)["event"] for line in first.stderr.splitlines() if line.strip()]
    assert first.returncode == 0 and warning.startswith("sms has no provider configured"), first.stderr
    assert warning.endswith("switched it on: clinic-full, studio-roma")
    lines = first.stdout.splitlines()
    assert "applied" in lines[0] and "from an empty database" in lines[0]
    assert lines[1].strip().startswith("0001 ") and len([x for x in lines if x.startswith("  0")]) >= 8
    assert lines[-1].startswith("tenants from") and "salon-berlin" in lines[-1]
    assert not any(line.startswith("{") for line in lines)  # no Alembic log lines
    assert "nothing to migrate" in second.stdout.splitlines()[0]


def test_timeline_of_an_unknown_booking_exits_1(initialised, tmp_path):
    env, _, _ = initialised
    assert one_error(notifier("timeline", "salon-berlin", "NOPE", cwd=tmp_path, **env)) == \
        "Error: no booking 'NOPE' for tenant 'salon-berlin'"
    assert "unknown tenant 'nope'" in one_error(notifier("timeline", "nope", "B-7", cwd=tmp_path, **env))


def test_timeline_is_a_table_in_local_time_and_json_on_request(initialised, tmp_path):
    env, _, _ = initialised
    table = notifier("timeline", "salon-berlin", "B-7", cwd=tmp_path, **env)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0] == "salon-berlin / B-7 (times in Europe/Berlin)"
    # the event at 06:00 UTC, the visit at 12:00 UTC: 07:00 and 13:00 in Berlin, in the details too
    assert lines[1].split() [:5] == ["Tue", "2026-12-01", "07:00", "booking.created", "starts_at=Tue"]
    assert "starts_at=Tue 2026-12-01 13:00" in lines[1] and "+00:00" not in table.stdout
    as_json = notifier("timeline", "salon-berlin", "B-7", "--json", cwd=tmp_path, **env)
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert entries[0]["at"] == "2026-12-01T06:00:00+00:00" and entries[0]["kind"] == "booking.created"
    assert len(entries) == len(lines) - 1


def test_no_database_says_to_run_init_and_creates_nothing(tmp_path):
    error = one_error(notifier("timeline", "salon-berlin", "B-1", cwd=tmp_path))
    assert error == f"Error: no database at {tmp_path / 'var' / 'notifier.db'}: run `notifier init` to create it, " \
                    "or point NOTIFIER_DATABASE_URL at an initialised one"
    assert list(tmp_path.iterdir()) == []


def test_an_empty_database_says_to_run_init(tmp_path):
    (tmp_path / "empty.db").touch()
    error = one_error(notifier("dlq", "list", cwd=tmp_path, NOTIFIER_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db"))
    assert error.endswith("has no notifier schema: run `notifier init` (migrates it and loads the tenants)")


@pytest.mark.parametrize("process", [["worker", "-Q", "sms"], ["beat"]])
def test_P2_P3_worker_and_beat_refuse_to_start_without_an_initialised_database(tmp_path, process):
    """They would otherwise say they are ready and fail on their first sweep or task."""
    error = one_error(notifier(*process, cwd=tmp_path))
    assert error == f"Error: no database at {tmp_path / 'var' / 'notifier.db'}: run `notifier init` to create it, " \
                    "or point NOTIFIER_DATABASE_URL at an initialised one"
    assert list(tmp_path.iterdir()) == []  # no database, no broker file: nothing started
    (tmp_path / "empty.db").touch()
    error = one_error(notifier(*process, cwd=tmp_path, NOTIFIER_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db"))
    assert error.endswith("has no notifier schema: run `notifier init` (migrates it and loads the tenants)")


def test_P2_beat_started_during_a_database_outage_says_so_and_waits_for_it(tmp_path):
    """An unreachable database is an outage (a supervisor restarting beat or a worker while
    PostgreSQL is down): it starts all the same instead of exiting, and says so."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    beat = subprocess.Popen([sys.executable, "-m", "notifier.cli", "beat"], cwd=tmp_path, text=True,
                            env=CLEAN_ENV | {"NOTIFIER_DATABASE_URL": f"postgresql://n:secret@127.0.0.1:{port}/n"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.append(beat.stderr.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert said and said[0].startswith(f"notifier: the database postgresql+psycopg://n:***@127.0.0.1:{port}/n "
                                           "cannot be reached now ("), said
        assert "starting all the same" in said[0] and beat.poll() is None
    finally:
        beat.terminate()
        beat.wait(timeout=60)


@pytest.mark.parametrize("variable, value, expected", [
    ("NOTIFIER_SMTP_PORT", "abc", "expected a whole number"),
    ("NOTIFIER_SMTP_STARTTLS", "maybe", "expected true or false"),
    ("NOTIFIER_BROKER_URL", "redis:6379", "expected embedded, redis://host:6379/0 or amqp://"),
])  # more forms in test_settings.py
def test_a_bad_setting_names_the_variable_and_the_form(tmp_path, variable, value, expected):
    error = one_error(notifier("timeline", "salon-berlin", "B-1", cwd=tmp_path, **{variable: value}), status=2)
    assert error.startswith(f"  - {variable} = {value!r}: {expected}")


def test_a_bad_value_in_the_config_file_names_the_key_and_the_file(tmp_path):
    config = tmp_path / "notifier.toml"
    config.write_text('[notifier]\nlease_s = "two minutes"\n')
    done = notifier("init", cwd=tmp_path, NOTIFIER_CONFIG=str(config), NOTIFIER_SMTP_PORT="25 ")
    assert one_error(done, status=2) == f"  - lease_s (in {config}) = 'two minutes': expected a whole number"
    assert done.stderr.startswith("notifier: cannot start: 1 problem(s) with the settings")


def test_a_refused_database_is_one_line(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = one_error(notifier("init", cwd=tmp_path,
                               NOTIFIER_DATABASE_URL=f"postgres://notifier:secret@127.0.0.1:{port}/notifier"))
    assert error.startswith(f"Error: cannot connect to the database postgresql+psycopg://notifier:***@127.0.0.1:{port}"
                            "/notifier: ")
    assert "refused" in error.lower() and error.endswith("NOTIFIER_DATABASE_URL says where it is")


def test_a_refused_broker_is_one_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "booking.created"}\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = one_error(notifier("publish", str(events), cwd=tmp_path, NOTIFIER_EVENTS_URL=f"redis://127.0.0.1:{port}/0"))
    assert error.startswith("Error: cannot reach the broker: ") and "refused" in error.lower()
    assert error.endswith(". Is it running and reachable? NOTIFIER_EVENTS_URL and NOTIFIER_BROKER_URL say where it is")


def test_an_unknown_queue_is_refused_with_the_list(tmp_path):
    error = one_error(notifier("worker", "-Q", "emails", cwd=tmp_path), status=2)
    assert error == "Error: Invalid value for '-Q' / '--queues': unknown queue emails: the queues are sweep, email, " \
                    "sms, whatsapp, staff, activity"


@pytest.mark.integration
def test_postgres_urls_as_hosting_providers_write_them_work(pg_url, tmp_path):
    url = pg_url.replace("postgresql+psycopg://", "postgres://")
    done = notifier("init", cwd=tmp_path, NOTIFIER_DATABASE_URL=url, NOTIFIER_TENANTS_PATH=str(TENANTS))
    assert done.returncode == 0 and "applied" in done.stdout, done.stderr
    assert one_error(notifier("timeline", "salon-berlin", "B-1", cwd=tmp_path, NOTIFIER_DATABASE_URL=url)) == \
        "Error: no booking 'B-1' for tenant 'salon-berlin'"

"""Settings: one loader, environment over the TOML file; production mode (issue 16)."""

import logging
from contextlib import contextmanager

import pytest

from notifier.settings import SettingsError, load_settings


@contextmanager
def caplog_of(name: str):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_environment_overrides_the_file(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text('[notifier]\nsmtp_port = 2525\nsmtp_host = "mail.local"\nsweep_interval_s = 5\n'
                      'smtp_starttls = true\n')
    s = load_settings({"NOTIFIER_SMTP_PORT": "587", "NOTIFIER_SMTP_STARTTLS": "no"}, config_file=config)
    assert (s.smtp_host, s.smtp_port, s.sweep_interval_s, s.smtp_starttls) == ("mail.local", 587, 5.0, False)


def test_shipped_defaults_are_the_embedded_ones():
    s = load_settings({})
    assert s.database_url.startswith("sqlite") and s.broker_url == "embedded" and s.events_url == "embedded"
    assert (s.templates_dir / "specialist" / "de" / "info.email.j2").is_file()


# --- production mode (issue 16) ------------------------------------------------------------------

def _cli(env: dict[str, str], *args: str):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    return subprocess.run([sys.executable, "-m", "notifier.cli", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_production_worker_with_the_defaults_exits_naming_each_missing_setting():
    """`NOTIFIER_ENV=production notifier worker` on the development defaults refuses to start."""
    run = _cli({"NOTIFIER_ENV": "production"}, "worker")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    for variable in ("NOTIFIER_DATABASE_URL", "NOTIFIER_BROKER_URL", "NOTIFIER_EVENTS_URL", "NOTIFIER_LINK_SECRET",
                     "NOTIFIER_WEBHOOK_SECRET"):
        assert variable in run.stderr, variable


def test_production_names_a_mistyped_variable_and_development_warns_about_it():
    good = {"NOTIFIER_ENV": "production", "NOTIFIER_DATABASE_URL": "postgresql+psycopg://n:pw@db/n",
            "NOTIFIER_BROKER_URL": "redis://:pw@redis:6379/0", "NOTIFIER_EVENTS_URL": "amqp://n:pw@mq:5672//",
            "NOTIFIER_LINK_SECRET": "x" * 32, "NOTIFIER_WEBHOOK_SECRET": "y" * 32}
    load_settings(good)  # nothing missing: no error
    typo = {**good, "NOTIFIER_DATABSE_URL": "postgresql+psycopg://n:pw@db/other"}
    run = _cli(typo, "worker")
    assert run.returncode != 0
    assert "NOTIFIER_DATABSE_URL is not a setting (did you mean NOTIFIER_DATABASE_URL?)" in run.stderr
    with pytest.raises(SettingsError) as refused:
        load_settings(typo)
    assert len(refused.value.problems) == 1
    with caplog_of("notifier.settings") as records:
        s = load_settings({"NOTIFIER_DATABSE_URL": "sqlite:///elsewhere.db"})
    assert s.database_url == "sqlite:///var/notifier.db"
    assert any("NOTIFIER_DATABSE_URL is not a setting" in r.getMessage() for r in records)


def test_production_refuses_brokers_without_a_password_and_short_link_secrets():
    base = {"NOTIFIER_ENV": "production", "NOTIFIER_DATABASE_URL": "postgresql+psycopg://n:pw@db/n",
            "NOTIFIER_BROKER_URL": "redis://redis:6379/0", "NOTIFIER_EVENTS_URL": "amqp://notifier:@mq:5672//",
            "NOTIFIER_LINK_SECRET": "short", "NOTIFIER_WEBHOOK_SECRET": "y" * 32}
    with pytest.raises(SettingsError) as refused:
        load_settings(base)
    text = "\n".join(refused.value.problems)
    assert "NOTIFIER_BROKER_URL has no password" in text and "NOTIFIER_EVENTS_URL has no password" in text
    assert "NOTIFIER_LINK_SECRET: each secret needs at least 16 characters" in text


def test_N4_link_secrets_rotate_new_links_use_the_first_and_links_sent_before_keep_working(ctx, tmp_path):
    """A link sent before the rotation still opens its page after it (the store resolves it, not the
    secret); links made after it use the new secret."""
    import json
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from notifier.links import BookingLinks
    from notifier.services import apply_events
    from notifier.web.app import create_app
    from tests.conftest import START, created

    old, new = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
    before = BookingLinks(load_settings({"NOTIFIER_LINK_SECRET": old}).link_secrets, "http://x")
    after = BookingLinks(load_settings({"NOTIFIER_LINK_SECRET": f"{new}, {old}"}).link_secrets, "http://x")
    assert after.token("t", "b") == BookingLinks([new], "http://x").token("t", "b") != before.token("t", "b")
    apply_events(ctx.store, [json.dumps(created("b1"))], now=START, source="test")
    with ctx.store.transaction() as tx:  # sent with the old secret
        tx.save_links([(before.token("salon-berlin", "b1"), "salon-berlin", "b1")], START)
    rotated = TestClient(create_app(replace(ctx, links=after)))
    assert rotated.get(f"/l/{before.token('salon-berlin', 'b1')}").status_code == 200
    config = tmp_path / "n.toml"
    config.write_text(f'[notifier]\nlink_secret = ["{new}", "{old}"]\n')
    assert load_settings({}, config_file=config).link_secrets == (new, old)


def test_values_are_checked_and_typed():
    s = load_settings({"NOTIFIER_SMTP_STARTTLS": "On", "NOTIFIER_SMTP_SSL": "False", "NOTIFIER_LEASE_S": "90",
                       "NOTIFIER_LOG_LEVEL": "debug", "NOTIFIER_WHATSAPP_PROVIDER": "Twilio"})
    assert (s.smtp_starttls, s.smtp_ssl, s.lease_s, s.log_level, s.whatsapp_provider) == (True, False, 90, "DEBUG",
                                                                                           "twilio")


@pytest.mark.parametrize("url", ["postgres://u:pw@db.example.com:5432/app", "postgresql://u:pw@db.example.com:5432/app",
                                 "postgresql+psycopg://u:pw@db.example.com:5432/app"])
def test_every_usual_postgresql_url_means_psycopg(url):
    assert load_settings({"NOTIFIER_DATABASE_URL": url}).database_url == "postgresql+psycopg://u:pw@db.example.com:5432/app"


@pytest.mark.parametrize("variable, value, expected", [
    ("NOTIFIER_SMTP_PORT", "70000", "a port number between 1 and 65535"),
    ("NOTIFIER_SWEEP_INTERVAL_S", "2s", "a number"),
    ("NOTIFIER_RETRY_BASE_S", "-1", "a number of at least 0"),
    ("NOTIFIER_DATABASE_URL", "mysql://db/notifier", "sqlite:///PATH or postgresql://user:password@host:5432/dbname"),
    ("NOTIFIER_EVENTS_URL", "kafka://k:9092", "embedded, redis://host:6379/0 or amqp://user:password@host:5672//"),
    ("NOTIFIER_CLOCK", "fast", "system or file:PATH"),
    ("NOTIFIER_WHATSAPP_PROVIDER", "vonage", "one of meta, twilio"),
    ("NOTIFIER_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
])
def test_a_bad_value_is_refused_by_name(variable, value, expected):
    with pytest.raises(SettingsError) as refused:
        load_settings({variable: value})
    assert str(refused.value) == f"{variable} = {value!r}: expected {expected}"


def test_a_missing_config_file_is_named():
    with pytest.raises(SettingsError, match="NOTIFIER_CONFIG: no such file '/nowhere.toml'"):
        load_settings({"NOTIFIER_CONFIG": "/nowhere.toml"})


def test_producers_are_bound_to_tenants_in_one_setting_or_a_toml_table(tmp_path):
    s = load_settings({"NOTIFIER_PRODUCERS": "salon-crm=salon-berlin, salon-munich; roma-app=studio-roma"})
    assert s.producer_bindings == {"salon-crm": frozenset({"salon-berlin", "salon-munich"}),
                                   "roma-app": frozenset({"studio-roma"})}
    config = tmp_path / "n.toml"
    config.write_text('[notifier.producers]\nsalon-crm = ["salon-berlin", "salon-munich"]\nroma-app = ["studio-roma"]\n')
    assert load_settings({}, config_file=config).producer_bindings == s.producer_bindings
    for bad, says in (("salon-crm", "expected producer=tenant"), ("Salon CRM=x", "is not a producer name"),
                      ("booking=x", "is not a producer name"), ("a=x; a=y", "named twice")):
        with pytest.raises(SettingsError, match=says):
            load_settings({"NOTIFIER_PRODUCERS": bad})
    with pytest.raises(SettingsError, match="no event could be accepted"):
        load_settings({"NOTIFIER_EVENTS_SHARED": "false"})


def test_a_batch_from_several_lists_is_kept_and_acknowledged_list_by_list():
    """RedisListsSource: events another batch's locks held stay on the list they came from."""
    from notifier.ingest import Batch, _joined

    done: list[tuple[str, object]] = []

    def part(name: str, n: int) -> Batch:
        return Batch(bodies=[f"{name}{i}".encode() for i in range(n)], ack=lambda: done.append((name, "ack")),
                     keep=lambda positions: done.append((name, positions)))

    batch = _joined([part("a", 2), part("b", 3), part("c", 1)])
    assert batch.bodies == [b"a0", b"a1", b"b0", b"b1", b"b2", b"c0"] and batch.bound == [None] * 6
    batch.keep([1, 3, 4])
    assert done == [("a", [1]), ("b", [1, 2]), ("c", "ack")]

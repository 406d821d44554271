"""Settings: one loader, environment over the TOML file."""

from notifier.settings import load_settings


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

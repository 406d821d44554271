"""The one place configuration is read: environment (NOTIFIER_*) over a TOML file.

`load_settings()` reads `config/notifier.toml` (or the file named by NOTIFIER_CONFIG),
then lets every `NOTIFIER_<FIELD>` variable override the field of that name, and
returns a frozen `Settings`. Secrets (SMTP password, provider tokens) belong in the
environment only. Nothing here runs at import time.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def shipped_path(name: str) -> Path:
    """Where the shipped `templates/` or `config/` tree lives: the source checkout, else share/."""
    source = Path(__file__).resolve().parent.parent / name
    if source.is_dir():
        return source
    installed = Path(sys.prefix) / "share" / "notifier" / name
    return installed


@dataclass(frozen=True)
class Settings:
    # where state lives
    database_url: str = "sqlite:///var/notifier.db"
    data_dir: str = "var"
    # Celery broker; "embedded" is kombu's SQLAlchemy transport on SQLite under data_dir/broker
    broker_url: str = "embedded"
    broker_key_prefix: str = ""  # Redis brokers: prefix every key (several deployments on one Redis)
    # where booking systems publish events: redis://... (a list), amqp://... (a queue), or embedded
    events_url: str = "embedded"
    events_queue: str = "notifier.events"
    events_exchange: str = "notifier.events"
    # events back to the booking system (slot released, confirmed / cancelled by the customer)
    outbound_url: str = ""  # default: events_url
    outbound_queue: str = "notifier.outbound"
    ingest_batch_max: int = 500
    ingest_batch_wait_s: float = 0.05
    hold_s: float = 300.0  # how long an event waits for the one it follows (then: gap skipped / dead letter)
    ingest_consumer: str = ""  # stable name per ingester process; default: host name + pid
    # templates and tenants
    templates_path: str = ""
    tenants_path: str = ""
    # email
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout_s: float = 10.0
    mail_from: str = "notifier@localhost"
    # SMS and WhatsApp providers; tokens only from the environment
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from: str = ""  # sender number (E.164), or
    twilio_messaging_service_sid: str = ""
    twilio_api_url: str = "https://api.twilio.com"
    whatsapp_provider: str = "meta"  # meta | twilio
    twilio_whatsapp_from: str = ""
    meta_token: str = ""
    meta_phone_number_id: str = ""
    meta_api_url: str = "https://graph.facebook.com"
    meta_app_secret: str = ""  # signs Meta's status callbacks (X-Hub-Signature-256)
    meta_verify_token: str = ""  # Meta's webhook subscription handshake
    provider_timeout_s: float = 10.0
    # per provider account, shared by all workers: "sms=200,whatsapp=80,email=50" (messages/s)
    rate_limits: str = ""
    ratelimit_redis_url: str = ""  # default: the broker's Redis; none: per process
    # staff notices and activities: signed JSON POSTs to the booking system (per-tenant
    # `webhook_url` in its settings wins); the secret comes from the environment
    staff_webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout_s: float = 10.0
    # customer links: where the web app is reachable, and the signing secret (environment)
    public_url: str = "http://127.0.0.1:8000"
    link_secret: str = ""
    # defaults for tenants that do not say
    default_timezone: str = "Europe/Berlin"
    default_language: str = "en"
    # sweeps and dispatch
    sweep_interval_s: float = 2.0
    sweep_batch: int = 1000
    dispatch_batch: int = 100
    dispatch_concurrency: int = 8
    lease_s: int = 120
    max_attempts: int = 6
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    # housekeeping (a beat task, safe to run twice): how often, how many rows per statement, and how
    # long processed event ids, published outbox events and send attempts are kept (0: for ever)
    housekeeping_interval_s: float = 300.0
    housekeeping_batch: int = 5000
    retention_processed_events_s: int = 30 * 86400
    retention_outbox_s: int = 7 * 86400
    retention_attempts_s: int = 90 * 86400
    # clock: "system", or "file:PATH" (a simulated clock for demos and tests)
    clock: str = "system"
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unavailable(self) -> dict[str, list[str]]:
        """R6: channel -> regions (ISO country codes) where the platform does not offer it."""
        return {str(k): [str(r) for r in v] for k, v in dict(self.extra.get("unavailable", {})).items()}

    @property
    def templates_dir(self) -> Path:
        return Path(self.templates_path) if self.templates_path else shipped_path("templates")

    @property
    def tenants_dir(self) -> Path:
        return Path(self.tenants_path) if self.tenants_path else shipped_path("config") / "tenants"

    @property
    def broker_dir(self) -> Path:
        return Path(self.data_dir) / "broker"


def _coerce(raw: Any, to: type | str) -> Any:
    kind = to if isinstance(to, str) else to.__name__
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw if not isinstance(raw, str) else raw.strip()


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    env = os.environ if environ is None else environ
    path = Path(config_file or env.get("NOTIFIER_CONFIG") or shipped_path("config") / "notifier.toml")
    values: dict[str, Any] = {}
    if path.is_file():
        with path.open("rb") as handle:
            values.update(tomllib.load(handle).get("notifier", {}))
    known = {f.name: f for f in fields(Settings) if f.name != "extra"}
    extra = {k: v for k, v in values.items() if k not in known}
    values = {k: v for k, v in values.items() if k in known}
    for name in known:
        key = f"NOTIFIER_{name.upper()}"
        if key in env:
            values[name] = env[key]
    typed = {name: _coerce(value, known[name].type) for name, value in values.items()}
    return Settings(**typed, extra=extra)

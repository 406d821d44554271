"""The one place configuration is read: environment (NOTIFIER_*) over a TOML file.

`load_settings()` reads `config/notifier.toml` (or the file named by NOTIFIER_CONFIG),
then lets every `NOTIFIER_<FIELD>` variable override the field of that name, and
returns a frozen `Settings`. Secrets (SMTP password, provider tokens) belong in the
environment only. Nothing here runs at import time.

`NOTIFIER_ENV=production` (the compose file and the Kubernetes manifests set it) makes the
loader refuse what is only fit for a developer's machine, naming each problem at once: SQLite,
the embedded broker, a missing link or webhook secret, a broker URL without a password, and any
`NOTIFIER_*` variable that is not a setting (a typo would otherwise leave its default in force).
In development those are warnings, and missing secrets are generated per data folder.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import logging
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from notifier.producers import parse_producers

log = logging.getLogger("notifier.settings")
ENVIRONMENTS = ("development", "production")
# NOTIFIER_* variables that are not settings: the loader's own, the compose file's, the tests'
OTHER_VARIABLES = frozenset({"NOTIFIER_CONFIG", "NOTIFIER_DEMO_DIR", "NOTIFIER_IMAGE", "NOTIFIER_WEB_PORT",
                             "NOTIFIER_REQUIRE_SERVICES"})
OTHER_PREFIXES = ("NOTIFIER_TEST_",)
_warned: set[str] = set()


class SettingsError(ValueError):
    """The settings cannot be used; `problems` names each one (variable, what is wrong, what to do)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def shipped_path(name: str) -> Path:
    """Where the shipped `templates/` or `config/` tree lives: the source checkout, else share/."""
    source = Path(__file__).resolve().parent.parent / name
    if source.is_dir():
        return source
    installed = Path(sys.prefix) / "share" / "notifier" / name
    return installed


@dataclass(frozen=True)
class Settings:
    # development (the default: embedded stores, generated secrets) or production (refuses them)
    env: str = "development"
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
    # booking systems bound to tenants: "salon-crm=salon-berlin,salon-munich; roma-app=studio-roma"
    # (or a TOML table); each publishes on `<events_queue>.<name>` (Redis) or with routing keys
    # `<name>.<type>` (AMQP), and may speak for its tenants only (notifier/producers.py)
    producers: str = ""
    events_shared: bool = True  # also consume the shared queue, whose events may name any tenant
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
    smtp_timeout_s: float = 10.0  # connecting and the greeting; the replies of a mail transaction wait up to
    smtp_transaction_timeout_s: float = 600.0  # (RFC 5321 4.5.3.2: the one after the message, ten minutes)
    # the header under which the relay drops a repeated message (Resend: Resend-Idempotency-Key; EmailEngine:
    # X-EE-Idempotency-Key): each mail carries its idempotency key there, so a copy sent again after a lost
    # answer or a killed worker reaches the relay only; empty: a relay that cannot (docs/reliability.md)
    smtp_idempotency_header: str = ""
    mail_from: str = "notifier@localhost"  # a tenant's `sender.mail_from` wins; else this address, the company's name
    reply_to: str = ""  # a tenant's `sender.reply_to` wins, then its company's `email` detail; empty: no Reply-To
    # further SMTP relays, tried in this order when the one above is down (notifier/failover.py),
    # comma-separated: smtp://user:password@host:587?starttls=1&name=backup (smtps://: TLS from the start;
    # &idempotency_header=NAME: as smtp_idempotency_header, for that relay)
    smtp_relays: str = ""
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
    # further SMS accounts on Twilio's Messages API (Twilio, or a provider compatible with it), tried
    # in this order when the one above is down, comma-separated: the API's base URL with the account
    # SID and auth token, https://SID:TOKEN@api.twilio.com?from=%2B4930123456&name=backup
    # (messaging_service=MG... instead of from=)
    sms_accounts: str = ""
    # failover: an account is skipped for failover_cooldown_s after failover_failures down signals
    # (connection refused, 5xx, timeouts) within failover_window_s; channels with one account never skip
    failover_failures: int = 3
    failover_window_s: float = 30.0
    failover_cooldown_s: float = 60.0
    # per provider account, shared by all workers: "sms=200,whatsapp=80,email=50" (messages/s)
    rate_limits: str = ""
    ratelimit_redis_url: str = ""  # default: the broker's Redis; none: per process
    # staff notices and activities: signed JSON POSTs to the booking system (a tenant file's
    # `webhook_url` wins); the secret comes from the environment
    staff_webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout_s: float = 10.0
    # webhooks may not connect to loopback, private or link-local addresses but in these networks
    # (comma-separated, e.g. "10.20.0.0/16" for a booking system inside the cluster)
    webhook_allowed_networks: str = ""
    # customer links: where the web app is reachable, and the signing secret (environment)
    # the web app refuses larger request bodies with 413 before reading them (callbacks, link posts)
    max_body_bytes: int = 1_048_576
    # the web app's /metrics and /health details: `Authorization: Bearer <metrics_token>` (unset: /metrics is off)
    metrics_token: str = ""
    console_session_s: int = 8 * 3600  # how long the ops console keeps a key after signing in
    public_url: str = "http://127.0.0.1:8000"
    link_secret: str = ""  # comma-separated: tokens are made with the first; older ones keep working (rotation)
    link_valid_after_visit_s: int = 7 * 86400  # the page answers until this long after the visit ends
    # defaults for tenants that do not say
    default_timezone: str = "Europe/Berlin"
    default_language: str = "en"
    # sweeps and dispatch
    sweep_interval_s: float = 2.0
    # beat sends a sweep only when its work is waiting (due messages, lapsed claims, unpublished
    # outbox events; bookings whose markers change), and an idle one this often: a heartbeat
    sweep_idle_s: float = 60.0
    sweep_batch: int = 1000
    dispatch_batch: int = 100
    dispatch_concurrency: int = 8
    lease_s: int = 120
    # after an attempt whose answer was lost, how long Twilio and Meta get to report the copy they
    # may have taken (their status callbacks name the message) before it is sent again; and after a
    # claim that ended unrecorded, on any channel that cannot be asked, how long a worker that was
    # only stalled past its lease gets to come back and write down what it sent (notifier/receipts.py)
    report_wait_s: float = 60.0
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
    retention_dead_letters_s: int = 30 * 86400  # replayable within it; bodies hold personal data
    # clock: "system", or "file:PATH" (a simulated clock for demos and tests)
    clock: str = "system"
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unavailable(self) -> dict[str, list[str]]:
        """R6: channel -> regions (ISO country codes) where the platform does not offer it."""
        return {str(k): [str(r) for r in v] for k, v in dict(self.extra.get("unavailable", {})).items()}

    @property
    def sms_account_list(self) -> list[ProviderAccount]:
        """The further SMS accounts of `sms_accounts`, in failover order."""
        return parse_accounts(self.sms_accounts, "sms", ("http", "https"))

    @property
    def smtp_relay_list(self) -> list[ProviderAccount]:
        """The further SMTP relays of `smtp_relays`, in failover order."""
        return parse_accounts(self.smtp_relays, "smtp", ("smtp", "smtps"))

    @property
    def twilio_auth_tokens(self) -> tuple[str, ...]:
        """Every Twilio-API account's token: a status callback is signed with its account's."""
        return tuple(t for t in (self.twilio_auth_token, *(a.password for a in self.sms_account_list)) if t)

    @property
    def twilio_accounts(self) -> dict[str, str]:
        """Each Twilio-API account of ours, its Account SID -> its auth token (the first account's,
        then `sms_accounts`'): what Twilio's requests name in `AccountSid` and sign with."""
        accounts = {a.user: a.password for a in reversed(self.sms_account_list) if a.user and a.password}
        if self.twilio_account_sid and self.twilio_auth_token:
            accounts[self.twilio_account_sid] = self.twilio_auth_token
        return accounts

    @property
    def twilio_content(self) -> dict[str, dict[str, str]]:
        """Twilio's WhatsApp templates (`[notifier.twilio_content]`): the approved template's name
        -> its language code -> its Content SID; a tenant's `sender.whatsapp_content` wins."""
        table = self.extra.get("twilio_content")
        return {str(name): {str(lang): str(sid) for lang, sid in sids.items()}
                for name, sids in table.items() if isinstance(sids, Mapping)} if isinstance(table, Mapping) else {}

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def link_secrets(self) -> tuple[str, ...]:
        """The link secrets, newest first: sign with the first, accept every one (rotation)."""
        return tuple(part.strip() for part in self.link_secret.split(",") if part.strip())

    @property
    def producer_bindings(self) -> dict[str, frozenset[str]]:
        """Producer name -> the tenants it may speak for (`producers`)."""
        return parse_producers(self.producers)

    @property
    def templates_dir(self) -> Path:
        return Path(self.templates_path) if self.templates_path else shipped_path("templates")

    @property
    def tenants_dir(self) -> Path:
        return Path(self.tenants_path) if self.tenants_path else shipped_path("config") / "tenants"

    @property
    def broker_dir(self) -> Path:
        return Path(self.data_dir) / "broker"


@dataclass(frozen=True)
class ProviderAccount:
    """One further provider account of a channel, read from its URL (`smtp_relays`, `sms_accounts`)."""

    name: str
    scheme: str
    host: str
    port: int | None
    path: str
    user: str = field(repr=False, default="")
    password: str = field(repr=False, default="")
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{f':{self.port}' if self.port else ''}{self.path.rstrip('/')}"


def parse_accounts(spec: str, kind: str, schemes: tuple[str, ...]) -> list[ProviderAccount]:
    """Comma-separated account URLs; ValueError naming the account by position, never its secret.
    Unnamed accounts are `<kind>-2`, `<kind>-3`, ... (the first is the channel's own settings)."""
    from urllib.parse import parse_qsl, unquote

    accounts = []
    for number, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), start=2):
        parts = urlsplit(item)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in schemes or not parts.hostname or port == -1:
            raise ValueError(f"account {number - 1} is not a {' or '.join(s + '://' for s in schemes)} URL "
                             f"with a host")
        options = dict(parse_qsl(parts.query))
        name = options.pop("name", "") or f"{kind}-{number}"
        if kind == "sms" and not (parts.username and parts.password):
            raise ValueError(f"account {number - 1} ({name}) needs its SID and token: https://SID:TOKEN@host")
        accounts.append(ProviderAccount(name=name, scheme=parts.scheme, host=parts.hostname, port=port,
                                        path=parts.path, user=unquote(parts.username or ""),
                                        password=unquote(parts.password or ""), options=options))
    names = [{"sms": "twilio"}.get(kind, kind), *(a.name for a in accounts)]  # the first account's name
    if len(set(names)) < len(names):
        raise ValueError(f"account names repeat: {', '.join(names)}")
    return accounts


# the expected form of each kind of value, as a user reads it in an error
_FORMS = {"int": "a whole number", "float": "a number", "bool": "true or false (also 1/0, yes/no, on/off)"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_DATABASE_FORM = "sqlite:///PATH or postgresql://user:password@host:5432/dbname"
_BROKER_FORM = "embedded, redis://host:6379/0 or amqp://user:password@host:5672//"
_SCHEMES = {
    "database_url": (("sqlite://", "postgresql://", "postgresql+psycopg://"), _DATABASE_FORM),
    "broker_url": (("embedded", "redis://", "rediss://", "amqp://", "amqps://", "pyamqp://", "memory://"),
                   _BROKER_FORM),
    "events_url": (("embedded", "redis://", "rediss://", "amqp://", "amqps://", "pyamqp://"), _BROKER_FORM),
    "outbound_url": (("", "embedded", "redis://", "rediss://", "amqp://", "amqps://", "pyamqp://"), _BROKER_FORM),
    "clock": (("system", "file:"), "system or file:PATH"),
}
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,75}")  # a mail header's name, as relays name theirs
_CHOICES = {"whatsapp_provider": ("meta", "twilio"),
            "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
_PORTS = ("smtp_port",)


def normalise_database_url(url: str) -> str:
    """The URL SQLAlchemy needs: `postgres://` and `postgresql://` (the forms hosting providers and
    libpq hand out) mean PostgreSQL through psycopg 3, the driver notifier ships with."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _coerce(raw: Any, to: type | str) -> Any:
    kind = to if isinstance(to, str) else to.__name__
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(raw)
        return word in _TRUE
    if kind == "int":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(raw)
        return int(raw)
    if kind == "float":
        if isinstance(raw, bool):
            raise ValueError(raw)
        return float(raw)
    if isinstance(raw, dict):  # a TOML table, e.g. [notifier.producers] salon-crm = ["salon-berlin"]
        return "; ".join(f"{k}={','.join(v) if isinstance(v, list | tuple) else v}" for k, v in raw.items())
    if isinstance(raw, list | tuple):  # a TOML list, e.g. link_secret = ["new", "old"]
        return ",".join(str(item).strip() for item in raw)
    return raw if not isinstance(raw, str) else raw.strip()


def _checked(name: str, value: Any, kind: str) -> Any:
    """The value of one setting, typed and checked; ValueError with the expected form if it is not."""
    try:
        value = _coerce(value, kind)
    except (TypeError, ValueError):
        raise ValueError(f"expected {_FORMS[kind]}") from None
    if kind in ("int", "float") and value < 0:
        raise ValueError("expected a number of at least 0")
    if name in _PORTS and not 0 < value < 65536:
        raise ValueError("expected a port number between 1 and 65535")
    if name == "database_url":
        value = normalise_database_url(value)
    if name in _SCHEMES:
        prefixes, form = _SCHEMES[name]
        if not (value in prefixes or any(p.endswith(("/", ":")) and value.startswith(p) for p in prefixes)):
            raise ValueError(f"expected {form}")
    if name in _CHOICES:
        choices = _CHOICES[name]
        match = next((c for c in choices if c.lower() == str(value).lower()), None)
        if match is None:
            raise ValueError(f"expected one of {', '.join(choices)}")
        value = match
    return value


def _variable(name: str) -> str:
    return f"NOTIFIER_{name.upper()}"


def _unknown_variables(env: Mapping[str, str], known: set[str]) -> list[str]:
    problems = []
    names = sorted(_variable(n) for n in known)
    for key in sorted(env):
        if not key.startswith("NOTIFIER_") or key in OTHER_VARIABLES or key.startswith(OTHER_PREFIXES):
            continue
        if key[len("NOTIFIER_"):].lower() in known:
            continue
        close = difflib.get_close_matches(key, names, n=1)
        problems.append(f"{key} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
    return problems


def _no_password(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.startswith(("redis", "rediss", "amqp", "amqps")) and not parts.password


def production_problems(settings: Settings) -> list[str]:
    """What a production process must not start with, each named with what to do instead."""
    problems = []
    if settings.database_url.startswith("sqlite"):
        problems.append("NOTIFIER_DATABASE_URL is SQLite (the development default): set "
                        "postgresql+psycopg://user:password@host/db")
    brokers = {"broker_url": settings.broker_url, "events_url": settings.events_url}
    if settings.outbound_url:
        brokers["outbound_url"] = settings.outbound_url
    for name, url in brokers.items():
        if url == "embedded":
            problems.append(f"{_variable(name)} is the embedded broker (the development default): set "
                            "redis://:password@host:6379/0 or amqp://user:password@host:5672//")
        elif _no_password(url):
            problems.append(f"{_variable(name)} has no password: a broker reachable by others needs one")
    if not settings.link_secrets:
        problems.append("NOTIFIER_LINK_SECRET is not set: customers' links need one secret shared by every "
                        "process (at least 16 characters; python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if not settings.webhook_secret:
        problems.append("NOTIFIER_WEBHOOK_SECRET is not set: staff notices are signed with it (at least 16 "
                        "characters)")
    return problems


def _check(settings: Settings, env: Mapping[str, str], known: set[str]) -> None:
    problems = []
    if settings.env not in ENVIRONMENTS:
        problems.append(f"NOTIFIER_ENV is {settings.env!r}: one of {', '.join(ENVIRONMENTS)}")
    short = [i for i, secret in enumerate(settings.link_secrets) if len(secret) < 16]
    if short:
        problems.append(f"NOTIFIER_LINK_SECRET: each secret needs at least 16 characters "
                        f"(number {', '.join(str(i + 1) for i in short)} is shorter)")
    for item in settings.webhook_allowed_networks.split(","):
        try:
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            problems.append(f"NOTIFIER_WEBHOOK_ALLOWED_NETWORKS: {item.strip()!r} is not a network (10.0.0.0/8)")
    for name, read in (("sms_accounts", lambda: settings.sms_account_list),
                       ("smtp_relays", lambda: settings.smtp_relay_list)):
        try:
            read()
        except ValueError as exc:
            problems.append(f"{_variable(name)}: {exc}")
    headers = [(_variable("smtp_idempotency_header"), settings.smtp_idempotency_header)]
    with contextlib.suppress(ValueError):  # an unreadable relay list is said above
        headers += [(f"{_variable('smtp_relays')} ({a.name})", a.options.get("idempotency_header", ""))
                    for a in settings.smtp_relay_list]
    problems += [f"{where}: {header!r} is not a header name (letters, digits and dashes: Resend-Idempotency-Key)"
                 for where, header in headers if header and not HEADER_NAME.fullmatch(header)]
    try:
        if not parse_producers(settings.producers) and not settings.events_shared:
            problems.append("NOTIFIER_EVENTS_SHARED is off and no producers are bound: no event could be accepted")
    except ValueError as exc:
        problems.append(f"NOTIFIER_PRODUCERS: {exc}")
    problems += content_sid_problems(settings.extra.get("twilio_content"), "twilio_content")
    unknown = _unknown_variables(env, known)
    if settings.production:
        problems += production_problems(settings) + unknown
    else:
        for problem in unknown:
            if problem not in _warned:
                _warned.add(problem)
                log.warning("%s; ignored", problem)
    if problems:
        raise SettingsError(problems)


def content_sid_problems(table: Any, where: str) -> list[str]:
    """What is wrong with a table of Twilio Content SIDs: template name -> language -> HX + 32 hex digits."""
    from notifier.channels.twilio import CONTENT_SID

    if table is None:
        return []
    if not isinstance(table, Mapping):
        return [f"{where}: expected a table of template names, each a table of language = \"HX...\""]
    problems = []
    for name, sids in table.items():
        if not isinstance(sids, Mapping):
            problems.append(f"{where}.{name}: expected a table of language = \"HX...\" (the template's Content SIDs)")
            continue
        problems += [f"{where}.{name}.{lang} = {sid!r}: expected a Content SID, HX and 32 hexadecimal digits"
                     for lang, sid in sids.items() if not (isinstance(sid, str) and CONTENT_SID.fullmatch(sid))]
    return problems


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    """Raises SettingsError naming every unusable value: its variable (or the file's key) and the
    form it expects, and in production what production refuses."""
    env = os.environ if environ is None else environ
    path = Path(config_file or env.get("NOTIFIER_CONFIG") or shipped_path("config") / "notifier.toml")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path.is_file():
        try:
            with path.open("rb") as handle:
                values.update(tomllib.load(handle).get("notifier", {}))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError([f"{path}: not valid TOML ({exc})"]) from None
        origin = {key: f"{key} (in {path})" for key in values}
    elif config_file or env.get("NOTIFIER_CONFIG"):
        raise SettingsError([f"NOTIFIER_CONFIG: no such file {str(path)!r} (expected the path of a TOML file)"])
    known = {f.name: f for f in fields(Settings) if f.name != "extra"}
    extra = {k: v for k, v in values.items() if k not in known}
    values = {k: v for k, v in values.items() if k in known}
    for name in known:
        key = _variable(name)
        if key in env:
            values[name] = env[key]
            origin[name] = key
    typed: dict[str, Any] = {}
    problems = []
    for name, value in values.items():
        kind = known[name].type if isinstance(known[name].type, str) else known[name].type.__name__
        try:
            typed[name] = _checked(name, value, kind)
        except ValueError as exc:
            problems.append(f"{origin[name]} = {str(value)!r}: {exc}")
    if problems:
        raise SettingsError(problems)
    settings = Settings(**typed, extra=extra)
    _check(settings, env, set(known))
    return settings

"""The composition root: builds store, channels, renderer and clock from Settings.

Nothing here runs at import time; processes call `build()` once when they start
(a Celery worker on its first task, the ingester and the web app at start-up).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from notifier.channels.base import ChannelAdapter
from notifier.clock import Clock, clock_from
from notifier.domain.model import Channel
from notifier.failover import Account, Failover, Health
from notifier.leases import Leases
from notifier.links import BookingLinks, link_secret
from notifier.receipts import Receipts
from notifier.rendering.environment import Renderer
from notifier.settings import Settings, load_settings
from notifier.store.sql import Store, make_engine

log = logging.getLogger("notifier")


@dataclass
class Context:
    settings: Settings
    store: Store
    renderer: Renderer
    clock: Clock
    channels: dict[Channel, ChannelAdapter] = field(default_factory=dict)
    links: BookingLinks | None = None
    _bundles: dict[tuple[str, str], Renderer] = field(default_factory=dict)
    _senders: ThreadPoolExecutor | None = None
    _senders_lock: threading.Lock = field(default_factory=threading.Lock)
    _leases: Leases | None = None
    _receipts: Receipts | None = None

    def sender_pool(self) -> ThreadPoolExecutor:
        """The threads that make provider calls, kept for the process's life so their pooled
        connections (HTTP sessions, SMTP) are reused from batch to batch."""
        with self._senders_lock:
            if self._senders is None:
                self._senders = ThreadPoolExecutor(max_workers=max(1, self.settings.dispatch_concurrency),
                                                   thread_name_prefix="send")
            return self._senders

    def leases(self) -> Leases:
        """The claims this process holds and their heartbeat (notifier/leases.py), one per process."""
        if self._leases is not None:  # every provider call asks: no lock once it is there
            return self._leases
        with self._senders_lock:
            if self._leases is None:
                self._leases = Leases(self.store, self.clock, self.settings.lease_s)
            return self._leases

    def receipts(self) -> Receipts:
        """Where sender threads write down each provider answer at once (notifier/receipts.py), one per process."""
        if self._receipts is not None:  # every provider answer asks: no lock once it is there
            return self._receipts
        with self._senders_lock:
            if self._receipts is None:
                self._receipts = Receipts(self.store)
            return self._receipts

    @property
    def unavailable(self) -> dict[str, list[str]]:
        """The platform's channels as planning takes them (`services.settings_for`): each with the
        regions it is not offered in (R6), and the customer channels this process has no provider
        for (no Twilio or Meta settings): never chosen, whatever the tenant switched on."""
        from notifier.domain.model import CUSTOMER_CHANNELS
        from notifier.services import WITHOUT_PROVIDER

        missing = [c.value for c in CUSTOMER_CHANNELS if c not in self.channels]
        return {**self.settings.unavailable, WITHOUT_PROVIDER: missing} if missing else self.settings.unavailable

    def warn_of_missing_providers(self) -> None:
        """At start: the channels tenants switched on that have no provider here, naming those tenants."""
        from notifier.services import tenants_without_provider

        needs = {Channel.SMS: "NOTIFIER_TWILIO_ACCOUNT_SID and NOTIFIER_TWILIO_AUTH_TOKEN",
                 Channel.WHATSAPP: f"the {self.settings.whatsapp_provider} WhatsApp settings"}
        try:
            found = tenants_without_provider(self.store, (c for c in needs if c not in self.channels))
        except Exception as exc:  # noqa: BLE001 - a database not set up yet: the command says so itself
            log.debug("providers not checked: %s", exc)
            return
        for channel, tenant_ids in found.items():
            log.warning("%s has no provider configured (%s): not chosen for any customer of the tenants that "
                        "switched it on: %s", channel.value, needs[channel], ", ".join(tenant_ids))

    def renderer_for(self, tenant_id: str, version: str | None) -> Renderer:
        """The tenant's active bundle (R40), compiled once per version; the shipped one otherwise. A
        kind the bundle has no template of at all (added after it was written) renders from the
        shipped one."""
        if version is None:
            return self.renderer
        key = (tenant_id, version)
        if key not in self._bundles:
            with self.store.transaction() as tx:
                row = tx.bundle(tenant_id, version)
            if row is None:
                return self.renderer
            self._bundles[key] = Renderer(files=row["files"], manifest=row["manifest"], version=version,
                                          fallback=self.renderer)
        return self._bundles[key]

    def close(self) -> None:
        if self._senders is not None:
            self._senders.shutdown(wait=True)
        if self._leases is not None:
            self._leases.close()
        if self._receipts is not None:
            self._receipts.close()
        for adapter in self.channels.values():
            adapter.close()
        self.store.engine.dispose()


def build_channels(settings: Settings) -> dict[Channel, ChannelAdapter]:
    from notifier.channels.email import SMTPChannel
    from notifier.channels.meta_whatsapp import MetaWhatsAppChannel
    from notifier.channels.outbound import parse_networks
    from notifier.channels.twilio import TwilioSMSChannel, TwilioWhatsAppChannel
    from notifier.channels.webhook import WebhookChannel

    secret = link_secret(settings.webhook_secret, settings.data_dir, "webhook-secret")
    hooks: dict[str, Any] = dict(timeout_s=settings.webhook_timeout_s,
                                 allowed_networks=parse_networks(settings.webhook_allowed_networks))
    providers: dict[Channel, ChannelAdapter] = {}
    accounts: dict[Channel, list[Account]] = {Channel.SMS: [], Channel.EMAIL: []}  # in failover order
    twilio = dict(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                  api_url=settings.twilio_api_url, timeout_s=settings.provider_timeout_s)
    if settings.twilio_account_sid and settings.twilio_auth_token:  # SMS only where configured (R2)
        accounts[Channel.SMS].append(Account("twilio", TwilioSMSChannel(
            sender=settings.twilio_from, messaging_service_sid=settings.twilio_messaging_service_sid, **twilio)))
        if settings.whatsapp_provider == "twilio":
            providers[Channel.WHATSAPP] = TwilioWhatsAppChannel(sender=settings.twilio_whatsapp_from, **twilio)
    if settings.whatsapp_provider == "meta" and settings.meta_token and settings.meta_phone_number_id:
        providers[Channel.WHATSAPP] = MetaWhatsAppChannel(token=settings.meta_token,
                                                          phone_number_id=settings.meta_phone_number_id,
                                                          api_url=settings.meta_api_url,
                                                          timeout_s=settings.provider_timeout_s)
    for relay in settings.sms_account_list:  # further accounts on Twilio's API, tried in order
        accounts[Channel.SMS].append(Account(relay.name, TwilioSMSChannel(
            account_sid=relay.user, auth_token=relay.password, api_url=relay.base_url,
            sender=relay.options.get("from", settings.twilio_from),
            messaging_service_sid=relay.options.get("messaging_service", ""), timeout_s=settings.provider_timeout_s)))
    accounts[Channel.EMAIL].append(Account("smtp", SMTPChannel(
        host=settings.smtp_host, port=settings.smtp_port, mail_from=settings.mail_from,
        user=settings.smtp_user, password=settings.smtp_password, starttls=settings.smtp_starttls,
        use_ssl=settings.smtp_ssl, timeout_s=settings.smtp_timeout_s,
        transaction_timeout_s=settings.smtp_transaction_timeout_s,
        idempotency_header=settings.smtp_idempotency_header)))
    for relay in settings.smtp_relay_list:
        accounts[Channel.EMAIL].append(Account(relay.name, SMTPChannel(
            host=relay.host, port=relay.port or (465 if relay.scheme == "smtps" else 25), mail_from=settings.mail_from,
            user=relay.user, password=relay.password, starttls=relay.options.get("starttls", "") in ("1", "true", "yes"),
            use_ssl=relay.scheme == "smtps", timeout_s=settings.smtp_timeout_s,
            transaction_timeout_s=settings.smtp_transaction_timeout_s,
            idempotency_header=relay.options.get("idempotency_header", ""))))
    channels: dict[Channel, ChannelAdapter] = {
        **providers,
        Channel.STAFF: WebhookChannel("staff", secret=secret, **hooks),
        Channel.ACTIVITY: WebhookChannel("activity", secret=secret, **hooks),
    }
    from notifier.observability.metrics import metered_channels

    # provider calls counted and timed (by account), waits not; each account has its own rate limit
    limited = limit_rates(metered_channels(channels), settings)
    client = _redis(settings)
    for channel, listed in accounts.items():
        listed = [Account(a.name, limit_rates({channel: metered_channels({channel: a.adapter}, account=a.name)[
            channel]}, settings, account=a.name, client=client)[channel]) for a in listed]
        if len(listed) == 1:
            limited[channel] = listed[0].adapter
        elif listed:
            limited[channel] = Failover(channel.value, listed, Health(
                failures=settings.failover_failures, window_s=settings.failover_window_s,
                cooldown_s=settings.failover_cooldown_s, client=client, prefix=settings.broker_key_prefix))
    return limited


def _redis(settings: Settings) -> Any:
    """The Redis that rate limits and provider health share between workers (None: per process)."""
    redis_url = settings.ratelimit_redis_url or (settings.broker_url if settings.broker_url.startswith("redis")
                                                  else "")
    if not redis_url:
        return None
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)


def limit_rates(channels: dict[Channel, ChannelAdapter], settings: Settings, *, account: str = "",
                client: Any = None) -> dict[Channel, ChannelAdapter]:
    """Wrap the adapters that have a configured rate in a token bucket shared by all workers: one
    bucket per provider account (`rate_limits` names a channel, or an account for its own rate)."""
    from notifier.ratelimit import LocalTokenBucket, RateLimited, RedisTokenBucket, parse_limits

    limits = parse_limits(settings.rate_limits)
    if not limits:
        return channels
    client = client if client is not None else _redis(settings)
    out = dict(channels)
    for channel, adapter in channels.items():
        rate = limits.get(account) or limits.get(channel.value)
        if rate:
            # the first account keeps the channel's key (its bucket from before failover)
            own = f":{account}" if account and account not in ("twilio", "smtp") else ""
            key = f"{settings.broker_key_prefix}notifier:rate:{channel.value}{own}"
            bucket = RedisTokenBucket(client, key, rate_per_s=rate) if client else LocalTokenBucket(rate_per_s=rate)
            out[channel] = RateLimited(adapter, bucket)
    return out


def build(settings: Settings | None = None, *, channels: dict[Channel, ChannelAdapter] | None = None) -> Context:
    settings = settings or load_settings()
    engine = make_engine(settings.database_url)
    return Context(
        settings=settings,
        store=Store(engine),
        renderer=Renderer(settings.templates_dir),
        clock=clock_from(settings.clock),
        channels=channels if channels is not None else build_channels(settings),
        links=BookingLinks(settings.link_secrets or [link_secret("", settings.data_dir)], settings.public_url),
    )


def kombu_url(url: str, settings: Settings) -> tuple[str, dict[str, Any]]:
    """A broker URL for kombu/Celery; "embedded" becomes an SQLite-backed broker under data_dir."""
    if url != "embedded":
        if url.startswith(("redis://", "rediss://")) and settings.broker_key_prefix:
            return url, {"global_keyprefix": settings.broker_key_prefix}
        return url, {}
    from notifier import embedded_broker

    embedded_broker.register()
    folder = settings.broker_dir
    folder.mkdir(parents=True, exist_ok=True)
    return f"{embedded_broker.ALIAS}+sqlite:///{(folder / 'broker.db').resolve()}", {}

"""The composition root: builds store, channels, renderer and clock from Settings.

Nothing here runs at import time; processes call `build()` once when they start
(a Celery worker on its first task, the ingester and the web app at start-up).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from notifier.channels.base import ChannelAdapter
from notifier.clock import Clock, clock_from
from notifier.domain.model import Channel
from notifier.leases import Leases
from notifier.links import BookingLinks, link_secret
from notifier.rendering.environment import Renderer
from notifier.settings import Settings, load_settings
from notifier.store.sql import Store, make_engine


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
        with self._senders_lock:
            if self._leases is None:
                self._leases = Leases(self.store, self.clock, self.settings.lease_s)
            return self._leases

    def renderer_for(self, tenant_id: str, version: str | None) -> Renderer:
        """The tenant's active bundle (R40), compiled once per version; the shipped one otherwise."""
        if version is None:
            return self.renderer
        key = (tenant_id, version)
        if key not in self._bundles:
            with self.store.transaction() as tx:
                row = tx.bundle(tenant_id, version)
            if row is None:
                return self.renderer
            self._bundles[key] = Renderer(files=row["files"], manifest=row["manifest"], version=version)
        return self._bundles[key]

    def close(self) -> None:
        if self._senders is not None:
            self._senders.shutdown(wait=True)
        if self._leases is not None:
            self._leases.close()
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
    twilio = dict(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                  api_url=settings.twilio_api_url, timeout_s=settings.provider_timeout_s)
    if settings.twilio_account_sid and settings.twilio_auth_token:  # SMS only where configured (R2)
        providers[Channel.SMS] = TwilioSMSChannel(sender=settings.twilio_from,
                                                  messaging_service_sid=settings.twilio_messaging_service_sid,
                                                  **twilio)
        if settings.whatsapp_provider == "twilio":
            providers[Channel.WHATSAPP] = TwilioWhatsAppChannel(sender=settings.twilio_whatsapp_from, **twilio)
    if settings.whatsapp_provider == "meta" and settings.meta_token and settings.meta_phone_number_id:
        providers[Channel.WHATSAPP] = MetaWhatsAppChannel(token=settings.meta_token,
                                                          phone_number_id=settings.meta_phone_number_id,
                                                          api_url=settings.meta_api_url,
                                                          timeout_s=settings.provider_timeout_s)
    channels = {
        **providers,
        Channel.STAFF: WebhookChannel("staff", secret=secret, **hooks),
        Channel.ACTIVITY: WebhookChannel("activity", secret=secret, **hooks),
        Channel.EMAIL: SMTPChannel(
            host=settings.smtp_host, port=settings.smtp_port, mail_from=settings.mail_from,
            user=settings.smtp_user, password=settings.smtp_password, starttls=settings.smtp_starttls,
            use_ssl=settings.smtp_ssl, timeout_s=settings.smtp_timeout_s,
            transaction_timeout_s=settings.smtp_transaction_timeout_s,
        ),
    }
    from notifier.observability.metrics import metered_channels

    return limit_rates(metered_channels(channels), settings)  # provider calls counted and timed, waits not


def limit_rates(channels: dict[Channel, ChannelAdapter], settings: Settings) -> dict[Channel, ChannelAdapter]:
    """Wrap the adapters that have a configured rate in a token bucket shared by all workers."""
    from notifier.ratelimit import LocalTokenBucket, RateLimited, RedisTokenBucket, parse_limits

    limits = parse_limits(settings.rate_limits)
    if not limits:
        return channels
    redis_url = settings.ratelimit_redis_url or (settings.broker_url if settings.broker_url.startswith("redis")
                                                  else "")
    client = None
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
    out = dict(channels)
    for channel, adapter in channels.items():
        rate = limits.get(channel.value)
        if rate:
            key = f"{settings.broker_key_prefix}notifier:rate:{channel.value}"
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

"""Is the web process's world reachable? The database and the Celery broker, each probed
with a deadline, both at once, so a dead host answers in seconds and not after a TCP timeout.

The answer names what is down and why in one line (exception class and message, never a
URL: a broker URL can carry a password).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

PROBE_TIMEOUT_S = 3.0


def probe_database(engine: Any) -> None:
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def probe_broker(settings: Any, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu import Connection

    from notifier.bootstrap import kombu_url

    broker, options = kombu_url(url, settings)
    with Connection(broker, transport_options=options, connect_timeout=timeout_s) as conn:
        conn.connect()  # AMQP: the handshake; embedded: the SQLite file opens


def _why(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = " ".join(str(cause).split())
    return f"{cause.__class__.__name__}: {text}"[:300]


def check(probes: dict[str, Callable[[], None]], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Run the probes concurrently; each answers {"status": "ok", "ms": ...} or {"status": "down", "error": ...}."""
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="health")
    started = time.monotonic()

    def timed(probe: Callable[[], None]) -> float:
        began = time.monotonic()
        probe()
        return round((time.monotonic() - began) * 1000, 1)

    futures = {name: pool.submit(timed, probe) for name, probe in probes.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            results[name] = {"status": "ok", "ms": future.result(timeout=max(0.0, started + timeout_s
                                                                               - time.monotonic()))}
        except FutureTimeout:
            results[name] = {"status": "down", "error": f"no answer within {timeout_s:g} s"}
        except Exception as exc:  # noqa: BLE001 - whatever broke, the answer says it
            results[name] = {"status": "down", "error": _why(exc)}
    pool.shutdown(wait=False)  # a probe stuck on a dead host ends with its own timeout
    return results

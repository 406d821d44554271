"""Outbound addresses: where a webhook may connect (docs/security.md).

Webhook URLs come from the operator (a tenant's file, `staff_webhook_url`), never from events;
even so, a URL whose host resolves to a loopback, private, link-local or otherwise non-public
address is refused unless its network is allowed in `webhook_allowed_networks` (a request from
inside the deployment could reach its databases and metadata services). The check is made on
the address the connection actually reached, after DNS, so a name that resolves differently
the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(Exception):
    """The connection reached an address that is not public and not allowed."""


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """"127.0.0.1/32, 10.0.0.0/8" (or a list) as networks; a bare address is its /32 or /128."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def refusal(address: str, allowed: Sequence[Network]) -> str | None:
    """Why `address` may not be connected to, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return None
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


class _Guarded:
    allowed_networks: tuple[Network, ...] = ()

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        reason = refusal(sock.getpeername()[0], self.allowed_networks)
        if reason:
            sock.close()
            raise AddressRefused(f"{reason} (allow its network in webhook_allowed_networks)")
        return sock


def guarded_pool_manager(allowed: Sequence[Network], **kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 PoolManager whose connections refuse non-public addresses outside `allowed`."""
    networks = tuple(allowed)
    connection = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), {"allowed_networks": networks})
    tls_connection = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), {"allowed_networks": networks})
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": connection}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls_connection}),
    }
    return manager

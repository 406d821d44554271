"""Who may call the JSON API: API keys (docs/security.md).

A key belongs to one tenant (it reads that tenant's timelines, counters and markers) or to the
operator (no tenant: every tenant, and the cross-tenant routes such as dead letters). It is
shown once, when `notifier keys create` makes it; the store keeps only its SHA-256, which is
enough for a random 256-bit secret (nothing to guess, so no slow hash is needed) and lets a
request find its key with one index probe. `notifier keys revoke ID` ends a key at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

KEY_PREFIX = "ntf_"  # recognisable in a leaked file or a secret scanner's rules


@dataclass(frozen=True)
class Caller:
    """Whoever presented a valid key."""

    key_id: str
    tenant_id: str | None  # None: the operator
    name: str = ""  # what the key is for (`keys create --name`)

    @property
    def who(self) -> str:
        """How a timeline names the key's holder: "key_3f9a0c51d2e4 (ops)"."""
        return f"{self.key_id} ({self.name})" if self.name else self.key_id

    @property
    def operator(self) -> bool:
        return self.tenant_id is None

    def may_read(self, tenant_id: str) -> bool:
        return self.operator or self.tenant_id == tenant_id


@dataclass(frozen=True)
class IssuedKey:
    id: str
    key: str  # shown once; not stored
    tenant_id: str | None
    name: str


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(store: Any, *, tenant_id: str | None, name: str, now: datetime) -> IssuedKey:
    """A new key for a tenant (LookupError if there is no such tenant) or, without one, the operator."""
    with store.transaction() as tx:
        if tenant_id is not None and tx.tenant(tenant_id) is None:
            raise LookupError(f"no tenant {tenant_id!r} (load it first: notifier tenants load DIR)")
        issued = IssuedKey(id=f"key_{secrets.token_hex(6)}", key=KEY_PREFIX + secrets.token_urlsafe(32),
                           tenant_id=tenant_id, name=name)
        tx.add_api_key(issued.id, key_hash(issued.key), tenant_id, name, now)
    return issued


def authenticate(store: Any, presented: str) -> Caller | None:
    """The caller a presented key stands for, or None (unknown or revoked)."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    with store.transaction() as tx:
        row = tx.api_key(key_hash(presented))
    return Caller(key_id=row.id, tenant_id=row.tenant_id, name=row.name or "") if row is not None else None


def list_keys(store: Any) -> list[dict[str, Any]]:
    with store.transaction() as tx:
        return tx.api_keys()


def revoke_key(store: Any, key_id: str, *, now: datetime) -> bool:
    """True if the key was live and is revoked now."""
    with store.transaction() as tx:
        return tx.revoke_api_key(key_id, now)

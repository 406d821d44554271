"""Signed customer links (N4): one booking, one action, an expiry; verified by the web app.

A token carries tenant, booking, action and the booking's start it was made for, signed
with itsdangerous (HMAC-SHA256) and timestamped. A moved booking's old links stop
working for confirming (the start differs), and a link for one action cannot do another.

Secrets rotate without breaking outstanding links: the signer takes a list, newest first,
signs with the first and accepts a link signed with any of them (itsdangerous' key rotation).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

ACTIONS = ("confirm", "cancel")
SALT = "notifier.booking-link"
CLOCK_SKEW_S = 300


class _IssuedAtSigner(TimestampSigner):
    """A timestamp signer whose moment is given rather than read from the clock."""

    def __init__(self, *args: object, issued_at: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.issued_at = issued_at

    def get_timestamp(self) -> int:
        return self.issued_at


class LinkError(ValueError):
    """The link is forged, expired, or for something else; `reason` says which, for the page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LinkClaims:
    tenant_id: str
    booking_id: str
    action: str
    starts_at: str  # ISO, UTC: the visit the link was made for


class LinkSigner:
    def __init__(self, secret: str | Sequence[str], base_url: str, *, max_age_s: int = 60 * 24 * 3600) -> None:
        secrets_newest_first = [secret] if isinstance(secret, str) else list(secret)
        if not secrets_newest_first or any(len(s) < 16 for s in secrets_newest_first):
            raise ValueError("each link secret must be at least 16 characters")
        self.secret = secrets_newest_first[::-1]  # itsdangerous: oldest first, signs with the last
        self.serializer = URLSafeTimedSerializer(self.secret, salt=SALT)
        self.base_url = base_url.rstrip("/")
        self.max_age_s = max_age_s

    def token(self, tenant_id: str, booking_id: str, action: str, starts_at: datetime, *,
              issued_at: datetime | None = None) -> str:
        """With `issued_at` (a message's due time) the token is the same whenever it is made,
        so a message renders to the same text on every attempt; the age counts from then."""
        if action not in ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        serializer = self.serializer if issued_at is None else URLSafeTimedSerializer(
            self.secret, salt=SALT, signer=_IssuedAtSigner, signer_kwargs={"issued_at": int(issued_at.timestamp())})
        return serializer.dumps([tenant_id, booking_id, action, starts_at.isoformat()])

    def url(self, tenant_id: str, booking_id: str, action: str, starts_at: datetime, *,
            issued_at: datetime | None = None) -> str:
        return f"{self.base_url}/l/{self.token(tenant_id, booking_id, action, starts_at, issued_at=issued_at)}"

    def verify(self, token: str, *, now: datetime | None = None) -> LinkClaims:
        """The link's claims, or LinkError. `now` is the app's clock (a simulated one in the demo
        and the tests), the clock the link's `issued_at` came from; without it, the system's.
        A link stamped up to CLOCK_SKEW_S after `now` (another host's clock) is still good."""
        serializer = self.serializer if now is None else URLSafeTimedSerializer(
            self.secret, salt=SALT, signer=_IssuedAtSigner,
            signer_kwargs={"issued_at": int(now.timestamp()) + CLOCK_SKEW_S})
        try:
            tenant_id, booking_id, action, starts_at = serializer.loads(token, max_age=self.max_age_s)
        except SignatureExpired:
            raise LinkError("expired") from None
        except (BadSignature, ValueError, TypeError):
            raise LinkError("invalid") from None
        return LinkClaims(tenant_id, booking_id, action, starts_at)


def link_secret(configured: str, data_dir: str | Path, name: str = "link-secret") -> str:
    """The configured secret; in development, one kept in the data folder (created once)."""
    if configured:
        return configured
    path = Path(data_dir) / name
    if not path.exists():
        # several workers may start at once: write a complete file aside, then link it into place
        # atomically; whoever loses the race reads the winner's secret, never a half-written one
        path.parent.mkdir(parents=True, exist_ok=True)
        spare = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        spare.write_text(secrets.token_urlsafe(32))
        spare.chmod(0o600)
        try:
            os.link(spare, path)
        except FileExistsError:
            pass
        finally:
            spare.unlink()
    return path.read_text().strip()

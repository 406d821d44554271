"""The customer's link (R11, R14, N4): one short, opaque link per booking, in every message.

The token is an HMAC of the tenant and booking ids under the link secret, cut to 96 bits and
written as 17 letters and digits: it tells nothing about the booking, cannot be guessed or
forged, and is the same whenever it is made (so a message renders to the same text on every
attempt). It names the booking, not a time or an action: it still works when the visit moves,
and the page behind it offers what applies at the moment it is opened (confirm, cancel, add to
the calendar). The store maps tokens to bookings (`links` table); dispatch records a booking's
token before the first message carrying it leaves. The page stops answering a while after the
visit (`Settings.link_valid_after_visit_s`), not at a fixed age.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import string
from collections.abc import Sequence
from pathlib import Path

ALPHABET = string.digits + string.ascii_letters  # base62: no character a text or a linkifier trims
TOKEN_BITS = 96
TOKEN_CHARS = 17  # 62**17 > 2**96 > 62**16
_LABEL = b"notifier.booking-link.v2"  # the key is derived for this purpose only


class BookingLinks:
    """Makes a booking's token and URL; `resolve` (in the store) turns a token back into its booking."""

    def __init__(self, secret: str | Sequence[str], base_url: str) -> None:
        """`secret`: one, or a list newest first (rotation): tokens are made with the newest; those
        made with an older one still work, since the store, not the secret, resolves them."""
        given = [secret] if isinstance(secret, str) else list(secret)
        if not given or any(len(s) < 16 for s in given):
            raise ValueError("each link secret must be at least 16 characters")
        self._key = hmac.new(given[0].encode(), _LABEL, hashlib.sha256).digest()
        self.base_url = base_url.rstrip("/")

    def token(self, tenant_id: str, booking_id: str) -> str:
        message = json.dumps([tenant_id, booking_id]).encode()  # unambiguous whatever the ids contain
        number = int.from_bytes(hmac.new(self._key, message, hashlib.sha256).digest()[:TOKEN_BITS // 8], "big")
        out = []
        for _ in range(TOKEN_CHARS):
            number, digit = divmod(number, len(ALPHABET))
            out.append(ALPHABET[digit])
        return "".join(reversed(out))

    def url(self, tenant_id: str, booking_id: str) -> str:
        return f"{self.base_url}/l/{self.token(tenant_id, booking_id)}"


def well_formed(token: str) -> bool:
    """Could be a token: refused before any database read when not."""
    return len(token) == TOKEN_CHARS and all(c in ALPHABET for c in token)


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

"""Retry policy for temporary send failures: exponential backoff with full jitter."""

from __future__ import annotations


def compute_backoff_s(*, attempt: int, base_s: float, max_s: float, jitter: float,
                      retry_after_s: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`.

    `jitter` in [0, 1) is drawn by the caller (keeps this pure and testable); the wait is
    drawn from [cap/2, cap] with cap = min(max_s, base_s * 2**(attempt-1)). A provider's
    Retry-After is a floor, never shortened.
    """
    cap = min(max_s, base_s * (2 ** max(attempt - 1, 0)))
    wait = cap / 2 + (cap / 2) * jitter
    if retry_after_s is not None:
        wait = max(wait, retry_after_s)
    return wait

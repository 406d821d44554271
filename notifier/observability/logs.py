"""Structured JSON logs (structlog) for every process, with personal data masked (N7).

`configure_logging()` runs once, from the CLI's entry point. It routes the standard
library's loggers (ours, Celery's, kombu's, uvicorn's) and structlog's through one
formatter whose last steps mask phone numbers, email addresses and names, then render a
JSON object per line. Masking runs after the message is interpolated and after the
traceback is formatted, so neither can carry personal data past it.

What is masked, wherever it appears (the message, extra fields, nested dicts, tracebacks):
- email addresses (also URL-encoded, ``kunde%40example.org``) and the display name in front
  of one (``Erika Mustermann <kunde@example.org>``);
- phone numbers as people write them (``0151 23456789``, ``+49 151 23456789``,
  ``(030) 1234567``) and in E.164 (``+4915123456789``), and bare digit runs of 9 to 15
  digits (WhatsApp ids carry the number without ``+``);
- names: the value of any field called like a name or an address (``name``,
  ``customer_name``, ``to``, ``email``, ``phone``, ...) in structured data, and in text
  shaped like ``name='...'`` or ``"name": "..."`` (reprs, JSON bodies). Dotted identifiers
  (Celery task names such as ``notifier.dispatch_batch``) are left as they are.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

MASK = "***"

# fields whose whole value is personal data
PERSONAL_KEYS = frozenset({
    "name", "customer", "customer_name", "first_name", "last_name", "full_name", "display_name", "email",
    "email_address", "phone", "phone_number", "mobile", "to", "recipient", "recipient_id", "address", "wa_id",
    "from_", "rcpt", "rcpt_to", "mail_to",
})
# fields the formatter writes itself: never personal
SAFE_KEYS = frozenset({"timestamp", "level", "logger", "pid", "process"})

_EMAIL = re.compile(r"[\w.!#$%&*+/?^`{|}~-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_DISPLAY_NAME = re.compile(r"(?:\"[^\"<>]*\"|[^\s\"'<>,:;=()\[\]{}][^\"'<>,:;=()\[\]{}]*?)\s*<(?=\*\*\*>)")
_NAME_KEYS = "|".join(sorted(PERSONAL_KEYS - {"customer"}, key=len, reverse=True))
_NAMED_VALUE = re.compile(  # name='Erika', "name": "Erika", 'to': '+49...', name=Erika (up to , ) or end)
    rf"""(?P<key>\b(?:{_NAME_KEYS})\b["']?\s*[:=]\s*)(?:(?P<q>["'])(?P<quoted>.*?)(?<!\\)(?P=q)|(?P<bare>[^,)\]}}\s"']+))"""
)
_DOTTED = re.compile(r"^[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+$")
# a phone-like run: digits with the separators people type; checked further in _phone()
_PHONE = re.compile(r"(?<![\w.:/%-])(?:\+|00)?\(?\d[\d ()\-/]{4,22}\d(?![\w:]|\.\d|-\w)")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}|^\d{1,2}/\d{1,2}/\d{2,4}$")


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15:
        return text
    if text[0] in "+(0":
        return MASK
    if _DATE.match(text):
        return text
    if any(ch in text for ch in " -/()"):
        return MASK
    return MASK if digits >= 9 else text


def _named(match: re.Match[str]) -> str:
    value = match.group("quoted") if match.group("q") else match.group("bare")
    if not value or value == MASK or _DOTTED.match(value):
        return match.group(0)
    if not match.group("q") and not any(ch.isalpha() for ch in value):
        return match.group(0)  # "email: 3 messages": a count; numbers are the phone rule's business
    quote = match.group("q") or ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def mask_text(text: str) -> str:
    """The text with email addresses, phone numbers and named values replaced by ***."""
    if not text:
        return text
    text = _EMAIL.sub(MASK, text)
    text = _DISPLAY_NAME.sub(MASK + " <", text)
    text = _NAMED_VALUE.sub(_named, text)
    return _PHONE.sub(_phone, text)


def mask_value(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() in PERSONAL_KEYS and value not in (None, "", [], {}):
        if isinstance(value, str) and key.lower() == "name" and _DOTTED.match(value):
            return value  # a task or logger name
        if isinstance(value, Mapping):
            return {k: MASK for k in value}
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: mask_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(v) for v in value]
    if isinstance(value, bytes):
        return mask_text(value.decode("utf-8", errors="replace"))
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(str(value))


def mask_personal_data(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask personal data in every field of the event (N7)."""
    return {key: value if key in SAFE_KEYS else mask_value(value, None if key == "event" else key)
            for key, value in event_dict.items()}


# billiard (Celery's pool) logs to "multiprocessing" with propagate off
_OWN_HANDLERLESS = ("multiprocessing",)
# libraries whose DEBUG chatter is about their own machinery, and may echo payloads
# (sqlalchemy stays at its own WARNING: at INFO it would echo statements and their parameters)
_QUIET_AT_DEBUG = ("urllib3", "asyncio", "multipart", "httpcore", "kombu", "amqp")


def configure_logging(level: str | int = "INFO", *, fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route every logger through structlog's formatter: JSON lines (or key=value for people), masked.

    Call once per process, before anything logs. Replaces the root logger's handlers."""
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer(default=str) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    for name in _OWN_HANDLERLESS:  # loggers that do not propagate: without a handler, Python prints them raw
        own = logging.getLogger(name)
        own.handlers[:] = [handler]
        own.propagate = False
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    logging.captureWarnings(True)
    if root.level <= logging.DEBUG:
        for name in _QUIET_AT_DEBUG:
            logging.getLogger(name).setLevel(logging.INFO)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


IDLE_SWEEPS = frozenset({"notifier.sweep_due", "notifier.sweep_states"})


class QuietIdleSweeps(logging.Filter):
    """A worker's lines about beat's sweeps at DEBUG unless a sweep did something: Celery logs
    "Task ... received" and "Task ... succeeded in 0.01s: 0" at INFO for every task, and an idle
    sweep pool wrote two of each every `sweep_interval_s`. A sweep that handed out or changed
    something keeps its INFO line ("succeeded ...: 120"); everything else of Celery's is left alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if not isinstance(data, Mapping) or data.get("name") not in IDLE_SWEEPS or record.levelno != logging.INFO:
            return True
        finished = "return_value" in data
        if finished and str(data.get("return_value")) not in ("0", "'0'"):
            return True  # it did something: worth its line
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_idle_sweeps() -> None:
    """Install `QuietIdleSweeps` on the loggers of Celery's task lines (the worker calls it)."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietIdleSweeps) for f in logger.filters):
            logger.addFilter(QuietIdleSweeps())


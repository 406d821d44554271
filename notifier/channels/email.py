"""Email over SMTP: plain text, HTML alternative, calendar attachments; connection reuse.

A relay that drops a repeated message by a header of its own (Resend's `Resend-Idempotency-Key`,
EmailEngine's `X-EE-Idempotency-Key`; `idempotency_header`) gets each message's idempotency key
there: a copy sent again because its answer was lost, or because its worker died before writing
the answer down, then reaches the relay and not the customer (`dedupes`). SMTP itself has no
such thing: without the header such a copy is delivered twice (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.utils import formatdate

from email_validator import EmailNotValidError, validate_email

from notifier.channels.base import Outgoing, PermanentFailure, SendResult, TemporaryFailure


class SMTPChannel:
    name = "email"
    provider = "smtp"

    def __init__(self, *, host: str, port: int, mail_from: str, user: str = "", password: str = "",
                 starttls: bool = False, use_ssl: bool = False, timeout_s: float = 10.0,
                 transaction_timeout_s: float = 600.0, idempotency_header: str = "") -> None:
        self.host, self.port, self.mail_from = host, port, mail_from
        self.user, self.password = user, password
        self.starttls, self.use_ssl, self.timeout_s = starttls, use_ssl, timeout_s
        # RFC 5321 4.5.3.2: a client waits minutes for the replies of a mail transaction, ten for the
        # one after the message, which the server sends once it has taken the message on: giving up
        # on that reply early is how a mail gets sent twice (RFC 1047). Connecting, the greeting and
        # the NOOP that checks a kept connection wait `timeout_s`.
        self.transaction_timeout_s = max(transaction_timeout_s, timeout_s)
        self.idempotency_header = idempotency_header
        self.dedupes = bool(idempotency_header)  # a copy sent again is dropped by the relay (dispatch: no wait)
        self._local = threading.local()  # one connection per sending thread, reused

    def _connection(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                if conn.noop()[0] == 250:
                    return conn
            except smtplib.SMTPException:
                pass
            except OSError:
                pass
            self._drop()
        if self.use_ssl:
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                    context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            if self.starttls:
                conn.starttls(context=ssl.create_default_context())
        if self.user:
            conn.login(self.user, self.password)
        self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass

    def build(self, message: Outgoing) -> EmailMessage:
        mail = EmailMessage()
        sender = message.sender or self.mail_from  # the tenant's own, else the settings'
        mail["From"] = sender
        if message.reply_to:
            mail["Reply-To"] = message.reply_to
        mail["To"] = message.to
        mail["Subject"] = message.subject or ""
        mail["Date"] = formatdate(localtime=False)
        domain = sender.rsplit("@", 1)[-1].strip(">") or "localhost"
        # a stable Message-ID: a receiving system can drop a resend of the same message
        mail["Message-ID"] = f"<{message.idempotency_key.replace('/', '.')}@{domain}>"
        if self.idempotency_header:
            mail[self.idempotency_header] = relay_key(message.idempotency_key)
        for name, value in message.headers.items():
            mail[name] = value
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        for attachment in message.attachments:
            maintype, _, rest = attachment.content_type.partition("/")
            subtype, *raw_params = [part.strip() for part in rest.split(";")]
            params = dict(p.split("=", 1) for p in raw_params if "=" in p)  # e.g. method=REQUEST for a card
            if (maintype, subtype) == ("text", "calendar") and "method" in params:
                # an invitation (iMIP, RFC 6047) as calendar invitations are mailed: the card as an
                # alternative of the text, which Outlook and Gmail apply to the entry they hold,
                # and as a file to open (application/ics, so that it is not applied twice)
                mail.add_alternative(attachment.data.decode(), subtype="calendar", params=params)
                maintype, subtype, params = "application", "ics", {}
            mail.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename,
                                params=params)
        return mail

    def send(self, message: Outgoing) -> SendResult:
        try:  # an address or header that cannot be written will never be sent: permanent, at once (issue 15)
            validate_email(message.to, check_deliverability=False)
        except EmailNotValidError as exc:
            raise PermanentFailure(f"not one email address: {exc}", code="address") from None
        try:
            mail = self.build(message)
        except (ValueError, TypeError) as exc:  # e.g. CR or LF in a header (the subject, a name)
            raise PermanentFailure(f"cannot build the email: {exc}", code="header") from None
        try:
            conn = self._connection()
        except smtplib.SMTPResponseException as exc:  # the greeting or the login refused
            self._drop()
            raise _answered(exc) from exc
        except (smtplib.SMTPException, OSError) as exc:  # no session: nothing reached the relay
            self._drop()
            raise TemporaryFailure(f"SMTP cannot connect: {exc.__class__.__name__}: {exc}", code="refused") from exc
        try:
            conn.sock.settimeout(self.transaction_timeout_s)
            refused = conn.send_message(mail)
            conn.sock.settimeout(self.timeout_s)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            self._drop()
            failure = PermanentFailure if 500 <= code < 600 else TemporaryFailure
            raise failure(f"recipient refused: {code} {reason.decode(errors='replace')}", code=str(code)) from exc
        except smtplib.SMTPResponseException as exc:
            self._drop()
            raise _answered(exc) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TemporaryFailure(f"SMTP connection: {exc.__class__.__name__}: {exc}", code="connection") from exc
        if refused:
            raise PermanentFailure(f"recipient refused: {refused}")
        return SendResult(provider_message_id=mail["Message-ID"], provider_code="250")

    def close(self) -> None:
        self._drop()


def _answered(exc: smtplib.SMTPResponseException) -> PermanentFailure | TemporaryFailure:
    """A server's refusal by its reply code: 5xx for good, 4xx for now."""
    failure = PermanentFailure if 500 <= exc.smtp_code < 600 else TemporaryFailure
    return failure(f"SMTP {exc.smtp_code} {exc.smtp_error!r}", code=str(exc.smtp_code))


def relay_key(key: str) -> str:
    """A message's idempotency key as a relay takes it: at most 256 characters (Resend's limit), a
    longer one as its SHA-256, so every attempt of the message carries the same."""
    return key if len(key) <= 256 else "sha256-" + hashlib.sha256(key.encode()).hexdigest()

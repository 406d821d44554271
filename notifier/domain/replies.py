"""What a customer's message back means (R3, R11, R14): opt out, opt in, confirm, cancel, or nothing known.

A reply is read as a whole: after trimming, folding case and dropping the punctuation around it,
it must be one of the words below (or a quick-reply button's payload). "Ja, aber später" is not
a confirmation: it goes to the staff as it is. The opt-out and opt-in words are the carriers'
standard keywords (Twilio's, from the CTIA guidelines: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END,
QUIT; START, UNSTOP) and their usual equivalents in German, Italian and Russian. The answers are
read in every language we write in, whatever the customer's: a German customer may answer "OK".

Pure: the standard library only.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum


class Intent(StrEnum):
    OPT_OUT = "opt_out"  # withdraw consent for the channel the reply came on
    OPT_IN = "opt_in"  # restore it
    CONFIRM = "confirm"  # as the page's confirm button (R11)
    CANCEL = "cancel"  # as the page's cancel button (R14, R23)


OPT_OUT_WORDS = {
    "en": ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "opt out"),
    "de": ("stopp", "abmelden", "abbestellen", "austragen"),
    "it": ("basta", "disiscrivi", "disiscrivimi", "cancellami"),
    "ru": ("стоп", "отписаться", "отписка"),
}
OPT_IN_WORDS = {
    "en": ("start", "unstop"),
    "de": ("anmelden",),
    "it": ("iscrivi", "iscrivimi"),
    "ru": ("старт", "подписаться"),
}
CONFIRM_WORDS = {
    "en": ("yes", "y", "ok", "okay", "confirm", "confirmed"),
    "de": ("ja", "jawohl", "bestätigen", "bestätigt", "bestaetigen"),
    "it": ("sì", "si", "confermo", "conferma", "confermato"),
    "ru": ("да", "подтверждаю", "подтвердить"),
}
CANCEL_WORDS = {
    "en": ("no", "n"),
    "de": ("nein", "absagen", "stornieren"),
    "it": ("no", "annulla", "disdico", "disdire"),
    "ru": ("нет", "отменить", "отмена"),
}
# the payload our WhatsApp templates give their quick-reply buttons (templates/bundle.yaml `buttons`)
BUTTON_PAYLOADS = {"confirm": Intent.CONFIRM, "cancel": Intent.CANCEL}


def _words(table: dict[str, tuple[str, ...]], intent: Intent) -> dict[str, Intent]:
    return {word: intent for words in table.values() for word in words}


# opt-out words win over answers: Twilio itself reads CANCEL as STOP and blocks the number
_MEANING: dict[str, Intent] = {**_words(CONFIRM_WORDS, Intent.CONFIRM), **_words(CANCEL_WORDS, Intent.CANCEL),
                               **_words(OPT_IN_WORDS, Intent.OPT_IN), **_words(OPT_OUT_WORDS, Intent.OPT_OUT)}
_EDGES = " \t\r\n.,;:!?¡¿\"'«»„“”‘’()[]-–—*_~"
REPLY_MAX = 1600  # characters kept of a reply (an SMS concatenates to at most 1,600)


def normalized(text: str) -> str:
    """A reply as compared with the words: NFC, case folded, inner blanks single, edges trimmed."""
    folded = unicodedata.normalize("NFC", text).casefold()
    return " ".join(folded.split()).strip(_EDGES)


def read_reply(text: str | None, *, button_payload: str | None = None) -> Intent | None:
    """What a reply means, or None when it is nothing we know (it goes to the staff)."""
    if button_payload:
        intent = BUTTON_PAYLOADS.get(button_payload.strip().lower().split(":", 1)[0])
        if intent is not None:
            return intent
    if not text:
        return None
    return _MEANING.get(normalized(text))


# provider errors that mean the recipient opted out of the sender (the same as a STOP reply), as
# the adapters and callbacks write them ("twilio 21610: ...", "whatsapp 131050: ..."): Twilio 21610
# "attempt to send to an unsubscribed recipient"; Meta 131050 "the user has chosen to stop receiving
# marketing messages from your business" (a WhatsApp preference, per business number)
OPT_OUT_ERRORS = frozenset({"twilio 21610", "whatsapp 131050"})


def opted_out_by_error(reason: str | None) -> bool:
    """A message's failure reason says the provider refused it because the recipient opted out."""
    if not reason:
        return False
    head = reason.split(":", 1)[0].strip().lower()
    return head in OPT_OUT_ERRORS

"""Phone numbers (R5): E.164 for storage, and whether a number can take SMS and WhatsApp.

A tenant's home-country numbers may omit the country prefix; other countries' numbers must carry
it. The numbering plan (phonenumbers, Google's libphonenumber metadata) tells a mobile from a
landline: an Italian tenant's customer who writes a German mobile without its prefix
("0151 2345678") gives a valid Italian landline, which no SMS reaches.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from notifier.domain.model import INVALID_PHONE

_TYPE_NAMES = {value: name.lower() for name, value in vars(phonenumbers.PhoneNumberType).items()
               if name.isupper() and isinstance(value, int)}


@lru_cache(maxsize=65_536)
def read_phone(raw: str | None, region: str) -> tuple[str | None, str | None, str | None]:
    """(E.164 number, error, type) of a number as given: type is phonenumbers' number type in
    lower case ("mobile", "fixed_line", "fixed_line_or_mobile", ...), INVALID_PHONE with an error."""
    if not raw or not raw.strip():
        return None, None, None
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        return None, f"not a phone number: {exc}", INVALID_PHONE
    if not phonenumbers.is_valid_number(parsed):
        return None, f"not a valid number for {phonenumbers.region_code_for_number(parsed) or region}", INVALID_PHONE
    number_type = _TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None, number_type


def normalize_phone(raw: str | None, region: str) -> tuple[str | None, str | None]:
    """E.164 for a number; home-country numbers may omit the prefix (R5). (number, error)."""
    number, error, _ = read_phone(raw, region)
    return number, error


@lru_cache(maxsize=65_536)
def phone_type_of(e164: str) -> str:
    """The type of a stored E.164 number (rows written before the type was stored)."""
    return read_phone(e164, "ZZ")[2] or "unknown"

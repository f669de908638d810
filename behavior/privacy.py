"""Masking of personal data in free text (reviews, searches, notes) before it is stored or shown.

The index masks every document before embedding it, and the agent's tools mask whatever
they return, so raw emails, phone numbers, IP addresses and card numbers never leave the
event table. Masking is deliberately conservative about what counts as a phone number:
prices ("$118.00"), dates ("2026-03-04"), times, order ids ("o000123") and user ids
("u00042") stay readable, because answers cite them.
"""

from __future__ import annotations

import ipaddress
import re

EMAIL_TOKEN = "[email]"
PHONE_TOKEN = "[phone]"
IP_TOKEN = "[ip]"
CARD_TOKEN = "[card]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes; Luhn decides (see _mask_card).
_CARD = re.compile(r"(?<![\w.$-])\d(?:[ -]?\d){12,18}(?![\w.-]?\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
# Candidates only; ipaddress decides, so clock times like "09:12:30" are left alone.
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_PHONES = (
    # International form: a leading + is an unambiguous signal.
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,5}(?!\w)"),
    # North American 3-3-4 ("(415) 555-0132", "415.555.0132"); dates are 4-2-2 and never match.
    re.compile(r"(?<![\w.$])(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w]|\.\d)"),
    # National form with a trunk 0 ("020 7946 0958", "07700 900123").
    re.compile(r"(?<![\w.$])0\d{2,4}[\s-]\d{3,4}(?:[\s-]\d{3,4})?(?![\w]|\.\d)"),
)
# A bare run of digits is a phone number only when the text says so ("call 4155550132").
_PHONE_CUE = re.compile(
    r"(?i)\b(phone|tel|telephone|call|mobile|cell|whatsapp|sms|text me)\b(\W{0,6})(\d[\d\s().-]{5,17}\d)(?![\w])"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    # Only Luhn-valid runs are cards; other long numbers (ids, barcodes) stay readable.
    return CARD_TOKEN if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)


def _mask_ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    if text.count(":") < 2:
        return text
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return IP_TOKEN


def _mask_cued_phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(3))
    if not 7 <= len(digits) <= 15:
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{PHONE_TOKEN}"


def mask_pii(text: str) -> str:
    """Replace emails, phone numbers, IP addresses and card numbers in ``text`` with tokens.

    Emails become "[email]", phone numbers "[phone]", IPv4/IPv6 addresses "[ip]" and
    Luhn-valid card numbers of 13-19 digits (spaces or dashes allowed) "[card]". Prices,
    dates, clock times, order ids and user ids are left as they are.

    Args:
        text: Any free text, e.g. a review or a search query.

    Returns:
        The text with personal data replaced; the same string if there was none.
    """
    if not text:
        return text
    out = _EMAIL.sub(EMAIL_TOKEN, text)
    out = _CARD.sub(_mask_card, out)
    out = _IPV6.sub(_mask_ipv6, out)
    out = _IPV4.sub(IP_TOKEN, out)
    for pattern in _PHONES:
        out = pattern.sub(PHONE_TOKEN, out)
    return _PHONE_CUE.sub(_mask_cued_phone, out)


def mask_ip(ip: str) -> str:
    """Keep the network part of an IP address and drop the host part.

    IPv4 keeps its first three octets ("203.0.113.7" -> "203.0.113.x"); IPv6 keeps its
    first three groups ("2001:db8:85a3::7" -> "2001:db8:85a3:x"). Anything that is not an IP
    address becomes "[ip]" so an unexpected value is never echoed.

    Args:
        ip: The address as text; an empty string stays empty.

    Returns:
        The masked address.
    """
    ip = (ip or "").strip()
    if not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return IP_TOKEN
    if isinstance(addr, ipaddress.IPv4Address):
        return ".".join(str(addr).split(".")[:3]) + ".x"
    groups = addr.exploded.split(":")[:3]
    return ":".join(g.lstrip("0") or "0" for g in groups) + ":x"

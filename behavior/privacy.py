"""Personal data in free text and identifiers: find it, mask it for display, pseudonymize it at ingest.

The index masks every document before embedding it, the agent's tools mask whatever they
return, and ingest masks free-text columns and pseudonymizes identifiers before anything
is written to the workspace, so raw e-mails, phone numbers, IP addresses, card numbers,
IBANs and social security numbers never reach the index, a tool result or an answer.

One finder (:func:`find_pii`) decides what is personal data; :func:`mask_pii` replaces
each span with a token ("[email]", "[phone]", "[ip]", "[card]", "[iban]", "[ssn]") and
:func:`pseudonymize_text` with a stable keyed pseudonym. The finder is linear in the
length of the text (every pattern is anchored so that no position is scanned more than a
bounded number of times; ``bench/privacy.py`` measures it), so one huge review cannot
stall ingest or an index build.

What counts as what — the rules, in the order they are applied (an earlier kind wins):

- **E-mail**: ``local@domain.tld`` with Unicode letters allowed in both parts
  (``jürgen@müller.de``), a local part of at most 64 characters, a top-level domain of
  letters (or an ``xn--`` IDN label). ``churn@v3`` (a model version) has no dotted domain
  and is not an address.
- **IBAN**: a known country code, two check digits, the country's exact length
  (python-stdnum's IBAN registry), the ISO 7064 mod-97 check and the country's BBAN
  structure; spaces or dashes between characters allowed. National check digits inside
  the BBAN are not required: a mistyped account number is still somebody's.
- **IP**: IPv6 in any form ``ipaddress`` accepts, including IPv4-mapped
  ``::ffff:192.0.2.1`` (masked whole), then dotted IPv4. Clock times (``09:12:30``) are
  not addresses.
- **Numbers**: runs of digit groups joined by phone-like separators (one space, two
  spaces, ``-``, ``.``, ``/``, parentheses) are cut into the longest windows that are:

  - a **card**: 13-19 digits, a known issuer prefix and length (Visa, Mastercard, Amex,
    Discover, Diners, JCB, UnionPay, Maestro) and a valid Luhn check digit, grouped with
    one kind of separator (``4111.1111.1111.1111``, double spaces) or none;
  - an **SSN**: ``123-45-6789`` / ``123 45 6789`` with a possible area (not 000, 666,
    9xx), group (not 00) and serial (not 0000), or nine bare digits right after "SSN" or
    "social security";
  - a **phone** written internationally: ``+`` or an international call prefix (``00``,
    or ``011`` from North America) followed by a country calling code and a national
    number of a length possible for that country (phonenumbers' metadata for every
    region), whatever the grouping (``+33612345678``, ``0049 30 1234567``);
  - a **phone** written nationally: 7-15 digits in two or more groups, every group after
    the first having at least two digits (``07700 900123``, ``06 12 34 56 78``,
    ``415-5550132``, ``555 0134``, ``(11) 96123-4567``, ``6123 4567``) — except dates
    (``2026-03-04``, ``04/03/2026``), year lists (``2019-2024``), decimals
    (``12345.67``), a year before a bracketed count (``March 2026 (475 users)``), US ZIP+4 (``94105-1234``), ISBNs (978/979), a count written with
    thousands separators after a single digit (``1 299 000``), and any number next to a
    currency sign or code (``$ 1 299 000``, ``12 345 678 EUR``);
  - a **phone** written as one bare run of 7-15 digits *only when a cue word comes right
    before it* ("call me 4155550132", "tel: 0612345678", "WhatsApp +", "my number is").

- **The rule for a bare number** (one run of digits with no separators and no ``+``): it
  is an identifier, not a phone number, unless a cue word precedes it. In our data a lone
  10-digit number ("customer 9999999991") is a shop's customer or order id far more often
  than a phone, and answers must be able to cite it; "call me 4155550132" is a phone. A
  bare 13-19 digit run with a card's issuer prefix, length and Luhn digit is still a card
  (a 10% chance for a random id of that shape: privacy wins there).
- A run is read from the left, the longest window first, except that in runs of up to 32
  groups (any sentence) cards are taken first, so "qty 2 4111 1111 1111 1111" is "qty 2
  [card]". In a longer run (a pasted table of numbers) a card right after another number
  can be read partly as a phone: all of it is masked except, at worst, the card's last
  group (its last four digits, which receipts print anyway).
- Digits glued to letters (``o000123``, ``u00042-s0007``, ``i12345``, ``2kg``) are part
  of a token, never personal data; prices (``$1,299.00``), times (``09:12``), versions
  (``1.2.3``) and counts are too short or too differently shaped to be a phone.

National formats with fewer than 7 digits (a few small territories), with a one-digit
group after the first (Hungary's "(06 1) 234 5678", Kazakhstan's "8 (71234) 5 67 89"), or
with no separator at all are recognised only in international form or after a cue word:
on their own they look like counts or ids. Of the 489 example numbers phonenumbers has
for every region, 448 are masked in national form; all are masked internationally
(``tests/test_privacy_corpus.py``).

Microsoft Presidio was considered and not used: its analyzer needs a spaCy language model,
a separate download, and its regex recognisers have the same ambiguities without our
context rules.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import ipaddress
import itertools
import re
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import numpy as np
import pandas as pd
import phonenumbers
from stdnum import numdb
from stdnum import iban as stdnum_iban

PiiKind = Literal["email", "iban", "ip", "card", "ssn", "phone"]

EMAIL_TOKEN = "[email]"
PHONE_TOKEN = "[phone]"
IP_TOKEN = "[ip]"
CARD_TOKEN = "[card]"
IBAN_TOKEN = "[iban]"
SSN_TOKEN = "[ssn]"
TOKENS: dict[str, str] = {
    "email": EMAIL_TOKEN,
    "phone": PHONE_TOKEN,
    "ip": IP_TOKEN,
    "card": CARD_TOKEN,
    "iban": IBAN_TOKEN,
    "ssn": SSN_TOKEN,
}

# A pseudonym: this prefix and the first 10 hex digits of HMAC-SHA256(workspace key, value).
PSEUDONYM_PREFIX = "user-"
PSEUDONYM_HEX = 10


class PiiSpan(NamedTuple):
    """One piece of personal data in a text: ``text[start:end]`` is of kind ``kind``."""

    start: int
    end: int
    kind: PiiKind


# --- e-mail --------------------------------------------------------------------------------
# RFC 5322 atext. The lookbehind lets a local part start only where a run of such characters
# starts, so a long run without '@' is scanned once, not once per position (the old pattern
# was quadratic). Leading quotes are given back afterwards: "'bob@x.com'" keeps its quotes.
_ATEXT = r"\w!#$%&'*+/=?^`{|}~\-"
_EMAIL = re.compile(
    rf"(?<![{_ATEXT}.])[{_ATEXT}][{_ATEXT}.]{{0,63}}@"
    r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|(?i:xn--)[\w\-]{1,59})(?!\w)"
)

# --- IBAN ----------------------------------------------------------------------------------
_IBAN_CANDIDATE = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,32}")
_IBAN_DB = numdb.get("iban")
_IBAN_SEPARATORS = re.compile(r"[ \-]")
_BBAN_PART = re.compile(r"(\d+)!")

# --- IP addresses ----------------------------------------------------------------------------
# Candidates only; ipaddress decides (clock times like "09:12:30" are rejected there). The
# IPv4 tail comes first so that "::ffff:192.0.2.1" is one candidate, not "::ffff:192".
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)

# --- numbers -------------------------------------------------------------------------------
# A run of digit groups joined by the separators phone numbers, cards and SSNs are written
# with. ". " and ", " are not separators: "I bought 3. 4155550132" is two numbers.
_SEP = r"(?:[.\-/]|[ \u00a0\t]{1,2}|\)[ \u00a0]?-?|[ \u00a0]?-?\(|[ \u00a0]-[ \u00a0])"
_RUN = re.compile(rf"(?<![\w+])(?:\([ \u00a0]?\+|\+|\()?\d+(?:{_SEP}\d+)*")
_DIGIT_SPLIT = re.compile(r"(\d+)")
_DATE_SEPARATORS = frozenset("-/.")
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_CUE_WINDOW = 48
_PHONE_CUE = re.compile(
    r"(?i)(?:\b(?:phone|phones|tel|tél|telephone|téléphone|telefon|telefono|teléfono|mobile|mobil|handy|"
    r"móvil|cell|cellphone|whatsapp|sms|call|ring|text|fax|contact)\b|\bmy\s+(?:number|no)\b)"
    r"[\s.:#=()+\-–]*(?:(?:me|us|at|on|is|was|number|no|nr|num)\b[\s.:#=()+\-–]*){0,3}$"
)
_SSN_CUE = re.compile(
    r"(?i)\b(?:ssn|social\s+security(?:\s+(?:number|no))?)\b[\s.:#=\-]*(?:(?:is|was|number|no)\b[\s.:#=\-]*){0,2}$"
)
_CUE_PUNCTUATION = " \t\n.:#=()+-–"
_PHONE_CUE_ENDINGS = frozenset(
    "phone phones tel tél telephone téléphone telefon telefono teléfono mobile mobil handy móvil cell cellphone "
    "whatsapp sms call ring text fax contact number no me us at on is was nr num".split()
)
_SSN_CUE_ENDINGS = frozenset("ssn security number no is was".split())
_MONEY_BEFORE = re.compile(r"[$€£¥₹₽₩][ \u00a0]?$")
_MONEY_AFTER = re.compile(
    r"^[ \u00a0]?(?:[$€£¥₹₽₩%]|(?:eur|usd|gbp|chf|pln|sek|nok|dkk|jpy|cny|inr|rub|zł|kr|euros?|dollars?)\b)",
    re.IGNORECASE,
)
# (low, high, prefix length, allowed lengths): the issuer ranges of the major card networks.
_CARD_BRANDS: tuple[tuple[int, int, int, frozenset[int]], ...] = (
    (4, 4, 1, frozenset({13, 16, 19})),                   # Visa
    (51, 55, 2, frozenset({16})),                         # Mastercard
    (2221, 2720, 4, frozenset({16})),                     # Mastercard 2-series
    (34, 34, 2, frozenset({15})),                         # American Express
    (37, 37, 2, frozenset({15})),
    (300, 305, 3, frozenset({14, 16, 17, 18, 19})),       # Diners Club
    (36, 36, 2, frozenset(range(14, 20))),
    (38, 39, 2, frozenset({14, 16, 17, 18, 19})),
    (6011, 6011, 4, frozenset(range(16, 20))),            # Discover
    (644, 649, 3, frozenset(range(16, 20))),
    (65, 65, 2, frozenset(range(16, 20))),
    (3528, 3589, 4, frozenset(range(16, 20))),            # JCB
    (62, 62, 2, frozenset(range(16, 20))),                # UnionPay
    (50, 50, 2, frozenset(range(13, 20))),                # Maestro
    (56, 69, 2, frozenset(range(13, 20))),
)
_MAX_WINDOW_DIGITS = 19  # the longest card; phones have at most 15 (+ a 3-digit call prefix)
_CARDS_FIRST_MAX_GROUPS = 32


# --- the finder ------------------------------------------------------------------------------


def find_pii(text: str) -> list[PiiSpan]:
    """Every piece of personal data in ``text``, as non-overlapping spans in text order.

    The kinds and the rules for ambiguous numbers are in the module docstring. Runs in time
    linear in ``len(text)``.

    Args:
        text: Any free text: a review, a search, a device name, an identifier.

    Returns:
        The spans, sorted by start; empty when there is nothing personal.
    """
    if not text:
        return []
    spans: list[PiiSpan] = []
    # Spans of earlier kinds, sorted; a later kind may not overlap them. Matches of one
    # kind never overlap each other, so each kind's spans are merged in once it is done.
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        i = bisect.bisect_left(taken, (start, -1))
        if i < len(taken) and taken[i][0] < end:
            return False
        return not (i > 0 and taken[i - 1][1] > start)

    def add(found: list[PiiSpan]) -> None:
        nonlocal taken
        spans.extend(found)
        taken = sorted(taken + [(s.start, s.end) for s in found])

    if "@" in text:
        add([PiiSpan(_email_start(text, m.start()), m.end(), "email") for m in _EMAIL.finditer(text)])
    add([PiiSpan(a, b, "iban") for a, b in _find_ibans(text) if free(a, b)])
    if ":" in text:
        add([
            PiiSpan(m.start(), m.end(), "ip")
            for m in _IPV6.finditer(text)
            if _may_be_ipv6(m.group(0)) and free(m.start(), m.end()) and _is_ipv6(m.group(0))
        ])
    if "." in text:
        add([PiiSpan(m.start(), m.end(), "ip") for m in _IPV4.finditer(text) if free(m.start(), m.end())])
    n_text = len(text)
    for m in _RUN.finditer(text):
        run = m.group(0)
        if len(run) < 6:
            continue
        n_digits = len(run) - len(run.translate(_DROP_DIGITS))
        if n_digits < 6:
            continue  # fewer than 6 digits: never PII
        start, end = m.span()
        plus = run[0] == "+"
        if n_digits == len(run) - plus:  # one group of digits (after a "+"): most runs
            if end < n_text and (text[end].isalnum() or text[end] == "_"):
                continue  # glued to a word: part of a token
            if taken and _overlaps(taken, start, end):
                continue
            kind = _bare_kind(run[1:] if plus else run, plus, _RunContext(text, start, end))
            if kind is not None:
                spans.append(PiiSpan(start, end, kind))
            continue
        for a, b, kind in _number_spans(text, start, end, taken):
            spans.append(PiiSpan(a, b, kind))
    spans.sort(key=lambda s: s.start)
    return spans


def _email_start(text: str, start: int) -> int:
    """Where an address starts once quotes before it are given back ("'bob@x.com" → "bob@x.com")."""
    at = start
    while text[at] in "'`" and text[at + 1] != "@":
        at += 1
    return at


def _replace_spans(text: str, spans: list[PiiSpan], render: Callable[[PiiSpan], str]) -> str:
    if not spans:
        return text
    parts: list[str] = []
    at = 0
    for span in spans:
        parts.append(text[at : span.start])
        parts.append(render(span))
        at = span.end
    parts.append(text[at:])
    return "".join(parts)


def mask_pii(text: str) -> str:
    """Replace e-mails, phones, IPs, cards, IBANs and SSNs in ``text`` with tokens.

    E-mails become "[email]", phone numbers "[phone]", IPv4/IPv6 addresses "[ip]",
    Luhn-valid card numbers "[card]", IBANs "[iban]" and US social security numbers
    "[ssn]". Prices, dates, clock times, counts, versions and the shop's ids are left as
    they are (the exact rules: this module's docstring). Linear in the length of the text.

    Args:
        text: Any free text, e.g. a review or a search query.

    Returns:
        The text with personal data replaced; the same string if there was none.
    """
    if not text:
        return text
    return _replace_spans(text, find_pii(text), lambda s: TOKENS[s.kind])


def pseudonym(value: str, key: bytes) -> str:
    """The stable pseudonym of one piece of personal data: ``user-`` and 10 hex digits.

    The value is normalised first (e-mails lower-cased, phone numbers reduced to their
    digits) so "Alice@X.com" and "alice@x.com", or "+1 415 555 0132" and "+14155550132",
    are the same person. A keyed hash (HMAC-SHA256) rather than a plain one, so nobody
    without the workspace's key can confirm a guessed address by hashing it.

    Args:
        value: The raw e-mail address, phone number or other personal datum.
        key: The workspace's secret key (``behavior.ingest.workspace_key``).
    """
    norm = value.strip().lower()
    if "@" not in norm:
        digits = "".join(ch for ch in norm if ch.isdigit())
        norm = digits or norm
    digest = hmac.new(key, norm.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]


def pseudonymize_text(text: str, key: bytes) -> str:
    """Replace every piece of personal data in ``text`` with its :func:`pseudonym`.

    Used for identifiers: a user id "alice@x.com" becomes "user-3f2a…", and a session id
    "alice@x.com-s1" becomes "user-3f2a…-s1", the same pseudonym, so ids that embed the
    same address stay joinable across columns and across ingests with the same key.

    Args:
        text: An identifier (or any text).
        key: The workspace's secret key.

    Returns:
        The text with each span replaced; the same string if there was none.
    """
    if not text:
        return text
    return _replace_spans(text, find_pii(text), lambda s: pseudonym(text[s.start : s.end], key))


# --- IBAN ------------------------------------------------------------------------------------


@functools.cache
def _iban_length(country: str) -> int | None:
    """The full IBAN length for a country code, from python-stdnum's registry; None if unknown."""
    info = _IBAN_DB.info(country)
    props = info[0][1] if info else {}
    bban = props.get("bban") if isinstance(props, dict) else None
    if not bban:
        return None
    return 4 + sum(int(n) for n in _BBAN_PART.findall(bban))


@functools.cache
def _bban_pattern(country: str) -> re.Pattern[str]:
    """The country's BBAN structure ("8!n10!n") as a regex: a cheap first check of a candidate."""
    info = _IBAN_DB.info(country)
    bban = info[0][1].get("bban", "") if info and isinstance(info[0][1], dict) else ""
    classes = {"n": "[0-9]", "a": "[A-Z]", "c": "[A-Z0-9]"}
    return re.compile("".join(f"{classes[kind]}{{{count}}}" for count, kind in re.findall(r"(\d+)!([nac])", bban)))


_IBAN_LETTERS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _mod97_ok(compact: str) -> bool:
    # A cheap first filter (1 in 97 random strings pass); stdnum checks the structure after.
    rearranged = (compact[4:] + compact[:4]).translate(_IBAN_LETTERS)
    return rearranged.isdigit() and int(rearranged) % 97 == 1


@functools.cache
def _iban_prefix(length: int) -> re.Pattern[str]:
    """The first ``length`` characters of an IBAN with its separators: where the IBAN ends."""
    return re.compile(rf"(?:[ \-]?[A-Za-z0-9]){{{length}}}")


def _find_ibans(text: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    pos = 0
    while (m := _IBAN_CANDIDATE.search(text, pos)) is not None:
        pos = m.start() + 1
        candidate = m.group(0)
        length = _iban_length(candidate[:2].upper())
        if length is None:
            continue
        compact = _IBAN_SEPARATORS.sub("", candidate)[:length].upper()
        if len(compact) < length or not _bban_pattern(compact[:2]).fullmatch(compact, 4):
            continue
        if not _mod97_ok(compact) or not stdnum_iban.is_valid(compact, check_country=False):
            continue
        end = _iban_prefix(length).match(text, m.start()).end()  # type: ignore[union-attr]
        if text[end : end + 1].isalnum():
            continue
        found.append((m.start(), end))
        pos = end
    return found


def _may_be_ipv6(candidate: str) -> bool:
    # Eight groups need seven colons (six with an IPv4 tail), fewer need "::": "09:12:30"
    # is turned away without the cost of ipaddress raising.
    return "::" in candidate or candidate.count(":") >= 6


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


# --- numbers ---------------------------------------------------------------------------------


@functools.cache
def _national_lengths() -> dict[str, frozenset[int]]:
    """Calling code → possible lengths of the national number behind it (phonenumbers' metadata).

    Built once, on the first international number seen (about 0.2 s: every region's metadata).
    """
    out: dict[str, frozenset[int]] = {}
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        lengths: set[int] = set()
        for region in regions:
            if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
                meta = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(code)
            else:
                meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
            if meta is not None and meta.general_desc is not None and meta.general_desc.possible_length:
                lengths.update(meta.general_desc.possible_length)
        if lengths:
            out[str(code)] = frozenset(lengths)
    return out


def _international_ok(digits: str) -> bool:
    """Whether ``digits`` (after the + or call prefix) are a calling code and a possible national number."""
    if len(digits) < 5 or digits[0] == "0":
        return False
    table = _national_lengths()
    for n in (1, 2, 3):  # calling codes are prefix-free: at most one of these is one
        lengths = table.get(digits[:n])
        if lengths is not None:
            national = digits[n:]
            # "+44 (0) 20 …": a trunk 0 written inside an international number.
            return len(national) in lengths or (national[:1] == "0" and len(national) - 1 in lengths)
    return False


def _card_ok(digits: str) -> bool:
    """13-19 digits with a card network's issuer prefix and length, and a valid Luhn digit."""
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    p4 = int(digits[:4])
    for low, high, width, lengths in _CARD_BRANDS:
        if low <= p4 // _POW10[4 - width] <= high and len(digits) in lengths:
            return _luhn_ok(digits)
    return False


# The Luhn check, as python-stdnum's luhn.is_valid computes it (the tests check they agree),
# without its per-digit generators: it runs for every card-shaped window of a text.
_LUHN_DOUBLED = {str(d): (2 * d) % 10 + (2 * d) // 10 for d in range(10)}


def _luhn_ok(digits: str) -> bool:
    return (sum(map(int, digits[-1::-2])) + sum(map(_LUHN_DOUBLED.__getitem__, digits[-2::-2]))) % 10 == 0


_POW10 = (1, 10, 100, 1000)


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


def _one_kind_of_separator(seps: tuple[str, ...]) -> bool:
    """Cards are grouped with one kind of separator: whitespace (one or two), "-" or "."."""
    first = seps[0]
    if first.strip(" \u00a0\t"):
        return first in ("-", ".") and all(s == first for s in seps)
    return all(not s.strip(" \u00a0\t") for s in seps)


def _is_date(a: str, b: str, c: str, s1: str, s2: str) -> bool:
    if s1 != s2 or s1 not in ("-", "/", "."):
        return False
    if len(a) == 4 and len(b) <= 2 and len(c) <= 2:
        return 1900 <= int(a) <= 2099 and 1 <= int(b) <= 12 and 1 <= int(c) <= 31
    if len(a) <= 2 and len(b) <= 2 and (len(c) == 4 or (len(c) == 2 and s1 == "/")):
        x, y = int(a), int(b)
        year_ok = len(c) == 2 or 1900 <= int(c) <= 2099
        return year_ok and 1 <= x <= 31 and 1 <= y <= 31 and (x <= 12 or y <= 12)
    return False


@dataclass(frozen=True)
class _Run:
    """A run of digit groups, split once (cached for short runs: the same dates and prices recur)."""

    lead: str  # what precedes the first digit: "", "+", "(" or "(+"
    groups: tuple[str, ...]
    lens: tuple[int, ...]
    seps: tuple[str, ...]  # seps[t] lies between groups[t] and groups[t + 1]
    offsets: tuple[int, ...]  # group t spans run[offsets[2t]:offsets[2t + 1]]
    cum: tuple[int, ...]  # cum[t]: digits in groups[:t], so a window i..j-1 holds cum[j] - cum[i]
    longest: int  # digits in the longest group
    isbn: bool
    plus: bool  # written with a leading "+"
    slash: bool  # some separator holds a "/"
    singles: tuple[int, ...]  # indices of the one-digit groups
    digits: str  # all the digits of the run, so a window's are digits[cum[i]:cum[j]]


def _split_run(run: str) -> _Run:
    return _split_short_run(run) if len(run) <= 64 else _split_any_run(run)


def _split_any_run(run: str) -> _Run:
    parts = _DIGIT_SPLIT.split(run)  # [lead, g0, s0, g1, s1, ..., g(k-1), ""]
    groups = tuple(parts[1::2])
    seps = tuple(parts[2:-1:2])
    lens = tuple(map(len, groups))
    cum = (0, *itertools.accumulate(lens))
    isbn = len(groups) >= 3 and cum[-1] in (10, 13) and groups[0] in ("978", "979") and "-" in seps
    singles = tuple(t for t, n in enumerate(lens) if n == 1)
    return _Run(
        parts[0], groups, lens, seps, tuple(itertools.accumulate(map(len, parts))), cum, max(lens), isbn,
        "+" in parts[0], "/" in run, singles, "".join(groups),
    )


_split_short_run = functools.lru_cache(maxsize=8192)(_split_any_run)


class _RunContext:
    """What the text around one run says; each fact looked up at most once, only if needed."""

    __slots__ = ("text", "start", "end", "_phone", "_ssn", "_money", "consulted")

    def __init__(self, text: str, start: int, end: int) -> None:
        self.text, self.start, self.end = text, start, end
        self.consulted = False  # whether the result depended on the text around the run
        self._phone: bool | None = None
        self._ssn: bool | None = None
        self._money: bool | None = None

    def _before(self) -> str:
        return self.text[max(0, self.start - _CUE_WINDOW) : self.start]

    def _last_word(self) -> str:
        before = self.text[max(0, self.start - 24) : self.start].rstrip(_CUE_PUNCTUATION)
        if not before or not before[-1].isalpha():
            return ""  # after a number or a symbol: no cue word
        return before.rsplit(None, 1)[-1].strip(_CUE_PUNCTUATION).lower()

    def phone_cue(self) -> bool:
        if self._phone is None:
            self.consulted = True
            # The regex only when the word just before could end a cue: most numbers have none.
            self._phone = self._last_word() in _PHONE_CUE_ENDINGS and _PHONE_CUE.search(self._before()) is not None
        return self._phone

    def ssn_cue(self) -> bool:
        if self._ssn is None:
            self.consulted = True
            self._ssn = self._last_word() in _SSN_CUE_ENDINGS and _SSN_CUE.search(self._before()) is not None
        return self._ssn

    def money(self) -> bool:
        if self._money is None:
            self.consulted = True
            before = self.text[max(0, self.start - 2) : self.start]
            after = self.text[self.end : self.end + 10]
            self._money = bool(_MONEY_BEFORE.search(before) or _MONEY_AFTER.search(after))
        return self._money


def _bare_kind(digits: str, plus: bool, ctx: _RunContext) -> PiiKind | None:
    """One group of digits on its own: "+" numbers, cards, and cued phones or SSNs; else an id."""
    n = len(digits)
    if plus:
        if 6 <= n <= 18 and _international_ok(digits):
            return "phone"
        return "phone" if 7 <= n <= 15 and ctx.phone_cue() else None
    if 13 <= n <= 19 and _card_ok(digits):
        return "card"
    if n == 9 and ctx.ssn_cue():
        return "ssn"
    if 7 <= n <= 15 and ctx.phone_cue() and not ctx.money():
        return "phone"
    return None


def _window_kind(r: _Run, i: int, j: int, ctx: _RunContext) -> PiiKind | None:
    """What groups ``i..j-1`` (two or more) of a run are, if personal data (rules: module docstring)."""
    groups, lens = r.groups, r.lens
    n_digits = r.cum[j] - r.cum[i]
    first = groups[i]
    if i == 0 and r.plus:
        if 6 <= n_digits <= 18 and _international_ok("".join(groups[i:j])):
            return "phone"
        return "phone" if 7 <= n_digits <= 15 and ctx.phone_cue() else None
    if first[0] == "0":  # an international call prefix: 00 (most of the world) or 011 (North America)
        if first.startswith("00") and not first.startswith("000"):
            if _international_ok("".join(groups[i:j])[2:]):
                return "phone"
        elif first.startswith("011") and _international_ok("".join(groups[i:j])[3:]):
            return "phone"
    inner = r.seps[i : j - 1]
    window_lens = lens[i:j]
    if n_digits >= 13:
        if _card_window(r, i, j):
            return "card"
        if n_digits > 15:
            return None
    elif n_digits < 7:
        return None
    n = j - i
    if n == 3 and n_digits == 9 and window_lens == (3, 2, 4) and inner[0] == inner[1] and inner[0] in ("-", " "):
        if _ssn_ok(first, groups[i + 1], groups[i + 2]):
            return "ssn"
    if ctx.money():
        return None
    if i == 0 and ctx.phone_cue():
        return "phone"
    if "." in inner and _holds_decimal(r, i, j):
        return None  # an amount beside other numbers ("475.18 (12 …", "331.99 (331.99")
    if n == 2:
        if window_lens[0] >= 6 and window_lens[1] >= 6:
            return None  # two ids side by side: no phone format has two groups this long
        if inner[0] == "." and window_lens[1] <= 2:
            return None  # a decimal
        if inner[0] == "-" and window_lens == (5, 4):
            return None  # a US ZIP+4 code
    if r.slash:
        slashes = sum("/" in s for s in inner)
        if slashes and not (slashes == 1 and inner[0] == "/" and first[0] == "0"):
            return None  # a ratio, a date or a fraction; only "030/1234567" is a phone
    if window_lens.count(4) == n and first[:2] in ("19", "20") and all("1900" <= g <= "2099" for g in groups[i:j]):
        return None  # years
    if window_lens[0] == 4 and "1900" <= first <= "2099" and "(" in inner[0] and ")" not in inner[0]:
        return None  # a year before a bracketed count: "February 2026 (475 users)" (no phone opens a bracket after four digits)
    if (
        window_lens[0] == 1
        and first != "0"
        and n >= 3
        and window_lens.count(3) == n - 1
        and inner.count(inner[0]) == n - 1
        and inner[0] in (" ", ".", "\u00a0")
    ):
        return None  # a count with thousands separators: "1 299 000"
    return "phone"


def _holds_decimal(r: _Run, i: int, j: int) -> bool:
    """Whether groups ``i..j-1`` hold a decimal: one "." between other separators, then 1-2 digits
    ("475.18 (12"); numbers dotted throughout ("06.12.34.56", "312.34.56") are not decimals."""
    seps, last = r.seps, len(r.groups) - 1
    for g in range(i, j - 1):
        if seps[g] == "." and r.lens[g + 1] <= 2 and (g == 0 or seps[g - 1] != ".") and (g + 1 == last or seps[g + 1] != "."):
            return True
    return False


def _card_window(r: _Run, i: int, j: int) -> bool:
    """Whether groups ``i..j-1`` are a card: issuer digit, groups of 3+ digits joined by one kind
    of separator (or none), no parenthesis before, and ``_card_ok``."""
    return (
        r.groups[i][0] in "23456"
        and (j - i == 1 or (min(r.lens[i:j]) >= 3 and _one_kind_of_separator(r.seps[i : j - 1])))
        and not (i > 0 and r.seps[i - 1].endswith("("))
        and _card_ok(r.digits[r.cum[i] : r.cum[j]])
    )


def _blocked_groups(r: _Run, run_start: int, run_end: int, taken: list[tuple[int, int]]) -> set[int]:
    """Groups of a run that a span of an earlier kind (e-mail, IBAN, IP) overlaps."""
    blocked: set[int] = set()
    at = max(bisect.bisect_left(taken, (run_start, -1)) - 1, 0)
    starts: list[int] | None = None
    while at < len(taken) and taken[at][0] < run_end:
        start, end = taken[at]
        at += 1
        if end <= run_start:
            continue
        if starts is None:
            starts = [r.offsets[2 * t] for t in range(len(r.groups))]
        t = max(bisect.bisect_right(starts, start - run_start) - 1, 0)
        while t < len(r.groups) and run_start + r.offsets[2 * t] < end:
            if run_start + r.offsets[2 * t + 1] > start:
                blocked.add(t)
            t += 1
    return blocked


def _number_spans(text: str, run_start: int, run_end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int, PiiKind]]:
    """Cut one run of digit groups into the longest windows that are personal data.

    Greedy from the left: at each group, the longest window that is personal data wins and
    the scan goes on after it. A window holds at most 19 digits and, except after a "+" or
    a call prefix, no one-digit group after its first, so each group starts a bounded
    number of windows and a run costs time linear in its length.
    """
    run = text[run_start:run_end]
    glued = run_end < len(text) and (text[run_end].isalnum() or text[run_end] == "_")
    # A group joined to more digits by a thousands comma ("53,134.38", "12,354") is part of a
    # formatted amount or count: phones, cards and SSNs are never written with commas.
    comma_after = _THOUSANDS_AFTER.match(text, run_end) is not None
    comma_before = run_start >= 2 and text[run_start - 1] == "," and text[run_start - 2].isdigit()
    overlaps = bool(taken) and _overlaps(taken, run_start, run_end)
    # The same dates, prices and ids recur throughout a text: a run whose reading did not
    # depend on the text around it is read once.
    # The key holds what the reading looks at beyond the run: a letter glued to its end, and
    # a closing parenthesis after it.
    key = (run, glued, text[run_end : run_end + 1] == ")", comma_after, comma_before)
    cached = None if overlaps else _RUN_CACHE.get(key)
    if cached is not None:
        return [(run_start + a, run_start + b, kind) for a, b, kind in cached]
    ctx = _RunContext(text, run_start, run_end)
    found = _read_run(text, run, run_start, run_end, glued, taken if overlaps else [], ctx, comma_after, comma_before)
    if not overlaps and not ctx.consulted and len(run) <= 64:
        if len(_RUN_CACHE) >= _RUN_CACHE_SIZE:
            _RUN_CACHE.clear()
        _RUN_CACHE[key] = tuple((a - run_start, b - run_start, kind) for a, b, kind in found)
    return found


_RUN_CACHE: dict[tuple[str, bool, bool, bool, bool], tuple[tuple[int, int, PiiKind], ...]] = {}
_THOUSANDS_AFTER = re.compile(r",\d{3}(?!\d)")
_RUN_CACHE_SIZE = 8192


def _overlaps(taken: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_left(taken, (start, -1))
    if i < len(taken) and taken[i][0] < end:
        return True
    return i > 0 and taken[i - 1][1] > start


def _read_run(
    text: str, run: str, run_start: int, run_end: int, glued: bool, taken: list[tuple[int, int]], ctx: _RunContext,
    comma_after: bool = False, comma_before: bool = False,
) -> list[tuple[int, int, PiiKind]]:
    if run.isdigit() or (run[0] == "+" and run[1:].isdigit()):  # the common case: one group
        if glued or taken or comma_after or comma_before:
            return []
        kind = _bare_kind(run.lstrip("+"), run[0] == "+", ctx)
        return [(run_start, run_end, kind)] if kind else []
    r = _split_run(run)
    if r.isbn:
        return []
    groups, seps, cum = r.groups, r.seps, r.cum
    k = len(groups)
    if r.longest == 1:
        # One-digit groups only ("1 2 3 4 …"): no national format, card or SSN looks like
        # that; only a "+" number at the start of the run can.
        if "+" not in r.lead:
            return []
        k = min(k, _MAX_WINDOW_DIGITS)
    blocked = _blocked_groups(r, run_start, run_end, taken) if taken else set()
    if glued or comma_after:  # digits glued to a letter ("12345678abc", "2kg") or to ",134" belong to a word or an amount
        blocked.add(k - 1)
    if comma_before:
        blocked.add(0)
    dates: dict[int, bool] = {}
    # Dates are written with "-", "/" or ".": a run with none of them holds no date.
    may_hold_dates = "-" in run or "/" in run or "." in run

    def date_at(t: int) -> bool:
        if not may_hold_dates:
            return False
        if t not in dates:
            dates[t] = t + 2 < k and _is_date(groups[t], groups[t + 1], groups[t + 2], seps[t], seps[t + 1])
        return dates[t]

    found: list[tuple[int, int, PiiKind]] = []
    if cum[k] >= 13 and k <= _CARDS_FIRST_MAX_GROUPS:
        # Cards first: a Luhn-checked card is the surest reading, and a phone window taken
        # first could end inside one ("qty 2 4111 1111 1111 1111" would keep "1111"). In a
        # longer run (a pasted table of numbers) that would cost a Luhn check at every
        # group; there cards are found by the greedy scan below like everything else.
        for a, b in _card_windows(r, k, blocked):
            found.append((run_start + r.offsets[2 * a], run_start + r.offsets[2 * b - 1], "card"))
            blocked.update(range(a, b))
    i = 0
    singles = r.singles
    while i < k:
        if blocked and i in blocked:
            i += 1
            continue
        if may_hold_dates and i + 2 < k and seps[i] in _DATE_SEPARATORS and date_at(i):
            i += 3
            continue
        g0 = groups[i]
        loose = (i == 0 and r.plus) or (g0[0] == "0" and (g0[:2] == "00" or g0[:3] == "011"))
        # The furthest end: at most 19 digits, and no one-digit group after the first.
        jmax = min(bisect.bisect_right(cum, cum[i] + _MAX_WINDOW_DIGITS, i + 1) - 1, k)
        if not loose and singles:
            s_at = bisect.bisect_right(singles, i)
            if s_at < len(singles) and singles[s_at] < jmax:
                jmax = singles[s_at]
        jmax = max(jmax, i + 1)
        if blocked:
            jmax = next((t for t in range(i + 1, jmax) if t in blocked), jmax)
        if cum[jmax] - cum[i] < 6:  # no window from here holds enough digits to be anything
            i += 1
            continue
        hit: tuple[int, PiiKind] | None = None
        base = cum[i]
        card_first = g0[0] in "23456" and not (i == 0 and r.plus)
        for j in range(jmax, i, -1):
            d = cum[j] - base
            if d < 6:
                break
            if d > 15:  # more than 15 digits can only be a card
                if card_first and _card_window(r, i, j):
                    hit = (j, "card")
                    break
                continue
            if may_hold_dates and j - i >= 2 and any(seps[t - 1] in _DATE_SEPARATORS and date_at(t) for t in range(i + 1, j)):
                continue  # a window never takes in the start of a date
            if j == i + 1:
                kind = _bare_kind(groups[i], i == 0 and r.plus, ctx) if (i == 0 or not seps[i - 1].endswith("(")) else None
            else:
                kind = _window_kind(r, i, j, ctx)
            if kind is not None:
                hit = (j, kind)
                break
        if hit is None:
            i += 1
            continue
        j, kind = hit
        start = run_start + (0 if i == 0 else r.offsets[2 * i])
        if i > 0 and seps[i - 1].endswith("("):
            start -= 1
        end = run_start + r.offsets[2 * j - 1]
        if text[start] == "(" and ")" not in text[start:end] and text[end : end + 1] == ")":
            end += 1
        found.append((start, end, kind))
        i = j
    found.sort()
    return found


def _card_windows(r: _Run, k: int, blocked: set[int]) -> list[tuple[int, int]]:
    """Greedy from the left, the longest card windows (13-19 digits) of a run, as (i, j)."""
    cum, digits, groups, lens = r.cum, r.digits, r.groups, r.lens
    total = cum[k]
    out: list[tuple[int, int]] = []
    after = 0  # windows may start only after the last card found
    # A card starts with a group of 3+ digits (or is one long group) led by 2-6.
    for i in [t for t in range(k) if lens[t] >= 3 and groups[t][0] in "23456"]:
        if i < after or total - cum[i] < 13 or i in blocked:
            continue
        lengths = _card_lengths(digits[cum[i] : cum[i] + 4])
        for length in sorted(lengths, reverse=True):
            j = bisect.bisect_left(cum, cum[i] + length, i + 1)
            if j > k or cum[j] != cum[i] + length:
                continue  # no window from i holds exactly this many digits
            if (not blocked or not any(t in blocked for t in range(i, j))) and _card_window(r, i, j):
                out.append((i, j))
                after = j
                break
    return out


@functools.lru_cache(maxsize=10_000)
def _card_lengths(prefix: str) -> frozenset[int]:
    """The card lengths the issuer ranges allow for a 4-digit prefix (empty: no card network)."""
    p4 = int(prefix)
    lengths: set[int] = set()
    for low, high, width, allowed in _CARD_BRANDS:
        if low <= p4 // _POW10[4 - width] <= high:
            lengths.update(allowed)
            break  # _card_ok takes the first matching network too
    return frozenset(lengths)


# --- IP addresses as values ---------------------------------------------------------------------


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


# --- at ingest: free text masked and bounded, identifiers pseudonymized -----------------------------

# Canonical columns that hold free text a person typed or a device reported ("Alice's
# iPhone +1 415 555 0134"): masked at ingest, so the workspace never stores the raw value.
FREE_TEXT_COLUMNS: tuple[str, ...] = ("text", "device", "payment", "country", "category")
# Identifier columns: an e-mail or phone inside one is replaced by its pseudonym, the same
# in every column, so the ids still join.
ID_COLUMNS: tuple[str, ...] = ("user_id", "session_id", "order_id", "item_id")
# Every kind of PII holds an '@', a ':' or at least four digits; values without any are
# never handed to the finder (most ids and most texts).
_MAY_HOLD_PII = re.compile(r"[@:]|\d\D*\d\D*\d\D*\d")
_PLAIN_NUMBER_ID = re.compile(r"\d{1,12}")
# How far past the cut a long value is masked, so personal data across the cut is masked
# whole before the value is cut (the longest e-mail address is 254 characters).
_CUT_MARGIN = 256
ELLIPSIS = "…"


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "…"; never inside a mask token."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    bracket = cut.rfind("[")
    if bracket != -1 and "]" not in cut[bracket:] and len(cut) - bracket <= 8:
        cut = cut[:bracket]  # "[pho…" would read as garbage
    return cut + ELLIPSIS


def mask_text_bounded(text: str, limit: int) -> str:
    """Mask ``text`` and cut it to ``limit`` characters, masking only what can be kept.

    A 30 MB review costs what its first ``limit`` characters (and a margin) cost.
    """
    if len(text) <= limit:
        return mask_pii(text)
    return cut_text(mask_pii(text[: limit + _CUT_MARGIN]), limit)


SMALL_COLUMN_ROWS = 2_000  # up to this many rows a column is protected value by value in Python


def _replace_values(column: pd.Series, change: Callable[[str], str], *, ids: bool) -> tuple[pd.Series, int]:
    """Apply ``change`` to each distinct value that may hold PII; the column and rows changed."""
    if len(column) <= SMALL_COLUMN_ROWS:  # a `shopsight watch` poll's hundred rows: distinct values in Python
        distinct = list(dict.fromkeys(str(v) for v in column.to_numpy(dtype=object, na_value=None).tolist() if v is not None))
    else:
        distinct = list(pd.unique(column.dropna().astype(str)))
    if not distinct:
        return column, 0
    mapping: dict[str, str] = {}
    for value in distinct:
        if ids and _PLAIN_NUMBER_ID.fullmatch(value):
            continue  # a plain numeric id of up to 12 digits is never personal data (module docstring)
        if _MAY_HOLD_PII.search(value) is None:
            continue
        new = change(value)
        if new != value:
            mapping[value] = new
    if not mapping:
        return column, 0
    hit = column.isin(list(mapping))
    out = column.copy()
    out[hit] = column[hit].map(mapping)
    return out.astype(column.dtype), int(hit.sum())


def protect_events(events: pd.DataFrame, *, key: bytes, max_text_chars: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Mask and bound the free-text columns and pseudonymize identifiers, before anything is stored.

    Free text (``FREE_TEXT_COLUMNS``): personal data is replaced by mask tokens and values
    longer than ``max_text_chars`` are cut (ending in "…"). Identifiers (``ID_COLUMNS``):
    an e-mail address, phone number or other personal datum inside one is replaced by its
    :func:`pseudonym` under ``key``, so "alice@x.com" becomes "user-3f2a…" in user_id and
    "alice@x.com-s1" becomes "user-3f2a…-s1" in session_id, and the same input gets the
    same pseudonym in every later ingest with the same key. Plain numeric ids of up to 12
    digits are never changed.

    Args:
        events: Canonical events (``behavior.events``); not modified.
        key: The workspace's secret pseudonym key.
        max_text_chars: The most characters a free-text value keeps.

    Returns:
        The protected events and, for the ingest report's notes, how many rows each step
        changed, e.g. ``{"device: personal data masked": 3}``; steps that changed nothing
        are left out.
    """
    out = events.copy()
    notes: dict[str, int] = {}
    for col in FREE_TEXT_COLUMNS:
        if col not in out.columns:
            continue
        column = out[col]
        if len(column) <= SMALL_COLUMN_ROWS:
            long = np.array([isinstance(v, str) and len(v) > max_text_chars for v in column.to_numpy(dtype=object).tolist()], dtype=bool)
        else:
            long = (column.str.len() > max_text_chars).fillna(False).to_numpy(dtype=bool)
        if long.any():
            column = column.copy()
            column[long] = [mask_text_bounded(str(v), max_text_chars) for v in column[long]]
            notes[f"{col}: cut to {max_text_chars:,} characters (masked first)"] = int(long.sum())
        masked, changed = _replace_values(column, mask_pii, ids=False)
        if changed:
            notes[f"{col}: personal data masked"] = changed
        out[col] = masked
    for col in ID_COLUMNS:
        if col not in out.columns:
            continue
        pseudonymized, changed = _replace_values(out[col], lambda v: pseudonymize_text(v, key), ids=True)
        if changed:
            notes[f"{col}: e-mail/phone replaced by a pseudonym"] = changed
        out[col] = pseudonymized
    if "ip" in out.columns and len(out) <= SMALL_COLUMN_ROWS:
        # The risk rules only compare addresses (several accounts on one IP): a keyed pseudonym per
        # address keeps every comparison and stores no address at all.
        cells = out["ip"].to_numpy(dtype=object, na_value=None).tolist()
        todo = [v is not None and not str(v).startswith(IP_PSEUDONYM_PREFIX) for v in cells]
        if any(todo):
            mapping = {}
            for v, t in zip(cells, todo):
                if t and str(v) not in mapping:
                    mapping[str(v)] = ip_pseudonym(str(v), key)
            out["ip"] = pd.Series(pd.array([mapping[str(v)] if t else v for v, t in zip(cells, todo)], dtype=out["ip"].dtype), index=out.index)
            notes["ip: address replaced by a pseudonym"] = sum(todo)
    elif "ip" in out.columns:
        present = out["ip"].notna() & ~out["ip"].astype("string").str.startswith(IP_PSEUDONYM_PREFIX).fillna(True)
        if present.any():
            values = out.loc[present, "ip"].astype(str)
            mapping = {v: ip_pseudonym(v, key) for v in pd.unique(values)}
            out.loc[present, "ip"] = values.map(mapping)
            notes["ip: address replaced by a pseudonym"] = int(present.sum())
    return out, notes


IP_PSEUDONYM_PREFIX = "ip-"


def ip_pseudonym(address: str, key: bytes) -> str:
    """The stable pseudonym of one IP address under the workspace key: ``ip-`` and 10 hex digits."""
    digest = hmac.new(key, b"ip:" + address.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()
    return IP_PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]


def mask_table(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Every text cell of ``table`` masked (rejected rows, kept for a person to read): the table
    and the number of cells changed."""
    out = table.copy()
    changed = 0
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype):
            out[col], n = _replace_values(out[col], mask_pii, ids=False)
            changed += n
    return out, changed

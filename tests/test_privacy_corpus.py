"""Property-based corpus for the PII finder: generated personal data never survives masking,
and the shop's own numbers (prices, dates, ids, versions) always do.

A leak is any trace of the secret left after masking: the sentence templates hold no
digits, no '@' and no ':', so a digit, an '@' or a ':' in the output can only be a piece of
the generated secret. Every generated case is counted; the corpus must hold at least 200.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb

from shopsight.behavior.privacy import find_pii, mask_pii

CASES: Counter[str] = Counter()
LEAKS: list[tuple[str, str, str]] = []

# database=None: no .hypothesis folder in the work tree; derandomize: CI sees the same cases.
CORPUS = settings(max_examples=120, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

TEMPLATES = (
    "{}",
    "please use {} thanks",
    "my details are {} if needed",
    "({})",
    "reach me via {}.",
    "{}, or later today",
    "Note to self - {} - done",
    "old one was {}\nnew one soon",
)


def _sentence(data: st.DataObject, secret: str) -> str:
    return data.draw(st.sampled_from(TEMPLATES)).format(secret)


def _check(kind: str, secret: str, text: str, forbidden: str) -> None:
    """Mask ``text`` and record a leak if any character of ``forbidden`` class survives."""
    CASES[kind] += 1
    out = mask_pii(text)
    if secret in out or re.search(forbidden, out):
        LEAKS.append((kind, secret, out))
    assert secret not in out, (text, out)
    assert not re.search(forbidden, out), (text, out)


# --- e-mails ---------------------------------------------------------------------------------

UNICODE_LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüßéèñçøåжзи._-", min_size=1, max_size=20).filter(
    lambda s: s[0].isalpha() and s[-1].isalpha() and ".." not in s
)
UNICODE_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéñжзи-", min_size=1, max_size=15).filter(
    lambda s: s[0].isalpha() and s[-1].isalpha()
)
UNICODE_EMAIL = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    UNICODE_LOCAL,
    st.lists(UNICODE_LABEL, min_size=1, max_size=3),
    st.sampled_from(["de", "com", "fr", "co.uk", "рф", "中国", "xn--p1ai"]),
)


@CORPUS
@given(data=st.data(), email=st.one_of(st.emails(), UNICODE_EMAIL))
def test_generated_emails_never_leak(data: st.DataObject, email: str) -> None:
    _check("email", email, _sentence(data, email), r"@")


# --- phone numbers ---------------------------------------------------------------------------

_TYPES = (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE)


def _example_numbers() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in _TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                out.append((region, number))
    return out


EXAMPLES = _example_numbers()


def _national_is_recognised(national: str) -> bool:
    """The module's documented scope for numbers written nationally without a cue word: 7-15
    digits in two or more groups, every group after the first at least two digits long, not a
    one-digit-first count with thousands separators."""
    groups = re.findall(r"\d+", national)
    digits = sum(map(len, groups))
    if not 7 <= digits <= 15 or len(groups) < 2 or any(len(g) < 2 for g in groups[1:]):
        return False
    return not (len(groups[0]) == 1 and groups[0] != "0" and all(len(g) == 3 for g in groups[1:]) and "(" not in national)


NATIONAL = [
    (r, phonenumbers.format_number(n, PhoneNumberFormat.NATIONAL))
    for r, n in EXAMPLES
    if _national_is_recognised(phonenumbers.format_number(n, PhoneNumberFormat.NATIONAL))
]


def test_national_scope_covers_most_regions() -> None:
    # Fewer than a tenth of the regions' example numbers fall outside the national rule
    # (short numbers of small territories; they are still masked in international form).
    assert len(NATIONAL) >= 0.9 * len(EXAMPLES), (len(NATIONAL), len(EXAMPLES))


def _vary_separators(number: str, sep: str) -> str:
    return re.sub(r"(?<=\d)[ \-](?=\d)", lambda m: sep, number)


SEPARATORS = st.sampled_from([" ", "-", ".", "  ", None])


@CORPUS
@given(data=st.data(), example=st.sampled_from(EXAMPLES), fmt=st.sampled_from(["E164", "INTERNATIONAL", "IDD"]), sep=SEPARATORS)
def test_generated_international_phones_never_leak(data: st.DataObject, example, fmt: str, sep: str | None) -> None:
    region, number = example
    if fmt == "E164":
        text = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    else:
        text = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        if fmt == "IDD":
            text = "00" + text[1:]
    if sep is not None:
        text = _vary_separators(text, sep)
    _check(f"phone/{fmt}", text, _sentence(data, text), r"\d")


@CORPUS
@given(data=st.data(), example=st.sampled_from(NATIONAL), sep=SEPARATORS)
def test_generated_national_phones_never_leak(data: st.DataObject, example, sep: str | None) -> None:
    region, text = example
    if sep is not None:
        text = _vary_separators(text, sep)
    _check("phone/NATIONAL", text, _sentence(data, text), r"\d")


@CORPUS
@given(digits=st.integers(min_value=2_000_000_000, max_value=9_999_999_999), cue=st.sampled_from(["call me", "call me at", "phone:", "tel", "my number is", "WhatsApp", "text me on"]))
def test_bare_numbers_after_a_cue_word_are_phones(digits: int, cue: str) -> None:
    secret = str(digits)
    _check("phone/cued", secret, f"{cue} {secret} please", r"\d")


# --- IBANs, cards, SSNs ----------------------------------------------------------------------

_IBAN_DB = numdb.get("iban")
IBAN_COUNTRIES = ["DE", "GB", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PL", "SE", "IE", "PT", "NO", "DK"]


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(IBAN_COUNTRIES))
    structure = _IBAN_DB.info(country)[0][1]["bban"]
    bban = ""
    for count, kind in re.findall(r"(\d+)!([nac])", structure):
        alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "c": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}[kind]
        bban += draw(st.text(alphabet=alphabet, min_size=int(count), max_size=int(count)))
    number = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
    # Mod-97 and the country's BBAN structure; national check digits inside the BBAN are not
    # needed to call it an IBAN (a mistyped one is still somebody's account).
    assert stdnum_iban.is_valid(number, check_country=False)
    return draw(st.sampled_from([number, stdnum_iban.format(number), stdnum_iban.format(number).replace(" ", "-")]))


@CORPUS
@given(data=st.data(), iban=ibans())
def test_generated_ibans_never_leak(data: st.DataObject, iban: str) -> None:
    _check("iban", iban, _sentence(data, iban), r"\d")


CARD_PREFIXES = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("62", 16), ("36", 14)]


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(CARD_PREFIXES))
    body = prefix + draw(st.text(alphabet="0123456789", min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    assert luhn.is_valid(number)
    sep = draw(st.sampled_from(["", " ", "-", ".", "  "]))
    sizes = {13: (4, 3, 3, 3), 14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4)}[length]  # as printed on cards
    groups, at = [], 0
    for size in sizes:
        groups.append(number[at : at + size])
        at += size
    return sep.join(groups)


@CORPUS
@given(data=st.data(), card=cards())
def test_generated_cards_never_leak(data: st.DataObject, card: str) -> None:
    _check("card", card, _sentence(data, card), r"\d")


@CORPUS
@given(
    data=st.data(),
    area=st.integers(1, 899).filter(lambda a: a != 666),
    group=st.integers(1, 99),
    serial=st.integers(1, 9999),
    sep=st.sampled_from(["-", " "]),
)
def test_generated_ssns_never_leak(data: st.DataObject, area: int, group: int, serial: int, sep: str) -> None:
    ssn = f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"
    _check("ssn", ssn, _sentence(data, ssn), r"\d")


# --- IP addresses ------------------------------------------------------------------------------


@st.composite
def ip_texts(draw: st.DrawFn) -> str:
    version = draw(st.sampled_from([4, 6, "mapped"]))
    if version == "mapped":
        v4 = draw(st.ip_addresses(v=4))
        return draw(st.sampled_from([f"::ffff:{v4}", f"::FFFF:{v4}", f"0:0:0:0:0:ffff:{v4}"]))
    address = draw(st.ip_addresses(v=version))
    if version == 6:
        return draw(st.sampled_from([str(address), address.exploded]))
    return str(address)


@CORPUS
@given(data=st.data(), ip=ip_texts())
def test_generated_ip_addresses_never_leak(data: st.DataObject, ip: str) -> None:
    ipaddress.ip_address(ip)  # the generator makes real addresses only
    forbidden = r"[\d:]" if ":" in ip else r"\d"
    _check("ip", ip, _sentence(data, ip), forbidden)


# --- what must stay readable ---------------------------------------------------------------------

NON_PII = st.one_of(
    st.builds(lambda d, c: f"${d:,}.{c:02d}", st.integers(0, 9_999_999), st.integers(0, 99)),
    st.builds(lambda d, c: f"paid {d:,}.{c:02d} EUR", st.integers(0, 999_999), st.integers(0, 99)),
    st.builds(
        lambda y, m, d, h, mi: f"{y}-{m:02d}-{d:02d} {h:02d}:{mi:02d}",
        st.integers(1990, 2035), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59),
    ),
    st.builds(lambda y, m, d: f"on {d:02d}/{m:02d}/{y}", st.integers(1990, 2035), st.integers(1, 12), st.integers(1, 28)),
    st.builds(lambda y, m, d: f"{y}-{m:02d}-{d:02d}T09:12:00Z", st.integers(1990, 2035), st.integers(1, 12), st.integers(1, 28)),
    st.builds(lambda n: f"order o{n:06d}", st.integers(0, 999_999)),
    st.builds(lambda n: f"user u{n:05d}", st.integers(0, 99_999)),
    st.builds(lambda u, s: f"session u{u:05d}-s{s:04d}", st.integers(0, 99_999), st.integers(0, 9999)),
    st.builds(lambda n: f"{n} items in the cart", st.integers(0, 10**6)),
    st.builds(lambda a, b: f"between {a} and {b}", st.integers(1990, 2035), st.integers(1990, 2035)),
    st.builds(lambda a, b: f"{a}-{b} seasons", st.integers(1990, 2035), st.integers(1990, 2035)),
    st.builds(lambda m, v: f"{m}@v{v}", st.sampled_from(["churn", "intent", "risk"]), st.integers(1, 99)),
    st.builds(lambda n: f"customer {n:010d} asked", st.integers(0, 9_999_999_999)),
    st.builds(lambda n: f"id {n}", st.integers(0, 10**12)),
    st.builds(lambda a, b, c: f"version {a}.{b}.{c}", st.integers(0, 20), st.integers(0, 20), st.integers(0, 99)),
    st.builds(lambda a: f"rated {a / 10:.1f}/5", st.integers(0, 50)),
    st.builds(lambda a, b: f"sku {a:03d}-{b:03d}", st.integers(0, 999), st.integers(0, 999)),
    st.builds(lambda n: f"{n:,} views", st.integers(0, 10**9)),
    st.builds(lambda h, m, s: f"at {h:02d}:{m:02d}:{s:02d}", st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)),
)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(text=NON_PII)
def test_shop_numbers_pass_unchanged(text: str) -> None:
    CASES["non-pii"] += 1
    assert mask_pii(text) == text, find_pii(text)


def test_the_corpus_held_at_least_200_cases_and_no_leak() -> None:
    # Runs after the generators above (pytest keeps file order); alone it has nothing to count.
    pii_cases = sum(n for kind, n in CASES.items() if kind != "non-pii")
    if not pii_cases:
        pytest.skip("run with the corpus tests above")
    assert pii_cases >= 200, CASES
    assert LEAKS == []

"""PII masking: what must be masked, and what must stay readable because answers cite it."""

from __future__ import annotations

import pytest

from behavior.privacy import mask_ip, mask_pii


@pytest.mark.parametrize(
    "text, secret",
    [
        ("write to jane.doe+shop@example.co.uk please", "jane.doe+shop@example.co.uk"),
        ("contact: BOB_99@mail.example.com.", "BOB_99@mail.example.com"),
    ],
)
def test_emails_are_masked(text: str, secret: str) -> None:
    out = mask_pii(text)
    assert secret not in out
    assert "[email]" in out


@pytest.mark.parametrize(
    "text, secret",
    [
        ("call me on +1 (415) 555-0132 today", "555-0132"),
        ("phone 415-555-0132", "415-555-0132"),
        ("ring (415) 555 0132 after 6", "555 0132"),
        ("my number is 415.555.0132", "415.555.0132"),
        ("uk office +44 20 7946 0958", "7946 0958"),
        ("mobile 07700 900123 works", "07700 900123"),
        ("landline 020 7946 0958", "020 7946 0958"),
        ("call 4155550132 now", "4155550132"),
        ("+33612345678", "+33612345678"),
    ],
)
def test_phone_numbers_are_masked(text: str, secret: str) -> None:
    out = mask_pii(text)
    assert secret not in out, out
    assert "[phone]" in out


@pytest.mark.parametrize(
    "text, secret",
    [
        ("from 203.0.113.7 again", "203.0.113.7"),
        ("ip=10.0.0.255;", "10.0.0.255"),
        ("v6 2001:db8:85a3::8a2e:370:7334 seen", "2001:db8:85a3::8a2e:370:7334"),
        ("loopback ::1 and fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ("full 2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
    ],
)
def test_ip_addresses_are_masked(text: str, secret: str) -> None:
    out = mask_pii(text)
    assert secret not in out, out
    assert "[ip]" in out


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",  # Amex, 15 digits
        "6011000990139424",
    ],
)
def test_luhn_valid_card_numbers_are_masked(number: str) -> None:
    out = mask_pii(f"paid with card {number}, thanks")
    assert number not in out
    assert "1111" not in out and "4444" not in out and "10005" not in out and "9424" not in out
    assert out == "paid with card [card], thanks"


def test_long_number_failing_luhn_is_not_called_a_card() -> None:
    # 4111 1111 1111 1112 fails the Luhn check: it is some other id, not a card.
    assert "[card]" not in mask_pii("ref 4111111111111112")


@pytest.mark.parametrize(
    "text",
    [
        "bought for $118.00 on 2026-03-04 09:12",
        "price 1,299.99 USD, order o000123, user u00042",
        "session u00042-s17 at 09:12:30 on 03/04/2026",
        "item i12345 qty 3 total $2,450.50",
        "version 1.2.3 and rating 4.5/5",
        "between 2026-03-04T09:12:00Z and 2026-03-05",
        "sku 123-456",
    ],
)
def test_prices_dates_and_ids_are_left_alone(text: str) -> None:
    assert mask_pii(text) == text


def test_several_kinds_in_one_text_are_all_masked() -> None:
    text = "I'm ann@x.io, +1 415 555 0132, card 4111 1111 1111 1111 from 198.51.100.4; paid $59.90"
    out = mask_pii(text)
    assert out == "I'm [email], [phone], card [card] from [ip]; paid $59.90"


def test_empty_text_stays_empty() -> None:
    assert mask_pii("") == ""


@pytest.mark.parametrize(
    "ip, expected",
    [
        ("203.0.113.7", "203.0.113.x"),
        (" 10.1.2.3 ", "10.1.2.x"),
        ("2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3:x"),
        ("not an ip", "[ip]"),
        ("", ""),
    ],
)
def test_mask_ip_keeps_only_the_network_part(ip: str, expected: str) -> None:
    assert mask_ip(ip) == expected

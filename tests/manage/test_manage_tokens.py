"""The tokens of the subscriber's page: fresh links and address confirmations name a row
of their own, expire, and cannot stand in for any other purpose."""

from __future__ import annotations

import pytest

from service.tokens import ADDRESS_CONFIRM, MANAGE_LINK, InvalidToken, Tokens
from tests import support
from tests.manage_support import aged_token

TOKENS = Tokens((support.TEST_KEY,), 48 * 3600, 1800)


def test_fresh_link_round_trip_names_subscriber_and_row() -> None:
    token = TOKENS.manage_link(7, 42)
    assert TOKENS.verify_manage_link(token) == (7, 42)
    assert len(token) <= 60 and "." not in token
    assert TOKENS.manage_link(7, 43) != token  # one row, one token


def test_address_confirmation_round_trip() -> None:
    assert TOKENS.verify_address_confirm(TOKENS.address_confirm(9, 3)) == (9, 3)


def test_fresh_links_expire_after_manage_link_max_age() -> None:
    assert TOKENS.verify_manage_link(aged_token(MANAGE_LINK, 1, 1, 1790)) == (1, 1)
    with pytest.raises(InvalidToken) as caught:
        TOKENS.verify_manage_link(aged_token(MANAGE_LINK, 1, 1, 1810))
    assert caught.value.reason == "expired"
    with pytest.raises(InvalidToken):  # from the future beyond the clock skew
        TOKENS.verify_manage_link(aged_token(MANAGE_LINK, 1, 1, -3600))


def test_address_confirmations_expire_after_confirm_max_age() -> None:
    assert TOKENS.verify_address_confirm(aged_token(ADDRESS_CONFIRM, 1, 1, 47 * 3600))
    with pytest.raises(InvalidToken):
        TOKENS.verify_address_confirm(aged_token(ADDRESS_CONFIRM, 1, 1, 49 * 3600))


@pytest.mark.parametrize(
    "token",
    [
        TOKENS.address_confirm(1, 1),
        TOKENS.manage(1),
        TOKENS.confirm(1),
        TOKENS.pixel(1, 1),
        "",
        "x" * 201,
        TOKENS.manage_link(1, 1)[:-1],
    ],
    # Named, not shown: the tokens differ on each run, and xdist's workers must collect
    # the same test ids.
    ids=["address-confirm", "manage", "confirm", "pixel", "empty", "too-long", "truncated"],
)
def test_nothing_else_is_a_fresh_link(token: str) -> None:
    with pytest.raises(InvalidToken):
        TOKENS.verify_manage_link(token)


def test_other_keys_cannot_make_a_fresh_link_and_old_keys_still_read_one() -> None:
    foreign = Tokens(("another-secret-key-0123456789-abcdefghij",), 3600).manage_link(1, 1)
    with pytest.raises(InvalidToken):
        TOKENS.verify_manage_link(foreign)
    rotated = Tokens(("a-brand-new-key-0123456789-abcdefghijklm", support.TEST_KEY), 3600)
    assert rotated.verify_manage_link(TOKENS.manage_link(5, 6)) == (5, 6)

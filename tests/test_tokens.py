import time

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from itsdangerous import Signer, TimestampSigner

from service import tokens as tokens_module
from service.tokens import InvalidToken, Tokens
from service.web import ratelimit
from tests import support

IDS = st.integers(min_value=1, max_value=2**63 - 1)
NEW = Tokens((support.TEST_KEY,), 3600)
ROTATED = Tokens((support.TEST_KEY, support.OLD_TEST_KEY), 3600)
OLD = Tokens((support.OLD_TEST_KEY,), 3600)
DAY_KEY = b"k" * 32


def legacy(key: str, salt: str, value: str, timed: bool = False) -> str:
    """A token as earlier releases signed it (itsdangerous over base-36 ids)."""
    signer = (TimestampSigner if timed else Signer)(key, salt=salt, sep=".")
    return signer.sign(value).decode()


@given(IDS)
def test_confirm_and_cancel_tokens_round_trip(subscriber_id: int) -> None:
    assert NEW.verify_confirm(NEW.confirm(subscriber_id)) == subscriber_id
    assert NEW.verify_cancel(NEW.cancel(subscriber_id)) == subscriber_id


@given(IDS, IDS)
def test_pixel_unsubscribe_and_tracking_tokens_round_trip(
    subscriber_id: int, campaign_id: int
) -> None:
    assert NEW.verify_unsubscribe(NEW.unsubscribe(subscriber_id)) == subscriber_id
    assert NEW.verify_tracking(NEW.tracking(subscriber_id)) == subscriber_id
    claim = NEW.verify_pixel(NEW.pixel(subscriber_id, campaign_id))
    assert (claim.subscriber_id, claim.campaign_id) == (subscriber_id, campaign_id)
    anonymous = NEW.verify_pixel(NEW.campaign_pixel(campaign_id))
    assert (anonymous.subscriber_id, anonymous.campaign_id) == (None, campaign_id)


@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=1, max_value=10**4))
def test_tokens_reveal_no_id_nor_the_order_of_sign_up(subscriber_id: int, campaign_id: int) -> None:
    """Earlier tokens began with the id in base 36 (`9ix-7.…` was subscriber 12345 of
    campaign 7): the list's size and sign-up order were readable from any link."""
    neighbours = [NEW.pixel(subscriber_id + d, campaign_id) for d in (0, 1)]
    for token in [*neighbours, NEW.unsubscribe(subscriber_id), NEW.tracking(subscriber_id)]:
        assert "." not in token
        id_first = support.b36(subscriber_id)
        assert not token.startswith((f"{id_first}-", f"{id_first}."))
    # Consecutive ids give unrelated tokens: no common prefix beyond chance (64^-7).
    common = next(i for i, (a, b) in enumerate(zip(*neighbours, strict=False)) if a != b)
    assert common <= 6


def test_the_campaign_only_pixel_is_one_token_for_every_recipient_and_names_nobody() -> None:
    token = NEW.campaign_pixel(7)
    assert token == NEW.campaign_pixel(7) != NEW.campaign_pixel(8)
    assert NEW.verify_pixel(token).subscriber_id is None
    assert token not in {NEW.pixel(s, 7) for s in range(1, 50)}


@given(IDS)
def test_tokens_made_with_the_old_key_verify_after_rotation_and_new_ones_use_the_new_key(
    subscriber_id: int,
) -> None:
    for make, verify in (("confirm", "verify_confirm"), ("unsubscribe", "verify_unsubscribe")):
        old = getattr(OLD, make)(subscriber_id)
        assert getattr(ROTATED, verify)(old) == subscriber_id
        with pytest.raises(InvalidToken):
            getattr(NEW, verify)(old)  # once the old key is removed
        fresh = getattr(ROTATED, make)(subscriber_id)
        assert getattr(NEW, verify)(fresh) == subscriber_id
        with pytest.raises(InvalidToken):
            getattr(OLD, verify)(fresh)


@given(IDS, IDS)
def test_links_mailed_by_earlier_releases_keep_working(
    subscriber_id: int, campaign_id: int
) -> None:
    """Unsubscribe links must work for as long as the emails carrying them exist."""
    tokens = Tokens(("k-new", "k-old"), 3600)
    sid = support.b36(subscriber_id)
    assert (
        tokens.verify_unsubscribe(legacy("k-old", tokens_module.UNSUBSCRIBE, sid)) == subscriber_id
    )
    assert tokens.verify_tracking(legacy("k-new", tokens_module.TRACKING, sid)) == subscriber_id
    claim = tokens.verify_pixel(
        legacy("k-new", tokens_module.PIXEL, f"{sid}-{support.b36(campaign_id)}")
    )
    assert (claim.subscriber_id, claim.campaign_id) == (subscriber_id, campaign_id)
    confirm = legacy("k-new", tokens_module.CONFIRM, sid, timed=True)
    assert tokens.verify_confirm(confirm) == subscriber_id
    with pytest.raises(InvalidToken):
        tokens.verify_cancel(confirm)


def test_a_legacy_token_altered_only_in_its_padding_bits_is_refused() -> None:
    """27 base64 characters carry 162 bits for a 160-bit MAC: the last character has
    spare bits that a lenient decoder ignores. Such a spelling is not the token."""
    token = legacy(support.TEST_KEY, tokens_module.UNSUBSCRIBE, support.b36(12345))
    assert NEW.verify_unsubscribe(token) == 12345
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twins = [token[:-1] + alphabet[(last & ~3) | spare] for spare in range(4)]
    altered = [t for t in twins if t != token]
    assert len(altered) == 3
    for twin in altered:
        with pytest.raises(InvalidToken):
            NEW.verify_unsubscribe(twin)


@given(IDS)
def test_a_token_of_one_purpose_is_refused_for_every_other(subscriber_id: int) -> None:
    made = {
        "confirm": NEW.confirm(subscriber_id),
        "cancel": NEW.cancel(subscriber_id),
        "unsubscribe": NEW.unsubscribe(subscriber_id),
        "tracking": NEW.tracking(subscriber_id),
        "pixel": NEW.campaign_pixel(subscriber_id),
    }
    for purpose, token in made.items():
        for other in made:
            if other == purpose:
                continue
            with pytest.raises(InvalidToken):
                getattr(NEW, f"verify_{other}")(token)


@given(
    IDS,
    st.integers(min_value=0),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_.=", min_size=1, max_size=3),
)
def test_any_change_to_a_token_is_refused(subscriber_id: int, position: int, junk: str) -> None:
    for token, verify in (
        (NEW.confirm(subscriber_id), NEW.verify_confirm),
        (NEW.unsubscribe(subscriber_id), NEW.verify_unsubscribe),
        (NEW.pixel(subscriber_id, 3), NEW.verify_pixel),
    ):
        index = position % len(token)
        tampered = token[:index] + junk + token[index + 1 :]
        assume(tampered != token)
        with pytest.raises(InvalidToken):
            verify(tampered)


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies_and_never_raises_anything_else(text: str) -> None:
    for verify in (
        NEW.verify_confirm,
        NEW.verify_cancel,
        NEW.verify_unsubscribe,
        NEW.verify_tracking,
        NEW.verify_pixel,
    ):
        with pytest.raises(InvalidToken):
            verify(text)


def test_expired_confirm_tokens_are_refused_as_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = time.time() - 3601
    monkeypatch.setattr(tokens_module.time, "time", lambda: issued)
    old = NEW.confirm(1)
    monkeypatch.undo()
    with pytest.raises(InvalidToken) as caught:
        NEW.verify_confirm(old)
    assert caught.value.reason == "expired"

    class OldSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - 3601)

    legacy_token = OldSigner(support.TEST_KEY, salt=tokens_module.CONFIRM, sep=".").sign("1")
    with pytest.raises(InvalidToken) as caught:
        NEW.verify_confirm(legacy_token.decode())
    assert caught.value.reason == "expired"


# -- address normalisation ---------------------------------------------------------
LOCAL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-",
    min_size=1,
    max_size=30,
)
LABEL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZüößéçñ0123456789",
    min_size=1,
    max_size=20,
)


@hsettings(max_examples=200)
@given(LOCAL, st.lists(LABEL, min_size=1, max_size=3))
def test_normalisation_is_idempotent_and_folds_the_domain_case(
    local: str, labels: list[str]
) -> None:
    address = f"{local}@{'.'.join(labels)}.example"
    try:
        normal = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return
    assert validate_email(normal, check_deliverability=False).normalized == normal
    domain = normal.rpartition("@")[2]
    assert domain == domain.lower()
    shouted = "".join(c.upper() if c.isascii() else c for c in ".".join(labels))
    upper = validate_email(f"{local}@{shouted}.EXAMPLE", check_deliverability=False)
    assert upper.normalized.rpartition("@")[2] == domain


@given(st.emails())
def test_rate_limit_key_ignores_case_and_differs_between_addresses_and_days(address: str) -> None:
    assert ratelimit.address_key(DAY_KEY, address) == ratelimit.address_key(
        DAY_KEY, address.upper()
    )
    assert ratelimit.address_key(DAY_KEY, address) != ratelimit.address_key(DAY_KEY, "x" + address)
    assert ratelimit.address_key(DAY_KEY, address) != ratelimit.address_key(b"j" * 32, address)
    assert address.encode() not in ratelimit.address_key(DAY_KEY, address)


@given(st.ip_addresses(v=6))
def test_ipv6_clients_share_a_key_per_64(address) -> None:
    import ipaddress

    neighbour = ipaddress.IPv6Address(int(address) ^ 1)
    assume(not address.ipv4_mapped)
    assert ratelimit.ip_key(DAY_KEY, str(address)) == ratelimit.ip_key(DAY_KEY, str(neighbour))

import time

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from itsdangerous import Signer, TimestampSigner

from service import ratelimit
from service import tokens as tokens_module
from service.settings import Settings
from service.tokens import InvalidToken, Tokens
from tests import support

IDS = st.integers(min_value=1, max_value=2**63 - 1)
NEW = Tokens((support.TEST_KEY,), 3600)
ROTATED = Tokens((support.TEST_KEY, support.OLD_TEST_KEY), 3600)
OLD = Tokens((support.OLD_TEST_KEY,), 3600)
SETTINGS = Settings(secret_keys=(support.TEST_KEY,))


@given(IDS)
def test_confirm_and_cancel_tokens_round_trip(subscriber_id: int) -> None:
    assert NEW.verify_confirm(NEW.confirm(subscriber_id)) == subscriber_id
    assert NEW.verify_cancel(NEW.cancel(subscriber_id)) == subscriber_id


@given(IDS, IDS)
def test_pixel_and_unsubscribe_tokens_round_trip(subscriber_id: int, campaign_id: int) -> None:
    assert NEW.verify_unsubscribe(NEW.unsubscribe(subscriber_id)) == subscriber_id
    claim = NEW.verify_pixel(NEW.pixel(subscriber_id, campaign_id))
    assert (claim.subscriber_id, claim.campaign_id) == (subscriber_id, campaign_id)


@given(IDS)
def test_tokens_signed_with_the_old_key_verify_after_rotation_and_new_ones_use_the_new_key(
    subscriber_id: int,
) -> None:
    old = OLD.confirm(subscriber_id)
    assert ROTATED.verify_confirm(old) == subscriber_id
    with pytest.raises(InvalidToken):
        NEW.verify_confirm(old)  # once the old key is removed
    fresh = ROTATED.confirm(subscriber_id)
    assert NEW.verify_confirm(fresh) == subscriber_id
    with pytest.raises(InvalidToken):
        OLD.verify_confirm(fresh)


@given(IDS, IDS)
def test_signatures_are_itsdangerous_defaults_so_links_already_mailed_keep_working(
    subscriber_id: int, campaign_id: int
) -> None:
    """The one-shot HMAC is an optimisation, not a new format: plain itsdangerous
    signers (as earlier releases used) and ours accept each other's tokens."""
    tokens = Tokens(("k-new", "k-old"), 3600)
    plain = Signer(["k-old", "k-new"], salt="newsletter.pixel", sep=".")
    value = f"{tokens_module._b36(subscriber_id)}-{tokens_module._b36(campaign_id)}"
    assert tokens.pixel(subscriber_id, campaign_id) == plain.sign(value).decode()
    assert tokens.verify_pixel(plain.sign(value).decode()).subscriber_id == subscriber_id
    old = Signer("k-old", salt="newsletter.unsubscribe", sep=".").sign(
        tokens_module._b36(subscriber_id)
    )
    assert tokens.verify_unsubscribe(old.decode()) == subscriber_id
    timed = TimestampSigner("k-new", salt="newsletter.confirm", sep=".")
    assert (
        tokens.verify_confirm(timed.sign(tokens_module._b36(subscriber_id)).decode())
        == subscriber_id
    )


@given(IDS)
def test_a_token_of_one_purpose_is_refused_for_every_other(subscriber_id: int) -> None:
    confirm = NEW.confirm(subscriber_id)
    with pytest.raises(InvalidToken):
        NEW.verify_cancel(confirm)
    with pytest.raises(InvalidToken):
        NEW.verify_unsubscribe(confirm)
    with pytest.raises(InvalidToken):
        NEW.verify_confirm(NEW.cancel(subscriber_id))


@given(
    IDS,
    st.integers(min_value=0),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=3),
)
def test_any_change_to_a_token_is_refused(subscriber_id: int, position: int, junk: str) -> None:
    token = NEW.confirm(subscriber_id)
    index = position % len(token)
    tampered = token[:index] + junk + token[index + 1 :]
    assume(tampered != token)
    try:
        assert NEW.verify_confirm(tampered) == subscriber_id  # only an equivalent encoding passes
    except InvalidToken:
        pass


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies_and_never_raises_anything_else(text: str) -> None:
    for verify in (NEW.verify_confirm, NEW.verify_cancel, NEW.verify_unsubscribe):
        with pytest.raises(InvalidToken):
            verify(text)


def test_expired_confirm_token_is_refused_as_expired() -> None:
    class OldSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - 3601)

    token = OldSigner(support.TEST_KEY, salt=tokens_module.CONFIRM, sep=".").sign("1").decode()
    with pytest.raises(InvalidToken) as caught:
        NEW.verify_confirm(token)
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


@hsettings(max_examples=200, deadline=None)
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
def test_rate_limit_key_ignores_case_and_differs_between_addresses(address: str) -> None:
    assert ratelimit.address_key(SETTINGS, address) == ratelimit.address_key(
        SETTINGS, address.upper()
    )
    assert ratelimit.address_key(SETTINGS, address) != ratelimit.address_key(
        SETTINGS, "x" + address
    )
    assert address.encode() not in ratelimit.address_key(SETTINGS, address)


@given(st.ip_addresses(v=6))
def test_ipv6_clients_share_a_key_per_64(address) -> None:
    import ipaddress

    neighbour = ipaddress.IPv6Address(int(address) ^ 1)
    assume(not address.ipv4_mapped)
    assert ratelimit.ip_key(SETTINGS, str(address)) == ratelimit.ip_key(SETTINGS, str(neighbour))

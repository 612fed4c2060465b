import asyncio
import re
import time

import pytest
from itsdangerous import TimestampSigner

from service import tokens as tokens_module
from service.tokens import Tokens
from tests import support
from tests.signup_helpers import links, subscribe, wait_until
from tests.support import cut_off, restore


async def _signed_up(client, db, smtp, email: str = "ada@example.com") -> dict[str, str]:
    """Signs up, waits for the email and returns its confirm and cancel paths."""
    await subscribe(client, email)
    messages = await wait_until(lambda: _to(smtp, email))
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    return links(messages[-1])


async def _to(smtp, email):
    return smtp.to(email)


async def _outside_scanner_window(db) -> None:
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 minute'")


async def test_whole_flow_signup_mail_get_changes_nothing_post_activates_evidence_stored(
    client, db, smtp
) -> None:
    paths = await _signed_up(client, db, smtp)
    [message] = smtp.messages
    assert message.message["Subject"] == "Please confirm your subscription"
    assert f"{support.PUBLIC_URL}{paths['confirm']}" in message.part("html")
    assert paths["cancel"] in message.part("html")

    page = await client.get(paths["confirm"])
    assert page.status_code == 200
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 1

    await _outside_scanner_window(db)
    done = await client.post(paths["confirm"], headers={"user-agent": "Person's Browser/1.0"})
    assert done.status_code == 200
    assert "Subscription confirmed" in done.text
    row = await db.fetchrow("SELECT status, confirmed_at FROM subscribers")
    assert row["status"] == "active" and row["confirmed_at"] is not None
    events = await db.fetch("SELECT * FROM consent_events ORDER BY id")
    assert [e["kind"] for e in events] == ["signup", "confirm"]
    confirm = events[1]
    assert confirm["method"] == "button"
    assert confirm["ip"] == "198.51.100.0"
    assert confirm["user_agent"] == "Person's Browser/1.0"
    assert confirm["consent_text_version"] == "v1"
    assert await db.fetchval("SELECT confirmations FROM list_daily") == 1


async def test_get_page_posts_itself_by_a_nonced_script_and_has_a_button(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    page = await client.get(paths["confirm"])
    csp = page.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
    assert f'<script nonce="{nonce}">' in page.text
    assert 'name="auto" value="1"' in page.text
    assert '<form method="post">' in page.text and "<button" in page.text
    assert page.headers["cache-control"] == "no-store"
    again = await client.get(paths["confirm"])
    assert re.search(r"nonce-([^']+)", again.headers["content-security-policy"]).group(1) != nonce


async def test_auto_post_inside_the_scanner_window_changes_nothing_and_shows_the_button(
    client, db, smtp
) -> None:
    paths = await _signed_up(client, db, smtp)
    refused = await client.post(paths["confirm"], data={"auto": "1"})
    assert refused.status_code == 200
    assert "<button" in refused.text
    assert "<script" not in refused.text
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 1

    button = await client.post(paths["confirm"])  # a person inside the window still counts
    assert "Subscription confirmed" in button.text
    assert await db.fetchval("SELECT method FROM consent_events WHERE kind = 'confirm'") == (
        "button"
    )


async def test_auto_post_after_the_scanner_window_activates_and_records_auto(
    client, db, smtp
) -> None:
    paths = await _signed_up(client, db, smtp)
    await _outside_scanner_window(db)
    response = await client.post(paths["confirm"], data={"auto": "1"})
    assert "Subscription confirmed" in response.text
    assert await db.fetchval("SELECT method FROM consent_events WHERE kind = 'confirm'") == "auto"


async def test_auto_post_before_the_email_was_handed_over_is_refused(client, db) -> None:
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('x@example.com') RETURNING id"
    )
    token = Tokens((support.TEST_KEY,), 3600).confirm(subscriber_id)
    response = await client.post(f"/confirm/{token}", data={"auto": "1"})
    assert response.status_code == 200
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_scanner_window_is_a_setting(app_factory, db, smtp) -> None:
    async with app_factory(scanner_window=0) as (_app, client):
        paths = await _signed_up(client, db, smtp)
        await client.post(paths["confirm"], data={"auto": "1"})
    assert await db.fetchval("SELECT status FROM subscribers") == "active"


async def test_confirming_twice_is_idempotent(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    first = await client.post(paths["confirm"])
    second = await client.post(paths["confirm"])
    assert first.status_code == second.status_code == 200
    # The confirming answer offers the choices; a repeat (maybe a forwarded email's)
    # only says it is confirmed.
    assert "Subscription confirmed" in first.text and "Subscription confirmed" in second.text
    assert await db.fetchval("SELECT count(*) FROM consent_events WHERE kind = 'confirm'") == 1
    assert await db.fetchval("SELECT confirmations FROM list_daily") == 1
    page = await client.get(paths["confirm"])
    assert page.status_code == 200 and "<script" not in page.text


async def test_concurrent_confirmations_activate_once(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    answers = await asyncio.gather(*(client.post(paths["confirm"]) for _ in range(20)))
    assert {a.status_code for a in answers} == {200}
    assert await db.fetchval("SELECT count(*) FROM consent_events WHERE kind = 'confirm'") == 1
    assert await db.fetchval("SELECT confirmations FROM list_daily") == 1


async def test_confirmed_url_gets_a_303_after_post_and_is_allowed_as_form_action(
    app_factory, db, smtp
) -> None:
    async with app_factory(confirmed_url="https://www.example.com/welcome") as (_app, client):
        paths = await _signed_up(client, db, smtp)
        page = await client.get(paths["confirm"])
        response = await client.post(paths["confirm"])
    assert "form-action 'self' https://www.example.com" in page.headers["content-security-policy"]
    assert response.status_code == 303
    assert response.headers["location"] == "https://www.example.com/welcome"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "1.AAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBB",
        "x" * 201,
        "a..b",
        "%00",
        "1.",
    ],
)
async def test_forged_or_malformed_tokens_get_a_400_page_and_change_nothing(
    client, db, token
) -> None:
    await db.execute("INSERT INTO subscribers (email) VALUES ('x@example.com')")
    for response in (
        await client.get(f"/confirm/{token}"),
        await client.post(f"/confirm/{token}"),
        await client.post(f"/confirm/{token}", data={"auto": "1"}),
        await client.get(f"/cancel/{token}"),
        await client.post(f"/cancel/{token}"),
    ):
        assert response.status_code == 400
        assert "sign up again" in response.text
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_tampered_token_for_another_subscriber_is_refused(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    token = paths["confirm"].rsplit("/", 1)[1]
    other = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('o@example.com') RETURNING id"
    )
    # A token names nobody readably; neither a changed character nor an id spliced
    # into the format of earlier releases, with this token's bytes as its "signature",
    # passes.
    middle = len(token) // 2
    changed = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    spliced = f"{support.b36(other)}.{token[:6]}.{token[-27:]}"
    for forged in (changed, spliced):
        assert (await client.post(f"/confirm/{forged}")).status_code == 400
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE status = 'active'") == 0


async def test_cancel_token_does_not_confirm_and_confirm_token_does_not_cancel(
    client, db, smtp
) -> None:
    paths = await _signed_up(client, db, smtp)
    cancel_token = paths["cancel"].rsplit("/", 1)[1]
    confirm_token = paths["confirm"].rsplit("/", 1)[1]
    assert (await client.post(f"/confirm/{cancel_token}")).status_code == 400
    assert (await client.post(f"/cancel/{confirm_token}")).status_code == 400
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_expired_token_gets_400_and_activates_nothing(client, db) -> None:
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email, confirm_sent_at) VALUES ('x@example.com', now()"
        " - interval '1 hour') RETURNING id"
    )
    token = Tokens((support.TEST_KEY,), 48 * 3600)
    expired = _expired_b36_token(tokens_module.CONFIRM, subscriber_id, 49 * 3600)
    assert (await client.get(f"/confirm/{expired}")).status_code == 400
    assert (await client.post(f"/confirm/{expired}")).status_code == 400
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"
    fresh = token.confirm(subscriber_id)
    assert (await client.post(f"/confirm/{fresh}")).status_code == 200


def _expired_b36_token(salt: str, subscriber_id: int, age: float) -> str:
    class OldSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    return OldSigner(support.TEST_KEY, salt=salt, sep=".").sign(support.b36(subscriber_id)).decode()


async def test_expired_pending_signup_is_never_activated_by_a_late_click(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    await db.execute("UPDATE subscribers SET signup_at = now() - interval '49 hours'")
    assert (await client.get(paths["confirm"])).status_code == 400
    response = await client.post(paths["confirm"])
    assert response.status_code == 400
    assert "sign up again" in response.text
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_token_signed_with_an_old_key_verifies_after_rotation(app_factory, db) -> None:
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email, confirm_sent_at) VALUES ('r@example.com',"
        " now() - interval '1 hour') RETURNING id"
    )
    old_token = Tokens((support.OLD_TEST_KEY,), 3600).confirm(subscriber_id)
    async with app_factory(secret_keys=(support.TEST_KEY,)) as (_app, client):
        assert (await client.post(f"/confirm/{old_token}")).status_code == 400
    async with app_factory(secret_keys=(support.TEST_KEY, support.OLD_TEST_KEY)) as (
        _app,
        client,
    ):
        assert (await client.post(f"/confirm/{old_token}")).status_code == 200
    assert await db.fetchval("SELECT status FROM subscribers") == "active"


async def test_erased_subscriber_token_gets_400(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    await db.execute("DELETE FROM subscribers")
    assert (await client.get(paths["confirm"])).status_code == 400
    assert (await client.post(paths["confirm"])).status_code == 400
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_oversized_confirm_post_is_413(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    response = await client.post(paths["confirm"], data={"auto": "1", "pad": "x" * 5000})
    assert response.status_code == 413
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_cancel_get_shows_a_button_and_changes_nothing(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    page = await client.get(paths["cancel"])
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_cancel_post_deletes_the_pending_signup_and_everything_with_it(
    client, db, smtp
) -> None:
    paths = await _signed_up(client, db, smtp)
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id) SELECT 'confirm', id FROM subscribers"
    )
    response = await client.post(paths["cancel"])
    assert response.status_code == 200
    assert "Sign-up removed" in response.text
    for table in ("subscribers", "consent_events", "outbox"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0  # noqa: S608
    again = await client.post(paths["cancel"])
    assert again.status_code == 200
    assert (await client.post(paths["confirm"])).status_code == 400


async def test_cancel_does_not_delete_an_active_subscriber(client, db, smtp) -> None:
    paths = await _signed_up(client, db, smtp)
    await client.post(paths["confirm"])
    page = await client.get(paths["cancel"])
    assert "This address is subscribed" in page.text
    response = await client.post(paths["cancel"])
    assert response.status_code == 200
    assert "This address is subscribed" in response.text
    assert await db.fetchval("SELECT status FROM subscribers") == "active"


async def test_confirm_answers_503_while_the_database_is_unreachable(
    app_factory, db, smtp, database_url
) -> None:
    async with app_factory() as (_app, client):
        paths = await _signed_up(client, db, smtp)
        admin = await cut_off(database_url, db.get_server_pid())
        try:
            get = await client.get(paths["confirm"])
            post = await client.post(paths["confirm"])
            cancel = await client.post(paths["cancel"])
        finally:
            await restore(admin, database_url)
    for response in (get, post, cancel):
        assert response.status_code == 503
        assert response.headers["retry-after"]
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_this_wasnt_me_after_confirming_offers_to_unsubscribe_with_one_post(
    client, db, smtp
) -> None:
    """The cancel link proves the email reached this inbox: once the sign-up is
    confirmed, it may end the subscription (no need to wait for a newsletter)."""
    paths = await _signed_up(client, db, smtp)
    await client.post(paths["confirm"])
    page = await client.get(paths["cancel"])
    assert 'name="action" value="unsubscribe"' in page.text
    assert "Unsubscribe and delete my data" in page.text
    assert await db.fetchval("SELECT status FROM subscribers") == "active"  # GET changes nothing
    response = await client.post(paths["cancel"], data={"action": "unsubscribe"})
    assert response.status_code == 200
    for table in ("subscribers", "consent_events"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0  # noqa: S608

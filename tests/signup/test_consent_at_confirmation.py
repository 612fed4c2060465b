"""Consent the person gave, not the form's submitter: a sign-up proposes a name and a
tracking wish; only the confirming request of the person grants consent to tracking,
with its evidence row, and the page lets them change both first."""

import re

from tests.signup_helpers import links, subscribe, wait_until

BROWSER = {"user-agent": "Person's Browser/2.0"}


async def _confirmation(client, db, smtp, email: str, **fields: str):
    await subscribe(client, email, **fields)
    messages = await wait_until(lambda: _to(smtp, email))
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    return messages[-1], links(messages[-1])


async def _to(smtp, email):
    return smtp.to(email)


async def _outside_scanner_window(db) -> None:
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 minute'")


async def _state(db, email: str):
    return await db.fetchrow(
        "SELECT status, name, tracking_requested, tracking_consent FROM subscribers"
        " WHERE email = $1",
        email,
    )


async def _kinds(db, email: str) -> list[str]:
    return await db.fetchval(
        "SELECT coalesce(array_agg(kind ORDER BY e.id), '{}') FROM consent_events e"
        " JOIN subscribers s ON s.id = e.subscriber_id WHERE s.email = $1",
        email,
    )


def _checkbox(html: str) -> str:
    match = re.search(r'<input type="checkbox" name="tracking"[^>]*>', html)
    assert match, "the page has no tracking checkbox"
    return match.group(0)


async def test_a_repeated_sign_up_cannot_switch_on_tracking_for_someone_else(
    client, db, smtp
) -> None:
    """Today's attack: sign up a victim's pending address again with the box ticked."""
    await subscribe(client, "victim@example.com", name="Victim")
    await subscribe(client, "victim@example.com", name="Mallory's choice", tracking="1")
    row = await _state(db, "victim@example.com")
    assert row["tracking_consent"] is False
    assert await _kinds(db, "victim@example.com") == ["signup", "signup"]
    # An active subscriber is left alone altogether.
    await db.execute("UPDATE subscribers SET status = 'active', confirmed_at = now()")
    await subscribe(client, "victim@example.com", name="Again", tracking="1")
    row = await _state(db, "victim@example.com")
    assert (row["name"], row["tracking_consent"]) == ("Mallory's choice", False)


async def test_the_email_and_the_page_show_the_choices_and_the_button_grants_them(
    client, db, smtp
) -> None:
    message, paths = await _confirmation(
        client, db, smtp, "ada@example.com", name="Ada", tracking="1"
    )
    assert "measure when you open" in message.part("plain")
    assert "only if you" in message.part("plain")

    page = await client.get(paths["confirm"])
    assert page.status_code == 200
    assert 'name="name"' in page.text and 'value="Ada"' in page.text
    assert "checked" in _checkbox(page.text)
    assert "starts only when you confirm it here" in page.text
    assert (await _state(db, "ada@example.com"))["status"] == "pending"

    await _outside_scanner_window(db)
    done = await client.post(
        paths["confirm"],
        data={"choices": "1", "name": "Ada Lovelace", "tracking": "1"},
        headers=BROWSER,
    )
    assert done.status_code == 200 and "Subscription confirmed" in done.text
    row = await _state(db, "ada@example.com")
    assert (row["status"], row["name"], row["tracking_consent"]) == (
        "active",
        "Ada Lovelace",
        True,
    )
    granted = await db.fetchrow("SELECT * FROM consent_events WHERE kind = 'tracking_granted'")
    assert granted["method"] == "button"
    assert granted["ip"] == "198.51.100.0"  # IP_MODE=truncated
    assert granted["user_agent"] == BROWSER["user-agent"]
    assert granted["consent_text_version"] == "v1"
    assert granted["source"] == "confirmation"
    assert await _kinds(db, "ada@example.com") == ["signup", "confirm", "tracking_granted"]


async def test_unticking_the_box_before_confirming_grants_nothing(client, db, smtp) -> None:
    _message, paths = await _confirmation(client, db, smtp, "bo@example.com", tracking="1")
    await _outside_scanner_window(db)
    await client.post(paths["confirm"], data={"choices": "1", "name": ""})
    row = await _state(db, "bo@example.com")
    assert (row["status"], row["tracking_consent"], row["tracking_requested"]) == (
        "active",
        False,
        False,
    )
    assert await _kinds(db, "bo@example.com") == ["signup", "confirm"]


async def test_the_automatic_post_confirms_but_grants_nothing_and_offers_the_choice(
    client, db, smtp
) -> None:
    _message, paths = await _confirmation(
        client, db, smtp, "cy@example.com", name="Cy", tracking="1"
    )
    await _outside_scanner_window(db)
    # What the page's script sends: the hidden form with auto=1 only.
    done = await client.post(paths["confirm"], data={"auto": "1"})
    assert done.status_code == 200
    row = await _state(db, "cy@example.com")
    assert (row["status"], row["tracking_consent"]) == ("active", False)
    assert "checked" in _checkbox(done.text)
    assert "starts only when you confirm it here" in done.text

    # The answer's form (with its secret): now the person's click grants it ...
    session = _session(done.text)
    saved = await client.post(
        paths["confirm"],
        data={"choices": "1", "name": "Cy", "tracking": "1", "session": session},
        headers=BROWSER,
    )
    assert "Your choices are saved" in saved.text
    assert (await _state(db, "cy@example.com"))["tracking_consent"] is True
    # ... and unticking it withdraws it, with evidence, deleting the opens recorded.
    sid = await db.fetchval("SELECT id FROM subscribers WHERE email = 'cy@example.com'")
    campaign = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ('c','s','h','t') RETURNING id"
    )
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES ($1, $2, now())", sid, campaign
    )
    await client.post(paths["confirm"], data={"choices": "1", "name": "Cy", "session": session})
    assert (await _state(db, "cy@example.com"))["tracking_consent"] is False
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await _kinds(db, "cy@example.com") == [
        "signup",
        "confirm",
        "tracking_granted",
        "tracking_withdrawn",
    ]


async def test_a_name_with_control_characters_is_refused_and_nothing_changes(
    client, db, smtp
) -> None:
    _message, paths = await _confirmation(client, db, smtp, "dee@example.com", name="Dee")
    await _outside_scanner_window(db)
    refused = await client.post(
        paths["confirm"], data={"choices": "1", "name": "Dee\r\nBcc: x@example.com"}
    )
    assert refused.status_code == 400
    assert "line breaks" in refused.text
    row = await _state(db, "dee@example.com")
    assert (row["status"], row["name"]) == ("pending", "Dee")


async def test_the_confirmed_url_redirect_waits_while_a_tracking_wish_is_unanswered(
    app_factory, db, smtp
) -> None:
    async with app_factory(confirmed_url="https://www.example.com/thanks") as (_app, client):
        _m, wished = await _confirmation(client, db, smtp, "w@example.com", tracking="1")
        _m, plain = await _confirmation(client, db, smtp, "p@example.com")
        await _outside_scanner_window(db)
        stays = await client.post(wished["confirm"], data={"auto": "1"})
        goes = await client.post(plain["confirm"], data={"auto": "1"})
    assert stays.status_code == 200 and "checkbox" in stays.text
    assert goes.status_code == 303
    assert goes.headers["location"] == "https://www.example.com/thanks"


async def test_in_notice_mode_the_page_and_email_explain_the_pixel_and_have_no_checkbox(
    app_factory, db, smtp
) -> None:
    async with app_factory(tracking_mode="notice") as (_app, client):
        message, paths = await _confirmation(client, db, smtp, "n@example.com", tracking="1")
        page = await client.get(paths["confirm"])
    assert "link to object" in message.part("plain")
    assert 'name="tracking"' not in page.text
    assert "link to object" in page.text
    assert (await _state(db, "n@example.com"))["tracking_requested"] is False


def _session(html: str) -> str:
    match = re.search(r'name="session" value="([^"]+)"', html)
    assert match, "the page has no choices form secret"
    return match.group(1)


async def test_a_forwarded_link_of_an_active_subscriber_shows_no_name_and_takes_no_choices(
    client, db, smtp
) -> None:
    """Confirmation emails get forwarded: once the subscription is active, its link says
    "confirmed" and points to the subscriber's page; the name is not shown and the
    choices form (name, tracking consent) is refused without the secret that only the
    confirming answer held."""
    _message, paths = await _confirmation(client, db, smtp, "e@example.com", name="Eve Secret")
    await _outside_scanner_window(db)
    confirmed = await client.post(paths["confirm"])
    assert "Eve Secret" in confirmed.text  # the person who confirmed sees their choices

    again = await client.get(paths["confirm"])
    assert again.status_code == 200
    assert "Subscription confirmed" in again.text and 'id="manage-link"' in again.text
    assert "Eve Secret" not in again.text
    assert 'name="name"' not in again.text and 'name="session"' not in again.text
    for session in ("", "forged", _session(confirmed.text)[:-2] + "AA"):
        posted = await client.post(
            paths["confirm"],
            data={"choices": "1", "name": "Mallory", "tracking": "1", "session": session},
            headers=BROWSER,
        )
        assert posted.status_code == 200
        assert "Subscription confirmed" in posted.text and 'id="manage-link"' in posted.text
        assert "Eve Secret" not in posted.text and "Mallory" not in posted.text
        assert "Your choices are saved" not in posted.text
    bad_name = await client.post(
        paths["confirm"], data={"choices": "1", "name": "Eve\r\nBcc: x@example.com"}
    )
    assert bad_name.status_code == 200 and "Eve Secret" not in bad_name.text
    row = await _state(db, "e@example.com")
    assert (row["status"], row["name"], row["tracking_consent"]) == ("active", "Eve Secret", False)
    assert await _kinds(db, "e@example.com") == ["signup", "confirm"]


async def test_the_confirming_answers_secret_works_until_manage_link_max_age(
    client, db, smtp
) -> None:
    _message, paths = await _confirmation(client, db, smtp, "f@example.com", name="Fay")
    await _outside_scanner_window(db)
    confirmed = await client.post(paths["confirm"], data={"auto": "1"})
    session = _session(confirmed.text)
    saved = await client.post(
        paths["confirm"], data={"choices": "1", "name": "Fay B", "session": session}
    )
    assert "Your choices are saved" in saved.text and _session(saved.text) == session
    assert (await _state(db, "f@example.com"))["name"] == "Fay B"
    await db.execute("UPDATE subscribers SET confirmed_at = confirmed_at - interval '31 minutes'")
    late = await client.post(
        paths["confirm"], data={"choices": "1", "name": "Fay C", "session": session}
    )
    assert "Your choices are saved" not in late.text and "Fay" not in late.text
    assert (await _state(db, "f@example.com"))["name"] == "Fay B"

"""No personal pixel where there is no personal tracking: what each email carries per
TRACKING_MODE, and what an open of a campaign-only pixel records."""

from __future__ import annotations

import re

from tests import people, support
from tests.campaigns.test_campaign_send import _PIXEL, _TRACKING, TOKENS, send, settled
from tests.pixel_support import CHROME, wait_for_count


def pixels_by_recipient(messages: list[support.Received]) -> dict[str, str]:
    found = {}
    for message in messages:
        tokens = _PIXEL.findall(message.part("html"))
        found[message.to] = tokens[0] if tokens else ""
    return found


async def test_consent_mode_gives_a_personal_pixel_only_to_those_who_consented(
    client, db, smtp, admin_headers
) -> None:
    yes = await people.add_subscriber(db, "yes@example.org", tracking_consent=True)
    await people.add_subscriber(db, "no1@example.org")
    await people.add_subscriber(db, "no2@example.org")
    campaign_id, _ = await send(client, admin_headers)
    messages = await smtp.wait_for(3)
    pixels = pixels_by_recipient(messages)
    personal = TOKENS.verify_pixel(pixels["yes@example.org"])
    assert (personal.subscriber_id, personal.campaign_id) == (yes, campaign_id)
    # One campaign-only token for everyone else: it names nobody, so no log in front of
    # the service can tie an open to a person.
    assert pixels["no1@example.org"] == pixels["no2@example.org"]
    anonymous = TOKENS.verify_pixel(pixels["no1@example.org"])
    assert (anonymous.subscriber_id, anonymous.campaign_id) == (None, campaign_id)
    by_recipient = {m.to: m for m in messages}
    assert _TRACKING.findall(by_recipient["yes@example.org"].part("html"))
    assert not _TRACKING.findall(by_recipient["no1@example.org"].part("html"))


async def test_off_mode_emails_carry_no_pixel_at_all(app_factory, db, smtp, admin_headers) -> None:
    await people.add_subscriber(db, "a@example.org", tracking_consent=True)
    async with app_factory(tracking_mode="off") as (_app, client):
        campaign_id, _ = await send(client, admin_headers)
        [message] = await smtp.wait_for(1)
        export = await client.get(
            f"/admin/api/campaigns/{campaign_id}/recipients", headers=admin_headers
        )
    assert "/o/" not in message.part("html")
    assert "<img" not in message.part("html")
    assert '"pixel_url": null' in export.text


async def test_notice_mode_emails_carry_the_objection_link_and_objectors_no_personal_pixel(
    app_factory, db, smtp, admin_headers
) -> None:
    reader = await people.add_subscriber(db, "r@example.org")
    objector = await people.add_subscriber(db, "o@example.org")
    await db.execute("UPDATE subscribers SET tracking_withdrawn_at = now() WHERE id = $1", objector)
    async with app_factory(tracking_mode="notice") as (_app, client):
        await send(client, admin_headers)
        messages = {m.to: m for m in await smtp.wait_for(2)}
    html, text = messages["r@example.org"].part("html"), messages["r@example.org"].part("plain")
    assert {TOKENS.verify_tracking(t) for t in _TRACKING.findall(html)} == {reader}
    assert {TOKENS.verify_tracking(t) for t in _TRACKING.findall(text)} == {reader}
    assert "Object" in html and "Object" in text
    assert TOKENS.verify_pixel(_PIXEL.findall(html)[0]).subscriber_id == reader
    objector_pixel = _PIXEL.findall(messages["o@example.org"].part("html"))[0]
    assert TOKENS.verify_pixel(objector_pixel).subscriber_id is None


async def test_an_open_of_a_campaign_only_pixel_is_counted_but_names_nobody(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "no@example.org")
    campaign_id, _ = await send(client, admin_headers)
    [message] = await smtp.wait_for(1)
    await settled(db)
    [token] = _PIXEL.findall(message.part("html"))
    for _ in range(2):
        response = await client.get(f"/o/{token}.gif", headers={"user-agent": CHROME})
        assert response.status_code == 200
    await wait_for_count(
        db,
        "SELECT coalesce(sum(opens), 0) FROM campaign_counts"
        " WHERE campaign_id = $1 AND dimension = 'total'",
        2,
        campaign_id,
    )
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    stats = (
        await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
    ).json()
    assert (stats["opens"], stats["anonymous_opens"], stats["unique_opens"]) == (2, 2, 0)
    assert await db.fetchval("SELECT first_open_at FROM deliveries") is None


async def test_granting_consent_takes_effect_from_the_next_email(
    client, db, smtp, admin_headers
) -> None:
    sid = await people.add_subscriber(db, "later@example.org")
    await send(client, admin_headers)
    [first] = await smtp.wait_for(1)
    await db.execute("UPDATE subscribers SET tracking_consent = true WHERE id = $1", sid)
    await send(client, admin_headers, name="May issue")
    messages = await smtp.wait_for(2)
    second = next(m for m in messages if m is not first)
    assert TOKENS.verify_pixel(_PIXEL.findall(first.part("html"))[0]).subscriber_id is None
    assert TOKENS.verify_pixel(_PIXEL.findall(second.part("html"))[0]).subscriber_id == sid


async def test_no_link_in_an_email_reveals_a_sequential_id(client, db, smtp, admin_headers) -> None:
    """Earlier links began with the subscriber id in base 36 and the campaign id."""
    ids = [
        await people.add_subscriber(db, f"s{n}@example.org", tracking_consent=True)
        for n in range(3)
    ]
    campaign_id, _ = await send(client, admin_headers)
    messages = await smtp.wait_for(3)
    for message in messages:
        body = message.part("html") + message.part("plain") + message.message["List-Unsubscribe"]
        for token in re.findall(r"/(?:o|unsubscribe|tracking)/([A-Za-z0-9._-]+)", body):
            token = token.removesuffix(".gif")
            assert "." not in token, token
            for sid in ids:
                assert not token.startswith(f"{support.b36(sid)}-"), token
                assert not token.startswith(f"{support.b36(sid)}."), token
            assert f"-{support.b36(campaign_id)}." not in token

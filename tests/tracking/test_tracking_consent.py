import asyncio

import pytest

from tests.pixel_support import CHROME, TOKENS, pixel_path, seed


async def test_get_shows_a_button_and_changes_nothing(client, db) -> None:
    _, (subscriber_id,) = await seed(db, 1)
    response = await client.get(f"/tracking/{TOKENS.tracking(subscriber_id)}")
    assert response.status_code == 200
    assert '<form method="post">' in response.text and "<button" in response.text
    assert await db.fetchval("SELECT tracking_consent FROM subscribers") is True
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 0


async def test_post_withdraws_records_evidence_and_deletes_opens_also_for_sent_mail(
    app_factory, db
) -> None:
    campaign_id, (subscriber_id, other) = await seed(db, 2)
    async with app_factory() as (_app, client):
        for sid in (subscriber_id, other):
            await client.get(pixel_path(sid, campaign_id), headers={"User-Agent": CHROME})
        response = await client.post(f"/tracking/{TOKENS.tracking(subscriber_id)}")
        assert response.status_code == 200 and "off" in response.text
        # an old email opened again: only the anonymous counters move
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
    row = await db.fetchrow(
        "SELECT tracking_consent, tracking_withdrawn_at FROM subscribers WHERE id = $1",
        subscriber_id,
    )
    assert row["tracking_consent"] is False and row["tracking_withdrawn_at"] is not None
    event = await db.fetchrow(
        "SELECT * FROM consent_events WHERE subscriber_id = $1", subscriber_id
    )
    assert event["kind"] == "tracking_withdrawn" and event["ip"] == "198.51.100.0"
    assert (
        await db.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", subscriber_id) == 0
    )
    assert await db.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", other) == 1
    assert (
        await db.fetchval(
            "SELECT first_open_at FROM deliveries WHERE subscriber_id = $1", subscriber_id
        )
        is None
    )
    total = await db.fetchval("SELECT opens FROM campaign_counts WHERE dimension = 'total'")
    assert total == 3  # counts survive; the re-open after withdrawal is counted anonymously


async def test_repeated_and_concurrent_posts_record_one_event(client, db) -> None:
    _, (subscriber_id,) = await seed(db, 1)
    path = f"/tracking/{TOKENS.tracking(subscriber_id)}"
    responses = await asyncio.gather(*(client.post(path) for _ in range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert (await client.post(path)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 1


async def test_withdrawal_in_notice_mode_stops_personal_opens(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1, consent=False)
    async with app_factory(tracking_mode="notice") as (_app, client):
        await client.get(pixel_path(subscriber_id, campaign_id))
        assert await db.fetchval("SELECT count(*) FROM opens") == 1
        await client.post(f"/tracking/{TOKENS.tracking(subscriber_id)}")
        await client.get(pixel_path(subscriber_id, campaign_id))
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 1


async def test_erased_subscriber_gets_a_page_saying_nothing_is_held(client, db) -> None:
    _, (subscriber_id,) = await seed(db, 1)
    await db.execute("DELETE FROM subscribers")
    response = await client.post(f"/tracking/{TOKENS.tracking(subscriber_id)}")
    assert response.status_code == 200 and "nothing" in response.text


@pytest.mark.parametrize(
    "token", ["forged", "x" * 3000, TOKENS.unsubscribe(1), TOKENS.pixel(1, 1), "%00"]
)
async def test_forged_and_wrong_purpose_tokens_are_400_for_get_and_post(client, db, token) -> None:
    await seed(db, 1)
    assert (await client.get(f"/tracking/{token}")).status_code == 400
    assert (await client.post(f"/tracking/{token}")).status_code == 400
    assert await db.fetchval("SELECT tracking_consent FROM subscribers") is True

"""`GET`/`POST /unsubscribe/{token}`: a page on GET, erasure on POST (RFC 8058 one-click)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from itsdangerous import Signer

from service.tokens import Tokens
from tests import people, support

ONE_CLICK = "List-Unsubscribe=One-Click"


def unsubscribe_path(subscriber_id: int, key: str = support.TEST_KEY) -> str:
    return f"/unsubscribe/{Tokens((key,), 3600).unsubscribe(subscriber_id)}"


async def exists(db, subscriber_id: int) -> bool:
    return await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM subscribers WHERE id = $1)", subscriber_id
    )


async def row_counts(db) -> dict[str, int]:
    return {
        table: await db.fetchval(f'SELECT count(*) FROM "{table}"')  # noqa: S608
        for table in await people.base_tables(db)
    }


@pytest.fixture
async def person(db, settings) -> people.Person:
    campaign = await people.add_campaign(db)
    return await people.add_person(db, settings, "leaving@example.org", "leaving", campaign)


async def test_get_shows_a_page_whose_button_posts_and_changes_nothing(client, db, person) -> None:
    before = await row_counts(db)
    response = await client.get(unsubscribe_path(person.id))
    assert response.status_code == 200
    assert '<form method="post">' in response.text
    assert "<button" in response.text
    assert response.headers["cache-control"] == "no-store"
    assert await row_counts(db) == before
    head = await client.head(unsubscribe_path(person.id))
    assert head.status_code == 200
    assert await row_counts(db) == before


async def test_get_for_someone_already_gone_says_they_are_unsubscribed(client) -> None:
    response = await client.get(unsubscribe_path(987654))
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (ONE_CLICK, "application/x-www-form-urlencoded"),
        (ONE_CLICK.encode(), None),
        ("", None),
        (b"", "application/x-www-form-urlencoded"),
        ("anything else=1", "text/plain"),
    ],
    ids=["rfc8058-form", "rfc8058-no-type", "empty", "empty-form", "other-body"],
)
async def test_post_erases_the_subscriber_and_answers_200_without_redirect(
    client, db, person, content, content_type
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(unsubscribe_path(person.id), content=content, headers=headers)
    assert response.status_code == 200
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers
    assert "You are unsubscribed" in response.text
    assert not await exists(db, person.id)


async def test_one_click_as_multipart_form_data_erases(client, db, person) -> None:
    response = await client.post(
        unsubscribe_path(person.id), files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert response.status_code == 200
    assert not await exists(db, person.id)


async def test_post_deletes_every_row_about_the_person_and_keeps_the_aggregates(
    client, db, settings, person
) -> None:
    campaign = await people.add_campaign(db, "Counted")
    await db.execute("UPDATE campaigns SET sent = 5, recipients = 5 WHERE id = $1", campaign)
    await db.execute(
        "INSERT INTO campaign_counts (campaign_id, dimension, key, opens, unique_opens)"
        " VALUES ($1, 'total', '', 3, 2)",
        campaign,
    )
    other = await people.add_person(db, settings, "staying@example.org", "staying-x", campaign)

    response = await client.post(unsubscribe_path(person.id), content=ONE_CLICK)
    assert response.status_code == 200

    for table in ("consent_events", "deliveries", "outbox", "opens"):
        count = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE subscriber_id = $1",  # noqa: S608
            person.id,
        )
        assert count == 0, table
    assert await people.address_rate_limit_rows(db, settings, person.email) == 0
    # Someone else's rows are untouched.
    assert await exists(db, other.id)
    assert await people.address_rate_limit_rows(db, settings, other.email) == 1
    assert await db.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", other.id) == 2
    # The anonymous aggregates survive.
    assert await db.fetchval("SELECT sent FROM campaigns WHERE id = $1", campaign) == 5
    assert (
        await db.fetchval("SELECT opens FROM campaign_counts WHERE campaign_id = $1", campaign) == 3
    )
    assert await db.fetchval("SELECT sum(unsubscribes) FROM list_daily") == 1


async def test_a_replayed_post_answers_200_again_and_counts_once(client, db, person, app) -> None:
    path = unsubscribe_path(person.id)
    first = await client.post(path, content=ONE_CLICK)
    second = await client.post(path, content=ONE_CLICK)
    third = await client.post(path)
    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert await db.fetchval("SELECT sum(unsubscribes) FROM list_daily") == 1
    counted = app.state.metrics.unsubscribes.labels("one_click")._value.get()
    assert counted == 1


async def test_concurrent_posts_all_answer_200_and_erase_once(client, db, person) -> None:
    path = unsubscribe_path(person.id)
    responses = await asyncio.gather(*(client.post(path, content=ONE_CLICK) for _ in range(12)))
    assert {r.status_code for r in responses} == {200}
    assert not await exists(db, person.id)
    assert await db.fetchval("SELECT sum(unsubscribes) FROM list_daily") == 1


async def test_a_pending_subscriber_is_erased_without_counting_an_unsubscribe(client, db) -> None:
    sid = await people.add_subscriber(db, "pending@example.org", status="pending")
    assert (await client.post(unsubscribe_path(sid))).status_code == 200
    assert not await exists(db, sid)
    assert await db.fetchval("SELECT count(*) FROM list_daily") == 0


def forged_tokens(subscriber_id: int) -> list[str]:
    good = Tokens((support.TEST_KEY,), 3600)
    other_key = Tokens(("another-secret-key-that-is-long-enough-000",), 3600)
    genuine = good.unsubscribe(subscriber_id)
    legacy = Signer(support.TEST_KEY, salt="newsletter.unsubscribe", sep=".")
    value, _, signature = legacy.sign(support.b36(subscriber_id)).decode().partition(".")
    flipped = genuine[:5] + ("A" if genuine[5] != "A" else "B") + genuine[6:]
    return [
        other_key.unsubscribe(subscriber_id),  # encrypted with a key we do not hold
        good.tracking(subscriber_id),  # a genuine token of another purpose
        good.pixel(subscriber_id, 1),
        good.confirm(subscriber_id),
        genuine[:-2],  # cut
        flipped,  # one character changed
        genuine + "A",
        f"{value}.{signature[:-2]}",  # an earlier release's token, signature cut
        f"{support.b36(subscriber_id + 1)}.{signature}",  # another id, the same signature
        f"{value}.{signature}x",
        "not-a-token",
        ".abc",
        "x" * 5000,  # oversized
        "%00%0d%0a",
        "..%20..%09etc",
        "é" * 20,
    ]


async def test_forged_tokens_get_400_on_get_and_post_and_delete_nothing(client, db, person) -> None:
    before = await row_counts(db)
    for token in forged_tokens(person.id):
        for method in ("GET", "POST"):
            response = await client.request(method, f"/unsubscribe/{token}", content=ONE_CLICK)
            assert response.status_code == 400, (method, token[:40])
            assert "not valid" in response.text
    assert await row_counts(db) == before


async def test_a_token_signed_with_a_rotated_out_key_still_unsubscribes(
    app_factory, db, person
) -> None:
    async with app_factory(secret_keys=(support.TEST_KEY, support.OLD_TEST_KEY)) as (_app, client):
        response = await client.post(
            unsubscribe_path(person.id, key=support.OLD_TEST_KEY), content=ONE_CLICK
        )
    assert response.status_code == 200
    assert not await exists(db, person.id)


async def test_an_oversized_body_gets_413_and_deletes_nothing(client, db, person) -> None:
    response = await client.post(unsubscribe_path(person.id), content=b"x" * 100_000)
    assert response.status_code == 413
    assert await exists(db, person.id)
    lying = await client.post(
        unsubscribe_path(person.id), content=b"", headers={"content-length": "999999999"}
    )
    assert lying.status_code == 413
    assert await exists(db, person.id)


async def test_other_methods_are_refused(client, person) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        response = await client.request(method, unsubscribe_path(person.id))
        assert response.status_code == 405


@pytest.mark.slow
async def test_one_click_works_against_a_real_server_process(
    database_url, smtp, db, settings
) -> None:
    """What a mailbox provider does: a bare POST over real HTTP, no cookies, no redirect."""
    campaign = await people.add_campaign(db)
    person = await people.add_person(db, settings, "real@example.org", "real-http", campaign)
    service = support.ServiceProcess(support.base_env(database_url, smtp.url)).start()
    try:
        await service.wait_ready()
        async with httpx.AsyncClient(base_url=service.url, follow_redirects=False) as http:
            response = await http.post(
                unsubscribe_path(person.id),
                content=ONE_CLICK,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
    finally:
        await asyncio.to_thread(service.stop)
    assert response.status_code == 200
    assert not await exists(db, person.id)

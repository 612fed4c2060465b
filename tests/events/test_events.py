"""Events for the shop's other systems, end to end: the real app queues them in the
changes' transactions, its worker delivers them over HTTP to a receiver on loopback
that verifies each signature with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import inspect
import re
import time

import httpx

from service.privacy import erasure
from service.privacy.evidence import Evidence
from service.topics import membership
from tests import manage_support, people
from tests.events.receiver import new_secret, receiving

SECRET = new_secret(7)
HOOK = "/hooks/newsletter"


def events_settings(receiver, *paths: str, types: tuple[str, ...] = (), **more) -> dict:
    paths = paths or (HOOK,)
    return dict(
        events_url=tuple(receiver.url(p) for p in paths),
        events_secret=tuple(receiver.secrets[p] for p in paths),
        events_types=types,
        events_timeout=2.0,
        **more,
    )


async def until(check, timeout: float = 30.0) -> object:
    """Waits for `check()` (plain or awaitable) to be true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def rename(client: httpx.AsyncClient, email: str, name: str, headers) -> None:
    response = await client.patch(
        f"/admin/api/subscribers/{email}", json={"name": name}, headers=headers
    )
    assert response.status_code == 200, response.text


async def queued(db) -> list:
    return await db.fetch("SELECT * FROM event_outbox ORDER BY id")


async def test_a_confirmation_reaches_the_receiver_signed_with_the_persons_choices(
    app_factory, smtp
) -> None:
    async with receiving({HOOK: SECRET}) as receiver:
        settings = events_settings(receiver, tracking_mode="consent")
        async with app_factory(**settings) as (_app, client):
            signup = await client.post(
                "/subscribe", data={"email": "Ada@Example.org", "name": "Ada", "tracking": "1"}
            )
            assert signup.status_code in (200, 303)
            [mail] = await smtp.wait_for(1)
            path = re.search(r"/confirm/[A-Za-z0-9._-]+", mail.part("plain")).group(0)
            # The form's button: confirmation, name and tracking consent in one transaction.
            done = await client.post(path, data={"choices": "1", "name": "Ada L.", "tracking": "1"})
            assert done.status_code in (200, 303)
            await until(lambda: receiver.accepted())
    [delivery] = receiver.deliveries  # one event: the choices folded into the confirmation
    assert receiver.refused == 0
    assert delivery.event["type"] == "subscriber.confirmed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", delivery.event["timestamp"])
    data = delivery.event["data"]
    assert (data["email"], data["name"], data["tracking"]) == ("Ada@example.org", "Ada L.", True)
    assert isinstance(data["topics"], list) and isinstance(data["id"], int)
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["webhook-signature"].startswith("v1,")
    assert delivery.headers["content-type"] == "application/json"


async def test_an_event_waits_out_a_receiver_outage_and_arrives_with_the_same_webhook_id(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "grace@example.org", name="Grace")
    async with receiving({HOOK: SECRET}, start=False) as receiver:
        async with app_factory(**events_settings(receiver)) as (app, client):
            await rename(client, "grace@example.org", "Grace H.", admin_headers)
            # The receiver is down: the event is tried, kept, and tried again.
            await until(lambda: db.fetchval("SELECT attempts >= 2 FROM event_outbox"))
            [row] = await queued(db)
            assert row["last_error"] == "ConnectError"
            # Up again, but failing for a while: still the same event.
            receiver.failing = 503
            await receiver.start()
            await until(lambda: len(receiver.attempts) >= 2)
            receiver.failing = None
            await until(lambda: receiver.accepted())
            await until(lambda: db.fetchval("SELECT count(*) = 0 FROM event_outbox"))
            sample = app.state.metrics.events_sent.labels("127.0.0.1", "subscriber.updated")
            assert sample._value.get() == 1
    [delivery] = receiver.deliveries
    assert delivery.event["type"] == "subscriber.updated"
    assert delivery.event["data"]["name"] == "Grace H."
    assert {webhook_id for _, webhook_id in receiver.attempts} == {row["webhook_id"]}
    assert delivery.headers["webhook-id"] == row["webhook_id"]


async def test_two_events_for_one_person_arrive_in_order_across_two_replicas(
    app_factory, db, admin_headers
) -> None:
    """The first event fails for a while; the second, queued meanwhile, must not overtake
    it, though two processes deliver (each with its own loop)."""
    await people.add_subscriber(db, "hopper@example.org", name="G")
    async with receiving({HOOK: SECRET}) as receiver:
        receiver.failing = 503
        settings = events_settings(receiver)
        async with app_factory(**settings) as (_a, client), app_factory(**settings) as (_b, _):
            await rename(client, "hopper@example.org", "first", admin_headers)
            await until(lambda: len(receiver.attempts) >= 1)
            await rename(client, "hopper@example.org", "second", admin_headers)
            await until(lambda: len(receiver.attempts) >= 4)
            receiver.failing = None
            await until(lambda: len(receiver.accepted()) == 2)
    names = [d.event["data"]["name"] for d in receiver.deliveries]
    assert names == ["first", "second"]
    # Every attempt before the first delivery was the first event's.
    first_id = receiver.deliveries[0].headers["webhook-id"]
    before = receiver.attempts[: receiver.attempts.index((HOOK, first_id), 0) + 1]
    assert {webhook_id for _, webhook_id in before} == {first_id}


async def test_an_undeliverable_event_is_dropped_after_events_max_age(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "turing@example.org", name="Alan")
    async with receiving({HOOK: SECRET}) as receiver:
        receiver.failing = 500
        settings = events_settings(receiver, events_max_age=1.0)
        async with app_factory(**settings) as (app, client):
            await rename(client, "turing@example.org", "Alan T.", admin_headers)
            await until(lambda: receiver.attempts)
            await until(lambda: db.fetchval("SELECT count(*) = 0 FROM event_outbox"))
            dropped = app.state.metrics.events_dropped.labels("127.0.0.1", "max_age")
            assert dropped._value.get() == 1
    assert receiver.deliveries == []
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_each_url_gets_only_the_event_types_it_asks_for(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "lovelace@example.org", name="Ada")
    secrets = {"/all": new_secret(1), "/erasures": new_secret(2)}
    async with receiving(secrets) as receiver:
        settings = events_settings(receiver, "/all", "/erasures", types=("", "subscriber.erased"))
        async with app_factory(**settings) as (_app, client):
            await rename(client, "lovelace@example.org", "Ada K.", admin_headers)
            await until(lambda: receiver.accepted("/all"))
            erased = await client.delete(
                "/admin/api/subscribers/lovelace@example.org", headers=admin_headers
            )
            assert erased.status_code == 204
            await until(lambda: len(receiver.accepted()) == 3)
    assert receiver.refused == 0  # each URL's own secret signed its requests
    assert [d.event["type"] for d in receiver.accepted("/all")] == [
        "subscriber.updated",
        "subscriber.erased",
    ]
    assert [d.event["type"] for d in receiver.accepted("/erasures")] == ["subscriber.erased"]


async def test_an_erased_event_carries_the_address_and_its_cause_and_nothing_else(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "noether@example.org", name="Emmy N.", tracking_consent=True)
    bounced = await people.add_subscriber(db, "bounced@example.org", name="B")
    async with receiving({HOOK: SECRET}) as receiver:
        async with app_factory(**events_settings(receiver)) as (app, client):
            erased = await client.delete(
                "/admin/api/subscribers/noether@example.org", headers=admin_headers
            )
            assert erased.status_code == 204
            async with app.state.pool.acquire() as con:
                assert await erasure.erase_subscriber(con, bounced, "complaint")
            await until(lambda: len(receiver.accepted()) == 2)
    assert [d.event["data"] for d in receiver.deliveries] == [
        {"email": "noether@example.org", "cause": "operator"},
        {"email": "bounced@example.org", "cause": "complaint"},
    ]
    assert all(d.event["type"] == "subscriber.erased" for d in receiver.deliveries)


async def test_an_erasure_deletes_the_persons_queued_events_that_carry_their_name(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "curie@example.org", name="Marie")
    async with receiving({HOOK: SECRET}, start=False) as receiver:
        async with app_factory(**events_settings(receiver)) as (_app, client):
            await rename(client, "curie@example.org", "Marie S. Curie", admin_headers)
            await until(lambda: db.fetchval("SELECT attempts >= 1 FROM event_outbox"))
            erased = await client.delete(
                "/admin/api/subscribers/curie@example.org", headers=admin_headers
            )
            assert erased.status_code == 204
            # Deleted at once, or (in flight then) dropped when its attempt failed.
            await until(
                lambda: db.fetchval(
                    "SELECT array_agg(type) = '{subscriber.erased}' FROM event_outbox"
                )
            )
            rows = await queued(db)
            assert "Marie" not in str([dict(r) for r in rows])
            await receiver.start()
            await until(lambda: receiver.accepted())
    assert [d.event["type"] for d in receiver.deliveries] == ["subscriber.erased"]


async def test_a_restart_loses_no_event(app_factory, db, admin_headers) -> None:
    """Queued by one process that stops before the receiver answers; the next one
    (started anew, as after a deploy) delivers it, under the same id."""
    await people.add_subscriber(db, "hamilton@example.org", name="Margaret")
    async with receiving({HOOK: SECRET}, start=False) as receiver:
        settings = events_settings(receiver)
        async with app_factory(**settings) as (_app, client):
            await rename(client, "hamilton@example.org", "Margaret H.", admin_headers)
            await until(lambda: db.fetchval("SELECT attempts >= 1 FROM event_outbox"))
        [row] = await queued(db)
        await receiver.start()
        async with app_factory(**settings) as (_app, _client):
            await until(lambda: receiver.accepted())
    [delivery] = receiver.deliveries
    assert delivery.headers["webhook-id"] == row["webhook_id"]
    assert delivery.event["data"]["name"] == "Margaret H."
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_nothing_is_queued_without_a_receiver(client, db, admin_headers) -> None:
    await people.add_subscriber(db, "quiet@example.org", name="Q")
    await rename(client, "quiet@example.org", "Q2", admin_headers)
    assert await client.delete("/admin/api/subscribers/quiet@example.org", headers=admin_headers)
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0
    assert await db.fetchval("SELECT count(*) FROM event_endpoints") == 0


async def test_a_receiver_taken_out_of_the_settings_leaves_no_address_behind(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "gone@example.org", name="G")
    async with receiving({HOOK: SECRET}, start=False) as receiver:
        async with app_factory(**events_settings(receiver)) as (_app, client):
            await rename(client, "gone@example.org", "G2", admin_headers)
        assert await db.fetchval("SELECT count(*) FROM event_outbox") == 1
        async with app_factory() as (_app, _client):  # EVENTS_URL unset now
            assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_the_access_export_lists_queued_events_by_the_receivers_host_only(
    app_factory, db, admin_headers
) -> None:
    await people.add_subscriber(db, "meitner@example.org", name="Lise")
    async with receiving({"/hooks/t0ken-in-path": SECRET}, start=False) as receiver:
        settings = events_settings(receiver, "/hooks/t0ken-in-path")
        async with app_factory(**settings) as (_app, client):
            await rename(client, "meitner@example.org", "Lise M.", admin_headers)
            export = await client.get(
                "/admin/api/subscribers/meitner@example.org", headers=admin_headers
            )
    [event] = export.json()["queued_events"]
    assert (event["receiver"], event["type"]) == ("127.0.0.1", "subscriber.updated")
    assert "t0ken" not in export.text


async def test_the_tracking_link_and_the_footer_link_announce_an_update_and_an_unsubscribe(
    app_factory, db
) -> None:
    sid = await people.add_subscriber(db, "franklin@example.org", name="R", tracking_consent=True)
    async with receiving({HOOK: SECRET}) as receiver:
        async with app_factory(**events_settings(receiver)) as (app, client):
            tokens = app.state.tokens
            withdrawn = await client.post(f"/tracking/{tokens.tracking(sid)}")
            assert withdrawn.status_code == 200
            await until(lambda: receiver.accepted())
            left = await client.post(
                f"/unsubscribe/{tokens.unsubscribe(sid)}",
                content=b"List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert left.status_code == 200
            await until(lambda: len(receiver.accepted()) == 2)
    updated, erased = (d.event for d in receiver.deliveries)
    assert (updated["type"], updated["data"]["tracking"]) == ("subscriber.updated", False)
    assert erased == {
        "type": "subscriber.erased",
        "timestamp": erased["timestamp"],
        "data": {"email": "franklin@example.org", "cause": "unsubscribe"},
    }


async def test_topic_changes_in_one_transaction_are_one_update_with_the_topics_after_it(
    app_factory, db
) -> None:
    sid = await people.add_subscriber(db, "shannon@example.org", name="C")
    insert = "INSERT INTO topics (slug, name) VALUES ($1, $1) RETURNING id"
    weekly = await db.fetchval(insert, "weekly")
    offers = await db.fetchval(insert, "offers")
    who = Evidence(ip=None, user_agent=None, source="test", consent_text_version="v1")
    async with receiving({HOOK: SECRET}) as receiver:
        async with app_factory(**events_settings(receiver)) as (app, _client):
            async with app.state.pool.acquire() as con, con.transaction():
                await db_lock(con, sid)
                await membership.join(con, sid, [weekly, offers], who)
                await membership.leave(con, sid, [weekly], who)
            await until(lambda: receiver.accepted())
            await asyncio.sleep(0.5)  # nothing else comes
    [delivery] = receiver.deliveries
    assert delivery.event["type"] == "subscriber.updated"
    assert delivery.event["data"]["topics"] == ["offers"]


async def db_lock(con, subscriber_id: int) -> None:
    """The subscriber row, as membership's callers hold it (sql/131)."""
    await con.execute("SELECT 1 FROM subscribers WHERE id = $1 FOR UPDATE", subscriber_id)


async def test_a_language_chosen_on_the_persons_page_is_announced(app_factory, db, smtp) -> None:
    """The person's language (issue 29) is part of what an update says about them."""
    email = "lang@example.org"
    sid = await people.add_subscriber(db, email, name="Ada")
    async with receiving({HOOK: SECRET}) as receiver:
        async with app_factory(**events_settings(receiver)) as (_app, client):
            link = await manage_support.fresh_link(client, smtp, sid, email, db)
            _page, session = await manage_support.open_data(client, link)
            changed = await manage_support.act(client, session, "language", lang="de-AT")
            assert changed.status_code == 200
            await until(lambda: receiver.accepted())
    [delivery] = receiver.deliveries
    assert delivery.event["type"] == "subscriber.updated"
    assert (delivery.event["data"]["email"], delivery.event["data"]["language"]) == (email, "de")
